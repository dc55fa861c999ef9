"""Settings from a flag, else an env var, else a default, with one error line per problem.

Every component (agent, injector, exchange server) declares its options as a table of
`Option`s. `Settings` reads them and collects problems instead of stopping at the first,
so a user sees every bad value at once, each line naming the flag and its env var:

    --socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE: '999' is not an octal file mode (e.g. 0660)

Stdlib only.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flyte_auth_common import __version__
from flyte_auth_common.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    flag: str  # "--token-file"
    help: str
    default: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    is_switch: bool = False  # a flag without a value; env accepts true/false/1/0
    repeatable: bool = False  # the flag may repeat; its env var is comma-separated

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def env(self, prefix: str) -> str:
        return prefix + self.dest.upper()

    def name(self, prefix: str) -> str:
        """How messages name it: "--token-file / FLYTE_AUTH_AGENT_TOKEN_FILE"."""
        return f"{self.flag} / {self.env(prefix)}"


def option_names(prefix: str, options: Iterable[Option]) -> Callable[[str], str]:
    """A component's `setting(dest)`: how a message names its option `dest`."""
    table = {opt.dest: opt for opt in options}
    return lambda dest: table[dest].name(prefix)


#: Every server's last two options.
LOG_OPTIONS = (
    Option("--log-level", "minimum log level", "info",
           choices=("debug", "info", "warning", "error")),
    Option("--log-format", "log line format", "json", choices=("json", "console")),
)


@dataclass(frozen=True)
class Serving:
    """Where a server listens and which certificate it serves (serving_options())."""

    listen: tuple[str, int]
    tls_cert: Path | None
    tls_key: Path | None
    tls_bootstrap: str | None  # the Secret a self-signed pair is kept in
    tls_dir: Path  # where a bootstrapped pair is written to be served
    service: str  # the Service: the bootstrapped certificate's DNS names

    @property
    def https(self) -> bool:
        return self.tls_bootstrap is not None or self.tls_cert is not None


def serving_options(name: str, *, serves: str, bootstrap_also: str) -> tuple[Option, ...]:
    """A server's address and serving-certificate options (Settings.serving_tls reads them):
    `name` is its Service and names its --tls-dir; `serves` what --listen serves;
    `bootstrap_also` what --tls-bootstrap does besides serving HTTPS."""
    return (
        Option("--listen", f"address {serves} is served on", "0.0.0.0:8443",
               metavar="HOST:PORT"),
        Option("--tls-cert", "TLS certificate chain (PEM); with --tls-key, serve HTTPS; "
               "reloaded when the file changes", metavar="FILE"),
        Option("--tls-key", "TLS private key (PEM), reloaded when the file changes",
               metavar="FILE"),
        Option("--tls-bootstrap", "no cert-manager: keep a self-signed CA and serving "
               "certificate in this Secret (created, renewed 30 days before expiry), serve "
               f"HTTPS with it and {bootstrap_also}; instead of --tls-cert/--tls-key",
               metavar="SECRET"),
        Option("--tls-dir", "where --tls-bootstrap writes the pair it serves (a writable "
               "emptyDir)", f"/var/run/{name}", metavar="DIR"),
        Option("--service", "this server's Service (DNS names of the bootstrapped "
               "certificate)", name, metavar="NAME"),
    )


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser: its description kept as written, and `--version` (the one
    version every distribution, image and chart of this release carries)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def add_options(parser: argparse.ArgumentParser, prefix: str, options: Iterable[Option]) -> None:
    """Add each option as a flag whose help names its env var, choices and default."""
    for opt in options:
        extra = [f"env {opt.env(prefix)}" + (", comma-separated" if opt.repeatable else "")]
        if opt.default is not None:
            extra.append(f"default {opt.default}")
        help_text = f"{opt.help}{' (repeatable)' if opt.repeatable else ''} [{'; '.join(extra)}]"
        if opt.is_switch:
            parser.add_argument(opt.flag, dest=opt.dest, action="store_const", const="true",
                                default=None, help=help_text)
            continue
        metavar = opt.metavar or (
            "{" + ",".join(opt.choices) + "}" if opt.choices else opt.dest.upper())
        parser.add_argument(opt.flag, dest=opt.dest, default=None, help=help_text,
                            metavar=metavar, action="append" if opt.repeatable else "store")


def parse_command_line(parser: argparse.ArgumentParser,
                       argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown flag is reported by the subcommand it was given to:
    its usage, and the closest flag it knows ("did you mean --token-file?"). Exits 2."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    target = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            target = action.choices.get(str(getattr(args, action.dest or "", "")), parser)
    known = [flag for action in target._actions for flag in action.option_strings]
    shown = []
    for extra in extras:
        close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1) \
            if extra.startswith("-") else []
        shown.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
    target.error(f"unrecognized arguments: {' '.join(shown)}")
    raise SystemExit(2)  # error() exits; this line only tells linters so


def parse_flags(prefix: str, options: Iterable[Option], argv: list[str]) -> argparse.Namespace:
    """`serve` flags parsed from argv alone (tests and embedding)."""
    parser = argparse.ArgumentParser()
    add_options(parser, prefix, options)
    return parser.parse_args(argv)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DIGITS = re.compile(r"[0-9]{1,18}")


class Settings:
    """The raw values of one component's options, and the problems found converting them."""

    def __init__(
        self,
        prefix: str,
        options: Iterable[Option],
        args: argparse.Namespace,
        environ: Mapping[str, str],
        fallback: Mapping[str, str] | None = None,
    ) -> None:
        """`fallback`: values (by dest) from a config file, below flags and env vars."""
        self._prefix = prefix
        self._options = {opt.dest: opt for opt in options}
        self._args = args
        self._environ = environ
        self._fallback = fallback or {}
        self.problems: list[str] = []

    def _opt(self, dest: str) -> Option:
        return self._options[dest]

    def name(self, dest: str) -> str:
        return self._opt(dest).name(self._prefix)

    def given(self, dest: str) -> bool:
        """True when the user set it (flag or env), not just the default."""
        return self._explicit(dest) is not None

    def _explicit(self, dest: str) -> str | None:
        value: str | list[str] | None = getattr(self._args, dest, None)
        if isinstance(value, list):  # a repeatable flag, given one or more times
            return ",".join(value)
        if value is None:
            value = self._environ.get(self._opt(dest).env(self._prefix))
        return value

    def raw(self, dest: str) -> str | None:
        value = self._explicit(dest)
        if value is None:
            value = self._fallback.get(dest)
        return self._opt(dest).default if value is None else value

    def problem(self, dest: str, message: str) -> None:
        self.problems.append(f"{self.name(dest)}: {message}")

    def get(self, dest: str, convert: Callable[[str], T]) -> T | None:
        """The converted value, or None when unset; a ValueError becomes a problem line."""
        value = self.raw(dest)
        if value is None or value == "":
            return None
        opt = self._opt(dest)
        if opt.choices and value not in opt.choices:
            self.problem(dest, f"{value!r} is not one of {', '.join(opt.choices)}")
            return None
        try:
            return convert(value)
        except ValueError as exc:
            self.problem(dest, str(exc))
            return None

    def value(self, dest: str, convert: Callable[[str], T]) -> T:
        """An option with a default in its table: the converted value. A bad value is a
        problem (raised by raise_problems) and meanwhile the default stands in, so a default
        is written once, in the table."""
        got = self.get(dest, convert)
        if got is not None:
            return got
        default = self._opt(dest).default
        if default is None:
            raise TypeError(f"option {self._opt(dest).flag} has no default in its table")
        return convert(default)

    def serving(self) -> Serving:
        """A server's serving_options(): its address and its certificate, a pair of files,
        or a Secret to bootstrap into, or neither."""
        cert, key = self.get("tls_cert", to_path), self.get("tls_key", to_path)
        if (cert is None) != (key is None):
            self.problem("tls_cert" if cert is None else "tls_key",
                         "--tls-cert and --tls-key go together: give both or neither")
        bootstrap = self.text("tls_bootstrap")
        if bootstrap and cert is not None:
            self.problem("tls_bootstrap", "give --tls-bootstrap or --tls-cert/--tls-key, not both")
        return Serving(self.value("listen", to_host_port), cert, key, bootstrap,
                       self.value("tls_dir", to_path), self.value("service", str))

    def values(self, dest: str) -> tuple[str, ...]:
        """A repeatable option's values: each flag, or the env var split on commas."""
        raw = self.raw(dest) or ""
        return tuple(v.strip() for v in raw.split(",") if v.strip())

    def text(self, dest: str) -> str | None:
        return self.get(dest, str)

    def flag(self, dest: str) -> bool:
        return bool(self.get(dest, to_bool))

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


# --- converters: each raises ValueError with a message that shows the bad value ---------------


def to_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def to_path(value: str) -> Path:
    return Path(value)


def to_positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not number > 0 or not math.isfinite(number):
        raise ValueError(f"{value!r} must be a finite number greater than 0")
    return number


def whole_number_in(value: str, low: int, high: int) -> int | None:
    """`value` as an int in [low, high], or None. ASCII digits only, at most 18 of them:
    str.isdigit() also accepts '²' and 5 000-digit strings, on which int() raises."""
    if not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def to_positive_int(value: str) -> int:
    number = whole_number_in(value.strip(), 1, 10**18)
    if number is None:
        raise ValueError(f"{value!r} is not a whole number greater than 0")
    return number


def to_non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not number >= 0:
        raise ValueError(f"{value!r} must be 0 or more")
    return number


def to_file_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal file mode (e.g. 0660)") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not an octal file mode between 0000 and 0777")
    return mode


def to_uids(value: str) -> frozenset[int]:
    uids: set[int] = set()
    for part in value.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a numeric uid (give a comma-separated list)")
        uids.add(int(part))
    if not uids:
        raise ValueError("the list of uids is empty")
    return frozenset(uids)


def to_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8081)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


def to_http_url(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError(f"{value!r} is not an http(s) URL (e.g. https://idp.example/oauth2/token)")
    return value

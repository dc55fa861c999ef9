"""Settings from a flag, else an env var, else a default, with one error line per problem.

Every component (agent, injector, exchange server) declares its options as a table of
`Option`s. `Settings` reads them and collects problems instead of stopping at the first,
so a user sees every bad value at once, each line naming the flag and its env var:

    --socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE: '999' is not an octal file mode (e.g. 0660)

Stdlib only. The converters are converters.py; the command line (argparse) is
command_line.py; a server's address and certificate options are serving_options.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from flyte_auth_common.converters import to_bool
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

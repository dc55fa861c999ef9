"""Each command's argparse parser: `--version`, the option table as flags whose help names
their env vars, and an unknown flag answered by the subcommand it was given to, with the
closest flag it knows. Stdlib only (and only argparse's public API)."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable
from typing import Any

from flyte_auth_common import __version__
from flyte_auth_common.options import Option


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that remembers its flags and its subcommands (their parsers are of
    this class too), so that an unknown flag can be matched against what the subcommand
    it was given to knows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: list[str] = []  # before argparse adds -h through add_argument
        self.subcommands: tuple[str, dict[str, argparse.ArgumentParser]] | None = None
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags += action.option_strings
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.subcommands = (str(action.dest), action.choices)
        return action


def command_parser(prog: str, description: str) -> CommandParser:
    """A command's parser: its description kept as written, and `--version` (the one
    version every distribution, image and chart of this release carries)."""
    parser = CommandParser(prog=prog, description=description,
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
    target: argparse.ArgumentParser = parser
    if isinstance(parser, CommandParser) and parser.subcommands is not None:
        dest, choices = parser.subcommands
        target = choices.get(str(getattr(args, dest, "")), parser)
    known = target.flags if isinstance(target, CommandParser) else []
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

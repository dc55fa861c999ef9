"""The one error every component's start-up shares: settings that cannot work.

Stdlib only.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """Invalid settings. `problems` holds one line per problem, each naming flag and env var;
    `daemon.run` prints them and exits 2."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

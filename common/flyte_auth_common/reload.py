"""A value loaded from mounted files and loaded again when they change, without a restart.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, so the files' stat
(followed through the link) changes. `check()` compares it with the last load; `watch()` checks
every few seconds. A file that fails to load keeps the previous value and says so in the log,
so a bad edit never takes a running server down; at start-up the error is raised.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from flyte_auth_common.errors import ConfigError

T = TypeVar("T")
log = structlog.get_logger("flyte_auth")
#: How often mounted files are checked (the kubelet syncs volumes about once a minute).
CHECK_EVERY = 10.0


class FileReloader(Generic[T]):
    def __init__(self, what: str, paths: Sequence[Path], load: Callable[[], T],
                 apply: Callable[[T], None] = lambda _: None) -> None:
        self.what = what
        self._paths = tuple(paths)
        self._load = load
        #: Called with each value loaded after the first (and with the first, at start).
        self.apply = apply
        self._stamp = self._stat()
        self.value = load()  # a ConfigError here stops the start-up, as it should
        apply(self.value)
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in map(os.stat, self._paths))
        except OSError:
            return None  # mid-swap or gone: the next check sees it again

    def check(self) -> bool:
        """Load again if a file changed since the last load; True if the value changed."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self._load()
        except (ConfigError, OSError, ValueError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [type(exc).__name__]
            log.warning("reload_failed", what=self.what, problems=problems, keeping="previous")
            return False
        self.value = value
        self.apply(value)
        self.reloads += 1
        log.info("reloaded", what=self.what, files=[str(p) for p in self._paths])
        return True

    async def watch(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()


class ServingTLS:
    """One server SSLContext loaded with the current certificate files: new handshakes use a
    rotated pair as soon as it is read (cert-manager, or our own bootstrap, rewrites them)."""

    def __init__(self, cert: Path, key: Path, setting: str = "--tls-cert / --tls-key") -> None:
        self.cert, self.key, self._setting = cert, key, setting
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._files = FileReloader("tls certificate", (cert, key), self._load)

    def _load(self) -> None:
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except OSError as exc:  # ssl.SSLError included
            raise ConfigError([f"{self._setting}: cannot load {self.cert} and {self.key} "
                               f"({type(exc).__name__})"]) from None

    @property
    def reloads(self) -> int:
        return self._files.reloads

    def check(self) -> bool:
        """Load the files if they changed since the last load; True if reloaded."""
        return self._files.check()

    async def watch(self) -> None:
        await self._files.watch()

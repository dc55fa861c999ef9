"""A value loaded from mounted files and loaded again when they change, without a restart.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, so the files' stat
(followed through the link) changes. `check()` compares it with the last load; `watch()` checks
every few seconds. A file that fails to load, for whatever reason, keeps the previous value
and says so in the log (`reload_failed`), so a bad edit never takes a running server down nor
stops the watching; at start-up the error is a ConfigError (one line, exit 2).
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


def load_once(what: str, paths: Sequence[Path], load: Callable[[], T]) -> T:
    """`load()`; any failure as a ConfigError. A loader's own ConfigError names the problem;
    anything else (a loader's bug on a file nobody expected) is named by its type only: its
    text may quote the file, and the file may hold a key."""
    try:
        return load()
    except ConfigError:
        raise
    except (Exception, RecursionError) as exc:
        raise ConfigError([f"{what}: {', '.join(map(str, paths))} could not be "
                           f"loaded ({type(exc).__name__})"]) from None


class FileReloader(Generic[T]):
    def __init__(self, what: str, paths: Sequence[Path], load: Callable[[], T],
                 apply: Callable[[T], None] = lambda _: None) -> None:
        self.what = what
        self._paths = tuple(paths)
        self._load = load
        #: Called with each value loaded after the first (and with the first, at start).
        self.apply = apply
        self._stamp = self._stat()
        self.value = self._load_value()  # a ConfigError here stops the start-up, as it should
        apply(self.value)
        self.reloads = 0

    def _load_value(self) -> T:
        return load_once(self.what, self._paths, self._load)

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
            value = self._load_value()
            self.apply(value)
        except ConfigError as exc:
            log.warning("reload_failed", what=self.what, problems=exc.problems,
                        keeping="previous")
            return False
        self.value = value
        self.reloads += 1
        log.info("reloaded", what=self.what, files=[str(p) for p in self._paths])
        return True

    async def watch(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()  # never raises: a failure is a reload_failed line


class ServingTLS:
    """The server's SSLContext, serving the current certificate files: new handshakes use a
    rotated pair as soon as it is read (cert-manager, or our own bootstrap, rewrites them).

    Each pair is loaded into a context of its own, and only a pair that loaded whole (the
    certificate matches its key) replaces the one served: `context`, the one the server
    holds, hands each handshake to the current pair's context as it begins (OpenSSL's
    servername callback, called with or without SNI)."""

    def __init__(self, cert: Path, key: Path, setting: str = "--tls-cert / --tls-key") -> None:
        self.cert, self.key, self._setting = cert, key, setting
        self._files = FileReloader("tls certificate", (cert, key), self._load)
        self.context = self._files.value  # starts as the first pair's
        self.context.sni_callback = self._use_current

    def _use_current(self, sslobj: ssl.SSLObject, _name: str | None,
                     _ctx: ssl.SSLContext) -> None:
        sslobj.context = self._files.value

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ConfigError([f"{self._setting}: {self.cert} and {self.key} are not a PEM "
                               f"certificate and its own key ({exc.reason or 'SSLError'})"]
                              ) from None
        except OSError as exc:
            raise ConfigError([f"{self._setting}: cannot load {self.cert} and {self.key} "
                               f"({exc.strerror or type(exc).__name__})"]) from None
        return context

    @property
    def reloads(self) -> int:
        return self._files.reloads

    def check(self) -> bool:
        """Load the files if they changed since the last load; True if reloaded."""
        return self._files.check()

    async def watch(self) -> None:
        await self._files.watch()

"""How every component's `serve` runs: JSON logs, until SIGTERM/SIGINT, one exit code per
kind of failure (2: a configuration problem, one line each; 1: could not start)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import web

from flyte_auth_common.errors import ConfigError
from flyte_auth_common.logs import configure

log = structlog.get_logger("flyte_auth")


class _LogSettings(Protocol):
    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...


C = TypeVar("C", bound=_LogSettings)


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT (Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(running: Callable[[C], AbstractAsyncContextManager[Any]], config: C) -> None:
    async with running(config):
        await until_signalled()


def run(prog: str, load: Callable[[], C],
        running: Callable[[C], AbstractAsyncContextManager[Any]]) -> int:
    """Load the config, set up logs, serve until a signal; the process's exit code."""
    try:
        config = load()
        configure(config.log_level, config.log_format)
        asyncio.run(_serve(running, config))
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{prog}: {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: cannot start: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0


class OneLineServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, minus tracebacks: a client's malformed request is one
    warning line naming the error type (never its text, which may quote the request)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **_: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        log.warning("http_request_failed", message=str(msg) % args if args else str(msg),
                    error_type=type(exc).__name__ if exc is not None else None)

    error = exception


def app_runner(app: web.Application, *, shutdown_timeout: float = 60.0,
               **server: Any) -> web.AppRunner:
    """Every component's aiohttp runner: no access log (we write our own audit lines), no
    signal handling (daemon.run has it), request errors as one line."""
    return web.AppRunner(app, access_log=None, handle_signals=False,
                         shutdown_timeout=shutdown_timeout, logger=OneLineServerLog(), **server)

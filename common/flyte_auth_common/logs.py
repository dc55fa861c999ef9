"""structlog set-up shared by every component: JSON lines (or console) on stderr.

Tracebacks are rendered as plain text without local variables, so a token held in a
local can never reach a log line through an exception.

The agent writes an audit line for every token it serves, so the log path is a hot path:
timestamps are formatted once per second, and inside an event loop lines are flushed at
the end of the loop iteration, so a burst of requests costs one write() instead of one
per line. Outside a loop (start-up, exit) every line is flushed at once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _Timestamp:
    """`timestamp` as RFC 3339 UTC with milliseconds, the date part formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any],
                 ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1000):03d}Z"
        return event


class LoopFlushingWriter:
    """A structlog logger writing to `stream`, flushing once per event-loop iteration."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = False

    def msg(self, message: str) -> None:
        self._stream.write(message + "\n")
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stream.flush()
            return
        self._pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._pending = False
        self._stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    out = stream or io.TextIOWrapper(open(sys.stderr.fileno(), "wb", buffering=65536,  # noqa: SIM115 - lives as long as the process
                                          closefd=False), write_through=False)
    writer = LoopFlushingWriter(out)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _Timestamp(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through stdlib logging: keep their warnings, rendered by the
    # same renderer (JSON or console) with the same fields, one line each.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           _Timestamp()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer])
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))

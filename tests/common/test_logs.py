from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from flyte_auth_common import logs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_json_lines_with_rfc3339_timestamps() -> None:
    out = CountingStream()
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger("t")
    log.info("hello", n=1)
    log.debug("hidden")
    line = json.loads(out.getvalue())
    assert line["event"] == "hello"
    assert line["level"] == "info"
    assert line["n"] == 1
    assert line["timestamp"].endswith("Z")
    assert len(line["timestamp"]) == len("2026-11-28T10:00:00.000Z")
    assert out.flushes == 1  # outside an event loop every line is flushed at once


async def test_inside_a_loop_a_burst_is_flushed_once_per_iteration() -> None:
    out = CountingStream()
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger("t")
    for i in range(50):
        log.info("burst", i=i)
    assert out.flushes == 0
    await asyncio.sleep(0)  # let the loop finish this iteration
    assert out.flushes == 1
    assert len(out.getvalue().splitlines()) == 50


def test_tracebacks_carry_no_local_variables() -> None:
    out = CountingStream()
    logs.configure("info", "json", stream=out)
    secret = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"

    def fail(token: str) -> None:
        raise ValueError("bad input")

    try:
        fail(secret)
    except ValueError:
        structlog.get_logger("t").exception("failed")
    text = out.getvalue()
    assert "ValueError: bad input" in text
    assert secret not in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_stdlib_records_use_the_same_renderer(fmt: str) -> None:
    """aiohttp and asyncio log through stdlib logging: a quote in the message must not break
    the JSON line, and --log-format console applies to them too."""
    out = io.StringIO()
    logs.configure("info", fmt, stream=out)
    logging.getLogger("aiohttp.server").warning('bad "request" from %s', "peer")
    line = out.getvalue().strip()
    if fmt == "json":
        doc = json.loads(line)
        assert doc["event"] == 'bad "request" from peer'
        assert doc["level"] == "warning"
        assert doc["logger"] == "aiohttp.server"
        assert doc["timestamp"].endswith("Z")
    else:
        assert not line.startswith("{")
        assert 'bad "request" from peer' in line

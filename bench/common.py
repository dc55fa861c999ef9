"""What the benchmarks share: core pinning, a free port, waiting for a server, percentiles."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import statistics

import aiohttp


def pinned(core: int) -> list[str]:
    """`taskset -c CORE` when available: the server under test gets a core of its own."""
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() else []


def pin_self(core: int) -> None:
    if pinned(core):
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, proc: asyncio.subprocess.Process,
                     ssl_ctx: ssl.SSLContext | bool = True) -> None:
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the server at {url} exited; run it by hand to see why")
            try:
                async with session.get(url + "/readyz", ssl=ssl_ctx) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # still starting


def ms(values: list[float], q: int) -> float:
    """The q-th percentile of `values` (seconds) in milliseconds."""
    return statistics.quantiles(values, n=100)[q - 1] * 1000

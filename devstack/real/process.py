"""Waiting for a real program the harness started as a process."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from pathlib import Path

import aiohttp


async def until_ok(proc: subprocess.Popen[bytes], url: str, log: Path, what: str,
                   timeout: float, pause: float = 0.2, *,
                   ssl_ctx: ssl.SSLContext | bool = True) -> None:
    """Until GET `url` answers 200; fails with the end of `log` if the process exits first.
    Polls: the program is not ours to signal readiness (`pause` suits its start-up)."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited at start-up:\n"
                                   f"{log.read_text(errors='replace')[-4000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url, ssl=ssl_ctx) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(pause)


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM to every process at once (the last started first), then wait for each; one
    still running `grace` seconds into its wait gets SIGKILL."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()

"""Waiting for a real program the harness started as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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


def _parents() -> dict[int, int]:
    """Every live process's parent, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def processes_with(argument: str) -> list[int]:
    """The processes whose command line has `argument` as one of its words."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
    return found


def kill_trees(pids: list[int]) -> None:
    """SIGKILL each of `pids` and every process below it (daemons the harness's programs
    started and no longer own, such as containerd's shims and their containers)."""
    parents = _parents()
    doomed, frontier = set(pids), list(pids)
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        doomed.update(children)
        frontier.extend(children)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

"""Benchmark: what the flytekit plugin adds to each gRPC call, next to baselines measured in
the same run.

    make bench-plugin           (or: python bench/plugin_overhead.py)

- per call with a fresh token: `AgentAuthenticator.fetch_grpc_call_auth_metadata()`, what
  flytekit's AuthUnaryInterceptor calls before every RPC, next to a bare in-process function
  returning the same tuple;
- a socket fetch (when the token nears expiry or was rejected): `AgentClient.token()` against
  a real agent, next to the same stdlib HTTP request to a minimal asyncio responder on a Unix
  socket (connection per request in both, as the plugin does);
- Flyte 2's way (its SDK runs a command per token refresh): the token command the agent
  writes beside its socket, run as `python3 flyte-auth-token.py`, next to the in-process
  `AgentClient.token()` it replaces.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_socket import BASELINE  # noqa: E402
from devstack.paths import short_temp_dir  # noqa: E402
from flyte_auth_common.client import AgentClient  # noqa: E402
from flytekitplugins.auth_agent import AgentAuthenticator  # noqa: E402


def per_call_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Median over `repeat` runs of the mean time per call, in microseconds."""
    return statistics.median(t / number * 1e6 for t in timeit.repeat(fn, number=number,
                                                                      repeat=repeat))


def wait_for(client: AgentClient, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.token()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # the agent process is starting


def main(tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    stack = subprocess.Popen([sys.executable, "-m", "devstack.stack", "--dir", str(tmp)],
                             cwd=ROOT, stdout=subprocess.PIPE, env=env)
    assert stack.stdout is not None
    upstream = json.loads(stack.stdout.readline())
    sock, base_sock = str(tmp / "agent.sock"), str(tmp / "base.sock")
    agent = subprocess.Popen([str(Path(sys.executable).parent / "flyte-auth-agent"), "serve",
                              "--socket", sock, "--token-file", upstream["token_file"],
                              "--token-endpoint", upstream["token_endpoint"],
                              "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
    base = subprocess.Popen([sys.executable, "-c", BASELINE, base_sock], stdout=subprocess.PIPE)
    try:
        assert base.stdout is not None
        base.stdout.readline()
        client = AgentClient(sock)
        wait_for(client)
        auth = AgentAuthenticator("flyteadmin:81", "flyte-authorization", client=client)
        auth.fetch_grpc_call_auth_metadata()  # the first call fetches; after that: fresh
        header = ("flyte-authorization", "Bearer x")

        def bare() -> tuple[str, str]:
            return header

        bare_us = per_call_us(bare, 200_000)
        plugin_us = per_call_us(auth.fetch_grpc_call_auth_metadata, 200_000)
        assert auth.fetches == 1
        fetch_us = per_call_us(client.token, 300)
        raw_us = per_call_us(AgentClient(base_sock).token, 300)
        print(f"per gRPC call, fresh token: plugin {plugin_us:.2f} µs, bare function "
              f"{bare_us:.2f} µs, added {plugin_us - bare_us:.2f} µs (target <= 5 µs)")
        print(f"socket fetch: agent /v1/token {fetch_us:.0f} µs, bare asyncio responder "
              f"{raw_us:.0f} µs, ratio x{fetch_us / raw_us:.2f}")
        script = [sys.executable, str(tmp / "flyte-auth-token.py")]
        command_us = per_call_us(lambda: subprocess.run(script, capture_output=True,
                                                        check=True), 20, repeat=5)
        bare_python = [sys.executable, "-c", "pass"]
        python_us = per_call_us(lambda: subprocess.run(bare_python, check=True), 20, repeat=5)
        print(f"token command (Flyte 2's FLYTE_AUTH_COMMAND): {command_us / 1000:.1f} ms per "
              f"refresh; in-process fetch {fetch_us / 1000:.2f} ms (x{command_us / fetch_us:.0f});"
              f" the same interpreter doing nothing {python_us / 1000:.1f} ms")
    finally:
        for p in (agent, base, stack):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    with short_temp_dir() as workdir:  # removed at the end, however the run ends
        main(workdir)

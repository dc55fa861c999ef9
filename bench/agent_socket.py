"""Benchmark: the agent's socket, next to a minimal asyncio responder measured in the same run.

    make bench                      (or: python bench/agent_socket.py --agent-python PY)

Prints, for the agent and the baseline: cached GET /v1/token latency (p50/p99) and
throughput at 1, 16 and 64 concurrent keep-alive clients; the agent's cold start to first
token served; steady RSS. Ratios are agent / baseline from this run (machines are noisy).
The agent runs as its own process from --agent-python (a venv with only the `agent`
extra, as in the image), against the local stand-in token endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.paths import short_temp_dir  # noqa: E402 - after the path set-up

REQUEST = (b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nX-Flyte-Auth-Agent: 1\r\n"
           b"Accept: application/json\r\n\r\n")

# The baseline: the least an asyncio HTTP/1.1 responder on a Unix socket can do, answering
# every request with a fixed body the size of the agent's answer.
BASELINE = r'''
import asyncio, sys
BODY = b'{"access_token": "' + b"x" * 900 + b'", "token_type": "Bearer"}'
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY))
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.t.write(HEAD + BODY)
async def main():
    server = await asyncio.get_running_loop().create_unix_server(P, sys.argv[1])
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
'''


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def load(sock: str, clients: int, per_client: int) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def client() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        for _ in range(20):  # warm-up
            await request(reader, writer)
        for _ in range(per_client):
            t0 = time.perf_counter()
            status = await request(reader, writer)
            latencies.append(time.perf_counter() - t0)
            assert status == 200, status
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, len(latencies) / (time.perf_counter() - t0 - 0.0)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def first_token(sock: str, deadline: float) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.perf_counter() > deadline:
                raise TimeoutError("agent did not come up") from None
            await asyncio.sleep(0.002)
            continue
        status = await request(reader, writer)
        writer.close()
        if status == 200:
            return


def start_agent(python: str, sock: str, stack: dict[str, str], log: Path,
                ) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    return subprocess.Popen(
        [python, "-m", "flyte_auth_agent.cli", "serve", "--socket", sock,
         "--token-file", stack["token_file"], "--token-endpoint", stack["token_endpoint"]],
        stdout=subprocess.DEVNULL, stderr=log.open("ab"), env=env, cwd="/")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e6


async def main(tmp: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent-python", default=sys.executable,
                        help="interpreter whose environment has flyte-auth-agent[agent]")
    parser.add_argument("--requests", type=int, default=4000, help="requests per level")
    args = parser.parse_args()
    args.agent_python = os.path.abspath(args.agent_python)  # the agent runs with cwd=/
    stack_proc = subprocess.Popen([sys.executable, "-m", "devstack.stack", "--dir",
                                   str(tmp)], cwd=ROOT, stdout=subprocess.PIPE)
    assert stack_proc.stdout is not None
    stack = json.loads(stack_proc.stdout.readline())
    procs: list[subprocess.Popen[bytes]] = [stack_proc]
    try:
        # Cold start: process start to first token served, five times.
        colds = []
        for i in range(5):
            sock = str(tmp / f"cold{i}.sock")
            t0 = time.perf_counter()
            agent = start_agent(args.agent_python, sock, stack, tmp / "agent.log")
            await first_token(sock, t0 + 10)
            colds.append(time.perf_counter() - t0)
            agent.terminate()
            agent.wait()
        bare = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([args.agent_python, "-c", "import aiohttp.web"], check=True)
            bare.append(time.perf_counter() - t0)

        agent_sock, base_sock = str(tmp / "agent.sock"), str(tmp / "base.sock")
        agent = start_agent(args.agent_python, agent_sock, stack, tmp / "agent.log")
        procs.append(agent)
        base = subprocess.Popen([args.agent_python, "-c", BASELINE, base_sock],
                                stdout=subprocess.PIPE)
        procs.append(base)
        assert base.stdout is not None
        base.stdout.readline()
        await first_token(agent_sock, time.perf_counter() + 10)

        print(f"{'clients':>7} {'':>8} {'p50 µs':>8} {'p99 µs':>8} {'req/s':>8}   "
              f"ratio (agent/baseline): p50, throughput")
        for clients in (1, 16, 64):
            per = max(50, args.requests // clients)
            rows = {}
            for name, sock in (("baseline", base_sock), ("agent", agent_sock)):
                lat, rps = await load(sock, clients, per)
                rows[name] = (pct(lat, 50), pct(lat, 99), rps)
                print(f"{clients:>7} {name:>8} {rows[name][0]:>8.0f} {rows[name][1]:>8.0f} "
                      f"{rps:>8.0f}")
            print(f"{'':>7} {'ratio':>8}   p50 x{rows['agent'][0] / rows['baseline'][0]:.2f}, "
                  f"throughput {rows['agent'][2] / rows['baseline'][2]:.2f}")
        print(f"cold start to first token: median {statistics.median(colds) * 1000:.0f} ms "
              f"(python + import aiohttp.web alone: {statistics.median(bare) * 1000:.0f} ms, "
              f"ratio x{statistics.median(colds) / statistics.median(bare):.2f})")
        print(f"steady RSS: agent {rss_mib(agent.pid):.1f} MiB, baseline responder "
              f"{rss_mib(base.pid):.1f} MiB")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    with short_temp_dir() as workdir:  # removed at the end, however the run ends
        asyncio.run(main(workdir))

"""Benchmark: admission reviews per second at the injector, next to the bare cost of parsing
and serialising the same review, measured in the same run.

    make bench-injector         (or: python bench/injector_webhook.py)

The injector runs as its own process over real TLS, pinned to core 1; 50 keep-alive clients
on core 0 post reviews of (a) a typical Flyte task pod and (b) a 64 KB pod (many env vars and
annotations), as the API server does. Latency is reported at 50 concurrent clients (which is
mostly queueing: 50 / throughput) and at 1 client (the service time a single pod creation
sees). The baseline is json.loads + json.dumps of the same review body, in a process of its
own on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, ms, pin_self, pinned, wait_ready  # noqa: E402
from devstack.paths import short_temp_dir  # noqa: E402
from devstack.pods import admission_review as review  # noqa: E402
from devstack.pods import propeller_pod  # noqa: E402

BARE = r'''
import json, sys, time
body = open(sys.argv[1], "rb").read()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[2]):
    json.dumps(json.loads(body)).encode()
    n += 1
print(n / (time.perf_counter() - t0))
'''


def big_pod(size: int = 64 * 1024) -> dict[str, Any]:
    pod = propeller_pod()
    env = pod["spec"]["containers"][0]["env"]
    i = 0
    while len(json.dumps(pod)) < size:
        env.append({"name": f"SETTING_{i}", "value": "x" * 40})
        pod["metadata"]["annotations"][f"example.com/note-{i}"] = "y" * 40
        i += 1
    return pod


async def load(url: str, body: bytes, clients: int, seconds: float, ctx: ssl.SSLContext,
               ) -> tuple[list[float], float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url + "/mutate", data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))  # warm-up: connect
        latencies.clear()
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return latencies, len(latencies) / (time.perf_counter() - t0)


async def main(tmp: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per measurement")
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    pin_self(0)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (tmp / "tls.crt").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    (tmp / "tls.key").write_bytes(cert.private_key_pem.bytes())
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLYTE_", "KUBERNETES_"))}
    proc = await asyncio.create_subprocess_exec(
        *pinned(1), str(Path(sys.executable).parent / "flyte-auth-injector"), "serve",
        "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tmp / "tls.crt"), "--tls-key",
        str(tmp / "tls.key"), "--admin-endpoint", "flyteadmin.flyte:81", "--log-level",
        "warning", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_ready(url, proc, ctx)
        print(f"injector over TLS, pinned={bool(pinned(1))}, {args.seconds:g} s per row")
        print(f"{'pod':>9} {'bytes':>7} {'reviews/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'1-client p50/p99 ms':>20} {'bare parse+dump/s':>18} {'ratio':>6}")
        for name, pod in (("typical", propeller_pod()), ("64 KB", big_pod())):
            body = json.dumps(review(pod)).encode()
            lat, rate = await load(url, body, args.clients, args.seconds, ctx)
            one, _ = await load(url, body, 1, args.seconds / 2, ctx)
            (tmp / "body.json").write_bytes(body)
            bare = float(subprocess.run([*pinned(1), sys.executable, "-c", BARE,
                                         str(tmp / "body.json"), str(args.seconds / 2)],
                                        capture_output=True, text=True, check=True).stdout)
            print(f"{name:>9} {len(body):>7} {rate:>10.0f} {ms(lat, 50):>7.1f} "
                  f"{ms(lat, 99):>7.1f} {ms(one, 50):>9.2f} / {ms(one, 99):<8.2f} "
                  f"{bare:>18.0f} {rate / bare:>6.3f}")
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    with short_temp_dir() as workdir:  # removed at the end, however the run ends
        asyncio.run(main(workdir))

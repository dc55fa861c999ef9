"""Benchmark: exchanges per second at the exchange server, next to the raw cost of one RS256
sign + verify measured in the same run.

    make bench-exchange        (or: python bench/exchange_server.py)

The server runs as its own process (pinned to one core with taskset when available) in
executor mode with full validation — signature and claims of the service-account token,
policy, pod -> execution -> principal (a warm cache: one pod), minting — against the
stand-in Kubernetes API and FlyteAdmin in this process. With --flyte2, a Flyte 2 pod (pod ->
TaskAction -> run -> executed_by, the stand-in runs service); with --cache-ttl 0, every
exchange does that lookup. 16 keep-alive clients post
RFC 8693 requests. The baseline is one RS256 sign plus one RS256 verify of a token of the
same shape with the same library, in a process of its own on the same core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, ms, pin_self, pinned, wait_ready  # noqa: E402
from devstack.paths import short_temp_dir  # noqa: E402
from devstack.world import World  # noqa: E402 - after the path set-up

RAW = r'''
import json, sys, time, uuid
from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry
key = RSAKey.import_key(open(sys.argv[1], "rb").read())
public = RSAKey.import_key(key.as_dict(private=False))
reg = JWSRegistry(strict_check_header=False)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[2]):
    now = int(time.time())
    claims = {"iss": "x", "aud": ["http://a"], "sub": "alice", "scp": ["all"], "iat": now,
              "exp": now + 3600, "jti": str(uuid.uuid4())}
    token = jwt.encode({"alg": "RS256", "kid": "k", "key_id": "k"}, claims, key, registry=reg)
    jwt.decode(token, public, registry=reg)
    n += 1
print(json.dumps({"rate": n / (time.perf_counter() - t0)}))
'''


async def load(url: str, subject: str, clients: int, seconds: float,
               ) -> tuple[list[float], float, int]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url + "/oauth2/token", data=form) as resp:
                await resp.read()
                failures += resp.status != 200
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
        for _ in range(20):  # warm-up: keys fetched, binding cached, connections open
            async with s.post(url + "/oauth2/token", data=form) as resp:
                assert resp.status == 200, await resp.text()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return latencies, len(latencies) / elapsed, failures


async def main(tmp: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--flyte2", action="store_true",
                        help="a Flyte 2 task pod: pod -> TaskAction -> run -> executed_by, "
                             "asked of the runs service (stand-in) over Connect")
    parser.add_argument("--cache-ttl", default="60", metavar="SECONDS",
                        help="the server's --cache-ttl; 0: every exchange does the lookup")
    args = parser.parse_args()
    pin_self(0)  # stand-ins and clients on core 0, the server on core 1
    world = await World(tmp).start()
    subject = world.kube.token_for(world.flyte2_task_pod() if args.flyte2 else world.task_pod())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        *pinned(1), str(Path(sys.executable).parent / "flyte-auth-exchange"), "serve",
        *world.exchange_args("--cache-ttl", args.cache_ttl, "--log-level", "warning"),
        "--listen", f"127.0.0.1:{port}", env=env,
        stderr=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_ready(url, proc)
        latencies, rate, failures = await load(url, subject, args.clients, args.seconds)
        raw = subprocess.run([*pinned(1), sys.executable, "-c", RAW, str(world.key_file),
                              str(args.seconds)], capture_output=True, text=True, check=True)
        raw_rate = json.loads(raw.stdout)["rate"]
    finally:
        proc.terminate()
        await proc.wait()
        await world.stop()
    print(f"exchange server ({'Flyte 2' if args.flyte2 else 'Flyte 1'} pod, cache-ttl "
          f"{args.cache_ttl}), {args.clients} clients, {args.seconds:g} s, pinned="
          f"{bool(pinned(1))}: {rate:.0f} exchanges/s, p50 {ms(latencies, 50):.1f} ms, "
          f"p99 {ms(latencies, 99):.1f} ms, failures {failures}")
    print(f"raw RS256 sign + verify (same key, same library, one core): {raw_rate:.0f}/s")
    print(f"ratio exchanges / raw sign+verify: {rate / raw_rate:.2f}  (target >= 0.40)")


if __name__ == "__main__":
    with short_temp_dir() as workdir:  # removed at the end, however the run ends
        asyncio.run(main(workdir))

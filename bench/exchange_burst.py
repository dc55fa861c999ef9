"""Benchmark: a burst of N pods exchanging at once, against the real API server and real
FlyteAdmin (make e2e's peers; no node: the pods stay Pending).

    make bench-burst           (or: python bench/exchange_burst.py [--sizes 100,1000,5000])

For each scenario (N pods of one execution; N pods over 50 executions), flytepropeller's
identity creates the pods, each controlled by its execution's FlyteWorkflow (which real
FlyteAdmin created), and each pod's token comes from TokenRequest, bound to it as the
kubelet asks. A fresh exchange server process (cold caches; keys by OIDC discovery, no
TokenReview) then gets all N requests at once, each from a client that behaves as the agent
does: on 503 it waits Retry-After plus a jittered second and asks again. The same N
requests are then sent again to the same process (warm caches): the baseline.

Printed per scenario: the time until all N hold tokens (cold, warm, and their ratio), p50 and
p99 time-to-token, 503s shed, what the server asked (its
flyte_auth_exchange_upstream_requests_total: GetExecution per execution, API requests per
pod), and its CPU time per exchange. Then the one-execution burst split over two replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, ms, wait_ready  # noqa: E402
from devstack.paths import short_temp_dir  # noqa: E402
from devstack.real.cluster import ADMIN_TOKEN, Cluster, running_cluster  # noqa: E402
from devstack.real.images import AGENT_IMAGE  # noqa: E402
from devstack.real.webhook import injecting  # noqa: E402
from flyte_auth_exchange.mint import Minter  # noqa: E402
from tests.e2e.flyte import (  # noqa: E402
    NAMESPACE,
    Flyte,
    execute,
    flytekit_as,
    prepare,
    register,
    running_flyte,
)

PROPELLER = ("system:serviceaccount:flyte:flytepropeller",
             ("system:serviceaccounts", "system:serviceaccounts:flyte", "system:authenticated"))
AUDIENCE = "flyte-auth"
EXCHANGE = str(Path(sys.executable).parent / "flyte-auth-exchange")


@dataclass
class Site:
    cluster: Cluster
    flyte: Flyte
    workdir: Path
    exchange_kubeconfig: Path

    def user_token(self) -> str:
        """alice's token as FlyteAdmin's own authorization server signs one."""
        from joserfc import jwt  # noqa: PLC0415
        from joserfc.jws import JWSRegistry  # noqa: PLC0415

        key = Minter.load_key(self.flyte.key_file)
        now = int(time.time())
        return jwt.encode({"alg": "RS256", "key_id": key.thumbprint()}, {
            "sub": "alice@example.com", "aud": self.flyte.authorized_uris, "scp": ["all"],
            "iat": now, "exp": now + 3600}, key, registry=JWSRegistry(strict_check_header=False))


@contextlib.asynccontextmanager
async def site(workdir: Path) -> AsyncIterator[Site]:
    async with running_cluster(workdir / "cluster") as cluster:
        await prepare(cluster)

        async def kubeconfig(namespace: str, account: str) -> Path:
            token = await cluster.token(namespace, account, audience=cluster.url,
                                        seconds=86400)
            return cluster.kubeconfig(workdir / f"{account}.kubeconfig", token)

        admin_kc = cluster.kubeconfig(workdir / "admin.kubeconfig", ADMIN_TOKEN)
        async with running_flyte(workdir / "flyte", admin_kc,
                                 await kubeconfig("flyte", "flytepropeller")) as flyte, \
                injecting(cluster, workdir, [  # its connect webhook is part of the guard
                    "--admin-endpoint", flyte.target, "--admin-insecure",
                    "--token-endpoint", "http://127.0.0.1:1/oauth2/token",
                    "--agent-image", AGENT_IMAGE, "--kubeconfig",
                    str(await kubeconfig("flyte-auth", "flyte-auth-injector"))]):
            yield Site(cluster, flyte, workdir,
                       await kubeconfig("flyte-auth", "flyte-auth-exchange"))


async def executions(s: Site, count: int) -> list[dict[str, Any]]:
    """`count` executions of alice's, each with the FlyteWorkflow FlyteAdmin created."""
    from tests.e2e import workflows  # noqa: PLC0415

    alice = flytekit_as(s.flyte.target, s.user_token())
    version = await register(alice, "flyte-auth.e2e/task:1", workflows.greet)
    names = [str((await execute(alice, workflows.greet, version)).id.name)
             for _ in range(count)]
    found = []
    for name in names:
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(Exception):
                    found.append(await s.cluster.request(
                        "GET", f"/apis/flyte.lyft.com/v1alpha1/namespaces/{NAMESPACE}/"
                               f"flyteworkflows/{name}"))
                    break
                await asyncio.sleep(0.2)  # FlyteAdmin creates it as it accepts the launch
    return found


async def pods_and_tokens(s: Site, workflows: list[dict[str, Any]], n: int) -> list[str]:
    """n pods spread over `workflows` as propeller creates a map task's, each one's token."""
    gate = asyncio.Semaphore(32)
    tag = uuid.uuid4().hex[:6]

    async def one(i: int) -> str:
        wf = workflows[i % len(workflows)]
        name = wf["metadata"]["name"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{name}-n0-{tag}-{i}", "namespace": NAMESPACE,
            "labels": {"execution-id": name, "project": "flytesnacks", "domain": "development",
                       "node-id": "n0", "task-name": "map"},
            "ownerReferences": [{"apiVersion": "flyte.lyft.com/v1alpha1", "kind": "flyteworkflow",
                                 "name": name, "uid": wf["metadata"]["uid"], "controller": True,
                                 "blockOwnerDeletion": True}]},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "task", "image": "flyte-auth.e2e/task:1"}]}}
        async with gate:
            made = await s.cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod,
                                           as_user=PROPELLER[0], as_groups=PROPELLER[1])
            return await s.cluster.token(NAMESPACE, "default", audience=AUDIENCE, pod=made)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@contextlib.asynccontextmanager
async def exchange_server(s: Site, port: int) -> AsyncIterator[tuple[str, int]]:
    """A fresh exchange server process (cold caches): its URL and pid."""
    args = [EXCHANGE, "serve", "--listen", f"127.0.0.1:{port}", "--pod-security",
            "cluster-default", "--signing-key", str(s.flyte.key_file),
            *[a for uri in s.flyte.authorized_uris for a in ("--admin-audience", uri)],
            "--subject-issuer", s.cluster.url, "--subject-discovery", s.cluster.url,
            "--ca-cert-file", str(s.cluster.ca_file), "--subject-audience", AUDIENCE,
            "--cache-ttl", "600", "--admin-endpoint", s.flyte.target, "--admin-insecure",
            "--kubeconfig", str(s.exchange_kubeconfig), "--log-level", "warning"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def burst(urls: list[str], tokens: list[str]) -> tuple[float, list[float], int]:
    """All tokens exchanged at once, round-robin over `urls`, each retried as the agent
    retries a 503; (seconds until all held, each one's time-to-token, 503s)."""
    shed = 0
    start = time.perf_counter()

    async def agent(session: aiohttp.ClientSession, url: str, token: str) -> float:
        nonlocal shed
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
        while True:
            async with session.post(url + "/oauth2/token", data=form) as resp:
                if resp.status == 200:
                    await resp.read()
                    return time.perf_counter() - start
                if resp.status != 503:
                    raise RuntimeError(f"exchange refused: {resp.status} {await resp.text()}")
                shed += 1
                wait = float(resp.headers.get("Retry-After", "1"))
            await asyncio.sleep(wait + random.uniform(0, 1))  # the agent's jittered retry

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        times = await asyncio.gather(*(agent(session, urls[i % len(urls)], t)
                                       for i, t in enumerate(tokens)))
    return time.perf_counter() - start, list(times), shed


async def asked(url: str) -> dict[tuple[str, str], float]:
    """What the server counted: (upstream, request) -> requests, and ("shed", "") -> 503s."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("flyte_auth_exchange_upstream_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            request = labels.split('request="', 1)[1].split('"', 1)[0]
            upstream = labels.split('upstream="', 1)[1].split('"', 1)[0]
            out[upstream, request] = float(value)
        elif line.startswith("flyte_auth_exchange_shed_total"):
            out["shed", ""] = float(line.rsplit(" ", 1)[1])
    return out


async def scenario(s: Site, name: str, workflows: list[dict[str, Any]], n: int,
                   replicas: int = 1) -> dict[str, Any]:
    tokens = await pods_and_tokens(s, workflows, n)
    ports = [free_port() for _ in range(replicas)]
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(exchange_server(s, p)) for p in ports]
        urls, pids = [u for u, _ in servers], [p for _, p in servers]
        cpu0 = sum(map(cpu_seconds, pids))
        cold, cold_times, _ = await burst(urls, tokens)
        cpu1 = sum(map(cpu_seconds, pids))
        warm, warm_times, _ = await burst(urls, tokens)
        cpu2 = sum(map(cpu_seconds, pids))
        counts: dict[tuple[str, str], float] = {}
        for url in urls:
            for key, value in (await asked(url)).items():
                counts[key] = counts.get(key, 0) + value
    api = {request: int(v) for (upstream, request), v in counts.items()
           if upstream == "kubernetes"}
    return {"scenario": name, "pods": n, "executions": len(workflows), "replicas": replicas,
            "cold_s": round(cold, 2), "warm_s": round(warm, 2),
            "ratio": round(cold / warm, 2),
            "p50_ms": round(ms(cold_times, 50)), "p99_ms": round(ms(cold_times, 99)),
            "warm_p99_ms": round(ms(warm_times, 99)),
            "shed": int(counts.get(("shed", ""), 0)),
            "GetExecution": int(counts.get(("flyteadmin", "GetExecution"), 0)),
            "api_per_pod": round(sum(api.values()) / n, 3), "api": api,
            "cpu_ms_cold": round((cpu1 - cpu0) / n * 1000, 2),
            "cpu_ms_warm": round((cpu2 - cpu1) / n * 1000, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000",
                        help="pod counts, comma-separated (default: 100,1000,5000)")
    parser.add_argument("--executions", type=int, default=50,
                        help="executions the second scenario spreads its pods over")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(sizes) + 1024)),
                                                hard))
    with short_temp_dir() as tmp:
        async with site(Path(tmp)) as s:
            one, *many = await executions(s, 1 + args.executions)
            results = []
            for n in sizes:
                results.append(await scenario(s, "one execution", [one], n))
                results.append(await scenario(s, f"{args.executions} executions", many, n))
            results.append(await scenario(s, "one execution, 2 replicas", [one], sizes[-1],
                                          replicas=2))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    asyncio.run(main())

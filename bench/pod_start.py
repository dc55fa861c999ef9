"""Benchmark: pod start latency on a real node, injected against not injected, measured in
the same run.

    make bench-pod-start        (or: python bench/pod_start.py; root, as make e2e)

The real kube-apiserver, kubelet and containerd of the end-to-end suite (devstack/real), the
injector and the exchange server in this process. Pods alternate: a plain pod in an
unlabelled namespace (the baseline), the same pod in an injected namespace (the task held
until the agent holds a token), and the same again annotated token-wait 0 (no hold: the task
starts beside the agent, and its first call would wait for the token). Each pod's
task is the tool image exiting at once; the next pod is created once the last one ended.

Times come from containerd's own task-start events (nanoseconds; the API server's
timestamps have whole seconds) and from the agent's log lines as the kubelet stamped them:
- created: just before the POST that creates the pod;
- agent started: containerd starts the agent's process;
- listening: the agent logs `agent_started` (its cold start);
- token held: the agent logs `token_refreshed` (the first exchange);
- task started: containerd starts the task's process (the postStart hook let it go).

The exchange server runs with service-account identity and TokenReview: executor identity
adds a GetExecution and two reads per exchange (bench/exchange_server.py measures those).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.paths import short_temp_dir  # noqa: E402
from devstack.real.cluster import ADMIN_TOKEN, Cluster, running_cluster  # noqa: E402
from devstack.real.images import AGENT_IMAGE, TOOL_IMAGE  # noqa: E402
from devstack.real.node import NODE_USERS, TOLERATION, Node, running_node  # noqa: E402
from devstack.real.webhook import injecting  # noqa: E402
from devstack.world import write_signing_key  # noqa: E402
from flyte_auth_exchange.config import ExchangeConfig  # noqa: E402
from flyte_auth_exchange.runtime import running_exchange  # noqa: E402

INJECTED, PLAIN = "bench-injected", "bench-plain"
AGENT = "flyte-auth-agent"


@dataclass
class Start:
    created: float
    task: float
    agent: float | None = None
    listening: float | None = None
    token: float | None = None


def pod(name: str, namespace: str, *, hold: bool = True) -> dict[str, Any]:
    """A Flyte task pod (its labels, the host's network, the node's toleration) whose task
    exits at once; `hold=False`: annotated token-wait 0, the task starts beside the agent."""
    annotations = {} if hold else {"flyte-auth.flyte.org/token-wait": "0"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                         "labels": {"execution-id": name, "project": "bench",
                                    "domain": "injected", "node-id": "n0"}},
            "spec": {"restartPolicy": "Never", "hostNetwork": True,
                     "tolerations": [TOLERATION],
                     "containers": [{"name": "task", "image": TOOL_IMAGE,
                                     "imagePullPolicy": "Never", "args": ["exit", "0"]}]}}


class TaskStarts:
    """containerd's /tasks/start events: container id -> when its process started."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started: dict[str, float] = {}
        self.changed = asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TaskStarts:
        self.proc = await asyncio.create_subprocess_exec(
            "ctr", "--address", str(self.node.containerd_sock), "-n", "k8s.io", "events",
            stdout=asyncio.subprocess.PIPE)
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            # 2026-11-29 04:38:45.578946366 +0000 UTC k8s.io /tasks/start {"container_id":...}
            parts = raw.decode().split(" ", 6)
            if len(parts) == 7 and parts[5] == "/tasks/start":
                stamp = datetime.fromisoformat(f"{parts[0]}T{parts[1][:26]}+00:00")
                async with self.changed:
                    self.started[json.loads(parts[6])["container_id"]] = stamp.timestamp()
                    self.changed.notify_all()

    async def __aexit__(self, *_: object) -> None:
        assert self.proc is not None
        assert self.reader is not None
        self.proc.terminate()
        await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader

    async def of(self, container_id: str) -> float:
        """When `container_id` started (its event can trail the pod's status)."""
        cid = container_id.removeprefix("containerd://")
        async with asyncio.timeout(10), self.changed:  # the events can be a moment behind
            await self.changed.wait_for(lambda: cid in self.started)
        return self.started[cid]


async def agent_logged(cluster: Cluster, namespace: str, name: str) -> dict[str, float]:
    """When the agent logged each event (the kubelet's stamps): the first of each."""
    log = (await cluster.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log?container={AGENT}"
               "&timestamps=true"))["message"]
    events: dict[str, float] = {}
    for line in str(log).splitlines():
        stamp, _, text = line.partition(" ")
        with contextlib.suppress(ValueError, KeyError):
            event = json.loads(text)["event"]
            events.setdefault(event, datetime.fromisoformat(stamp[:26] + "+00:00").timestamp())
    if "token_refreshed" not in events:
        raise RuntimeError(f"{namespace}/{name}: the agent never logged a token:\n{log}")
    return events


async def run_one(cluster: Cluster, node: Node, starts: TaskStarts, namespace: str,
                  name: str, *, hold: bool = True) -> Start:
    created = time.time()
    await cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                          pod(name, namespace, hold=hold))
    done = await node.wait_phase(namespace, name, {"Succeeded", "Failed"}, timeout=120)
    if done["status"]["phase"] != "Succeeded":
        raise RuntimeError(f"{namespace}/{name} failed: {done['status']}")
    statuses = {s["name"]: s for s in done["status"].get("initContainerStatuses", []) +
                done["status"]["containerStatuses"]}
    start = Start(created, await starts.of(statuses["task"]["containerID"]))
    if AGENT in statuses:
        start.agent = await starts.of(statuses[AGENT]["containerID"])
        logged = await agent_logged(cluster, namespace, name)
        start.listening, start.token = logged["agent_started"], logged["token_refreshed"]
    await cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return start


@contextlib.asynccontextmanager
async def serving(cluster: Cluster, workdir: Path) -> AsyncIterator[None]:
    """The exchange server and the injector, as deployed, pointed at the real cluster."""
    admin_kc = cluster.kubeconfig(workdir / "admin.kubeconfig", ADMIN_TOKEN)
    key = workdir / "signing.pem"
    write_signing_key(key)
    exchange_config = ExchangeConfig.load([
        "--listen", "127.0.0.1:0", "--signing-key", str(key), "--admin-audience",
        "https://flyte.example.com", "--identity", "service-account",
        "--subject-issuer", cluster.url, "--subject-discovery", cluster.url,
        "--ca-cert-file", str(cluster.ca_file), "--token-review", "--kubeconfig", str(admin_kc),
        "--log-level", "warning"], {})
    async with running_exchange(exchange_config) as exchange, injecting(cluster, workdir, [
            "--admin-endpoint", "127.0.0.1:1", "--admin-insecure",
            "--token-endpoint", exchange.url + "/oauth2/token",
            "--agent-image", AGENT_IMAGE, "--agent-image-pull-policy", "Never",
            "--kubeconfig", str(admin_kc), "--log-level", "warning"]):
        yield


def row(label: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"| {label} | {statistics.median(values) * 1000:.0f} | {q[8] * 1000:.0f} |"


async def main(pods: int) -> None:
    with short_temp_dir() as workdir:
        async with running_cluster(workdir / "cluster", users=NODE_USERS) as cluster, \
                running_node(cluster) as node, serving(cluster, workdir), \
                TaskStarts(node) as starts:
            await cluster.namespace(INJECTED, {"flyte-auth.flyte.org/inject": "enabled"})
            await cluster.namespace(PLAIN, {})
            await run_one(cluster, node, starts, PLAIN, "warm-plain")  # images unpacked
            await run_one(cluster, node, starts, INJECTED, "warm-injected")
            plain, injected, unheld = [], [], []
            for i in range(pods):
                plain.append(await run_one(cluster, node, starts, PLAIN, f"plain-{i}"))
                injected.append(await run_one(cluster, node, starts, INJECTED, f"inj-{i}"))
                unheld.append(await run_one(cluster, node, starts, INJECTED, f"free-{i}",
                                            hold=False))
    base = [s.task - s.created for s in plain]
    total = [s.task - s.created for s in injected]
    agent = [s.agent - s.created for s in injected if s.agent is not None]
    started = [s.listening - s.agent for s in injected
               if s.listening is not None and s.agent is not None]
    token = [s.token - s.listening for s in injected
             if s.token is not None and s.listening is not None]
    probe = [s.task - s.token for s in injected if s.token is not None]
    print(f"{pods} pods each, alternating; ms from the pod's creation")
    print("| | median | p90 |\n|---|---|---|")
    print(row("not injected: created → task started (baseline)", base))
    print(row("injected: created → task started", total))
    print(row("  created → agent started", agent))
    print(row("  agent started → listening (its cold start)", started))
    print(row("  listening → token held (the first exchange)", token))
    print(row("  token held → task started (the hold ends, the task starts)", probe))
    free = [s.task - s.created for s in unheld]
    print(row("injected, token-wait 0: created → task started", free))
    print(row("  task started → token held (what its first call would wait)",
              [s.token - s.task for s in unheld if s.token is not None]))
    added = statistics.median(total) - statistics.median(base)
    print(f"injection adds {added * 1000:.0f} ms at the median "
          f"(ratio {statistics.median(total) / statistics.median(base):.2f} to the baseline); "
          f"with token-wait 0: "
          f"{(statistics.median(free) - statistics.median(base)) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=12,
                        help="pods of each kind (2 or more: the p90 needs two)")
    pods = parser.parse_args().pods
    if pods < 2:  # statistics.quantiles needs two points
        parser.error(f"--pods {pods}: give 2 or more (the p90 needs two pods of each kind)")
    asyncio.run(main(pods))

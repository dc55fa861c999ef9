"""The real node: kube-scheduler places pods, the kubelet runs them in containerd."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.real.cluster import running_cluster
from devstack.real.images import TOOL_IMAGE
from devstack.real.node import NODE, NODE_USERS, TOLERATION, running_node
from devstack.real.process import processes_with

pytestmark = [pytest.mark.timeout(600)]
NS = "plain-development"


async def test_a_plain_pod_runs_to_completion_on_the_real_node(tmp_path: Path) -> None:
    async with running_cluster(tmp_path / "cluster", users=NODE_USERS) as cluster, \
            running_node(cluster) as node:
        await cluster.namespace(NS)
        await cluster.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "namespace": NS},
            "spec": {"hostNetwork": True, "restartPolicy": "Never",
                     "tolerations": [TOLERATION],
                     "containers": [{"name": "main", "image": TOOL_IMAGE,
                                     "imagePullPolicy": "Never",
                                     "args": ["echo", "hello from the node"]}]}})
        pod = await node.wait_phase(NS, "hello", {"Succeeded", "Failed"})
        log = await cluster.request("GET", f"/api/v1/namespaces/{NS}/pods/hello/log",
                                    content_type="application/json")
    assert pod["spec"]["nodeName"] == NODE  # kube-scheduler placed it
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert "hello from the node" in str(log)


async def test_a_stopped_node_leaves_no_process_behind(tmp_path: Path) -> None:
    """containerd's shims outlive containerd by design; the harness stops them too, and the
    containers they run (here one still running: a pod that waits)."""
    async with running_cluster(tmp_path / "cluster", users=NODE_USERS) as cluster:
        async with running_node(cluster) as node:
            await cluster.namespace(NS)
            await cluster.apply({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waits", "namespace": NS},
                "spec": {"hostNetwork": True, "tolerations": [TOLERATION],
                         "containers": [{"name": "main", "image": TOOL_IMAGE,
                                         "imagePullPolicy": "Never", "args": ["pause"]}]}})
            await node.wait_phase(NS, "waits", {"Running"})
            socket = str(node.containerd_sock)
            assert processes_with(socket), "the running pod has a containerd shim"
        assert processes_with(socket) == []

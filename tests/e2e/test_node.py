"""The real node: kube-scheduler places pods, the kubelet runs them in containerd."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.real.cluster import running_cluster
from devstack.real.images import TOOL_IMAGE
from devstack.real.node import NODE, NODE_USERS, TOLERATION, running_node

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

"""The packaged chart (`make dist` writes dist/flyte-auth-VERSION.tgz) as an operator installs
it: `helm install` against a real kube-apiserver stores every object it renders, the guard it
installed refuses a project user's forged Flyte pod while propeller's passes, `helm upgrade`
changes what it says, `helm uninstall` leaves none of it behind.

Its own API server: the chart registers a webhook to an injector that nothing runs here (no
node: the Deployments stay unscheduled), which must not touch the other suites' pods. Its
failurePolicy is Ignore here for that reason, so that the guard, not the absent injector,
answers the pods below."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from devstack import release
from devstack.real.cluster import (
    ADMIN_TOKEN,
    RBAC_GROUP,
    Cluster,
    KubeError,
    collection_path,
    running_cluster,
)
from flyte_auth_common import __version__
from tests.renderers import renderer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
PACKAGE = release.DIST / f"flyte-auth-{__version__}.tgz"
PROJECT = "flytesnacks-development"
PROPELLER = "system:serviceaccount:flyte:flytepropeller"
MALLORY = "mallory@example.com"


class Helm:
    def __init__(self, cluster: Cluster, kubeconfig: Path) -> None:
        self.cluster, self.kubeconfig = cluster, kubeconfig

    async def __call__(self, *args: str) -> str:
        done = await asyncio.to_thread(
            subprocess.run, [renderer("helm"), *args, "--namespace", "flyte-auth",
                             "--kubeconfig", str(self.kubeconfig)],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def objects(self) -> list[dict[str, Any]]:
        """What the release holds, as `helm get manifest` says."""
        manifest = await self("get", "manifest", "flyte-auth")
        return [o for o in yaml.safe_load_all(manifest) if o]


def path_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                           "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                           "ValidatingWebhookConfiguration", "CustomResourceDefinition"}:
        meta = {**meta, "namespace": meta.get("namespace", "flyte-auth")}
    return f"{collection_path({**obj, 'metadata': meta})}/{meta['name']}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def helm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Helm]:
    workdir = tmp_path_factory.mktemp("chart")
    async with running_cluster(workdir / "cluster") as cluster:
        try:
            for name, labels in (("flyte", {}), (PROJECT, {
                    "flyte-auth.flyte.org/inject": "enabled"})):
                await cluster.namespace(name, labels)
            await cluster.apply({"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
                                 "metadata": {"name": "e2e-pods"}, "rules": [
                                     {"apiGroups": [""], "resources": ["pods"],
                                      "verbs": ["create", "get"]}]})
            for user in (PROPELLER, MALLORY):
                await cluster.bind_role(f"e2e-{user.split(':')[-1].split('@')[0]}",
                                        "e2e-pods", {"apiGroup": RBAC_GROUP, "kind": "User",
                                                     "name": user}, namespace=PROJECT)
            yield Helm(cluster, cluster.kubeconfig(workdir / "admin.kubeconfig", ADMIN_TOKEN))
        except BaseException:
            print(cluster.logs())
            raise


def forged_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": PROJECT,
                         "labels": {"execution-id": "f3a1b2c4d5e6", "project": "flytesnacks",
                                    "domain": "development"}},
            "spec": {"containers": [{"name": "task", "image": "python:3.11"}]}}


async def first_refusal(cluster: Cluster, pod: dict[str, Any], user: str) -> KubeError:
    """The API server's refusal of `pod` by `user`. It enforces a new admission policy once
    its policy controller has compiled it, a moment after the policy is stored: until then
    each admitted try is deleted and made again (for at most 30 s)."""
    path = f"/api/v1/namespaces/{PROJECT}/pods"
    async with asyncio.timeout(30):
        while True:
            try:
                await cluster.request("POST", path, pod, as_user=user)
            except KubeError as exc:
                return exc
            await cluster.request("DELETE", f"{path}/{pod['metadata']['name']}")
            await asyncio.sleep(0.05)  # the next try, not a wait for it


async def test_helm_install_upgrade_and_uninstall_of_the_packaged_chart(helm: Helm) -> None:
    cluster = helm.cluster
    await helm("install", "flyte-auth", str(PACKAGE), "--create-namespace",
               "--set", "tls.mode=self-signed", "--set", "webhook.failurePolicy=Ignore",
               "--set", f"cluster.serviceAccountIssuer={cluster.url}",
               "--set", "flyte2.enabled=true",
               "--set", "flyte2.runsUrl=http://oauth2-proxy.flyte:4180")
    [release_] = json.loads(await helm("list", "-o", "json"))
    assert (release_["status"], release_["app_version"]) == ("deployed", __version__)
    objects = await helm.objects()
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding", "NetworkPolicy"} <= kinds
    for obj in objects:  # every object the chart renders, stored as rendered
        stored = await cluster.request("GET", path_of(obj))
        assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == "flyte-auth"
    exchange = await cluster.request("GET", "/apis/apps/v1/namespaces/flyte-auth/deployments/"
                                            "flyte-auth-exchange")
    assert exchange["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"flyte-auth-server:{__version__}"

    # The guard the chart installed: the API server itself refuses a project user's pod
    # with Flyte's labels, and admits flytepropeller's.
    refused = await first_refusal(cluster, forged_pod("forged"), MALLORY)
    assert refused.status == 403
    assert "flyte-auth guard" in refused.body["message"]
    created = await cluster.request("POST", f"/api/v1/namespaces/{PROJECT}/pods",
                                    forged_pod("by-propeller"), as_user=PROPELLER)
    assert created["metadata"]["name"] == "by-propeller"

    await helm("upgrade", "flyte-auth", str(PACKAGE), "--reuse-values",
               "--set", "exchange.replicas=3")
    exchange = await cluster.request("GET", "/apis/apps/v1/namespaces/flyte-auth/deployments/"
                                            "flyte-auth-exchange")
    assert exchange["spec"]["replicas"] == 3

    await helm("uninstall", "flyte-auth", "--wait")
    for obj in objects:
        with pytest.raises(KubeError) as gone:
            await cluster.request("GET", path_of(obj))
        assert gone.value.status == 404, path_of(obj)

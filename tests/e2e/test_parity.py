"""The Kubernetes API stand-in (devstack/kube_api.py) must not drift from the real API
server: the same TokenReview, pod, namespace (read and watched), FlyteWorkflow and
admission-guard cases go to both, and their verdicts must agree."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.config import new_client_from_config

from devstack.kube_api import StubKubeAPI
from devstack.real.cluster import ADMIN_TOKEN, KubeError, running_cluster
from devstack.world import WEBHOOK_MANIFEST, install_guard
from flyte_auth_common.contract import (
    ENABLED_NAMESPACE_LABELS,
    GUARD_NAME,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    POD_SECURITY_LABEL,
)
from flyte_auth_exchange.errors import Refusal
from flyte_auth_exchange.kube import Kube
from flyte_auth_exchange.trust import (
    ExecutionRef,
    Owner,
    check_guard,
    check_pod_security,
    check_workflow,
)
from flyte_auth_injector import consts
from tests.e2e.manifests import FLYTEWORKFLOW_CRD, rendered_manifests
from tests.exchange.guards import WEAKENED, WEBHOOK, patched
from tests.support.watching import change_between_list_and_watch

pytestmark = [pytest.mark.timeout(600)]
NS = "parity-development"


async def stand_in_review(stub: StubKubeAPI, token: str, audiences: list[str]) -> dict[str, Any]:
    return stub._check(token, audiences)


def verdict(status: dict[str, Any]) -> tuple[bool, str | None, str | None, str | None]:
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    pod = extra.get("authentication.kubernetes.io/pod-name") or [None]
    uid = extra.get("authentication.kubernetes.io/pod-uid") or [None]
    return bool(status.get("authenticated")), user.get("username"), pod[0], uid[0]


async def test_token_review_and_pod_reads_agree_with_the_real_api_server(tmp_path: Path) -> None:
    stub = StubKubeAPI()
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NS)
        real_pod = await cluster.request("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "task"},
            "spec": {"serviceAccountName": "default",
                     "containers": [{"name": "task", "image": "python:3.11"}]}})
        stub_pod = stub.add_pod(NS, "task", uid=real_pod["metadata"]["uid"])

        async def real_review(token: str, audiences: list[str]) -> dict[str, Any]:
            doc = await cluster.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}})
            return dict(doc["status"])

        real_token = await cluster.token(NS, "default", audience="flyte-auth", pod=real_pod)
        stub_token = stub.token_for(stub_pod, audience="flyte-auth")
        cases = {
            "bound token, right audience": (["flyte-auth"], True),
            "bound token, wrong audience": (["vault"], False),
        }
        for name, (audiences, expected) in cases.items():
            real = verdict(await real_review(real_token, audiences))
            fake = verdict(await stand_in_review(stub, stub_token, audiences))
            assert real == fake, name
            assert real[0] is expected, name
        garbage = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
        assert verdict(await real_review(garbage, ["flyte-auth"]))[0] is False
        assert verdict(await stand_in_review(stub, garbage, ["flyte-auth"]))[0] is False

        # The pod is deleted: both stop vouching for its token, and both answer 404.
        await cluster.request("DELETE", f"/api/v1/namespaces/{NS}/pods/task")
        stub.pods.clear()
        # The real API server checks the bound pod through its informer cache: it stops
        # vouching once the cache has seen the deletion (the stand-in does at once).
        async with asyncio.timeout(30):
            while verdict(await real_review(real_token, ["flyte-auth"]))[0]:
                await asyncio.sleep(0.1)
        assert verdict(await stand_in_review(stub, stub_token, ["flyte-auth"]))[0] is False
        with pytest.raises(KubeError) as missing:
            await cluster.request("GET", f"/api/v1/namespaces/{NS}/pods/task")
        assert missing.value.status == 404
        assert missing.value.body["reason"] == "NotFound"
        await stub.start()
        try:
            import aiohttp  # noqa: PLC0415

            async with aiohttp.ClientSession() as session, session.get(
                    f"{stub.url}/api/v1/namespaces/{NS}/pods/task",
                    headers={"Authorization": f"Bearer {stub.bearer}"}) as resp:
                body = await resp.json()
            assert (resp.status, body["reason"], body["kind"]) == (404, "NotFound", "Status")
        finally:
            await stub.stop()


#: Namespaces enabled for injection, each with another Pod Security level.
PSS = {level: {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE} | (
    {POD_SECURITY_LABEL: level} if level != "unset" else {})
    for level in ("unset", "privileged", "restricted")}


async def check_verdict(check: Callable[[], Awaitable[None]]) -> str:
    """"ok", or the description of the refusal `check` raised."""
    try:
        await check()
    except Refusal as refusal:
        return refusal.description
    return "ok"


async def check_live_guard(kube: Kube, namespace: str) -> None:
    """The exchange server's guard check on what `kube` answers, through its own client."""
    ns = await kube.namespace(namespace)
    labels = None if ns is None else ns["metadata"].get("labels") or {}
    check_guard(namespace, labels, await kube.guard(GUARD_NAME, WEBHOOK), guard=GUARD_NAME,
                audience="flyte-auth", webhook=WEBHOOK)
    check_pod_security(namespace, labels or {}, cluster_default=False)


async def binding_verdicts(kube: Kube, workflow_uid: str) -> dict[str, str]:
    """The exchange server's trust checks (trust.py) on what `kube` answers, through our
    own client code: the verdict, or the refusal's description."""
    execution = ExecutionRef("parity", "development", "e1")
    owner = Owner("e1", workflow_uid)

    async def workflow(name: str, uid: str) -> None:
        check_workflow("ns/pod", Owner(name, uid), await kube.flyteworkflow(NS, name),
                       execution)

    return {
        "guarded namespace": await check_verdict(lambda: check_live_guard(kube, NS)),
        "unlabelled namespace": await check_verdict(
            lambda: check_live_guard(kube, "plain-development")),
        "missing namespace": await check_verdict(lambda: check_live_guard(kube, "nowhere")),
        **{f"pod security {level}": await check_verdict(
            functools.partial(check_live_guard, kube, f"pss-{level}")) for level in PSS},
        "workflow": await check_verdict(lambda: workflow(owner.name, owner.uid)),
        "workflow, other uid": await check_verdict(lambda: workflow(owner.name, "u-1")),
        "workflow missing": await check_verdict(lambda: workflow("gone", owner.uid)),
    }


async def test_binding_reads_agree_with_the_real_api_server(tmp_path: Path) -> None:
    """Namespaces, FlyteWorkflows and the admission guard, read by the exchange server's own
    client from the real API server and from the stand-in: the same verdicts."""
    stub = StubKubeAPI()
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NS, dict(ENABLED_NAMESPACE_LABELS))
        await cluster.namespace("plain-development")
        for level, labels in PSS.items():
            await cluster.namespace(f"pss-{level}", labels)
        await cluster.namespace("flyte-auth")
        await cluster.apply_all(rendered_manifests(), "flyte-auth")
        await cluster.apply(yaml.safe_load(WEBHOOK_MANIFEST.read_text()))
        await cluster.crd(FLYTEWORKFLOW_CRD)
        real_wf = await cluster.apply({
            "apiVersion": "flyte.lyft.com/v1alpha1", "kind": "FlyteWorkflow",
            "metadata": {"name": "e1", "namespace": NS},
            "executionId": {"project": "parity", "domain": "development", "name": "e1"}})
        real_kube = await Kube.connect(cluster.kubeconfig(tmp_path / "admin.kubeconfig",
                                                          ADMIN_TOKEN))
        await stub.start()
        stub.set_namespace(NS, labels=dict(ENABLED_NAMESPACE_LABELS))
        stub.set_namespace("plain-development")
        for level, labels in PSS.items():
            stub.set_namespace(f"pss-{level}", labels=labels)
        install_guard(stub)
        stub_wf = stub.add_workflow(NS, "parity", "development", "e1")
        stub_kube = await Kube.connect(stub.kubeconfig(tmp_path / "stub.kubeconfig"))
        try:
            real = await binding_verdicts(real_kube, real_wf["metadata"]["uid"])
            fake = await binding_verdicts(stub_kube, stub_wf["metadata"]["uid"])
        finally:
            await real_kube.close()
            await stub_kube.close()
            await stub.stop()
    assert real == fake
    assert real["guarded namespace"] == real["workflow"] == real["pod security restricted"] \
        == "ok"
    assert "has no pod-security.kubernetes.io/enforce label" in real["pod security unset"]
    assert "labels it pod-security.kubernetes.io/enforce=privileged" in real[
        "pod security privileged"]
    assert "does not exist" in real["workflow missing"]


async def test_pod_security_baseline_keeps_project_pods_off_the_nodes_other_pods(
        tmp_path: Path) -> None:
    """What the pod-security check relies on, on the real API server: in a namespace enabled
    as deploy/README says, a pod mounting the kubelet's pod directory (every pod's projected
    token and socket) is refused at creation, whoever creates it."""
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NS, dict(ENABLED_NAMESPACE_LABELS))
        with pytest.raises(KubeError) as refused:
            await cluster.apply({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "peek", "namespace": NS},
                "spec": {"containers": [{"name": "c", "image": "x", "volumeMounts": [
                    {"name": "pods", "mountPath": "/pods"}]}],
                         "volumes": [{"name": "pods", "hostPath": {
                             "path": "/var/lib/kubelet/pods"}}]}})
    assert refused.value.status == 403
    assert 'violates PodSecurity "baseline:latest"' in str(refused.value.body)
    assert "hostPath" in str(refused.value.body)


async def test_a_weakened_guard_is_refused_naming_what_differs(tmp_path: Path) -> None:
    """Each weakening applied on the real API server (PATCH) and on the stand-in: the
    exchange server's guard check refuses both, naming the same difference."""
    stub = StubKubeAPI()
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NS, dict(ENABLED_NAMESPACE_LABELS))
        await cluster.namespace("flyte-auth")
        await cluster.apply_all(rendered_manifests(), "flyte-auth")
        await cluster.apply(yaml.safe_load(WEBHOOK_MANIFEST.read_text()))
        real_kube = await Kube.connect(cluster.kubeconfig(tmp_path / "admin.kubeconfig",
                                                          ADMIN_TOKEN))
        await stub.start()
        stub.set_namespace(NS, labels=dict(ENABLED_NAMESPACE_LABELS))
        install_guard(stub)
        stub_kube = await Kube.connect(stub.kubeconfig(tmp_path / "stub.kubeconfig"))
        shipped = copy.deepcopy(stub.admission), copy.deepcopy(stub.webhooks)

        async def guard_verdicts() -> tuple[str, str]:
            return (await check_verdict(lambda: check_live_guard(real_kube, NS)),
                    await check_verdict(lambda: check_live_guard(stub_kube, NS)))

        try:
            verdicts = {"as shipped": await guard_verdicts()}
            for case, ((plural, name), patch, _) in WEAKENED.items():
                group = "apis/admissionregistration.k8s.io/v1"
                url = f"/{group}/{plural}/{name}"
                before = await cluster.request("GET", url)
                await cluster.request("PATCH", url, patch, "application/json-patch+json")
                stub.admission, stub.webhooks = copy.deepcopy(shipped[0]), copy.deepcopy(
                    shipped[1])
                if plural == "mutatingwebhookconfigurations":
                    stub.webhooks[name] = patched(stub.webhooks[name], patch)
                else:
                    stub.admission[(plural, name)] = patched(stub.admission[(plural, name)],
                                                              patch)
                verdicts[case] = await guard_verdicts()
                before["metadata"].pop("managedFields", None)
                await cluster.request("PUT", url, {**before, "metadata": {
                    **before["metadata"], "resourceVersion": (await cluster.request(
                        "GET", url))["metadata"]["resourceVersion"]}})
        finally:
            await real_kube.close()
            await stub_kube.close()
            await stub.stop()
    assert verdicts.pop("as shipped") == ("ok", "ok")
    for case, (real, fake) in verdicts.items():
        assert real == fake, case
        assert "guard check" in real and WEAKENED[case][2] in real, (case, real)


async def test_a_watch_from_a_lists_version_agrees_with_the_real_api_server(tmp_path: Path) -> None:
    """A namespace created between the injector's list and its watch arrives on the watch,
    from the real API server and from the stand-in alike."""
    annotations = {consts.ANNOTATION_EXPIRATION: "600"}
    stub = StubKubeAPI()
    async with running_cluster(tmp_path / "cluster") as cluster:
        real_api = await new_client_from_config(
            config_file=str(cluster.kubeconfig(tmp_path / "admin.kubeconfig", ADMIN_TOKEN)))
        await stub.start()
        stub_api = await new_client_from_config(
            config_file=str(stub.kubeconfig(tmp_path / "stub.kubeconfig")))

        async def create_real() -> None:
            await cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "late-development", "annotations": annotations}})

        async def create_stub() -> None:
            stub.set_namespace("late-development", annotations)

        try:
            real = await change_between_list_and_watch(real_api, "late-development", create_real)
            fake = await change_between_list_and_watch(stub_api, "late-development", create_stub)
        finally:
            await real_api.close()
            await stub_api.close()
            await stub.stop()
    assert real == fake == ("ADDED", annotations)

"""The trust decision as a table, without a server: each row is the objects the API server,
FlyteAdmin and the runs service would answer (a Scene), changed in one way, and the verdict
trust.bind gives: the binding, or the refusal's code, check and wording. A few of the same
cases also go through HTTP in test_exchange.py's refusal table, to prove the wiring."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from devstack.world import GUARD_MANIFEST, WEBHOOK_MANIFEST
from flyte_auth_common.contract import ENABLED_NAMESPACE_LABELS, GUARD_NAME
from flyte_auth_exchange.errors import Refusal
from flyte_auth_exchange.guard import GuardObjects, token_policy_name
from flyte_auth_exchange.trust import (
    Binding,
    ExecutionRef,
    Launcher,
    TrustSettings,
    bind,
    check_guarded,
)

NS, V2_NS, POD, UID = "flytesnacks-development", "flyte", "f3a1b2c4d5e6-n0-0", "pod-uid"
EXECUTION = ExecutionRef("flytesnacks", "development", "f3a1b2c4d5e6")
RUN = ExecutionRef("flytesnacks", "development", "r8k2m4p6q1", flyte=2)
ALICE = "alice@example.com"
SETTINGS = TrustSettings(namespace_template="{{ project }}-{{ domain }}", v2_namespace=V2_NS,
                         guard=GUARD_NAME, audience="flyte-auth",
                         webhook="flyte-auth-injector", pod_security_cluster_default=False,
                         flyte1=True, flyte2=True)


def shipped_guard() -> dict[str, Mapping[str, Any] | None]:
    objs = {o["metadata"]["name"] + "/" + o["kind"]: o
            for o in yaml.safe_load_all(GUARD_MANIFEST.read_text())}
    token = token_policy_name(GUARD_NAME)
    return {"policy": objs[f"{GUARD_NAME}/ValidatingAdmissionPolicy"],
            "binding": objs[f"{GUARD_NAME}/ValidatingAdmissionPolicyBinding"],
            "token_policy": objs[f"{token}/ValidatingAdmissionPolicy"],
            "token_binding": objs[f"{token}/ValidatingAdmissionPolicyBinding"],
            "webhook": yaml.safe_load(WEBHOOK_MANIFEST.read_text())}


@dataclass
class Scene:
    """What the reads answer (trust.Reads), and which reads were made."""

    pod_doc: dict[str, Any]
    namespaces: dict[str, dict[str, str]]
    workflows: dict[str, dict[str, Any]]
    taskactions: dict[str, dict[str, Any]]
    principals: dict[ExecutionRef, str]
    guard: dict[str, Mapping[str, Any] | None] = field(default_factory=shipped_guard)
    reads: list[str] = field(default_factory=list)

    async def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads.append("pod")
        meta = self.pod_doc.get("metadata") or {}
        return self.pod_doc if (meta.get("namespace"), meta.get("name")) == (namespace, name) \
            else None

    async def guarded(self, namespace: str) -> None:
        self.reads.append("guard")
        check_guarded(namespace, self.namespaces.get(namespace), GuardObjects(**self.guard),
                      SETTINGS)

    async def flyteworkflow(self, namespace: str, name: str, uid: str
                            ) -> Mapping[str, Any] | None:
        self.reads.append("flyteworkflow")
        return self.workflows.get(f"{namespace}/{name}")

    async def taskaction(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads.append("taskaction")
        return self.taskactions.get(f"{namespace}/{name}")

    async def launcher(self, execution: ExecutionRef) -> Launcher:
        self.reads.append("principal")
        return Launcher(self.principals.get(execution, ""))


def flyte1() -> Scene:
    """A Flyte 1 task pod as flytepropeller creates it, all of it as Flyte writes it."""
    workflow = {"metadata": {"name": EXECUTION.name, "namespace": NS, "uid": "wf-uid"},
                "executionId": {"project": "flytesnacks", "domain": "development",
                                "name": EXECUTION.name}}
    pod = {"metadata": {"name": POD, "namespace": NS, "uid": UID,
                        "labels": {"execution-id": EXECUTION.name, "project": "flytesnacks",
                                   "domain": "development", "node-id": "n0"},
                        "ownerReferences": [{"apiVersion": "flyte.lyft.com/v1alpha1",
                                             "kind": "flyteworkflow", "name": EXECUTION.name,
                                             "uid": "wf-uid", "controller": True}]},
           "status": {"phase": "Running"}}
    return Scene(pod, {NS: dict(ENABLED_NAMESPACE_LABELS)}, {f"{NS}/{EXECUTION.name}": workflow},
                 {}, {EXECUTION: ALICE})


def flyte2() -> Scene:
    """A Flyte 2 task pod as its executor creates it, controlled by its TaskAction."""
    name = f"{RUN.name}-a0"
    action = {"metadata": {"name": name, "namespace": V2_NS, "uid": "ta-uid"},
              "spec": {"project": RUN.project, "domain": RUN.domain, "runName": RUN.name,
                       "actionName": "a0"}}
    pod = {"metadata": {"name": POD, "namespace": V2_NS, "uid": UID,
                        "labels": {"run": RUN.name, "action": "a0"},
                        "ownerReferences": [{"apiVersion": "flyte.org/v1", "kind": "TaskAction",
                                             "name": name, "uid": "ta-uid",
                                             "controller": True}]},
           "status": {"phase": "Running"}}
    return Scene(pod, {V2_NS: dict(ENABLED_NAMESPACE_LABELS)}, {}, {f"{V2_NS}/{name}": action},
                 {RUN: ALICE})


def plain() -> Scene:
    scene = flyte1()
    scene.pod_doc["metadata"]["labels"] = {"app": "notebook"}
    scene.pod_doc["metadata"]["ownerReferences"] = []
    return scene


def changed(base: Callable[[], Scene], change: Callable[[Scene], object]) -> Callable[[], Scene]:
    def make() -> Scene:
        scene = base()
        change(scene)
        return scene
    return make


def meta(scene: Scene) -> dict[str, Any]:
    return scene.pod_doc["metadata"]  # type: ignore[no-any-return]


def owner(scene: Scene) -> dict[str, Any]:
    return meta(scene)["ownerReferences"][0]  # type: ignore[no-any-return]


GRANTS: dict[str, tuple[Callable[[], Scene], Binding]] = {
    "flyte 1 pod: its execution's launcher": (flyte1, Binding(EXECUTION, Launcher(ALICE))),
    "flyte 2 pod: its run's launcher": (flyte2, Binding(RUN, Launcher(ALICE))),
    "a pod that claims nothing is bound to nothing": (plain, Binding(None)),
    "the identity label as propeller writes it": (
        changed(flyte1, lambda s: meta(s)["labels"].update(
            {"execution-identity": "alice-example-com"})), Binding(EXECUTION, Launcher(ALICE))),
    "the owner kind as the API spells it": (
        changed(flyte1, lambda s: owner(s).update(kind="FlyteWorkflow")),
        Binding(EXECUTION, Launcher(ALICE))),
    "an execution with no principal: the policy decides": (
        changed(flyte1, lambda s: s.principals.clear()), Binding(EXECUTION)),
}

#: name -> (scene, settings changes, code, check, words in the description)
REFUSALS: dict[str, tuple[Callable[[], Scene], dict[str, Any], str, str | None, str]] = {
    "pod gone": (changed(flyte1, lambda s: meta(s).update(name="other")), {},
                 "invalid_grant", None, "does not exist"),
    "pod re-created": (changed(flyte1, lambda s: meta(s).update(uid="new")), {},
                       "invalid_grant", None, "another uid"),
    "pod finished": (changed(flyte1, lambda s: s.pod_doc.update(status={"phase": "Succeeded"})),
                     {}, "invalid_grant", None, "has finished (phase Succeeded)"),
    "owner but no execution labels": (
        changed(flyte1, lambda s: meta(s).update(labels={"node-id": "n0"})), {},
        "access_denied", "labels", "no execution-id, project, domain label"),
    "flyte 2 labels on a pod no TaskAction controls": (
        changed(flyte1, lambda s: meta(s).update(labels={"run": "r", "action": "a0"})), {},
        "access_denied", "owner", "no TaskAction controls it"),
    "another project's execution": (
        changed(flyte1, lambda s: meta(s)["labels"].update(project="other")), {},
        "access_denied", "namespace", "which Flyte runs only in namespace 'other-development'"),
    "namespace not labelled": (changed(flyte1, lambda s: s.namespaces[NS].clear()), {},
                               "access_denied", "guard", "is not labelled"),
    "guard policy deleted": (changed(flyte1, lambda s: s.guard.update(policy=None)), {},
                             "access_denied", "guard", "does not exist"),
    "guard binding fails open": (
        changed(flyte1, lambda s: s.guard.update(binding=_failing_open(s.guard["binding"]))),
        {}, "access_denied", "guard", "parameterNotFoundAction is not Deny"),
    "pod security privileged": (
        changed(flyte1, lambda s: s.namespaces[NS].update(
            {"pod-security.kubernetes.io/enforce": "privileged"})), {},
        "access_denied", "pod-security", "labels it pod-security.kubernetes.io/enforce="
        "privileged"),
    "no pod security label": (
        changed(flyte1, lambda s: s.namespaces[NS].pop("pod-security.kubernetes.io/enforce")),
        {}, "access_denied", "pod-security", "has no pod-security.kubernetes.io/enforce"),
    "owner not the controller": (changed(flyte1, lambda s: owner(s).update(controller=False)),
                                 {}, "access_denied", "owner", "not controlled by a "
                                 "FlyteWorkflow"),
    "workflow gone": (changed(flyte1, lambda s: s.workflows.clear()), {}, "access_denied",
                      "owner", "which does not exist"),
    "workflow re-created": (changed(flyte1, lambda s: owner(s).update(uid="forged")), {},
                            "access_denied", "owner", "with another uid"),
    "workflow of another execution": (
        changed(flyte1, lambda s: s.workflows[f"{NS}/{EXECUTION.name}"].update(
            executionId={"project": "flytesnacks", "domain": "development", "name": "x"})),
        {}, "access_denied", "owner", "runs execution flytesnacks/development/x"),
    "identity label of someone else": (
        changed(flyte1, lambda s: meta(s)["labels"].update({"execution-identity": "mallory"})),
        {}, "access_denied", "identity-label", "does not match the principal"),
    "no FlyteAdmin for a flyte 1 pod": (flyte1, {"flyte1": False}, "access_denied", "owner",
                                        "--admin-endpoint"),
    "no runs service for a flyte 2 pod": (flyte2, {"flyte2": False}, "access_denied", "owner",
                                          "--runs-url"),
    "flyte 2 pod outside flyte 2's namespace": (flyte2, {"v2_namespace": "elsewhere"},
                                                "access_denied", "namespace",
                                                "only in namespace 'elsewhere'"),
    "two TaskAction controllers": (
        changed(flyte2, lambda s: meta(s)["ownerReferences"].append(dict(owner(s)))), {},
        "access_denied", "owner", "exactly one"),
    "TaskAction gone": (changed(flyte2, lambda s: s.taskactions.clear()), {}, "access_denied",
                        "owner", "which does not exist"),
    "TaskAction without a run": (
        changed(flyte2, lambda s: next(iter(s.taskactions.values())).update(spec={})), {},
        "access_denied", "owner", "has no spec project, domain and runName"),
    "TaskAction re-created": (changed(flyte2, lambda s: owner(s).update(uid="forged")), {},
                              "access_denied", "owner", "with another uid"),
    "flyte 2 namespace not labelled": (changed(flyte2, lambda s: s.namespaces[V2_NS].clear()),
                                       {}, "access_denied", "guard", "is not labelled"),
}


def _failing_open(binding: Mapping[str, Any] | None) -> dict[str, Any]:
    weakened = copy.deepcopy(dict(binding or {}))
    weakened["spec"]["paramRef"]["parameterNotFoundAction"] = "Allow"
    return weakened


def verdict(scene: Scene, settings: TrustSettings = SETTINGS) -> Binding:
    meta_ = scene.pod_doc.get("metadata") or {}
    namespace = str(meta_.get("namespace"))
    return asyncio.run(bind(namespace, POD, UID, settings, scene))


@pytest.mark.parametrize("name", sorted(GRANTS))
def test_grants(name: str) -> None:
    make, expected = GRANTS[name]
    assert verdict(make()) == expected


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_name_their_check(name: str) -> None:
    make, settings, code, check, words = REFUSALS[name]
    scene = make()
    with pytest.raises(Refusal) as refused:
        verdict(scene, TrustSettings(**{**SETTINGS.__dict__, **settings}))
    assert (refused.value.code, refused.value.check) == (code, check)
    assert words in refused.value.description
    if check is not None:
        assert refused.value.description.startswith(f"{check} check: ")


def test_the_checks_read_only_what_they_need_in_order() -> None:
    """Claims are checked before anything is read about them: a pod claiming another
    project's execution costs one read; a bound pod reads its guard before its owner, and
    FlyteAdmin last."""
    scene = REFUSALS["another project's execution"][0]()
    with pytest.raises(Refusal):
        verdict(scene)
    assert scene.reads == ["pod"]
    scene = flyte1()
    verdict(scene)
    assert scene.reads == ["pod", "guard", "flyteworkflow", "principal"]

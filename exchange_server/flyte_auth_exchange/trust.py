"""The trust decision: from the pod a subject token names to the execution it is bound to
and whom that execution names, using only what RBAC controls. Every check is here; no I/O
library is imported: `bind` asks a `Reads` (the service's Kubernetes and FlyteAdmin reads,
or a test's dictionaries) for each object it needs, in the order the checks need them, and
judges what comes back.

    pod         the pod exists, with the uid the token was issued for, and has not finished;

A pod's creator writes its labels and owner references, so they are claims. What makes
them proof:

    namespace   the pod runs in the namespace FlyteAdmin maps the execution's project and
                domain to (namespace_mapping.template), so a pod cannot claim another
                project's execution;
    guard       the namespace is labelled for injection and the ValidatingAdmissionPolicy
                that lets only Flyte's identities write the execution labels and
                FlyteWorkflow owner references is bound and failing closed;
    owner       the pod's controller is the FlyteWorkflow FlyteAdmin created for the
                execution (same uid), and that object's executionId names the execution.

Flyte 2 pods are bound by their owner alone: the executor makes the TaskAction the runs
service created for the action each pod's controller, and that object's spec names the run
(project, domain, runName). Its labels (`run`, `action`) are generic names and prove nothing.

    namespace   the pod runs in the one namespace Flyte 2 runs actions in
                (actions.kubernetes.namespace);
    guard       as above: only Flyte's identities may put a flyte.org owner on a pod there;
    owner       the pod's controller is a TaskAction of that name and uid.

    identity-label  a Flyte 1 pod's execution-identity label, if any, names the principal
                FlyteAdmin records (flytepropeller writes it sanitized).

Each refusal is a Refusal whose `check` names the check that failed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flyte_auth_common.contract import (
    FLYTEWORKFLOW_GROUP,
    GUARDED_LABELS,
    LABEL_DOMAIN,
    LABEL_EXECUTION_ID,
    LABEL_EXECUTION_IDENTITY,
    LABEL_PROJECT,
    LABEL_V2_ACTION,
    LABEL_V2_RUN,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    POD_SECURITY_LABEL,
    POD_SECURITY_LEVELS,
    TASKACTION_GROUP,
    TASKACTION_KIND,
)
from flyte_auth_exchange import guard as guard_spec
from flyte_auth_exchange.errors import ACCESS_DENIED, INVALID_GRANT, Refusal
from flyte_auth_exchange.guard import GuardObjects

CHECK_NAMESPACE = "namespace"
CHECK_GUARD = "guard"
CHECK_OWNER = "owner"
CHECK_LABELS = "labels"
CHECK_IDENTITY_LABEL = "identity-label"
CHECK_PRINCIPAL = "principal"
CHECK_POLICY = "policy"
CHECK_POD_SECURITY = "pod-security"
#: propeller builds the owner reference from FlyteWorkflowGVK, whose Kind is lowercase
#: ("flyteworkflow") when the object it read carried no TypeMeta; either spelling is Flyte's.
FLYTEWORKFLOW_KIND = "flyteworkflow"
FINISHED_PHASES = ("Succeeded", "Failed")
_NOT_DNS1123 = re.compile(r"[^-a-z0-9]+")


@dataclass(frozen=True)
class ExecutionRef:
    """A Flyte 1 execution, or (flyte=2) a Flyte 2 run: both are project/domain/name."""
    project: str
    domain: str
    name: str
    flyte: int = 1

    @property
    def kind(self) -> str:
        """What Flyte calls it: "execution" (Flyte 1) or "run" (Flyte 2)."""
        return "run" if self.flyte == 2 else "execution"

    def __str__(self) -> str:
        return f"{self.project}/{self.domain}/{self.name}"


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str


@dataclass(frozen=True)
class Launcher:
    """Who launched an execution: the principal ("" if FlyteAdmin or the runs service records
    no one) and what the record says of them (Flyte 2's `executed_by`: `email`, `given_name`,
    `family_name`, as OIDC names them; FlyteAdmin records none)."""

    principal: str
    profile: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    """What the pod is bound to: its execution (None for a pod that claims none) and who
    launched it."""

    execution: ExecutionRef | None
    launcher: Launcher = Launcher("")

    @property
    def principal(self) -> str:
        return self.launcher.principal


@dataclass(frozen=True)
class TrustSettings:
    """What the checks compare against, from the exchange server's configuration."""

    namespace_template: str  # FlyteAdmin's namespace_mapping.template
    v2_namespace: str  # Flyte 2's actions.kubernetes.namespace
    guard: str  # the ValidatingAdmissionPolicy (and binding) deploy/ ships
    audience: str  # the projected token's audience the guard keeps to kubelets
    webhook: str  # the injector's MutatingWebhookConfiguration
    pod_security_cluster_default: bool  # --pod-security cluster-default
    flyte1: bool  # a FlyteAdmin to ask who launched an execution
    flyte2: bool  # a runs service to ask who launched a run


class Reads(Protocol):
    """The objects `bind` judges, read on demand; None where the object does not exist."""

    async def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def guarded(self, namespace: str) -> None:
        """Raise the guard check's Refusal unless `namespace` is guarded (`check_guarded` on
        the namespace's labels and the guard objects; the service caches the verdict)."""

    async def flyteworkflow(self, namespace: str, name: str, uid: str
                            ) -> Mapping[str, Any] | None:
        """The FlyteWorkflow `name`; `uid` is the one the pod's owner reference names, so a
        cache keyed on it never judges a pod by an object since re-created under that name."""

    async def taskaction(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def launcher(self, execution: ExecutionRef) -> Launcher:
        """Who launched the execution (FlyteAdmin) or run (the runs service)."""


async def bind(namespace: str, pod_name: str, pod_uid: str | None, settings: TrustSettings,
               reads: Reads) -> Binding:
    """The pod's binding: pod → execution (Flyte 1: labels, namespace, guard, its
    FlyteWorkflow) or run (Flyte 2: its TaskAction), then → who launched it."""
    where = f"{namespace}/{pod_name}"
    meta = check_pod(where, await reads.pod(namespace, pod_name), pod_uid)
    if not is_flyte_claim(meta):
        return Binding(None)
    taskaction = taskaction_owner(where, meta)
    if taskaction is not None:
        if not settings.flyte2:
            raise refuse(CHECK_OWNER, f"pod {where} is a Flyte 2 task pod (a TaskAction "
                         "controls it), and this server has no runs service to ask who "
                         "launched its run (--runs-url)")
        check_v2_namespace(where, namespace, settings.v2_namespace)
        await reads.guarded(namespace)
        run = run_of(where, taskaction, await reads.taskaction(namespace, taskaction.name))
        return Binding(run, await reads.launcher(run))
    if not settings.flyte1:
        raise refuse(CHECK_OWNER, f"pod {where} is a Flyte 1 task pod, and this server has "
                     "no FlyteAdmin to ask who launched it (--admin-endpoint)")
    execution = claimed_execution(where, meta)
    check_namespace(settings.namespace_template, namespace, execution)
    await reads.guarded(namespace)
    owner = controller_owner(where, meta)
    check_workflow(where, owner, await reads.flyteworkflow(namespace, owner.name, owner.uid),
                   execution)
    launcher = await reads.launcher(execution)
    check_identity_label(meta, launcher.principal, execution)
    return Binding(execution, launcher)


def check_pod(where: str, pod: Mapping[str, Any] | None, uid: str | None) -> Mapping[str, Any]:
    """The pod's metadata, once it is the running pod the token was issued for (these
    refusals are the grant's, invalid_grant, and name no check)."""
    if pod is None:
        raise Refusal(INVALID_GRANT, f"pod {where} named by the subject token does not exist")
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("uid") != uid:
        raise Refusal(INVALID_GRANT, f"pod {where} has another uid than the subject token "
                      "was issued for (the pod was deleted and re-created)")
    phase = status.get("phase")
    if phase in FINISHED_PHASES:
        raise Refusal(INVALID_GRANT, f"pod {where} has finished (phase {phase})")
    return meta


def check_guarded(namespace: str, ns_labels: Mapping[str, Any] | None, found: GuardObjects,
                  settings: TrustSettings) -> None:
    """The namespace's pods are Flyte's to claim: the guard holds it, and Pod Security
    keeps its pods from the node's other pods."""
    check_guard(namespace, ns_labels, found, guard=settings.guard, audience=settings.audience,
                webhook=settings.webhook)
    check_pod_security(namespace, ns_labels or {},
                       cluster_default=settings.pod_security_cluster_default)


def sanitize_label_value(value: str) -> str:
    """What flytepropeller writes into the execution-identity label for a principal:
    lower-cased, runs of characters outside [-a-z0-9] turned into '-', at most 63
    characters, '-' trimmed from both ends."""
    return _NOT_DNS1123.sub("-", value.lower())[:63].strip("-")


def check_identity_label(meta: Mapping[str, Any], principal: str,
                         execution: ExecutionRef) -> None:
    label = (meta.get("labels") or {}).get(LABEL_EXECUTION_IDENTITY)
    if label is not None and label != sanitize_label_value(principal):
        raise refuse(CHECK_IDENTITY_LABEL, f"the pod's {LABEL_EXECUTION_IDENTITY} label does "
                     f"not match the principal FlyteAdmin records for {execution}")


def namespace_for(template: str, project: str, domain: str) -> str:
    """FlyteAdmin's GetNamespaceName: plain substitution of both placeholders."""
    return template.replace("{{ project }}", project).replace("{{ domain }}", domain)


def refuse(check: str, message: str) -> Refusal:
    return Refusal(ACCESS_DENIED, f"{check} check: {message}", check=check)


def is_flyte_claim(meta: Mapping[str, Any]) -> bool:
    """Whether the pod claims to be Flyte's: any guarded label, or a FlyteWorkflow or
    TaskAction owner."""
    labels = meta.get("labels") or {}
    return any(k in labels for k in GUARDED_LABELS) or bool(_flyte_owners(meta)) \
        or bool(_taskaction_owners(meta))


def claimed_execution(where: str, meta: Mapping[str, Any]) -> ExecutionRef:
    labels = meta.get("labels") or {}
    missing = [k for k in (LABEL_EXECUTION_ID, LABEL_PROJECT, LABEL_DOMAIN)
               if not isinstance(labels.get(k), str) or not labels.get(k)]
    if missing and all(k in labels for k in (LABEL_V2_RUN, LABEL_V2_ACTION)):
        raise refuse(CHECK_OWNER, f"pod {where} has Flyte 2's {LABEL_V2_RUN} and "
                     f"{LABEL_V2_ACTION} labels but no TaskAction controls it; only pods the "
                     "v2 executor creates for a run's action get its launcher's identity")
    if missing:
        raise refuse(CHECK_LABELS, f"pod {where} is not a Flyte task pod (no "
                     f"{', '.join(missing)} label)")
    return ExecutionRef(labels[LABEL_PROJECT], labels[LABEL_DOMAIN], labels[LABEL_EXECUTION_ID])


def check_namespace(template: str, namespace: str, execution: ExecutionRef) -> None:
    expected = namespace_for(template, execution.project, execution.domain)
    if namespace != expected:
        raise refuse(CHECK_NAMESPACE, f"the pod in namespace {namespace!r} claims execution "
                     f"{execution}, which Flyte runs only in namespace {expected!r} "
                     f"(namespace template {template!r}); labels cannot move an execution "
                     "to another namespace")


def check_guard(namespace: str, ns_labels: Mapping[str, Any] | None, found: GuardObjects, *,
                guard: str, audience: str, webhook: str) -> None:
    """The namespace is labelled for injection and the guard that protects its pods is the
    one deploy/ ships (guard.py), bound to it and failing closed; otherwise anyone who may
    create pods there could forge Flyte's claims, or act as a pod that carries them."""
    fix = "label it and install the guard from deploy/ (README: trust model)"
    if ns_labels is None or ns_labels.get(NAMESPACE_LABEL) != NAMESPACE_LABEL_VALUE:
        raise refuse(CHECK_GUARD, f"namespace {namespace!r} is not labelled "
                     f"{NAMESPACE_LABEL}={NAMESPACE_LABEL_VALUE}, so the admission guard "
                     f"{guard!r} does not protect its pods' Flyte labels; {fix}")
    missing = guard_spec.missing(found, guard, webhook)
    if missing:
        raise refuse(CHECK_GUARD, f"{' and '.join(missing)} does not exist, so nothing stops "
                     f"a pod's creator from writing Flyte's labels or acting as its pods; {fix}")
    differences = guard_spec.differences(found, guard=guard, audience=audience, webhook=webhook,
                                         namespace=namespace, labels=ns_labels)
    if differences:
        raise refuse(CHECK_GUARD, f"the admission guard {guard!r} is not enforcing what "
                     f"deploy/ ships on namespace {namespace!r}: {'; '.join(differences)}; "
                     f"{fix}")


def check_pod_security(namespace: str, ns_labels: Mapping[str, Any], *,
                       cluster_default: bool) -> None:
    """Pod Security `baseline` or stricter holds the namespace's pods: otherwise a project
    user's own pod could mount the node's kubelet directory (hostPath) and read any pod's
    projected token and socket there. Only who may update namespaces sets the label."""
    level = ns_labels.get(POD_SECURITY_LABEL)
    if level in POD_SECURITY_LEVELS or (level is None and cluster_default):
        return
    said = f"labels it {POD_SECURITY_LABEL}={level}" if level is not None else \
        f"has no {POD_SECURITY_LABEL} label"
    raise refuse(CHECK_POD_SECURITY, f"namespace {namespace!r} {said}, so nothing stops a pod "
                 "there from mounting the node's other pods (hostPath) and their tokens; label "
                 f"it {POD_SECURITY_LABEL}=baseline (or restricted), or, if the API server's "
                 "PodSecurity defaults enforce baseline, start the exchange server with "
                 "--pod-security cluster-default")


def controller_owner(where: str, meta: Mapping[str, Any]) -> Owner:
    owner = _sole_controller(_flyte_owners(meta))
    if owner is None:
        raise refuse(CHECK_OWNER, f"pod {where} is not controlled by a FlyteWorkflow "
                     f"(ownerReferences with apiVersion {FLYTEWORKFLOW_GROUP}/*, kind "
                     "FlyteWorkflow, controller: true); only pods flytepropeller creates for "
                     "an execution get its launcher's identity")
    return owner


def check_workflow(where: str, owner: Owner, workflow: Mapping[str, Any] | None,
                   execution: ExecutionRef) -> None:
    workflow = _owner_object(where, "FlyteWorkflow", owner, workflow)
    exec_id = workflow.get("executionId") or {}
    found = ExecutionRef(str(exec_id.get("project", "")), str(exec_id.get("domain", "")),
                         str(exec_id.get("name", ""))) if isinstance(exec_id, dict) else None
    if found != execution:
        raise refuse(CHECK_OWNER, f"pod {where} claims execution {execution}, but its "
                     f"FlyteWorkflow {owner.name!r} runs execution {found}")


def taskaction_owner(where: str, meta: Mapping[str, Any]) -> Owner | None:
    """The TaskAction controlling a Flyte 2 pod; None if the pod names no TaskAction."""
    refs = _taskaction_owners(meta)
    if not refs:
        return None
    owner = _sole_controller(refs)
    if owner is None:
        raise refuse(CHECK_OWNER, f"pod {where} names a TaskAction owner but is not controlled "
                     f"by exactly one ({TASKACTION_GROUP}/*, kind {TASKACTION_KIND}, "
                     "controller: true)")
    return owner


def check_v2_namespace(where: str, namespace: str, v2_namespace: str) -> None:
    if namespace != v2_namespace:
        raise refuse(CHECK_NAMESPACE, f"pod {where} names a TaskAction owner, but Flyte 2 runs "
                     f"actions only in namespace {v2_namespace!r} (--v2-namespace, Flyte's "
                     "actions.kubernetes.namespace)")


def run_of(where: str, owner: Owner, taskaction: Mapping[str, Any] | None) -> ExecutionRef:
    """The run a pod's TaskAction belongs to, from the object's spec."""
    spec = _owner_object(where, TASKACTION_KIND, owner, taskaction).get("spec")
    fields = [spec.get(k) for k in ("project", "domain", "runName")] \
        if isinstance(spec, dict) else []
    if len(fields) != 3 or not all(isinstance(f, str) and f for f in fields):
        raise refuse(CHECK_OWNER, f"TaskAction {owner.name!r} of pod {where} has no spec "
                     "project, domain and runName")
    project, domain, name = (str(f) for f in fields)
    return ExecutionRef(project, domain, name, flyte=2)


def _sole_controller(refs: list[Mapping[str, Any]]) -> Owner | None:
    """The one reference among `refs` marked controller, or None if none or several are."""
    controllers = [r for r in refs if r.get("controller") is True]
    if len(controllers) != 1:
        return None
    return Owner(str(controllers[0].get("name", "")), str(controllers[0].get("uid", "")))


def _owner_object(where: str, kind: str, owner: Owner,
                  obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The object the pod's controller reference names, once it exists with that uid."""
    if obj is None:
        raise refuse(CHECK_OWNER, f"pod {where} names {kind} {owner.name!r} as its "
                     "controller, which does not exist")
    if (obj.get("metadata") or {}).get("uid") != owner.uid:
        raise refuse(CHECK_OWNER, f"pod {where} names {kind} {owner.name!r} with another uid "
                     "than the object of that name (it was re-created, or the reference is "
                     "forged)")
    return obj


def _flyte_owners(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _owners(meta, FLYTEWORKFLOW_GROUP, FLYTEWORKFLOW_KIND)


def _taskaction_owners(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _owners(meta, TASKACTION_GROUP, TASKACTION_KIND.lower())


def _owners(meta: Mapping[str, Any], group: str, kind: str) -> list[Mapping[str, Any]]:
    refs = meta.get("ownerReferences") or []
    return [r for r in refs if isinstance(r, dict)
            and str(r.get("apiVersion", "")).startswith(group + "/")
            and str(r.get("kind", "")).lower() == kind]

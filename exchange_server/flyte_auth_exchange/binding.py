"""Pure checks that tie a pod to the Flyte execution it claims, using only what RBAC
controls. No I/O here: the service reads the objects, these functions judge them.

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

Each refusal is a Refusal whose `check` names the check that failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flyte_auth_common.contract import (
    FLYTEWORKFLOW_GROUP,
    GUARDED_LABELS,
    LABEL_DOMAIN,
    LABEL_EXECUTION_ID,
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
from flyte_auth_exchange.admin import ExecutionRef
from flyte_auth_exchange.errors import ACCESS_DENIED, Refusal
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


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str


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

"""The admission guard the exchange server's binding rests on, as data, and the pure check
that what the API server holds is that guard (not merely objects of its name).

Three parts, each closing a way to act as a pod that carries Flyte's claims (its execution
labels, or a FlyteWorkflow / TaskAction owner):

    pods    ValidatingAdmissionPolicy `NAME`, bound to injected namespaces: only Flyte's
            `creators` may put the claims on a pod; once a pod carries them, only they (or
            a cluster admin, group system:masters) may change its spec: an image, an
            ephemeral container (pods/ephemeralcontainers);
    tokens  ValidatingAdmissionPolicy `NAME-token`, bound everywhere: a service-account
            token with the exchange server's audience is issued only to a node's kubelet
            (system:node:*, group system:nodes), so nobody can request a pod-bound token
            with `create serviceaccounts/token`;
    connect the injector's webhook `connect.flyte-auth.flyte.org` (CONNECT on pods/exec,
            attach, portforward, proxy): it sees the pod the API server's CEL cannot, and
            refuses those on a pod with Flyte's claims to all but creators and admins.

deploy/ renders exactly `manifests()` (tests/deploy checks); `differences()` names what a
live object lacks of the shipped one, so the exchange server refuses to trust a guard that
was weakened, scoped away from a namespace, or made to fail open.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flyte_auth_common.contract import (
    CLUSTER_ADMINS_GROUP,
    CONNECT_SUBRESOURCES,
    CONNECT_WEBHOOK_NAME,
    FLYTEWORKFLOW_GROUP,
    GUARDED_LABELS,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    TASKACTION_GROUP,
)

GROUP_VERSION = "admissionregistration.k8s.io/v1"
_OWNERS = " || ".join(f"r.apiVersion.startsWith('{g}/')"
                      for g in (FLYTEWORKFLOW_GROUP, TASKACTION_GROUP))


def _claims(obj: str, when: str = "") -> str:
    """CEL: the claims `obj` carries, as 'label=value' and 'owner=Kind/name/uid' strings."""
    return (f"({when}has({obj}.metadata.labels) ? variables.guarded.filter(k, k in "
            f"{obj}.metadata.labels).map(k, k + '=' + {obj}.metadata.labels[k]) : []) + "
            f"({when}has({obj}.metadata.ownerReferences) ? {obj}.metadata.ownerReferences"
            f".filter(r, {_OWNERS}).map(r, 'owner=' + r.kind + '/' + r.name + '/' + r.uid) "
            ": [])")


POD_VARIABLES = [
    {"name": "guarded", "expression": "[" + ", ".join(f"'{k}'" for k in GUARDED_LABELS) + "]"},
    {"name": "claims", "expression": _claims("object")},
    {"name": "oldClaims", "expression": _claims("oldObject", "request.operation == 'UPDATE' && ")},
    {"name": "creator", "expression": "request.userInfo.username in "
                                      "params.data.creators.split(',').map(c, c.trim())"},
    {"name": "admin", "expression": f"has(request.userInfo.groups) && "
                                    f"'{CLUSTER_ADMINS_GROUP}' in request.userInfo.groups"},
]
_WHO = ("'flyte-auth guard: only Flyte (' + params.data.creators + ')")
POD_VALIDATIONS = [
    {"expression": "variables.claims.all(c, c in variables.oldClaims) || variables.creator",
     "reason": "Forbidden",
     "messageExpression": _WHO + " may set the labels ' + variables.guarded.join(', ') + "
                          "' or a flyte.lyft.com or flyte.org owner reference on pods in "
                          f"namespaces labelled {NAMESPACE_LABEL}={NAMESPACE_LABEL_VALUE}; ' + "
                          "request.userInfo.username + ' may not, because they decide whose "
                          "identity the pod gets. Create the pod without them, or run it "
                          "through Flyte.'"},
    {"expression": "request.operation != 'UPDATE' || size(variables.oldClaims) == 0 || "
                   "variables.creator || variables.admin || object.spec == oldObject.spec",
     "reason": "Forbidden",
     "messageExpression": _WHO + " or a cluster admin may change the spec (an image, an "
                          "ephemeral container) of pod ' + object.metadata.name + ', which "
                          "carries Flyte\\'s claims (' + variables.oldClaims.join(', ') + '): "
                          "a changed container would run with its launcher\\'s identity. ' + "
                          "request.userInfo.username + ' may not; debug a copy of the task "
                          "run as yourself instead.'"},
]
POD_RESOURCES = ["pods", "pods/status", "pods/ephemeralcontainers"]


def _rules(operations: list[str], resources: list[str]) -> dict[str, Any]:
    return {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                               "operations": operations, "resources": resources}]}


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "labels": {"app.kubernetes.io/name": "flyte-auth-guard",
                                     "app.kubernetes.io/part-of": "flyte-auth"}}


def pod_policy(name: str) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(name),
            "spec": {"failurePolicy": "Fail",
                     "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                     "matchConstraints": _rules(["CREATE", "UPDATE"], POD_RESOURCES),
                     "variables": POD_VARIABLES, "validations": POD_VALIDATIONS}}


def pod_binding(name: str, params: str, params_namespace: str) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(name),
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     "paramRef": {"name": params, "namespace": params_namespace,
                                  "parameterNotFoundAction": "Deny"},
                     "matchResources": {"namespaceSelector": {"matchLabels": {
                         NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}}}}


def token_policy_name(guard: str) -> str:
    return f"{guard}-token"


def token_policy(guard: str, audience: str) -> dict[str, Any]:
    """Tokens for `audience` only to kubelets. The match condition keeps every other token
    request out of the policy (an error in it must not deny a cluster's tokens)."""
    quoted = "'" + audience.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(token_policy_name(guard)),
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": _rules(["CREATE"], ["serviceaccounts/token"]),
                     "matchConditions": [{
                         "name": "exchange-audience",
                         "expression": f"has(object.spec.audiences) && "
                                       f"object.spec.audiences.exists(a, a == {quoted})"}],
                     "validations": [{
                         "expression": "request.userInfo.username.startsWith('system:node:') "
                                       "&& has(request.userInfo.groups) && 'system:nodes' in "
                                       "request.userInfo.groups",
                         "reason": "Forbidden",
                         "messageExpression": f"'flyte-auth guard: only a node\\'s kubelet may "
                                              f"request a service-account token with the "
                                              f"audience ' + {quoted} + ' (the exchange server "
                                              f"would take it for the pod it is bound to); ' "
                                              f"+ request.userInfo.username + ' may not. Use "
                                              f"another audience.'"}]}}


def token_binding(guard: str) -> dict[str, Any]:
    name = token_policy_name(guard)
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(name),
            "spec": {"policyName": name, "validationActions": ["Deny"]}}


def manifests(guard: str, params: str, params_namespace: str,
              audience: str) -> list[dict[str, Any]]:
    """The guard's cluster-scoped objects (the connect webhook is the injector's)."""
    return [pod_policy(guard), pod_binding(guard, params, params_namespace),
            token_policy(guard, audience), token_binding(guard)]


# --- is the live guard the shipped one? ------------------------------------------------------

@dataclass(frozen=True)
class GuardObjects:
    """The guard's objects as the API server holds them (None: not found)."""

    policy: Mapping[str, Any] | None
    binding: Mapping[str, Any] | None
    token_policy: Mapping[str, Any] | None
    token_binding: Mapping[str, Any] | None
    webhook: Mapping[str, Any] | None


def _rule_set(spec: Mapping[str, Any], key: str = "resourceRules") -> set[tuple[str, ...]]:
    """(group, version, operation, resource) for each rule; '*' kept as written."""
    fields = ("apiGroups", "apiVersions", "operations", "resources")
    return {tuple(map(str, combination)) for rule in spec.get(key) or []
            if isinstance(rule, Mapping)
            for combination in itertools.product(*(rule.get(f) or [] for f in fields))}


def _expressions(items: Any, key: str = "expression") -> list[Any]:
    return [(i.get("name"), i.get(key)) if "name" in i else i.get(key)
            for i in items or [] if isinstance(i, Mapping)]


def policy_differences(live: Mapping[str, Any], shipped: Mapping[str, Any]) -> list[str]:
    """What `live` (a ValidatingAdmissionPolicy as the API server returns it) changes of
    `shipped`: anything that decides, not messages or labels."""
    spec, want = live.get("spec") or {}, shipped["spec"]
    out = []
    if spec.get("failurePolicy", "Fail") != "Fail":
        out.append(f"failurePolicy is {spec.get('failurePolicy')!r}, not 'Fail'")
    constraints = spec.get("matchConstraints") or {}
    missing = _rule_set(want["matchConstraints"]) - _rule_set(constraints)
    if missing:
        out.append("it does not match " + ", ".join(sorted(f"{op} {r}"
                                                             for _, _, op, r in missing)))
    if constraints.get("excludeResourceRules"):
        out.append("matchConstraints.excludeResourceRules exempts resources")
    for key in ("namespaceSelector", "objectSelector"):
        if constraints.get(key) not in (None, {}):
            out.append(f"matchConstraints.{key} narrows what it sees")
    for key in ("variables", "validations", "matchConditions"):
        if _expressions(spec.get(key)) != _expressions(want.get(key)):
            out.append(f"its {key} differ from the shipped ones")
    if (spec.get("paramKind") or None) != (want.get("paramKind") or None):
        out.append("its paramKind differs")
    return out


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    """Whether a Kubernetes label selector matches `labels` (an absent selector: all)."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (op == "In" and not (present and labels[key] in values)) or \
                (op == "NotIn" and present and labels[key] in values) or \
                (op == "Exists" and not present) or (op == "DoesNotExist" and present) or \
                op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def namespace_labels(namespace: str, labels: Mapping[str, Any]) -> dict[str, Any]:
    """A namespace's labels as selectors see them (the API server adds its name)."""
    return {**labels, "kubernetes.io/metadata.name": namespace}


def binding_differences(live: Mapping[str, Any], policy: str, namespace: str,
                        labels: Mapping[str, Any], *, params: bool) -> list[str]:
    """What keeps `live` (a ValidatingAdmissionPolicyBinding) from enforcing `policy` on
    `namespace`."""
    spec = live.get("spec") or {}
    out = []
    if spec.get("policyName") != policy:
        out.append(f"it binds {spec.get('policyName')!r}, not {policy!r}")
    if "Deny" not in (spec.get("validationActions") or []):
        out.append("its validationActions lack Deny")
    if params and (spec.get("paramRef") or {}).get("parameterNotFoundAction") != "Deny":
        out.append("its paramRef.parameterNotFoundAction is not Deny (it would fail open "
                   "without its ConfigMap)")
    match = spec.get("matchResources") or {}
    if not selects(match.get("namespaceSelector"), namespace_labels(namespace, labels)):
        out.append(f"its namespaceSelector does not select namespace {namespace!r}")
    if match.get("objectSelector") not in (None, {}):
        out.append("its objectSelector exempts objects")
    if match.get("excludeResourceRules"):
        out.append("its excludeResourceRules exempt resources")
    if match.get("resourceRules"):
        out.append("its resourceRules narrow what it sees")
    return out


def connect_differences(live: Mapping[str, Any] | None, namespace: str,
                        labels: Mapping[str, Any]) -> list[str]:
    """What keeps the injector's webhook configuration `live` from guarding exec, attach,
    port-forward and proxy on `namespace`'s pods."""
    hooks: Sequence[Any] = (live or {}).get("webhooks") or []
    hook = next((h for h in hooks if isinstance(h, Mapping)
                 and h.get("name") == CONNECT_WEBHOOK_NAME), None)
    if hook is None:
        return [f"it has no webhook {CONNECT_WEBHOOK_NAME}"]
    out = []
    if hook.get("failurePolicy", "Fail") != "Fail":
        out.append(f"webhook {CONNECT_WEBHOOK_NAME} has failurePolicy "
                   f"{hook.get('failurePolicy')!r}, not 'Fail'")
    have = {(op, r) for _, _, op, r in _rule_set(hook, "rules")}
    missing = [r for r in CONNECT_SUBRESOURCES
               if ("CONNECT", r) not in have and ("*", r) not in have]
    if missing:
        out.append(f"webhook {CONNECT_WEBHOOK_NAME} does not match CONNECT on "
                   + ", ".join(missing))
    if not selects(hook.get("namespaceSelector"), namespace_labels(namespace, labels)):
        out.append(f"webhook {CONNECT_WEBHOOK_NAME}'s namespaceSelector does not select "
                   f"namespace {namespace!r}")
    if hook.get("objectSelector") not in (None, {}) or hook.get("matchConditions"):
        out.append(f"webhook {CONNECT_WEBHOOK_NAME} narrows what it sees (objectSelector or "
                   "matchConditions)")
    return out


def missing(found: GuardObjects, guard: str, webhook: str) -> list[str]:
    """The guard's objects the API server does not have, named."""
    token = token_policy_name(guard)
    return [f"the {kind} {name!r}" for kind, name, obj in (
        ("ValidatingAdmissionPolicyBinding", guard, found.binding),
        ("ValidatingAdmissionPolicy", guard, found.policy),
        ("ValidatingAdmissionPolicy", token, found.token_policy),
        ("ValidatingAdmissionPolicyBinding", token, found.token_binding),
        ("MutatingWebhookConfiguration", webhook, found.webhook)) if obj is None]


def differences(found: GuardObjects, *, guard: str, audience: str, webhook: str,
                namespace: str, labels: Mapping[str, Any]) -> list[str]:
    """Everything that keeps the found guard from being the shipped one on `namespace`."""
    token = token_policy_name(guard)
    empty: Mapping[str, Any] = {}
    return [f"{name}: {d}" for name, ds in (
        (guard, policy_differences(found.policy or empty, pod_policy(guard))),
        (f"{guard} binding", binding_differences(found.binding or empty, guard, namespace,
                                                 labels, params=True)),
        (token, policy_differences(found.token_policy or empty, token_policy(guard, audience))),
        (f"{token} binding", binding_differences(found.token_binding or empty, token,
                                                 namespace, labels, params=False)),
        (webhook, connect_differences(found.webhook, namespace, labels)),
    ) for d in ds]

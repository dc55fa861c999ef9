"""The MutatingWebhookConfiguration that registers the injector, as data."""

from __future__ import annotations

from typing import Any, Literal

from flyte_auth_common import contract
from flyte_auth_injector import consts

FailurePolicy = Literal["Fail", "Ignore"]
WEBHOOK_NAME = "inject.flyte-auth.flyte.org"
CONNECT_PATH = "/connect"

# CEL, evaluated by the API server before it calls us (matchConditions, GA in 1.30).
MATCH_CONDITIONS = [
    {"name": "flyte-task-pods",  # Flyte 1's label, or both of Flyte 2's
     "expression": f"has(object.metadata.labels) && "
                   f"('{consts.FLYTE_TASK_LABEL}' in object.metadata.labels || ("
                   + " && ".join(f"'{label}' in object.metadata.labels"
                                 for label in consts.FLYTE2_TASK_LABELS) + "))"},
    {"name": "not-opted-out",
     "expression": f"!has(object.metadata.annotations) || "
                   f"!('{consts.ANNOTATION_INJECT}' in object.metadata.annotations) || "
                   f"object.metadata.annotations['{consts.ANNOTATION_INJECT}'] != 'false'"},
]


def webhook_configuration(*, service: str = "flyte-auth-injector",
                          namespace: str = "flyte-auth", ca_bundle: str | None = None,
                          failure_policy: FailurePolicy = "Fail", timeout_seconds: int = 10,
                          port: int = 443, name: str = "flyte-auth-injector",
                          url: str | None = None) -> dict[str, Any]:
    """Two webhooks: `inject` mutates Flyte's task pods at creation; `connect` refuses exec,
    attach, port-forward and proxy on a pod that carries Flyte's claims (part of the guard,
    so it always fails closed, whatever `failure_policy` says of injection)."""

    def client(path: str) -> dict[str, Any]:
        config: dict[str, Any] = {"url": url.removesuffix("/mutate") + path} if url else {
            "service": {"name": service, "namespace": namespace, "path": path, "port": port}}
        if ca_bundle:
            config["caBundle"] = ca_bundle
        return config

    excluded = sorted({*consts.SYSTEM_NAMESPACES, namespace})

    def selector() -> dict[str, Any]:
        return {"matchExpressions": [
            {"key": contract.NAMESPACE_LABEL, "operator": "In",
             "values": [contract.NAMESPACE_LABEL_VALUE]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [*excluded]},
        ]}

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "flyte-auth-injector",
                                                  "app.kubernetes.io/part-of": "flyte-auth"}},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": timeout_seconds,
            "clientConfig": client("/mutate"),
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": selector(),
            "matchConditions": MATCH_CONDITIONS,
        }, {
            "name": contract.CONNECT_WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": timeout_seconds,
            "clientConfig": client(CONNECT_PATH),
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CONNECT"],
                       "resources": list(contract.CONNECT_SUBRESOURCES),
                       "scope": "Namespaced"}],
            "namespaceSelector": selector(),
        }],
    }

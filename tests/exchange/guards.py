"""Guards weakened as an operator might, by hand: one table for the unit test of the guard
check (on the stand-in) and the end-to-end one (on the real API server)."""

from __future__ import annotations

import copy
from typing import Any

from flyte_auth_common.contract import GUARD_NAME

NS = "parity-development"
WEBHOOK = "flyte-auth-injector"

#: Guards weakened as an operator might, by hand: (object, JSON patch); each must be refused
#: by the exchange server naming what differs, on the real API server's objects (with its
#: defaults filled in) as on the stand-in's.
WEAKENED: dict[str, tuple[tuple[str, str], list[dict[str, Any]], str]] = {
    "binding selects other namespaces": (
        ("validatingadmissionpolicybindings", GUARD_NAME),
        [{"op": "replace", "path": "/spec/matchResources/namespaceSelector",
          "value": {"matchLabels": {"team": "other"}}}], "does not select namespace"),
    "binding excludes the namespace by name": (
        ("validatingadmissionpolicybindings", GUARD_NAME),
        [{"op": "add", "path": "/spec/matchResources/namespaceSelector/matchExpressions",
          "value": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                     "values": [NS]}]}], "does not select namespace"),
    "binding exempts pods": (
        ("validatingadmissionpolicybindings", GUARD_NAME),
        [{"op": "add", "path": "/spec/matchResources/excludeResourceRules",
          "value": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"],
                     "resources": ["pods"]}]}], "excludeResourceRules exempt"),
    "binding fails open without its ConfigMap": (
        ("validatingadmissionpolicybindings", GUARD_NAME),
        [{"op": "replace", "path": "/spec/paramRef/parameterNotFoundAction",
          "value": "Allow"}], "parameterNotFoundAction is not Deny"),
    "policy matches CREATE only": (
        ("validatingadmissionpolicies", GUARD_NAME),
        [{"op": "replace", "path": "/spec/matchConstraints/resourceRules/0/operations",
          "value": ["CREATE"]}], "does not match UPDATE pods"),
    "a validation replaced by true": (
        ("validatingadmissionpolicies", GUARD_NAME),
        [{"op": "replace", "path": "/spec/validations/1/expression", "value": "true"}],
        "validations differ"),
    "token policy for another audience": (
        ("validatingadmissionpolicies", f"{GUARD_NAME}-token"),
        [{"op": "replace", "path": "/spec/matchConditions/0/expression",
          "value": "object.spec.audiences.exists(a, a == 'vault')"}], "matchConditions differ"),
    "connect webhook may fail open": (
        ("mutatingwebhookconfigurations", WEBHOOK),
        [{"op": "replace", "path": "/webhooks/1/failurePolicy", "value": "Ignore"}],
        "failurePolicy 'Ignore'"),
}


def patched(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """`obj` with a JSON patch applied (the few ops WEAKENED uses)."""
    out = copy.deepcopy(obj)
    for op in patch:
        *parents, last = op["path"].strip("/").split("/")
        target: Any = out
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = op["value"]
    return out

"""AdmissionReview in, AdmissionReview out: the pure core of the webhook.

Two error channels: a review that is not a well-formed admission.k8s.io/v1 review of a Pod
raises BadReview (HTTP 400, the message says what is wrong); a pod that must be refused is
answered `allowed: false` with the reason.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.mutate import inject
from flyte_auth_injector.patch import diff
from flyte_auth_injector.selection import (
    Refused,
    as_object,
    plain_http_warning,
    resolve,
    shape_problem,
    skip_reason,
)

API_VERSION = "admission.k8s.io/v1"


class BadReview(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    response: dict[str, Any]
    kind: str  # injected | unchanged | skipped | refused
    reason: str
    namespace: str
    pod: str


def parse_request(body: bytes) -> dict[str, Any]:
    """The `request` of an admission.k8s.io/v1 AdmissionReview, with its uid; what any of
    this webhook's reviews must be before its own checks."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadReview("body is not JSON: expected an admission.k8s.io/v1 AdmissionReview") \
            from None
    except RecursionError:
        raise BadReview("body is JSON nested too deeply to be an AdmissionReview") from None
    if not isinstance(doc, dict):
        raise BadReview("body is not a JSON object: expected an AdmissionReview")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise BadReview(f"expected apiVersion {API_VERSION} and kind AdmissionReview, got "
                        f"{str(doc.get('apiVersion'))[:60]!r} / {str(doc.get('kind'))[:60]!r}; "
                        f"set admissionReviewVersions: [\"v1\"] in the webhook configuration")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request object")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    return request


def parse(body: bytes) -> dict[str, Any]:
    """The review's `request`, checked for everything this webhook relies on."""
    request = parse_request(body)
    kind = request.get("kind")
    if not isinstance(kind, dict) or (kind.get("group"), kind.get("version"),
                                      kind.get("kind")) != ("", "v1", "Pod"):
        raise BadReview(f"request.kind must be core/v1 Pod, got {str(kind)[:100]}; check the "
                        "webhook's rules")
    if not isinstance(request.get("object"), dict):
        raise BadReview("request.object (the pod) is missing or not an object")
    return request


def refusal(request: Mapping[str, Any], code: int, reason: str, message: str) -> dict[str, Any]:
    """An AdmissionReview answer that refuses the pod with `message`."""
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": {
        "uid": request["uid"], "allowed": False,
        "status": {"code": code, "reason": reason, "message": message}}}


def decide(request: Mapping[str, Any], config: InjectorConfig,
           namespace_annotations: Callable[[str], Mapping[str, str]]) -> Outcome:
    pod: dict[str, Any] = request["object"]
    meta = as_object(pod.get("metadata"))
    namespace = str(request.get("namespace") or meta.get("namespace") or "")
    name = str(meta.get("name") or meta.get("generateName") or "")
    base: dict[str, Any] = {"uid": request["uid"], "allowed": True}

    def outcome(kind: str, reason: str, **extra: Any) -> Outcome:
        return Outcome({"apiVersion": API_VERSION, "kind": "AdmissionReview",
                        "response": base | extra}, kind, reason, namespace, name)

    if request.get("operation", "CREATE") != "CREATE":
        return outcome("skipped", f"operation {request.get('operation')} is not mutated")
    reason = skip_reason(pod, namespace, config.namespace)
    if reason is not None:
        return outcome("skipped", reason)
    problem = shape_problem(pod)
    if problem is not None:
        return outcome("refused", problem, allowed=False, status={
            "code": 400, "reason": "BadRequest",
            "message": f"flyte-auth: cannot inject this pod: {problem}"})
    try:
        settings = resolve(pod, namespace_annotations(namespace), config.tokens)
    except Refused as exc:
        message = f"flyte-auth: {exc}"
        return outcome("refused", str(exc), allowed=False,
                       status={"code": 403, "reason": "Forbidden", "message": message})
    mutated = inject(pod, config.sidecar, settings)
    patch = diff(pod, mutated)
    if not patch:
        return outcome("unchanged", "already injected")
    encoded = base64.b64encode(json.dumps(patch).encode()).decode()
    # Injected all the same; a warning tells the pod's creator why the token won't be used.
    warning = plain_http_warning(pod)
    extra = {"warnings": [warning]} if warning else {}
    return outcome("injected", warning or "", patchType="JSONPatch", patch=encoded, **extra)

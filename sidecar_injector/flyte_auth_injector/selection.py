"""Which pods the injector touches and with what: the pod's shape checked, opted-out and
foreign pods skipped, and the settings resolved from its annotations, then its namespace's,
then the injector's flags. Pure functions of the pod's raw JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flyte_auth_common import contract
from flyte_auth_common.converters import whole_number_in
from flyte_auth_injector import consts
from flyte_auth_injector.config import TokenSettings

Json = dict[str, Any]


class Refused(Exception):
    """A pod the injector must refuse (allowed: false); the message says why and what to do."""


@dataclass(frozen=True)
class PodSettings:
    audience: str
    expiration: int
    scopes: str
    init_containers: tuple[str, ...]
    token_wait: int = consts.DEFAULT_TOKEN_WAIT


def as_object(value: Any) -> Json:
    """`value` if it is a JSON object, else an empty one (for reading, never writing)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty one (for reading, never writing)."""
    return value if isinstance(value, list) else []


def shape_problem(pod: Json) -> str | None:  # noqa: PLR0911 - one return per part checked
    """What, in the parts of the pod this webhook edits, is not shaped as Kubernetes says."""
    if not isinstance(pod.get("metadata", {}), dict):
        return "metadata is not an object"
    meta = pod.get("metadata", {})
    for key in ("labels", "annotations"):
        if not isinstance(meta.get(key, {}), dict):
            return f"metadata.{key} is not an object"
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return "spec is not an object"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.containers is not a non-empty list"
    for key in ("containers", "initContainers", "volumes"):
        items = spec.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return f"spec.{key} is not a list of objects"
    for c in containers + spec.get("initContainers", []):
        for key in ("env", "volumeMounts"):
            items = c.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                return f"{key} of container {str(c.get('name'))[:63]!r} is not a list of objects"
    return None


def flyte_version(labels: Mapping[str, Any]) -> int | None:
    """1 for flytepropeller's task pods, 2 for Flyte 2's executor's, None for other pods."""
    if consts.FLYTE_TASK_LABEL in labels:
        return 1
    if all(label in labels for label in consts.FLYTE2_TASK_LABELS):
        return 2
    return None


def plain_http_warning(pod: Json) -> str | None:
    """Why the token will never be used: a Flyte 2 pod whose task talks plain HTTP to the
    control plane (the SDK then sends no credentials at all). None otherwise."""
    meta = as_object(pod.get("metadata"))
    if flyte_version(as_object(meta.get("labels"))) != 2:
        return None
    for c in as_list(as_object(pod.get("spec")).get("containers")):
        env = [as_object(e) for e in as_list(as_object(c).get("env"))]
        if any(e.get("name") == contract.ENV_V2_INSECURE and
               str(e.get("value", "")).lower() in ("true", "t", "1") for e in env):
            return (f"flyte-auth: container {str(as_object(c).get('name'))[:63]!r} sets "
                    f"{contract.ENV_V2_INSECURE}: the flyte SDK sends no token over plain "
                    "HTTP; point _U_EP_OVERRIDE at the auth proxy's TLS port instead")
    return None


def skip_reason(pod: Json, namespace: str, own_namespace: str) -> str | None:
    """Why this pod is not injected, or None to inject."""
    meta = as_object(pod.get("metadata"))
    labels = as_object(meta.get("labels"))
    annotations = as_object(meta.get("annotations"))
    if namespace in consts.SYSTEM_NAMESPACES or namespace == own_namespace:
        return f"namespace {namespace} is never injected"
    if flyte_version(labels) is None:
        return (f"not a Flyte task pod (no {consts.FLYTE_TASK_LABEL} label, nor Flyte 2's "
                f"{' and '.join(consts.FLYTE2_TASK_LABELS)})")
    if str(annotations.get(consts.ANNOTATION_INJECT, "")).lower() == "false":
        return f"opted out ({consts.ANNOTATION_INJECT}: \"false\")"
    return plugin_pod_reason(meta)


def plugin_pod_reason(meta: Json) -> str | None:
    """Why a pod with Flyte's labels whose controller is another operator's object (a Ray,
    Dask, Kubeflow or Spark task's pod) is left alone: the exchange server binds only pods a
    FlyteWorkflow or TaskAction controls, so its agent would never get a token, and the
    postStart hold would keep the task waiting token-wait seconds for it."""
    controller = next((as_object(r) for r in as_list(meta.get("ownerReferences"))
                       if as_object(r).get("controller") is True), None)
    if controller is None:
        return None
    group = str(controller.get("apiVersion", "")).split("/")[0]
    if group in (contract.FLYTEWORKFLOW_GROUP, contract.TASKACTION_GROUP):
        return None
    return (f"its controller is {str(controller.get('kind'))[:63]} "
            f"{str(controller.get('name'))[:63]!r} ({str(controller.get('apiVersion'))[:63]}): "
            "a plugin task's pod, which the exchange server does not bind to an execution "
            "yet; injected, its task would wait token-wait seconds for a token it never gets")


def _override(key: str, pod_ann: Mapping[str, Any], ns_ann: Mapping[str, Any]) -> tuple[
        str | None, str]:
    if key in pod_ann:
        return str(pod_ann[key]), "pod annotation"
    if key in ns_ann:
        return str(ns_ann[key]), "namespace annotation"
    return None, ""


def _seconds(key: str, pod_ann: Mapping[str, Any], ns_ann: Mapping[str, Any], *,
             default: int, low: int, high: int) -> int:
    """A whole number of seconds in [low, high] from the annotation `key`, else `default`."""
    raw, where = _override(key, pod_ann, ns_ann)
    if raw is None:
        return default
    seconds = whole_number_in(raw, low, high)
    if seconds is None:
        raise Refused(f"{where} {key}={raw[:40]!r} must be a whole number of seconds between "
                      f"{low} and {high}")
    return seconds


def resolve(pod: Json, ns_annotations: Mapping[str, Any], tokens: TokenSettings) -> PodSettings:
    """Pod annotation > namespace annotation > injector config, each within the allowed
    range; Refused names the annotation, the value and the range."""
    pod_ann = as_object(as_object(pod.get("metadata")).get("annotations"))
    audience, where = _override(consts.ANNOTATION_AUDIENCE, pod_ann, ns_annotations)
    if audience is not None and audience not in tokens.allowed_audiences:
        raise Refused(f"{where} {consts.ANNOTATION_AUDIENCE}={audience!r} is not an allowed "
                      f"audience ({', '.join(tokens.allowed_audiences)})")
    expiration = _seconds(consts.ANNOTATION_EXPIRATION, pod_ann, ns_annotations,
                          default=tokens.expiration, low=consts.MIN_EXPIRATION,
                          high=tokens.max_expiration)
    scopes, where = _override(consts.ANNOTATION_SCOPES, pod_ann, ns_annotations)
    if scopes is not None:
        refused = [s for s in scopes.split() if s not in tokens.allowed_scopes]
        if refused or not scopes.split():
            raise Refused(f"{where} {consts.ANNOTATION_SCOPES}={scopes!r}: allowed scopes are "
                          f"{' '.join(tokens.allowed_scopes)}")
    token_wait = _seconds(consts.ANNOTATION_TOKEN_WAIT, pod_ann, ns_annotations,
                          default=tokens.token_wait, low=0, high=consts.MAX_TOKEN_WAIT)
    inits = str(pod_ann.get(consts.ANNOTATION_INIT_CONTAINERS, ""))
    return PodSettings(
        audience=audience or tokens.audience,
        expiration=expiration,
        scopes=" ".join(scopes.split()) if scopes else tokens.scopes,
        init_containers=tuple(n.strip() for n in inits.split(",") if n.strip()),
        token_wait=token_wait,
    )

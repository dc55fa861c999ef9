"""The guard's CONNECT half: exec, attach, port-forward and proxy on a pod that carries
Flyte's claims would let anyone with those rights in a project namespace act as the pod (run
the token command beside the task, or reach what it serves), so they are refused to all but
Flyte's creators and cluster admins. A ValidatingAdmissionPolicy cannot do this: a CONNECT
request's object is the exec options, not the pod, so this webhook reads the pod.

Pure: `decide` judges a parsed review and the pod the server read for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flyte_auth_common.contract import CLUSTER_ADMINS_GROUP, CONNECT_SUBRESOURCES, flyte_claims
from flyte_auth_injector.review import API_VERSION, BadReview, parse_request, refusal


@dataclass(frozen=True)
class Connect:
    uid: str
    namespace: str
    pod: str
    subresource: str
    username: str
    groups: tuple[str, ...]


def parse_connect(body: bytes) -> Connect:
    """The CONNECT review's fields this webhook decides on; BadReview if it is not one."""
    request = parse_request(body)
    sub = f"pods/{request.get('subResource')}"
    user = request.get("userInfo")
    user = user if isinstance(user, dict) else {}
    fields = (request["uid"], request.get("namespace"), request.get("name"))
    if request.get("operation") != "CONNECT" or sub not in CONNECT_SUBRESOURCES or \
            not all(isinstance(f, str) and f for f in fields):
        raise BadReview(f"expected a CONNECT review of one of {', '.join(CONNECT_SUBRESOURCES)} "
                        "with a namespace and name; check the connect webhook's rules")
    groups = user.get("groups")
    groups = groups if isinstance(groups, list) else []
    uid, namespace, pod = (str(f) for f in fields)
    return Connect(uid, namespace, pod, sub, str(user.get("username", "")),
                   tuple(str(g) for g in groups))


def answer(review: Connect, allowed: bool, message: str = "") -> dict[str, Any]:
    if not allowed:
        return refusal({"uid": review.uid}, 403, "Forbidden", message)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview",
            "response": {"uid": review.uid, "allowed": True}}


def exchange_tokens(pod: Mapping[str, Any], audiences: tuple[str, ...]) -> bool:
    """Whether the pod is given a service-account token for the exchange server (one of
    `audiences`): what makes it able to act as its execution's launcher. Its spec is what
    Flyte and the injector wrote: nobody else may create or change a pod with Flyte's
    claims."""
    spec = pod.get("spec")
    volumes = spec.get("volumes") if isinstance(spec, dict) else None
    for volume in volumes if isinstance(volumes, list) else ():
        projected = volume.get("projected") if isinstance(volume, dict) else None
        sources = projected.get("sources") if isinstance(projected, dict) else None
        for source in sources if isinstance(sources, list) else ():
            token = source.get("serviceAccountToken") if isinstance(source, dict) else None
            if isinstance(token, dict) and token.get("audience") in audiences:
                return True
    return False


def decide(review: Connect, pod: Mapping[str, Any] | None, creators: tuple[str, ...],
           audiences: tuple[str, ...]) -> tuple[bool, str]:
    """(allowed, why). A pod that does not exist is the API server's 404 to give."""
    if pod is None:
        return True, "no such pod"
    claims = flyte_claims(pod.get("metadata"))
    if not claims:
        return True, "the pod carries no Flyte claims"
    if not exchange_tokens(pod, audiences):
        return True, "the pod holds no token for the exchange server (not injected)"
    if review.username in creators or CLUSTER_ADMINS_GROUP in review.groups:
        return True, "Flyte or a cluster admin"
    return False, (
        f"flyte-auth guard: pod {review.namespace}/{review.pod} carries Flyte's claims "
        f"({', '.join(claims)}), so it acts as the user who launched its execution; "
        f"{review.username} may not use {review.subresource} on it (only Flyte "
        f"({', '.join(creators) or 'nobody'}) and cluster admins may). Read its logs "
        "(kubectl logs), run a copy of the task yourself, or opt the task out of injection "
        "(annotation flyte-auth.flyte.org/inject: \"false\") to debug it in place.")

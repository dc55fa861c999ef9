"""The Kubernetes API, through kubernetes-asyncio: read a pod, review a token.

Responses are read as raw JSON (`_preload_content=False`): we need a handful of fields,
and never a typed round trip of objects we do not own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from flyte_auth_common.contract import (
    FLYTEWORKFLOW_GROUP,
    FLYTEWORKFLOW_PLURAL,
    FLYTEWORKFLOW_VERSION,
    TASKACTION_GROUP,
    TASKACTION_PLURAL,
    TASKACTION_VERSION,
)
from flyte_auth_common.kube_client import Getter, KubeReadError, api_client, response_json
from flyte_auth_exchange.config import setting
from flyte_auth_exchange.errors import TEMPORARILY_UNAVAILABLE, Refusal
from flyte_auth_exchange.guard import GuardObjects, token_policy_name

# TokenReview `status.user.extra` keys the API server sets for pod-bound tokens.
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class Review:
    authenticated: bool
    username: str
    pod_name: str | None
    pod_uid: str | None
    error: str


#: Told each request made, by what it asked ("get pod"): the upstream-requests metric.
Counted = Callable[[str], None]


class Kube:
    def __init__(self, api: client.ApiClient, timeout: float = 10.0, *,
                 counted: Counted = lambda _: None) -> None:
        self._api = api
        self._counted = counted
        self._getter = Getter(api)
        self._authn = client.AuthenticationV1Api(api)
        self._timeout = timeout

    @classmethod
    async def connect(cls, kubeconfig: Path | None, *, counted: Counted = lambda _: None
                      ) -> Kube:
        return cls(await api_client(kubeconfig, setting("kubeconfig")), counted=counted)

    @property
    def api_client(self) -> client.ApiClient:
        return self._api

    async def close(self) -> None:
        await self._getter.close()
        await self._api.close()

    async def _json(self, what: str, call: Any) -> tuple[int, dict[str, Any]]:
        self._counted(what)
        try:
            status, doc = await call
        except KubeReadError as exc:
            raise Refusal(TEMPORARILY_UNAVAILABLE,
                          f"the Kubernetes API is unreachable ({exc})") from None
        if status >= 500 or status in (401, 403, 429):
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"the Kubernetes API answered {what} with "
                          f"HTTP {status}; check this server's RBAC and the API server")
        return status, doc if isinstance(doc, dict) else {}

    async def _get(self, what: str, path: str, **names: str) -> dict[str, Any] | None:
        """The object at `path` (Getter.get) as raw JSON, or None if it does not exist
        (404); any other answer is never taken for the object."""
        status, doc = await self._json(what, self._getter.get(what, path, timeout=self._timeout,
                                                              **names))
        if status == 404:
            return None
        if status != 200:
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"the Kubernetes API answered {what} with "
                          f"HTTP {status}; check this server's version and the API server")
        return doc

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get("get pod", "api/v1/namespaces/{ns}/pods/{name}",
                               ns=namespace, name=name)

    async def namespace(self, name: str) -> dict[str, Any] | None:
        return await self._get("get namespace", "api/v1/namespaces/{name}", name=name)

    async def flyteworkflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            "get flyteworkflow", f"apis/{FLYTEWORKFLOW_GROUP}/{FLYTEWORKFLOW_VERSION}/"
            f"namespaces/{{ns}}/{FLYTEWORKFLOW_PLURAL}/{{name}}", ns=namespace, name=name)

    async def taskaction(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            "get taskaction", f"apis/{TASKACTION_GROUP}/{TASKACTION_VERSION}/"
            f"namespaces/{{ns}}/{TASKACTION_PLURAL}/{{name}}", ns=namespace, name=name)

    async def _admission(self, what: str, plural: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"get {what}",
                               f"apis/admissionregistration.k8s.io/v1/{plural}/{{name}}",
                               name=name)

    async def admission_policy(self, name: str) -> dict[str, Any] | None:
        return await self._admission("validatingadmissionpolicy",
                                     "validatingadmissionpolicies", name)

    async def admission_binding(self, name: str) -> dict[str, Any] | None:
        return await self._admission("validatingadmissionpolicybinding",
                                     "validatingadmissionpolicybindings", name)

    async def mutating_webhook(self, name: str) -> dict[str, Any] | None:
        return await self._admission("mutatingwebhookconfiguration",
                                     "mutatingwebhookconfigurations", name)

    async def guard(self, guard: str, webhook: str) -> GuardObjects:
        """The guard's objects (guard.GuardObjects), read at once."""
        token = token_policy_name(guard)
        found = await asyncio.gather(
            self.admission_policy(guard), self.admission_binding(guard),
            self.admission_policy(token), self.admission_binding(token),
            self.mutating_webhook(webhook))
        return GuardObjects(*found)

    async def review(self, token: str, audiences: list[str]) -> Review:
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}
        _, doc = await self._json("create tokenreview", response_json(
            "create tokenreview", self._authn.create_token_review(
                body, _preload_content=False, _request_timeout=self._timeout)))
        status = doc.get("status") or {}
        user = status.get("user") or {}
        extra = user.get("extra") or {}

        def first(key: str) -> str | None:
            values = extra.get(key)
            return values[0] if isinstance(values, list) and values else None

        return Review(bool(status.get("authenticated")), str(user.get("username", "")),
                      first(EXTRA_POD_NAME), first(EXTRA_POD_UID), str(status.get("error", "")))

"""Stand-in for the Kubernetes API server: the part of it the exchange server uses. We
keep `make test` fast; `make e2e` runs the real kube-apiserver and checks this against it
(tests/e2e/test_parity.py). It follows the API server's documented behaviour:

- Service-account issuer discovery (anonymous): GET /.well-known/openid-configuration
  (issuer, jwks_uri = ISSUER/openid/v1/jwks) and GET /openid/v1/jwks.
- GET /api/v1/namespaces/NS/pods/NAME: the pod as JSON, or 404 with a Status object.
- POST /apis/authentication.k8s.io/v1/tokenreviews: checks the token's signature, expiry
  and audiences (against spec.audiences), and that the pod it is bound to still exists
  with the same uid; answers status.authenticated, status.user (username, uid, groups,
  extra authentication.kubernetes.io/pod-name and pod-uid), status.audiences, status.error.
- GET /api/v1/namespaces lists namespaces; with watch=true it streams JSON-line watch events
  (ADDED, MODIFIED) from the given resourceVersion until timeoutSeconds.
  GET /api/v1/namespaces/NAME: one namespace, or 404.
- GET /apis/flyte.lyft.com/v1alpha1/namespaces/NS/flyteworkflows/NAME: the FlyteWorkflow
  custom object (flytepropeller's CRD keeps unknown fields; `executionId` is
  {project, domain, name}), or 404.
- GET /apis/flyte.org/v1/namespaces/NS/taskactions/NAME: Flyte 2's TaskAction (its spec
  names project, domain, runName and actionName), or 404.
- GET /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/NAME and
  .../validatingadmissionpolicybindings/NAME, or 404. The stand-in stores them and does not
  enforce them: admission is the real API server's job, and the e2e suite tests it there.
- Secrets: GET, POST (409 if it exists), PUT (409 on a stale resourceVersion).
- MutatingWebhookConfigurations: GET, and PATCH as a strategic merge (webhooks by name).
- Requests other than discovery must carry the bearer token of the kubeconfig it writes
  (401 with a Status object otherwise).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError

from devstack.issuer import StubIssuer
from devstack.serving import serve


def status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


@dataclass
class StubKubeAPI:
    issuer: StubIssuer = field(default_factory=StubIssuer)
    bearer: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pod_reads: int = 0
    reviews: int = 0
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    workflows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    taskactions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: ("validatingadmissionpolicies" | "validatingadmissionpolicybindings", name) -> object
    admission: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: When set, every JWKS request after the first waits for it: an issuer that answers
    #: slowly. `jwks_waiting` is set while one waits.
    jwks_gate: asyncio.Event | None = None
    jwks_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    jwks_requests: int = 0
    _version: int = 1
    _watchers: list[asyncio.Queue[dict[str, Any]]] = field(default_factory=list)
    #: Every namespace event as (resourceVersion, event): a watch from version N replays
    #: what came after N, as the API server does, so nothing between list and watch is lost.
    _history: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/openid/v1/jwks", self._jwks)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._pod)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._review)
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        app.router.add_get("/api/v1/namespaces/{name}", self._namespace)
        app.router.add_get("/apis/flyte.lyft.com/v1alpha1/namespaces/{ns}/flyteworkflows/{name}",
                           self._workflow)
        app.router.add_get("/apis/flyte.org/v1/namespaces/{ns}/taskactions/{name}",
                           self._taskaction)
        app.router.add_get("/apis/admissionregistration.k8s.io/v1/"
                           "{kind:validatingadmissionpolic(?:ies|ybindings)}/{name}",
                           self._admission)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._secret_get)
        app.router.add_put("/api/v1/namespaces/{ns}/secrets/{name}", self._secret_put)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", self._secret_post)
        mwc = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        app.router.add_get(mwc, self._webhook_get)
        app.router.add_patch(mwc, self._webhook_patch)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        self.issuer.issuer = self.url  # the issuer serves its own discovery document
        return self.url

    async def stop(self) -> None:
        for queue in self._watchers:
            queue.put_nowait({})  # ends each open watch
        if self._runner is not None:
            await self._runner.cleanup()

    def set_namespace(self, name: str, annotations: dict[str, str] | None = None,
                      labels: dict[str, str] | None = None) -> None:
        """Create or update a namespace; open watches see ADDED or MODIFIED."""
        self._version += 1
        kind = "MODIFIED" if name in self.namespaces else "ADDED"
        ns = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": name, "annotations": annotations or {},
                           "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
                           "resourceVersion": str(self._version)}}
        self.namespaces[name] = ns
        event = {"type": kind, "object": ns}
        self._history.append((self._version, event))
        for queue in self._watchers:
            queue.put_nowait(event)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "exchange", "user": {"token": self.bearer}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in",
                                                          "user": "exchange"}}],
        }))
        return path

    def add_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                phase: str = "Running", uid: str | None = None,
                owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace,
                            "uid": uid or str(uuid.uuid4()), "labels": labels or {},
                            "ownerReferences": owners or []},
               "spec": {"serviceAccountName": "default", "containers": [{"name": "main"}]},
               "status": {"phase": phase}}
        self.pods[(namespace, name)] = pod
        return pod

    def token_for(self, pod: dict[str, Any], **kwargs: Any) -> str:
        """A projected token bound to `pod`, as the kubelet would request it."""
        meta = pod["metadata"]
        return self.issuer.mint(namespace=meta["namespace"], pod=meta["name"], pod_uid=meta["uid"],
                                service_account=pod["spec"]["serviceAccountName"], **kwargs)

    def add_workflow(self, namespace: str, project: str, domain: str,
                     name: str) -> dict[str, Any]:
        """The FlyteWorkflow FlyteAdmin creates for execution project/domain/name."""
        wf = {"apiVersion": "flyte.lyft.com/v1alpha1", "kind": "FlyteWorkflow",
              "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                           "labels": {"execution-id": name, "project": project,
                                      "domain": domain}},
              "executionId": {"project": project, "domain": domain, "name": name}}
        self.workflows[(namespace, name)] = wf
        return wf

    def add_taskaction(self, namespace: str, project: str, domain: str, run: str,
                       action: str) -> dict[str, Any]:
        """The TaskAction Flyte 2's runs service creates for an action of a run (named
        <run>-a0 for the root action, as actions/k8s/client.go names it)."""
        name = f"{run}-a0" if action == run else f"{run}-{action}"
        ta = {"apiVersion": "flyte.org/v1", "kind": "TaskAction",
              "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                           "labels": {"flyte.org/project": project, "flyte.org/domain": domain,
                                      "flyte.org/run": run, "flyte.org/action": action}},
              "spec": {"project": project, "domain": domain, "runName": run,
                       "actionName": action}}
        self.taskactions[(namespace, name)] = ta
        return ta

    async def _taskaction(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        return self._one(request, self.taskactions.get(key), "taskactions.flyte.org")

    async def _namespace(self, request: web.Request) -> web.Response:
        return self._one(request, self.namespaces.get(request.match_info["name"]), "namespaces")

    async def _workflow(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        return self._one(request, self.workflows.get(key), "flyteworkflows.flyte.lyft.com")

    async def _admission(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        return self._one(request, self.admission.get((kind, request.match_info["name"])), kind)

    def _one(self, request: web.Request, obj: dict[str, Any] | None,
             resource: str) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        if obj is None:
            return status(404, "NotFound",
                          f'{resource} "{request.match_info["name"]}" not found')
        return web.json_response(obj)

    async def _namespaces(self, request: web.Request) -> web.StreamResponse:
        """List, or with ?watch=true a stream of JSON-line events (ends at timeoutSeconds)."""
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                      "metadata": {"resourceVersion": str(self._version)},
                                      "items": list(self.namespaces.values())})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        since = int(request.query.get("resourceVersion") or self._version)
        for version, event in self._history:  # no await from here to append: nothing slips
            if version > since:
                queue.put_nowait(event)
        self._watchers.append(queue)
        timeout = float(request.query.get("timeoutSeconds", "300"))
        try:
            async with asyncio.timeout(timeout):
                while event := await queue.get():
                    await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        finally:
            self._watchers.remove(queue)
        return response

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        return obj

    async def _secret_get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        secret = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        if secret is None:
            return status(404, "NotFound", "secret not found")
        return web.json_response(secret)

    async def _secret_post(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        body = await request.json()
        key = (request.match_info["ns"], body["metadata"]["name"])
        if key in self.secrets:
            return status(409, "AlreadyExists", "secret already exists")
        self.secrets[key] = self._bump(body)
        return web.json_response(body, status=201)

    async def _secret_put(self, request: web.Request) -> web.Response:
        """Update with optimistic concurrency: a stale resourceVersion is a 409 Conflict."""
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        current = self.secrets.get(key)
        if current is None:
            return status(404, "NotFound", "secret not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return status(409, "Conflict", "the object has been modified")
        self.secrets[key] = self._bump(body)
        return web.json_response(body)

    async def _webhook_get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        hook = self.webhooks.get(request.match_info["name"])
        return web.json_response(hook) if hook else status(404, "NotFound", "not found")

    async def _webhook_patch(self, request: web.Request) -> web.Response:
        """Strategic merge: `webhooks` merge by `name` (their patchMergeKey)."""
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        if request.content_type != "application/strategic-merge-patch+json":
            return status(415, "UnsupportedMediaType", "use a strategic merge patch")
        hook = self.webhooks.get(request.match_info["name"])
        if hook is None:
            return status(404, "NotFound", "not found")
        patch = await request.json()
        for change in patch.get("webhooks", []):
            for existing in hook["webhooks"]:
                if existing["name"] == change["name"]:
                    existing.setdefault("clientConfig", {}).update(change.get("clientConfig", {}))
        return web.json_response(self._bump(hook))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.bearer}"

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer.issuer, "jwks_uri": f"{self.url}/openid/v1/jwks",
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.jwks_gate is not None and self.jwks_requests > 1:
            self.jwks_waiting.set()
            await self.jwks_gate.wait()
        return web.json_response(self.issuer.jwks())

    async def _pod(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        self.pod_reads += 1
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.pods.get((ns, name))
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        return web.json_response(pod)

    async def _review(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        self.reviews += 1
        body = await request.json()
        spec = body.get("spec", {})
        result = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": spec, "status": self._check(spec.get("token", ""),
                                                      spec.get("audiences") or [])}
        return web.json_response(result, status=201)

    def _check(self, token: str, audiences: list[str]) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self.issuer.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return {"authenticated": False, "error": "invalid bearer token"}
        if claims.get("exp", 0) < time.time():
            return {"authenticated": False, "error": "token has expired"}
        matched = [a for a in claims.get("aud", []) if a in audiences] if audiences else \
            claims.get("aud", [])
        if not matched:
            return {"authenticated": False, "error": "token audiences do not match"}
        k8s = claims["kubernetes.io"]
        pod = self.pods.get((k8s["namespace"], k8s["pod"]["name"]))
        if pod is None or pod["metadata"]["uid"] != k8s["pod"]["uid"]:
            return {"authenticated": False, "error": "pod bound to the token no longer exists"}
        ns, sa = k8s["namespace"], k8s["serviceaccount"]["name"]
        return {"authenticated": True, "audiences": matched, "user": {
            "username": f"system:serviceaccount:{ns}:{sa}",
            "uid": k8s["serviceaccount"]["uid"],
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                       "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": [k8s["pod"]["name"]],
                      "authentication.kubernetes.io/pod-uid": [k8s["pod"]["uid"]]}}}

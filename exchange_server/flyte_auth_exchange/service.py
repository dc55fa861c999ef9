"""One exchange, start to finish: the I/O steps around the pure decisions in decision.py.

    form ─► grant checks ─► subject token (signature / TokenReview) ─► policy rule
         ─► identity: executor (trust.bind: pod → execution → principal in FlyteAdmin, or
            for Flyte 2 pod → TaskAction → run → executed_by in the runs service; this
            service is its trust.Reads) or service account
         ─► audience / scope / lifetime ─► minted token

Every step that refuses raises a Refusal naming the check. What the decision was about
(namespace, pod, rule, execution, principal, jti) is bound to structlog's contextvars as it
becomes known, so the handler's one audit line per decision carries it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from structlog.contextvars import bind_contextvars

from flyte_auth_common import contract
from flyte_auth_common.jwt import jwt_claims, redact
from flyte_auth_exchange import decision
from flyte_auth_exchange.config import POD_SECURITY_CLUSTER_DEFAULT, ExchangeConfig
from flyte_auth_exchange.decision import Form
from flyte_auth_exchange.errors import INVALID_GRANT, Refusal
from flyte_auth_exchange.flyteadmin import Admin
from flyte_auth_exchange.kube import Kube
from flyte_auth_exchange.memo import Memo
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.policy import Policy
from flyte_auth_exchange.runs import Runs
from flyte_auth_exchange.subject import IssuerKeys, Subject, check_claims, subject_from_claims
from flyte_auth_exchange.trust import (
    Binding,
    ExecutionRef,
    Launcher,
    TrustSettings,
    bind,
    check_guarded,
)


class ExchangeService:
    def __init__(self, config: ExchangeConfig, *, policy: Policy, keys: IssuerKeys | None,
                 minter: Minter, kube: Kube | None, admin: Admin | None,
                 runs: Runs | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._policy = policy
        self._keys = keys
        self._minter = minter
        self._kube = kube
        self._admin = admin
        self._runs = runs
        self._clock = clock
        ttl = config.cache_ttl
        self.bindings: Memo[Binding] = Memo(ttl, monotonic)
        self.guards: Memo[None] = Memo(ttl, monotonic)
        # What many pods share (a map task's, a Ray cluster's): read once per execution, not
        # once per pod. A FlyteWorkflow is judged against each pod's owner uid, and an
        # execution's launcher never changes; both are reused for --cache-ttl.
        self.workflows: Memo[dict[str, Any] | None] = Memo(
            ttl, monotonic, keep=lambda found: found is not None)  # not found: ask again
        self.launchers: Memo[Launcher] = Memo(ttl, monotonic)
        self._trust = TrustSettings(
            namespace_template=config.namespace_template, v2_namespace=config.v2_namespace,
            guard=config.guard, audience=config.subject_audience,
            webhook=config.injector_webhook,
            pod_security_cluster_default=config.pod_security == POD_SECURITY_CLUSTER_DEFAULT,
            flyte1=admin is not None, flyte2=runs is not None)

    def set_policy(self, policy: Policy) -> None:
        """Decide by `policy` from now on (the mounted policy file changed)."""
        self._policy = policy

    async def exchange(self, form: Form) -> dict[str, Any]:
        subject = await self._authenticate(decision.subject_token(form))
        bind_contextvars(namespace=subject.namespace, pod=subject.pod_name,
                         service_account=subject.service_account)
        rule = decision.allowing_rule(self._policy, subject)
        bind_contextvars(rule=rule.name)
        audiences = decision.audiences(form, self._config.admin_audiences)
        scopes = decision.scopes(form, rule)
        binding = await self._binding(subject) if decision.needs_binding(rule) else None
        if binding is not None and binding.execution is not None:
            bind_contextvars(execution=str(binding.execution))
        principal, extra = decision.identity(subject, rule, binding)
        bind_contextvars(principal=principal)
        lifetime = int(min(self._config.token_lifetime, rule.max_lifetime or float("inf")))
        minted = self._minter.mint(subject=principal, audience=audiences, scopes=scopes,
                                   lifetime=lifetime, now=self._clock(),
                                   extra={"act": {"sub": subject.username}, **extra})
        bind_contextvars(jti=minted.jti)
        return {"access_token": minted.token, "issued_token_type": contract.TOKEN_TYPE_ACCESS_TOKEN,
                "token_type": "Bearer", "expires_in": minted.expires_in,
                "scope": " ".join(scopes)}

    # --- steps -------------------------------------------------------------------------------

    async def _authenticate(self, token: str) -> Subject:
        c = self._config
        if self._keys is not None:
            subject = await self._keys.verify(token, issuer=c.subject_issuer,
                                              audience=c.subject_audience, now=self._clock(),
                                              skew=c.clock_skew)
        else:  # TokenReview alone: the API server checks the signature, we read the claims
            claims = jwt_claims(token)
            if claims is None:
                raise Refusal(INVALID_GRANT, "subject_token is not a JWT")
            check_claims(claims, issuer=c.subject_issuer, audience=c.subject_audience,
                         now=self._clock(), skew=c.clock_skew)
            subject = subject_from_claims(claims)
        if c.token_review:
            assert self._kube is not None
            review = await self._kube.review(token, [c.subject_audience])
            if not review.authenticated:
                raise Refusal(INVALID_GRANT, f"the Kubernetes TokenReview did not authenticate "
                              f"the subject token: {redact(review.error, token) or 'no reason'}")
            if review.username != subject.username or (
                    review.pod_uid is not None and review.pod_uid != subject.pod_uid):
                raise Refusal(INVALID_GRANT, "the Kubernetes TokenReview names another service "
                              "account or pod than the subject token")
        return subject

    async def _binding(self, subject: Subject) -> Binding:
        """The pod's binding, from the cache while it is fresh."""
        return await self.bindings.get((subject.namespace, subject.pod_name, subject.pod_uid),
                                       lambda: self._bind(subject))

    async def _bind(self, subject: Subject) -> Binding:
        """trust.bind, reading what it asks for from the API server, FlyteAdmin and the
        runs service."""
        return await bind(subject.namespace, subject.pod_name, subject.pod_uid,
                          self._trust, self)

    # --- trust.Reads -------------------------------------------------------------------------

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self._kube is not None
        return await self._kube.pod(namespace, name)

    async def guarded(self, namespace: str) -> None:
        await self.guards.get(namespace, lambda: self._check_guard(namespace))

    async def flyteworkflow(self, namespace: str, name: str, uid: str
                            ) -> dict[str, Any] | None:
        assert self._kube is not None
        kube = self._kube
        return await self.workflows.get((namespace, name, uid),
                                        lambda: kube.flyteworkflow(namespace, name))

    async def taskaction(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self._kube is not None
        return await self._kube.taskaction(namespace, name)

    async def launcher(self, execution: ExecutionRef) -> Launcher:
        return await self.launchers.get(execution, lambda: self._ask_launcher(execution))

    async def _ask_launcher(self, execution: ExecutionRef) -> Launcher:
        if execution.flyte == 2:
            assert self._runs is not None
            return await self._runs.launcher(execution)
        assert self._admin is not None
        return Launcher(await self._admin.principal(execution))

    async def _check_guard(self, namespace: str) -> None:
        assert self._kube is not None
        c = self._config
        ns, found = await asyncio.gather(self._kube.namespace(namespace),
                                         self._kube.guard(c.guard, c.injector_webhook))
        labels = None if ns is None else (ns.get("metadata") or {}).get("labels") or {}
        check_guarded(namespace, labels, found, self._trust)

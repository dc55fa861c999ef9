"""One exchange, start to finish: the decision core the HTTP handler calls.

    form ─► grant checks ─► subject token (signature / TokenReview) ─► policy rule
         ─► identity: executor (pod → execution → principal) or service account
         ─► audience / scope / lifetime ─► minted token

Every step that refuses raises a Refusal naming the check; `audit` collects what the
decision was about, for the one audit line per decision the handler writes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flyte_auth_common import contract
from flyte_auth_common.contract import LABEL_EXECUTION_IDENTITY
from flyte_auth_common.jwt import jwt_claims, redact
from flyte_auth_exchange.admin import Admin, ExecutionRef
from flyte_auth_exchange.binding import (
    CHECK_IDENTITY_LABEL,
    CHECK_LABELS,
    check_guard,
    check_namespace,
    check_workflow,
    claimed_execution,
    controller_owner,
    is_flyte_claim,
    refuse,
)
from flyte_auth_exchange.config import IDENTITY_SERVICE_ACCOUNT, ExchangeConfig
from flyte_auth_exchange.errors import (
    ACCESS_DENIED,
    INVALID_GRANT,
    INVALID_REQUEST,
    INVALID_SCOPE,
    INVALID_TARGET,
    UNSUPPORTED_GRANT_TYPE,
    Refusal,
)
from flyte_auth_exchange.kube import Kube
from flyte_auth_exchange.memo import Memo
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.policy import REFUSE, Policy, Rule
from flyte_auth_exchange.subject import IssuerKeys, Subject, check_claims, subject_from_claims

SUBJECT_TOKEN_TYPES = (contract.TOKEN_TYPE_JWT, contract.TOKEN_TYPE_ID_TOKEN)
REQUESTED_TOKEN_TYPES = (contract.TOKEN_TYPE_ACCESS_TOKEN, contract.TOKEN_TYPE_JWT)
FINISHED_PHASES = ("Succeeded", "Failed")

_NOT_DNS1123 = re.compile(r"[^-a-z0-9]+")


def sanitize_label_value(value: str) -> str:
    """What flytepropeller writes into the execution-identity label for a principal:
    lower-cased, runs of characters outside [-a-z0-9] turned into '-', at most 63
    characters, '-' trimmed from both ends."""
    return _NOT_DNS1123.sub("-", value.lower())[:63].strip("-")


@dataclass(frozen=True)
class Binding:
    """What the pod's execution says about who launched it; no execution for a pod that
    claims none."""

    execution: ExecutionRef | None
    principal: str
    identity_label: str | None


class Form:
    """The token request's form fields; repeated fields (audience, resource) keep all values."""

    def __init__(self, fields: Mapping[str, Sequence[str]]) -> None:
        self._fields = fields

    def one(self, name: str) -> str | None:
        values = self._fields.get(name) or ()
        if len(values) > 1:
            raise Refusal(INVALID_REQUEST, f"parameter {name} is given more than once")
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for v in self._fields.get(name) or () if v]


class ExchangeService:
    def __init__(self, config: ExchangeConfig, *, policy: Policy, keys: IssuerKeys | None,
                 minter: Minter, kube: Kube | None, admin: Admin | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._policy = policy
        self._keys = keys
        self._minter = minter
        self._kube = kube
        self._admin = admin
        self._clock = clock
        self.bindings: Memo[Binding] = Memo(config.cache_ttl)
        self.guards: Memo[None] = Memo(config.cache_ttl)

    def set_policy(self, policy: Policy) -> None:
        """Decide by `policy` from now on (the mounted policy file changed)."""
        self._policy = policy

    async def exchange(self, form: Form, audit: dict[str, Any]) -> dict[str, Any]:
        subject_token = self._check_grant(form)
        subject = await self._authenticate(subject_token)
        audit.update(namespace=subject.namespace, pod=subject.pod_name,
                     service_account=subject.service_account)
        rule = self._policy.rule_for(subject.namespace, subject.service_account)
        if rule is None:
            raise Refusal(ACCESS_DENIED, f"no policy rule allows namespace {subject.namespace!r}"
                          f" / service account {subject.service_account!r}")
        audit["rule"] = rule.name
        if not rule.allow:
            raise Refusal(ACCESS_DENIED, f"policy rule {rule.name!r} refuses namespace "
                          f"{subject.namespace!r} / service account {subject.service_account!r}")
        audiences = self._audiences(form)
        scopes = self._scopes(form, rule)
        principal, extra = await self._identity(subject, rule, audit)
        audit["principal"] = principal
        lifetime = int(min(self._config.token_lifetime, rule.max_lifetime or float("inf")))
        minted = self._minter.mint(subject=principal, audience=audiences, scopes=scopes,
                                   lifetime=lifetime, now=self._clock(),
                                   extra={"act": {"sub": subject.username}, **extra})
        audit["jti"] = minted.jti
        return {"access_token": minted.token, "issued_token_type": contract.TOKEN_TYPE_ACCESS_TOKEN,
                "token_type": "Bearer", "expires_in": minted.expires_in,
                "scope": " ".join(scopes)}

    # --- steps -------------------------------------------------------------------------------

    @staticmethod
    def _check_grant(form: Form) -> str:
        grant = form.one("grant_type")
        if grant != contract.GRANT_TYPE_TOKEN_EXCHANGE:
            shown = redact(grant or "")[:80]
            raise Refusal(UNSUPPORTED_GRANT_TYPE, f"grant_type {shown!r} is not supported; use "
                          f"{contract.GRANT_TYPE_TOKEN_EXCHANGE} (RFC 8693)")
        token, token_type = form.one("subject_token"), form.one("subject_token_type")
        if not token:
            raise Refusal(INVALID_REQUEST, "subject_token is missing")
        if token_type not in SUBJECT_TOKEN_TYPES:
            raise Refusal(INVALID_REQUEST, f"subject_token_type must be one of "
                          f"{', '.join(SUBJECT_TOKEN_TYPES)}")
        requested = form.one("requested_token_type")
        if requested is not None and requested not in REQUESTED_TOKEN_TYPES:
            raise Refusal(INVALID_REQUEST, f"requested_token_type must be one of "
                          f"{', '.join(REQUESTED_TOKEN_TYPES)}")
        if form.one("actor_token") is not None:
            raise Refusal(INVALID_REQUEST, "actor_token (delegation) is not supported")
        return token

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

    def _audiences(self, form: Form) -> list[str]:
        allowed = self._config.admin_audiences
        asked = form.all("audience") + form.all("resource")
        for target in asked:
            if target not in allowed:
                raise Refusal(INVALID_TARGET, f"audience/resource {redact(target)[:100]!r} is "
                              f"not served here; this server mints tokens for "
                              f"{', '.join(allowed)}")
        return list(dict.fromkeys(asked)) or list(allowed)

    @staticmethod
    def _scopes(form: Form, rule: Rule) -> list[str]:
        asked = (form.one("scope") or "").split()
        refused = [s for s in asked if s not in rule.scopes]
        if refused:
            raise Refusal(INVALID_SCOPE, f"scope {' '.join(refused)!r} is not allowed by policy "
                          f"rule {rule.name!r} (allowed: {' '.join(rule.scopes)})")
        return asked or list(rule.scopes)

    async def _identity(self, subject: Subject, rule: Rule, audit: dict[str, Any],
                        ) -> tuple[str, dict[str, Any]]:
        if rule.identity == IDENTITY_SERVICE_ACCOUNT:
            return subject.username, {}
        binding = await self.bindings.get(
            (subject.namespace, subject.pod_name, subject.pod_uid),
            lambda: self._bind(subject))
        if binding.execution is None:
            if rule.non_flyte_pods == REFUSE:
                raise refuse(CHECK_LABELS, f"pod {subject.namespace}/{subject.pod_name} claims "
                             "no Flyte execution (no Flyte label, no FlyteWorkflow owner) and "
                             f"policy rule {rule.name!r} refuses such pods (non_flyte_pods: "
                             "refuse)")
            return subject.username, {}
        audit["execution"] = str(binding.execution)
        execution = {"execution_id": {"project": binding.execution.project,
                                      "domain": binding.execution.domain,
                                      "name": binding.execution.name}}
        label = binding.identity_label
        if label is not None and label != sanitize_label_value(binding.principal):
            raise refuse(CHECK_IDENTITY_LABEL, f"the pod's {LABEL_EXECUTION_IDENTITY} label does "
                         f"not match the principal FlyteAdmin records for {binding.execution}")
        if binding.principal:
            return binding.principal, execution
        if rule.no_principal == REFUSE:
            raise Refusal(ACCESS_DENIED, f"execution {binding.execution} has no principal and "
                          f"policy rule {rule.name!r} refuses such executions (no_principal: "
                          f"refuse)")
        return subject.username, execution

    async def _bind(self, subject: Subject) -> Binding:
        """Pod → execution, by the checks in binding.py, then execution → principal."""
        assert self._kube is not None
        assert self._admin is not None
        namespace, where = subject.namespace, f"{subject.namespace}/{subject.pod_name}"
        pod = await self._kube.pod(namespace, subject.pod_name)
        if pod is None:
            raise Refusal(INVALID_GRANT, f"pod {where} named by the subject token does not exist")
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("uid") != subject.pod_uid:
            raise Refusal(INVALID_GRANT, f"pod {where} has another uid than the subject token "
                          "was issued for (the pod was deleted and re-created)")
        phase = status.get("phase")
        if phase in FINISHED_PHASES:
            raise Refusal(INVALID_GRANT, f"pod {where} has finished (phase {phase})")
        if not is_flyte_claim(meta):
            return Binding(None, "", None)
        execution = claimed_execution(where, meta)
        check_namespace(self._config.namespace_template, namespace, execution)
        await self.guards.get(namespace, lambda: self._check_guard(namespace))
        owner = controller_owner(where, meta)
        check_workflow(where, owner, await self._kube.flyteworkflow(namespace, owner.name),
                       execution)
        principal = await self._admin.principal(execution)
        return Binding(execution, principal, (meta.get("labels") or {}).get(
            LABEL_EXECUTION_IDENTITY))

    async def _check_guard(self, namespace: str) -> None:
        assert self._kube is not None
        guard = self._config.guard
        ns, binding, policy = await asyncio.gather(
            self._kube.namespace(namespace), self._kube.admission_binding(guard),
            self._kube.admission_policy(guard))
        labels = None if ns is None else (ns.get("metadata") or {}).get("labels") or {}
        check_guard(namespace, labels, binding, policy, guard)

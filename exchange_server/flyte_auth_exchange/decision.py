"""The exchange's pure decisions beyond the binding (trust.py): what the form asks, which
policy rule applies, which audiences and scopes are granted, and whom the token names,
given the binding trust.bind found. No I/O and no clock; each refusal is a Refusal naming
what was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from flyte_auth_common import contract
from flyte_auth_common.jwt import redact
from flyte_auth_exchange.config import IDENTITY_SERVICE_ACCOUNT
from flyte_auth_exchange.errors import (
    INVALID_REQUEST,
    INVALID_SCOPE,
    INVALID_TARGET,
    UNSUPPORTED_GRANT_TYPE,
    Refusal,
)
from flyte_auth_exchange.policy import REFUSE, Policy, Rule
from flyte_auth_exchange.subject import Subject
from flyte_auth_exchange.trust import CHECK_LABELS, CHECK_POLICY, CHECK_PRINCIPAL, Binding, refuse

SUBJECT_TOKEN_TYPES = (contract.TOKEN_TYPE_JWT, contract.TOKEN_TYPE_ID_TOKEN)
REQUESTED_TOKEN_TYPES = (contract.TOKEN_TYPE_ACCESS_TOKEN, contract.TOKEN_TYPE_JWT)
_NOT_DNS1123 = re.compile(r"[^-a-z0-9]+")


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


def subject_token(form: Form) -> str:
    """The RFC 8693 request's subject token, once the grant and token types are ones we serve."""
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


def allowing_rule(policy: Policy, subject: Subject) -> Rule:
    """The policy rule for the subject's namespace and service account, if it allows."""
    rule = policy.rule_for(subject.namespace, subject.service_account)
    if rule is None:
        raise refuse(CHECK_POLICY, f"no policy rule allows namespace {subject.namespace!r}"
                     f" / service account {subject.service_account!r}")
    if not rule.allow:
        raise refuse(CHECK_POLICY, f"policy rule {rule.name!r} refuses namespace "
                     f"{subject.namespace!r} / service account {subject.service_account!r}")
    return rule


def audiences(form: Form, allowed: Sequence[str]) -> list[str]:
    """The audiences asked for (audience and resource), each one this server mints; all of
    them when none is asked for."""
    asked = form.all("audience") + form.all("resource")
    for target in asked:
        if target not in allowed:
            raise Refusal(INVALID_TARGET, f"audience/resource {redact(target)[:100]!r} is "
                          f"not served here; this server mints tokens for "
                          f"{', '.join(allowed)}")
    return list(dict.fromkeys(asked)) or list(allowed)


def scopes(form: Form, rule: Rule) -> list[str]:
    """The scopes asked for, each one the rule allows; the rule's scopes when none is asked."""
    asked = (form.one("scope") or "").split()
    refused = [s for s in asked if s not in rule.scopes]
    if refused:
        raise Refusal(INVALID_SCOPE, f"scope {' '.join(refused)!r} is not allowed by policy "
                      f"rule {rule.name!r} (allowed: {' '.join(rule.scopes)})")
    return asked or list(rule.scopes)


def needs_binding(rule: Rule) -> bool:
    """Whether the rule names the token after the pod's execution (so the pod must be bound)."""
    return rule.identity != IDENTITY_SERVICE_ACCOUNT


def identity(subject: Subject, rule: Rule, binding: Binding | None,
             ) -> tuple[str, dict[str, Any]]:
    """Whom the token names, and the claims it adds: the launcher of the pod's execution, or
    the service account where the rule says so or allows it for a pod without one."""
    if binding is None:
        return subject.username, {}
    if binding.execution is None:
        if rule.non_flyte_pods == REFUSE:
            raise refuse(CHECK_LABELS, f"pod {subject.namespace}/{subject.pod_name} claims "
                         "no Flyte execution (no Flyte label, no FlyteWorkflow or TaskAction "
                         "owner) and "
                         f"policy rule {rule.name!r} refuses such pods (non_flyte_pods: "
                         "refuse)")
        return subject.username, {}
    ref = binding.execution
    execution = {f"{ref.kind}_id": {"project": ref.project, "domain": ref.domain,
                                     "name": ref.name}}
    if binding.principal:
        return binding.principal, execution | dict(binding.launcher.profile)
    if rule.no_principal == REFUSE:
        raise refuse(CHECK_PRINCIPAL, f"{ref.kind} {ref} has no principal and policy rule "
                     f"{rule.name!r} refuses such executions (no_principal: refuse)")
    return subject.username, execution

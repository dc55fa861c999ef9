"""The guard check, as a table: the shipped guard (deploy/, on the stand-in) passes; each
weakening in tests/exchange/guards.py, and each missing part, is refused naming it.
`make e2e` runs the same table on the real API server (tests/e2e/test_parity.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from devstack.world import GUARD_MANIFEST, WEBHOOK_MANIFEST
from flyte_auth_common.contract import GUARD_NAME, NAMESPACE_LABEL, NAMESPACE_LABEL_VALUE
from flyte_auth_exchange.errors import Refusal
from flyte_auth_exchange.guard import GuardObjects
from flyte_auth_exchange.trust import check_guard
from tests.exchange.guards import NS, WEAKENED, WEBHOOK, patched

LABELS = {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE, "kubernetes.io/metadata.name": NS}
KEYS = {("ValidatingAdmissionPolicy", GUARD_NAME): "policy",
        ("ValidatingAdmissionPolicyBinding", GUARD_NAME): "binding",
        ("ValidatingAdmissionPolicy", f"{GUARD_NAME}-token"): "token_policy",
        ("ValidatingAdmissionPolicyBinding", f"{GUARD_NAME}-token"): "token_binding"}
PLURALS = {"validatingadmissionpolicies": "ValidatingAdmissionPolicy",
           "validatingadmissionpolicybindings": "ValidatingAdmissionPolicyBinding"}


def shipped() -> dict[str, Any]:
    objs = {KEYS[(o["kind"], o["metadata"]["name"])]: o
            for o in yaml.safe_load_all(GUARD_MANIFEST.read_text())}
    return {**objs, "webhook": yaml.safe_load(WEBHOOK_MANIFEST.read_text())}


def verdict(objs: dict[str, Any], labels: dict[str, str] | None = LABELS,
            audience: str = "flyte-auth") -> str:
    try:
        check_guard(NS, labels, GuardObjects(**objs), guard=GUARD_NAME, audience=audience,
                    webhook=WEBHOOK)
    except Refusal as refusal:
        return f"{refusal.check}: {refusal.description}"
    return "ok"


def test_the_guard_deploy_ships_passes() -> None:
    assert verdict(shipped()) == "ok"


@pytest.mark.parametrize("case", list(WEAKENED))
def test_a_weakened_guard_is_refused_naming_what_differs(case: str) -> None:
    (plural, name), patch, expected = WEAKENED[case]
    objs = shipped()
    key = "webhook" if plural == "mutatingwebhookconfigurations" else KEYS[(PLURALS[plural],
                                                                            name)]
    objs[key] = patched(objs[key], patch)
    message = verdict(objs)
    assert "is not enforcing what deploy/ ships" in message and expected in message, message


@pytest.mark.parametrize("part", ["policy", "binding", "token_policy", "token_binding",
                                  "webhook"])
def test_a_missing_part_of_the_guard_is_named(part: str) -> None:
    objs = {**shipped(), part: None}
    assert "does not exist" in verdict(objs)


def test_the_token_policy_must_name_the_servers_own_audience() -> None:
    assert "matchConditions differ" in verdict(shipped(), audience="flyte-prod")


def test_a_connect_webhook_without_exec_or_that_skips_the_namespace_is_refused() -> None:
    objs = shipped()
    hook = copy.deepcopy(objs["webhook"])
    hook["webhooks"][1]["rules"][0]["resources"] = ["pods/portforward"]
    objs["webhook"] = hook
    assert "does not match CONNECT on pods/exec, pods/attach, pods/proxy" in verdict(objs)
    objs = shipped()
    objs["webhook"]["webhooks"][1]["namespaceSelector"]["matchExpressions"][1]["values"] += [NS]
    assert "namespaceSelector does not select namespace 'parity-development'" in verdict(objs)

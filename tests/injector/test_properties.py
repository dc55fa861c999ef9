"""Arbitrary pod-shaped JSON never makes the webhook fail: parse() + decide() are the whole of
what the /mutate handler runs, so no exception here means no HTTP 500 there; every patch
applies, and applying it twice is the same as once."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any, cast

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.pods import admission_review as review
from flyte_auth_injector import consts
from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.patch import diff
from flyte_auth_injector.review import BadReview, decide, parse
from tests.injector.helpers import ADMIN

CONFIG = InjectorConfig.load(["--admin-endpoint", ADMIN], {})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100_000), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
names = st.sampled_from(["main", "flyte-auth-agent", "flyte-auth-token", "flyte-auth-socket",
                         "x", "", "fetch"])
annotation_values = st.one_of(st.text(max_size=10), st.sampled_from(
    ["false", "600", "700", "99999999", "all", "flyte-auth", "fetch,main", "{", "{\"sidecar\":1}"]))
annotation_maps = st.dictionaries(st.sampled_from([
    consts.ANNOTATION_INJECT, consts.ANNOTATION_STATUS, consts.ANNOTATION_AUDIENCE,
    consts.ANNOTATION_EXPIRATION, consts.ANNOTATION_SCOPES, consts.ANNOTATION_INIT_CONTAINERS,
    "other"]), annotation_values, max_size=4)
containers = st.lists(st.one_of(json_values, st.fixed_dictionaries(
    {"name": names, "image": st.just("img")},
    optional={"env": st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["FLYTE_PLATFORM_URL", "FLYTE_AUTH_AGENT_SOCKET", "A"]),
         "value": st.text(max_size=5)}), max_size=3)),
        "volumeMounts": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"name": names, "mountPath": st.sampled_from(["/var/run/flyte-auth", "/d"])}),
            max_size=2)),
        "restartPolicy": st.just("Always")})), max_size=3)
pods = st.fixed_dictionaries({}, optional={
    "metadata": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "name": st.text(max_size=8),
        "labels": st.one_of(json_values, st.dictionaries(
            st.sampled_from(["execution-id", "project", "domain", "app"]),
            st.text(max_size=6), max_size=4)),
        "annotations": st.one_of(json_values, annotation_maps)})),
    "spec": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "containers": st.one_of(json_values, containers),
        "initContainers": st.one_of(json_values, containers),
        "volumes": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"name": names}, optional={"emptyDir": st.just({})}), max_size=3)),
        "hostNetwork": st.booleans(),
        "anything": json_values})),
    "status": json_values,
})


def answer(pod: Any) -> dict[str, Any]:
    body = json.dumps(review(pod)).encode()
    try:
        request = parse(body)
    except BadReview:
        return {}
    untouched = copy.deepcopy(request["object"])
    response = decide(request, CONFIG, lambda _: {}).response["response"]
    assert request["object"] == untouched  # the input is never modified (copy-on-write)
    return cast(dict[str, Any], response)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods)
def test_any_pod_shaped_json_gets_an_answer_and_a_patch_that_applies(pod: Any) -> None:
    response = answer(pod)
    if "patch" not in response:
        return
    patch = json.loads(base64.b64decode(response["patch"]))
    mutated = jsonpatch.apply_patch(pod, patch)
    assert "patch" not in answer(mutated)  # idempotent: nothing left to do


def test_property_strategy_reaches_injection() -> None:
    """Guard against a vacuous property: the strategy does produce injected pods."""
    pod = {"metadata": {"labels": {"execution-id": "e"}},
           "spec": {"containers": [{"name": "main", "image": "img"}]}}
    assert "patch" in answer(pod)
    assert Path(__file__).exists()


# Values that Python's == does not confuse (no bool/int/float mix): the diff treats equal
# values as unchanged, and the mutation never turns 1 into true or 1.0.
plain = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", "/x", "~y"]))
docs = st.recursive(plain, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f"]),
                                                 inner, max_size=4)), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["metadata", "spec", "x"]), docs, max_size=3),
       st.dictionaries(st.sampled_from(["metadata", "spec", "x"]), docs, max_size=3))
def test_diff_is_a_patch_from_before_to_after(before: Any, after: Any) -> None:
    patch = diff(before, after)
    assert jsonpatch.apply_patch(before, patch) == after
    assert (patch == []) == (before == after)

"""Reviews a pod's creator (or a direct caller) can craft, each as a class: every one gets a
200 with a decision, or a 400 for an unreadable review; never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from flyte_auth_injector import consts
from flyte_auth_injector.runtime import RunningInjector
from tests.injector.conftest import Call, apply, review
from tests.injector.pods import bare_pod


@pytest.mark.parametrize("value", ["9" * 5000, "²", "\uff11\uff12\uff10\uff10", "-600", "6e3", ""],
                         ids=["5000-digits", "superscript", "fullwidth", "negative", "float",
                              "empty"])
async def test_a_malformed_expiration_annotation_is_refused_with_a_reason(
        call: Call, value: str) -> None:
    pod = bare_pod()
    pod["metadata"]["annotations"] = {consts.ANNOTATION_EXPIRATION: value}
    status, answer = await call(review(pod))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert "must be a whole number of seconds between 600" in response["status"]["message"]
    assert len(response["status"]["message"]) < 400  # the value is cut short in the reason


async def test_json_nested_too_deeply_is_an_unreadable_review(call: Call) -> None:
    body = b'{"a":' * 3000 + b"1" + b"}" * 3000
    status, answer = await call(body)
    assert (status, answer["error"]) == (400, "bad_review")
    assert "nested too deeply" in answer["message"]


async def test_an_unexpected_error_refuses_the_pod_with_a_reason(
        call: Call, injector: RunningInjector, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("flyte_auth_injector.server.decide", broken)
    sent = review(bare_pod())
    with capture_logs() as logs:
        status, answer = await call(sent)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["uid"] == sent["request"]["uid"]
    assert "review_failed" in answer["response"]["status"]["message"]
    assert [e["error_type"] for e in logs if e["event"] == "review_failed"] == ["RuntimeError"]


@pytest.mark.parametrize("key", ["containers", "ephemeralContainers"])
async def test_the_sidecar_name_is_unique_across_every_container_list(
        call: Call, key: str) -> None:
    pod = bare_pod()
    pod["spec"].setdefault(key, []).append({"name": consts.SIDECAR_NAME, "image": "user/app"})
    mutated = apply(pod, (await call(review(pod)))[1])
    spec = mutated["spec"]
    names = [c["name"] for k in ("containers", "initContainers", "ephemeralContainers")
             for c in spec.get(k, [])]
    assert len(names) == len(set(names)), names
    assert spec["initContainers"][0]["name"] == f"{consts.SIDECAR_NAME}-1"
    status = json.loads(mutated["metadata"]["annotations"][consts.ANNOTATION_STATUS])
    assert status["sidecar"] == f"{consts.SIDECAR_NAME}-1"
    _, again = await call(review(mutated))
    assert "patch" not in again["response"]  # idempotent on its own output

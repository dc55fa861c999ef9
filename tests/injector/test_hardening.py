"""Reviews a pod's creator (or a direct caller) can craft, each as a class: every one gets a
200 with a decision, or a 400 for an unreadable review; never a 500."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from devstack.pods import admission_review as review
from devstack.pods import bare_pod
from flyte_auth_injector import consts
from flyte_auth_injector.runtime import RunningInjector
from tests.injector.helpers import Call, apply


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


async def test_the_agent_is_given_the_ca_files_and_a_rotated_one_reaches_new_pods(
        tls_files: tuple[Path, Path], tmp_path: Path, client: aiohttp.ClientSession) -> None:
    """--agent-ca-file: the exchange server's CA (or FlyteAdmin's private one) reaches the
    injected agent as FLYTE_AUTH_AGENT_CA_CERT_PEM; a rotated file reaches the next pods."""
    import trustme  # noqa: PLC0415

    from flyte_auth_injector.runtime import running_injector  # noqa: PLC0415
    from tests.injector.helpers import injector_config  # noqa: PLC0415

    ca_file = tmp_path / "exchange-ca.crt"
    first, second = trustme.CA(), trustme.CA()
    ca_file.write_bytes(first.cert_pem.bytes())

    def agent_ca(answer: dict[str, Any]) -> str:
        pod = apply(bare_pod(), answer)
        agent = pod["spec"]["initContainers"][0]
        return str(next(e["value"] for e in agent["env"] if e["name"] ==
                        "FLYTE_AUTH_AGENT_CA_CERT_PEM"))

    async with running_injector(injector_config(tls_files, "--agent-ca-file",
                                                str(ca_file))) as injector:
        async def review_once() -> dict[str, Any]:
            async with client.post(injector.url + "/mutate", json=review(bare_pod())) as r:
                return dict(await r.json())

        before = agent_ca(await review_once())
        ca_file.write_bytes(second.cert_pem.bytes())
        assert injector.agent_ca is not None
        assert injector.agent_ca.check() is True  # what the 10 s watcher does
        after = agent_ca(await review_once())
    assert before == first.cert_pem.bytes().decode().strip() + "\n"
    assert after == second.cert_pem.bytes().decode().strip() + "\n"


def test_an_agent_ca_file_that_is_not_a_certificate_is_a_config_error(
        tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    from flyte_auth_common.errors import ConfigError  # noqa: PLC0415
    from tests.injector.helpers import injector_config  # noqa: PLC0415

    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        injector_config(tls_files, "--agent-ca-file", str(bad))
    assert f"--agent-ca-file / FLYTE_AUTH_INJECTOR_AGENT_CA_FILE: {bad} holds no PEM " \
           "certificate" in str(err.value)

"""The webhook over real HTTPS (trustme CA): each pod's patch applied, compared with a golden
pod, validated against the Kubernetes schema, and re-run for an empty patch."""

from __future__ import annotations

import copy
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from devstack.pods import admission_review as review
from devstack.pods import bare_pod, busy_pod, flyte2_pod, propeller_pod, variant
from flyte_auth_common.contract import AGENT_PORT_NAME
from flyte_auth_injector import consts
from tests.injector.helpers import Call, apply

GOLDEN = Path(__file__).parent / "golden"
#: Oldest and newest Kubernetes releases we support (native sidecars need >= 1.29).
K8S_VERSIONS = ("1.30", "1.37")
Json = dict[str, Any]


def unknown_fields_pod() -> Json:
    pod = propeller_pod()
    pod["spec"]["futureSchedulingHint"] = {"kind": "gang", "size": 4}
    pod["spec"]["containers"][0]["futureField"] = [1, 2, 3]
    pod["metadata"]["futureMeta"] = "x"
    return pod


def collisions_pod() -> Json:
    pod = bare_pod()
    pod["spec"]["volumes"] = [{"name": "flyte-auth-token", "secret": {"secretName": "mine"}}]
    pod["spec"]["initContainers"] = [{"name": "flyte-auth-agent", "image": "my/agent:1"}]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "flyte-auth-token", "mountPath": "/var/run/flyte-auth"}]
    return pod


def init_opt_in_pod() -> Json:
    pod = busy_pod()
    pod["metadata"]["annotations"] = {consts.ANNOTATION_INIT_CONTAINERS: "fetch"}
    return pod


def overrides_pod() -> Json:
    pod = bare_pod()
    pod["metadata"]["annotations"] = {consts.ANNOTATION_EXPIRATION: "7200"}
    return pod


def several_pod() -> Json:
    pod = bare_pod()
    pod["spec"]["containers"].append({"name": "helper", "image": "busybox",
                                      "env": [{"name": contract_socket(), "value": "/mine.sock"}]})
    return pod


def contract_socket() -> str:
    from flyte_auth_common.contract import SOCKET_ENV  # noqa: PLC0415
    return SOCKET_ENV


INJECTED: list[Any] = [
    pytest.param(propeller_pod, id="propeller-pod"),
    pytest.param(flyte2_pod, id="flyte2-pod"),
    pytest.param(bare_pod, id="no-volumes-env-or-init-containers"),
    pytest.param(busy_pod, id="existing-volumes-env-init-and-native-sidecar"),
    pytest.param(lambda: variant(bare_pod(), metadata__name=None,
                                 metadata__generateName="wf-n0-"), id="generate-name"),
    pytest.param(several_pod, id="several-containers"),
    pytest.param(unknown_fields_pod, id="unknown-fields"),
    pytest.param(collisions_pod, id="name-collisions"),
    pytest.param(init_opt_in_pod, id="init-container-opt-in"),
    pytest.param(overrides_pod, id="annotation-override"),
]


def golden(name: str, pod: Json) -> Json:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(pod, indent=2, sort_keys=True) + "\n")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def validate(pod: Json, *, strict: bool = True) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=strict)


@pytest.mark.parametrize("make", INJECTED)
async def test_injection(call: Call, make: Callable[[], Json], request: pytest.FixtureRequest,
                         ) -> None:
    pod = make()
    status, answer = await call(review(pod))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is True
    mutated = apply(pod, answer)
    name = request.node.callspec.id
    assert mutated == golden(name, mutated)
    validate(mutated, strict=name != "unknown-fields")
    # Re-running on its own output changes nothing.
    status, again = await call(review(mutated))
    assert (status, "patch" in again["response"]) == (200, False)


async def test_the_agent_is_the_first_init_container_and_user_items_survive(call: Call) -> None:
    pod = busy_pod()
    mutated = apply(pod, (await call(review(pod)))[1])
    inits = mutated["spec"]["initContainers"]
    assert inits[0]["name"] == consts.SIDECAR_NAME
    assert inits[0]["restartPolicy"] == "Always"
    assert inits[1:] == pod["spec"]["initContainers"]  # the user's native sidecar kept its
    assert inits[2]["restartPolicy"] == "Always"       # restartPolicy (Azure WI #1312)
    main = mutated["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["FLYTE_PLATFORM_URL"] == "dns:///admin.example:443"  # the user's value wins
    assert env["FLYTE_CREDENTIALS_AUTH_MODE"] == "flyte-auth-agent"
    assert env["FLYTE_AUTH_AGENT_SOCKET"] == "/var/run/flyte-auth/agent.sock"
    assert {"name": "data", "mountPath": "/data"} in main["volumeMounts"]
    sidecar = inits[0]
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["lifecycle"]["postStart"]["exec"]["command"] == [
        "flyte-auth-agent", "wait", "--timeout", "300"]
    assert "startupProbe" not in sidecar  # the hook holds the task; a probe would add its period
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    token = next(v for v in mutated["spec"]["volumes"] if v["name"] == consts.TOKEN_VOLUME)
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source == {"audience": "flyte-auth", "expirationSeconds": 3600, "path": "token"}
    status = json.loads(mutated["metadata"]["annotations"][consts.ANNOTATION_STATUS])
    assert status["sidecar"] == consts.SIDECAR_NAME


async def test_collisions_take_the_next_name_and_leave_the_users_items(call: Call) -> None:
    pod = collisions_pod()
    mutated = apply(pod, (await call(review(pod)))[1])
    spec = mutated["spec"]
    assert spec["volumes"][0] == pod["spec"]["volumes"][0]
    assert {v["name"] for v in spec["volumes"]} == {"flyte-auth-token", "flyte-auth-token-1",
                                                    "flyte-auth-socket"}
    assert [c["name"] for c in spec["initContainers"]] == ["flyte-auth-agent-1",
                                                           "flyte-auth-agent"]
    assert spec["initContainers"][1] == pod["spec"]["initContainers"][0]
    main = spec["containers"][0]
    assert {"name": "flyte-auth-socket", "mountPath": "/var/run/flyte-auth-1",
            "readOnly": True} in main["volumeMounts"]
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["FLYTE_AUTH_AGENT_SOCKET"] == "/var/run/flyte-auth-1/agent.sock"


@pytest.mark.parametrize(("pod", "namespace"), [
    pytest.param(variant(propeller_pod(), metadata__annotations={
        consts.ANNOTATION_INJECT: "false"}), "flytesnacks-development", id="opted-out"),
    pytest.param(variant(propeller_pod(), metadata__labels={"app": "web"}),
                 "flytesnacks-development", id="not-a-flyte-pod"),
    pytest.param(variant(propeller_pod(), metadata__ownerReferences=[{
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "name": "f3a1b2c4d5e6-n0-0-raycluster",
        "uid": "r1", "controller": True}]), "flytesnacks-development", id="ray-pod"),
    pytest.param(propeller_pod(), "kube-system", id="kube-system"),
    pytest.param(propeller_pod(), "flyte-auth", id="own-namespace"),
])
async def test_pods_left_alone(call: Call, pod: Json, namespace: str) -> None:
    status, answer = await call(review(pod, namespace))
    assert status == 200
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]


async def test_every_answer_echoes_the_uid(call: Call) -> None:
    for pod in (propeller_pod(), variant(propeller_pod(), metadata__labels={})):
        sent = review(pod)
        _, answer = await call(sent)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == sent["request"]["uid"]


@pytest.mark.parametrize(("annotations", "message"), [
    pytest.param({consts.ANNOTATION_EXPIRATION: "60"}, "token-expiration='60' must be a whole "
                 "number of seconds between 600 and 86400", id="expiration-too-short"),
    pytest.param({consts.ANNOTATION_EXPIRATION: "soon"}, "token-expiration='soon'",
                 id="expiration-not-a-number"),
    pytest.param({consts.ANNOTATION_AUDIENCE: "vault"}, "token-audience='vault' is not an "
                 "allowed audience (flyte-auth)", id="audience-not-allowed"),
    pytest.param({consts.ANNOTATION_SCOPES: "all admin"}, "allowed scopes are all",
                 id="scope-not-allowed"),
])
async def test_out_of_range_annotations_are_refused_with_the_reason(
        call: Call, annotations: dict[str, str], message: str) -> None:
    pod = variant(propeller_pod(), metadata__annotations=annotations)
    status, answer = await call(review(pod))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert "patch" not in response
    assert message in response["status"]["message"]
    assert response["status"]["message"].startswith("flyte-auth: pod annotation ")


@pytest.mark.parametrize(("body", "message"), [
    pytest.param(b"{not json", "body is not JSON", id="not-json"),
    pytest.param(b"[1]", "not a JSON object", id="not-an-object"),
    pytest.param({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                  "request": {}}, "expected apiVersion admission.k8s.io/v1", id="v1beta1"),
    pytest.param({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
                 "has no request object", id="no-request"),
    pytest.param(lambda r: r["request"].pop("uid"), "request.uid is missing", id="no-uid"),
    pytest.param(lambda r: r["request"].update(kind={"group": "apps", "version": "v1",
                                                     "kind": "Deployment"}),
                 "request.kind must be core/v1 Pod", id="not-a-pod"),
    pytest.param(lambda r: r["request"].update(object="pod"), "request.object (the pod) is "
                 "missing", id="object-not-an-object"),
])
async def test_malformed_reviews_get_400_saying_what_is_wrong(call: Call, body: Any,
                                                              message: str) -> None:
    if callable(body):
        sent = review(propeller_pod())
        body(sent)
        body = sent
    status, answer = await call(body)
    assert status == 400
    assert message in answer["message"]


async def test_reinvocation_after_another_webhook_adds_a_container(call: Call) -> None:
    """reinvocationPolicy IfNeeded: our steps run again; only the new container changes."""
    pod = propeller_pod()
    mutated = apply(pod, (await call(review(pod)))[1])
    mutated["spec"]["containers"].append({"name": "added-later", "image": "envoy"})
    before = copy.deepcopy(mutated)
    again = apply(mutated, (await call(review(mutated)))[1])
    assert again["spec"]["containers"][:1] == before["spec"]["containers"][:1]
    added = again["spec"]["containers"][1]
    assert {"name": "FLYTE_CREDENTIALS_AUTH_MODE", "value": "flyte-auth-agent"} in added["env"]
    assert again["spec"]["initContainers"] == before["spec"]["initContainers"]


async def test_operator_settings_flow_into_the_sidecar(call: Call) -> None:
    pod = propeller_pod()
    mutated = apply(pod, (await call(review(pod)))[1])
    agent = mutated["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") or e.get("valueFrom") for e in agent["env"]}
    assert agent["image"] == "flyte-auth-agent:test"
    assert env["FLYTE_AUTH_AGENT_ADMIN_ENDPOINT"] == "flyteadmin.flyte.svc.cluster.local:81"
    assert env["FLYTE_AUTH_AGENT_ADMIN_INSECURE"] == "true"
    assert env["FLYTE_AUTH_AGENT_HEALTH_ADDR"] == "0.0.0.0:9787"
    assert env["FLYTE_INTERNAL_EXECUTION_ID"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['execution-id']"}}
    app = {e["name"]: e.get("value") for e in mutated["spec"]["containers"][0]["env"]}
    assert app["FLYTE_PLATFORM_URL"] == "flyteadmin.flyte.svc.cluster.local:81"
    assert app["FLYTE_PLATFORM_INSECURE"] == "true"
    assert app["FLYTE_INTERNAL_EXECUTION_ID"] == "f3a1b2c4d5e6"  # propeller's env untouched


async def test_a_host_network_pod_gets_no_port_and_the_same_hold(call: Call) -> None:
    """A hostNetwork pod shares the node's network: an agent port there would collide with
    the next such pod's. Its agent listens on no TCP port and has no liveness probe; the
    hold (the postStart hook over the socket) is the same as for any pod."""
    pod = variant(propeller_pod(), spec__hostNetwork=True)
    _, answer = await call(review(pod))
    injected = apply(pod, answer)
    agent = injected["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert agent["name"] == "flyte-auth-agent"
    assert "FLYTE_AUTH_AGENT_HEALTH_ADDR" not in env
    assert "livenessProbe" not in agent and "ports" not in agent
    plain = apply(propeller_pod(), (await call(review(propeller_pod())))[1])
    assert agent["lifecycle"] == plain["spec"]["initContainers"][0]["lifecycle"]
    assert "httpGet" in plain["spec"]["initContainers"][0]["livenessProbe"]


async def test_the_agents_port_is_declared_by_name_unless_the_pod_has_it(call: Call) -> None:
    """What a PodMonitor scrapes: the agent's health port under contract.AGENT_PORT_NAME
    (the Prometheus Operator keeps only declared ports). A user's port of that name or number
    would make the pod invalid (names are unique across its containers): then ours is left
    undeclared, and the pod stays valid."""
    plain = apply(propeller_pod(), (await call(review(propeller_pod())))[1])
    assert plain["spec"]["initContainers"][0]["ports"] == [
        {"name": AGENT_PORT_NAME, "containerPort": 9787, "protocol": "TCP"}]
    for user_port in ({"name": AGENT_PORT_NAME, "containerPort": 8080},
                      {"name": "web", "containerPort": 9787}):
        pod = variant(propeller_pod(), spec__containers__0__ports=[user_port])
        injected = apply(pod, (await call(review(pod)))[1])
        assert "ports" not in injected["spec"]["initContainers"][0]
        validate(injected)


@pytest.mark.parametrize(("annotation", "timeout"), [
    pytest.param(None, "300", id="default"),
    pytest.param("30", "30", id="bounded"),
    pytest.param("0", None, id="lazy"),
])
async def test_token_wait_bounds_how_long_the_task_is_held(call: Call, annotation: str | None,
                                                           timeout: str | None) -> None:
    """The postStart hook holds the task for the first token for `token-wait` seconds; with 0
    there is no hold (the task starts at once), and liveness is kept either way."""
    pod = propeller_pod() if annotation is None else variant(
        propeller_pod(), metadata__annotations={consts.ANNOTATION_TOKEN_WAIT: annotation})
    agent = apply(pod, (await call(review(pod)))[1])["spec"]["initContainers"][0]
    if timeout is None:
        assert "lifecycle" not in agent
    else:
        assert agent["lifecycle"]["postStart"]["exec"]["command"][-2:] == ["--timeout", timeout]
    assert "startupProbe" not in agent
    assert "livenessProbe" in agent


async def test_a_token_wait_out_of_range_is_refused_saying_the_range(call: Call) -> None:
    pod = variant(propeller_pod(), metadata__annotations={consts.ANNOTATION_TOKEN_WAIT: "9999"})
    _, answer = await call(review(pod))
    assert answer["response"]["allowed"] is False
    assert "flyte-auth.flyte.org/token-wait='9999' must be a whole number of seconds between " \
        "0 and 3600" in answer["response"]["status"]["message"]


async def test_a_flyte2_task_pod_gets_the_sdks_command_mode_and_nothing_of_flyte1(
        call: Call) -> None:
    """Flyte 2's SDK has no authenticator plugins: its task containers get ExternalCommand
    mode running the token command the agent writes beside its socket (the image needs
    nothing of ours). flytekit's plugin mode and FlyteAdmin's address are Flyte 1's."""
    _, answer = await call(review(flyte2_pod()))
    injected = apply(flyte2_pod(), answer)
    assert injected["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"
    env = {e["name"]: e.get("value") for e in injected["spec"]["containers"][0]["env"]}
    assert env["FLYTE_AUTH_TYPE"] == "ExternalCommand"
    argv = shlex.split(env["FLYTE_AUTH_COMMAND"])  # as the SDK splits it
    assert argv[:2] == ["python3", "-c"]
    assert argv[3:] == ["/var/run/flyte-auth/flyte-auth-token.py"]
    assert env["FLYTE_AUTH_AGENT_SOCKET"] == "/var/run/flyte-auth/agent.sock"
    assert "FLYTE_CREDENTIALS_AUTH_MODE" not in env and "FLYTE_PLATFORM_URL" not in env
    assert env["RUN_NAME"] == "r8x2k"  # the executor's env untouched


async def test_a_flyte2_pods_own_auth_settings_win(call: Call) -> None:
    pod = flyte2_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "FLYTE_AUTH_TYPE", "value": "Pkce"})
    env = {e["name"]: e.get("value") for e in apply(pod, (await call(review(pod)))[1])[
        "spec"]["containers"][0]["env"]}
    assert env["FLYTE_AUTH_TYPE"] == "Pkce"


@pytest.mark.parametrize(("value", "warned"), [("true", True), ("T", True), ("1", True),
                                               ("false", False), ("", False)])
async def test_a_flyte2_pod_on_plain_http_is_injected_with_a_warning(
        call: Call, value: str, warned: bool) -> None:
    """The flyte SDK installs no authenticator with _U_INSECURE set (its str2bool: true, t,
    1): the token command would never run. The pod is still injected, and the API server
    shows its creator the warning."""
    pod = flyte2_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "_U_INSECURE", "value": value})
    _, answer = await call(review(pod))
    assert "patch" in answer["response"]
    warnings = answer["response"].get("warnings", [])
    assert bool(warnings) is warned
    if warned:
        assert warnings == ["flyte-auth: container 'r8x2k-a0-1' sets _U_INSECURE: the flyte "
                            "SDK sends no token over plain HTTP; point _U_EP_OVERRIDE at the "
                            "auth proxy's TLS port instead"]
    flyte1 = propeller_pod()
    flyte1["spec"]["containers"][0].setdefault("env", []).append(
        {"name": "_U_INSECURE", "value": "true"})
    assert "warnings" not in (await call(review(flyte1)))[1]["response"]


@pytest.mark.parametrize("labels", [{"run": "r8x2k"}, {"action": "a0"}], ids=["run", "action"])
async def test_half_of_flyte2s_labels_is_not_a_task_pod(call: Call, labels: Json) -> None:
    pod = variant(flyte2_pod(), metadata__labels=labels)
    _, answer = await call(review(pod))
    assert "patch" not in answer["response"]
    assert answer["response"]["allowed"] is True

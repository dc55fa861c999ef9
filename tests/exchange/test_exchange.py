"""The exchange server over real HTTP, validating against the stand-in Kubernetes API and
asking the stand-in FlyteAdmin over real gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
from flyteidl.service import identity_pb2, identity_pb2_grpc
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from devstack.issuer import StubIssuer
from devstack.world import ADMIN_URL, EXECUTOR, NAMESPACE, World, owner_reference
from flyte_auth_common import __version__, contract
from flyte_auth_common.contract import GUARD_NAME
from flyte_auth_common.jwt import jwt_claims
from flyte_auth_exchange.mint import Minter
from tests.exchange.helpers import StartExchange, form, logged, post, user_info


def header(token: str) -> dict[str, Any]:
    head = base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "==")
    return cast(dict[str, Any], json.loads(head))


async def test_executor_identity_round_trip(world: World, exchange: StartExchange,
                                            http: aiohttp.ClientSession) -> None:
    pod = world.task_pod(identity_label="alice-example-com")
    subject = world.kube.token_for(pod)
    async with exchange() as ex:
        status, body = await post(http, ex.url, form(subject, scope="all", audience=ADMIN_URL))
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["expires_in"] == 3600
    assert body["scope"] == "all"
    token = str(body["access_token"])
    head, claims = header(token), jwt_claims(token) or {}
    assert head["alg"] == "RS256"
    # The id FlyteAdmin gives the same key (RFC 7638 thumbprint), so it finds it by id.
    assert head["kid"] == head["key_id"] == Minter.load_key(world.key_file).thumbprint()
    assert claims["sub"] == EXECUTOR
    assert claims["aud"] == [ADMIN_URL]
    assert claims["scp"] == ["all"]
    # iat and nbf set back by --clock-skew (60 s): FlyteAdmin allows no skew at all.
    assert claims["exp"] - claims["iat"] == 3600 + 60
    assert claims["nbf"] == claims["iat"]
    assert claims["act"] == {"sub": f"system:serviceaccount:{NAMESPACE}:default"}
    assert claims["execution_id"] == {"project": "flytesnacks", "domain": "development",
                                      "name": "f3a1b2c4d5e6"}
    assert isinstance(claims["jti"], str)
    # FlyteAdmin (stand-in, validating as the real one does) accepts it as the executor.
    assert await user_info(world, token) == EXECUTOR
    # The server asked FlyteAdmin with a token it minted for itself.
    assert ("GetExecution", "flyte-auth-exchange") in world.admin.calls


async def test_metadata_and_jwks(world: World, exchange: StartExchange,
                                 http: aiohttp.ClientSession) -> None:
    subject = world.kube.token_for(world.task_pod())
    async with exchange() as ex:
        meta = await (await http.get(ex.url + "/.well-known/oauth-authorization-server")).json()
        oidc = await (await http.get(ex.url + "/.well-known/openid-configuration")).json()
        jwks = await (await http.get(ex.url + "/jwks")).json()
        _, body = await post(http, ex.url, form(subject))
        ready = await http.get(ex.url + "/readyz")
        metrics = await (await http.get(ex.url + "/metrics")).text()
    assert meta["issuer"] == ex.url
    assert meta["token_endpoint"] == ex.url + "/oauth2/token"
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    # Proxies that validate JWTs find the keys through OIDC discovery (Flyte 2's auth proxy).
    assert oidc["issuer"] == ex.url and oidc["jwks_uri"] == ex.url + "/jwks"
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    lenient = JWSRegistry(strict_check_header=False)  # FlyteAdmin's `key_id` header
    decoded = jwt.decode(str(body["access_token"]), KeySet.import_key_set(jwks), registry=lenient)
    assert decoded.claims["sub"] == EXECUTOR
    assert ready.status == 200
    assert 'flyte_auth_exchange_decisions_total{code="",outcome="granted"} 1.0' in metrics


Mutate = Callable[[World], Any]


def _other_key(world: World, **kw: Any) -> str:
    forged = StubIssuer(issuer=world.kube.issuer.issuer, **kw)
    pod = world.task_pod()
    meta = pod["metadata"]
    return forged.mint(namespace=meta["namespace"], pod=meta["name"], pod_uid=meta["uid"])


def _mint(world: World, **kw: Any) -> str:
    return world.kube.token_for(world.task_pod(), **kw)


def _wrong_issuer(world: World) -> str:
    real = world.kube.issuer.issuer
    world.kube.issuer.issuer = "https://evil.example"
    try:
        return _mint(world)
    finally:
        world.kube.issuer.issuer = real


def _deleted_pod(world: World) -> str:
    token = _mint(world)
    world.kube.pods.clear()
    return token


def _recreated_pod(world: World) -> str:
    token = _mint(world)
    world.task_pod()  # same name, new uid
    return token


VICTIM = "f3a1b2c4d5e6"


def _cross_project_repro(world: World) -> str:
    """The attack as reported: FlyteAdmin runs payroll/production/vict1m for the CEO; a pod
    in flytesnacks-development merely labels itself with that execution."""
    world.admin.executions[("payroll", "production", "vict1m")] = "ceo@example.com"
    pod = world.kube.add_pod(NAMESPACE, "forged", labels={
        "execution-id": "vict1m", "project": "payroll", "domain": "production"})
    return world.kube.token_for(pod)


def _owner_of(world: World, execution: str) -> dict[str, Any]:
    world.task_pod(f"{execution}-n0-0", execution=execution)  # its real pod and workflow
    return owner_reference(world.kube.workflows[(NAMESPACE, execution)])


def _forged(world: World, owners: list[dict[str, Any]]) -> str:
    """A pod someone else created in the victim execution's own namespace, with the
    victim's labels and the given owner references."""
    real = world.task_pod(execution=VICTIM)
    pod = world.kube.add_pod(NAMESPACE, "forged", labels=real["metadata"]["labels"],
                             owners=owners)
    return world.kube.token_for(pod)


def _unguarded(world: World, missing: str) -> str:
    token = world.kube.token_for(world.task_pod())
    if missing == "label":
        world.kube.set_namespace(NAMESPACE)
    elif missing in ("pod-security", "privileged"):
        world.kube.set_namespace(NAMESPACE, labels={
            contract.NAMESPACE_LABEL: contract.NAMESPACE_LABEL_VALUE} | (
                {contract.POD_SECURITY_LABEL: "privileged"} if missing == "privileged" else {}))
    elif missing == "warn":
        binding = world.kube.admission[("validatingadmissionpolicybindings", GUARD_NAME)]
        binding["spec"]["validationActions"] = ["Warn", "Audit"]
    else:
        kind = "validatingadmissionpolicies" if missing == "policy" else \
            "validatingadmissionpolicybindings"
        del world.kube.admission[(kind, GUARD_NAME)]
    return token


REFUSALS: list[Any] = [
    pytest.param(lambda w: form(_other_key(w)), "invalid_grant", "signature does not verify",
                 id="wrong-signature"),
    pytest.param(lambda w: form(_other_key(w, kid="unknown-kid")), "invalid_grant",
                 "key (kid) the service-account issuer does not publish", id="unknown-kid"),
    pytest.param(lambda w: form(_mint(w, now=time.time() - 7200)), "invalid_grant",
                 "subject token expired", id="expired"),
    pytest.param(lambda w: form(_mint(w, now=time.time() + 3600)), "invalid_grant",
                 "not valid yet", id="not-yet-valid"),
    pytest.param(lambda w: form(_mint(w, audience="vault")), "invalid_grant",
                 "audience does not include 'flyte-auth'", id="wrong-audience"),
    pytest.param(lambda w: form(_wrong_issuer(w)), "invalid_grant",
                 "is not the trusted service-account issuer", id="wrong-issuer"),
    pytest.param(lambda w: form(_deleted_pod(w)), "invalid_grant", "does not exist",
                 id="pod-deleted"),
    pytest.param(lambda w: form(_recreated_pod(w)), "invalid_grant", "another uid",
                 id="pod-uid-mismatch"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(phase="Succeeded"))),
                 "invalid_grant", "has finished (phase Succeeded)", id="pod-finished"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(namespace="kube-system"))),
                 "access_denied", "policy rule 'no-system' refuses namespace 'kube-system'",
                 id="namespace-refused"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(namespace="other-production"))),
                 "access_denied", "no policy rule allows namespace 'other-production'",
                 id="namespace-not-allowed"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(principal=""))), "access_denied",
                 "has no principal and policy rule 'flyte' refuses", id="no-principal"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(identity_label="mallory"))),
                 "access_denied", "execution-identity label does not match",
                 id="identity-label-mismatch"),
    pytest.param(lambda w: form(w.kube.token_for(w.task_pod(principal=None))), "invalid_grant",
                 "does not exist in FlyteAdmin", id="execution-unknown"),
    pytest.param(lambda w: form(w.kube.token_for(w.kube.add_pod(NAMESPACE, "plain-pod"))),
                 "access_denied", "claims no Flyte execution", id="not-a-flyte-pod"),
    pytest.param(lambda w: form(w.kube.token_for(w.kube.add_pod(NAMESPACE, "v2-pod", labels={
        "run": "r8x2k", "action": "a0", "project": "flytesnacks", "domain": "development"}))),
                 "access_denied", "owner check: pod flytesnacks-development/v2-pod has Flyte "
                 "2's run and action labels but no TaskAction controls it",
                 id="flyte2-labels-without-owner"),
    # Binding: a pod's creator writes its labels and owner references; only what RBAC
    # controls (namespace, the FlyteWorkflow object, the guard) makes them proof.
    pytest.param(lambda w: form(_cross_project_repro(w)), "access_denied",
                 "namespace check: the pod in namespace 'flytesnacks-development' claims "
                 "execution payroll/production/vict1m, which Flyte runs only in namespace "
                 "'payroll-production'", id="repro-cross-project-labels"),
    pytest.param(lambda w: form(_forged(w, owners=[])), "access_denied",
                 "owner check: pod flytesnacks-development/forged is not controlled by a "
                 "FlyteWorkflow", id="same-namespace-labels-without-owner"),
    pytest.param(lambda w: form(_forged(w, owners=[_owner_of(w, "other1")])), "access_denied",
                 "but its FlyteWorkflow 'other1' runs execution "
                 "flytesnacks/development/other1", id="owner-of-another-execution"),
    pytest.param(lambda w: form(_forged(w, owners=[{**_owner_of(w, VICTIM), "uid": "u-1"}])),
                 "access_denied", "owner check: pod flytesnacks-development/forged names "
                 "FlyteWorkflow 'f3a1b2c4d5e6' with another uid", id="owner-uid-mismatch"),
    pytest.param(lambda w: form(_forged(w, owners=[{**_owner_of(w, VICTIM), "name": "gone"}])),
                 "access_denied", "names FlyteWorkflow 'gone' as its controller, which does "
                 "not exist", id="owner-does-not-exist"),
    pytest.param(lambda w: form(_forged(w, owners=[{**_owner_of(w, VICTIM),
                                                     "controller": False}])),
                 "access_denied", "is not controlled by a FlyteWorkflow",
                 id="owner-not-controller"),
    pytest.param(lambda w: form(_unguarded(w, "label")), "access_denied",
                 "guard check: namespace 'flytesnacks-development' is not labelled "
                 "flyte-auth.flyte.org/inject=enabled", id="namespace-not-injected"),
    pytest.param(lambda w: form(_unguarded(w, "pod-security")), "access_denied",
                 "pod-security check: namespace 'flytesnacks-development' has no "
                 "pod-security.kubernetes.io/enforce label", id="namespace-without-pod-security"),
    pytest.param(lambda w: form(_unguarded(w, "privileged")), "access_denied",
                 "pod-security check: namespace 'flytesnacks-development' labels it "
                 "pod-security.kubernetes.io/enforce=privileged", id="namespace-privileged"),
    pytest.param(lambda w: form(_unguarded(w, "binding")), "access_denied",
                 "guard check: the ValidatingAdmissionPolicyBinding "
                 "'flyte-auth-execution-labels' does not exist", id="guard-binding-missing"),
    pytest.param(lambda w: form(_unguarded(w, "policy")), "access_denied",
                 "guard check: the ValidatingAdmissionPolicy 'flyte-auth-execution-labels' "
                 "does not exist", id="guard-policy-missing"),
    pytest.param(lambda w: form(_unguarded(w, "warn")), "access_denied",
                 "guard check: the admission guard 'flyte-auth-execution-labels' is not "
                 "enforcing", id="guard-only-warns"),
    pytest.param(lambda w: {**form(_mint(w)), "grant_type": "password"},
                 "unsupported_grant_type", "grant_type 'password' is not supported",
                 id="wrong-grant-type"),
    pytest.param(lambda w: {k: v for k, v in form(_mint(w)).items() if k != "subject_token"},
                 "invalid_request", "subject_token is missing", id="no-subject-token"),
    pytest.param(lambda w: form(_mint(w), subject_token_type="urn:x"), "invalid_request",
                 "subject_token_type must be one of", id="wrong-subject-type"),
    pytest.param(lambda w: form("not-a-jwt"), "invalid_grant", "not a JWT", id="not-a-jwt"),
    pytest.param(lambda w: form(_mint(w), audience="https://other.example"), "invalid_target",
                 "is not served here", id="unknown-audience"),
    pytest.param(lambda w: form(_mint(w), scope="all admin"), "invalid_scope",
                 "scope 'admin' is not allowed by policy rule 'flyte'", id="scope-not-allowed"),
    pytest.param(lambda w: json.dumps(form(_mint(w))), "invalid_request",
                 "must be application/x-www-form-urlencoded", id="malformed-body"),
]

POLICY = """
rules:
  - name: no-system
    namespaces: ["kube-*"]
    allow: false
  - name: flyte
    namespaces: ["flytesnacks-*"]
    no_principal: refuse
"""


@pytest.mark.parametrize(("make", "code", "text"), REFUSALS)
async def test_refusals_name_the_failed_check(world: World, exchange: StartExchange,
                                              http: aiohttp.ClientSession, tmp_path: Path,
                                              make: Callable[[World], Any], code: str,
                                              text: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    data = make(world)
    presented = data["subject_token"] if isinstance(data, dict) and "subject_token" in data \
        else None
    with logged() as logs:
        async with exchange("--policy", str(policy)) as ex:
            status, body = await post(http, ex.url, data)
    assert (status, body["error"]) == (400, code), body
    assert text in str(body["error_description"])
    decisions = [e for e in logs if e["event"] == "exchange_decision"]
    assert len(decisions) == 1
    assert decisions[0]["outcome"] == "refused"
    assert decisions[0]["error"] == code
    if code == "access_denied":  # a check refused: the description and the audit name it
        check = decisions[0]["check"]
        assert str(body["error_description"]).startswith(f"{check} check: "), decisions[0]
    if presented:
        assert presented not in json.dumps(body) + json.dumps(logs, default=str)


async def test_cluster_default_pod_security_trusts_unlabelled_namespaces_only(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """--pod-security cluster-default: the operator vouches for the API server's defaults, so
    a namespace without the label passes; one labelled privileged never does."""
    unlabelled = _unguarded(world, "pod-security")
    async with exchange("--pod-security", "cluster-default", "--cache-ttl", "0") as ex:
        granted, _ = await post(http, ex.url, form(unlabelled))
        privileged = _unguarded(world, "privileged")
        refused, body = await post(http, ex.url, form(privileged))
    assert granted == 200
    assert (refused, body["error"]) == (400, "access_denied")
    assert str(body["error_description"]).startswith("pod-security check: ")


async def test_the_repro_is_refused_without_a_policy_too(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """No --policy: a pod in `default` claiming the CEO's execution gets the namespace
    check, not a token for the CEO."""
    world.admin.executions[("payroll", "production", "vict1m")] = "ceo@example.com"
    world.kube.set_namespace("default", labels=dict(contract.ENABLED_NAMESPACE_LABELS))
    pod = world.kube.add_pod("default", "forged", labels={
        "execution-id": "vict1m", "project": "payroll", "domain": "production"})
    async with exchange() as ex:
        status, body = await post(http, ex.url, form(world.kube.token_for(pod)))
    assert (status, body["error"]) == (400, "access_denied")
    assert str(body["error_description"]).startswith("namespace check: ")
    assert "ceo@example.com" not in json.dumps(body)


async def test_the_namespace_template_is_flytes(world: World, exchange: StartExchange,
                                                http: aiohttp.ClientSession) -> None:
    """A deployment whose namespace_mapping.template is `flyte-{{ project }}`: the pod in
    flytesnacks-development no longer matches, one in flyte-flytesnacks does."""
    world.admin.executions[("flytesnacks", "development", "e1")] = EXECUTOR
    world.kube.set_namespace("flyte-flytesnacks",
                             labels=dict(contract.ENABLED_NAMESPACE_LABELS))
    wf = world.kube.add_workflow("flyte-flytesnacks", "flytesnacks", "development", "e1")
    labels = {"execution-id": "e1", "project": "flytesnacks", "domain": "development"}
    moved = world.kube.add_pod("flyte-flytesnacks", "e1-n0-0", labels=labels,
                               owners=[owner_reference(wf)])
    default_place = world.task_pod()
    async with exchange("--namespace-template", "flyte-{{ project }}") as ex:
        ok, _ = await post(http, ex.url, form(world.kube.token_for(moved)))
        status, body = await post(http, ex.url, form(world.kube.token_for(default_place)))
    assert ok == 200
    assert (status, body["error"]) == (400, "access_denied")
    assert "only in namespace 'flyte-flytesnacks'" in str(body["error_description"])


async def test_pods_that_claim_no_execution_may_get_their_service_account(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """Anyone's pod without Flyte's labels: the service account's identity where the policy
    says non_flyte_pods: service-account, never a user's; refused by default."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: projects\n    non_flyte_pods: service-account\n")
    world.kube.set_namespace(NAMESPACE, labels=dict(contract.ENABLED_NAMESPACE_LABELS))
    plain = world.kube.add_pod(NAMESPACE, "notebook")
    async with exchange("--policy", str(policy)) as ex:
        status, body = await post(http, ex.url, form(world.kube.token_for(plain)))
    assert status == 200, body
    claims = jwt_claims(str(body["access_token"])) or {}
    assert claims["sub"] == f"system:serviceaccount:{NAMESPACE}:default"
    assert "execution_id" not in claims


async def test_policy_can_fall_back_to_the_service_account(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: lenient\n    no_principal: service-account\n"
                      "    max_lifetime: 600\n    scopes: [all, offline]\n")
    subject = world.kube.token_for(world.task_pod(principal=""))
    async with exchange("--policy", str(policy)) as ex:
        status, body = await post(http, ex.url, form(subject))
    assert status == 200
    claims = jwt_claims(str(body["access_token"])) or {}
    assert claims["sub"] == f"system:serviceaccount:{NAMESPACE}:default"
    assert body["expires_in"] == 600  # capped by the rule
    assert claims["scp"] == ["all", "offline"]


async def test_service_account_identity_needs_no_flyteadmin(
        world: World, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    from flyte_auth_exchange.config import ExchangeConfig  # noqa: PLC0415
    from flyte_auth_exchange.runtime import running_exchange  # noqa: PLC0415

    args = ["--listen", "127.0.0.1:0", "--signing-key", str(world.key_file),
            "--admin-audience", ADMIN_URL, "--subject-issuer", world.kube.url,
            "--subject-discovery", world.kube.url, "--identity", "service-account"]
    subject = world.kube.token_for(world.task_pod())
    async with running_exchange(ExchangeConfig.load(args, {})) as ex:
        status, body = await post(http, ex.url, form(subject))
    assert status == 200
    assert (jwt_claims(str(body["access_token"])) or {})["sub"] == \
        f"system:serviceaccount:{NAMESPACE}:default"
    assert world.kube.pod_reads == 0
    assert await user_info(world, str(body["access_token"])) == \
        f"system:serviceaccount:{NAMESPACE}:default"


async def test_token_review_as_well_as_the_signature(world: World, exchange: StartExchange,
                                                     http: aiohttp.ClientSession) -> None:
    pod = world.task_pod()
    subject = world.kube.token_for(pod)
    async with exchange("--token-review", "--cache-ttl", "0") as ex:
        assert (await post(http, ex.url, form(subject)))[0] == 200
        world.kube.pods.clear()  # the pod is deleted: the API server no longer vouches
        status, body = await post(http, ex.url, form(subject))
    assert world.kube.reviews == 2
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "TokenReview did not authenticate" in str(body["error_description"])


async def test_token_review_alone(world: World, http: aiohttp.ClientSession) -> None:
    from flyte_auth_exchange.config import ExchangeConfig  # noqa: PLC0415
    from flyte_auth_exchange.runtime import running_exchange  # noqa: PLC0415

    args = [a for a in world.exchange_args("--token-review")]
    i = args.index("--subject-discovery")
    del args[i:i + 2]
    subject = world.kube.token_for(world.task_pod())
    async with running_exchange(ExchangeConfig.load(args, {})) as ex:
        ok, _ = await post(http, ex.url, form(subject))
        forged, body = await post(http, ex.url, form(_other_key(world)))
    assert ok == 200
    assert (forged, body["error"]) == (400, "invalid_grant")
    assert world.kube.reviews == 2


async def test_a_burst_from_one_pod_costs_one_lookup(world: World, exchange: StartExchange,
                                                     http: aiohttp.ClientSession) -> None:
    subject = world.kube.token_for(world.task_pod())
    async with exchange() as ex:
        results = await asyncio.gather(*(post(http, ex.url, form(subject)) for _ in range(20)))
    assert {status for status, _ in results} == {200}
    assert world.kube.pod_reads == 1
    assert [c for c in world.admin.calls if c[0] == "GetExecution"] == [
        ("GetExecution", "flyte-auth-exchange")]


async def test_issuer_key_rotation_is_picked_up_on_unknown_kid(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    async with exchange() as ex:
        assert (await post(http, ex.url, form(_mint(world))))[0] == 200
        keys = ex.api.keys
        assert keys is not None
        keys._fetched_at -= 60  # the last fetch was long enough ago to refresh again
        world.kube.issuer = StubIssuer(issuer=world.kube.url, kid="sa-key-2")  # rotation
        status, _ = await post(http, ex.url, form(_mint(world)))
        fetches = keys.fetches
        forged, _ = await post(http, ex.url, form(_other_key(world, kid="sa-key-3")))
    assert status == 200
    assert fetches == 2
    assert forged == 400
    assert keys.fetches == 2  # an unknown kid right after a fetch does not fetch again


async def test_es256_issuer_from_a_jwks_file_over_tls(world: World, tmp_path: Path,
                                                      http: aiohttp.ClientSession) -> None:
    """An issuer that signs with ES256, keys from --subject-jwks; the server on HTTPS."""
    import ssl  # noqa: PLC0415

    import trustme  # noqa: PLC0415
    from joserfc.jwk import ECKey  # noqa: PLC0415

    from flyte_auth_exchange.config import ExchangeConfig  # noqa: PLC0415
    from flyte_auth_exchange.runtime import running_exchange  # noqa: PLC0415

    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ec.as_dict(private=False)]}))
    pod = world.task_pod()
    rs = jwt_claims(world.kube.token_for(pod)) or {}
    subject = jwt.encode({"alg": "ES256", "kid": "ec-1"}, rs, ec)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    args = world.exchange_args("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    i = args.index("--subject-discovery")
    args[i:i + 2] = ["--subject-jwks", str(jwks)]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with running_exchange(ExchangeConfig.load(args, {})) as ex:
        assert ex.url.startswith("https://")
        async with http.post(ex.url + "/oauth2/token", data=form(subject), ssl=client_ctx) as r:
            status, body = r.status, await r.json()
        rs_forged = world.kube.token_for(pod)  # RS256 by a key not in the file: refused
        async with http.post(ex.url + "/oauth2/token", data=form(rs_forged),
                             ssl=client_ctx) as r:
            refused = await r.json()
    assert status == 200, body
    assert (jwt_claims(str(body["access_token"])) or {})["sub"] == EXECUTOR
    assert refused["error"] == "invalid_grant"


async def test_flyteadmin_expects_the_audience_of_the_host_the_task_dialled(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """flyte-core's authorizedUris; a task that dials flyteadmin.flyte:81 matches no entry,
    so FlyteAdmin (and its stand-in) expects the first one. Minting only the cluster-local
    URL is refused there; minting every configured audience, the public URL among them, is
    accepted at every host."""
    subject = world.kube.token_for(world.task_pod())

    async def user_info_at(token: str, host: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(world.admin_target) as channel:
            try:
                await identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
                    identity_pb2.UserInfoRequest(), metadata=(
                        ("flyte-authorization", f"Bearer {token}"), ("x-forwarded-host", host)))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    hosts = ("flyteadmin.flyte:81", "flyteadmin:81", "flyteadmin.flyte.svc.cluster.local:81")
    async with exchange() as ex:
        _, narrow = await post(http, ex.url, form(subject))
    async with exchange("--admin-audience", "https://flyte.example.com",
                        "--admin-audience", "http://flyteadmin:80") as ex:
        _, wide = await post(http, ex.url, form(subject))
    world.admin.authorized_uris = ["https://flyte.example.com", "http://flyteadmin:80",
                                   ADMIN_URL]
    narrow_verdicts = [await user_info_at(str(narrow["access_token"]), h) for h in hosts]
    wide_verdicts = [await user_info_at(str(wide["access_token"]), h) for h in hosts]
    assert narrow_verdicts == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [grpc.StatusCode.OK]
    assert wide_verdicts == [grpc.StatusCode.OK] * 3


async def test_an_agent_beyond_the_skew_rule_is_served_counted_and_named_once(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """The agent names its version in User-Agent: one further than one minor from this
    server still gets its token (a task must not fail on an upgrade's order), and the
    operator learns it from a counter and one warning per version."""
    subject = world.kube.token_for(world.task_pod())
    major, minor = (int(p) for p in __version__.split(".")[:2])
    near, far = f"{major}.{minor + 1}.0", f"{major}.{minor + 2}.0"
    with logged() as logs:
        async with exchange() as ex:
            for version in (near, far, far, "not-a-version"):
                async with http.post(ex.url + "/oauth2/token", data=form(subject), headers={
                        "User-Agent": f"flyte-auth-agent/{version}"}) as resp:
                    assert resp.status == 200
            skewed = ex.api.metrics.registry.get_sample_value(
                "flyte_auth_exchange_agent_skew_total")
    warnings = [e for e in logs if e["event"] == "agent_version_skew"]
    assert skewed == 2
    assert [w["agent_version"] for w in warnings] == [far]
    assert f"an agent {far} and this exchange server {__version__}" in warnings[0]["reason"]
    assert "README: Versions" in warnings[0]["reason"]


async def test_the_pods_of_one_execution_cost_one_flyteadmin_question(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """A map task's pods (one execution) exchange at once and one after another: FlyteAdmin
    is asked who launched it once, not once per pod; each pod is still read and judged."""
    pods = [world.task_pod(f"f3a1b2c4d5e6-n0-0-{i}") for i in range(20)]
    async with exchange("--cache-ttl", "60") as ex:
        answers = await asyncio.gather(*(post(http, ex.url, form(world.kube.token_for(pod)))
                                         for pod in pods[:10]))
        answers += [await post(http, ex.url, form(world.kube.token_for(pod)))
                    for pod in pods[10:]]
    assert [status for status, _ in answers] == [200] * 20
    assert [c for c in world.admin.calls if c[0] == "GetExecution"] == [
        ("GetExecution", "flyte-auth-exchange")]
    assert world.kube.pod_reads == 20  # a pod's existence and uid are its own


async def test_past_max_inflight_a_request_is_shed_at_once_with_retry_after(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """FlyteAdmin slow, two exchanges being decided (--max-inflight 2): a third is answered
    503 temporarily_unavailable with Retry-After at once, not queued; the two finish once
    FlyteAdmin answers, and the shed one is counted, not audited."""
    world.admin.hold = asyncio.Event()
    pods = [world.task_pod(f"f3a1b2c4d5e6-n0-0-{i}") for i in range(3)]
    with logged() as logs:
        async with exchange("--max-inflight", "2", "--cache-ttl", "0") as ex:
            deciding = [asyncio.create_task(post(http, ex.url, form(world.kube.token_for(p))))
                        for p in pods[:2]]
            async with asyncio.timeout(10):
                while ex.api.inflight < 2:  # both handlers have started and wait on FlyteAdmin
                    await world.admin.held.wait()
                    await asyncio.sleep(0)
            async with http.post(ex.url + "/oauth2/token",
                                 data=form(world.kube.token_for(pods[2]))) as resp:
                shed = (resp.status, resp.headers.get("Retry-After"), await resp.json())
            world.admin.hold.set()
            done = await asyncio.gather(*deciding)
            counted = ex.api.metrics.registry.get_sample_value("flyte_auth_exchange_shed_total")
    assert shed[:2] == (503, "1")
    assert shed[2]["error"] == "temporarily_unavailable"
    assert "--max-inflight (2)" in shed[2]["error_description"]
    assert [status for status, _ in done] == [200, 200]
    assert counted == 1
    assert len([e for e in logs if e["event"] == "exchange_decision"]) == 2

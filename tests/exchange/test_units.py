"""Pure parts of the exchange server: label sanitising, policy files, config, the memo."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from devstack.flyteadmin import public_url_for
from flyte_auth_common.errors import ConfigError
from flyte_auth_common.jwt import jwt_claims
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.memo import Memo
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.policy import Policy
from flyte_auth_exchange.trust import sanitize_label_value

EXCHANGE = str(Path(sys.executable).parent / "flyte-auth-exchange")


@pytest.mark.parametrize(("principal", "label"), [
    ("alice@example.com", "alice-example-com"),
    ("Alice.Smith@Example.COM", "alice-smith-example-com"),
    ("00u1abcd2EFGH3ijk4x7", "00u1abcd2efgh3ijk4x7"),
    ("--weird__name--", "weird-name"),
    ("x" * 70, "x" * 63),
    ("system:serviceaccount:ns:sa", "system-serviceaccount-ns-sa"),
])
def test_sanitize_label_value_matches_flytepropeller(principal: str, label: str) -> None:
    assert sanitize_label_value(principal) == label


def test_policy_first_match_wins(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""
rules:
  - name: deny
    namespaces: [kube-*]
    allow: false
  - name: ci
    namespaces: [ci-*]
    service_accounts: [builder]
    identity: service-account
  - name: rest
""")
    policy = Policy.load(path, "executor")
    assert policy.rule_for("kube-system", "default").name == "deny"  # type: ignore[union-attr]
    ci = policy.rule_for("ci-production", "builder")
    assert ci is not None and ci.identity == "service-account"
    rest = policy.rule_for("ci-production", "default")
    assert rest is not None and (rest.name, rest.identity) == ("rest", "executor")


@pytest.mark.parametrize(("text", "message"), [
    ("rules: [", "not valid YAML at line"),
    ("rules: []", "expected a mapping with a non-empty list `rules`"),
    ("- a\n- b", "expected a mapping"),
    ("rules:\n  - name: r\n    identity: root", "rule 'r': identity must be executor or"),
    ("rules:\n  - name: r\n    max_lifetime: -5", "rule 'r': max_lifetime must be a positive"),
    ("rules:\n  - name: r\n    namespaces: 3", "rule 'r': `namespaces` must be a non-empty"),
    ("rules:\n  - name: r\n    namepsaces: [a]", "rule 'r': unknown field(s) namepsaces"),
    ("rules:\n  - name: r\n    no_principal: allow", "no_principal must be refuse or"),
    # YAML 1.1 reads `no` as false: once a TypeError that stopped the reload watcher
    ("rules:\n  - name: r\n    no: refuse", "unknown field(s) False; known: "),
    ("rules:\n  - name: r\n    no: refuse", "YAML reads an unquoted no, yes"),
    ("rules:\n  - name: r\n    1: x\n    allow: false", "unknown field(s) 1; known"),
    ("rules:\n  - name: [r]", "`name` must be a string"),
    ("rules:\n  - name: r\n    namespaces: " + "[" * 3000 + "]" * 3000, "nested too deep"),
    (b"rules:\n  - name: caf\xe9\n", "not UTF-8 text (byte 20)"),
])
def test_bad_policy_files_say_what_and_where(tmp_path: Path, text: str | bytes,
                                             message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        Policy.load(path, "executor")
    assert any(message in p and str(path) in p for p in err.value.problems), err.value.problems


def test_config_problems_name_flag_and_env() -> None:
    with pytest.raises(ConfigError) as err:
        ExchangeConfig.load(["--tls-cert", "c.pem", "--admin-audience", "not-a-url"], {})
    lines = err.value.problems
    assert "--tls-key / FLYTE_AUTH_EXCHANGE_TLS_KEY: --tls-cert and --tls-key go together: " \
           "give both or neither" in lines
    assert any(line.startswith("--signing-key / FLYTE_AUTH_EXCHANGE_SIGNING_KEY: required")
               for line in lines)
    assert any(line.startswith("--admin-audience / FLYTE_AUTH_EXCHANGE_ADMIN_AUDIENCE: "
                               "'not-a-url' is not an http(s) URL") for line in lines)
    assert any(line.startswith("--subject-jwks / FLYTE_AUTH_EXCHANGE_SUBJECT_JWKS: no way to "
                               "validate") for line in lines)


def test_repeatable_flag_and_its_env_var() -> None:
    base = ["--signing-key", "k", "--subject-issuer", "https://k8s", "--subject-jwks", "j",
            "--identity", "service-account"]
    flags = ExchangeConfig.load([*base, "--admin-audience", "http://a", "--admin-audience",
                                 "http://b"], {})
    env = ExchangeConfig.load(base, {"FLYTE_AUTH_EXCHANGE_ADMIN_AUDIENCE": "http://a, http://b"})
    assert flags.admin_audiences == env.admin_audiences == ("http://a", "http://b")


def test_cli_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    out = subprocess.run([EXCHANGE, "serve", "--identity", "root"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin"}, timeout=60, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert all(line.startswith("flyte-auth-exchange: --") for line in lines)
    assert any("--identity / FLYTE_AUTH_EXCHANGE_IDENTITY: 'root' is not one of" in line
               for line in lines)
    assert "Traceback" not in out.stderr


def test_cli_unreadable_signing_key_is_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    out = subprocess.run([EXCHANGE, "serve", "--signing-key", str(key), "--admin-audience",
                          "http://admin", "--subject-issuer", "https://k8s", "--subject-jwks",
                          str(tmp_path / "none.json"), "--identity", "service-account",
                          "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60,
                         check=False)
    assert out.returncode == 2
    assert f"--signing-key {key}: not an RSA private key in PEM" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text", [b"rules:\n  - no: refuse\n", b"rules: [\xff]\n",
                                  b"rules: " + b"[" * 3000 + b"]" * 3000])
def test_cli_exits_2_in_one_line_on_a_policy_no_loader_expected(tmp_path: Path,
                                                               text: bytes) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(text)
    out = subprocess.run([EXCHANGE, "serve", "--signing-key", str(tmp_path / "key.pem"),
                          "--admin-audience", "http://admin", "--subject-issuer", "https://k8s",
                          "--subject-jwks", str(tmp_path / "none.json"), "--identity",
                          "service-account", "--listen", "127.0.0.1:0", "--policy", str(policy)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60,
                         check=False)
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr.startswith(f"flyte-auth-exchange: --policy {policy}: ")


async def test_memo_single_flight_ttl_and_no_cached_failures() -> None:
    now = [0.0]
    memo: Memo[int] = Memo(ttl=5, clock=lambda: now[0])
    calls = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    waiters = [asyncio.create_task(memo.get("k", load)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == [1] * 10
    assert await memo.get("k", load) == 1  # within the TTL
    now[0] = 6.0
    assert await memo.get("k", load) == 2  # expired: loaded again

    async def fail() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await memo.get("f", fail)
    assert await memo.get("f", load) == 3  # the failure was not cached


async def test_memo_keeps_only_what_keep_accepts() -> None:
    """The exchange server's FlyteWorkflow memo: an object not found yet is asked for again
    (the next pod may come once propeller's workflow exists); one found is reused."""
    answers = iter([None, {"uid": "w"}, {"uid": "other"}])
    memo: Memo[dict[str, str] | None] = Memo(ttl=60, keep=lambda found: found is not None)

    async def load() -> dict[str, str] | None:
        return next(answers)

    assert await memo.get("wf", load) is None
    assert await memo.get("wf", load) == {"uid": "w"}
    assert await memo.get("wf", load) == {"uid": "w"}  # found: reused within the TTL


def test_zero_cache_ttl_is_allowed_and_negative_is_a_clear_problem() -> None:
    base = ["--signing-key", "k", "--admin-audience", "http://a", "--subject-issuer",
            "https://k8s", "--subject-jwks", "j", "--identity", "service-account"]
    assert ExchangeConfig.load([*base, "--cache-ttl", "0.00"], {}).cache_ttl == 0.0
    with pytest.raises(ConfigError) as err:
        ExchangeConfig.load([*base, "--cache-ttl", "-1"], {})
    assert err.value.problems == [
        "--cache-ttl / FLYTE_AUTH_EXCHANGE_CACHE_TTL: '-1' must be 0 or more"]


@pytest.mark.parametrize(("endpoint", "audiences", "warned"), [
    ("flyteadmin.flyte.svc.cluster.local:81", ["http://flyteadmin.flyte.svc.cluster.local:80"],
     False),
    ("flyteadmin.flyte:81", ["http://flyteadmin.flyte.svc.cluster.local:80"], True),
    ("flyteadmin.flyte:81", ["http://flyteadmin.flyte.svc.cluster.local:80",
                             "http://flyteadmin.flyte:80"], False),
])
def test_an_admin_endpoint_no_audience_names_is_a_start_up_warning(
        tmp_path: Path, endpoint: str, audiences: list[str], warned: bool) -> None:
    args = ["--signing-key", str(tmp_path / "k.pem"), "--subject-issuer", "https://k8s",
            "--token-review", "--admin-endpoint", endpoint]
    for audience in audiences:
        args += ["--admin-audience", audience]
    warning = ExchangeConfig.load(args, {}).audience_warning()
    assert (warning is not None) is warned
    if warning:
        assert "'flyteadmin.flyte'" in warning and "http://flyteadmin.flyte:80" in warning


FLYTE_CORE_URIS = ["https://flyte.example.com", "http://flyteadmin:80",
                   "http://flyteadmin.flyte.svc.cluster.local:80"]


@pytest.mark.parametrize(("dialled", "expected"), [
    ("flyteadmin.flyte.svc.cluster.local:81", "http://flyteadmin.flyte.svc.cluster.local:80"),
    ("flyteadmin:81", "http://flyteadmin:80"),
    ("flyteadmin.flyte:81", "https://flyte.example.com"),  # no match: the first entry
    ("flyte.example.com:443", "https://flyte.example.com"),
    (None, "https://flyte.example.com"),
])
def test_the_stand_in_picks_the_audience_as_flyteadmin_does(dialled: str | None,
                                                             expected: str) -> None:
    assert public_url_for(dialled, FLYTE_CORE_URIS) == expected


def test_the_stand_in_prefers_the_scheme_then_the_port() -> None:
    uris = ["http://a:80", "https://a:8443", "http://a:81"]
    assert public_url_for("a:81", uris) == "https://a:8443"  # gRPC dials as https
    assert public_url_for("a:81", ["http://a:80", "http://a:81", "http://a:82"]) == "http://a:81"
    assert public_url_for("a:99", ["http://a:80", "http://a:82"]) == "http://a:82"  # the last


def test_a_replaced_signing_key_stays_in_jwks_until_its_last_token_expired() -> None:
    now = [1000.0]
    old, new = RSAKey.generate_key(2048), RSAKey.generate_key(2048)
    minter = Minter(old, None, "https://exchange", retain=3600 + 120, clock=lambda: now[0])

    def kids() -> list[str]:
        return [k["kid"] for k in minter.jwks()["keys"]]

    minter.set_key(new)
    minter.set_key(new)  # the same file synced again: nothing more retired
    assert kids() == [new.thumbprint(), old.thumbprint()]  # the signing key first
    now[0] += 3600 + 119
    assert kids() == [new.thumbprint(), old.thumbprint()]
    now[0] += 1
    assert kids() == [new.thumbprint()]
    minter.set_key(old)  # rolled back: the key signing now is never also "retired"
    assert kids() == [old.thumbprint(), new.thumbprint()]


def test_with_a_lead_a_new_key_is_published_first_and_signs_only_after_it() -> None:
    """External mode: every replica lists a new key before any replica signs with it."""
    now = [1000.0]
    old, new = RSAKey.generate_key(2048), RSAKey.generate_key(2048)
    minter = Minter(old, None, "https://exchange", retain=3600, lead=120, backdate=60,
                    clock=lambda: now[0])

    def signer() -> str:
        token = minter.mint(subject="a", audience=["x"], scopes=["all"], lifetime=600,
                            now=now[0]).token
        return str(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"])

    minter.set_key(new)
    assert [k["kid"] for k in minter.jwks()["keys"]] == [old.thumbprint(), new.thumbprint()]
    assert signer() == old.thumbprint()
    now[0] += 60
    minter.set_key(new)  # synced again: the lead time is not restarted
    now[0] += 60
    assert signer() == new.thumbprint()
    assert [k["kid"] for k in minter.jwks()["keys"]] == [new.thumbprint(), old.thumbprint()]
    claims = jwt_claims(minter.mint(subject="a", audience=["x"], scopes=["all"], lifetime=600,
                                    now=now[0]).token) or {}
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1120 - 60, 1120 - 60, 1120 + 600)


def test_the_executor_identity_without_its_source_stops_the_start_in_one_line(
        tmp_path: Path) -> None:
    """Checked once, by the policy's loader (the default policy uses --identity executor):
    no FlyteAdmin and no runs service to ask who launched anything."""
    from devstack.world import write_signing_key  # noqa: PLC0415

    write_signing_key(tmp_path / "key.pem")
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    out = subprocess.run(
        [str(Path(sys.executable).parent / "flyte-auth-exchange"), "serve", "--signing-key",
         str(tmp_path / "key.pem"), "--admin-audience", "http://a", "--subject-issuer",
         "https://k", "--subject-jwks", str(tmp_path / "jwks.json"), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "--admin-endpoint / FLYTE_AUTH_EXCHANGE_ADMIN_ENDPOINT: required: the policy uses " \
           "the executor identity" in out.stderr

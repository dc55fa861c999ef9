"""The injector as operators run it: namespace defaults via a watch, certificate rotation,
the webhook configuration, config errors, metrics."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import kubernetes_validate
import pytest
import trustme
import yaml
from kubernetes_asyncio.config import new_client_from_config

from devstack.kube_api import StubKubeAPI
from devstack.pods import admission_review as review
from devstack.pods import propeller_pod
from flyte_auth_common.errors import ConfigError
from flyte_auth_injector import consts
from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.runtime import running_injector
from tests.injector.helpers import apply, injector_config
from tests.support.watching import change_between_list_and_watch

INJECTOR = str(Path(sys.executable).parent / "flyte-auth-injector")


async def post(session: aiohttp.ClientSession, url: str, body: object) -> dict[str, object]:
    async with session.post(url + "/mutate", json=body) as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


def expiration_of(pod: dict[str, object]) -> int:
    volumes = pod["spec"]["volumes"]  # type: ignore[index]
    token = next(v for v in volumes if v["name"] == consts.TOKEN_VOLUME)
    return int(token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"])


async def test_a_namespace_changed_between_list_and_watch_is_not_missed(tmp_path: Path) -> None:
    """The stand-in replays from the watch's resourceVersion, as the API server does (the
    e2e parity suite runs the same case against the real one)."""
    kube = StubKubeAPI()
    await kube.start()
    api = await new_client_from_config(config_file=str(kube.kubeconfig(tmp_path / "kc")))

    async def create() -> None:
        kube.set_namespace("late-development", {consts.ANNOTATION_EXPIRATION: "600"})

    try:
        got = await change_between_list_and_watch(api, "late-development", create)
    finally:
        await api.close()
        await kube.stop()
    assert got == ("ADDED", {consts.ANNOTATION_EXPIRATION: "600"})


async def test_namespace_annotations_are_defaults_and_new_namespaces_are_seen_at_once(
        tls_files: tuple[Path, Path], tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    kube = StubKubeAPI()
    await kube.start()
    kube.set_namespace("team-a-development", {consts.ANNOTATION_EXPIRATION: "1800"})
    config = injector_config(tls_files, "--kubeconfig", str(kube.kubeconfig(tmp_path / "kc")))
    try:
        async with running_injector(config) as injector:
            assert injector.namespaces is not None
            await asyncio.wait_for(injector.namespaces.synced.wait(), 10)
            pod = propeller_pod()
            got = apply(pod, await post(client, injector.url, review(pod, "team-a-development")))
            assert expiration_of(got) == 1800  # the namespace's default

            pod["metadata"]["annotations"][consts.ANNOTATION_EXPIRATION] = "900"
            got = apply(pod, await post(client, injector.url, review(pod, "team-a-development")))
            assert expiration_of(got) == 900  # the pod's annotation wins

            kube.set_namespace("team-b-production", {consts.ANNOTATION_EXPIRATION: "60"})
            while True:  # clear first, then look: an event between the two is not lost
                injector.namespaces.updated.clear()
                if injector.namespaces.get("team-b-production") != {}:
                    break
                await asyncio.wait_for(injector.namespaces.updated.wait(), 10)
            answer = await post(client, injector.url, review(propeller_pod(),
                                                             "team-b-production"))
            assert answer["response"]["allowed"] is False  # type: ignore[index]
            assert "namespace annotation flyte-auth.flyte.org/token-expiration='60'" in \
                answer["response"]["status"]["message"]  # type: ignore[index]
    finally:
        await kube.stop()


async def test_rotated_certificates_are_served_without_a_restart(
        tls_files: tuple[Path, Path], ca: trustme.CA) -> None:
    async with running_injector(injector_config(tls_files)) as injector:
        assert injector.certs is not None

        async def serial() -> int:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            host, port = injector.url.removeprefix("https://").split(":")
            _, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            from cryptography import x509  # noqa: PLC0415
            return x509.load_der_x509_certificate(der).serial_number

        before = await serial()
        rotated = ca.issue_cert("127.0.0.1")
        tls_files[0].write_bytes(b"".join(p.bytes() for p in rotated.cert_chain_pems))
        tls_files[1].write_bytes(rotated.private_key_pem.bytes())
        assert injector.certs.check() is True  # what the 10 s watcher does
        after = await serial()
        assert after != before
        assert injector.certs.reloads == 1
        tls_files[1].write_text("garbage")  # a half-written rotation keeps the old pair
        assert injector.certs.check() is False
        assert await serial() == after


def test_webhook_config_defaults_and_schema(tmp_path: Path) -> None:
    out = subprocess.run([INJECTOR, "webhook-config"], capture_output=True, text=True,
                         check=True)
    doc = yaml.safe_load(out.stdout)
    for version in ("1.30", "1.37"):
        kubernetes_validate.validate(doc, version, strict=True)
    hook = doc["webhooks"][0]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["namespaceSelector"]["matchExpressions"][0] == {
        "key": "flyte-auth.flyte.org/inject", "operator": "In", "values": ["enabled"]}
    assert {"kube-system", "flyte-auth"} <= set(
        hook["namespaceSelector"]["matchExpressions"][1]["values"])
    assert "execution-id" in hook["matchConditions"][0]["expression"]
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    out = subprocess.run([INJECTOR, "webhook-config", "--namespace", "auth", "--service", "inj",
                          "--ca-bundle-file", str(ca), "--failure-policy", "Ignore",
                          "--timeout-seconds", "5"], capture_output=True, text=True, check=True)
    hook = yaml.safe_load(out.stdout)["webhooks"][0]
    assert hook["clientConfig"]["service"]["name"] == "inj"
    assert hook["clientConfig"]["caBundle"].startswith("LS0tLS1CRUdJTi")
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 5)
    assert "auth" in hook["namespaceSelector"]["matchExpressions"][1]["values"]


def test_config_file_and_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "injector.yaml"
    path.write_text(json.dumps({"agent_image": "reg/agent:1", "admin_endpoint": "admin:81",
                                "resources": {"requests": {"cpu": "1m"}},
                                "allowed_audiences": ["flyte-auth", "other"]}))
    config = InjectorConfig.load(["--config", str(path)], {})
    assert config.sidecar.image == "reg/agent:1"
    assert config.sidecar.resources == {"requests": {"cpu": "1m"}}
    assert config.tokens.allowed_audiences == ("flyte-auth", "other")
    flag_wins = InjectorConfig.load(["--config", str(path), "--agent-image", "x:2"], {})
    assert flag_wins.sidecar.image == "x:2"
    path.write_text("agent_imag: typo\nmax_expiration: -1\n")
    with pytest.raises(ConfigError) as err:
        InjectorConfig.load(["--config", str(path), "--token-expiration", "30"], {})
    text = "\n".join(err.value.problems)
    assert "unknown setting(s) agent_imag" in text
    assert "`max_expiration` must be a positive whole number" in text
    assert "--token-expiration / FLYTE_AUTH_INJECTOR_TOKEN_EXPIRATION: '30' is not a whole " \
           "number of seconds between 600 and 86400" in text
    assert "--admin-endpoint / FLYTE_AUTH_INJECTOR_ADMIN_ENDPOINT: set FlyteAdmin's" in text


def test_serve_with_bad_config_exits_2_without_a_traceback() -> None:
    out = subprocess.run([INJECTOR, "serve", "--tls-cert", "/nope.crt"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin"}, check=False, timeout=60)
    assert out.returncode == 2
    assert "--tls-key / FLYTE_AUTH_INJECTOR_TLS_KEY: --tls-cert and --tls-key go together" \
        in out.stderr
    assert "Traceback" not in out.stderr


async def test_metrics_count_outcomes(tls_files: tuple[Path, Path],
                                      client: aiohttp.ClientSession) -> None:
    async with running_injector(injector_config(tls_files)) as injector:
        await post(client, injector.url, review(propeller_pod()))
        await post(client, injector.url, review(propeller_pod(), "kube-system"))
        async with client.post(injector.url + "/mutate", data=b"nope") as resp:
            assert resp.status == 400
        async with client.get(injector.url + "/metrics") as resp:
            text = await resp.text()
    assert 'flyte_auth_injector_reviews_total{outcome="injected"} 1.0' in text
    assert 'flyte_auth_injector_reviews_total{outcome="skipped"} 1.0' in text
    assert 'flyte_auth_injector_reviews_total{outcome="bad_review"} 1.0' in text
    assert "flyte_auth_injector_review_duration_seconds_bucket" in text


async def test_self_signed_bootstrap_creates_renews_and_sets_the_ca_bundle(
        tmp_path: Path) -> None:
    import base64  # noqa: PLC0415
    import datetime as dt  # noqa: PLC0415

    from flyte_auth_common.tls_bootstrap import Bootstrap  # noqa: PLC0415
    from flyte_auth_injector.webhook_config import webhook_configuration  # noqa: PLC0415

    kube = StubKubeAPI()
    await kube.start()
    kube.webhooks["flyte-auth-injector"] = webhook_configuration()
    kubeconfig = kube.kubeconfig(tmp_path / "kc")
    config = InjectorConfig.load(["--listen", "127.0.0.1:0", "--admin-endpoint", "admin:81",
                                  "--tls-bootstrap", "flyte-auth-injector-tls",
                                  "--tls-dir", str(tmp_path / "tls"),
                                  "--kubeconfig", str(kubeconfig)], {})
    try:
        async with running_injector(config) as injector:
            secret = kube.secrets[("flyte-auth", "flyte-auth-injector-tls")]
            ca = base64.b64decode(secret["data"]["ca.crt"])
            hook = kube.webhooks["flyte-auth-injector"]["webhooks"][0]
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca
            ctx = ssl.create_default_context(cadata=ca.decode())
            ctx.check_hostname = False  # the certificate names the Service, we dial 127.0.0.1
            async with aiohttp.ClientSession() as session, session.post(
                    injector.url + "/mutate", json=review(propeller_pod()), ssl=ctx) as resp:
                assert resp.status == 200

            # A second replica starting later reuses the pair instead of making another.
            from kubernetes_asyncio import config as kube_config  # noqa: PLC0415
            api = await kube_config.new_client_from_config(config_file=str(kubeconfig))
            try:
                other = Bootstrap(api, namespace="flyte-auth", secret="flyte-auth-injector-tls",
                                  service="flyte-auth-injector", webhook="flyte-auth-injector",
                                  directory=tmp_path / "other")
                assert (await other.ensure()).ca == ca
                # 340 days on, the serving certificate is within 30 days of expiry: renewed,
                # from the same CA, so clients that hold the CA keep trusting it.
                first = kube.secrets[("flyte-auth", "flyte-auth-injector-tls")]["data"]
                later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
                renewed = await other.ensure(now=later)
                assert renewed.ca == ca
                assert renewed.cert != base64.b64decode(first["tls.crt"])
                hook = kube.webhooks["flyte-auth-injector"]["webhooks"][0]
                assert base64.b64decode(hook["clientConfig"]["caBundle"]) == renewed.ca
                assert (tmp_path / "other" / "tls.crt").read_bytes() == renewed.cert
            finally:
                await api.close()
    finally:
        await kube.stop()


async def test_self_signed_bootstrap_failure_is_a_clear_error_naming_what_to_check(
        tmp_path: Path) -> None:
    kube = StubKubeAPI()  # no MutatingWebhookConfiguration: its caBundle cannot be set
    await kube.start()
    config = InjectorConfig.load(["--listen", "127.0.0.1:0", "--admin-endpoint", "admin:81",
                                  "--tls-bootstrap", "flyte-auth-injector-tls",
                                  "--tls-dir", str(tmp_path / "tls"),
                                  "--kubeconfig", str(kube.kubeconfig(tmp_path / "kc"))], {})
    try:
        with pytest.raises(ConfigError) as raised:
            async with running_injector(config):
                pass
        assert str(raised.value) == (
            "--tls-bootstrap / FLYTE_AUTH_INJECTOR_TLS_BOOTSTRAP: reading "
            "MutatingWebhookConfiguration flyte-auth-injector: "
            "HTTP 404; check the injector's RBAC (self-signed overlay)")
    finally:
        await kube.stop()


async def test_unloadable_certificate_is_a_clear_error_with_the_namespace_watch_on(
        tmp_path: Path) -> None:
    kube = StubKubeAPI()
    await kube.start()
    config = InjectorConfig.load(["--listen", "127.0.0.1:0", "--admin-endpoint", "admin:81",
                                  "--tls-cert", str(tmp_path / "no.crt"),
                                  "--tls-key", str(tmp_path / "no.key"),
                                  "--kubeconfig", str(kube.kubeconfig(tmp_path / "kc"))], {})
    try:
        with pytest.raises(ConfigError, match=r"--tls-cert / --tls-key: cannot load .*no\.crt"):
            async with running_injector(config):
                pass
    finally:
        await kube.stop()

"""Configuration changes take effect without a restart: the policy and the signing key are
loaded again from their mounted files; FlyteAdmin's key rotation in the order the operator
guide gives refuses no task token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from structlog.typing import EventDict

from devstack.world import World, write_signing_key
from flyte_auth_exchange.mint import Minter
from tests.exchange.helpers import StartExchange, form, logged, post, user_info_code


async def test_a_changed_policy_applies_without_a_restart_and_a_broken_one_is_ignored(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: open\n")
    subject = world.kube.token_for(world.task_pod())
    with logged() as logs:
        async with exchange("--policy", str(policy)) as ex:
            assert (await post(http, ex.url, form(subject)))[0] == 200
            policy.write_text("rules:\n  - name: closed\n    allow: false\n")
            assert ex.files.policy.check() is True  # what the 10 s watcher does
            status, body = await post(http, ex.url, form(subject))
            policy.write_text("rules: [oops")  # a half-edited file keeps the last good one
            assert ex.files.policy.check() is False
            still, _ = await post(http, ex.url, form(subject))
    assert (status, body["error"]) == (400, "access_denied")
    assert "policy rule 'closed' refuses" in str(body["error_description"])
    assert still == 400
    failed = [e for e in logs if e["event"] == "reload_failed"]
    assert failed and failed[0]["what"] == "policy" and "not valid YAML" in failed[0][
        "problems"][0]


async def test_the_watcher_outlives_a_policy_its_loader_did_not_expect(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """A policy that once raised TypeError inside the loader (YAML reads `no` as false) ended
    the watcher without a word, so the lock-down written after it never applied."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: open\n")
    subject = world.kube.token_for(world.task_pod())

    checked: asyncio.Queue[None] = asyncio.Queue()

    async def until(event: str, logs: list[EventDict]) -> None:
        while not any(e["event"] == event for e in logs):
            await checked.get()  # the watcher looked at the files once more

    with logged() as logs:
        async with exchange("--policy", str(policy)) as ex:
            check = ex.files.policy.check

            def counted() -> bool:
                try:
                    return check()
                finally:
                    checked.put_nowait(None)

            ex.files.policy.check = counted  # type: ignore[method-assign]
            watcher = asyncio.create_task(ex.files.policy.watch(every=0.01))
            try:
                policy.write_text("rules:\n  - name: open\n    no: refuse\n")
                async with asyncio.timeout(10):
                    await until("reload_failed", logs)
                assert not watcher.done()
                policy.write_text("rules:\n  - name: closed\n    allow: false\n")
                async with asyncio.timeout(10):
                    await until("reloaded", logs)
                status, body = await post(http, ex.url, form(subject))
            finally:
                watcher.cancel()
    failed = next(e for e in logs if e["event"] == "reload_failed")
    assert "unknown field(s) False" in failed["problems"][0]
    assert (status, body["error"]) == (400, "access_denied")


async def test_flyteadmin_key_rotation_in_the_guides_order_refuses_no_token(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """1. FlyteAdmin gets the new key as token_rsa_key.pem and keeps the old one as
    token_rsa_key_old.pem; 2. the exchange server's key file becomes the new key (reloaded);
    3. once the longest token lifetime has passed, FlyteAdmin drops the old key."""
    old_public = Minter.load_key(world.key_file).as_pem(private=False)
    new_key = tmp_path / "new.pem"
    new_public = write_signing_key(new_key)
    subject = world.kube.token_for(world.task_pod())
    async with exchange() as ex:
        _, before = await post(http, ex.url, form(subject))  # signed with the old key
        # 1. FlyteAdmin rotates: new key first, old key kept.
        world.admin.set_keys(new_public, old_public)
        assert await user_info_code(world, str(before["access_token"])) == "OK"
        # 2. The exchange server's Secret now holds the new key.
        world.key_file.write_bytes(new_key.read_bytes())
        assert ex.files.signing_key.check() is True
        _, after = await post(http, ex.url, form(subject))
        assert await user_info_code(world, str(after["access_token"])) == "OK"
        assert await user_info_code(world, str(before["access_token"])) == "OK"
        # 3. FlyteAdmin drops the old key: only tokens from before step 2 are refused.
        world.admin.set_keys(new_public)
        assert await user_info_code(world, str(after["access_token"])) == "OK"
        assert await user_info_code(world, str(before["access_token"])) == "UNAUTHENTICATED"


async def test_a_file_name_as_key_id_breaks_the_rotation(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """Why the key id is the key's thumbprint: FlyteAdmin does not know `token_rsa_key.pem`
    as an id, so it tries only its first key, the new one."""
    old_public = Minter.load_key(world.key_file).as_pem(private=False)
    subject = world.kube.token_for(world.task_pod())
    async with exchange("--key-id", "token_rsa_key.pem") as ex:
        _, named = await post(http, ex.url, form(subject))
    world.admin.set_keys(write_signing_key(tmp_path / "new.pem"), old_public)
    assert await user_info_code(world, str(named["access_token"])) == "UNAUTHENTICATED"


async def test_a_rotated_serving_certificate_is_used_without_a_restart(
        world: World, exchange: StartExchange, tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    import trustme  # noqa: PLC0415
    from cryptography import x509  # noqa: PLC0415

    ca = trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"

    def issue() -> None:
        cert = ca.issue_cert("127.0.0.1")
        cert_file.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        key_file.write_bytes(cert.private_key_pem.bytes())

    async def serial(url: str) -> int:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        host, port = url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    issue()
    async with exchange("--tls-cert", str(cert_file), "--tls-key", str(key_file)) as ex:
        assert ex.files.tls is not None
        before = await serial(ex.url)
        issue()  # cert-manager renewed the certificate
        assert ex.files.tls.check() is True
        after = await serial(ex.url)
        # A certificate for another key (a half-written Secret): the pair served stays whole.
        cert_file.write_bytes(ca.issue_cert("127.0.0.1").cert_chain_pems[0].bytes())
        with logged() as logs:
            assert ex.files.tls.check() is False
        still = await serial(ex.url)
    assert before != after
    assert still == after
    assert [e["event"] for e in logs] == ["reload_failed"]
    assert "not a PEM certificate and its own key" in logs[0]["problems"][0]


async def test_self_signed_bootstrap_serves_https_with_the_secrets_ca(
        world: World, exchange: StartExchange, tmp_path: Path) -> None:
    """No cert-manager: the exchange server keeps its CA and certificate in a Secret and serves
    HTTPS with them; the Secret's ca.crt (what the injector gives agents) verifies it."""
    import base64  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    subject = world.kube.token_for(world.task_pod())
    async with exchange("--tls-bootstrap", "flyte-auth-exchange-tls", "--tls-dir",
                        str(tmp_path / "tls"), "--namespace", "flyte-auth") as ex:
        secret = world.kube.secrets[("flyte-auth", "flyte-auth-exchange-tls")]
        ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
        ctx = ssl.create_default_context(cadata=ca)
        ctx.check_hostname = False  # the certificate names the Service, we dial 127.0.0.1
        async with aiohttp.ClientSession() as session, session.post(
                ex.url + "/oauth2/token", data=form(subject), ssl=ctx) as resp:
            status = resp.status
    assert ex.url.startswith("https://")
    assert status == 200
    assert secret["type"] == "kubernetes.io/tls"

"""Wire the exchange server together, serve, and stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from joserfc.jwk import RSAKey

from flyte_auth_common.admin import tls_material
from flyte_auth_common.daemon import app_runner
from flyte_auth_common.errors import ConfigError
from flyte_auth_common.reload import FileReloader, ServingTLS, load_once
from flyte_auth_common.tls_bootstrap import renew_forever, serving_certificate
from flyte_auth_exchange.config import ExchangeConfig, setting
from flyte_auth_exchange.external import ExternalIdP
from flyte_auth_exchange.flyteadmin import SELF_SUBJECT, Admin, SelfToken
from flyte_auth_exchange.kube import Kube
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.policy import Policy
from flyte_auth_exchange.runs import Runs
from flyte_auth_exchange.server import ExchangeAPI, Metrics, app
from flyte_auth_exchange.service import ExchangeService
from flyte_auth_exchange.subject import IssuerKeys

log = structlog.get_logger("flyte_auth_exchange")
SELF_TOKEN_LIFETIME = 600
#: How long every replica may take to see a changed key file: the kubelet's volume sync
#: (about a minute), its cache, and our own check (reload.CHECK_EVERY).
KEY_FILE_PROPAGATION = 120.0


@dataclass
class Files:
    """The mounted files the server loads again when they change."""

    policy: FileReloader[Policy]
    signing_key: FileReloader[RSAKey]
    tls: ServingTLS | None


@dataclass
class RunningExchange:
    config: ExchangeConfig
    api: ExchangeAPI
    url: str
    files: Files


def load_policy(config: ExchangeConfig, *, kube: bool | None) -> Policy:
    """--policy (or the default for --identity), refused if this server cannot serve it:
    the one check that the executor identity has FlyteAdmin or the runs service to ask and,
    once the start-up has decided whether it connects to it (`kube`), the Kubernetes API."""
    policy = Policy.load(config.policy, config.identity) if config.policy \
        else Policy.default(config.identity)
    if policy.uses_executor and config.admin is None and config.runs_url is None:
        raise ConfigError([f"{setting('admin_endpoint')}: required: the policy uses "
                           "the executor identity, which FlyteAdmin (or, for Flyte 2, "
                           f"the runs service: {setting('runs_url')}) supplies"])
    if policy.uses_executor and kube is False:
        raise ConfigError([f"--policy {config.policy}: the executor identity needs the "
                           "Kubernetes API, which this server started without; restart it"])
    return policy


def _self_token(config: ExchangeConfig, minter: Minter) -> SelfToken:
    """The token this server sends FlyteAdmin and the Flyte 2 runs service (or its proxy)."""
    audience = list(config.admin_audiences)

    def mint_self(now: float) -> tuple[str, float]:
        minted = minter.mint(subject=SELF_SUBJECT, audience=audience, scopes=["all"],
                             lifetime=SELF_TOKEN_LIFETIME, now=now)
        return minted.token, now + minted.expires_in

    return SelfToken(mint_self)


async def _issuer_keys(config: ExchangeConfig, session: aiohttp.ClientSession,
                       client_ssl: ssl.SSLContext | bool) -> IssuerKeys | None:
    if config.subject_jwks is None and config.subject_discovery is None:
        return None  # TokenReview alone
    keys = IssuerKeys(jwks_file=config.subject_jwks, discovery_url=config.subject_discovery,
                      session=session, ssl_ctx=client_ssl)
    await keys.start()
    return keys


def _log_started(config: ExchangeConfig, url: str, public_url: str, policy: Policy) -> None:
    warning = config.audience_warning()
    if warning is not None:
        log.warning("admin_audience_mismatch", message=warning)
    log.info("exchange_started", listen=url, public_url=public_url, identity=config.identity,
             token_review=config.token_review, rules=[r.name for r in policy.rules],
             flyteadmin_auth="External" if config.idp_metadata_url else "Self",
             idp_metadata_url=config.idp_metadata_url)


@contextlib.asynccontextmanager
async def running_exchange(config: ExchangeConfig, *,
                           monotonic: Callable[[], float] = time.monotonic
                           ) -> AsyncIterator[RunningExchange]:
    """Start in dependency order (each value built once from what it needs); stop in the
    reverse order, whatever failed. `monotonic` is the caches' clock (tests move it)."""
    policy_paths = [config.policy] if config.policy else []
    policy = load_once("policy", policy_paths, lambda: load_policy(config, kube=None))
    needs_kube = config.token_review or policy.uses_executor or bool(config.serving.tls_bootstrap)
    client_ssl, ca_pem = tls_material(config.ca_cert_file, setting("ca_cert_file"))
    host, port = config.serving.listen
    async with contextlib.AsyncExitStack() as stack:
        sock = stack.enter_context(socket.create_server((host, port)))  # the URL needs the port
        url = f"{'https' if config.serving.https else 'http'}://{host}:{sock.getsockname()[1]}"
        public_url = config.public_url or url
        def load_key() -> RSAKey:
            return Minter.load_key(config.signing_key)

        # External mode: a new key is published by every replica before any signs with it.
        minter = Minter(load_once("signing key", [config.signing_key], load_key),
                        config.key_id, public_url, retain=max(
                            config.token_lifetime, SELF_TOKEN_LIFETIME) + KEY_FILE_PROPAGATION,
                        lead=KEY_FILE_PROPAGATION if config.idp_metadata_url else 0.0,
                        backdate=config.clock_skew)
        key_file = FileReloader("signing key", [config.signing_key], load_key, minter.set_key)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        metrics = Metrics()

        def counted(upstream: str) -> Callable[[str], None]:
            return lambda request: metrics.upstream.labels(upstream, request).inc()

        kube = await Kube.connect(config.kubeconfig, counted=counted("kubernetes")) \
            if needs_kube else None
        if kube is not None:
            stack.push_async_callback(kube.close)
        serving, bootstrap = await serving_certificate(
            config.serving, kube.api_client if kube else None, namespace=config.namespace,
            webhook=None, who="exchange server", named=setting("tls_bootstrap"))
        # FlyteAdmin and the runs service are built even when the policy does not use the
        # executor identity yet: a reloaded one may.
        self_token = _self_token(config, minter)
        admin = Admin(config.admin, self_token, ca_pem=ca_pem,
                      counted=counted("flyteadmin")) if config.admin else None
        if admin is not None:
            stack.push_async_callback(admin.close)
        runs = Runs(config.runs_url, self_token, session, ssl_ctx=client_ssl,
                    counted=counted("runs")) if config.runs_url else None
        keys = await _issuer_keys(config, session, client_ssl)
        service = ExchangeService(config, policy=policy, keys=keys, minter=minter, kube=kube,
                                  admin=admin, runs=runs, monotonic=monotonic)
        policy_files = FileReloader("policy", policy_paths,
                                    lambda: load_policy(config, kube=needs_kube),
                                    service.set_policy)
        external = ExternalIdP(config.idp_metadata_url, minter.jwks, public_url, session,
                               ssl_ctx=client_ssl, on_failure=metrics.idp_failures.inc) \
            if config.idp_metadata_url else None
        api = ExchangeAPI(service, minter, keys, public_url, max_inflight=config.max_inflight,
                          external=external, metrics=metrics)
        runner = app_runner(app(api), shutdown_timeout=10.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        for watch in [key_file.watch(), policy_files.watch(),
                      *([serving.watch()] if serving else []),
                      *([renew_forever(bootstrap, serving.check)] if bootstrap and serving
                        else [])]:
            stack.callback(asyncio.create_task(watch).cancel)
        await web.SockSite(runner, sock,
                           ssl_context=serving.context if serving else None).start()
        stack.callback(log.info, "exchange_stopping")
        _log_started(config, url, public_url, policy)
        yield RunningExchange(config, api, url, Files(policy_files, key_file, serving))

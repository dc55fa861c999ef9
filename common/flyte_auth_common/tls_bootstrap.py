"""Self-signed TLS for clusters without cert-manager (`serve --tls-bootstrap SECRET`), for
the injector's webhook and the exchange server alike.

Each replica, at start and every few hours: read the Secret; if it is missing, or its
certificate expires within RENEW_BEFORE, make a new CA and serving certificate and write the
Secret (create, or update at the resourceVersion read — a concurrent writer wins and we take
its pair); then, for the injector, set the webhook's caBundle if it differs (strategic merge
by webhook name). The pair is written to files the server's ServingTLS loads. The Secret's
`ca.crt` is what clients trust (the injector gives the exchange server's to agents).
Only the server components import this module (it needs kubernetes-asyncio).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client

from flyte_auth_common.errors import ConfigError
from flyte_auth_common.reload import ServingTLS
from flyte_auth_common.serving_options import Serving

log = structlog.get_logger("flyte_auth")
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Pair:
    ca: bytes
    cert: bytes
    key: bytes
    #: The CA's key, kept so that renewing the serving certificate keeps the CA clients
    #: trust (agents hold the exchange server's CA for their pod's life).
    ca_key: bytes | None = None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usable_ca(previous: Pair | None, now: dt.datetime,
               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The previous pair's CA, if it has its key and outlives a new serving certificate."""
    if previous is None or previous.ca_key is None:
        return None
    try:
        ca = x509.load_pem_x509_certificate(previous.ca)
        key = serialization.load_pem_private_key(previous.ca_key, password=None)
    except ValueError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            ca.not_valid_after_utc - now < LEAF_LIFETIME + RENEW_BEFORE:
        return None
    return ca, key


def make_pair(service: str, namespace: str, now: dt.datetime,
              previous: Pair | None = None) -> Pair:
    """A serving certificate for the Service's DNS names, from the previous pair's CA when it
    is still good for a while, else from a fresh CA."""
    reused = _usable_ca(previous, now)
    if reused is not None:
        ca, ca_key = reused
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name(f"{service}-ca"))
              .issuer_name(_name(f"{service}-ca")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + CA_LIFETIME)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    leaf = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    return Pair(ca.public_bytes(pem), leaf.public_bytes(pem),
                key.private_bytes(pem, pkcs8, plain), ca_key.private_bytes(pem, pkcs8, plain))


def _from_secret(secret: dict[str, Any]) -> Pair | None:
    data = secret.get("data") or {}
    try:
        ca, cert, key = (base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key"))
        ca_key = base64.b64decode(data["ca.key"]) if "ca.key" in data else None
        return Pair(ca, cert, key, ca_key)
    except (KeyError, ValueError, TypeError):
        return None


def _fresh(pair: Pair | None, now: dt.datetime) -> bool:
    if pair is None:
        return False
    try:
        cert = x509.load_pem_x509_certificate(pair.cert)
    except ValueError:
        return False
    return bool(cert.not_valid_after_utc - now > RENEW_BEFORE)


#: Seconds one call to the API server may take, reading its answer included (a deadline:
#: aiohttp's total timeout).
API_DEADLINE = 30.0


class Bootstrap:
    def __init__(self, api: client.ApiClient, *, namespace: str, secret: str, service: str,
                 webhook: str | None, directory: Path) -> None:
        self._api = api
        self.namespace, self.secret, self.service, self.webhook = (namespace, secret, service,
                                                                   webhook)
        self.directory = directory

    async def _call(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        resp = await self._api.call_api(
            path, method, header_params={"Content-Type": content_type,
                                         "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=API_DEADLINE)
        raw = await resp.read()
        doc = json.loads(raw) if raw else {}
        return resp.status, doc if isinstance(doc, dict) else {}

    async def ensure(self, now: dt.datetime | None = None) -> Pair:
        """The pair in the Secret (renewed if due), the caBundle set, the files written."""
        now = now or dt.datetime.now(dt.UTC)
        path = f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}"
        status, secret = await self._call("GET", path)
        if status not in (200, 404):
            raise RuntimeError(f"reading Secret {self.namespace}/{self.secret}: HTTP {status}")
        pair = _from_secret(secret) if status == 200 else None
        if not _fresh(pair, now):
            pair = await self._write(make_pair(self.service, self.namespace, now, pair),
                                     secret if status == 200 else None)
        assert pair is not None
        if self.webhook is not None:
            await self._set_ca_bundle(pair.ca)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "tls.key").write_bytes(pair.key)
        (self.directory / "tls.crt").write_bytes(pair.cert)
        return pair

    async def _write(self, pair: Pair, existing: dict[str, Any] | None) -> Pair:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": self.secret, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": self.service}},
                "data": {"ca.crt": base64.b64encode(pair.ca).decode(),
                         "tls.crt": base64.b64encode(pair.cert).decode(),
                         "tls.key": base64.b64encode(pair.key).decode(),
                         **({"ca.key": base64.b64encode(pair.ca_key).decode()}
                            if pair.ca_key else {})}}
        if existing is None:
            status, _ = await self._call("POST", f"/api/v1/namespaces/{self.namespace}/secrets",
                                         body)
        else:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            status, _ = await self._call(
                "PUT", f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}", body)
        if status == 409:  # another replica wrote first: use its pair
            _, secret = await self._call(
                "GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}")
            theirs = _from_secret(secret)
            if theirs is None:
                raise RuntimeError("the Secret written by another replica is unusable")
            return theirs
        if status not in (200, 201):
            raise RuntimeError(f"writing Secret {self.namespace}/{self.secret}: HTTP {status}")
        log.info("tls_bootstrapped", secret=self.secret, renewed=existing is not None)
        return pair

    async def _set_ca_bundle(self, ca: bytes) -> None:
        assert self.webhook is not None
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{self.webhook}"
        status, config = await self._call("GET", path)
        if status != 200:
            raise RuntimeError(f"reading MutatingWebhookConfiguration {self.webhook}: "
                               f"HTTP {status}")
        bundle = base64.b64encode(ca).decode()
        hooks = config.get("webhooks") or []
        if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
            return
        patch = {"webhooks": [{"name": h["name"], "clientConfig": {"caBundle": bundle}}
                              for h in hooks]}
        status, _ = await self._call("PATCH", path, patch,
                                     "application/strategic-merge-patch+json")
        if status != 200:
            raise RuntimeError(f"patching the caBundle of {self.webhook}: HTTP {status}")
        log.info("ca_bundle_set", webhook=self.webhook)


async def renew_forever(bootstrap: Bootstrap, reload: Callable[[], object],
                        every: float = 6 * 3600) -> None:
    """Every few hours: renew the pair if due, then let the server load the files again."""
    while True:
        await asyncio.sleep(every)
        try:
            await bootstrap.ensure()
            reload()
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("tls_renewal_failed", error=str(exc), retry_in=every)


async def serving_certificate(serving: Serving, api: client.ApiClient | None, *,
                              namespace: str, webhook: str | None, who: str, named: str,
                              ) -> tuple[ServingTLS | None, Bootstrap | None]:
    """A server's certificate at start-up: bootstrapped into its Secret (`api` must reach the
    Kubernetes API), or read from its files, or none (plain HTTP). `who` names the server and
    `named` its --tls-bootstrap option in errors."""
    if serving.tls_bootstrap is None:
        if serving.tls_cert is not None and serving.tls_key is not None:
            return ServingTLS(serving.tls_cert, serving.tls_key), None
        return None, None
    if api is None:
        raise ConfigError([f"{named}: needs the Kubernetes API: run in a cluster or set "
                           "--kubeconfig"])
    bootstrap = Bootstrap(api, namespace=namespace, secret=serving.tls_bootstrap,
                          service=serving.service, webhook=webhook, directory=serving.tls_dir)
    try:
        await bootstrap.ensure()  # now: a failure stops the start-up, naming the RBAC to check
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError([f"{named}: {exc}; check the {who}'s RBAC (self-signed "
                           "overlay)"]) from None
    return ServingTLS(serving.tls_dir / "tls.crt", serving.tls_dir / "tls.key"), bootstrap

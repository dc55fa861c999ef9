"""The subject token: a projected Kubernetes service-account token, checked as the API server
would (signature by the issuer's keys, iss, aud, exp/nbf/iat with bounded skew) plus the pod
binding (`kubernetes.io.pod`) this server needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from flyte_auth_common.errors import ConfigError
from flyte_auth_common.jwt import jwt_claims, redact
from flyte_auth_exchange.errors import INVALID_GRANT, TEMPORARILY_UNAVAILABLE, Refusal

log = structlog.get_logger("flyte_auth_exchange")
ALGORITHMS = ("RS256", "ES256")
#: An unknown kid triggers a JWKS refresh at most this often (a forged kid must not let
#: a caller make us hammer the issuer).
MIN_REFRESH_INTERVAL = 30.0


@dataclass(frozen=True)
class Subject:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    jti: str | None

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def subject_from_claims(claims: dict[str, Any]) -> Subject:
    """The pod binding of a service-account token's claims (signature checked elsewhere)."""
    k8s = claims.get("kubernetes.io")
    pod = k8s.get("pod") if isinstance(k8s, dict) else None
    sa = k8s.get("serviceaccount") if isinstance(k8s, dict) else None
    if not isinstance(k8s, dict) or not isinstance(pod, dict) or not isinstance(sa, dict):
        raise Refusal(INVALID_GRANT, "subject token is not bound to a pod (no kubernetes.io.pod "
                      "claim): mount a projected serviceAccountToken volume, not a Secret token")
    fields = (k8s.get("namespace"), sa.get("name"), pod.get("name"), pod.get("uid"))
    if not all(isinstance(f, str) and f for f in fields):
        raise Refusal(INVALID_GRANT, "subject token's kubernetes.io claim lacks namespace, "
                      "serviceaccount.name, pod.name or pod.uid")
    namespace, sa_name, pod_name, pod_uid = (str(f) for f in fields)
    subject = Subject(namespace, sa_name, pod_name, pod_uid,
                      claims["jti"] if isinstance(claims.get("jti"), str) else None)
    if claims.get("sub") != subject.username:
        raise Refusal(INVALID_GRANT, f"subject token's sub does not match its kubernetes.io "
                      f"claim ({subject.username})")
    return subject


def check_claims(claims: dict[str, Any], *, issuer: str, audience: str, now: float,
                 skew: float) -> None:
    if claims.get("iss") != issuer:
        shown = redact(str(claims.get("iss")))[:100]
        raise Refusal(INVALID_GRANT, f"subject token issuer {shown!r} is not the trusted "
                      f"service-account issuer {issuer!r}")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in auds:
        raise Refusal(INVALID_GRANT, f"subject token audience does not include {audience!r}: "
                      f"project the token with that audience")
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if not isinstance(exp, int | float):
        raise Refusal(INVALID_GRANT, "subject token has no exp claim")
    if now > exp + skew:
        raise Refusal(INVALID_GRANT, f"subject token expired {int(now - exp)} s ago")
    if isinstance(nbf, int | float) and now + skew < nbf:
        raise Refusal(INVALID_GRANT, "subject token is not valid yet (nbf in the future)")
    if isinstance(iat, int | float) and now + skew < iat:
        raise Refusal(INVALID_GRANT, "subject token was issued in the future (iat); check clocks")


class IssuerKeys:
    """The issuer's public keys, from a JWKS file or OIDC discovery; refreshed on an
    unknown kid (at most every MIN_REFRESH_INTERVAL s)."""

    def __init__(self, *, jwks_file: Path | None = None, discovery_url: str | None = None,
                 session: aiohttp.ClientSession | None = None,
                 ssl_ctx: ssl.SSLContext | bool = True, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._file = jwks_file
        self._url = discovery_url.rstrip("/") if discovery_url else None
        self._session = session
        self._ssl = ssl_ctx
        self._timeout = timeout
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = -MIN_REFRESH_INTERVAL
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def ready(self) -> bool:
        return self._keys is not None

    def load_file(self) -> None:
        assert self._file is not None
        where = f"--subject-jwks {self._file}"
        try:
            self._keys = KeySet.import_key_set(json.loads(self._file.read_text()))
        except OSError as exc:
            raise ConfigError([f"{where}: cannot be read ({exc.strerror})"]) from None
        except (ValueError, TypeError, KeyError, JoseError):
            raise ConfigError([f"{where}: not a JWKS document ({{\"keys\": [...]}})"]) from None

    async def _fetch(self) -> None:
        assert self._url is not None
        assert self._session is not None
        self.fetches += 1
        self._fetched_at = self._clock()
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with self._session.get(self._url + "/.well-known/openid-configuration",
                                         ssl=self._ssl, timeout=timeout) as resp:
                resp.raise_for_status()
                jwks_uri = (await resp.json(content_type=None))["jwks_uri"]
            async with self._session.get(jwks_uri, ssl=self._ssl, timeout=timeout) as resp:
                resp.raise_for_status()
                self._keys = KeySet.import_key_set(await resp.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError,
                JoseError) as exc:
            log.warning("issuer_keys_unavailable", url=self._url, error=type(exc).__name__)
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"the service-account issuer's keys could "
                          f"not be fetched from {self._url} ({type(exc).__name__})") from None
        log.info("issuer_keys_fetched", url=self._url, keys=len(self._keys.keys))

    async def start(self) -> None:
        if self._file is not None:
            self.load_file()
        elif self._url is not None:
            with contextlib.suppress(Refusal):  # not ready yet: /readyz says so; exchanges retry
                await self._fetch()

    async def key_set(self, *, refresh: bool) -> KeySet:
        """The current keys; with `refresh`, fetch again unless fetched very recently. Only a
        refresh (an unknown kid) or the very first load waits for the lock: a token signed
        with a known key never waits behind a slow refetch."""
        if self._keys is not None and not refresh:
            return self._keys
        async with self._lock:
            stale = self._clock() - self._fetched_at >= MIN_REFRESH_INTERVAL
            if self._url is not None and (self._keys is None or (refresh and stale)):
                await self._fetch()
        if self._keys is None:
            raise Refusal(TEMPORARILY_UNAVAILABLE, "no service-account issuer keys are loaded")
        return self._keys

    async def verify(self, token: str, *, issuer: str, audience: str, now: float,
                     skew: float) -> Subject:
        """Signature, claims and pod binding; Refusal(invalid_grant) says which failed."""
        if jwt_claims(token) is None:
            raise Refusal(INVALID_GRANT, "subject_token is not a JWT")
        keys = await self.key_set(refresh=False)
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            except InvalidKeyIdError:
                decoded = jwt.decode(token, await self.key_set(refresh=True),
                                     algorithms=ALGORITHMS)
        except InvalidKeyIdError:
            raise Refusal(INVALID_GRANT, "subject token is signed with a key (kid) the "
                          "service-account issuer does not publish") from None
        except BadSignatureError:
            raise Refusal(INVALID_GRANT, "subject token signature does not verify against the "
                          "service-account issuer's keys") from None
        except (JoseError, ValueError, RecursionError) as exc:
            raise Refusal(INVALID_GRANT, f"subject token cannot be verified "
                          f"({type(exc).__name__})") from None
        claims = dict(decoded.claims)
        check_claims(claims, issuer=issuer, audience=audience, now=now, skew=skew)
        return subject_from_claims(claims)

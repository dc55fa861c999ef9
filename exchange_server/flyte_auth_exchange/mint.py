"""Minting tokens FlyteAdmin accepts (as flyteadmin/auth at v1.16.8 validates
bearer tokens; `make e2e` presents them to the real FlyteAdmin).

RS256; the header names the key with `key_id` (what FlyteAdmin reads in Self mode) and `kid`
(what it reads in External mode, and everyone else); claims `aud` (FlyteAdmin's public URL or
allowed audience), `sub`, `scp` as a list (FlyteAdmin reads `scp`, not `scope`, and needs
`all`), `iat` and `nbf` set back by the tolerated clock skew (FlyteAdmin tolerates none),
`exp`, `jti`, RFC 8693 `act` naming the service account that asked, and the execution the pod
runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from flyte_auth_common.errors import ConfigError

# FlyteAdmin's header parameter `key_id` is not a registered JWS header: allow it.
_REGISTRY = JWSRegistry(strict_check_header=False)


@dataclass(frozen=True)
class Minted:
    token: str
    jti: str
    expires_in: int


class Minter:
    """Signs tokens. The key id (`kid` and FlyteAdmin's `key_id`) is, unless configured, the
    key's RFC 7638 thumbprint: the id FlyteAdmin itself gives each of its keys
    (jwk.AssignKeyID), so during a key rotation it verifies our tokens with the right one of
    token_rsa_key.pem and token_rsa_key_old.pem. A file name there would be an unknown id,
    and FlyteAdmin would try only its first key."""

    def __init__(self, key: RSAKey, key_id: str | None, issuer: str, *, retain: float = 0.0,
                 lead: float = 0.0, backdate: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._key_id = key_id
        self.issuer = issuer
        #: How long a replaced key stays in /jwks: the longest lifetime of a token this
        #: server mints, plus the time every replica takes to see the new key file.
        self._retain = retain
        #: How long a new key is published before it signs (External mode: every replica
        #: must list it before FlyteAdmin meets its first token; 0: it signs at once).
        self._lead = lead
        #: Seconds `iat` and `nbf` are set back: FlyteAdmin allows no clock skew at all.
        self._backdate = int(backdate)
        self._clock = clock
        self._retired: list[tuple[RSAKey, str, float]] = []  # (key, kid, published until)
        self._pending: tuple[RSAKey, float] | None = None  # (key, signs from)

    @property
    def key_id(self) -> str:
        self._promote()
        return self._key_id_of(self._key)

    def _key_id_of(self, key: RSAKey) -> str:
        return self._key_id or key.thumbprint()

    def set_key(self, key: RSAKey) -> None:
        """Sign with `key` from now on, or once it has been published for the lead time (the
        mounted key file changed). The replaced key stays published until the last token it
        may have signed has expired: verifiers that find keys through a key set (FlyteAdmin
        in External mode, Flyte 2's auth proxy) re-fetch it for the new key's first token,
        and would refuse every older one if the old key were gone from it."""
        self._promote()
        if key.thumbprint() == self._key.thumbprint():
            self._pending = None  # the same key written again, or a rotation rolled back
            return
        if self._pending is not None and self._pending[0].thumbprint() == key.thumbprint():
            return  # the new key synced again: its lead time runs on
        self._pending = (key, self._clock() + self._lead)
        self._promote()

    def _promote(self) -> None:
        """The pending key signs once its lead time is over; the key it replaces retires."""
        if self._pending is None or self._clock() < self._pending[1]:
            return
        key, _ = self._pending
        self._pending = None
        now = self._clock()
        self._retired = [(k, kid, until) for k, kid, until in self._retired
                         if until > now and k.thumbprint() != key.thumbprint()]
        self._retired.append((self._key, self._key_id_of(self._key), now + self._retain))
        self._key = key

    @staticmethod
    def load_key(path: Path) -> RSAKey:
        """FlyteAdmin's token_rsa_key.pem (PKCS#1; PKCS#8 works too); ConfigError if not."""
        where = f"--signing-key {path}"
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError([f"{where}: cannot be read ({exc.strerror})"]) from None
        try:
            key = RSAKey.import_key(pem)
        except (JoseError, ValueError, TypeError):
            raise ConfigError([f"{where}: not an RSA private key in PEM (FlyteAdmin's "
                               "token_rsa_key.pem is PKCS#1: -----BEGIN RSA PRIVATE KEY-----)"]
                              ) from None
        if not key.is_private:
            raise ConfigError([f"{where}: holds a public key; the private key is needed"])
        return key

    def jwks(self) -> dict[str, Any]:
        """The signing key's public half first, then a new key waiting out its lead time,
        then each replaced key still published."""
        self._promote()
        now = self._clock()
        pending = [self._pending[0]] if self._pending else []
        published = [(self._key, self.key_id)] + [
            (key, self._key_id_of(key)) for key in pending] + [
            (key, kid) for key, kid, until in self._retired if until > now]
        return {"keys": [key.as_dict(private=False) | {"kid": kid, "use": "sig", "alg": "RS256"}
                         for key, kid in published]}

    def mint(self, *, subject: str, audience: list[str], scopes: list[str], lifetime: int,
             now: float, extra: dict[str, Any] | None = None) -> Minted:
        jti = str(uuid.uuid4())
        iat = int(now) - self._backdate
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "scp": scopes,
            "iat": iat,
            "nbf": iat,
            "exp": int(now) + lifetime,
            "jti": jti,
            **(extra or {}),
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key_id, "key_id": self.key_id}
        return Minted(jwt.encode(header, claims, self._key, registry=_REGISTRY), jti, lifetime)

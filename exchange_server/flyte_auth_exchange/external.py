"""External mode: FlyteAdmin verifies tokens against an external IdP (`authServerType:
External`) and reads that IdP's metadata through this server.

FlyteAdmin (v1.16.8) fetches `externalAuthServer.baseUrl` + `metadataUrl` once at start-up,
hands the same document to every CLI and SDK (`GetOAuth2Metadata` re-fetches it on each call),
and verifies bearer tokens against its `jwks_uri`, which it re-fetches on any unknown `kid`.
This server serves the IdP's document unchanged except `jwks_uri`, which names the union of
the IdP's keys and this server's own: tokens of both verify, and the IdP's login and token
endpoints still reach users.

The IdP's copies are fetched with a timeout and kept: the document for `max_age` seconds,
the keys until a key set is asked for again `min_refetch` seconds later (FlyteAdmin asks when
it meets a new `kid`, so an IdP key rotation reaches it on first use; a flood of forged kids
costs the IdP one fetch per `min_refetch`). When the IdP is unreachable or answers garbage,
the last good copy is served. No answer waits longer than one fetch's timeout.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("flyte_auth_exchange")
#: Where this server serves the IdP's document: FlyteAdmin's externalAuthServer.baseUrl is
#: <--public-url>/external/ (the trailing slash: its metadataUrl is resolved against it).
PREFIX = "/external"
JWKS_PATH = PREFIX + "/jwks"
METADATA_PATHS = (PREFIX + "/.well-known/oauth-authorization-server",
                  PREFIX + "/.well-known/openid-configuration")
MAX_BODY_BYTES = 1024 * 1024


class Unavailable(Exception):
    """Nothing good to serve: the IdP has not answered well once since this server started."""


class _Copy:
    """One remote JSON document, its last good value, and one fetch at a time."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.value: dict[str, Any] | None = None
        self.tried = float("-inf")  # when the last fetch began
        self.fetched = 0  # fetches ended, good or not
        self.error = ""  # why the last fetch failed
        self.lock = asyncio.Lock()


class ExternalIdP:
    def __init__(self, metadata_url: str, own_keys: Callable[[], dict[str, Any]],
                 public_url: str, session: aiohttp.ClientSession, *,
                 ssl_ctx: ssl.SSLContext | bool = True, timeout: float = 3.0,
                 max_age: float = 30.0, min_refetch: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self.metadata_url = metadata_url
        self._own_keys = own_keys
        self._jwks_uri = public_url.rstrip("/") + JWKS_PATH
        self._session = session
        self._ssl = ssl_ctx
        self._timeout = timeout
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._clock = clock
        self._on_failure = on_failure
        self._document = _Copy("metadata document")
        self._keys = _Copy("key set")
        self.fetches = 0

    async def document(self) -> dict[str, Any]:
        """The IdP's metadata, `jwks_uri` pointing at the union key set."""
        doc = await self._current(self._document, self._max_age, self._fetch_document)
        return doc | {"jwks_uri": self._jwks_uri}

    async def key_set(self) -> dict[str, Any]:
        """The IdP's keys, then this server's (the signing key, a new one waiting out its
        lead time, replaced ones still published)."""
        idp = await self._current(self._keys, self._min_refetch, self._fetch_keys)
        return {"keys": [*idp["keys"], *self._own_keys()["keys"]]}

    async def _current(self, copy: _Copy, age: float,
                       fetch: Callable[[], Any]) -> dict[str, Any]:
        if copy.value is not None and self._clock() - copy.tried < age:
            return copy.value
        seen = copy.fetched
        async with copy.lock:
            # A fetch that ended while this caller waited, good or not, answers it too: no
            # caller waits longer than one fetch.
            if copy.fetched == seen and (copy.value is None or
                                         self._clock() - copy.tried >= age):
                copy.tried = self._clock()  # a failure, too, waits `age` before the next try
                try:
                    copy.value = await fetch()
                except Unavailable as exc:
                    copy.error = str(exc)
                    self._on_failure()
                    log.warning("idp_unreachable", what=copy.what, reason=str(exc),
                                serving="the last good copy" if copy.value else "nothing")
                finally:
                    copy.fetched += 1
        if copy.value is None:
            raise Unavailable(f"the IdP's {copy.what} has not been fetched yet "
                              f"({copy.error or self.metadata_url})")
        return copy.value

    async def _fetch_document(self) -> dict[str, Any]:
        doc = await self._get(self.metadata_url)
        if not isinstance(doc.get("jwks_uri"), str) or not isinstance(doc.get("issuer"), str):
            raise Unavailable(f"{self.metadata_url} is not a metadata document (no issuer or "
                              "jwks_uri)")
        return doc

    async def _fetch_keys(self) -> dict[str, Any]:
        doc = await self._current(self._document, self._max_age, self._fetch_document)
        keys = await self._get(str(doc["jwks_uri"]))
        listed = keys.get("keys")
        if not isinstance(listed, list) or not all(
                isinstance(k, dict) and isinstance(k.get("kty"), str) for k in listed):
            raise Unavailable(f"{doc['jwks_uri']} is not a key set ({{\"keys\": [...]}})")
        return {"keys": listed}

    async def _get(self, url: str) -> dict[str, Any]:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout), self._session.get(
                    url, ssl=self._ssl, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise Unavailable(f"{url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    raise Unavailable(f"{url} answered more than {MAX_BODY_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"{url} is unreachable ({type(exc).__name__})") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise Unavailable(f"{url} did not answer JSON") from None
        if not isinstance(doc, dict):
            raise Unavailable(f"{url} did not answer a JSON object")
        return doc

"""Pure token handling: read the subject token, parse the token endpoint's answer.

No I/O beyond reading the token file; no clock but the `now` passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flyte_auth_agent.errors import OAuthError, SubjectTokenError, UpstreamError, redact

#: Lifetime assumed when the endpoint gives neither `expires_in` nor a JWT `exp`.
DEFAULT_LIFETIME = 300.0


def fingerprint(token: str) -> str:
    """A short, stable, non-reversible name for a token, fit for logs and status."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT, or None if `token` is not shaped like one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(frozen=True)
class AccessToken:
    """A token the agent holds. `value` never appears in repr, logs or status."""

    value: str = field(repr=False)
    issued_at: float
    expires_at: float
    scope: str
    fingerprint: str

    @classmethod
    def create(cls, value: str, *, issued_at: float, expires_at: float, scope: str) -> AccessToken:
        return cls(value, issued_at, expires_at, scope, fingerprint(value))

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at


def read_subject_token(path: Path) -> str:
    """The projected service-account token, read fresh (the kubelet rotates it)."""
    hint = "check the projected serviceAccountToken volume and --token-file"
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise SubjectTokenError(f"service-account token file {path} does not exist; "
                                f"{hint}") from None
    except PermissionError:
        raise SubjectTokenError(f"service-account token file {path} is not readable by uid "
                                f"{os.getuid()}; give the volume a readable mode or run the "
                                f"agent with the pod's fsGroup") from None
    except IsADirectoryError:
        raise SubjectTokenError(f"service-account token file {path} is a directory; point "
                                f"--token-file at the token file inside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SubjectTokenError(f"service-account token file {path} cannot be read "
                                f"({type(exc).__name__}); {hint}") from None
    if not text:
        raise SubjectTokenError(f"service-account token file {path} is empty; {hint}")
    if jwt_claims(text) is None:
        raise SubjectTokenError(f"service-account token file {path} does not hold a JWT "
                                f"(expected three base64url parts); {hint}")
    return text


def parse_token_response(
    status: int, content_type: str, body: bytes, *, now: float, secrets: tuple[str, ...] = ()
) -> AccessToken:
    """Turn a token endpoint response into a token, or raise an error that says what was wrong.

    `secrets` (the subject token, the client secret) are scrubbed from any upstream text
    that ends up in an error message.
    """
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    doc: object = None
    if media == "application/json" or media.endswith("+json") or body[:1] == b"{":
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            doc = None
    if not isinstance(doc, dict):
        what = f"{media or 'no content type'}, {len(body)} bytes"
        if status >= 400:
            raise UpstreamError(f"token endpoint answered HTTP {status} with a non-JSON body "
                                f"({what}); check the token endpoint URL and that the server "
                                f"is up", kind="http_error", status=status)
        raise UpstreamError(f"token endpoint answered HTTP {status} with a body that is not a "
                            f"JSON object ({what}); is the URL really an OAuth2 token endpoint?",
                            kind="bad_response", status=status)
    if status >= 400 or "error" in doc:
        code = doc.get("error")
        if not isinstance(code, str) or not code:
            raise UpstreamError(f"token endpoint answered HTTP {status} without an RFC 6749 "
                                f"error code", kind="http_error", status=status)
        description = doc.get("error_description")
        raise OAuthError(redact(code, *secrets)[:64],
                         redact(description, *secrets) if isinstance(description, str) else "",
                         status=status)
    if status != 200:
        raise UpstreamError(f"token endpoint answered HTTP {status}, expected 200",
                            kind="bad_response", status=status)
    return _token_from(doc, now)


def _token_from(doc: dict[str, Any], now: float) -> AccessToken:
    value = doc.get("access_token")
    if not isinstance(value, str) or not value.strip():
        raise UpstreamError("token endpoint response has no access_token string",
                            kind="bad_response", status=200)
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = token_type if isinstance(token_type, str) else type(token_type).__name__
        raise UpstreamError(f"token endpoint issued token_type {redact(str(shown))[:32]!r}; "
                            "only Bearer tokens can be sent to FlyteAdmin",
                            kind="bad_response", status=200)
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():  # some servers quote numbers
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or (expires_in is not None and
                                         not isinstance(expires_in, int | float)):
        raise UpstreamError("token endpoint response has a non-numeric expires_in",
                            kind="bad_response", status=200)
    if expires_in is not None:
        if expires_in <= 0:
            raise UpstreamError(f"token endpoint issued a token that expires in {expires_in} s",
                                kind="bad_response", status=200)
        expires_at = now + float(expires_in)
    else:
        exp = (jwt_claims(value) or {}).get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            expires_at = now + DEFAULT_LIFETIME  # opaque token, no lifetime given: assume short
        elif exp <= now:
            raise UpstreamError("token endpoint issued a JWT whose exp has already passed; "
                                "check the clocks of the token endpoint and this node",
                                kind="bad_response", status=200)
        else:
            expires_at = float(exp)
    scope = doc.get("scope")
    return AccessToken.create(value.strip(), issued_at=now, expires_at=expires_at,
                              scope=scope if isinstance(scope, str) else "")

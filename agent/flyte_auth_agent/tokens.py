"""Pure token handling: read the subject token, parse the token endpoint's answer.

No I/O beyond reading the token file; no clock but the `now` passed in.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flyte_auth_agent.errors import OAuthError, SubjectTokenError, UpstreamError
from flyte_auth_common.jwt import fingerprint, jwt_claims, redact

#: Lifetime assumed when the endpoint gives neither `expires_in` nor a JWT `exp`.
DEFAULT_LIFETIME = 300.0
#: No token is held longer than this, whatever the endpoint says (a day, as EKS Pod
#: Identity's longest credentials): a typo upstream must not pin a token for years.
MAX_LIFETIME = 86400.0
#: A projected service-account token is a few KiB; more is not one.
MAX_SUBJECT_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class AccessToken:
    """A token the agent holds. `value` never appears in repr, logs or status."""

    value: str = field(repr=False)
    issued_at: float
    expires_at: float
    scope: str
    fingerprint: str
    #: Whom the token names (its JWT `sub`; None for an opaque token): who the task acts as.
    subject: str | None = None

    @classmethod
    def create(cls, value: str, *, issued_at: float, expires_at: float, scope: str) -> AccessToken:
        sub = (jwt_claims(value) or {}).get("sub")
        return cls(value, issued_at, expires_at, scope, fingerprint(value),
                   sub if isinstance(sub, str) else None)

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at


def _read_small_regular_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file, never blocking: a FIFO or device at the path
    is refused instead of waiting for a writer (the caller runs on the event loop)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _TooLarge
    return data


class _NotRegular(Exception):
    pass


class _TooLarge(Exception):
    pass


def read_subject_token(path: Path) -> str:
    """The projected service-account token, read fresh (the kubelet rotates it)."""
    hint = "check the projected serviceAccountToken volume and --token-file"
    try:
        text = _read_small_regular_file(path, MAX_SUBJECT_TOKEN_BYTES).decode("ascii").strip()
    except _NotRegular:
        raise SubjectTokenError(f"service-account token file {path} is not a regular file "
                                f"(a FIFO, socket or device); {hint}") from None
    except _TooLarge:
        raise SubjectTokenError(f"service-account token file {path} is larger than "
                                f"{MAX_SUBJECT_TOKEN_BYTES} bytes, so it is not a token; "
                                f"{hint}") from None
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
    expires_at = _expiry(doc.get("expires_in"), (jwt_claims(value) or {}).get("exp"), now)
    scope = doc.get("scope")
    return AccessToken.create(value.strip(), issued_at=now, expires_at=expires_at,
                              scope=scope if isinstance(scope, str) else "")


def _seconds(value: object) -> float | None:
    """A finite number (or a quoted one, as some servers send), else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _expiry(expires_in: object, exp: object, now: float) -> float:
    """When the token stops being valid: the earlier of `expires_in` and the JWT's own `exp`,
    never more than MAX_LIFETIME away; an answer that makes no sense is an error."""
    lifetime = _seconds(expires_in)
    if expires_in is not None and lifetime is None:
        raise UpstreamError("token endpoint response has an expires_in that is not a finite "
                            "number", kind="bad_response", status=200)
    if lifetime is not None and lifetime <= 0:
        raise UpstreamError(f"token endpoint issued a token that expires in {lifetime:g} s",
                            kind="bad_response", status=200)
    candidates = [now + min(lifetime, MAX_LIFETIME)] if lifetime is not None else []
    jwt_exp = _seconds(exp)
    if jwt_exp is not None:
        if jwt_exp <= now:
            raise UpstreamError("token endpoint issued a JWT whose exp has already passed; "
                                "check the clocks of the token endpoint and this node",
                                kind="bad_response", status=200)
        candidates.append(min(jwt_exp, now + MAX_LIFETIME))
    # Opaque token, no lifetime given: assume short.
    return min(candidates) if candidates else now + DEFAULT_LIFETIME

"""Looking at tokens without trusting them: unverified JWT claims, a loggable fingerprint,
and redaction of token-shaped text. Nothing here verifies a signature.

Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

__all__ = ["fingerprint", "jwt_claims", "redact"]

# Three base64url parts starting with a JSON header ("eyJ" is base64 of '{"'): a JWT.
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_UPSTREAM_TEXT = 300


def fingerprint(token: str) -> str:
    """A short, stable, non-reversible name for a token, fit for logs and status."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT, or None if `token` is not shaped like one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: deeply nested JSON
        return None
    return claims if isinstance(claims, dict) else None


def redact(text: str, *secrets: str) -> str:
    """Upstream text made safe to log: JWT-shaped strings and known secrets removed, cut short."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _JWT_SHAPE.sub("[redacted-jwt]", text)
    text = " ".join(text.split())
    if len(text) > _MAX_UPSTREAM_TEXT:
        text = text[:_MAX_UPSTREAM_TEXT] + "..."
    return text

"""Why an exchange is refused, as RFC 6749 §5.2 / RFC 8693 §2.2.2 errors.

    Refusal                   answered as {"error": code, "error_description": ...}
    ├── codes invalid_request, invalid_grant, invalid_target, invalid_scope,
    │         unsupported_grant_type, access_denied          → HTTP 400
    │         (invalid_request for a body over the limit     → HTTP 413)
    ├── temporarily_unavailable (Kubernetes or FlyteAdmin unreachable) → HTTP 503
    └── server_error (anything unexpected; the handler turns it into this) → HTTP 500

Descriptions say which check failed and never contain the presented token.
"""

from __future__ import annotations

INVALID_REQUEST = "invalid_request"
INVALID_GRANT = "invalid_grant"
INVALID_TARGET = "invalid_target"
INVALID_SCOPE = "invalid_scope"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
ACCESS_DENIED = "access_denied"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
SERVER_ERROR = "server_error"


class Refusal(Exception):
    """`check` names the trust check that refused (trust.py), for the audit line."""

    def __init__(self, code: str, description: str, *, check: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.check = check
        self.status = status or {TEMPORARILY_UNAVAILABLE: 503, SERVER_ERROR: 500}.get(code, 400)

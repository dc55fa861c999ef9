"""Exceptions of the agent.

    AgentError                    anything the refresher reports instead of crashing
    ├── SubjectTokenError         the projected service-account token file is unusable
    ├── DiscoveryError            FlyteAdmin's auth metadata could not be read
    └── UpstreamError             the token endpoint failed or answered garbage
        └── OAuthError            ... with an RFC 6749 §5.2 error code

Every message names what failed and what to do, and never carries a token: upstream
text passes through `flyte_auth_common.jwt.redact()` before it reaches a message. Bad
settings are `flyte_auth_common.errors.ConfigError`, raised before the refresher starts.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "DiscoveryError",
    "OAuthError",
    "SubjectTokenError",
    "UpstreamError",
]

class AgentError(Exception):
    """Base of every error the agent reports. `retryable` tells the refresher what to do."""

    retryable: bool = True
    #: A short stable label for metrics and status (`oauth:invalid_grant`, `unreachable`, ...).
    kind: str = "error"
    #: Seconds the upstream asked to wait first (its Retry-After), if it did.
    retry_after: float | None = None


class SubjectTokenError(AgentError):
    """The service-account token file is missing, unreadable, empty or not a JWT."""

    kind = "subject_token"


class DiscoveryError(AgentError):
    """FlyteAdmin's OAuth2 metadata or public client config could not be read."""

    kind = "discovery"


class UpstreamError(AgentError):
    """The token endpoint was unreachable, timed out, or answered something unusable."""

    def __init__(self, message: str, *, kind: str = "upstream", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


# RFC 6749 §5.2 / RFC 8693 §2.2.2 codes that a retry cannot fix: the configuration or the
# server's policy must change first. They are still retried, at the slowest pace.
NON_RETRYABLE_OAUTH_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
    }
)


# Codes the RFCs define; anything else is labelled `oauth:other` in metrics.
KNOWN_OAUTH_ERRORS = NON_RETRYABLE_OAUTH_ERRORS | {
    "invalid_request",
    "invalid_grant",
    "server_error",
    "temporarily_unavailable",
}


class OAuthError(UpstreamError):
    """The token endpoint refused the request with an RFC 6749 §5.2 error."""

    def __init__(self, code: str, description: str, *, status: int) -> None:
        detail = f": {description}" if description else ""
        super().__init__(
            f"token endpoint refused the exchange with {code} (HTTP {status}){detail}",
            kind=f"oauth:{code if code in KNOWN_OAUTH_ERRORS else 'other'}",
            status=status,
        )
        self.code = code
        self.retryable = code not in NON_RETRYABLE_OAUTH_ERRORS

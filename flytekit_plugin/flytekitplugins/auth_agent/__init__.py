"""flyte-auth for flytekit: tasks call FlyteAdmin with the pod agent's token, no secrets.
It owns the flytekit side only and imports flytekit and flyte_auth_common's stdlib-only
client and contract, nothing of the servers.

`FLYTE_CREDENTIALS_AUTH_MODE=flyte-auth-agent` (set by the injector) selects
`AgentAuthenticator` through flytekit's `flytekit.auth` entry points (flytekit >= 1.16.24).
"""

from flytekitplugins.auth_agent.authenticator import (
    AgentAuthenticator,
    AgentAuthError,
    from_platform_config,
)
from flytekitplugins.auth_agent.remote import default_remote, whoami

__all__ = ["AgentAuthError", "AgentAuthenticator", "default_remote", "from_platform_config",
           "whoami"]

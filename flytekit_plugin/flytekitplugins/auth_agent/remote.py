"""`default_remote()`: a FlyteRemote for the running execution, authenticated by the agent."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flytekit.configuration import Config, PlatformConfig
from flytekit.remote import FlyteRemote

from flyte_auth_common import contract
from flyte_auth_common.client import AgentClient, AgentClientError, no_token_reason
from flytekitplugins.auth_agent.authenticator import AgentAuthError, explain


def default_remote(*, environ: Mapping[str, str] | None = None, **kwargs: Any) -> FlyteRemote:
    """FlyteRemote for this execution's project and domain, reaching FlyteAdmin as the agent
    says (/v1/config) and authenticating with the agent's token.

        remote = default_remote()
        remote.fetch_execution(name="f3a1b2c4d5e6")

    Project and domain come from FLYTE_INTERNAL_EXECUTION_PROJECT/DOMAIN (set by
    flytepropeller), else from the agent. Extra keyword arguments go to FlyteRemote.
    """
    env = os.environ if environ is None else environ
    try:
        conf = AgentClient().config()
    except AgentClientError as exc:
        raise explain(exc) from None
    endpoint = env.get(contract.ENV_PLATFORM_URL) or conf["endpoint"]
    if not endpoint:
        raise AgentAuthError("flyte-auth: FlyteAdmin's endpoint is unknown: neither "
                             f"{contract.ENV_PLATFORM_URL} nor the agent's "
                             "--admin-endpoint is set")
    platform = PlatformConfig(
        endpoint=endpoint.removeprefix("dns:///"),
        insecure=conf["insecure"],
        ca_cert_file_path=conf["ca_cert_file_path"],
        auth_mode=contract.PLUGIN_AUTH_MODE,
    )
    return FlyteRemote(
        Config(platform=platform),
        default_project=env.get(contract.ENV_EXECUTION_PROJECT) or conf["project"],
        default_domain=env.get(contract.ENV_EXECUTION_DOMAIN) or conf["domain"],
        **kwargs,
    )


def whoami() -> str | None:
    """Whom this task acts as against FlyteAdmin: the subject of the agent's token (for an
    execution, the user who launched it; flyteorg/flyte#6550). No FlyteAdmin call, no token
    handed out: it reads the agent's /v1/status. None if the token is opaque."""
    try:
        status = AgentClient().status()
    except AgentClientError as exc:
        raise explain(exc) from None
    token = status.get("token") or {}
    if status.get("state") != "valid":
        error = no_token_reason(status)
        raise AgentAuthError(f"flyte-auth: the agent holds no valid token: {error}")
    subject = token.get("subject")
    return subject if isinstance(subject, str) else None

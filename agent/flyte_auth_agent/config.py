"""The agent's configuration: one frozen dataclass, loaded from the option table in
flyte_auth_common.agent_options (flags, env vars, defaults)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flyte_auth_common import contract
from flyte_auth_common.admin import AdminEndpoint, parse_admin_endpoint
from flyte_auth_common.agent_options import (
    ENV_PREFIX,
    GRANT_CLIENT_ASSERTION,
    GRANT_TOKEN_EXCHANGE,
    OPTIONS,
    Grant,
)
from flyte_auth_common.command_line import parse_flags
from flyte_auth_common.converters import (
    to_file_mode,
    to_host_port,
    to_http_url,
    to_path,
    to_positive_float,
    to_positive_int,
    to_uids,
)
from flyte_auth_common.options import Settings


@dataclass(frozen=True)
class ExecutionContext:
    """What flytepropeller tells the pod about its execution (FLYTE_INTERNAL_*)."""

    execution_id: str | None = None
    project: str | None = None
    domain: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExecutionContext:
        return cls(
            environ.get(contract.ENV_EXECUTION_ID) or None,
            environ.get(contract.ENV_EXECUTION_PROJECT) or None,
            environ.get(contract.ENV_EXECUTION_DOMAIN) or None,
        )


@dataclass(frozen=True)
class AgentConfig:
    socket: Path
    token_file: Path
    token_endpoint: str | None
    admin: AdminEndpoint | None
    ca_cert_file: Path | None
    ca_cert_pem: str | None
    authorization_metadata_key: str | None
    grant: Grant
    subject_token_type: str
    audience: str | None
    scope: str | None
    resource: str | None
    client_id: str | None
    client_secret_file: Path | None
    health_addr: tuple[str, int] | None
    socket_mode: int
    allowed_uids: frozenset[int] | None
    wait_timeout: float
    max_connections: int
    idle_timeout: float
    exchange_timeout: float
    termination_log: Path
    log_level: str
    log_format: str
    execution: ExecutionContext

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> AgentConfig:
        """Build the config from parsed flags and the environment; ConfigError lists problems."""
        s = Settings(ENV_PREFIX, OPTIONS, args, environ)
        insecure = s.flag("admin_insecure")
        admin = s.get("admin_endpoint", lambda v: parse_admin_endpoint(v, insecure))
        token_endpoint = s.get("token_endpoint", to_http_url)
        if s.raw("admin_endpoint") in (None, "") and s.raw("token_endpoint") in (None, ""):
            s.problem("token_endpoint", "set a token endpoint, or "
                      f"{s.name('admin_endpoint')} to discover it from FlyteAdmin")
        grant: Grant = GRANT_CLIENT_ASSERTION if s.raw("grant") == GRANT_CLIENT_ASSERTION \
            else GRANT_TOKEN_EXCHANGE
        s.get("grant", str)  # reports a value outside the choices
        if grant == GRANT_CLIENT_ASSERTION and s.given("subject_token_type"):
            s.problem("subject_token_type", "applies to --grant token-exchange only; the "
                      "client-assertion grant always sends a jwt-bearer assertion")
        client_id = s.text("client_id")
        secret_file = s.get("client_secret_file", to_path)
        if secret_file is not None and client_id is None:
            s.problem("client_secret_file", "needs a client id: set "
                      f"{s.name('client_id')} too")
        if secret_file is not None and grant == GRANT_CLIENT_ASSERTION:
            s.problem("client_secret_file", "cannot be combined with --grant client-assertion, "
                      "where the service-account token itself authenticates the client")
        wait_timeout = s.value("wait_timeout", to_positive_float)
        idle = s.get("idle_timeout", to_positive_float)  # its default follows --wait-timeout
        idle_timeout = max(30.0, wait_timeout + 10) if idle is None else idle
        if idle_timeout <= wait_timeout:
            s.problem("idle_timeout", f"{idle_timeout:g} s must exceed --wait-timeout "
                      f"({wait_timeout:g} s), or a waiting request would be cut off")
        config = cls(
            socket=s.value("socket", to_path),
            token_file=s.value("token_file", to_path),
            token_endpoint=token_endpoint,
            admin=admin,
            ca_cert_file=s.get("ca_cert_file", to_path),
            ca_cert_pem=s.text("ca_cert_pem"),
            authorization_metadata_key=s.text("authorization_metadata_key"),
            grant=grant,
            subject_token_type=s.value("subject_token_type", str),
            audience=s.text("audience"),
            scope=s.get("scope", lambda v: " ".join(v.split()) or None),
            resource=s.text("resource"),
            client_id=client_id,
            client_secret_file=secret_file,
            health_addr=s.get("health_addr", to_host_port),
            socket_mode=s.value("socket_mode", to_file_mode),
            allowed_uids=s.get("allowed_uids", to_uids),
            wait_timeout=wait_timeout,
            max_connections=s.value("max_connections", to_positive_int),
            idle_timeout=idle_timeout,
            exchange_timeout=s.value("exchange_timeout", to_positive_float),
            termination_log=s.value("termination_log", to_path),
            log_level=s.value("log_level", str),
            log_format=s.value("log_format", str),
            execution=ExecutionContext.from_env(environ),
        )
        s.raise_problems()
        return config

    @classmethod
    def load(cls, argv: list[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
        """`serve` flags from argv, env from `environ` (default os.environ)."""
        return cls.from_args(parse_flags(ENV_PREFIX, OPTIONS, argv),
                             os.environ if environ is None else environ)

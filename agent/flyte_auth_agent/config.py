"""The agent's configuration: the option table, and one frozen dataclass built from it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from flyte_auth_agent import contract
from flyte_auth_agent.options import (
    Option,
    Settings,
    or_default,
    parse_flags,
    to_file_mode,
    to_host_port,
    to_http_url,
    to_path,
    to_positive_float,
    to_positive_int,
    to_uids,
)

ENV_PREFIX = "FLYTE_AUTH_AGENT_"
GRANT_TOKEN_EXCHANGE: Final = "token-exchange"
GRANT_CLIENT_ASSERTION: Final = "client-assertion"
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"

Grant = Literal["token-exchange", "client-assertion"]

OPTIONS = (
    Option("--socket", "Unix socket to serve the token API on", contract.DEFAULT_SOCKET_PATH),
    Option("--token-file", "projected service-account token; re-read before every exchange",
           contract.DEFAULT_TOKEN_FILE),
    Option("--token-endpoint", "OAuth2 token endpoint URL; discovered from FlyteAdmin if unset",
           metavar="URL"),
    Option("--admin-endpoint", "FlyteAdmin gRPC endpoint HOST:PORT (or dns:///HOST:PORT, "
           "http(s)://HOST:PORT); used for discovery and reported on /v1/config", metavar="HOST"),
    Option("--admin-insecure", "talk to FlyteAdmin without TLS (plaintext gRPC and HTTP)",
           is_switch=True),
    Option("--ca-cert-file", "PEM bundle to trust for FlyteAdmin and the token endpoint, "
           "besides the system trust store", metavar="FILE"),
    Option("--ca-cert-pem", "the same as PEM text (the injector sets it: the exchange "
           "server's CA, a private CA of FlyteAdmin)", metavar="PEM"),
    Option("--authorization-metadata-key", "gRPC header FlyteAdmin reads tokens from, reported "
           "on /v1/config (default: FlyteAdmin's client config, else flyte-authorization); with "
           "--token-endpoint it spares the agent any discovery", metavar="HEADER"),
    Option("--grant", "how to trade the service-account token", GRANT_TOKEN_EXCHANGE,
           choices=(GRANT_TOKEN_EXCHANGE, GRANT_CLIENT_ASSERTION)),
    Option("--subject-token-type", "RFC 8693 subject_token_type (token-exchange only)",
           JWT_TOKEN_TYPE, metavar="URN"),
    Option("--audience", "RFC 8693 audience to ask for (default: FlyteAdmin's client config)"),
    Option("--scope", "space-separated scopes to ask for (default: FlyteAdmin's client config)"),
    Option("--resource", "RFC 8707 resource indicator to ask for", metavar="URI"),
    Option("--client-id", "OAuth2 client id; alone it is sent in the form (public client)"),
    Option("--client-secret-file", "file holding the client secret, sent as client_secret_basic "
           "(needs --client-id)", metavar="FILE"),
    Option("--health-addr", "also serve /healthz, /readyz and /metrics on this TCP HOST:PORT "
           "(never tokens)", metavar="HOST:PORT"),
    Option("--socket-mode", "file mode of the socket (octal)", "0666", metavar="MODE"),
    Option("--allowed-uids", "only these peer uids (SO_PEERCRED) may call /v1/*; "
           "comma-separated (default: any process in the pod)", metavar="UIDS"),
    Option("--wait-timeout", "seconds a request waits for the first token before a 503",
           "5", metavar="SECONDS"),
    Option("--max-connections", "open socket connections the agent accepts at once; the "
           "newest beyond it are closed at accept (keeps idle clients from using up its file "
           "descriptors)", "256", metavar="N"),
    Option("--idle-timeout", "seconds a socket connection may send nothing before it is "
           "closed; must exceed --wait-timeout (default: 30, or --wait-timeout + 10 if more)",
           metavar="SECONDS"),
    Option("--exchange-timeout", "seconds one call to the token endpoint or FlyteAdmin may take",
           "10", metavar="SECONDS"),
    Option("--log-level", "minimum log level", "info",
           choices=("debug", "info", "warning", "error")),
    Option("--log-format", "log line format", "json", choices=("json", "console")),
)


@dataclass(frozen=True)
class AdminEndpoint:
    """FlyteAdmin as flytekit addresses it: HOST:PORT plus whether TLS is off."""

    host_port: str
    insecure: bool

    @property
    def http_base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.host_port}"


def parse_admin_endpoint(value: str, insecure: bool) -> AdminEndpoint:
    text = value.removeprefix("dns:///")
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: scheme must be http or https, or give HOST:PORT")
        insecure = insecure or scheme == "http"
        text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. flyteadmin.flyte:81)")
    return AdminEndpoint(text, insecure)


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
            s.problem("token_endpoint", "set a token endpoint, or --admin-endpoint / "
                      f"{ENV_PREFIX}ADMIN_ENDPOINT to discover it from FlyteAdmin")
        grant: Grant = GRANT_CLIENT_ASSERTION if s.raw("grant") == GRANT_CLIENT_ASSERTION \
            else GRANT_TOKEN_EXCHANGE
        s.get("grant", str)  # reports a value outside the choices
        if grant == GRANT_CLIENT_ASSERTION and s.given("subject_token_type"):
            s.problem("subject_token_type", "applies to --grant token-exchange only; the "
                      "client-assertion grant always sends a jwt-bearer assertion")
        client_id = s.text("client_id")
        secret_file = s.get("client_secret_file", to_path)
        if secret_file is not None and client_id is None:
            s.problem("client_secret_file", "needs a client id: set --client-id / "
                      f"{ENV_PREFIX}CLIENT_ID too")
        if secret_file is not None and grant == GRANT_CLIENT_ASSERTION:
            s.problem("client_secret_file", "cannot be combined with --grant client-assertion, "
                      "where the service-account token itself authenticates the client")
        wait_timeout = or_default(s.get("wait_timeout", to_positive_float), 5.0)
        idle_timeout = or_default(s.get("idle_timeout", to_positive_float),
                                  max(30.0, wait_timeout + 10))
        if idle_timeout <= wait_timeout:
            s.problem("idle_timeout", f"{idle_timeout:g} s must exceed --wait-timeout "
                      f"({wait_timeout:g} s), or a waiting request would be cut off")
        config = cls(
            socket=s.get("socket", to_path) or Path(contract.DEFAULT_SOCKET_PATH),
            token_file=s.get("token_file", to_path) or Path(contract.DEFAULT_TOKEN_FILE),
            token_endpoint=token_endpoint,
            admin=admin,
            ca_cert_file=s.get("ca_cert_file", to_path),
            ca_cert_pem=s.text("ca_cert_pem"),
            authorization_metadata_key=s.text("authorization_metadata_key"),
            grant=grant,
            subject_token_type=s.text("subject_token_type") or JWT_TOKEN_TYPE,
            audience=s.text("audience"),
            scope=s.get("scope", lambda v: " ".join(v.split()) or None),
            resource=s.text("resource"),
            client_id=client_id,
            client_secret_file=secret_file,
            health_addr=s.get("health_addr", to_host_port),
            socket_mode=or_default(s.get("socket_mode", to_file_mode), 0o666),
            allowed_uids=s.get("allowed_uids", to_uids),
            wait_timeout=wait_timeout,
            max_connections=or_default(s.get("max_connections", to_positive_int), 256),
            idle_timeout=idle_timeout,
            exchange_timeout=or_default(s.get("exchange_timeout", to_positive_float), 10.0),
            log_level=s.text("log_level") or "info",
            log_format=s.text("log_format") or "json",
            execution=ExecutionContext.from_env(environ),
        )
        s.raise_problems()
        return config

    @classmethod
    def load(cls, argv: list[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
        """`serve` flags from argv, env from `environ` (default os.environ)."""
        return cls.from_args(parse_flags(ENV_PREFIX, OPTIONS, argv),
                             os.environ if environ is None else environ)

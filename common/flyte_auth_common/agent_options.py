"""The agent's options: its flags, env vars and defaults. It lives here, not in the agent,
because the sidecar injector configures the agent through exactly these env vars, and
both must read the names from one table.

Stdlib only.
"""

from __future__ import annotations

from typing import Final, Literal

from flyte_auth_common import contract
from flyte_auth_common.options import LOG_OPTIONS, Option, option_names

ENV_PREFIX: Final = contract.AGENT_ENV_PREFIX
#: The two ways the agent trades the service-account token (its --grant choices).
GRANT_TOKEN_EXCHANGE: Final = "token-exchange"
GRANT_CLIENT_ASSERTION: Final = "client-assertion"

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
           contract.TOKEN_TYPE_JWT, metavar="URN"),
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
    Option("--max-connections", "open socket connections the agent keeps at once; beyond "
           "it, the one silent longest with no request in progress is closed to make room "
           "(only when all are busy is the newest closed at accept): idle clients can neither "
           "use up its file descriptors nor keep others out", "256", metavar="N"),
    Option("--idle-timeout", "seconds a socket connection may send nothing before it is "
           "closed; must exceed --wait-timeout (default: 30, or --wait-timeout + 10 if more)",
           metavar="SECONDS"),
    Option("--exchange-timeout", "seconds one call to the token endpoint or FlyteAdmin may take",
           "10", metavar="SECONDS"),
    Option("--termination-log", "where the agent, stopping without a valid token, writes why "
           "(Kubernetes shows it as the container's last state in `kubectl describe pod`); "
           "skipped unless the file exists", "/dev/termination-log", metavar="FILE"),
    *LOG_OPTIONS,
)

#: The env var that sets each option, by dest: AGENT_ENV["token_file"] is
#: "FLYTE_AUTH_AGENT_TOKEN_FILE". Computed once: the injector reads it for every pod.
AGENT_ENV: Final = {opt.dest: opt.env(ENV_PREFIX) for opt in OPTIONS}


#: How messages name an option: agent_setting("socket") == "--socket / FLYTE_AUTH_AGENT_SOCKET".
agent_setting = option_names(ENV_PREFIX, OPTIONS)

"""flyte_auth_common: what every flyte-auth component shares. It owns the wire contract,
the stdlib-only socket client and JWT helpers, the agent's option table (the injector
configures the agent through it), and the serving kit (options, daemon, logs, metrics,
TLS material and reload, the FlyteAdmin channel, ConfigError).

It must not import flyte_auth_agent, flyte_auth_exchange, flyte_auth_injector or
flytekitplugins. `contract`, `client`, `token_command`, `jwt`, `errors`, `options` and
`agent_options` import only the standard library (tests/test_boundaries.py enforces both);
the agent copies `contract`, `client` and `token_command` into task pods.

This file is the project's one version source: every pyproject reads it.
"""

__version__ = "0.1.0"

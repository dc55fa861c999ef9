"""flyte_auth_agent: the sidecar. It owns the pod's token: reading the service-account token,
the exchange, the refresher (TokenSource) and the socket API. It imports flyte_auth_common
and nothing of the exchange server, the injector or the plugin.

Its modules are its own internals: what other components need of the agent (the socket
contract, the client, its option table) lives in flyte_auth_common.
"""

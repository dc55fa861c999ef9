"""flyte_auth_injector: the mutating admission webhook. It owns the pod mutation (sidecar,
volumes, env) and its selection rules. It imports flyte_auth_common (the contract and the
agent's option table) and nothing of the agent, the exchange server or the plugin.
"""

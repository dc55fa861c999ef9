"""flyte_auth_exchange: the exchange server. It owns the trust decision: verifying the
subject token, binding the pod to its execution and the execution to its launcher, the
policy, and minting FlyteAdmin's token. It imports flyte_auth_common and nothing of the
agent, the injector or the plugin.
"""

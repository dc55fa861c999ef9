"""Prometheus metrics of the agent, in a registry of its own. Labels are bounded sets."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from flyte_auth_agent.tokens import AccessToken


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flyte_auth_agent_requests", "Requests served on the socket, by path and status",
            ["path", "code"], registry=self.registry)
        self.exchanges = Counter(
            "flyte_auth_agent_exchanges",
            "Exchanges at the token endpoint, by outcome (success or the error kind)",
            ["outcome"], registry=self.registry)
        self.exchange_seconds = Histogram(
            "flyte_auth_agent_exchange_duration_seconds", "Time one exchange took",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.expiry = Gauge(
            "flyte_auth_agent_token_expiry_timestamp_seconds",
            "Unix time at which the held token expires (0: none yet)", registry=self.registry)
        self.refused = Counter(
            "flyte_auth_agent_connections_refused",
            "Socket connections closed at accept, by reason (too_many_connections, "
            "uid_not_allowed)", ["reason"], registry=self.registry)
        self.last_success = Gauge(
            "flyte_auth_agent_last_refresh_timestamp_seconds",
            "Unix time of the last successful exchange", registry=self.registry)

    def refused_connection(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def exchanged(self, outcome: str, seconds: float, token: AccessToken | None) -> None:
        self.exchanges.labels(outcome).inc()
        self.exchange_seconds.observe(seconds)
        if token is not None:
            self.expiry.set(token.expires_at)
            self.last_success.set(token.issued_at)

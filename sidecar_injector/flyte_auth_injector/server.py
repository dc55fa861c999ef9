"""HTTPS webhook: thin handlers over review.decide() (the serving kit reloads its TLS files:
flyte_auth_common.reload)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)

from flyte_auth_common.probes import probe_routes
from flyte_auth_injector import connect
from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.review import BadReview, decide, parse, refusal
from flyte_auth_injector.webhook_config import CONNECT_PATH

log = structlog.get_logger("flyte_auth_injector")
#: AdmissionReviews carry whole pods; the API server caps requests at ~3 MiB.
MAX_REVIEW_BYTES = 4 * 1024 * 1024
#: Reads a pod (namespace, name) from the API server; None if it does not exist.
PodReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


async def _body(request: web.Request) -> bytes:
    """A review's body; BadReview if it says it is larger than any review."""
    if (request.content_length or 0) > MAX_REVIEW_BYTES:
        raise BadReview(f"body larger than {MAX_REVIEW_BYTES} bytes")
    return await request.read()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reviews = Counter("flyte_auth_injector_reviews", "Admission reviews, by outcome",
                               ["outcome"], registry=self.registry)
        self.seconds = Histogram("flyte_auth_injector_review_duration_seconds",
                                 "Time to answer one review", registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))
        self.connects = Counter("flyte_auth_injector_connect_reviews",
                                "exec/attach/port-forward/proxy reviews, by outcome",
                                ["outcome"], registry=self.registry)


class InjectorAPI:
    def __init__(self, config: InjectorConfig,
                 namespace_annotations: Callable[[str], Mapping[str, str]],
                 ready: Callable[[], bool] = lambda: True,
                 read_pod: PodReader | None = None) -> None:
        self.config = config
        self.namespace_annotations = namespace_annotations
        self.ready = ready
        self.read_pod = read_pod
        self.metrics = Metrics()

    def set_agent_ca(self, pem: str | None) -> None:
        """Give agents `pem` as the CA they trust from now on (a mounted CA file changed)."""
        sidecar = dataclasses.replace(self.config.sidecar, ca_pem=pem)
        self.config = dataclasses.replace(self.config, sidecar=sidecar)

    async def mutate(self, request: web.Request) -> web.Response:
        """The one place every review gets an answer: 400 for an unreadable review, else 200
        with the decision, or (a bug, never the pod's fault) `allowed: false` naming the log
        line."""
        started = time.perf_counter()
        review: dict[str, Any] | None = None
        try:
            review = parse(await _body(request))
            outcome = decide(review, self.config, self.namespace_annotations)
        except BadReview as exc:
            self.metrics.reviews.labels("bad_review").inc()
            log.warning("review_rejected", error=str(exc))
            return web.json_response({"error": "bad_review", "message": str(exc)}, status=400)
        except Exception as exc:
            self.metrics.reviews.labels("failed").inc()
            log.error("review_failed", error_type=type(exc).__name__)
            if review is None:
                return web.json_response({"error": "bad_review", "message": "the review could "
                                          "not be read"}, status=400)
            return web.json_response(refusal(
                review, 500, "InternalError", "flyte-auth: the injector failed on this pod; "
                "its log has the error (review_failed)"))
        finally:
            self.metrics.seconds.observe(time.perf_counter() - started)
        self.metrics.reviews.labels(outcome.kind).inc()
        log.info("review", outcome=outcome.kind, reason=outcome.reason,
                 namespace=outcome.namespace, pod=outcome.pod,
                 uid=outcome.response["response"]["uid"])
        return web.json_response(outcome.response)

    async def connect(self, request: web.Request) -> web.Response:
        """exec, attach, port-forward, proxy: refused on a pod with Flyte's claims to all but
        Flyte and cluster admins. Fails closed: a pod that cannot be read is refused."""
        try:
            review = connect.parse_connect(await _body(request))
        except BadReview as exc:
            self.metrics.connects.labels("bad_review").inc()
            log.warning("connect_review_rejected", error=str(exc))
            return web.json_response({"error": "bad_review", "message": str(exc)}, status=400)
        try:
            if self.read_pod is None:
                raise RuntimeError("no Kubernetes client (--kubeconfig, or run in a cluster)")
            pod = await self.read_pod(review.namespace, review.pod)
        except Exception as exc:  # any failure to read the pod refuses
            self.metrics.connects.labels("failed").inc()
            log.error("connect_review_failed", namespace=review.namespace, pod=review.pod,
                      error=f"{type(exc).__name__}: {exc}"[:300])
            return web.json_response(connect.answer(review, False, (
                f"flyte-auth guard: cannot read pod {review.namespace}/{review.pod} to tell "
                f"whether it acts for a Flyte user, so {review.subresource} is refused; the "
                "injector's log has the error (connect_review_failed)")))
        tokens = self.config.tokens
        allowed, why = connect.decide(review, pod, self.config.guard_creators,
                                      (tokens.audience, *tokens.allowed_audiences))
        self.metrics.connects.labels("allowed" if allowed else "refused").inc()
        log.info("connect_review", allowed=allowed, namespace=review.namespace, pod=review.pod,
                 subresource=review.subresource, user=review.username,
                 reason=why if allowed else "flyte claims")
        return web.json_response(connect.answer(review, allowed, why))

    def probes(self) -> list[web.RouteDef]:
        """Ready once the namespace cache has synced."""
        return probe_routes(self.metrics.registry, not_ready=lambda: None if self.ready()
                            else "namespace cache not synced")


def webhook_app(api: InjectorAPI) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post("/mutate", api.mutate)
    app.router.add_post(CONNECT_PATH, api.connect)
    app.add_routes(api.probes())
    return app


def metrics_app(api: InjectorAPI) -> web.Application:
    app = web.Application()
    app.add_routes(api.probes())
    return app

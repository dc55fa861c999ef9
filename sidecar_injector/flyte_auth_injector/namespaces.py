"""Namespace annotations, kept current by list + watch, so a lookup during a review is a
dict read and a new namespace is seen as soon as the API server announces it."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import Any

import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from flyte_auth_injector import consts

log = structlog.get_logger("flyte_auth_injector")
_EMPTY: Mapping[str, str] = {}


def _ours(annotations: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (annotations or {}).items() if k.startswith(consts.PREFIX)}


class NamespaceAnnotations:
    def __init__(self, api: client.ApiClient, *, watch_seconds: int = 300) -> None:
        self._core = client.CoreV1Api(api)
        self._watch_seconds = watch_seconds
        self._annotations: dict[str, dict[str, str]] = {}
        self.synced = asyncio.Event()
        #: Set on every change the watch delivers (tests and diagnostics wait on it).
        self.updated = asyncio.Event()

    def get(self, namespace: str) -> Mapping[str, str]:
        return self._annotations.get(namespace, _EMPTY)

    def _apply(self, kind: str, raw: Mapping[str, Any]) -> None:
        meta = raw.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            return
        if kind == "DELETED":
            self._annotations.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._annotations[name] = _ours(meta.get("annotations"))
        self.updated.set()

    async def _list(self) -> str:
        resp: Any = await self._core.list_namespace(_preload_content=False)
        doc = json.loads(await resp.read())
        if resp.status != 200 or not isinstance(doc, dict):
            raise ApiException(status=resp.status, reason="list namespaces failed")
        self._annotations = {}
        for item in doc.get("items") or []:
            self._apply("ADDED", item)
        self.synced.set()
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion; re-list after any break."""
        delay = 1.0
        while True:
            try:
                version = await self._list()
                delay = 1.0
                watcher = watch.Watch()
                try:
                    async for event in watcher.stream(self._core.list_namespace,
                                                      resource_version=version,
                                                      timeout_seconds=self._watch_seconds):
                        self._apply(event["type"], event["raw_object"])
                finally:
                    await watcher.close()
            except asyncio.CancelledError:
                raise
            except (ApiException, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("namespace_watch_failed", error=type(exc).__name__,
                            retry_in=round(delay, 1))
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, 60.0)

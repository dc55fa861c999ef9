"""The list-then-watch contract the injector's namespace cache relies on: a change made
between a list and the watch that starts from the list's resourceVersion is delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kubernetes_asyncio import client, watch

from flyte_auth_injector.namespaces import NamespaceAnnotations


async def change_between_list_and_watch(api: client.ApiClient, name: str,
                                        change: Callable[[], Awaitable[None]]
                                        ) -> tuple[str, dict[str, str]]:
    """List, run `change` (which touches namespace `name`), then watch from the list's
    version: the first event for `name`, as (type, our annotations); ("none", {}) if none."""
    cache = NamespaceAnnotations(api)
    version = await cache._list()
    await change()
    watcher = watch.Watch()
    try:
        async with asyncio.timeout(30):
            async for event in watcher.stream(client.CoreV1Api(api).list_namespace,
                                              resource_version=version, timeout_seconds=20):
                cache._apply(event["type"], event["raw_object"])
                if event["raw_object"]["metadata"]["name"] == name:
                    return event["type"], dict(cache.get(name))
    finally:
        await watcher.close()
    return "none", {}

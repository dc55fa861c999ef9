"""The exchange server's caches stay correct, with their clock moved by hand: what a pod's
existence and phase decide is re-read after --cache-ttl; what an execution shares (its
FlyteWorkflow, its launcher) expires too, is bounded, and is never matched by an object
re-created under the same name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from devstack.clock import FakeClock
from devstack.world import World, owner_reference
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.memo import Memo
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.exchange.helpers import form, post

TTL = 5.0


@asynccontextmanager
async def cached(world: World, clock: FakeClock) -> AsyncIterator[RunningExchange]:
    config = ExchangeConfig.load(world.exchange_args("--cache-ttl", str(TTL)), {})
    async with running_exchange(config, monotonic=clock.now) as ex:
        yield ex


async def exchange_code(http: aiohttp.ClientSession, ex: RunningExchange, token: str) -> str:
    status, body = await post(http, ex.url, form(token))
    return "ok" if status == 200 else str(body["error"])


@pytest.mark.parametrize("change", ["deleted", "finished", "re-created"])
async def test_a_pod_that_is_gone_is_refused_once_the_ttl_has_passed(
        world: World, http: aiohttp.ClientSession, change: str) -> None:
    pod = world.task_pod()
    token = world.kube.token_for(pod)
    key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
    clock = FakeClock()
    async with cached(world, clock) as ex:
        assert await exchange_code(http, ex, token) == "ok"
        if change == "deleted":
            del world.kube.pods[key]
        elif change == "finished":
            pod["status"]["phase"] = "Succeeded"
        else:
            pod["metadata"]["uid"] = "another-uid"
        clock.advance(clock.now() + TTL - 0.5)
        assert await exchange_code(http, ex, token) == "ok"  # as documented: within the TTL
        clock.advance(clock.now() + 0.5)
        assert await exchange_code(http, ex, token) == "invalid_grant"


async def test_an_executions_launcher_and_workflow_are_asked_again_after_the_ttl(
        world: World, http: aiohttp.ClientSession) -> None:
    pods = [world.task_pod(f"f3a1b2c4d5e6-n0-{i}") for i in range(3)]
    clock = FakeClock()
    async with cached(world, clock) as ex:
        for pod in pods:
            assert await exchange_code(http, ex, world.kube.token_for(pod)) == "ok"
        asked = [c for c in world.admin.calls if c[0] == "GetExecution"]
        assert len(asked) == 1  # three pods, one execution: one question
        async with http.get(ex.url + "/metrics") as resp:
            metrics = await resp.text()
        # What operators watch: what the server asked, by upstream and request.
        for line in ('flyte_auth_exchange_upstream_requests_total{request="GetExecution",'
                     'upstream="flyteadmin"} 1.0',
                     'flyte_auth_exchange_upstream_requests_total{request="get pod",'
                     'upstream="kubernetes"} 3.0',
                     'flyte_auth_exchange_upstream_requests_total{request="get flyteworkflow",'
                     'upstream="kubernetes"} 1.0'):
            assert line in metrics, line
        clock.advance(clock.now() + TTL)
        assert await exchange_code(http, ex, world.kube.token_for(pods[0])) == "ok"
        assert len([c for c in world.admin.calls if c[0] == "GetExecution"]) == 2


async def test_a_workflow_recreated_under_its_name_is_never_judged_by_the_old_entry(
        world: World, http: aiohttp.ClientSession) -> None:
    """The FlyteWorkflow of an execution deleted and created again (a new uid): a pod of the
    new one is judged against the new object at once, not refused (or accepted) by the old
    one's cached entry."""
    old_pod = world.task_pod("f3a1b2c4d5e6-n0-0")
    clock = FakeClock()
    async with cached(world, clock) as ex:
        assert await exchange_code(http, ex, world.kube.token_for(old_pod)) == "ok"
        del world.kube.workflows[("flytesnacks-development", "f3a1b2c4d5e6")]
        del world.kube.pods[("flytesnacks-development", "f3a1b2c4d5e6-n0-0")]
        workflow = world.kube.add_workflow("flytesnacks-development", "flytesnacks",
                                           "development", "f3a1b2c4d5e6")
        new_pod = world.task_pod("f3a1b2c4d5e6-n0-1")
        assert new_pod["metadata"]["ownerReferences"] == [owner_reference(workflow)]
        assert await exchange_code(http, ex, world.kube.token_for(new_pod)) == "ok"


async def test_the_memo_is_bounded_and_evicts_the_least_recently_used() -> None:
    clock = FakeClock()
    memo: Memo[str] = Memo(60, clock.now, max_entries=3)
    loads: list[str] = []

    def loader(key: str):  # type: ignore[no-untyped-def]
        async def load() -> str:
            loads.append(key)
            return key
        return load

    for key in "abc":
        await memo.get(key, loader(key))
    await memo.get("a", loader("a"))  # a is used again: b is now the least recent
    await memo.get("d", loader("d"))
    assert len(memo) == 3
    loads.clear()
    for key in "acd":
        await memo.get(key, loader(key))
    assert loads == []  # still held
    await memo.get("b", loader("b"))
    assert loads == ["b"]  # evicted, so read again

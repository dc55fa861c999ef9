"""Helpers the tests import (conftest.py keeps fixtures only)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager

import aiohttp
import grpc
from flyteidl.service import identity_pb2, identity_pb2_grpc
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from structlog.typing import EventDict

from devstack.world import World
from flyte_auth_common import contract
from flyte_auth_exchange.runtime import RunningExchange

StartExchange = Callable[..., AbstractAsyncContextManager[RunningExchange]]


def form(subject_token: str, **extra: str) -> dict[str, str]:
    return {"grant_type": contract.GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
            "subject_token_type": contract.TOKEN_TYPE_JWT, **extra}

async def post(http: aiohttp.ClientSession, url: str, data: object) -> tuple[int,
                                                                              dict[str, object]]:
    async with http.post(url + "/oauth2/token", data=data) as resp:
        return resp.status, await resp.json()


def logged() -> AbstractContextManager[list[EventDict]]:
    """The exchange server's log events, with the request context its handler and service bind
    (structlog contextvars) merged in, as the configured logger writes them."""
    return capture_logs(processors=[merge_contextvars])


async def user_info_code(world: World, token: str) -> str:
    """"OK", or the gRPC status name FlyteAdmin (the stand-in) answers UserInfo with."""
    try:
        await user_info(world, token)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    return "OK"


async def user_info(world: World, token: str) -> str:
    async with grpc.aio.insecure_channel(world.admin_target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reply = await stub.UserInfo(identity_pb2.UserInfoRequest(),
                                    metadata=(("flyte-authorization", f"Bearer {token}"),))
    return str(reply.subject)

"""Reading the API server's raw answers: an error status is never taken for an object."""

from __future__ import annotations

from typing import Any

import pytest

from flyte_auth_common.kube_client import KubeReadError, get_object


class Raw:
    """A raw (`_preload_content=False`) response: a status and a body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self._body = status, body

    async def read(self) -> bytes:
        return self._body


async def answer(status: int, body: bytes) -> Any:
    return Raw(status, body)


async def unreachable() -> Any:
    raise ConnectionRefusedError


async def test_an_object_a_404_and_every_other_answer() -> None:
    assert await get_object("get pod", answer(200, b'{"kind": "Pod"}')) == {"kind": "Pod"}
    assert await get_object("get pod", answer(404, b'{"kind": "Status"}')) is None
    for status, body in ((403, b'{"kind": "Status", "code": 403}'), (401, b"Unauthorized"),
                         (500, b"{}"), (200, b"[]"), (200, b"not json")):
        with pytest.raises(KubeReadError, match=f"get pod: HTTP {status}"):
            await get_object("get pod", answer(status, body))
    with pytest.raises(KubeReadError, match="get pod: ConnectionRefusedError"):
        await get_object("get pod", unreachable())

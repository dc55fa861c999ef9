"""Helpers the tests import (conftest.py keeps fixtures only)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonpatch

from flyte_auth_injector.config import InjectorConfig

ADMIN = "flyteadmin.flyte.svc.cluster.local:81"


def apply(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, patch)  # type: ignore[no-any-return]

def injector_config(tls_files: tuple[Path, Path], *extra: str) -> InjectorConfig:
    return InjectorConfig.load(["--listen", "127.0.0.1:0", "--tls-cert", str(tls_files[0]),
                                "--tls-key", str(tls_files[1]), "--admin-endpoint", ADMIN,
                                "--admin-insecure", "--agent-image", "flyte-auth-agent:test",
                                *extra], {})

Call = Callable[[dict[str, Any] | bytes], Awaitable[tuple[int, dict[str, Any]]]]

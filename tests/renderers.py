"""kustomize and helm for the manifest tests. They are Go programs that `make test` builds
(`make tools`) before pytest starts and names in $FLYTE_AUTH_KUSTOMIZE and $FLYTE_AUTH_HELM;
a test never builds one inside its timeout. Run by hand, pytest asks make where they are."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@cache
def renderer(name: str) -> str:
    """The path of `name` ("kustomize" or "helm"); a clear failure if it is not built."""
    path = os.environ.get(f"FLYTE_AUTH_{name.upper()}") or subprocess.run(
        ["make", "-s", "--no-print-directory", f"{name}-path"], cwd=ROOT, capture_output=True,
        text=True, check=True).stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        pytest.fail(f"{name} is not built ({path}): run `make tools` (it builds kustomize and "
                    "helm once per machine; `make test` does it first)")
    return path

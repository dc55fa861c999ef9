"""kustomize and helm for the manifest tests. They are Go programs: the first test that needs
one builds it through make (`make kustomize-path`), which needs Go and says so when it is
missing; later calls reuse the build. Nothing else in `make test` needs Go."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@cache
def renderer(name: str) -> str:
    """The path of `name` ("kustomize" or "helm"), built on first use."""
    done = subprocess.run(["make", "-s", "--no-print-directory", f"{name}-path"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"building {name} failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    return done.stdout.strip().splitlines()[-1]

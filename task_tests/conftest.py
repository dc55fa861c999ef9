"""What runs inside a task image, on the Python the image has: the socket client, the token
command and the flytekit plugin, against the whole chain (stand-in cluster and FlyteAdmin,
the real exchange server and agent) served by another process: `python -m devstack
--task-env`, run by the development venv's Python ($FLYTE_AUTH_CHAIN_PYTHON, else this one).

`make test` runs this directory in a venv per Python task images run (devstack/task_envs.py),
each holding only the built wheels, flytekit where it installs, and pytest; and once more in
the development venv. Nothing here imports the servers or the stand-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Chain:
    env: dict[str, str]  # what the injector gives a task container
    launcher: str  # who launched the execution: whom the task acts as

    @property
    def socket(self) -> Path:
        return Path(self.env["FLYTE_AUTH_AGENT_SOCKET"])


def without_flyte_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    python = os.environ.get("FLYTE_AUTH_CHAIN_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="fa-task-") as tmp:  # short: a socket path
        env_file = Path(tmp) / "task-env.json"
        proc = subprocess.Popen(
            [python, "-m", "devstack", "--task-env", str(env_file)], cwd=tmp,
            env=without_flyte_env() | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:  # the chain says when it serves (pytest-timeout bounds this)
            printed.append(line)
            if line.startswith("Serving until"):
                break
        else:
            proc.wait()
            pytest.fail(f"the chain ({python} -m devstack) exited {proc.returncode}:\n"
                        + "".join(printed[-30:]))
        try:
            task = json.loads(env_file.read_text())
            yield Chain(env=task["env"], launcher=task["launcher"])
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


@pytest.fixture
def task_env(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> Chain:
    """This process's env as a task container's."""
    for key in [k for k in os.environ if k.startswith("FLYTE_")]:
        monkeypatch.delenv(key)
    for key, value in chain.env.items():
        monkeypatch.setenv(key, value)
    return chain

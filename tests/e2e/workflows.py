"""The workflows the real-Flyte suite registers and launches. flytepropeller runs their tasks
on the suite's real node, in the task image (tests/e2e/flyte.py), which carries this
module."""

import base64
import json
import os

from flytekit import map_task, task, workflow
from flytekit.configuration import Config
from flytekit.remote import FlyteRemote

from flyte_auth_common.client import AgentClient


@task  # type: ignore[untyped-decorator]
def hello() -> str:
    return "hello"


@workflow  # type: ignore[untyped-decorator]
def greet() -> str:
    return hello()  # type: ignore[no-any-return]


@task  # type: ignore[untyped-decorator]
def launch_greet(version: str) -> str:
    """In the task pod, as the image's non-root uid: FlyteRemote(Config.auto()), configured
    by nothing but the env the injector gave the pod, launches `greet` (the eager case).
    Answers the uid and the sub-execution's name."""
    remote = FlyteRemote(Config.auto(),
                         default_project=os.environ["FLYTE_INTERNAL_EXECUTION_PROJECT"],
                         default_domain=os.environ["FLYTE_INTERNAL_EXECUTION_DOMAIN"])
    child = remote.execute(remote.fetch_launch_plan(name=greet.name, version=version),
                           inputs={})
    return f"{os.getuid()} {child.id.name}"


@workflow  # type: ignore[untyped-decorator]
def launcher(version: str) -> str:
    return launch_greet(version=version)  # type: ignore[no-any-return]


@task  # type: ignore[untyped-decorator]
def whose_token(index: int) -> str:
    """In one subtask pod of a map task: whom the token the agent holds names."""
    token = AgentClient().token()["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return f"{index} {claims['sub']}"


@workflow  # type: ignore[untyped-decorator]
def mapped() -> list[str]:
    """A map task (ArrayNode) of three subtask pods."""
    return map_task(whose_token)(index=[0, 1, 2])  # type: ignore[no-any-return]

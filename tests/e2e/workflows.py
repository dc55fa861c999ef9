"""The workflows the real-Flyte suite registers and launches. flytepropeller runs their tasks
on the suite's real node, in the task image (tests/e2e/flyte.py), which carries this
module."""

import os

from flytekit import task, workflow
from flytekit.configuration import Config
from flytekit.remote import FlyteRemote


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

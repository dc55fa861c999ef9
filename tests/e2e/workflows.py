"""The workflow the real-Flyte suite registers and launches. Its task never runs here (no
kubelet): flytepropeller creates the pod, and the suite acts from inside it."""

from flytekit import task, workflow


@task  # type: ignore[untyped-decorator]
def hello() -> str:
    return "hello"


@workflow  # type: ignore[untyped-decorator]
def greet() -> str:
    return hello()  # type: ignore[no-any-return]

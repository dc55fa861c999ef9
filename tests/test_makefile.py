"""The Makefile's own errors: a missing prerequisite is named, with how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_without_go(home: Path, target: str) -> subprocess.CompletedProcess[str]:
    """`make target` on a machine with make and a shell but no Go, and an empty home."""
    bin_dir = home / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    return subprocess.run(["make", "-s", "-C", str(ROOT), target], capture_output=True,
                          text=True, env={"PATH": str(bin_dir), "HOME": str(home)},
                          timeout=60, check=False)


def test_make_manifests_without_go_says_what_is_missing(tmp_path: Path) -> None:
    out = make_without_go(tmp_path, "manifests")
    assert out.returncode != 0
    assert "building kustomize needs Go" in out.stdout + out.stderr
    assert "not found" not in out.stdout + out.stderr
    assert not os.path.exists(tmp_path / ".cache/flyte-auth-agent/tools/kustomize-v5.7.1")


def test_the_unit_tests_without_go_stop_before_pytest_saying_what_is_missing(
        tmp_path: Path) -> None:
    out = make_without_go(tmp_path, "unit")
    assert out.returncode != 0
    assert "building kustomize needs Go" in out.stdout + out.stderr
    assert "test session starts" not in out.stdout + out.stderr  # pytest never started


def test_the_renderers_are_built_before_pytest_starts(tmp_path: Path) -> None:
    """On a machine that has never built them (an empty home), `make unit` builds kustomize
    and helm, saying so, before it runs pytest: no test's timeout covers a Go build."""
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "unit", f"HOME={tmp_path}"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    kustomize = plan.index("go install sigs.k8s.io/kustomize")
    helm = plan.index("helm.sh/helm/v3/cmd/helm@")
    pytest_at = plan.index("bin/pytest")
    assert kustomize < pytest_at and helm < pytest_at
    # The task side's venvs (flytekit on 3.10 and 3.12) too, before pytest and after it.
    assert plan.index("-m devstack.task_envs\n") < pytest_at < plan.index("task_envs --test")
    assert "building helm" in plan and "the chart tests render" in plan


@pytest.mark.parametrize(("component", "suite"), [
    ("agent", "tests/agent"), ("exchange", "tests/exchange"), ("injector", "tests/injector"),
    ("plugin", "flytekit_plugin/tests task_tests")])
def test_each_component_has_its_own_unit_target(component: str, suite: str) -> None:
    """`make unit-COMPONENT` runs that component's tests and the shared kit's, no others."""
    plan = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C", str(ROOT),
                           f"unit-{component}"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert plan.strip().splitlines()[-1].endswith(f"bin/pytest tests/common {suite}")

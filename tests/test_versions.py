"""One version for the release: every distribution, command, image tag and the chart carry
`flyte_auth_common.__version__` (its one home); and the version-skew rule's pins."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from flyte_auth_common import __version__, contract

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MINOR = ".".join(__version__.split(".")[:2])


@pytest.mark.parametrize("command", ["flyte-auth-agent", "flyte-auth-exchange",
                                     "flyte-auth-injector"])
def test_every_command_says_its_version(command: str) -> None:
    out = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{command} {__version__}\n", "")


def test_the_chart_and_the_manifests_carry_the_release_version() -> None:
    chart = yaml.safe_load((ROOT / "deploy/helm/flyte-auth/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    # The chart's image tags default to its appVersion (vault-helm's and cert-manager's way).
    values = yaml.safe_load((ROOT / "deploy/helm/flyte-auth/values.yaml").read_text())
    assert values["image"]["server"]["tag"] == values["image"]["agent"]["tag"] == ""
    kustomize = [p for p in (ROOT / "deploy/kustomize").rglob("*.yaml")
                 if "flyte-auth-server:" in p.read_text() or "flyte-auth-agent:" in p.read_text()]
    assert kustomize
    for path in kustomize:
        for line in path.read_text().splitlines():
            for image in ("flyte-auth-server:", "flyte-auth-agent:"):
                if image in line:
                    assert line.rstrip().endswith(f"{image}{__version__}"), (path, line)


def test_the_task_side_pins_the_kit_to_its_own_minor_version() -> None:
    """The plugin and the servers require flyte-auth-common of their own minor version: the
    kit moves with them (the skew rule lets agent, plugin and exchange server differ by one
    minor; a distribution and the kit it was built with do not differ)."""
    nxt = f"{MINOR.split('.')[0]}.{int(MINOR.split('.')[1]) + 1}"
    for pyproject in ("pyproject.toml", "flytekit_plugin/pyproject.toml"):
        deps = tomllib.loads((ROOT / pyproject).read_text())["project"]["dependencies"]
        assert f"flyte-auth-common>={MINOR}.0,<{nxt}" in deps, pyproject


def test_each_distribution_ships_the_one_licence() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for copy in ("common/LICENSE", "flytekit_plugin/LICENSE"):  # an sdist holds no links
        path = ROOT / copy
        assert not path.is_symlink() and path.read_text() == text, copy


@pytest.mark.parametrize(("ours", "theirs", "breaks"), [
    ("0.1.0", "0.1.7", False), ("0.2.0", "0.1.3", False), ("0.1.0", "0.2.9", False),
    ("0.1.0", "0.3.0", True), ("0.3.1", "0.1.0", True), ("1.0.0", "0.9.0", True),
    ("0.1.0", "", False), ("0.1.0", "dev", False), ("0.1.0", "0.x", False)])
def test_the_skew_rule_is_one_minor_within_a_major(ours: str, theirs: str,
                                                   breaks: bool) -> None:
    problem = contract.skew_problem(ours, theirs, we="this server", they="an agent")
    assert (problem is not None) == breaks
    if problem:
        assert problem.startswith(f"an agent {theirs} and this server {ours} are more than 1")

"""What `make dist` wrote (make e2e builds it first) is what users install: the images'
configuration as built from deploy/Dockerfile, the packaged chart, the wheels' metadata."""

from __future__ import annotations

import subprocess
import zipfile
from email.parser import Parser

import pytest
import yaml

from devstack import release
from flyte_auth_common import __version__
from tests.renderers import renderer


@pytest.mark.parametrize("target", sorted(release.IMAGES))
def test_each_image_runs_its_program_as_non_root_with_the_release_version(target: str) -> None:
    config = release.image_config(release.archive(target))
    assert config["User"] == "65532:65532"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert [config.get("Entrypoint"), config.get("Cmd")] == list(release.IMAGES[target])
    assert f"PATH=/opt/{target}/bin:" in " ".join(config["Env"])


def test_the_packaged_chart_is_the_release() -> None:
    package = release.DIST / f"flyte-auth-{__version__}.tgz"
    shown = subprocess.run([renderer("helm"), "show", "chart", str(package)],
                           capture_output=True, text=True, check=True).stdout
    chart = yaml.safe_load(shown)
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    out = subprocess.run([renderer("helm"), "template", "flyte-auth", str(package),
                          "--namespace", "flyte-auth", "--kube-version", "1.30.0"],
                         capture_output=True, text=True, check=True).stdout
    assert f"image: flyte-auth-server:{__version__}" in out
    assert f"agent_image: flyte-auth-agent:{__version__}" in out
    readme = subprocess.run([renderer("helm"), "show", "readme", str(package)],
                            capture_output=True, text=True, check=True).stdout
    assert "| `exchange.replicas` | `2` |" in readme  # the guide's values table


@pytest.mark.parametrize(("wheel", "python"), [("flyte_auth_common", ">=3.10"),
                                               ("flytekitplugins_auth_agent", ">=3.10"),
                                               ("flyte_auth_agent", ">=3.11")])
def test_each_wheel_carries_its_licence_and_the_pythons_it_supports(wheel: str,
                                                                    python: str) -> None:
    with zipfile.ZipFile(release.DIST / f"{wheel}-{__version__}-py3-none-any.whl") as whl:
        info = f"{wheel}-{__version__}.dist-info"
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        licence = whl.read(f"{info}/licenses/LICENSE").decode()
    assert meta["Requires-Python"] == python and meta["License-Expression"] == "Apache-2.0"
    assert "Apache License" in licence and meta["Project-URL"]
    assert not [r for r in meta.get_all("Requires-Dist") or [] if "pytest" in r]

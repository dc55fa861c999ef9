"""The Makefile's own errors: a missing prerequisite is named, with how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_manifests_without_go_says_what_is_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # make and a shell, but no Go
    bin_dir.mkdir()
    for tool in ("make", "sh"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "manifests"], capture_output=True,
                         text=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                         timeout=60, check=False)
    assert out.returncode != 0
    assert "building kustomize needs Go" in out.stdout + out.stderr
    assert "not found" not in out.stdout + out.stderr
    assert not os.path.exists(tmp_path / ".cache/flyte-auth-agent/tools/kustomize-v5.7.1")

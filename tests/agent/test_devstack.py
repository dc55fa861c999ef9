"""`make run ONCE=1`: the README's first command does the round trip and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_once_prints_the_round_trip(short_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "tests.support.devstack", "--once"],
                         cwd=short_dir, env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "agent state     valid" in out.stdout
    assert "system:serviceaccount:flytesnacks-development:default" in out.stdout
    assert "curl -s --unix-socket run/agent.sock -H 'X-Flyte-Auth-Agent: 1'" in out.stdout
    assert not (short_dir / "run" / "agent.sock").exists()  # the agent was stopped cleanly
    token = (short_dir / "run" / "sa-token").read_text()
    assert token not in out.stdout + (short_dir / "run" / "agent.log").read_text()

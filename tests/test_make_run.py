"""`make run ONCE=1`: the README's first command does the whole round trip and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_run_once_prints_the_round_trip(short_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "devstack", "--once"],
                         cwd=short_dir, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "execution       flytesnacks/development/f3a1b2c4d5e6  launched by " \
           "alice@example.com" in out.stdout
    assert "UserInfo with `flyte-authorization: Bearer <token>` says: alice@example.com" \
        in out.stdout
    assert "(discovered by the agent from FlyteAdmin over gRPC)" in out.stdout
    assert "via the flyte-auth-agent plugin: GetExecution\n                  says the " \
           "execution's principal is alice@example.com" in out.stdout
    assert "curl -s --unix-socket run/agent.sock -H 'X-Flyte-Auth-Agent: 1'" in out.stdout
    # ONCE: the stack is gone, so the curl hint says how to keep it up first.
    assert "The stack has stopped (ONCE=1). Run `make run` to keep it up" in out.stdout
    assert "Ctrl-C stops the stack" not in out.stdout
    # The demo agent carries the execution env a real task pod has.
    assert "execution flytesnacks/development/f3a1b2c4d5e6" in out.stdout
    assert "too_many_pings" not in out.stderr
    run = short_dir / "run"
    assert not (run / "agent.sock").exists()  # the agent was stopped cleanly
    logs = (run / "flyte-auth-agent.log").read_text() + (run / "flyte-auth-exchange.log"
                                                          ).read_text()
    assert '"outcome": "granted"' in logs
    assert (run / "sa-token").read_text() not in out.stdout + logs
    assert "eyJ" not in out.stdout + logs  # no JWT of any kind was printed or logged

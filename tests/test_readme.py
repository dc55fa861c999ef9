"""The README's configuration tables name every flag and env var the programs accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from flyte_auth_common import agent_options as agent
from flyte_auth_exchange import config as exchange
from flyte_auth_injector import config as injector

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("component", [agent, exchange, injector],
                         ids=["agent", "exchange", "injector"])
def test_every_flag_is_in_the_readme(component: object) -> None:
    for opt in component.OPTIONS:  # type: ignore[attr-defined]
        assert f"`{opt.flag}`" in README, opt.flag
        env = opt.env(component.ENV_PREFIX)  # type: ignore[attr-defined]
        short = "..._" + env.removeprefix(component.ENV_PREFIX)  # type: ignore[attr-defined]
        assert env in README or short in README, env


def test_no_readme_points_outside_the_repository_or_at_future_issues() -> None:
    readmes = [p for p in ROOT.rglob("README.md")
               if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert len(readmes) >= 6
    for path in readmes:
        text = path.read_text()
        assert "../shared" not in text and "ARCHITECTURE.md" not in text, path
        assert "arrives with issue" not in text, path

"""The README's configuration tables name every flag and env var the programs accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from flyte_auth_agent import config as agent
from flyte_auth_exchange import config as exchange
from flyte_auth_injector import config as injector

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("component", [agent, exchange, injector],
                         ids=["agent", "exchange", "injector"])
def test_every_flag_is_in_the_readme(component: object) -> None:
    for opt in component.OPTIONS:  # type: ignore[attr-defined]
        assert f"`{opt.flag}`" in README, opt.flag
        env = opt.env(component.ENV_PREFIX)  # type: ignore[attr-defined]
        short = "..._" + env.removeprefix(component.ENV_PREFIX)  # type: ignore[attr-defined]
        assert env in README or short in README, env

"""The README's configuration tables name every flag and env var the programs accept."""

from __future__ import annotations

import re
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


def _section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n### ", start + len(title))]


@pytest.mark.parametrize("title", ["### Trust model: who can obtain a token for whom",
                                   "### Trust model\n"])
def test_every_test_the_trust_model_names_exists(title: str) -> None:
    """Each claim of the trust model names the test that shows it: the names must be real.
    `file.py::test_x`, `tests/.../file.py::test_x` or a bare `test_x` (found in any test
    file); a case id of the refusal table (`owner-*`) must be one of its ids."""
    text = _section(title)
    sources = {p: p.read_text() for p in ROOT.glob("tests/**/*.py")}
    named = re.findall(r"`(?:[\w/]*?(\w+\.py)::)?(test_\w+)`", text)
    assert len(named) >= 8, named
    for file, name in named:
        where = [p for p, src in sources.items() if re.search(rf"def {name}\(", src)
                 and (not file or p.name == file)]
        assert where, f"{file}::{name} named in the README's trust model does not exist"
    ids = set(re.findall(r'id="([\w-]+)"', sources[ROOT / "tests/exchange/test_exchange.py"]))
    shown_by = [row.split(" | ")[-1] for row in text.splitlines()
                if row.startswith("| `") and row.count(" | ") >= 2]
    for case in re.findall(r"`([a-z]+(?:-[a-z*]+)+)`", " ".join(shown_by)):
        assert case in ids or (case.endswith("*") and any(
            i.startswith(case[:-1]) for i in ids)), f"refusal case {case!r} does not exist"

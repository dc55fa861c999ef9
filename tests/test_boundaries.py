"""The architecture's rules, checked on the source: who may import whom, what stays
stdlib-only, and that each distribution's requirements are exactly what its code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = ("common/pyproject.toml", "pyproject.toml", "flytekit_plugin/pyproject.toml")


def _packages() -> dict[str, Path]:
    """Every package the three distributions ship, by import name (from their pyprojects)."""
    found: dict[str, Path] = {}
    for pyproject in PYPROJECTS:
        doc = tomllib.loads((ROOT / pyproject).read_text())
        for package in doc["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
            path = (ROOT / pyproject).parent / package
            found[path.name] = path
    return found


PACKAGES = _packages()
#: What a task image may load: the contract, the socket client and their helpers.
STDLIB_ONLY = ("contract", "client", "token_command", "jwt", "errors", "options", "converters",
               "command_line", "serving_options",
               "agent_options")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports in functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@cache
def package_imports(package: str) -> frozenset[str]:
    return frozenset().union(*(imports_of(p) for p in PACKAGES[package].rglob("*.py")))


def common_closure(modules: set[str]) -> set[str]:
    """The flyte_auth_common modules `modules` reach, following common's own imports."""
    todo = {m for m in modules if m.startswith("flyte_auth_common.")}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        file = PACKAGES["flyte_auth_common"] / f"{name.split('.')[1]}.py"
        if name in seen or not file.exists():
            continue
        seen.add(name)
        todo |= {m for m in imports_of(file) if m.startswith("flyte_auth_common.")}
    return seen


def third_party(modules: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in PACKAGES
            and t != "__future__"}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_a_component_imports_only_itself_and_the_common_package(package: str) -> None:
    others = set(PACKAGES) - {package, "flyte_auth_common"}
    bad = {m for m in package_imports(package) if m.split(".")[0] in others | {"devstack", "tests"}}
    assert not bad, f"{package} imports {sorted(bad)}"


def test_common_imports_no_component() -> None:
    bad = {m for m in package_imports("flyte_auth_common")
           if m.split(".")[0] in set(PACKAGES) - {"flyte_auth_common"} | {"devstack", "tests"}}
    assert not bad


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_the_contract_client_and_their_helpers_are_stdlib_only(module: str) -> None:
    reached = common_closure({f"flyte_auth_common.{module}"})
    outside = third_party(set().union(*(
        imports_of(PACKAGES["flyte_auth_common"] / f"{m.split('.')[1]}.py") for m in reached)))
    assert not outside, f"flyte_auth_common.{module} reaches {sorted(outside)}"


#: The exchange server's trust core (trust.py, with the guard's shape and the refusal type)
#: imports no I/O library: only the standard library, the stdlib-only kit and each other.
PURE_EXCHANGE = ("trust", "guard", "errors")


@pytest.mark.parametrize("module", PURE_EXCHANGE)
def test_the_exchange_servers_decisions_import_no_io(module: str) -> None:
    package = PACKAGES["flyte_auth_exchange"]
    allowed = {f"flyte_auth_exchange.{m}" for m in PURE_EXCHANGE} | {"flyte_auth_exchange"}
    todo, seen = {f"flyte_auth_exchange.{module}"}, set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for imported in imports_of(package / f"{name.split('.')[1]}.py"):
            top = ".".join(imported.split(".")[:2])
            if top.startswith("flyte_auth_exchange.") and top not in seen and \
                    (package / f"{top.split('.')[1]}.py").exists():
                assert top in allowed, f"{name} imports {top}, which does I/O"
                todo.add(top)
    outside = third_party(set().union(*(imports_of(package / f"{m.split('.')[1]}.py")
                                        for m in seen)))
    reached = common_closure(set().union(*(imports_of(package / f"{m.split('.')[1]}.py")
                                           for m in seen)))
    assert not outside, f"flyte_auth_exchange.{module} reaches {sorted(outside)}"
    assert {m.split(".")[1] for m in reached} <= set(STDLIB_ONLY)


def _name(requirement: str) -> tuple[str, set[str]]:
    """A requirement's normalised distribution name and the extras it asks for."""
    m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", requirement)
    assert m is not None
    extras = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), extras


def _pyproject(path: str) -> dict[str, object]:
    return tomllib.loads((ROOT / path).read_text())["project"]  # type: ignore[no-any-return]


def declared(requirements: list[str]) -> set[str]:
    """Distributions these requirements install directly, with flyte-auth-common's extras
    expanded (their requirements are the component's too)."""
    common = _pyproject("common/pyproject.toml")["optional-dependencies"]
    names: set[str] = set()
    for req in requirements:
        name, extras = _name(req)
        if name == "flyte-auth-common":
            for extra in extras:
                names |= declared(common[extra])  # type: ignore[index]
        else:
            names.add(name)
    return names


#: `google` is a namespace many distributions share: name the one behind each sub-package.
GOOGLE = {"google.protobuf": "protobuf"}


def distributions(modules: set[str]) -> set[str]:
    table = packages_distributions()
    found = {GOOGLE[".".join(m.split(".")[:2])] for m in modules if m.startswith("google.")}
    for top in third_party(modules) - {"google"}:
        assert top in table, f"{top} is imported but no installed distribution provides it"
        found |= {re.sub(r"[-_.]+", "-", d).lower() for d in table[top]}
    return found


COMPONENTS = {
    "agent": ("flyte_auth_agent", "pyproject.toml"),
    "exchange": ("flyte_auth_exchange", "pyproject.toml"),
    "injector": ("flyte_auth_injector", "pyproject.toml"),
    "plugin": ("flytekitplugins", "flytekit_plugin/pyproject.toml"),
}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_requirements_are_exactly_what_the_code_imports(component: str) -> None:
    package, pyproject = COMPONENTS[component]
    project = _pyproject(pyproject)
    requirements = project["dependencies"] if component == "plugin" else \
        project["optional-dependencies"][component]  # type: ignore[index]
    own = set(package_imports(package))
    modules = own | set().union(*(
        imports_of(PACKAGES["flyte_auth_common"] / f"{m.split('.')[1]}.py")
        for m in common_closure(own)))
    needed = distributions(modules)
    listed = declared(requirements)  # type: ignore[arg-type]
    assert needed - listed == set(), f"{component} imports, but does not require, these"
    assert listed - needed == set(), f"{component} requires, but never imports, these"


def test_one_version_source() -> None:
    for path in ("pyproject.toml", "common/pyproject.toml", "flytekit_plugin/pyproject.toml"):
        text = (ROOT / path).read_text()
        assert 'dynamic = ["version"]' in text and "\nversion =" not in text, path
        assert "flyte_auth_common/__init__.py" in text, path


def test_every_shipped_package_is_type_checked() -> None:
    """`make lint` runs mypy on its `files`: each package a distribution ships is among them."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    checked = {ROOT / f for f in mypy["files"]}
    assert {p for p in PACKAGES.values() if p not in checked} == set()
    assert {str(p.parent.relative_to(ROOT)) for p in PACKAGES.values()} <= set(mypy["mypy_path"])

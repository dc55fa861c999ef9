"""`make test`'s task side: task_tests/ on every Python task images run, in a venv per Python
holding what a task image installs: the wheels of flyte-auth-common and
flytekitplugins-auth-agent built from this tree (pip resolving the plugin's pin on the kit),
flytekit where it installs (1.16: Python 3.10 to 3.12), and pytest. The chain the tests talk
to is served by this venv's Python (`python -m devstack --task-env`).

A venv is created once per requirement set (its first run downloads flytekit: about a minute
per Python); each run after that reinstalls only the two wheels, built fresh.

    python -m devstack.task_envs          build the wheels and the venvs
    python -m devstack.task_envs --test   then run task_tests/ in each (extra args: pytest's)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "build" / "task-envs"
WHEELS = ENVS / "wheels"
#: The Pythons task images run besides the servers' 3.11 (tested in the development venv),
#: and whether flytekit 1.16 installs there (the `flyte` SDK's 3.13 images have no flytekit:
#: there the client and the token command are what runs).
PYTHONS = {"3.10": True, "3.12": True, "3.13": False}
TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout")


class TaskEnvError(Exception):
    pass


def say(message: str) -> None:
    print(f"[task envs] {message}", file=sys.stderr, flush=True)


def interpreter(python: str) -> str:
    """An interpreter of `python` ("3.10"): on PATH, else one pyenv installed."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in [shutil.which(f"python{python}"),
                      *sorted(str(p) for p in pyenv.glob(f"{python}.*/bin/python{python}"))]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True,
                                        check=False).returncode == 0:
            return candidate
    raise TaskEnvError(f"no python{python} here: task images run it, so make test runs the "
                       f"task side on it; install it (pyenv install {python}, or your "
                       "distribution's python package)")


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise TaskEnvError(f"`{' '.join(argv)}` failed:\n{tail}")


def wheels() -> dict[str, Path]:
    """The two task-side wheels, built from this tree."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    built = {}
    for directory, name in (("common", "flyte_auth_common"),
                            ("flytekit_plugin", "flytekitplugins_auth_agent")):
        run([sys.executable, "-m", "build", "-q", "--wheel", "--no-isolation", "--outdir",
             str(WHEELS), directory])
        built[name] = next(WHEELS.glob(f"{name}-*.whl"))
    return built


def requirements(flytekit: bool) -> list[str]:
    """pytest and flytekit at this venv's versions: every Python tests the same ones."""
    names = [*TOOLS, *(["flytekit"] if flytekit else [])]
    return [f"{name}=={version(name)}" for name in names]


def prepare(python: str, flytekit: bool, built: dict[str, Path]) -> Path:
    """The venv for `python`, holding the freshly built wheels; its interpreter."""
    env = ENVS / f"py{python}"
    bin_python = env / "bin" / "python"
    pip = [str(bin_python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    ours = [str(built["flyte_auth_common"])]
    if flytekit:
        ours.append(str(built["flytekitplugins_auth_agent"]))
    wanted = "\n".join(requirements(flytekit))
    stamp = env / ".requirements"
    if not stamp.is_file() or stamp.read_text() != wanted:
        say(f"creating {env.relative_to(ROOT)}: {wanted.replace(chr(10), ', ')} (first "
            "run: a minute or so)")
        shutil.rmtree(env, ignore_errors=True)
        run([interpreter(python), "-m", "venv", str(env)])
        run([*pip, *requirements(flytekit), *ours])
        stamp.write_text(wanted)
    else:
        run([*pip, "--no-deps", "--force-reinstall", *ours])
    run([str(bin_python), "-m", "pip", "check"])  # the plugin's pin holds on what is there
    return bin_python


def test(pythons: dict[str, Path], pytest_args: list[str]) -> int:
    failed = []
    for python, bin_python in pythons.items():
        paths = ["task_tests"] if PYTHONS[python] else ["task_tests/test_task_client.py"]
        say(f"task_tests on Python {python} ({', '.join(paths)})")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")} | {
            "FLYTE_AUTH_CHAIN_PYTHON": sys.executable, "FLYTE_AUTH_TASK_ENV": python}
        done = subprocess.run([str(bin_python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *paths, *pytest_args], cwd=ROOT, env=env, check=False)
        if done.returncode != 0:
            failed.append(python)
    if failed:
        say(f"task_tests failed on Python {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    try:
        built = wheels()
        pythons = {python: prepare(python, flytekit, built)
                   for python, flytekit in PYTHONS.items()}
    except TaskEnvError as exc:
        print(f"make test: {exc}", file=sys.stderr)
        return 1
    if argv[:1] == ["--test"]:
        return test(pythons, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The `flyte-auth-agent` command as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from devstack.token_endpoint import TokenEndpoint
from flyte_auth_common import __version__, contract, token_command
from tests.helpers import H

AGENT = str(Path(sys.executable).parent / "flyte-auth-agent")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    return env | extra


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, env=clean_env(**env),
                          timeout=30, check=False)


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []

    async def wait_for(self, event: str) -> dict[str, object]:
        assert self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            assert raw, f"agent exited before logging {event!r}: {self.lines}"
            line: dict[str, object] = json.loads(raw)
            self.lines.append(line)
            if line["event"] == event:
                return line

    async def finish(self) -> tuple[int, str]:
        rest = await self.proc.stderr.read() if self.proc.stderr else b""
        return await self.proc.wait(), json.dumps(self.lines) + rest.decode()


@pytest.fixture
async def agent(sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
                ) -> AsyncIterator[Agent]:
    env = clean_env(FLYTE_AUTH_AGENT_TOKEN_ENDPOINT=endpoint.url)  # env and flags mix
    proc = await asyncio.create_subprocess_exec(
        AGENT, "serve", "--socket", str(sock_path), "--token-file", str(token_file),
        env=env, stderr=asyncio.subprocess.PIPE)
    a = Agent(proc)
    await a.wait_for("agent_started")
    yield a
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_serve_token_status_and_sigterm(agent: Agent, sock_path: Path,
                                              endpoint: TokenEndpoint) -> None:
    token = await asyncio.to_thread(run, "token", "--socket", str(sock_path))
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2 and token.stdout.endswith("\n")
    via_env = await asyncio.to_thread(run, "token", FLYTE_AUTH_AGENT_SOCKET=str(sock_path))
    assert via_env.stdout == token.stdout
    status = await asyncio.to_thread(run, "status", "--socket", str(sock_path))
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "valid"
    assert token.stdout.strip() not in status.stdout

    agent.proc.send_signal(signal.SIGTERM)
    code, logs = await agent.finish()
    assert code == 0
    assert not sock_path.exists()
    assert '"agent_stopped"' in logs
    assert token.stdout.strip() not in logs
    assert endpoint.received[0].form["subject_token"] not in logs


async def test_sigterm_lets_in_flight_requests_finish(sock_path: Path, token_file: Path,
                                                      endpoint: TokenEndpoint) -> None:
    endpoint.gate.clear()  # the cold agent's first exchange will hang until we let it go
    proc = await asyncio.create_subprocess_exec(
        AGENT, "serve", "--socket", str(sock_path), "--token-file", str(token_file),
        "--token-endpoint", endpoint.url, env=clean_env(), stderr=asyncio.subprocess.PIPE)
    agent = Agent(proc)
    await agent.wait_for("agent_started")
    connector = aiohttp.UnixConnector(path=str(sock_path))
    async with aiohttp.ClientSession(connector=connector) as http:
        request = asyncio.create_task(http.get("http://agent/v1/token", headers=H))
        await endpoint.arrived.wait()  # the exchange is in flight and the request waits on it
        proc.send_signal(signal.SIGTERM)
        await agent.wait_for("agent_stopping")
        endpoint.gate.set()
        resp = await request
        assert resp.status == 200
    code, _ = await agent.finish()
    assert code == 0
    assert not sock_path.exists()


def test_token_without_an_agent_says_what_to_check(short_dir: Path) -> None:
    out = run("token", "--socket", str(short_dir / "not-injected/agent.sock"))
    assert out.returncode == 1
    assert out.stdout == ""
    assert "no agent listens on" in out.stderr
    assert "flyte-auth.flyte.org/inject=enabled" in out.stderr
    assert "Traceback" not in out.stderr


async def agent_without_token(sock_path: Path, tmp_path: Path,
                              endpoint: TokenEndpoint) -> Agent:
    """A listening agent whose service-account token file does not exist."""
    agent = Agent(await asyncio.create_subprocess_exec(
        AGENT, "serve", "--socket", str(sock_path), "--token-file", str(tmp_path / "missing"),
        "--token-endpoint", endpoint.url, "--wait-timeout", "0.3",
        env=clean_env(), stderr=asyncio.subprocess.PIPE))
    await agent.wait_for("agent_started")
    return agent


async def test_token_and_status_fail_when_the_agent_has_no_token(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint) -> None:
    agent = await agent_without_token(sock_path, tmp_path, endpoint)
    try:
        token = await asyncio.to_thread(run, "token", "--socket", str(sock_path))
        status = await asyncio.to_thread(run, "status", "--socket", str(sock_path))
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        await agent.finish()
    assert token.returncode == 1
    assert "token_unavailable" in token.stderr and "does not exist" in token.stderr
    assert status.returncode == 1
    shown = json.loads(status.stdout)
    assert shown["state"] == "pending"
    assert "holds no valid token" in status.stderr
    # One wording of why: the agent's `reason`, in its 503, its status and the CLI's line.
    assert "does not exist" in shown["reason"]
    assert shown["reason"] in token.stderr
    assert status.stderr.strip().endswith(shown["reason"])


def test_bad_config_exits_2_with_one_line_per_problem() -> None:
    out = run("serve", "--socket-mode", "abc", "--allowed-uids", "me",
              FLYTE_AUTH_AGENT_GRANT="password")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "flyte-auth-agent: --token-endpoint / FLYTE_AUTH_AGENT_TOKEN_ENDPOINT: set a token "
        "endpoint, or --admin-endpoint / FLYTE_AUTH_AGENT_ADMIN_ENDPOINT to discover it from "
        "FlyteAdmin",
        "flyte-auth-agent: --grant / FLYTE_AUTH_AGENT_GRANT: 'password' is not one of "
        "token-exchange, client-assertion",
        "flyte-auth-agent: --socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE: 'abc' is not an octal "
        "file mode (e.g. 0660)",
        "flyte-auth-agent: --allowed-uids / FLYTE_AUTH_AGENT_ALLOWED_UIDS: 'me' is not a "
        "numeric uid (give a comma-separated list)",
    ]


def test_a_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "agent.sock"
    blocker.write_text("data")
    out = run("serve", "--socket", str(blocker), "--token-endpoint", "http://127.0.0.1:1/t")
    assert out.returncode == 2
    assert "exists and is not a socket" in out.stderr
    assert "Traceback" not in out.stderr
    assert blocker.read_text() == "data"


def test_help_explains_flags_and_env_vars() -> None:
    out = run("serve", "--help")
    assert out.returncode == 0
    text_ = " ".join(out.stdout.split())
    for text in ("--token-file", "FLYTE_AUTH_AGENT_TOKEN_FILE", "--allowed-uids",
                 "FLYTE_AUTH_AGENT_LOG_FORMAT", "--grant {token-exchange,client-assertion}"):
        assert text in text_
    top = run("--help")
    assert "curl -s --unix-socket" in top.stdout


@pytest.mark.parametrize(("program", "argv", "suggestion"), [
    ("flyte-auth-agent", ["serve", "--tokn-file", "x"], "--tokn-file (did you mean "
     "--token-file?)"),
    ("flyte-auth-agent", ["token", "--sockt", "/s"], "--sockt (did you mean --socket?)"),
    ("flyte-auth-exchange", ["serve", "--admin-audiance=http://a"],
     "--admin-audiance=http://a (did you mean --admin-audience?)"),
    ("flyte-auth-injector", ["serve", "--lissen", "x"], "--lissen (did you mean --listen?)"),
])
def test_a_mistyped_flag_gets_the_closest_one_and_the_subcommands_usage(
        program: str, argv: list[str], suggestion: str) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / program), *argv],
                         capture_output=True, text=True, env=clean_env(), timeout=30,
                         check=False)
    assert out.returncode == 2
    assert f"usage: {program} {argv[0]} " in out.stderr  # the subcommand's usage
    assert f"{program} {argv[0]}: error: unrecognized arguments: {suggestion}" in out.stderr


async def test_wait_returns_the_moment_the_agent_holds_a_token(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint) -> None:
    """`wait` (the sidecar's postStart hook) is started before the agent, waits through its
    start and its first exchange, and exits 0 once the token is there, printing nothing."""
    endpoint.gate.clear()  # the first exchange hangs until we let it go
    waiting = await asyncio.create_subprocess_exec(
        AGENT, "wait", "--socket", str(sock_path), "--timeout", "25", env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    proc = await asyncio.create_subprocess_exec(
        AGENT, "serve", "--socket", str(sock_path), "--token-file", str(token_file),
        "--token-endpoint", endpoint.url, env=clean_env(), stderr=asyncio.subprocess.PIPE)
    agent = Agent(proc)
    try:
        await endpoint.arrived.wait()
        waiting_before_the_token = waiting.returncode is None
        endpoint.gate.set()
        out, err = await asyncio.wait_for(waiting.communicate(), 25)
    finally:
        proc.send_signal(signal.SIGTERM)
        await agent.finish()
    assert waiting_before_the_token
    assert (waiting.returncode, out, err) == (0, b"", b"")


async def test_wait_gives_up_after_its_timeout_saying_why(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint) -> None:
    agent = await agent_without_token(sock_path, tmp_path, endpoint)
    try:
        waited = await asyncio.to_thread(run, "wait", "--socket", str(sock_path),
                                         "--timeout", "1")
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        await agent.finish()
    assert waited.returncode == 1
    assert waited.stdout == ""
    assert "no token within 1 s" in waited.stderr and "does not exist" in waited.stderr
    assert "Traceback" not in waited.stderr


def test_wait_without_an_agent_fails_at_once(short_dir: Path) -> None:
    """No socket directory: nothing was injected, and waiting cannot help (the test's own
    timeout would end a wait for the full --timeout)."""
    out = run("wait", "--socket", str(short_dir / "not-injected/agent.sock"), "--timeout", "300")
    assert out.returncode == 1
    assert "flyte-auth.flyte.org/inject=enabled" in out.stderr


def run_token_command(script: Path, args: tuple[str, ...] = (), **env: str,
                      ) -> subprocess.CompletedProcess[str]:
    """As Flyte 2's SDK runs FLYTE_AUTH_COMMAND, with no site-packages (-S): what a task
    image holds of ours is nothing, so the script must run from the copied library alone."""
    return subprocess.run([sys.executable, "-S", str(script), *args], capture_output=True,
                          text=True, env=clean_env(**env), timeout=30, check=False)


async def test_the_agent_writes_a_token_command_any_python_can_run(
        agent: Agent, sock_path: Path) -> None:
    script = sock_path.parent / "flyte-auth-token.py"
    assert script.stat().st_mode & 0o777 == 0o644  # every uid in the pod may read it
    printed = await asyncio.to_thread(run_token_command, script)
    token = await asyncio.to_thread(run, "token", "--socket", str(sock_path))
    assert (printed.returncode, printed.stdout, printed.stderr) == (0, token.stdout, "")
    # It is the agent's own copy: its version is the agent's.
    version = await asyncio.to_thread(run_token_command, script, args=("--version",))
    assert version.stdout == f"flyte-auth-token {__version__}\n"
    # $FLYTE_AUTH_AGENT_SOCKET wins over the socket beside the script (in no directory: the
    # client fails at once rather than wait for a starting agent).
    gone = sock_path.parent / "gone" / "gone.sock"
    moved = await asyncio.to_thread(run_token_command, script, FLYTE_AUTH_AGENT_SOCKET=str(gone))
    assert moved.returncode == 1 and "gone.sock" in moved.stderr


async def test_the_task_command_waits_for_a_starting_agent_to_write_the_script(
        tmp_path: Path) -> None:
    """FLYTE_AUTH_COMMAND may run before the agent wrote its script (token-wait 0): it waits
    while the socket's directory exists, then runs the script; without the directory it
    says what is missing, in one line."""
    argv = shlex.split(token_command.command_line(str(tmp_path)))
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    (tmp_path / "flyte-auth-token.py.tmp").write_text("import sys; print('ran', sys.argv)\n")
    (tmp_path / "flyte-auth-token.py.tmp").rename(tmp_path / contract.TOKEN_COMMAND)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    script = str(tmp_path / contract.TOKEN_COMMAND)
    assert (proc.returncode, out.decode(), err) == (0, f"ran [{script!r}]\n", b"")
    gone = await asyncio.to_thread(
        subprocess.run, shlex.split(token_command.command_line(str(tmp_path / "no-agent"))),
        capture_output=True, text=True, timeout=30, check=False)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("flyte-auth-token: ") and "agent running" in gone.stderr
    assert "Traceback" not in gone.stderr


async def test_the_token_command_without_a_token_says_why_on_stderr_only(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint) -> None:
    agent = await agent_without_token(sock_path, tmp_path, endpoint)
    try:
        printed = await asyncio.to_thread(run_token_command,
                                          sock_path.parent / "flyte-auth-token.py")
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        await agent.finish()
    assert (printed.returncode, printed.stdout) == (1, "")
    assert printed.stderr.startswith("flyte-auth-token: ") and "does not exist" in printed.stderr


@pytest.mark.parametrize("value", ["abc", "-5", "0", "inf", "nan"])
def test_wait_with_a_bad_timeout_says_so_in_one_line(value: str, short_dir: Path) -> None:
    out = run("wait", "--socket", str(short_dir / "agent.sock"), "--timeout", value)
    assert out.returncode == 2
    assert f"argument --timeout: {value!r}" in out.stderr
    assert "Traceback" not in out.stderr

"""Each class of bad input the agent met when tried as an attacker would; every test here
fails without its fix."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from devstack.clock import FakeClock
from devstack.token_endpoint import TokenEndpoint
from flyte_auth_agent.runtime import running_agent
from flyte_auth_agent.tokens import MAX_LIFETIME
from flyte_auth_common import contract, token_command
from flyte_auth_common.client import AgentClient, AgentUnreachableError
from tests.helpers import H, outlive_the_token_endpoint_down
from tests.helpers import agent_config as config


@pytest.mark.parametrize("expires_in", [1e12, float("nan")], ids=["1e12", "nan"])
async def test_an_absurd_expires_in_never_stops_the_refresher(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession, expires_in: float) -> None:
    clock = FakeClock(time.time())
    endpoint.queued.append(lambda _: web.json_response(
        {"access_token": "opaque-1", "token_type": "Bearer", "expires_in": expires_in}))
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock) as agent:
        await clock.next_sleep()
        token = await http.get("/v1/token", headers=H)
        status = await http.get("/v1/status", headers=H)
        health = await http.get("/healthz")
        await clock.run_next()  # the refresher is alive and tries again
        assert agent.source.alive
    assert (status.status, health.status) == (200, 200)
    assert endpoint.count == 2
    if math.isfinite(expires_in):  # 1e12: accepted, held for at most a day
        assert token.status == 200
        assert (await token.json())["expires_in"] <= MAX_LIFETIME
    else:  # NaN: refused as a bad answer
        assert token.status == 503
        assert (await status.json())["last_error"]["kind"] == "bad_response"


async def test_the_refresher_survives_an_unexpected_error(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock) as agent:
        await clock.next_sleep()

        def broken(*_: Any) -> None:
            raise RuntimeError("a bug after the exchange")

        agent.source._observer.exchanged = broken  # type: ignore[union-attr,method-assign]
        with capture_logs() as logs:
            await clock.run_next()
        assert agent.source.alive
        assert (await http.get("/healthz")).status == 200
        assert (await http.get("/v1/token", headers=H)).status == 200
    assert [e["error_type"] for e in logs if e["event"] == "token_refresher_error"] == [
        "RuntimeError"]


async def test_once_expired_and_failing_a_request_is_answered_at_once(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    """With --wait-timeout 600, a waiting request would hang the test; it must not wait."""
    endpoint.lifetime = 120
    clock = FakeClock(time.time())
    cfg = config(sock_path, token_file, endpoint, "--wait-timeout", "600")
    async with running_agent(cfg, clock=clock) as agent:
        await outlive_the_token_endpoint_down(agent, clock, endpoint)
        async with asyncio.timeout(60):  # a bound for a broken build, not a wait
            resp = await http.get("/v1/token", headers=H)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1


async def test_a_malformed_request_is_one_log_line_without_a_traceback(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_agent(config(sock_path, token_file, endpoint)):
        with capture_logs() as logs:
            reader, writer = await asyncio.open_unix_connection(str(sock_path))
            writer.write(b"GET /v1/token HTTP/1.1\r\nHost: a\r\nBroken header line\r\n\r\n")
            answer = await reader.read()
            writer.close()
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert [e["error_type"] for e in logs if e["event"] == "http_request_failed"] == [
        "BadHttpMessage"]
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]


async def test_the_loops_exception_handler_is_put_back_when_the_agent_stops(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint) -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    for _ in range(2):  # a second agent in the same loop does not stack another handler
        async with running_agent(config(sock_path, token_file, endpoint)):
            assert loop.get_exception_handler() is not before
        assert loop.get_exception_handler() is before


async def test_a_fifo_as_the_token_file_does_not_block_the_agent(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    async with running_agent(config(sock_path, fifo, endpoint, "--wait-timeout", "0.2")):
        resp = await http.get("/v1/token", headers=H)
        health = await http.get("/healthz")
    assert resp.status == 503
    assert "is not a regular file" in (await resp.json())["error_description"]
    assert health.status == 200


class Backlogged:
    """A socket whose listen backlog is full and that accepts nothing until `serve()`: an
    agent that is busy, not gone."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(0)
        self.fillers: list[socket.socket] = []
        self.thread: threading.Thread | None = None
        while True:  # fill the backlog until connect() would fail with EAGAIN
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                s.close()
                break
            self.fillers.append(s)

    def serve(self) -> None:
        """Accept and answer everything queued, then keep answering."""
        def loop() -> None:
            while True:
                try:
                    conn, _ = self.server.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(5)
                    try:
                        if b"\r\n\r\n" not in conn.recv(65536):
                            continue
                    except OSError:
                        continue
                    body = b'{"access_token":"t","token_type":"Bearer","expires_at":"",' \
                           b'"expires_in":60,"scope":""}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        for s in self.fillers:
            s.close()
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop accepting and wait for the accept thread: shutdown() wakes a blocked accept()
        on Linux (close() alone does not), so no thread outlives the test."""
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        if self.thread is not None:
            self.thread.join(10)
            assert not self.thread.is_alive()


def test_a_busy_agent_makes_the_client_wait_not_fail(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backlogged = Backlogged(short_dir / "busy.sock")
    backing_off = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the client met EAGAIN and backs off
        backing_off.set()
        real_sleep(seconds)

    monkeypatch.setattr("flyte_auth_common.client.time.sleep", sleep)
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(
        AgentClient(str(short_dir / "busy.sock"), timeout=30).token()))
    caller.start()
    try:
        assert backing_off.wait(30)
        backlogged.serve()  # the agent catches up
        caller.join(30)
    finally:
        backlogged.close()
    assert result and result[0]["access_token"] == "t"


def test_a_busy_agent_past_the_timeout_is_a_clear_error(short_dir: Path) -> None:
    backlogged = Backlogged(short_dir / "busy.sock")
    try:
        with pytest.raises(AgentUnreachableError, match="stayed busy"):
            AgentClient(str(short_dir / "busy.sock"), timeout=0.3).token()
    finally:
        backlogged.close()


@pytest.mark.parametrize("max_connections", ["256", "4000"],
                         ids=["capped", "cap-above-the-fd-limit"])
async def test_idle_connections_cannot_starve_the_agent(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        max_connections: str) -> None:
    """The agent as its own process with 1 024 file descriptors; clients connect and send
    nothing. The log stays a few lines. Under the cap, 600 of them: each new connection
    pushes out the one silent longest, so a real client gets its token at its first try, long
    before the idle timeout (30 s) would have freed anything. With the cap above the fd
    limit, 1 100: accept() runs out of descriptors, which is one rate-limited line, not a
    traceback per attempt, and the idle ones are cut off after the idle timeout (3 s here).
    (Past the fd limit asyncio's accept loop keeps trying within one turn, so whatever the
    cap, a burst larger than the fd limit is served only once the idle timeout frees it.)"""
    capped = max_connections == "256"
    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    agent_bin = str(Path(sys.executable).parent / "flyte-auth-agent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")}
    proc = await asyncio.create_subprocess_exec(
        agent_bin, "serve", "--socket", str(sock_path), "--token-file", str(token_file),
        "--token-endpoint", endpoint.url, "--max-connections", max_connections,
        "--idle-timeout", "30" if capped else "3", "--wait-timeout", "1", env=env,
        stderr=asyncio.subprocess.PIPE, preexec_fn=low_fd_limit)
    assert proc.stderr is not None
    log = bytearray()
    started = asyncio.Event()

    async def read_log() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.extend(line)
            if b'"agent_started"' in line:
                started.set()

    reader = asyncio.create_task(read_log())
    idle: list[socket.socket] = []
    try:
        await started.wait()
        for _ in range(600 if capped else 1100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(sock_path))
            except BlockingIOError:  # the backlog is full: the agent is not accepting
                s.close()
                continue
            idle.append(s)
        client = AgentClient(str(sock_path), timeout=2)
        first = await asyncio.to_thread(client.token) if capped else None
        async with asyncio.timeout(60):  # a bound for a broken build
            while first is None:
                try:
                    first = await asyncio.to_thread(client.token)
                except AgentUnreachableError:
                    await asyncio.sleep(0.2)  # poll: the idle ones are cut off after 3 s
        assert first["token_type"] == "Bearer"
        assert proc.returncode is None
    finally:
        for s in idle:
            s.close()
        proc.kill()
        await proc.wait()
        await reader
    lines = bytes(log).splitlines()
    assert len(log) < 64 * 1024, f"{len(lines)} log lines, {len(log)} bytes"
    assert b"Traceback" not in log
    if capped:
        assert b'"connection_evicted"' in log
    else:
        assert b'"accept_out_of_resources"' in log


async def until(condition: Callable[[], bool]) -> None:
    """Run the loop until `condition` holds (a bound on loop turns, not on time)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_connection_with_a_request_in_progress_is_never_pushed_out(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint) -> None:
    """Two connections allowed: one waits for the first token, one is idle. A third pushes
    out the idle one; a fourth, with both remaining busy, is the one closed."""
    endpoint.gate.clear()  # the first exchange waits
    async with running_agent(config(sock_path, token_file, endpoint, "--max-connections",
                                    "2", "--wait-timeout", "20")) as agent:
        waiting = asyncio.create_task(asyncio.to_thread(
            AgentClient(str(sock_path), timeout=20).token))
        await until(lambda: agent.connections.busy == 1)
        idle = socket.socket(socket.AF_UNIX)
        idle.connect(str(sock_path))
        newer = socket.socket(socket.AF_UNIX)
        newer.connect(str(sock_path))
        newer.sendall(b"GET /v1/token HTTP/1.1\r\nHost: x\r\nX-Flyte-Auth-Agent: 1\r\n\r\n")
        await until(lambda: agent.connections.busy == 2)
        assert await asyncio.to_thread(idle.recv, 1) == b""  # pushed out
        third = socket.socket(socket.AF_UNIX)
        third.connect(str(sock_path))
        assert await asyncio.to_thread(third.recv, 1) == b""  # all busy: refused
        endpoint.gate.set()
        body = await waiting
        answer = await asyncio.to_thread(newer.recv, 4096)
        for s in (idle, newer, third):
            s.close()
        refused = agent.api.metrics.refused
    assert body["token_type"] == "Bearer"
    assert answer.startswith(b"HTTP/1.1 200")
    assert refused.labels("evicted_idle")._value.get() == 1
    assert refused.labels("too_many_connections")._value.get() == 1


async def test_an_unexpected_handler_error_is_a_json_500_and_one_line(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    async with running_agent(config(sock_path, token_file, endpoint)) as agent:
        def broken() -> dict[str, Any]:
            raise ValueError("year 33658 is out of range")

        agent.source.status = broken  # type: ignore[method-assign]
        with capture_logs() as logs:
            resp = await http.get("/v1/status", headers=H)
            body = await resp.json()
        token = await http.get("/v1/token", headers=H)
    assert (resp.status, body["error"]) == (500, "internal_error")
    assert [e["error_type"] for e in logs if e["event"] == "request_failed"] == ["ValueError"]
    assert token.status == 200  # the rest of the agent is unaffected


async def test_status_counts_attempts_and_token_endpoint_calls_apart(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    clock = FakeClock(time.time())
    missing = tmp_path / "not-yet"
    async with running_agent(config(sock_path, missing, endpoint), clock=clock):
        await clock.next_sleep()
        await clock.run_next()  # two attempts; the token file is missing for both
        status = await (await http.get("/v1/status", headers=H)).json()
    assert status["attempts"] == 2
    assert status["token_endpoint_calls"] == 0
    assert endpoint.count == 0


async def test_a_token_endpoint_behind_a_private_ca_given_as_pem_text(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    """What the injector gives the agent: the exchange server's CA as FLYTE_AUTH_AGENT_CA_CERT_PEM
    (trusted besides the system store)."""
    import ssl  # noqa: PLC0415

    import trustme  # noqa: PLC0415

    from flyte_auth_agent.config import AgentConfig  # noqa: PLC0415

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    await endpoint.stop()
    url = await endpoint.start(ssl_context=server_ctx)
    assert url.startswith("https://")
    base = ["--socket", str(sock_path), "--token-file", str(token_file), "--token-endpoint",
            url, "--wait-timeout", "10"]
    async with running_agent(AgentConfig.load(base, {
            "FLYTE_AUTH_AGENT_CA_CERT_PEM": ca.cert_pem.bytes().decode()})) as agent:
        assert await agent.source.wait(10) is not None
    clock = FakeClock(time.time())
    async with running_agent(AgentConfig.load(base, {}), clock=clock) as agent:
        await clock.next_sleep()  # the first exchange failed: the CA is not trusted
        error = agent.source.last_error
    assert error is not None
    assert error.kind == "unreachable"
    assert "SSL" in error.message or "certificate" in error.message


def test_a_starting_agent_is_waited_for_while_its_socket_directory_exists(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The injected socket volume exists before the agent binds (a task may start first, and
    an agent may restart): the client waits for it. Deterministic: the agent appears the
    first time the client backs off, so the call succeeds only if it waited."""
    path = short_dir / "agent.sock"
    started: list[Backlogged] = []
    real_sleep = time.sleep

    def agent_comes_up(seconds: float) -> None:
        if not started:
            started.append(Backlogged(path))
            started[0].serve()  # an agent that answers from now on
        real_sleep(seconds)

    monkeypatch.setattr("flyte_auth_common.client.time.sleep", agent_comes_up)
    try:
        assert AgentClient(str(path), timeout=10).token()["access_token"] == "t"
    finally:
        for server in started:
            server.close()
    assert started


def test_an_agent_that_never_binds_is_a_clear_error_after_the_timeout(short_dir: Path) -> None:
    with pytest.raises(AgentUnreachableError, match=r"did not start listening within 0\.2 s"):
        AgentClient(str(short_dir / "agent.sock"), timeout=0.2).token()


@contextlib.asynccontextmanager
async def unix_server(path: Path, answer: bytes, trickle: bool) -> AsyncIterator[None]:
    """Something on the agent's socket that reads a request and writes `answer`: at once, or
    a byte at a time for ever after (each read of the client gets something, so a timeout
    per read never fires)."""
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        if not trickle:
            writer.write(answer)
            await writer.drain()
            writer.close()
            return
        with contextlib.suppress(ConnectionError):
            for byte in itertools.cycle(answer):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the trickle's pace, not a wait for anything

    async with await asyncio.start_unix_server(handle, path=str(path)):
        try:
            yield
        finally:
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "flyte-auth-agent"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_socket_that_trickles_bytes_ends_the_wait_at_its_timeout(
        short_dir: Path) -> None:
    """`wait --timeout 1`, the token command and the plugin share one client: its timeout is
    a deadline for the whole answer."""
    path = short_dir / "agent.sock"
    async with unix_server(path, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 64, trickle=True):
        code, err = await run_cli("wait", "--socket", str(path), "--timeout", "1")
        with pytest.raises(AgentUnreachableError, match=r"did not answer within 0\.5 s"):
            await asyncio.to_thread(AgentClient(str(path), timeout=0.5).token)
    assert code == 1
    assert "did not answer within" in err and "Traceback" not in err


@pytest.mark.parametrize("retry_after", ['"soon"', "NaN", "-1", "1e400", "true"])
async def test_a_503_with_a_retry_after_nobody_expected_is_asked_again(
        short_dir: Path, retry_after: str) -> None:
    path = short_dir / "agent.sock"
    body = ('{"error": "temporarily_unavailable", "error_description": "no token yet", '
            f'"retry_after": {retry_after}}}').encode()
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    async with unix_server(path, answer, trickle=False):
        code, err = await run_cli("wait", "--socket", str(path), "--timeout", "1")
    assert (code, err) == (1, "flyte-auth-agent: no token within 1 s: no token yet\n")


@pytest.mark.parametrize("value", ["1e12", "86401"])
def test_a_timeout_past_a_day_is_a_usage_error(value: str, short_dir: Path) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "flyte-auth-agent"), "wait",
                          "--socket", str(short_dir / "agent.sock"), "--timeout", value],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert "at most 86400 (a day)" in out.stderr and "Traceback" not in out.stderr


def test_links_planted_in_the_socket_volume_redirect_no_write(tmp_path: Path) -> None:
    """Whoever may write the socket's volume could plant links where the agent writes its
    token command; the agent must write only its own files, there."""
    volume, elsewhere = tmp_path / "volume", tmp_path / "elsewhere"
    volume.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "victim"
    victim.write_text("untouched")
    script = volume / contract.TOKEN_COMMAND
    (volume / f"{contract.TOKEN_COMMAND}.tmp").symlink_to(victim)  # the old temporary name
    script.symlink_to(victim)
    (volume / contract.TOKEN_COMMAND_LIB).symlink_to(elsewhere)
    path = token_command.install(str(volume))
    assert victim.read_text() == "untouched"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim"]
    assert path == str(script) and not script.is_symlink()
    assert not (volume / contract.TOKEN_COMMAND_LIB).is_symlink()
    assert script.stat().st_mode & 0o777 == 0o644
    token_command.install(str(volume))  # again, over its own files (an agent restart)
    ran = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True,
                         env={"FLYTE_AUTH_AGENT_SOCKET": str(tmp_path / "none/none.sock")},
                         timeout=30, check=False)
    assert ran.returncode == 1 and ran.stderr.startswith("flyte-auth-token: ")

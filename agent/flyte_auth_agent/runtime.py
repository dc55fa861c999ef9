"""Start and stop the agent: socket, refresher, optional TCP health listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.connections import ConnectionGuard, Limits, quiet_accept_errors
from flyte_auth_agent.exchange import Exchanger, Upstream
from flyte_auth_agent.metrics import AgentMetrics
from flyte_auth_agent.server import AgentAPI, display_url, health_app, socket_app
from flyte_auth_agent.source import Clock, SystemClock, TokenSource
from flyte_auth_common import __version__, contract, token_command
from flyte_auth_common.admin import tls_material
from flyte_auth_common.agent_options import AGENT_ENV, agent_setting
from flyte_auth_common.daemon import app_runner
from flyte_auth_common.errors import ConfigError

log = structlog.get_logger("flyte_auth_agent")

#: How long SIGTERM waits for in-flight requests before closing them.
SHUTDOWN_GRACE = 10.0
_MAX_UNIX_PATH = 107
#: The socket's listen backlog: a burst of task processes connecting at once queues in the
#: kernel instead of failing with EAGAIN.
BACKLOG = 1024


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """A listening-ready socket at `path`; a stale socket file is replaced, anything else
    at that path (a file, a directory, a live agent) is an error that says so."""
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ConfigError([f"{agent_setting('socket')}: {path} is longer than the "
                           f"{_MAX_UNIX_PATH} bytes a Unix socket path may have"])
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError([f"{agent_setting('socket')}: {path} exists and is not "
                               "a socket; remove it or choose another path"])
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by an agent that did not shut down cleanly
        else:
            raise ConfigError([f"{agent_setting('socket')}: another process is "
                               f"already serving on {path}"])
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, mode)
    return sock


def _leave_termination_message(path: Path, reason: str | None) -> None:
    """The kubelet shows this file as the container's last state: a pod held for a token
    says why in `kubectl describe pod`. The kubelet creates it; where nobody did (outside
    Kubernetes) it is not created."""
    if reason is None:
        return
    with contextlib.suppress(OSError), path.open("r+", encoding="utf-8") as file:
        file.write(reason + "\n")
        file.truncate()


def _install_token_command(directory: Path) -> None:
    """The stdlib-only token command beside the socket, for SDKs that run a command (Flyte 2):
    a task needs nothing of ours installed. Flyte 1 tasks do not need it, so a failure to
    write it is a warning, not a reason to stop."""
    try:
        token_command.install(str(directory))
    except OSError as exc:
        log.warning("token_command_not_written", directory=str(directory), error=str(exc))


@dataclass
class RunningAgent:
    config: AgentConfig
    api: AgentAPI
    source: TokenSource[Upstream]
    exchanger: Exchanger
    connections: ConnectionGuard


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, *, clock: Clock | None = None,
                        ) -> AsyncIterator[RunningAgent]:
    """Serve until the block exits; then stop accepting, let in-flight requests finish,
    stop the refresher and remove the socket."""
    clock = clock or SystemClock()
    ssl_ctx, ca_pem = tls_material(
        config.ca_cert_file, f"{agent_setting('ca_cert_file')} (or {AGENT_ENV['ca_cert_pem']})",
        config.ca_cert_pem)
    sock = bind_unix_socket(config.socket, config.socket_mode)
    metrics = AgentMetrics()
    # The exchange server reads the agent's version from it (the skew rule, README: Versions).
    session = aiohttp.ClientSession(
        headers={"User-Agent": f"{contract.AGENT_PRODUCT}/{__version__}"})
    exchanger = Exchanger(config, session, clock, ssl_ctx=ssl_ctx, ca_pem=ca_pem)
    source = TokenSource(exchanger.fetch, exchanger.resolve,
                         upstream=exchanger.configured_upstream(), clock=clock, observer=metrics)
    api = AgentAPI(config, source, exchanger, metrics)
    runners: list[web.AppRunner] = []
    listener: asyncio.Server | None = None
    restore_exception_handler = quiet_accept_errors(asyncio.get_running_loop())
    try:
        source.start()
        guard = ConnectionGuard(Limits(config.max_connections, config.idle_timeout,
                                       config.allowed_uids),
                                on_refused=metrics.refused_connection)
        runner = app_runner(socket_app(api, guard.middleware), shutdown_timeout=SHUTDOWN_GRACE,
                            keepalive_timeout=config.idle_timeout)
        runners.append(runner)
        await runner.setup()
        assert runner.server is not None
        listener = await asyncio.get_running_loop().create_unix_server(
            guard.around(runner.server), sock=sock, backlog=BACKLOG)
        # Before the health port opens: the kubelet's startup probe there starts the task,
        # whose first command may be this script (token-wait 0 waits for nothing else).
        _install_token_command(config.socket.parent)
        if config.health_addr is not None:
            health = app_runner(health_app(api), shutdown_timeout=SHUTDOWN_GRACE)
            runners.append(health)
            await health.setup()
            host, port = config.health_addr
            await web.TCPSite(health, host, port).start()
        log.info("agent_started", socket=str(config.socket), grant=config.grant,
                 token_endpoint=display_url(config.token_endpoint),
                 admin_endpoint=config.admin.host_port if config.admin else None,
                 health_addr=config.health_addr and "{}:{}".format(*config.health_addr))
        yield RunningAgent(config, api, source, exchanger, guard)
    finally:
        log.info("agent_stopping")
        if listener is not None:
            listener.close()  # stop accepting; the runner below closes what is open
        for r in runners:
            await r.cleanup()  # stops listening first, then waits for in-flight requests
        await source.stop()
        _leave_termination_message(config.termination_log, source.stopped_without_token())
        await session.close()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()
        restore_exception_handler()
        log.info("agent_stopped")


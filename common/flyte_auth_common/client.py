"""A stdlib-only client of the agent's socket, for the CLI and the flytekit plugin.

    AgentClientError          the agent could not give an answer
    ├── AgentUnreachableError the socket is missing or nobody listens on it
    └── AgentRefusedError     the agent answered an error (status, error, description)
"""

from __future__ import annotations

import errno
import http.client
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, cast

from flyte_auth_common import contract

__all__ = [
    "MAX_TIMEOUT",
    "AgentClient",
    "AgentClientError",
    "AgentRefusedError",
    "AgentUnreachableError",
    "check_timeout",
    "socket_path_from_env",
]

#: The longest a caller may wait for one answer: a day (longer ones are a mistake, and the
#: platform's timers overflow past about 1e9 s).
MAX_TIMEOUT = 86400.0


class AgentClientError(Exception):
    pass


class AgentUnreachableError(AgentClientError):
    pass


class AgentRefusedError(AgentClientError):
    def __init__(self, status: int, error: str, description: str,
                 retry_after: int | None) -> None:
        super().__init__(f"agent answered HTTP {status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after


def socket_path_from_env(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(contract.SOCKET_ENV) or contract.DEFAULT_SOCKET_PATH


def check_timeout(timeout: float) -> float:
    """`timeout` if it is a usable number of seconds; ValueError saying what is."""
    if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails this too
        raise ValueError(f"{timeout!r} is not a number of seconds above 0 and at most "
                         f"{MAX_TIMEOUT:g} (a day)")
    return timeout


def _seconds(value: object) -> int | None:
    """The agent's `retry_after`, if it is a usable number of seconds (else None: a caller
    falls back to its own pause)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 <= value <= MAX_TIMEOUT:  # NaN and infinities fail this too
        return None
    return math.ceil(value)


class _DeadlineSocket(socket.socket):
    """A Unix socket whose every send and receive ends by one deadline. http.client gives a
    socket's timeout to each call, so a peer that trickles a byte now and then would keep a
    reader waiting forever; this gives each call only the time left."""

    def __init__(self, deadline: float) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self.deadline = deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.settimeout(left)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)


class _UnixConnection(http.client.HTTPConnection):
    """One request to the agent, all of it (connect, send, read) within `timeout`."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._deadline = time.monotonic() + timeout

    def connect(self) -> None:
        """Connect within the timeout. A Unix socket with a timeout is non-blocking, and its
        connect() fails at once with EAGAIN while the agent's listen backlog is full (the
        agent is busy, not gone): try again until the deadline. While the socket's directory
        exists (the volume the injector mounts) but nobody listens yet, the agent is starting
        or restarting: wait for it too. No directory: no agent here, fail at once."""
        deadline = self._deadline
        pause = 0.002
        while True:
            sock = _DeadlineSocket(deadline)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(self._path)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if not os.path.isdir(os.path.dirname(self._path)) or \
                        time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)  # the agent is (re)starting and binds its socket soon
                pause = min(pause * 2, 0.1)
                continue
            except BlockingIOError as exc:
                sock.close()
                if exc.errno != errno.EAGAIN or time.monotonic() + pause > deadline:
                    raise AgentUnreachableError(
                        f"the agent's socket {self._path} stayed busy (its listen backlog "
                        f"full) for {self.timeout:g} s") from None
                time.sleep(pause)  # back off: the agent drains its backlog meanwhile
                pause = min(pause * 2, 0.1)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


def no_token_reason(status: Mapping[str, Any]) -> str:
    """Why the agent whose /v1/status this is holds no valid token, as the agent words it
    (its `reason`; from an agent older than that field, its last error)."""
    last = status.get("last_error")
    return str(status.get("reason") or (last.get("message") if isinstance(last, dict) else None)
               or "the agent gave no reason")


class AgentClient:
    """One request per call on a fresh connection: calls are rare (tokens are cached by
    the caller) and this keeps the client safe to share between threads."""

    def __init__(self, socket_path: str | None = None, timeout: float = 15.0) -> None:
        self.socket_path = socket_path or socket_path_from_env()
        self.timeout = check_timeout(timeout)

    def _get(self, path: str, accept: str = "application/json") -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path, headers={
                contract.REQUIRED_HEADER: contract.REQUIRED_HEADER_VALUE, "Accept": accept})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if os.path.isdir(os.path.dirname(self.socket_path)):
                hint = (f"no agent listens on {self.socket_path}: it did not start listening "
                        f"within {self.timeout:g} s; its container's log says why (kubectl "
                        f"logs POD -c flyte-auth-agent)")
            else:
                hint = (f"no agent listens on {self.socket_path}: is flyte-auth injection "
                        f"enabled for this namespace (label flyte-auth.flyte.org/inject=enabled) "
                        f"and is ${contract.SOCKET_ENV} right?")
            raise AgentUnreachableError(hint) from exc
        except TimeoutError as exc:
            raise AgentUnreachableError(f"the agent on {self.socket_path} did not answer "
                                        f"within {self.timeout:g} s") from exc
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            raise AgentUnreachableError(
                f"the agent on {self.socket_path} closed the connection without answering: it "
                f"does so beyond its --max-connections, and for uids outside its "
                f"--allowed-uids (this process runs as uid {os.getuid()}); its log says which "
                f"(connection_refused)") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachableError(f"talking to the agent on {self.socket_path} failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    def _get_json(self, path: str) -> dict[str, Any]:
        status, body = self._get(path)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise AgentRefusedError(status, "bad_response",
                                    f"{path} answered {len(body)} bytes that are not a JSON "
                                    "object", None)
        if status != 200:
            raise AgentRefusedError(status, str(doc.get("error", "error")),
                                    str(doc.get("error_description", "")),
                                    _seconds(doc.get("retry_after")))
        return doc

    def token(self) -> contract.TokenBody:
        return cast(contract.TokenBody, self._get_json(contract.PATH_TOKEN))

    def config(self) -> contract.ConfigBody:
        return cast(contract.ConfigBody, self._get_json(contract.PATH_CONFIG))

    def status(self) -> dict[str, Any]:
        return self._get_json(contract.PATH_STATUS)

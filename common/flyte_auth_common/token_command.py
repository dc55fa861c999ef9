"""`python3 flyte-auth-token.py`: print the agent's access token on stdout, as SDKs that can
only run a command want it (Flyte 2's FLYTE_AUTH_COMMAND, flytekit's ExternalCommand).

The agent copies this module, the client and the contract (all stdlib-only) beside its
socket, so a task container needs nothing of ours installed: only a Python 3. The socket is
$FLYTE_AUTH_AGENT_SOCKET, else the one beside the script. On failure it prints the reason
on stderr and exits 1; it never prints anything but the token on stdout. `--version` prints
the version of the agent that wrote it (it is the agent's own copy).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sys

from flyte_auth_common import __version__, contract
from flyte_auth_common.client import AgentClient, AgentClientError


def main(script_dir: str, argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"flyte-auth-token {__version__}")
        return 0
    socket_path = os.environ.get(contract.SOCKET_ENV) or os.path.join(script_dir,
                                                                      contract.SOCKET_NAME)
    try:
        token = AgentClient(socket_path).token()["access_token"]
    except AgentClientError as exc:
        print(f"flyte-auth-token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


#: The script the agent writes beside its socket: it puts the copied library first on the
#: path (a task image may hold another version of this package) and runs `main`.
SCRIPT = f'''#!/usr/bin/env python3
"""The flyte-auth agent's token on stdout (see flyte_auth_common.token_command)."""
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, {contract.TOKEN_COMMAND_LIB!r}))
from flyte_auth_common.token_command import main
sys.exit(main(here))
'''
#: What FLYTE_AUTH_COMMAND runs: the script, once it exists. A task may start before its
#: agent has written it (token-wait 0 holds the task for nothing), so, as the client waits for
#: a starting agent's socket, this waits for the script while the socket's directory exists
#: (up to 30 s), then runs it.
LAUNCHER = """import os, runpy, sys, time
script = sys.argv[1]
end = time.monotonic() + 30
while not os.path.exists(script) and os.path.isdir(os.path.dirname(script)) \\
        and time.monotonic() < end:
    time.sleep(0.02)
if not os.path.exists(script):
    sys.exit(f"flyte-auth-token: {script} does not exist: is the flyte-auth agent running "
             "in this pod?")
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


def command_line(directory: str) -> str:
    """FLYTE_AUTH_COMMAND for a socket directory mounted at `directory`, shell-quoted (the
    `flyte` SDK splits it as a shell would)."""
    return shlex.join(["python3", "-c", LAUNCHER, os.path.join(directory, contract.TOKEN_COMMAND)])


#: What the script imports, copied into its library directory.
LIBRARY = ("__init__.py", "contract.py", "client.py", "token_command.py")


def install(directory: str) -> str:
    """Write the script and its library into `directory` (the agent's socket directory), each
    file replaced atomically and readable by every uid; answers the script's path.

    Every name is opened relative to its directory and never through a symbolic link: a
    link planted in the volume would otherwise send the agent's writes anywhere it may
    write. A planted link (or file) where a directory belongs is removed first."""
    here = os.path.dirname(os.path.abspath(__file__))
    top = os.open(directory, _DIRECTORY)
    try:
        lib = _subdirectory(top, contract.TOKEN_COMMAND_LIB)
        try:
            package = _subdirectory(lib, "flyte_auth_common")
            try:
                for name in LIBRARY:
                    _write(package, name, _read(os.path.join(here, name)))
            finally:
                os.close(package)
        finally:
            os.close(lib)
        _write(top, contract.TOKEN_COMMAND, SCRIPT)
    finally:
        os.close(top)
    return os.path.join(directory, contract.TOKEN_COMMAND)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _subdirectory(parent: int, name: str) -> int:
    """A descriptor of the real directory `name` in `parent`, made if missing."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=parent)  # a link or a file: not ours
    os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, _DIRECTORY, dir_fd=parent)


def _write(parent: int, name: str, text: str) -> None:
    """`name` in `parent` holds `text`, mode 0644, replaced in one rename (which replaces a
    link itself, never what it points at)."""
    temp = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(temp, flags, 0o600, dir_fd=parent), "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o644)  # whatever the umask: every uid in the pod reads it
        out.write(text)
    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as source:
        return source.read()

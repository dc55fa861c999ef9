"""`python3 flyte-auth-token.py`: print the agent's access token on stdout, as SDKs that can
only run a command want it (Flyte 2's FLYTE_AUTH_COMMAND, flytekit's ExternalCommand).

The agent copies this module, the client and the contract (all stdlib-only) beside its
socket, so a task container needs nothing of ours installed: only a Python 3. The socket is
$FLYTE_AUTH_AGENT_SOCKET, else the one beside the script. On failure it prints the reason
on stderr and exits 1; it never prints anything but the token on stdout.
"""

from __future__ import annotations

import os
import sys

from flyte_auth_common import contract
from flyte_auth_common.client import AgentClient, AgentClientError


def main(script_dir: str) -> int:
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
#: What the script imports, copied into its library directory.
LIBRARY = ("__init__.py", "contract.py", "client.py", "token_command.py")


def install(directory: str) -> str:
    """Write the script and its library into `directory` (the agent's socket directory), each
    file replaced atomically and readable by every uid; answers the script's path."""
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.join(directory, contract.TOKEN_COMMAND_LIB, "flyte_auth_common")
    os.makedirs(package, mode=0o755, exist_ok=True)
    files = {os.path.join(package, name): _read(os.path.join(here, name)) for name in LIBRARY}
    files[os.path.join(directory, contract.TOKEN_COMMAND)] = SCRIPT
    for path, text in files.items():
        temp = f"{path}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    return os.path.join(directory, contract.TOKEN_COMMAND)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as source:
        return source.read()

"""`flyte-auth-agent`: serve tokens on a Unix socket, or ask a running agent for one.

`token` and `status` import only the standard library, so they start fast when flytekit
runs `flyte-auth-agent token` as its ExternalCommand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from flyte_auth_common import contract
from flyte_auth_common.agent_options import ENV_PREFIX, OPTIONS
from flyte_auth_common.client import (
    AgentClient,
    AgentClientError,
    AgentRefusedError,
    check_timeout,
    no_token_reason,
    socket_path_from_env,
)
from flyte_auth_common.command_line import add_options, command_parser, parse_command_line
from flyte_auth_common.converters import to_positive_float

DESCRIPTION = """\
Sidecar that gives a Flyte task a FlyteAdmin access token with no secret in the task.

It reads the pod's projected service-account token, trades it at an OAuth2 token endpoint
(RFC 8693 token exchange, or an RFC 7523 client assertion), keeps the result fresh, and
serves it on a Unix socket. Every flag can also be set as an env var, shown in [brackets].

debug from the task container:
  curl -s --unix-socket /var/run/flyte-auth/agent.sock -H 'X-Flyte-Auth-Agent: 1' \\
       http://localhost/v1/status
"""


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("flyte-auth-agent", DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the agent (the sidecar's command)",
                           description="Run the agent until SIGTERM.")
    add_options(serve, ENV_PREFIX, OPTIONS)
    socket_help = (f"agent socket [env {contract.SOCKET_ENV}; "
                   f"default {contract.DEFAULT_SOCKET_PATH}]")
    token = sub.add_parser("token", help="print the current token (for flytekit's "
                           "ExternalCommand mode)", description="Print the agent's token.")
    token.add_argument("--socket", help=socket_help)
    token.add_argument("--json", action="store_true", help="print the whole JSON answer")
    status = sub.add_parser("status", help="print the agent's token state (no secrets)",
                            description="Print the agent's /v1/status as JSON.")
    status.add_argument("--socket", help=socket_help)
    wait = sub.add_parser(
        "wait", help="wait until the agent holds a token (the sidecar's postStart hook)",
        description="Exit 0 as soon as the agent holds a token; exit 1 after --timeout "
                    "seconds, printing why it has none. Prints no token.")
    wait.add_argument("--socket", help=socket_help)
    wait.add_argument("--timeout", type=_seconds, default=300.0, metavar="SECONDS",
                      help="how long to wait (default 300)")
    return parser


def _seconds(value: str) -> float:
    """A finite number of seconds above 0, or argparse's one-line usage error saying so."""
    try:
        return check_timeout(to_positive_float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail(message: str, code: int = 1) -> int:
    print(f"flyte-auth-agent: {message}", file=sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    # Imported here: token, status and wait run as hooks and probes, and start light.
    from flyte_auth_agent.config import AgentConfig  # noqa: PLC0415
    from flyte_auth_agent.runtime import running_agent  # noqa: PLC0415
    from flyte_auth_common import daemon  # noqa: PLC0415

    return daemon.run("flyte-auth-agent", lambda: AgentConfig.from_args(args, os.environ),
                      running_agent)


def _wait(socket_path: str, timeout: float) -> int:
    """Until the agent holds a token or `timeout` passes. The agent answers /v1/token as
    soon as its first exchange ends (it holds the request meanwhile), so this returns the
    moment a token is there: no polling period. A refusal says why, and is asked again
    after the agent's Retry-After. An agent the client cannot reach ends the wait at once:
    the client itself waits for a (re)starting agent while the socket's directory exists,
    up to the time left, so asking again could only spin."""
    deadline = time.monotonic() + timeout
    why = "the agent did not start listening"
    while (left := deadline - time.monotonic()) > 0:
        try:
            AgentClient(socket_path, timeout=left).token()
            return 0
        except AgentRefusedError as exc:
            why = exc.description or str(exc)
            time.sleep(min(max(exc.retry_after or 1, 0.1), max(deadline - time.monotonic(), 0)))
        except AgentClientError as exc:
            return _fail(str(exc))
    return _fail(f"no token within {timeout:g} s: {why}")


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(_parser(), argv)
    if args.command == "serve":
        return _serve(args)
    socket_path = args.socket or socket_path_from_env()
    if args.command == "wait":
        return _wait(socket_path, args.timeout)
    client = AgentClient(socket_path)
    try:
        if args.command == "token":
            body = client.token()
            print(json.dumps(body) if args.json else body["access_token"])
        else:
            status = client.status()
            print(json.dumps(status, indent=2))
            if status.get("state") != "valid":
                error = no_token_reason(status)
                return _fail(f"the agent holds no valid token: {error}")
    except AgentClientError as exc:
        return _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

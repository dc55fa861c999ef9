"""`flyte-auth-exchange serve`: the FlyteAdmin-side authority."""

from __future__ import annotations

import os
import sys

from flyte_auth_common import daemon
from flyte_auth_common.command_line import add_options, command_parser, parse_command_line
from flyte_auth_exchange.config import ENV_PREFIX, OPTIONS, ExchangeConfig

DESCRIPTION = """\
Trades a pod's Kubernetes service-account token (RFC 8693 token exchange) for a FlyteAdmin
access token minted for the user who launched the pod's execution.

It validates the token (issuer keys and/or TokenReview), reads the pod, asks FlyteAdmin for
the execution's principal, applies the policy, and signs a JWT FlyteAdmin accepts. Every flag
can also be set as an env var, shown in [brackets].

debug:
  curl -s http://HOST:PORT/.well-known/oauth-authorization-server
  curl -s -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
       -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\
       --data-urlencode subject_token@/var/run/secrets/flyte-auth/token http://HOST:PORT/oauth2/token
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("flyte-auth-exchange", DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the exchange server",
                           description="Run the exchange server until SIGTERM.")
    add_options(serve, ENV_PREFIX, OPTIONS)
    args = parse_command_line(parser, argv)
    from flyte_auth_exchange.runtime import running_exchange  # noqa: PLC0415 - --help stays fast

    return daemon.run("flyte-auth-exchange", lambda: ExchangeConfig.from_args(args, os.environ),
                      running_exchange)


if __name__ == "__main__":
    sys.exit(main())

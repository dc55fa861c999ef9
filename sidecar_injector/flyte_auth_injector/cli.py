"""`flyte-auth-injector`: the mutating admission webhook, and its registration."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import yaml

from flyte_auth_common import daemon
from flyte_auth_common.command_line import add_options, command_parser, parse_command_line
from flyte_auth_injector.config import ENV_PREFIX, OPTIONS, InjectorConfig
from flyte_auth_injector.webhook_config import webhook_configuration

DESCRIPTION = """\
Adds the flyte-auth agent to every Flyte task pod in namespaces labelled
flyte-auth.flyte.org/inject=enabled: a projected service-account token, a socket volume, the
agent as a native sidecar, and the socket and FLYTE_* env in each task container.

  flyte-auth-injector serve            run the webhook (HTTPS)
  flyte-auth-injector webhook-config   print the MutatingWebhookConfiguration (YAML)
"""


def _serve(args: argparse.Namespace) -> int:
    from flyte_auth_injector.runtime import running_injector  # noqa: PLC0415

    return daemon.run("flyte-auth-injector", lambda: InjectorConfig.from_args(args, os.environ),
                      running_injector)


def _webhook_config(args: argparse.Namespace) -> int:
    ca = args.ca_bundle
    if args.ca_bundle_file:
        try:
            ca = base64.b64encode(Path(args.ca_bundle_file).read_bytes()).decode()
        except OSError as exc:
            print(f"flyte-auth-injector: --ca-bundle-file {args.ca_bundle_file}: cannot be read "
                  f"({exc.strerror})", file=sys.stderr)
            return 2
    doc = webhook_configuration(service=args.service, namespace=args.namespace, ca_bundle=ca,
                                failure_policy=args.failure_policy,
                                timeout_seconds=args.timeout_seconds, url=args.url)
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("flyte-auth-injector", DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the webhook",
                           description="Run the webhook until SIGTERM. Every flag can also be "
                                       "set as an env var, shown in [brackets].")
    add_options(serve, ENV_PREFIX, OPTIONS)
    wc = sub.add_parser("webhook-config", help="print the MutatingWebhookConfiguration",
                        description="Print the MutatingWebhookConfiguration as YAML.")
    wc.add_argument("--service", default="flyte-auth-injector", help="the injector's Service")
    wc.add_argument("--namespace", default="flyte-auth",
                    help="the injector's namespace (never injected)")
    wc.add_argument("--url", help="call the webhook at this https URL instead of the Service "
                    "(a webhook outside the cluster, e.g. for tests); ends in /mutate")
    wc.add_argument("--ca-bundle", help="base64 PEM of the CA that signed the serving cert")
    wc.add_argument("--ca-bundle-file", help="PEM file of that CA (encoded for you)")
    wc.add_argument("--failure-policy", choices=("Fail", "Ignore"), default="Fail",
                    help="Fail: no task pod starts while the webhook is down (safe, loud); "
                         "Ignore: pods start without the agent (quiet, tasks fail to auth)")
    wc.add_argument("--timeout-seconds", type=int, default=10, choices=range(1, 31),
                    metavar="1-30", help="how long the API server waits for the webhook")
    args = parse_command_line(parser, argv)
    return _serve(args) if args.command == "serve" else _webhook_config(args)


if __name__ == "__main__":
    sys.exit(main())

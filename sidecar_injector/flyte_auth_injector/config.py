"""The injector's configuration: flags, env vars and an optional YAML file, in that order.

    # --config injector.yaml: the same settings as the flags (underscored), plus
    agent_image: registry.example.com/flyte-auth-agent:0.1.0
    admin_endpoint: flyteadmin.flyte.svc.cluster.local:81
    token_audience: flyte-auth          # the projected token's audience
    token_expiration: 3600
    scopes: all                         # what the agent asks for (space-separated)
    allowed_audiences: [flyte-auth]     # what pod/namespace annotations may choose
    allowed_scopes: [all]
    max_expiration: 86400
    probe_port: 9787
    resources: {requests: {cpu: 5m, memory: 48Mi}, limits: {memory: 128Mi}}
    security_context: {...}             # replaces the locked-down default whole
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from flyte_auth_common import contract
from flyte_auth_common.agent_options import GRANT_CLIENT_ASSERTION, GRANT_TOKEN_EXCHANGE
from flyte_auth_common.command_line import parse_flags
from flyte_auth_common.converters import (
    to_bool,
    to_host_port,
    to_http_url,
    to_path,
    whole_number_in,
)
from flyte_auth_common.errors import ConfigError
from flyte_auth_common.options import LOG_OPTIONS, Option, Settings, option_names
from flyte_auth_common.serving_options import Serving, serving_from, serving_options
from flyte_auth_injector import consts

ENV_PREFIX: Final = "FLYTE_AUTH_INJECTOR_"

OPTIONS = (
    *serving_options("flyte-auth-injector", serves="/mutate",
                     bootstrap_also="set the webhook's caBundle"),
    Option("--webhook-name", "the MutatingWebhookConfiguration whose caBundle "
           "--tls-bootstrap sets", "flyte-auth-injector"),
    Option("--metrics-addr", "plain HTTP address for /metrics, /healthz, /readyz (off if unset)",
           metavar="HOST:PORT"),
    Option("--agent-image", "the agent sidecar's image", consts.DEFAULT_AGENT_IMAGE,
           metavar="IMAGE"),
    Option("--agent-image-pull-policy", "the agent sidecar's imagePullPolicy", "IfNotPresent",
           choices=("IfNotPresent", "Always", "Never")),
    Option("--agent-ca-file", "PEM file the injected agent trusts for the token endpoint and "
           "FlyteAdmin, besides the system store: the exchange server's CA, a private CA of "
           "FlyteAdmin (given to the agent as FLYTE_AUTH_AGENT_CA_CERT_PEM; reloaded on change)",
           metavar="FILE", repeatable=True),
    Option("--admin-endpoint", "FlyteAdmin HOST:PORT for the agent (discovery) and the task's "
           "FLYTE_PLATFORM_URL", metavar="HOST"),
    Option("--admin-insecure", "FlyteAdmin without TLS (FLYTE_PLATFORM_INSECURE=true)",
           is_switch=True),
    Option("--token-endpoint", "token endpoint URL for the agent (else it discovers it)",
           metavar="URL"),
    Option("--authorization-metadata-key", "gRPC header FlyteAdmin reads tokens from (its "
           "grpcAuthorizationHeader); given to the agent with --token-endpoint so it needs no "
           "discovery", contract.DEFAULT_AUTHORIZATION_METADATA_KEY, metavar="HEADER"),
    Option("--token-audience", "audience of the projected service-account token",
           consts.DEFAULT_AUDIENCE),
    Option("--token-expiration", f"expirationSeconds of the projected token "
           f"({consts.MIN_EXPIRATION}-{consts.MAX_EXPIRATION})", str(consts.DEFAULT_EXPIRATION),
           metavar="SECONDS"),
    Option("--token-wait", "seconds a pod's task containers wait for the agent's first token "
           "before the kubelet restarts the agent (the pod's events show the failed hold, "
           f"the agent's last state its reason; 0-{consts.MAX_TOKEN_WAIT}; 0: the task starts "
           "at once and its first call waits for the token)", str(consts.DEFAULT_TOKEN_WAIT),
           metavar="SECONDS"),
    Option("--grant", "the agent's grant", GRANT_TOKEN_EXCHANGE,
           choices=(GRANT_TOKEN_EXCHANGE, GRANT_CLIENT_ASSERTION)),
    Option("--config", "YAML file with these settings and the sidecar's resources and "
           "security context; flags and env vars win over it", metavar="FILE"),
    Option("--namespace", "the injector's own namespace, never injected", "flyte-auth"),
    Option("--kubeconfig", "kubeconfig for reading namespace annotations and, for the connect "
           "guard, pods (default: in-cluster config when in a cluster, else neither is read "
           "and exec/attach on Flyte's pods are refused)", metavar="FILE"),
    Option("--guard-creators", "comma-separated usernames that, besides cluster admins, may "
           "exec, attach, port-forward or proxy to a pod carrying Flyte's claims (the guard "
           "ConfigMap's `creators`: flytepropeller's service account)", "", metavar="USERS"),
    *LOG_OPTIONS,
)

#: How messages name an option: setting("listen") == "--listen / ...LISTEN".
setting = option_names(ENV_PREFIX, OPTIONS)
_FILE_ONLY = {"scopes", "allowed_audiences", "allowed_scopes", "max_expiration", "probe_port",
              "resources", "security_context"}


@dataclass(frozen=True)
class Sidecar:
    """What goes into every injected pod, the same for all of them."""

    image: str
    image_pull_policy: str
    #: Concatenated --agent-ca-file PEMs (None: the system store alone).
    ca_pem: str | None
    admin_endpoint: str | None
    admin_insecure: bool
    token_endpoint: str | None
    authorization_metadata_key: str
    grant: str
    probe_port: int
    resources: Mapping[str, Any]
    security_context: Mapping[str, Any]


@dataclass(frozen=True)
class TokenSettings:
    """Defaults a pod or namespace annotation may override, and the ranges they must keep."""

    audience: str
    expiration: int
    scopes: str
    allowed_audiences: tuple[str, ...]
    allowed_scopes: tuple[str, ...]
    max_expiration: int
    token_wait: int


@dataclass(frozen=True)
class InjectorConfig:
    serving: Serving
    webhook_name: str
    metrics_addr: tuple[str, int] | None
    namespace: str
    kubeconfig: Path | None
    #: Who besides cluster admins may exec/attach/port-forward/proxy to Flyte's pods.
    guard_creators: tuple[str, ...]
    sidecar: Sidecar
    agent_ca_files: tuple[Path, ...]
    tokens: TokenSettings
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> InjectorConfig:
        path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
        doc = _read_file(Path(path)) if path else {}
        fallback = {k: _text(v) for k, v in doc.items() if k not in _FILE_ONLY}
        s = Settings(ENV_PREFIX, OPTIONS, args, environ, fallback)
        unknown = sorted(set(doc) - _FILE_ONLY - {o.dest for o in OPTIONS})
        if unknown:
            s.problem("config", f"unknown setting(s) {', '.join(unknown)} in {path}")
        expiration = s.value("token_expiration", _expiration)
        token_wait = s.value("token_wait", _token_wait)
        serving = serving_from(s)
        audience = s.value("token_audience", str)
        scopes = " ".join(str(doc.get("scopes", "all")).split())
        tokens = TokenSettings(
            audience=audience, expiration=expiration, scopes=scopes, token_wait=token_wait,
            allowed_audiences=_strings(doc, "allowed_audiences", [audience], s),
            allowed_scopes=_strings(doc, "allowed_scopes", scopes.split(), s),
            max_expiration=_int(doc, "max_expiration", consts.MAX_EXPIRATION, s),
        )
        sidecar = Sidecar(
            image=s.value("agent_image", str),
            image_pull_policy=s.value("agent_image_pull_policy", str),
            ca_pem=None,
            admin_endpoint=s.text("admin_endpoint"),
            admin_insecure=s.flag("admin_insecure"),
            token_endpoint=s.get("token_endpoint", to_http_url),
            authorization_metadata_key=s.value("authorization_metadata_key", str),
            grant=s.value("grant", str),
            probe_port=_int(doc, "probe_port", consts.DEFAULT_PROBE_PORT, s),
            resources=_mapping(doc, "resources", consts.DEFAULT_RESOURCES, s),
            security_context=_mapping(doc, "security_context", consts.DEFAULT_SECURITY_CONTEXT,
                                      s),
        )
        ca_files = tuple(Path(v) for v in s.values("agent_ca_file"))
        try:
            sidecar = dataclasses.replace(sidecar, ca_pem=read_ca_pem(ca_files))
        except ConfigError as exc:
            s.problem("agent_ca_file", "; ".join(exc.problems))
        if sidecar.admin_endpoint is None and sidecar.token_endpoint is None:
            s.problem("admin_endpoint", "set FlyteAdmin's endpoint (or at least "
                      "--token-endpoint): the agent needs one to get tokens")
        config = cls(
            serving=serving,
            webhook_name=s.value("webhook_name", str),
            metrics_addr=s.get("metrics_addr", to_host_port),
            namespace=s.value("namespace", str),
            kubeconfig=s.get("kubeconfig", to_path),
            guard_creators=tuple(c.strip() for c in s.value("guard_creators", str).split(",")
                                 if c.strip()),
            sidecar=sidecar, tokens=tokens, agent_ca_files=ca_files,
            log_level=s.value("log_level", str), log_format=s.value("log_format", str),
        )
        s.raise_problems()
        return config

    @classmethod
    def load(cls, argv: list[str], environ: Mapping[str, str] | None = None) -> InjectorConfig:
        """`serve` flags from argv, env from `environ` (default os.environ)."""
        return cls.from_args(parse_flags(ENV_PREFIX, OPTIONS, argv),
                             os.environ if environ is None else environ)


def read_ca_pem(files: tuple[Path, ...]) -> str | None:
    """The PEM certificates of `files`, concatenated; ConfigError names a bad one. A file that
    does not exist yet is skipped: an optional Secret volume (the exchange server's
    bootstrapped CA) appears once its Secret is written, and is read then."""
    parts = []
    for path in files:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path} cannot be read ({type(exc).__name__})"]) from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError([f"{path} holds no PEM certificate"])
        parts.append(text.strip())
    return "\n".join(parts) + "\n" if parts else None


def _expiration(value: str) -> int:
    seconds = whole_number_in(value, consts.MIN_EXPIRATION, consts.MAX_EXPIRATION)
    if seconds is None:
        raise ValueError(f"{value[:40]!r} is not a whole number of seconds between "
                         f"{consts.MIN_EXPIRATION} and {consts.MAX_EXPIRATION}")
    return seconds


def _token_wait(value: str) -> int:
    seconds = whole_number_in(value, 0, consts.MAX_TOKEN_WAIT)
    if seconds is None:
        raise ValueError(f"{value[:40]!r} is not a whole number of seconds between 0 and "
                         f"{consts.MAX_TOKEN_WAIT}")
    return seconds


def _read_file(path: Path) -> dict[str, Any]:
    where = f"--config {path}"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{where}: cannot be read ({exc.strerror})"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{where}: not valid YAML"]) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError([f"{where}: expected a mapping of settings"])
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(to_bool(str(value)))
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _strings(doc: Mapping[str, Any], key: str, default: list[str], s: Settings,
             ) -> tuple[str, ...]:
    value = doc.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        s.problem("config", f"`{key}` must be a list of strings")
        return tuple(default)
    return tuple(value)


def _int(doc: Mapping[str, Any], key: str, default: int, s: Settings) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        s.problem("config", f"`{key}` must be a positive whole number")
        return default
    return value


def _mapping(doc: Mapping[str, Any], key: str, default: Mapping[str, Any], s: Settings,
             ) -> Mapping[str, Any]:
    value = doc.get(key, default)
    if not isinstance(value, dict):
        s.problem("config", f"`{key}` must be a mapping")
        return default
    return value

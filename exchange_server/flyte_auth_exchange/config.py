"""The exchange server's configuration: the option table, and one frozen dataclass."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from flyte_auth_common.admin import AdminEndpoint, parse_admin_endpoint
from flyte_auth_common.command_line import parse_flags
from flyte_auth_common.contract import (
    DEFAULT_NAMESPACE_TEMPLATE,
    DEFAULT_V2_NAMESPACE,
    GUARD_NAME,
)
from flyte_auth_common.converters import (
    to_http_url,
    to_non_negative_float,
    to_path,
    to_positive_float,
    to_positive_int,
)
from flyte_auth_common.options import LOG_OPTIONS, Option, Settings, option_names
from flyte_auth_common.serving_options import Serving, serving_from, serving_options

ENV_PREFIX: Final = "FLYTE_AUTH_EXCHANGE_"
IDENTITY_EXECUTOR: Final = "executor"
IDENTITY_SERVICE_ACCOUNT: Final = "service-account"
POD_SECURITY_BY_LABEL: Final = "label"
POD_SECURITY_CLUSTER_DEFAULT: Final = "cluster-default"
Identity = Literal["executor", "service-account"]

OPTIONS = (
    *serving_options("flyte-auth-exchange", serves="the token endpoint",
                     bootstrap_also="keep the ca.crt agents trust there"),
    Option("--namespace", "this server's namespace (the Secret's and the Service's)",
           "flyte-auth", metavar="NAME"),
    Option("--public-url", "URL clients reach this server at (issuer and token_endpoint in "
           "the metadata; default: from --listen)", metavar="URL"),
    Option("--signing-key", "RSA private key (PEM) that signs minted tokens: FlyteAdmin's "
           "token_rsa_key.pem; with --idp-metadata-url, this server's own key", metavar="PEM"),
    Option("--key-id", "key id put in minted tokens' `kid` and `key_id` headers (default: the "
           "key's RFC 7638 thumbprint, the id FlyteAdmin gives the same key; with another id "
           "FlyteAdmin tries only its first key, which breaks key rotation)", metavar="ID"),
    Option("--admin-audience", "FlyteAdmin's public URL, as in its authorizedUris (External "
           "mode: an entry of its externalAuthServer.allowedAudience); minted tokens carry it "
           "in `aud`", metavar="URL", repeatable=True),
    Option("--idp-metadata-url", "External mode (FlyteAdmin's authServerType: External): the "
           "IdP's metadata document URL (RFC 8414 or OIDC discovery). This server serves it at "
           "<--public-url>/external/.well-known/oauth-authorization-server with jwks_uri naming "
           "the union of the IdP's keys and this server's; FlyteAdmin's "
           "externalAuthServer.baseUrl is then <--public-url>/external/", metavar="URL"),
    Option("--token-lifetime", "lifetime of minted tokens in seconds (a policy may cap it)",
           "3600", metavar="SECONDS"),
    Option("--subject-issuer", "expected `iss` of service-account tokens (the cluster's "
           "--service-account-issuer)", metavar="URL"),
    Option("--subject-audience", "audience service-account tokens must carry (the projected "
           "volume's audience)", "flyte-auth"),
    Option("--subject-jwks", "JWKS file with the service-account issuer's public keys",
           metavar="FILE"),
    Option("--subject-discovery", "OIDC discovery base URL of the service-account issuer; keys "
           "are fetched from its jwks_uri, cached, and refreshed on an unknown kid",
           metavar="URL"),
    Option("--token-review", "also (or, with no keys configured, only) validate subject tokens "
           "with the Kubernetes TokenReview API", is_switch=True),
    Option("--identity", "whose identity minted tokens carry: the executor of the execution "
           "the pod runs, or the pod's service account", IDENTITY_EXECUTOR,
           choices=(IDENTITY_EXECUTOR, IDENTITY_SERVICE_ACCOUNT)),
    Option("--namespace-template", "where Flyte runs an execution's pods: FlyteAdmin's "
           "namespace_mapping.template ({{ project }} and {{ domain }} are replaced); a pod "
           "elsewhere never gets an execution's identity", DEFAULT_NAMESPACE_TEMPLATE,
           metavar="TEMPLATE"),
    Option("--guard", "name of the guard's ValidatingAdmissionPolicy and binding that let "
           "only Flyte write execution labels and change Flyte's pods (NAME-token: only "
           "kubelets get tokens of --subject-audience); executor identity is refused in "
           "namespaces the guard deploy/ ships does not protect", GUARD_NAME, metavar="NAME"),
    Option("--injector-webhook", "the injector's MutatingWebhookConfiguration, whose connect "
           "webhook refuses exec/attach on Flyte's pods (part of the guard)",
           "flyte-auth-injector", metavar="NAME"),
    Option("--pod-security", "how a project namespace is known to enforce Pod Security "
           "baseline or stricter (no hostPath onto other pods' tokens): `label`, its "
           "pod-security.kubernetes.io/enforce label says so; `cluster-default`, the API "
           "server's PodSecurity configuration does for unlabelled namespaces (you vouch for "
           "it: this server cannot read it). A namespace labelled privileged is refused "
           "either way", POD_SECURITY_BY_LABEL,
           choices=(POD_SECURITY_BY_LABEL, POD_SECURITY_CLUSTER_DEFAULT)),
    Option("--admin-endpoint", "FlyteAdmin gRPC HOST:PORT, for GetExecution (executor identity)",
           metavar="HOST"),
    Option("--admin-insecure", "talk to FlyteAdmin without TLS", is_switch=True),
    Option("--runs-url", "Flyte 2: the runs service's URL (the v2 backend's port, in-cluster "
           "or behind its auth proxy), for GetRunDetails (executor identity of Flyte 2 pods)",
           metavar="URL"),
    Option("--v2-namespace", "Flyte 2: the namespace its actions and their pods run in "
           "(actions.kubernetes.namespace); a pod elsewhere never gets a run's identity",
           DEFAULT_V2_NAMESPACE, metavar="NAME"),
    Option("--ca-cert-file", "PEM bundle trusted for FlyteAdmin, the runs service and the "
           "issuer discovery URL", metavar="FILE"),
    Option("--policy", "YAML policy: who may exchange, identity, lifetime cap, scopes "
           "(default: any namespace, --identity, --token-lifetime)", metavar="FILE"),
    Option("--kubeconfig", "kubeconfig for the Kubernetes API (default: in-cluster config)",
           metavar="FILE"),
    Option("--cache-ttl", "seconds a pod -> execution -> principal lookup is reused, and what "
           "the pods of one execution share (its FlyteWorkflow, its launcher: one FlyteAdmin "
           "question per execution); a deleted pod can exchange for at most this long after "
           "deletion (0: no cache)", "5",
           metavar="SECONDS"),
    Option("--clock-skew", "seconds of clock skew tolerated on subject tokens' exp/nbf/iat, "
           "and set back on minted tokens' iat/nbf (FlyteAdmin tolerates none)", "60",
           metavar="SECONDS"),
    Option("--max-inflight", "exchanges decided at once; beyond it a request is answered at "
           "once with 503 temporarily_unavailable and Retry-After: 1 (agents retry with "
           "jitter) instead of queueing into timeouts", "256", metavar="N"),
    *LOG_OPTIONS,
)

#: How messages name an option: setting("listen") == "--listen / ...LISTEN".
setting = option_names(ENV_PREFIX, OPTIONS)


@dataclass(frozen=True)
class ExchangeConfig:
    serving: Serving
    namespace: str
    public_url: str | None  # None: the URL of the bound listener
    signing_key: Path
    key_id: str | None
    admin_audiences: tuple[str, ...]
    idp_metadata_url: str | None  # External mode
    token_lifetime: float
    subject_issuer: str
    subject_audience: str
    subject_jwks: Path | None
    subject_discovery: str | None
    token_review: bool
    identity: Identity
    namespace_template: str
    guard: str
    injector_webhook: str
    pod_security: str
    admin: AdminEndpoint | None
    runs_url: str | None
    v2_namespace: str
    ca_cert_file: Path | None
    policy: Path | None
    kubeconfig: Path | None
    cache_ttl: float
    clock_skew: float
    max_inflight: int
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> ExchangeConfig:
        s = Settings(ENV_PREFIX, OPTIONS, args, environ)
        serving = serving_from(s)
        signing_key = s.get("signing_key", to_path)
        idp_metadata_url = s.get("idp_metadata_url", to_http_url)
        if signing_key is None:
            s.problem("signing_key", "required: the PEM of the RSA key that signs tokens ("
                      + ("External mode: this server's own key, e.g. from openssl genrsa "
                         "-traditional 2048; never FlyteAdmin's)" if idp_metadata_url else
                         "FlyteAdmin's token_rsa_key.pem)"))
        audiences = s.values("admin_audience")
        for aud in audiences if idp_metadata_url is None else ():  # External: any string
            try:
                to_http_url(aud)
            except ValueError as exc:
                s.problem("admin_audience", str(exc))
        if not audiences:
            s.problem("admin_audience", "required: FlyteAdmin's public URL as listed in its "
                      "authorizedUris, e.g. http://flyteadmin.flyte.svc.cluster.local:80")
        issuer = s.text("subject_issuer")
        if issuer is None:
            s.problem("subject_issuer", "required: the cluster's service-account issuer, e.g. "
                      "https://kubernetes.default.svc.cluster.local")
        jwks, discovery = s.get("subject_jwks", to_path), s.get("subject_discovery", to_http_url)
        token_review = s.flag("token_review")
        if jwks is not None and discovery is not None:
            s.problem("subject_jwks", "give --subject-jwks or --subject-discovery, not both")
        if jwks is None and discovery is None and not token_review:
            s.problem("subject_jwks", "no way to validate subject tokens: give --subject-jwks, "
                      "--subject-discovery or --token-review")
        identity: Identity = IDENTITY_SERVICE_ACCOUNT \
            if s.raw("identity") == IDENTITY_SERVICE_ACCOUNT else IDENTITY_EXECUTOR
        s.get("identity", str)  # reports a value outside the choices
        insecure = s.flag("admin_insecure")
        admin = s.get("admin_endpoint", lambda v: parse_admin_endpoint(v, insecure))
        runs_url = _strip_slash(s.get("runs_url", to_http_url))
        config = cls(
            serving=serving,
            namespace=s.value("namespace", str),
            public_url=_strip_slash(s.get("public_url", to_http_url)),
            signing_key=signing_key or Path(),
            key_id=s.text("key_id"),
            admin_audiences=audiences,
            idp_metadata_url=idp_metadata_url,
            token_lifetime=s.value("token_lifetime", to_positive_float),
            subject_issuer=issuer or "",
            subject_audience=s.value("subject_audience", str),
            subject_jwks=jwks, subject_discovery=discovery, token_review=token_review,
            identity=identity,
            namespace_template=s.value("namespace_template", str),
            guard=s.value("guard", str), injector_webhook=s.value("injector_webhook", str),
            pod_security=s.value("pod_security", str),
            admin=admin, runs_url=runs_url,
            v2_namespace=s.value("v2_namespace", str),
            ca_cert_file=s.get("ca_cert_file", to_path),
            policy=s.get("policy", to_path), kubeconfig=s.get("kubeconfig", to_path),
            cache_ttl=s.value("cache_ttl", to_non_negative_float),
            clock_skew=s.value("clock_skew", to_non_negative_float),
            max_inflight=s.value("max_inflight", to_positive_int),
            log_level=s.value("log_level", str),
            log_format=s.value("log_format", str),
        )
        s.raise_problems()
        return config

    def audience_warning(self) -> str | None:
        """Why tasks that dial FlyteAdmin as --admin-endpoint may have their tokens refused:
        FlyteAdmin expects the authorizedUris entry with the dialled hostname (else its first
        entry), and no --admin-audience has that hostname."""
        if self.admin is None or self.idp_metadata_url is not None:
            return None  # External mode: FlyteAdmin takes any allowedAudience entry
        host = urlsplit("//" + self.admin.host_port).hostname
        if any(urlsplit(a).hostname == host for a in self.admin_audiences):
            return None
        return (f"no --admin-audience has the host {host!r} of --admin-endpoint: FlyteAdmin "
                f"expects tasks that dial {self.admin.host_port} to present its authorizedUris "
                f"entry for {host!r}, or its first entry if it lists none; add that URL (e.g. "
                f"http://{host}:80, as in FlyteAdmin's authorizedUris) to --admin-audience")

    @classmethod
    def load(cls, argv: list[str], environ: Mapping[str, str] | None = None) -> ExchangeConfig:
        """`serve` flags from argv, env from `environ` (default os.environ)."""
        return cls.from_args(parse_flags(ENV_PREFIX, OPTIONS, argv),
                             os.environ if environ is None else environ)


def _strip_slash(url: str | None) -> str | None:
    return url.rstrip("/") if url else None


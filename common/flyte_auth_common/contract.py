"""The wire contract: every fact other parts of the system rely on, in one place.

The agent serves it, the socket client and the flytekit plugin consume it, the sidecar
injector writes it into pods, and the exchange server checks Flyte's labels through it.
It imports only the standard library, so a task image can use it without aiohttp or grpc.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Final, Literal, TypedDict

# --- The socket --------------------------------------------------------------------------

#: The directory (a shared emptyDir in a pod) and the name of the agent's socket.
SOCKET_DIR: Final = "/var/run/flyte-auth"
SOCKET_NAME: Final = "agent.sock"
#: Where the agent listens, unless $FLYTE_AUTH_AGENT_SOCKET says otherwise.
DEFAULT_SOCKET_PATH: Final = f"{SOCKET_DIR}/{SOCKET_NAME}"
#: The agent's env vars all start so (flyte_auth_common.agent_options has the table).
AGENT_ENV_PREFIX: Final = "FLYTE_AUTH_AGENT_"
#: Env var naming the socket, read by the agent, its CLI client and the plugin.
SOCKET_ENV: Final = AGENT_ENV_PREFIX + "SOCKET"
#: Where the projected service-account token is mounted (the kubelet rotates it).
TOKEN_DIR: Final = "/var/run/secrets/flyte-auth"
TOKEN_FILE_NAME: Final = "token"
DEFAULT_TOKEN_FILE: Final = f"{TOKEN_DIR}/{TOKEN_FILE_NAME}"

#: Every /v1/* request must carry this header with this value (like GCE's Metadata-Flavor).
REQUIRED_HEADER: Final = "X-Flyte-Auth-Agent"
REQUIRED_HEADER_VALUE: Final = "1"

# --- Versions (README "Versions") ---------------------------------------------------------

#: How many minor versions apart the agent and the exchange server, or a task's plugin and
#: its agent, may be.
MAX_MINOR_SKEW: Final = 1
#: The product the agent names in its User-Agent to the exchange server: "flyte-auth-agent/0.1.0".
AGENT_PRODUCT: Final = "flyte-auth-agent"


def _major_minor(version: str) -> tuple[int, int] | None:
    major, _, rest = version.partition(".")
    minor = rest.partition(".")[0]
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def skew_problem(ours: str, theirs: str, *, we: str, they: str) -> str | None:
    """Why releases `ours` (of `we`) and `theirs` (of `they`) break the skew rule, in one
    line naming both; None if they keep it, or if either is not a release number (nothing
    to judge)."""
    a, b = _major_minor(ours), _major_minor(theirs)
    if a is None or b is None or (a[0] == b[0] and abs(a[1] - b[1]) <= MAX_MINOR_SKEW):
        return None
    return (f"{they} {theirs} and {we} {ours} are more than {MAX_MINOR_SKEW} minor version "
            "apart, which the skew rule does not support: upgrade one minor at a time "
            "(README: Versions)")


# --- Paths ---------------------------------------------------------------------------------

PATH_TOKEN: Final = "/v1/token"
PATH_CONFIG: Final = "/v1/config"
PATH_STATUS: Final = "/v1/status"
PATH_HEALTHZ: Final = "/healthz"
PATH_READYZ: Final = "/readyz"
PATH_METRICS: Final = "/metrics"

# --- Env names the injector writes and flytekit reads --------------------------------------

#: The name under which the flytekit plugin registers (entry-point group `flytekit.auth`).
PLUGIN_AUTH_MODE: Final = "flyte-auth-agent"
ENV_AUTH_MODE: Final = "FLYTE_CREDENTIALS_AUTH_MODE"
ENV_CREDENTIALS_COMMAND: Final = "FLYTE_CREDENTIALS_COMMAND"
ENV_PLATFORM_URL: Final = "FLYTE_PLATFORM_URL"
ENV_PLATFORM_INSECURE: Final = "FLYTE_PLATFORM_INSECURE"
ENV_PLATFORM_CA_CERT: Final = "FLYTE_PLATFORM_CA_CERT_FILE_PATH"
#: Set by flytepropeller in every task pod.
ENV_EXECUTION_ID: Final = "FLYTE_INTERNAL_EXECUTION_ID"
ENV_EXECUTION_PROJECT: Final = "FLYTE_INTERNAL_EXECUTION_PROJECT"
ENV_EXECUTION_DOMAIN: Final = "FLYTE_INTERNAL_EXECUTION_DOMAIN"

#: The `flyte` SDK (Flyte 2) has no authenticator plugins; in a task pod it runs the command
#: these name (flyte/_initialize.py `_auth_overrides_from_env`; the command is a shell-quoted
#: line or a JSON list, and its stdout is the token).
ENV_V2_AUTH_TYPE: Final = "FLYTE_AUTH_TYPE"
ENV_V2_AUTH_COMMAND: Final = "FLYTE_AUTH_COMMAND"
V2_AUTH_TYPE: Final = "ExternalCommand"
#: With this set true ("true", "t" or "1", any case), the SDK talks plain HTTP to the control
#: plane and installs no authenticator at all: the token command is never run.
ENV_V2_INSECURE: Final = "_U_INSECURE"
#: The agent writes a stdlib-only token command beside its socket, so that a task image
#: needs nothing of ours: `python3 <socket dir>/TOKEN_COMMAND` prints the token. Its library
#: (this package's stdlib-only client) sits in TOKEN_COMMAND_LIB beside it.
TOKEN_COMMAND: Final = "flyte-auth-token.py"
TOKEN_COMMAND_LIB: Final = "flyte-auth-lib"

#: FlyteAdmin's default `authorization_metadata_key` (config `grpcAuthorizationHeader`).
DEFAULT_AUTHORIZATION_METADATA_KEY: Final = "flyte-authorization"

# --- Flyte's pods and the guard that makes their identity fields trustworthy ------------

#: Labels flytepropeller writes on every task pod; the exchange server maps a pod to its
#: execution through them, so only Flyte may write them (the guard below).
LABEL_EXECUTION_ID: Final = "execution-id"
LABEL_PROJECT: Final = "project"
LABEL_DOMAIN: Final = "domain"
#: The launching user's `sub`, sanitised into a label value, when propeller sets it.
LABEL_EXECUTION_IDENTITY: Final = "execution-identity"
GUARDED_LABELS: Final = (LABEL_EXECUTION_ID, LABEL_PROJECT, LABEL_DOMAIN, LABEL_EXECUTION_IDENTITY)
#: Flyte 2's executor labels every task pod with its run and action (sanitised;
#: executor/pkg/plugin/task_exec_metadata.go); a pod with both is a Flyte 2 task pod.
LABEL_V2_RUN: Final = "run"
LABEL_V2_ACTION: Final = "action"
#: FlyteAdmin creates one FlyteWorkflow per execution; propeller makes it each pod's controller.
FLYTEWORKFLOW_GROUP: Final = "flyte.lyft.com"
FLYTEWORKFLOW_VERSION: Final = "v1alpha1"
FLYTEWORKFLOW_PLURAL: Final = "flyteworkflows"
#: Flyte 2's runs service creates one TaskAction per action, in one namespace
#: (actions.kubernetes.namespace, default "flyte"); the executor makes it each pod's controller.
TASKACTION_GROUP: Final = "flyte.org"
TASKACTION_VERSION: Final = "v1"
TASKACTION_PLURAL: Final = "taskactions"
TASKACTION_KIND: Final = "TaskAction"
DEFAULT_V2_NAMESPACE: Final = "flyte"
#: Flyte 2's run service, over Connect's unary protocol (POST, body the protobuf message).
V2_GET_RUN_DETAILS_PATH: Final = "/flyteidl2.workflow.RunService/GetRunDetails"
#: FlyteAdmin's namespace_mapping.template default: where an execution's objects live.
DEFAULT_NAMESPACE_TEMPLATE: Final = "{{ project }}-{{ domain }}"
#: Namespace label an operator sets to enable injection (and the guard).
NAMESPACE_LABEL: Final = "flyte-auth.flyte.org/inject"
NAMESPACE_LABEL_VALUE: Final = "enabled"
#: Pod Security admission's label: the level enforced on a namespace's pods. Executor
#: identity needs `baseline` or stricter there (no hostPath onto the node's other pods, no
#: privileged containers, no host namespaces), or a project user's own pod could read
#: another pod's token or socket from the node.
POD_SECURITY_LABEL: Final = "pod-security.kubernetes.io/enforce"
POD_SECURITY_LEVELS: Final = ("baseline", "restricted")
#: What an operator writes on a project namespace to enable it.
ENABLED_NAMESPACE_LABELS: Final = {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE,
                                   POD_SECURITY_LABEL: "baseline"}
#: The ValidatingAdmissionPolicy (and its binding) that lets only Flyte's identities write
#: the guarded labels and Flyte's owner references (FlyteWorkflow, TaskAction) in injected
#: namespaces.
GUARD_NAME: Final = "flyte-auth-execution-labels"
#: The injector's webhook that refuses exec, attach, port-forward and proxy on a pod that
#: carries Flyte's claims (the CEL of a policy cannot see the pod of a CONNECT request).
CONNECT_WEBHOOK_NAME: Final = "connect.flyte-auth.flyte.org"
CONNECT_SUBRESOURCES: Final = ("pods/exec", "pods/attach", "pods/portforward", "pods/proxy")
#: Who may still act as any pod (the guard lets them debug; they could remove it anyway).
CLUSTER_ADMINS_GROUP: Final = "system:masters"


def flyte_claims(meta: object) -> list[str]:
    """The claims a pod's metadata carries, as the guard policy counts them: its guarded
    labels (`label=value`) and its flyte.lyft.com or flyte.org owner references."""
    if not isinstance(meta, dict):
        return []
    labels, owners = meta.get("labels"), meta.get("ownerReferences")
    labels = labels if isinstance(labels, dict) else {}
    owners = owners if isinstance(owners, list) else []
    found = [f"{k}={labels[k]}" for k in GUARDED_LABELS if k in labels]
    return found + [f"owner={r.get('kind')}/{r.get('name')}" for r in owners
                    if isinstance(r, dict) and str(r.get("apiVersion", "")).split("/")[0]
                    in (FLYTEWORKFLOW_GROUP, TASKACTION_GROUP)]

# --- OAuth 2.0 names: RFC 8693 (token exchange), RFC 7523 (JWT client assertion) -------

GRANT_TYPE_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPE_CLIENT_CREDENTIALS: Final = "client_credentials"
CLIENT_ASSERTION_TYPE_JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN: Final = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"

#: The injected agent's health and metrics port is declared under this name (pods off the
#: host's network), so the Prometheus Operator's PodMonitor finds it (it keeps only declared
#: ports).
AGENT_PORT_NAME: Final = "flyte-auth"

# --- JSON shapes ---------------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    """A time as every body here writes it: RFC 3339, UTC, whole seconds."""
    # timezone.utc, not datetime.UTC: task images run this module on Python 3.10 too.
    utc = timezone.utc  # noqa: UP017
    return datetime.fromtimestamp(int(ts), tz=utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenBody(TypedDict):
    """`GET /v1/token` → 200."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_at: str  # RFC 3339, UTC, e.g. "2026-11-28T10:00:00Z"
    expires_in: int  # seconds from now
    scope: str


class ErrorBody(TypedDict):
    """Any 4xx/5xx from the agent; `retry_after` (seconds) is set on 503."""

    error: str
    error_description: str
    retry_after: int | None


class ConfigBody(TypedDict):
    """`GET /v1/config` → what a client needs to reach FlyteAdmin."""

    endpoint: str | None
    insecure: bool
    ca_cert_file_path: str | None
    authorization_metadata_key: str
    project: str | None
    domain: str | None
    execution_id: str | None
    agent_version: str  # the skew rule: a client may warn (absent from agents older than the field)


# `error` codes the agent answers with.
ERROR_MISSING_HEADER: Final = "missing_header"
ERROR_NO_TOKEN: Final = "token_unavailable"
ERROR_NOT_FOUND: Final = "not_found"
ERROR_INTERNAL: Final = "internal_error"

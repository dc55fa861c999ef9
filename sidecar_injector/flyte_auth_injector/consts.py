"""Every label, annotation, name and default the injector uses, each in one place.

Env names, labels and socket paths come from the wire contract (flyte_auth_common.contract)
and the agent's option table (flyte_auth_common.agent_options).
"""

from __future__ import annotations

from typing import Final

from flyte_auth_common import __version__
from flyte_auth_common.contract import LABEL_EXECUTION_ID, LABEL_V2_ACTION, LABEL_V2_RUN

# --- Selection ---------------------------------------------------------------------------

#: The namespace label that enables injection (contract.NAMESPACE_LABEL) is in the contract:
#: the exchange server checks it too.
#: Every Flyte 1 task pod carries this label (flytepropeller); every Flyte 2 task pod both of
#: the next (the v2 executor). Nothing else is injected.
FLYTE_TASK_LABEL: Final = LABEL_EXECUTION_ID
FLYTE2_TASK_LABELS: Final = (LABEL_V2_RUN, LABEL_V2_ACTION)
#: Namespaces never injected, whatever their labels say.
SYSTEM_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")

# --- Pod (and namespace) annotations --------------------------------------------------------

PREFIX: Final = "flyte-auth.flyte.org/"
#: Pod opt-out: "false" skips the pod.
ANNOTATION_INJECT: Final = PREFIX + "inject"
#: What was injected (JSON), written by the injector.
ANNOTATION_STATUS: Final = PREFIX + "status"
#: Overrides (pod annotation > namespace annotation > injector config), each range-checked.
ANNOTATION_AUDIENCE: Final = PREFIX + "token-audience"
ANNOTATION_EXPIRATION: Final = PREFIX + "token-expiration"
ANNOTATION_SCOPES: Final = PREFIX + "scopes"
#: Seconds the task's containers wait for the agent's first token (0: they do not wait).
ANNOTATION_TOKEN_WAIT: Final = PREFIX + "token-wait"
#: Comma-separated names of init containers that also get the socket and env.
ANNOTATION_INIT_CONTAINERS: Final = PREFIX + "inject-init-containers"

# --- What is added --------------------------------------------------------------------------

SIDECAR_NAME: Final = "flyte-auth-agent"
TOKEN_VOLUME: Final = "flyte-auth-token"
SOCKET_VOLUME: Final = "flyte-auth-socket"
#: The projected token is mounted only into the sidecar, so every user in it may read it
#: (pain: token unreadable for non-root users).
TOKEN_FILE_MODE: Final = 0o444
#: Kubernetes' minimum for expirationSeconds, and our default and ceiling.
MIN_EXPIRATION: Final = 600
DEFAULT_EXPIRATION: Final = 3600
MAX_EXPIRATION: Final = 86400
#: How long the postStart hook holds the task for the first token before the kubelet restarts
#: the agent: a cold image pull and a slow identity provider can take minutes, and a shorter
#: default would restart healthy agents. 0 turns the hold off (the task starts at once).
DEFAULT_TOKEN_WAIT: Final = 300
MAX_TOKEN_WAIT: Final = 3600
DEFAULT_AUDIENCE: Final = "flyte-auth"
#: The agent's TCP health port, for the kubelet's startup and liveness probes.
DEFAULT_PROBE_PORT: Final = 9787
#: The agent image of this release (the injector and the agent ship together).
DEFAULT_AGENT_IMAGE: Final = f"flyte-auth-agent:{__version__}"
#: Measured: steady RSS ~40 MiB (bench/README.md), near-zero CPU between refreshes.
DEFAULT_RESOURCES: Final = {
    "requests": {"cpu": "5m", "memory": "48Mi"},
    "limits": {"memory": "128Mi"},
}
DEFAULT_SECURITY_CONTEXT: Final = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

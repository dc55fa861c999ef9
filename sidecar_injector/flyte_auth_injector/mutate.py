"""The mutation: small pure steps on the pod's raw JSON (selection.py decides whether and
with what settings). Each step is idempotent — run on its own output it changes nothing —
and nothing outside what it adds is touched, so fields this code has never heard of
survive. The patch is the diff of before and after.

Names we add (volumes, the sidecar, mount paths) may collide with the user's: we then take
the next free name (`flyte-auth-token-1`, ...), never the user's item. The status annotation
records the names we took, so a re-run finds and updates exactly our items.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from flyte_auth_common import contract, token_command
from flyte_auth_common.agent_options import AGENT_ENV
from flyte_auth_injector import consts
from flyte_auth_injector.config import Sidecar
from flyte_auth_injector.selection import Json, PodSettings, as_list, as_object, flyte_version

# --- the steps -------------------------------------------------------------------------------


def _named(items: list[Json], name: str) -> int | None:
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            return i
    return None


def _claim(items: list[Json], base: str, body: Callable[[str], Json], owned: str | None, *,
           insert_at: int | None = None, taken: frozenset[str] = frozenset()) -> str:
    """Put our item named `base` (or the next free variant) into `items`; return its name.

    An item we added before (`owned`, from the status annotation) is updated in place;
    an identical item is left alone; a different item of the user's is never touched; a
    name in `taken` (used in a sibling list that shares the namespace) is skipped."""
    if owned is not None and (i := _named(items, owned)) is not None:
        items[i] = body(owned)
        return owned
    n = 0
    while True:
        name = base if n == 0 else f"{base}-{n}"
        i = _named(items, name)
        if i is None and name not in taken:
            if insert_at is None:
                items.append(body(name))
            else:
                items.insert(insert_at, body(name))
            return name
        if i is not None and items[i] == body(name):
            return name
        n += 1


def _own_list(parent: Json, key: str) -> list[Json]:
    """`parent[key]` replaced by a copy this mutation may change (copy-on-write: the input
    pod is never modified, and parts we do not touch are shared, not copied)."""
    value = parent.get(key)
    copied: list[Json] = list(value) if isinstance(value, list) else []
    parent[key] = copied
    return copied


def _own_dict(parent: Json, key: str) -> Json:
    copied = dict(as_object(parent.get(key)))
    parent[key] = copied
    return copied


def token_volume(name: str, settings: PodSettings) -> Json:
    return {"name": name, "projected": {
        "defaultMode": consts.TOKEN_FILE_MODE,
        "sources": [{"serviceAccountToken": {
            "audience": settings.audience,
            "expirationSeconds": settings.expiration,
            "path": contract.TOKEN_FILE_NAME}}]}}


def socket_volume(name: str) -> Json:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}


def _label_env(env: str, label: str) -> Json:
    return {"name": env, "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": f"metadata.labels['{label}']"}}}


def _probes(sidecar: Sidecar, host_network: bool, token_wait: int, *,
            declare_port: bool = True) -> Json:
    """The task's containers start only once the agent holds a token, for at most
    `token_wait` seconds. The hold is a postStart hook, `flyte-auth-agent wait`, as Istio
    holds apps until its proxy is ready: the kubelet starts the next container when the hook
    returns, which is the moment the token arrives (a startupProbe would add up to its period,
    a second, to every pod). After `token_wait` seconds the hook fails (the pod's
    FailedPostStartHook event), the kubelet restarts the agent, and the agent's last state
    carries the reason. `token_wait` 0: no hold at all. The agent's health port, declared by
    name (what a PodMonitor scrapes; not when another container already declares that name or
    number) and probed for liveness, except on the host's network: there two pods' ports
    would collide, so the agent opens none."""
    hold: Json = {} if token_wait == 0 else {"lifecycle": {"postStart": {"exec": {
        "command": ["flyte-auth-agent", "wait", "--timeout", str(token_wait)]}}}}
    if host_network:
        return hold
    port: Json = {"name": contract.AGENT_PORT_NAME, "containerPort": sidecar.probe_port,
                  "protocol": "TCP"}
    return {**hold, **({"ports": [port]} if declare_port else {}), "livenessProbe": {
        "httpGet": {"path": contract.PATH_HEALTHZ, "port": sidecar.probe_port},
        "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}}


def sidecar_container(name: str, sidecar: Sidecar, settings: PodSettings, token_vol: str,
                      socket_vol: str, *, host_network: bool = False,
                      declare_port: bool = True) -> Json:
    agent_settings: list[tuple[str, str]] = [
        ("socket", contract.DEFAULT_SOCKET_PATH),
        ("token_file", contract.DEFAULT_TOKEN_FILE),
        *([] if host_network else [("health_addr", f"0.0.0.0:{sidecar.probe_port}")]),
        ("grant", sidecar.grant),
        ("scope", settings.scopes),
    ]
    if sidecar.token_endpoint:
        agent_settings += [("token_endpoint", sidecar.token_endpoint),
                      ("authorization_metadata_key", sidecar.authorization_metadata_key)]
    if sidecar.ca_pem:
        agent_settings.append(("ca_cert_pem", sidecar.ca_pem))
    if sidecar.admin_endpoint:
        agent_settings += [("admin_endpoint", sidecar.admin_endpoint),
                      ("admin_insecure", str(sidecar.admin_insecure).lower())]
    env: list[Json] = [{"name": AGENT_ENV[dest], "value": value} for dest, value in agent_settings]
    env += [_label_env(contract.ENV_EXECUTION_ID, contract.LABEL_EXECUTION_ID),
            _label_env(contract.ENV_EXECUTION_PROJECT, contract.LABEL_PROJECT),
            _label_env(contract.ENV_EXECUTION_DOMAIN, contract.LABEL_DOMAIN)]
    return {
        "name": name,
        "image": sidecar.image,
        "imagePullPolicy": sidecar.image_pull_policy,
        "command": ["flyte-auth-agent", "serve"],
        "restartPolicy": "Always",  # a native sidecar: ends with the task, starts before it
        "env": env,
        "volumeMounts": [
            {"name": token_vol, "mountPath": contract.TOKEN_DIR, "readOnly": True},
            {"name": socket_vol, "mountPath": contract.SOCKET_DIR},
        ],
        **_probes(sidecar, host_network, settings.token_wait, declare_port=declare_port),
        "resources": copy.deepcopy(dict(sidecar.resources)),
        "securityContext": copy.deepcopy(dict(sidecar.security_context)),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _mount_socket(mounts: list[Json], socket_vol: str) -> str:
    """Our socket mount's path: where it already is, else the first path the user's mounts
    leave free."""
    for m in mounts:
        if isinstance(m, dict) and m.get("name") == socket_vol and m.get("mountPath"):
            return str(m["mountPath"])
    used = {m.get("mountPath") for m in mounts if isinstance(m, dict)}
    path = contract.SOCKET_DIR
    n = 0
    while path in used:
        n += 1
        path = f"{contract.SOCKET_DIR}-{n}"
    mounts.append({"name": socket_vol, "mountPath": path, "readOnly": True})
    return path


def wire_container(container: Json, socket_vol: str, sidecar: Sidecar, flyte: int = 1) -> None:
    """Mount the socket into an app container and set the env it lacks (the user's wins):
    for Flyte 1, flytekit's auth mode (our plugin) and FlyteAdmin's address; for Flyte 2,
    the SDK's ExternalCommand mode running the token command the agent writes beside its
    socket (the SDK has no plugins, and the task image needs nothing of ours)."""
    path = _mount_socket(_own_list(container, "volumeMounts"), socket_vol)
    env = _own_list(container, "env")
    present = {e.get("name") for e in env if isinstance(e, dict)}
    wanted = [(contract.SOCKET_ENV, f"{path}/{contract.SOCKET_NAME}")]
    if flyte == 2:
        wanted += [(contract.ENV_V2_AUTH_TYPE, contract.V2_AUTH_TYPE),
                   (contract.ENV_V2_AUTH_COMMAND, token_command.command_line(path))]
    else:
        wanted.append((contract.ENV_AUTH_MODE, contract.PLUGIN_AUTH_MODE))
        if sidecar.admin_endpoint:
            wanted += [(contract.ENV_PLATFORM_URL, sidecar.admin_endpoint),
                       (contract.ENV_PLATFORM_INSECURE, str(sidecar.admin_insecure).lower())]
    env.extend({"name": k, "value": v} for k, v in wanted if k not in present)


def _owned(pod: Json) -> dict[str, Any]:
    raw = as_object(as_object(pod.get("metadata")).get("annotations")).get(consts.ANNOTATION_STATUS)
    try:
        status = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        status = {}
    return status if isinstance(status, dict) else {}


def inject(pod: Json, sidecar: Sidecar, settings: PodSettings) -> Json:
    """The pod with the agent, its volumes, and the socket and env in every app container."""
    out = dict(pod)
    owned = _owned(out)
    spec = _own_dict(out, "spec")
    volumes = _own_list(spec, "volumes")
    token_vol = _claim(volumes, consts.TOKEN_VOLUME, lambda n: token_volume(n, settings),
                       owned.get("token_volume"))
    socket_vol = _claim(volumes, consts.SOCKET_VOLUME, socket_volume, owned.get("socket_volume"))
    inits = _own_list(spec, "initContainers")
    # Container names are unique across containers, initContainers and ephemeralContainers.
    others = frozenset(str(c.get("name")) for key in ("containers", "ephemeralContainers")
                       for c in as_list(spec.get(key)) if isinstance(c, dict))
    # Port names are unique across the pod's containers: a user's port of our name or number
    # keeps ours undeclared (the agent still listens; a PodMonitor does not see it).
    ports = [as_object(p) for key in ("containers", "initContainers")
             for c in as_list(spec.get(key)) if isinstance(c, dict)
             and c.get("name") != owned.get("sidecar") for p in as_list(c.get("ports"))]
    declare = not any(p.get("name") == contract.AGENT_PORT_NAME or
                      p.get("containerPort") == sidecar.probe_port for p in ports)
    name = _claim(inits, consts.SIDECAR_NAME,
                  lambda n: sidecar_container(n, sidecar, settings, token_vol, socket_vol,
                                              host_network=spec.get("hostNetwork") is True,
                                              declare_port=declare),
                  owned.get("sidecar"), insert_at=0, taken=others)
    containers = _own_list(spec, "containers")
    flyte = flyte_version(as_object(as_object(out.get("metadata")).get("labels"))) or 1
    for i, container in enumerate(containers):
        containers[i] = dict(container)
        wire_container(containers[i], socket_vol, sidecar, flyte)
    for i, container in enumerate(inits):
        if container.get("name") != name and container.get("name") in settings.init_containers:
            inits[i] = dict(container)
            wire_container(inits[i], socket_vol, sidecar, flyte)
    annotations = _own_dict(_own_dict(out, "metadata"), "annotations")
    annotations[consts.ANNOTATION_STATUS] = json.dumps(
        {"version": 1, "sidecar": name, "token_volume": token_vol, "socket_volume": socket_vol,
         "image": sidecar.image}, separators=(",", ":"), sort_keys=True)
    return out

"""Objects the end-to-end suite installs: what deploy/ renders (via the real kustomize), and
flytepropeller's FlyteWorkflow CRD."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.renderers import renderer

ROOT = Path(__file__).resolve().parents[2]

#: flytepropeller's CRD, as flytepropeller/pkg/apis/flyteworkflow/crd.go defines it.
FLYTEWORKFLOW_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "flyteworkflows.flyte.lyft.com"},
    "spec": {"group": "flyte.lyft.com", "scope": "Namespaced",
             "names": {"kind": "FlyteWorkflow", "plural": "flyteworkflows",
                       "singular": "flyteworkflow", "shortNames": ["fly"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


@cache
def rendered() -> str:
    argv = [renderer("kustomize"), "build", "deploy/kustomize/overlays/cert-manager"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def chart(*sets: str) -> list[dict[str, Any]]:
    """The Helm chart rendered with `sets` (NAME=VALUE), as `helm install` would apply it."""
    argv = [renderer("helm"), "template", "flyte-auth", "deploy/helm/flyte-auth", "--namespace",
            "flyte-auth", "--kube-version", "1.30.0", *(a for s in sets for a in ("--set", s))]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rendered_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered()) if d]


def rendered_object(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in rendered_objects()
                if o["kind"] == kind and o["metadata"]["name"] == name)


def replace_flags(rendered_args: list[str], machine: dict[str, list[str]],
                  etc: str = "/etc/") -> list[str]:
    """`rendered_args` with the flags named in `machine` (e.g. admin_endpoint=["HOST:PORT"])
    replaced by this machine's values, every occurrence at once (an empty list drops the
    flag); paths under /etc/ moved under `etc`."""
    args: list[str] = []
    for arg in rendered_args:
        flag, _, value = arg.partition("=")
        if flag.removeprefix("--").replace("-", "_") in machine:
            continue
        args.append(f"{flag}={value.replace('/etc/', etc)}" if value else flag)
    for name, values in machine.items():
        args += [f"--{name.replace('_', '-')}={v}" for v in values]
    return args


def rendered_exchange_args(workdir: Path, **machine: list[str]) -> list[str]:
    """The exchange server's flags as deploy/ renders them (cert-manager overlay), with its
    mounted files written under `workdir` (the policy from its ConfigMap) and the flags named
    in `machine` replaced by this machine's values: the cluster's addresses, the files a
    cluster would mount. Everything else (TLS, TokenReview, executor identity, namespace
    template, policy) stays as rendered."""
    deployment = rendered_object("Deployment", "flyte-auth-exchange")
    policy = rendered_object("ConfigMap", "flyte-auth-exchange-policy")
    (workdir / "etc/flyte-auth/policy").mkdir(parents=True, exist_ok=True)
    (workdir / "etc/flyte-auth/policy/policy.yaml").write_text(policy["data"]["policy.yaml"])
    return replace_flags(deployment["spec"]["template"]["spec"]["containers"][0]["args"],
                         machine, etc=f"{workdir}/etc/")


def node_pod(deployment: dict[str, Any], *, ports: dict[str, int],
             machine: dict[str, list[str]], env: dict[str, str],
             tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod the Deployment's controller would create from its template (this suite runs
    no such controller), for the suite's node: the image, command, volumes, probes and
    security context as rendered; the host's network (no CNI here), so each named port gets
    a free number on the host; the flags in `machine` replaced; `env` added."""
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"] | {"hostNetwork": True, "tolerations": tolerations,
                               "restartPolicy": "Always"}
    [container] = spec["containers"]
    container["args"] = replace_flags(container["args"], machine)
    for port in container["ports"]:
        port["containerPort"] = ports[port["name"]]
    container["env"] = [*container.get("env", []),
                        *({"name": k, "value": v} for k, v in env.items())]
    name = deployment["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-0", "namespace": deployment["metadata"]["namespace"],
                         "labels": template["metadata"]["labels"]},
            "spec": spec}


def rendered_manifests() -> str:
    """What deploy/ installs that the suite needs: RBAC, and the admission guard."""
    out = rendered()
    keep = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding")
    docs = [d for d in out.split("\n---\n") if any(f"kind: {k}\n" in d for k in keep)
            or "name: flyte-auth-guard\n" in d]
    return "\n---\n".join(docs)


def sidecar_env(pod: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The agent's env from the mutated pod spec, label references resolved as the kubelet
    resolves them."""
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "flyte-auth-agent")
    labels = pod["metadata"]["labels"]
    env = {}
    for e in sidecar["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = labels.get(path.split("'")[1], "")
    env.pop("FLYTE_AUTH_AGENT_HEALTH_ADDR", None)
    return env | overrides

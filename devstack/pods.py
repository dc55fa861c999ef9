"""Pods as their creators write them (flytepropeller, a user), and the AdmissionReview the
API server wraps them in: the injector's input in tests, the benchmark and `make run`."""

from __future__ import annotations

import copy
import uuid
from typing import Any

Json = dict[str, Any]


def propeller_pod() -> Json:
    """A task pod as flytepropeller creates it (labels, FLYTE_INTERNAL_* env, resources)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "f3a1b2c4d5e6-n0-0",
            "namespace": "flytesnacks-development",
            "labels": {"execution-id": "f3a1b2c4d5e6", "project": "flytesnacks",
                       "domain": "development", "workflow-name": "wf", "node-id": "n0",
                       "task-name": "my-task", "interruptible": "false",
                       "shard-key": "7", "execution-identity": "alice-example-com"},
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            "ownerReferences": [{"apiVersion": "flyte.lyft.com/v1alpha1", "kind": "flyteworkflow",
                                 "name": "f3a1b2c4d5e6", "uid": "0d9f", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default",
            "containers": [{
                "name": "f3a1b2c4d5e6-n0-0",
                "image": "cr.flyte.org/flyteorg/flytekit:py3.11-1.16.31",
                "args": ["pyflyte-fast-execute", "--", "pyflyte-execute", "--task-module", "m"],
                "env": [
                    {"name": "FLYTE_INTERNAL_EXECUTION_ID", "value": "f3a1b2c4d5e6"},
                    {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                    {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
                    {"name": "FLYTE_ATTEMPT_NUMBER", "value": "0"},
                ],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "500m", "memory": "1Gi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "tolerations": [{"key": "flyte", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def flyte2_pod() -> Json:
    """A task pod as Flyte 2's executor creates it (v2.0.43,
    executor/pkg/plugin/task_exec_metadata.go): run, action and attempt labels, RUN_NAME and
    ACTION_NAME env, controlled by its TaskAction (group flyte.org)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "r8x2k-a0-1",
            "namespace": "flytesnacks-development",
            "labels": {"run": "r8x2k", "action": "a0", "attempt": "1", "task-name": "main",
                       "project": "flytesnacks", "domain": "development",
                       "organization": "local", "flyte.org/managed": "true"},
            "ownerReferences": [{"apiVersion": "flyte.org/v1", "kind": "TaskAction",
                                 "name": "r8x2k-a0", "uid": "7c1e", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default",
            "containers": [{
                "name": "r8x2k-a0-1",
                "image": "ghcr.io/flyteorg/flyte:py3.12-v2.12.1",
                "args": ["a0", "--inputs", "s3://bucket/r8x2k/a0/inputs.pb"],
                "env": [{"name": "ACTION_NAME", "value": "a0"},
                        {"name": "RUN_NAME", "value": "r8x2k"},
                        {"name": "_U_RUN_BASE", "value": "s3://bucket/r8x2k"},
                        {"name": "_U_ORG_NAME", "value": "local"}],
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            }],
        },
    }


def variant(base: Json, **changes: Any) -> Json:
    pod = copy.deepcopy(base)
    for path, value in changes.items():
        target = pod
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
        if value is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return pod


def bare_pod() -> Json:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bare", "labels": {"execution-id": "e1", "project": "p",
                                                    "domain": "development"}},
            "spec": {"containers": [{"name": "main", "image": "python:3.11"}]}}


def busy_pod() -> Json:
    """Existing volumes, env, init containers, and the user's own native sidecar."""
    pod = bare_pod()
    pod["metadata"]["name"] = "busy"
    pod["spec"] |= {
        "volumes": [{"name": "data", "emptyDir": {}},
                    {"name": "config", "configMap": {"name": "cfg"}}],
        "initContainers": [
            {"name": "istio-init", "image": "istio/proxyv2", "args": ["istio-iptables"]},
            {"name": "log-shipper", "image": "fluent-bit", "restartPolicy": "Always"},
            {"name": "fetch", "image": "busybox", "command": ["wget", "x"]},
        ],
    }
    pod["spec"]["containers"][0] |= {
        "env": [{"name": "FLYTE_PLATFORM_URL", "value": "dns:///admin.example:443"},
                {"name": "HOME", "value": "/home/flyte"}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return pod


def admission_review(pod: Json, namespace: str = "flytesnacks-development",
                     operation: str = "CREATE") -> Json:
    """The AdmissionReview the API server sends the injector for `pod`."""
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "operation": operation,
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "object": pod}}

"""The manifests an operator applies: rendered by the real kustomize and helm (built by
`make tools`), validated against the Kubernetes schema, checked for the properties that
matter, and read back through our own config loaders so flags and files stay in step."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flyte_auth_common import contract
from flyte_auth_common.command_line import add_options
from flyte_auth_exchange import config as exchange_config
from flyte_auth_exchange import guard
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.policy import Policy
from flyte_auth_injector import config as injector_config
from tests.renderers import renderer

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.30", "1.37")
#: cert-manager's and the Prometheus Operator's, not in the Kubernetes schema
CRD_KINDS = {"Issuer", "Certificate", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
Obj = dict[str, Any]


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout


@cache
def kustomize(overlay: str) -> tuple[Obj, ...]:
    out = run(renderer("kustomize"), "build", f"deploy/kustomize/overlays/{overlay}")
    return tuple(d for d in yaml.safe_load_all(out) if d)


@cache
def helm(*sets: str) -> tuple[Obj, ...]:
    args = [a for s in sets for a in ("--set", s)]
    out = run(renderer("helm"), "template", "flyte-auth", "deploy/helm/flyte-auth",
              "--namespace", "flyte-auth", "--kube-version", "1.30.0", *args)
    return tuple(d for d in yaml.safe_load_all(out) if d)


def helm_named(release: str, *sets: str) -> tuple[Obj, ...]:
    args = [a for s in sets for a in ("--set", s)]
    out = run(renderer("helm"), "template", release, "deploy/helm/flyte-auth",
              "--namespace", "flyte-auth", "--kube-version", "1.30.0", *args)
    return tuple(d for d in yaml.safe_load_all(out) if d)


def helm_refusal(tmp_path: Path, values: str = "", *sets: str) -> str:
    """What `helm template` says when it refuses these values (it must refuse them)."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(values or "{}\n")
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run([renderer("helm"), "template", "x", "deploy/helm/flyte-auth",
                          "--kube-version", "1.30.0", "-f", str(values_file), *args],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode != 0, out.stdout[:300]
    return out.stderr


RENDERINGS: dict[str, Callable[[], tuple[Obj, ...]]] = {
    "kustomize-cert-manager": lambda: kustomize("cert-manager"),
    "kustomize-self-signed": lambda: kustomize("self-signed"),
    "helm-default": helm,
    "helm-self-signed": lambda: helm("tls.mode=self-signed"),
}
ALL = pytest.mark.parametrize("rendering", list(RENDERINGS))


def by_key(objs: tuple[Obj, ...]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod_specs(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"]


@ALL
def test_every_object_is_valid_for_the_oldest_and_newest_kubernetes(rendering: str) -> None:
    objs = RENDERINGS[rendering]()
    assert objs
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


HELM_ONLY_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/component", "app.kubernetes.io/managed-by",
                    "helm.sh/chart"}


def without_helm_bookkeeping(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    metas = [obj["metadata"]]
    if obj["kind"] == "Deployment":
        metas.append(obj["spec"]["template"]["metadata"])
    for meta in metas:
        for label in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(label, None)
        meta.get("annotations", {}).pop("checksum/config", None)
        if meta.get("annotations") == {}:
            del meta["annotations"]
    return obj


@pytest.mark.parametrize(("kustomized", "helmed"), [
    ("kustomize-cert-manager", "helm-default"),
    ("kustomize-self-signed", "helm-self-signed"),
])
def test_kustomize_and_helm_render_the_same_objects(kustomized: str, helmed: str) -> None:
    """The same objects; Helm adds only its bookkeeping: the release's standard labels and the
    config checksum that rolls pods on `helm upgrade` (kustomize users rely on the reload)."""
    k = by_key(RENDERINGS[kustomized]())
    h = {key: without_helm_bookkeeping(obj) for key, obj in by_key(RENDERINGS[helmed]()).items()}
    k.pop(("Namespace", "flyte-auth"))  # helm installs into a namespace it does not own
    assert sorted(k) == sorted(h)
    for key, obj in k.items():
        assert obj == h[key], key


@ALL
def test_every_container_is_locked_down_probed_and_limited(rendering: str) -> None:
    for spec in pod_specs(RENDERINGS[rendering]()):
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["privileged"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "memory" in c["resources"]["limits"]
            assert "readinessProbe" in c
            assert "livenessProbe" in c


@ALL
def test_deployments_are_highly_available(rendering: str) -> None:
    objs = by_key(RENDERINGS[rendering]())
    for name in ("flyte-auth-injector", "flyte-auth-exchange"):
        deployment = objs[("Deployment", name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert objs[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"] == \
            deployment["spec"]["selector"]["matchLabels"]
        assert objs[("Service", name)]["spec"]["selector"].items() <= labels.items()
        anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert anti["preferredDuringSchedulingIgnoredDuringExecution"]


def rules_of(objs: tuple[Obj, ...]) -> dict[str, list[Obj]]:
    return {o["metadata"]["name"]: o["rules"] for o in objs
            if o["kind"] in ("Role", "ClusterRole")}


@pytest.mark.parametrize("rendering", ["kustomize-cert-manager", "helm-default"])
def test_rbac_is_exactly_what_each_component_needs(rendering: str) -> None:
    assert rules_of(RENDERINGS[rendering]()) == {
        "flyte-auth-injector": [{"apiGroups": [""], "resources": ["namespaces"],
                                 "verbs": ["get", "list", "watch"]},
                                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        "flyte-auth-exchange": [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
             "verbs": ["create"]},
            {"apiGroups": ["flyte.lyft.com"], "resources": ["flyteworkflows"],
             "verbs": ["get"]},
            {"apiGroups": ["flyte.org"], "resources": ["taskactions"], "verbs": ["get"]},
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
             "resourceNames": [contract.GUARD_NAME, f"{contract.GUARD_NAME}-token"],
             "verbs": ["get"]},
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": ["flyte-auth-injector"], "verbs": ["get"]}],
    }


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _decisive(obj: Obj) -> Obj:
    """An object without what renderings may word differently (labels)."""
    return {**obj, "metadata": {"name": obj["metadata"]["name"]}}


@pytest.mark.parametrize(("rendering", "release"), [
    ("kustomize-cert-manager", "flyte-auth"), ("helm-default", "flyte-auth")])
def test_the_guard_deploy_renders_is_the_one_the_exchange_server_checks(
        rendering: str, release: str) -> None:
    """guard.py is the guard's home: both renderings hold exactly its objects, which the
    exchange server compares the live ones with."""
    rendered = [_decisive(o) for o in RENDERINGS[rendering]()
                if o["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")]
    shipped = guard.manifests(f"{release}-execution-labels", f"{release}-guard", "flyte-auth",
                              "flyte-auth")
    assert sorted(rendered, key=_key) == sorted(map(_decisive, shipped), key=_key)


def test_a_renamed_release_renders_the_guard_under_its_names() -> None:
    objs = [o for o in helm_named("prod", "injector.tokenAudience=flyte-prod")
            if o["kind"].startswith("ValidatingAdmissionPolicy")]
    assert sorted(map(_decisive, objs), key=_key) == sorted(map(_decisive, guard.manifests(
        "prod-flyte-auth-execution-labels", "prod-flyte-auth-guard", "flyte-auth",
        "flyte-prod")), key=_key)


@ALL
def test_the_guard_protects_exactly_the_labels_the_exchange_server_trusts(
        rendering: str) -> None:
    objs = by_key(RENDERINGS[rendering]())
    policy = objs[("ValidatingAdmissionPolicy", contract.GUARD_NAME)]["spec"]
    binding = objs[("ValidatingAdmissionPolicyBinding", contract.GUARD_NAME)]["spec"]
    guarded = {v["name"]: v["expression"] for v in policy["variables"]}["guarded"]
    assert yaml.safe_load(guarded) == list(contract.GUARDED_LABELS)
    assert policy["failurePolicy"] == "Fail"
    assert {"CREATE", "UPDATE"} == set(policy["matchConstraints"]["resourceRules"][0][
        "operations"])
    assert binding["policyName"] == contract.GUARD_NAME
    assert binding["validationActions"] == ["Deny"]
    assert binding["matchResources"]["namespaceSelector"]["matchLabels"] == {
        contract.NAMESPACE_LABEL: contract.NAMESPACE_LABEL_VALUE}
    assert binding["paramRef"] == {"name": "flyte-auth-guard", "namespace": "flyte-auth",
                                   "parameterNotFoundAction": "Deny"}
    creators = objs[("ConfigMap", "flyte-auth-guard")]["data"]["creators"]
    assert creators == "system:serviceaccount:flyte:flytepropeller"


def test_helm_refuses_audiences_that_miss_the_host_tasks_dial(tmp_path: Path) -> None:
    stderr = helm_refusal(tmp_path, "", "flyteAdmin.grpcEndpoint=admin.example:443")
    assert 'flyteAdmin.audiences has no URL with host "admin.example"' in stderr
    ok = by_key(helm("flyteAdmin.grpcEndpoint=admin.example:443",
                     "flyteAdmin.audiences={https://admin.example}"))
    args = ok[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--admin-audience=https://admin.example" in args


def test_helm_takes_a_list_of_flyte_creators_and_refuses_a_malformed_one(
        tmp_path: Path) -> None:
    objs = by_key(helm("guard.flyteCreators={system:serviceaccount:flyte:flytepropeller,"
                       "system:serviceaccount:spark:spark-operator}"))
    assert objs[("ConfigMap", "flyte-auth-guard")]["data"]["creators"] == (
        "system:serviceaccount:flyte:flytepropeller,system:serviceaccount:spark:spark-operator")
    assert "/guard/flyteCreators/0" in helm_refusal(tmp_path,
                                                    "guard: {flyteCreators: ['a, b']}\n")


@ALL
def test_no_wildcards_and_secrets_only_for_the_self_signed_certificate(rendering: str) -> None:
    for name, rules in rules_of(RENDERINGS[rendering]()).items():
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (name, rule)
            if "secrets" in rule["resources"]:
                assert rendering.endswith("self-signed")
                assert name in ("flyte-auth-injector-tls", "flyte-auth-exchange-tls")
                assert rule.get("resourceNames", [name]) == [name]  # its own Secret only
                assert set(rule["verbs"]) <= {"get", "update", "create"}


@ALL
def test_the_webhook_registration(rendering: str) -> None:
    objs = by_key(RENDERINGS[rendering]())
    hook = objs[("MutatingWebhookConfiguration", "flyte-auth-injector")]["webhooks"][0]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {"name": "flyte-auth-injector",
                                               "namespace": "flyte-auth", "path": "/mutate",
                                               "port": 443}
    selector = hook["namespaceSelector"]["matchExpressions"]
    assert selector[0] == {"key": "flyte-auth.flyte.org/inject", "operator": "In",
                           "values": ["enabled"]}
    assert {"kube-system", "flyte-auth"} <= set(selector[1]["values"])
    assert [c["name"] for c in hook["matchConditions"]] == ["flyte-task-pods", "not-opted-out"]


def test_the_base_webhook_is_what_webhook_config_prints() -> None:
    printed = run(str(Path(sys.executable).parent / "flyte-auth-injector"), "webhook-config",
                  "--namespace", "flyte-auth")
    assert yaml.safe_load(printed) == yaml.safe_load(
        (ROOT / "deploy/kustomize/base/webhook.yaml").read_text())


def test_cert_manager_certificate_covers_the_service() -> None:
    objs = by_key(kustomize("cert-manager"))
    cert = objs[("Certificate", "flyte-auth-injector")]["spec"]
    assert cert["secretName"] == "flyte-auth-injector-tls"
    assert "flyte-auth-injector.flyte-auth.svc" in cert["dnsNames"]
    hook = objs[("MutatingWebhookConfiguration", "flyte-auth-injector")]
    assert hook["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "flyte-auth/flyte-auth-injector"}


def test_exchange_server_is_reachable_only_from_task_and_flyteadmin_namespaces() -> None:
    policy = by_key(kustomize("cert-manager"))[("NetworkPolicy", "flyte-auth-exchange")]
    sources = policy["spec"]["ingress"][0]["from"]
    assert [s["namespaceSelector"]["matchLabels"] for s in sources] == [
        {"flyte-auth.flyte.org/inject": "enabled"}, {"kubernetes.io/metadata.name": "flyte"},
        {"kubernetes.io/metadata.name": "monitoring"}]


def _parse(options: Any, prefix: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, prefix, options)
    return parser.parse_args(argv)


@ALL
def test_container_args_and_config_files_are_accepted_by_the_programs(rendering: str,
                                                                      tmp_path: Path) -> None:
    """Each Deployment's flags and mounted files, fed to the real config loaders."""
    objs = RENDERINGS[rendering]()
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    for spec in pod_specs(objs):
        container = spec["containers"][0]
        argv = container["args"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        for volume in spec["volumes"]:
            if "configMap" in volume:  # materialise the mounted files under tmp_path
                target = tmp_path / mounts[volume["name"]].lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                for name, text in configmaps[volume["configMap"]["name"]].items():
                    (target / name).write_text(text)
        argv = [a.replace("=/etc/", f"={tmp_path}/etc/") for a in argv]
        if container["command"][0] == "flyte-auth-injector":
            config = injector_config.InjectorConfig.from_args(
                _parse(injector_config.OPTIONS, injector_config.ENV_PREFIX, argv),
                {"FLYTE_AUTH_INJECTOR_NAMESPACE": "flyte-auth"})
            assert config.sidecar.token_endpoint == \
                "https://flyte-auth-exchange.flyte-auth.svc.cluster.local/oauth2/token"
            assert config.agent_ca_files == (tmp_path / "etc/flyte-auth/exchange-ca/ca.crt",)
            assert config.sidecar.image == "flyte-auth-agent:0.1.0"
        else:
            config_x = exchange_config.ExchangeConfig.from_args(
                _parse(exchange_config.OPTIONS, exchange_config.ENV_PREFIX, argv), {})
            assert config_x.token_review
            assert config_x.namespace_template == contract.DEFAULT_NAMESPACE_TEMPLATE
            assert config_x.guard == contract.GUARD_NAME
            assert config_x.policy is not None
            rules = Policy.load(config_x.policy, config_x.identity).rules
            assert rules[0].name == "no-system"
            assert not rules[0].allow


def test_a_malformed_values_file_is_a_clear_render_error(tmp_path: Path) -> None:
    stderr = helm_refusal(tmp_path, "tls: {mode: vault}\ninjector: {tokenExpiration: 60}\n"
                          "flyteAdmin: {grpcEndpoint: 'http://flyteadmin'}\n")
    for where in ("/tls/mode", "/injector/tokenExpiration", "/flyteAdmin/grpcEndpoint"):
        assert where in stderr, where


def test_the_dockerfile_builds_slim_non_root_images_from_the_release_wheels() -> None:
    """What the Dockerfile says; the images it builds are checked as built (make dist's
    check_image, and tests/e2e/test_dist.py on the archives)."""
    text = (ROOT / "deploy/Dockerfile").read_text()
    stages = {s.split(" AS ")[1].split()[0]: s for s in text.split("\nFROM ")[1:]}
    assert set(stages) == {"build", "runtime", "agent", "server"}
    assert "USER 65532:65532" in stages["runtime"]
    for name in ("agent", "server"):
        stage = stages[name]
        assert stage.startswith("runtime AS ")
        assert "pip install" not in stage and "apt-get" not in stage
        assert "COPY --from=build /opt/" in stage
    # The sidecar carries only the agent extra, from the wheels, with no index.
    assert "--no-index --find-links /wheels 'flyte-auth-agent[agent]'" in stages["build"]


def test_the_values_operators_reach_for_reach_the_pods() -> None:
    objs = by_key(helm(
        "imagePullSecrets[0].name=regcred",
        "exchange.nodeSelector.pool=system", "exchange.tolerations[0].key=dedicated",
        "exchange.tolerations[0].operator=Exists", "exchange.priorityClassName=critical",
        "exchange.podAnnotations.team=flyte", "exchange.podLabels.tier=control",
        "injector.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=zone",
        "injector.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "injector.sidecar.imagePullPolicy=Always", "injector.sidecar.resources.limits.memory=64Mi",
        "injector.allowedScopes={all,offline}"))
    exchange = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]
    injector = objs[("Deployment", "flyte-auth-injector")]["spec"]["template"]
    for pod in (exchange, injector):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert exchange["spec"]["nodeSelector"] == {"pool": "system"}
    assert exchange["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert exchange["spec"]["priorityClassName"] == "critical"
    assert exchange["metadata"]["annotations"]["team"] == "flyte"
    assert exchange["metadata"]["labels"]["tier"] == "control"
    assert "nodeAffinity" in injector["spec"]["affinity"]
    for obj in (objs[("Deployment", "flyte-auth-exchange")], objs[("Service",
                                                                   "flyte-auth-exchange")]):
        selector = obj["spec"]["selector"]
        assert "tier" not in selector.get("matchLabels", selector)  # selectors stay stable
    config = yaml.safe_load(objs[("ConfigMap", "flyte-auth-injector-config")]["data"][
        "injector.yaml"])
    assert config["agent_image_pull_policy"] == "Always"
    assert config["resources"]["limits"]["memory"] == "64Mi"
    assert config["allowed_scopes"] == ["all", "offline"]
    for obj in objs.values():
        for version in K8S_VERSIONS:
            if obj["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_pod_security_reaches_the_exchange_server_only_when_not_the_default() -> None:
    def args(*sets: str) -> list[str]:
        deployment = by_key(helm(*sets))[("Deployment", "flyte-auth-exchange")]
        return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])

    assert not any(a.startswith("--pod-security") for a in args())
    assert "--pod-security=cluster-default" in args("exchange.podSecurity=cluster-default")


def test_max_inflight_reaches_the_exchange_server_only_when_set() -> None:
    def args(*sets: str) -> list[str]:
        deployment = by_key(helm(*sets))[("Deployment", "flyte-auth-exchange")]
        return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])

    assert not any(a.startswith("--max-inflight") for a in args())  # the server's default
    assert "--max-inflight=64" in args("exchange.maxInflight=64")


def test_a_wrong_shape_is_a_schema_error_naming_the_value(tmp_path: Path) -> None:
    stderr = helm_refusal(tmp_path, "imagePullSecrets: [regcred]\nexchange: {nodeSelector: "
                          "{pool: 1}}\ninjector: {sidecar: {imagePullPolicy: Sometimes}}\n")
    for where in ("/imagePullSecrets/0", "/exchange/nodeSelector/pool",
                  "/injector/sidecar/imagePullPolicy"):
        assert where in stderr, (where, stderr)


@ALL
def test_disruption_budgets_never_block_a_drain(rendering: str) -> None:
    for obj in RENDERINGS[rendering]():
        if obj["kind"] == "PodDisruptionBudget":
            assert obj["spec"] == {"maxUnavailable": 1, "selector": obj["spec"]["selector"]}


def test_the_injector_config_reaches_the_sidecar(tmp_path: Path) -> None:
    from flyte_auth_injector.mutate import sidecar_container  # noqa: PLC0415

    config = injector_config.InjectorConfig.load(
        ["--agent-image-pull-policy", "Always", "--token-endpoint", "http://x/oauth2/token"], {})
    settings = type("S", (), {"scopes": "all", "audience": "a", "expiration": 600,
                              "token_wait": 300})()
    container = sidecar_container("agent", config.sidecar, settings, "t", "s")
    assert container["imagePullPolicy"] == "Always"


def test_prometheus_objects_are_optional_and_alert_on_metrics_that_exist() -> None:
    import re  # noqa: PLC0415

    assert not [o for o in helm() if o["kind"] in CRD_KINDS - {"Issuer", "Certificate"}]
    objs = by_key(helm("metrics.serviceMonitor.enabled=true",
                       "metrics.prometheusRule.enabled=true",
                       "metrics.agentPodMonitor.enabled=true",
                       "metrics.serviceMonitor.labels.release=prom"))
    for name, port in (("flyte-auth-exchange", "https"), ("flyte-auth-injector", "metrics")):
        monitor = objs[("ServiceMonitor", name)]
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port]
        service_ports = [p["name"] for p in objs[("Service", name)]["spec"]["ports"]]
        assert port in service_ports
    tls = objs[("ServiceMonitor", "flyte-auth-exchange")]["spec"]["endpoints"][0]["tlsConfig"]
    assert tls["ca"] == {"secret": {"name": "flyte-auth-exchange-tls", "key": "ca.crt"}}
    rules = objs[("PrometheusRule", "flyte-auth")]["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "FlyteAuthExchangeRefusing", "FlyteAuthExchangeUnavailable", "FlyteAuthExchangeSlow",
        "FlyteAuthWebhookErrors", "FlyteAuthAgentTokenNearExpiry"}
    sources = "".join(p.read_text() for p in ROOT.glob("*/flyte_auth_*/*.py"))
    for rule in rules:
        for metric in re.findall(r"flyte_auth_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(total|bucket|count|sum)$", "", metric)
            assert f'"{base}"' in sources, (rule["alert"], metric)
        assert "{{ $labels" not in rule["annotations"]["description"]
    assert "{{ $labels.code }}" in rules[0]["annotations"]["summary"]  # for Prometheus
    pods = objs[("PodMonitor", "flyte-auth-agents")]["spec"]["podMetricsEndpoints"][0]
    assert pods["port"] == contract.AGENT_PORT_NAME  # the port the injector declares


def test_every_object_carries_the_standard_labels() -> None:
    on = ("metrics.agentPodMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
          "metrics.serviceMonitor.enabled=true")
    for obj in (*helm(*on), *helm("tls.mode=self-signed"), *helm(*EXTERNAL)):
        labels = obj["metadata"]["labels"]
        assert HELM_ONLY_LABELS | {"app.kubernetes.io/name", "app.kubernetes.io/part-of"} \
            <= set(labels), (obj["kind"], obj["metadata"]["name"])
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_another_release_name_renames_every_object_and_every_reference() -> None:
    out = run(renderer("helm"), "template", "prod", "deploy/helm/flyte-auth",
              "--namespace", "flyte", "--kube-version", "1.30.0")
    objs = by_key(tuple(d for d in yaml.safe_load_all(out) if d))
    names = {name for _, name in objs}
    assert all(n.startswith("prod-flyte-auth") or n == "prod-flyte-auth-exchange"
               for n in names), names
    fixed = out
    for allowed in ("prod-flyte-auth-", "flyte-auth-exchange-signing-key",  # the operator's
                    "helm.sh/chart: flyte-auth-0.1.0", "flyte-auth-agent:0.1.0",  # Secret
                    "flyte-auth-server:0.1.0", "[flyte-auth-exchange, serve]",  # programs
                    "[flyte-auth-injector, serve]", "/var/run/flyte-auth-exchange",  # paths
                    "/var/run/flyte-auth-injector"):
        fixed = fixed.replace(allowed, "")
    assert "flyte-auth-" not in fixed, "an object still names a fixed object"
    exchange = objs[("Deployment", "prod-flyte-auth-exchange")]["spec"]["template"]["spec"]
    assert exchange["containers"][0]["command"] == ["flyte-auth-exchange", "serve"]
    injector = objs[("Deployment", "prod-flyte-auth-injector")]["spec"]["template"]["spec"]
    assert injector["containers"][0]["command"] == ["flyte-auth-injector", "serve"]
    args = exchange["containers"][0]["args"]
    assert "--guard=prod-flyte-auth-execution-labels" in args
    assert ("ValidatingAdmissionPolicy", "prod-flyte-auth-execution-labels") in objs
    hook = objs[("MutatingWebhookConfiguration", "prod-flyte-auth-injector")]["webhooks"][0]
    assert hook["clientConfig"]["service"]["name"] == "prod-flyte-auth-injector"
    assert ("Service", "prod-flyte-auth-injector") in objs
    config = yaml.safe_load(objs[("ConfigMap", "prod-flyte-auth-injector-config")]["data"][
        "injector.yaml"])
    assert config["token_endpoint"].startswith("https://prod-flyte-auth-exchange.flyte.svc")
    selector = objs[("Deployment", "prod-flyte-auth-exchange")]["spec"]["selector"]
    assert objs[("Service", "prod-flyte-auth-exchange")]["spec"]["selector"] == selector[
        "matchLabels"]


def test_a_helm_upgrade_with_a_changed_policy_rolls_the_exchange_pods() -> None:
    def annotation(*sets: str) -> str:
        objs = by_key(helm(*sets))
        meta = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["metadata"]
        return str(meta["annotations"]["checksum/config"])

    def injector_annotation(*sets: str) -> str:
        objs = by_key(helm(*sets))
        meta = objs[("Deployment", "flyte-auth-injector")]["spec"]["template"]["metadata"]
        return str(meta["annotations"]["checksum/config"])

    assert annotation() != annotation("exchange.policy=rules-changed")
    assert annotation() == annotation("injector.replicas=3")
    assert injector_annotation() != injector_annotation("injector.tokenExpiration=1800")


def test_notes_tell_the_operator_how_to_enable_a_namespace_and_check(tmp_path: Path) -> None:
    """NOTES.txt as `helm install` prints it (rendered from a copy, since `helm template`
    skips NOTES.txt)."""
    import shutil  # noqa: PLC0415

    chart = tmp_path / "flyte-auth"
    shutil.copytree(ROOT / "deploy/helm/flyte-auth", chart)
    (chart / "templates/NOTES.txt").rename(chart / "notes.txt")
    (chart / "templates/notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data: {notes: {{ tpl (.Files.Get "notes.txt") . | quote }}}\n')
    out = run(renderer("helm"), "template", "prod", str(chart), "--namespace",
              "flyte", "--kube-version", "1.30.0", "--show-only", "templates/notes.yaml")
    notes = yaml.safe_load(out)["data"]["notes"]
    assert "kubectl label namespace flytesnacks-development flyte-auth.flyte.org/inject=enabled" \
        " \\\n       pod-security.kubernetes.io/enforce=baseline" in notes
    assert "prod-flyte-auth-execution-labels" in notes
    assert "system:serviceaccount:flyte:flytepropeller" in notes
    assert "http://flyteadmin.flyte.svc.cluster.local:80" in notes
    assert "logs deploy/prod-flyte-auth-exchange" in notes


@ALL
def test_agents_reach_the_exchange_server_over_tls_by_default(rendering: str) -> None:
    objs = by_key(RENDERINGS[rendering]())
    exchange = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"]
    args = exchange["containers"][0]["args"]
    assert "--listen=0.0.0.0:8443" in args
    assert any(a.startswith(("--tls-cert=", "--tls-bootstrap=")) for a in args)
    assert exchange["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert objs[("Service", "flyte-auth-exchange")]["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https"}]
    injector = objs[("Deployment", "flyte-auth-injector")]["spec"]["template"]["spec"]
    assert "--agent-ca-file=/etc/flyte-auth/exchange-ca/ca.crt" in injector["containers"][0][
        "args"]
    ca = next(v for v in injector["volumes"] if v["name"] == "exchange-ca")
    assert ca["secret"] == {"secretName": "flyte-auth-exchange-tls", "optional": True,
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    config = yaml.safe_load(objs[("ConfigMap", "flyte-auth-injector-config")]["data"][
        "injector.yaml"])
    assert config["token_endpoint"].startswith("https://")
    if rendering.endswith("cert-manager") or rendering == "helm-default":
        cert = objs[("Certificate", "flyte-auth-exchange")]["spec"]
        assert cert["secretName"] == "flyte-auth-exchange-tls"
        assert cert["issuerRef"]["name"] == "flyte-auth-ca"  # a stable CA, not self-signed
        assert objs[("Certificate", "flyte-auth-ca")]["spec"]["isCA"] is True


def test_plain_http_is_an_explicit_opt_out() -> None:
    objs = by_key(helm("exchange.plainHTTP=true"))
    args = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--listen=0.0.0.0:8080" in args
    assert not any(a.startswith("--tls") for a in args)
    assert ("Certificate", "flyte-auth-exchange") not in objs
    config = yaml.safe_load(objs[("ConfigMap", "flyte-auth-injector-config")]["data"][
        "injector.yaml"])
    assert config["token_endpoint"].startswith("http://")


def test_a_private_ca_for_flyteadmin_reaches_the_exchange_server_and_the_agents() -> None:
    objs = by_key(helm("flyteAdmin.caSecret=flyteadmin-ca", "flyteAdmin.insecure=false"))
    exchange = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"]
    assert "--ca-cert-file=/etc/flyte-auth/flyteadmin-ca/ca.crt" in exchange["containers"][0][
        "args"]
    injector = objs[("Deployment", "flyte-auth-injector")]["spec"]["template"]["spec"]
    args = injector["containers"][0]["args"]
    assert [a for a in args if a.startswith("--agent-ca-file=")] == [
        "--agent-ca-file=/etc/flyte-auth/exchange-ca/ca.crt",
        "--agent-ca-file=/etc/flyte-auth/flyteadmin-ca/ca.crt"]
    for spec in (exchange, injector):
        volume = next(v for v in spec["volumes"] if v["name"] == "flyteadmin-ca")
        assert volume["secret"]["secretName"] == "flyteadmin-ca"


@pytest.mark.parametrize(("values", "where"), [
    ("exchange: {tolerations: {key: x}}", "/exchange/tolerations"),
    ("injector: {affinity: [zone]}", "/injector/affinity"),
    ("exchange: {priorityClassName: 5}", "/exchange/priorityClassName"),
    ("injector: {podAnnotations: {a: 1}}", "/injector/podAnnotations/a"),
    ("exchange: {podLabels: [x]}", "/exchange/podLabels"),
    ("injector: {sidecar: {resources: [64Mi]}}", "/injector/sidecar/resources"),
    ("injector: {allowedScopes: all}", "/injector/allowedScopes"),
    ("metrics: {serviceMonitor: {interval: soon}}", "/metrics/serviceMonitor/interval"),
    ("metrics: {prometheusRule: {enabled: maybe}}", "/metrics/prometheusRule/enabled"),
    ("exchange: {plainHTTP: yes please}", "/exchange/plainHTTP"),
    ("flyteAdmin: {caSecret: [a]}", "/flyteAdmin/caSecret"),
    ("fullnameOverride: Not_A_Name", "/fullnameOverride"),
    ("flyteAdmin: {audiences: []}", "/flyteAdmin/audiences"),
    ("guard: {flyteCreators: []}", "/guard/flyteCreators"),
], ids=lambda v: v if v.startswith("/") else None)
def test_each_value_has_a_schema_error_naming_it(tmp_path: Path, values: str,
                                                 where: str) -> None:
    assert where in helm_refusal(tmp_path, values + "\n")


FLYTE2 = ("flyte2.enabled=true", "flyte2.runsUrl=http://oauth2-proxy.flyte:4180")


def test_flyte2_values_give_the_exchange_server_its_runs_and_fence_the_backend(
        tmp_path: Path) -> None:
    objs = helm(*FLYTE2)
    for obj in objs:
        if obj["kind"] not in CRD_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
    keyed = by_key(objs)
    container = keyed[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"][
        "containers"][0]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(keyed[("ConfigMap", "flyte-auth-exchange-policy")]["data"][
        "policy.yaml"])
    argv = [a for a in container["args"] if not a.startswith("--policy=")]
    config = exchange_config.ExchangeConfig.from_args(
        _parse(exchange_config.OPTIONS, exchange_config.ENV_PREFIX,
               [*argv, f"--policy={policy_file}"]), {})
    assert (config.runs_url, config.v2_namespace) == ("http://oauth2-proxy.flyte:4180", "flyte")
    # Flyte 2's task pods live in "flyte", which the default policy refuses for Flyte 1: the
    # chart puts a rule for them first, the rest of the policy unchanged after it.
    rules = Policy.load(policy_file, config.identity).rules
    assert [r.name for r in rules] == ["flyte2-actions", "no-system", "flyte-projects"]
    assert rules[0].namespaces == ("flyte",) and rules[0].allow
    assert rules[0].identity == "executor" and rules[0].no_principal == "refuse"

    fence = keyed[("NetworkPolicy", "flyte-auth-flyte2-runs")]
    assert fence["metadata"]["namespace"] == "flyte"
    assert fence["spec"]["podSelector"] == {"matchLabels": {
        "app.kubernetes.io/name": "flyte-binary"}}
    assert fence["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "oauth2-proxy"}}}],
         "ports": [{"protocol": "TCP", "port": 8090}]},
        {"ports": [{"protocol": "TCP", "port": 9443}]}]  # the webhook, for the API server


def test_flyte2_is_off_by_default_and_needs_the_runs_url(tmp_path: Path) -> None:
    objs = helm()
    assert not [o for o in objs if o["metadata"].get("namespace") == "flyte"]
    exchange = by_key(objs)[("Deployment", "flyte-auth-exchange")]
    assert not [a for a in exchange["spec"]["template"]["spec"]["containers"][0]["args"]
                if a.startswith("--runs-url")]
    assert "flyte2.runsUrl: the auth proxy in front of Flyte 2's runs service" in \
        helm_refusal(tmp_path, "", "flyte2.enabled=true")
    assert "/flyte2/networkPolicy/runsPort" in helm_refusal(
        tmp_path, "", *FLYTE2, "flyte2.networkPolicy.runsPort=0")


def component_and_chart(tmp_path: Path, component: str, *sets: str
                        ) -> tuple[dict[tuple[str, str], Obj], dict[tuple[str, str], Obj]]:
    """The cert-manager overlay with kustomize's `component`, and the chart with `sets`,
    by kind and name (Helm's bookkeeping dropped); both hold the same objects."""
    deploy = Path(os.path.relpath(ROOT / "deploy/kustomize", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(deploy / "overlays/cert-manager")],
        "components": [str(deploy / f"components/{component}")]}))
    out = run(renderer("kustomize"), "build", str(tmp_path))
    k = by_key(tuple(d for d in yaml.safe_load_all(out) if d))
    h = {key: without_helm_bookkeeping(obj) for key, obj in by_key(helm(*sets)).items()}
    k.pop(("Namespace", "flyte-auth"))
    assert sorted(k) == sorted(h)
    return k, h


def test_the_kustomize_flyte2_component_renders_what_helms_flyte2_values_do(
        tmp_path: Path) -> None:
    """An overlay with components/flyte2 and the chart with flyte2.enabled give the same
    objects; the policy files hold the same rules (the chart's is re-serialised YAML)."""
    k, h = component_and_chart(tmp_path, "flyte2", *FLYTE2)
    policy = ("ConfigMap", "flyte-auth-exchange-policy")
    for objs in (k, h):
        objs[policy]["data"]["policy.yaml"] = yaml.safe_load(objs[policy]["data"]["policy.yaml"])
    for key, obj in k.items():
        assert obj == h[key], key


IDP = "https://keycloak.example/realms/flyte/.well-known/openid-configuration"
EXTERNAL = ("flyteAdmin.authServerType=External", f"flyteAdmin.idpMetadataUrl={IDP}",
            "flyteAdmin.audiences={flyteadmin}")


def exchange_container(objs: tuple[Obj, ...]) -> Obj:
    deployment = by_key(objs)[("Deployment", "flyte-auth-exchange")]
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_external_mode_signs_with_its_own_key_kept_across_upgrades(tmp_path: Path) -> None:
    """FlyteAdmin's key Secret is not mounted; the chart makes the server's own key once
    (helm lookup keeps it on upgrade; `keep` leaves it on uninstall) unless one is named."""
    objs = helm(*EXTERNAL)
    spec = exchange_container(objs)
    args = spec["containers"][0]["args"]
    assert f"--idp-metadata-url={IDP}" in args
    assert [a for a in args if a.startswith("--admin-audience")] == ["--admin-audience=flyteadmin"]
    volume = next(v for v in spec["volumes"] if v["name"] == "signing-key")
    assert volume["secret"]["secretName"] == "flyte-auth-exchange-own-key"
    assert not any("flyte-auth-exchange-signing-key" in json.dumps(o) for o in objs)
    secret = by_key(objs)[("Secret", "flyte-auth-exchange-own-key")]
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    pem = tmp_path / "key.pem"
    pem.write_bytes(base64.b64decode(secret["data"]["token_rsa_key.pem"]))
    assert Minter.load_key(pem).is_private  # what the server loads
    named = helm(*EXTERNAL, "exchange.ownKeySecret=my-key")
    assert ("Secret", "my-key") not in by_key(named)
    assert next(v for v in exchange_container(named)["volumes"]
                if v["name"] == "signing-key")["secret"]["secretName"] == "my-key"


def test_external_mode_needs_the_idp_and_self_mode_needs_url_audiences(tmp_path: Path) -> None:
    assert "flyteAdmin.idpMetadataUrl: required with flyteAdmin.authServerType External" in \
        helm_refusal(tmp_path, "", "flyteAdmin.authServerType=External")
    assert '"flyteadmin" is not an http(s)://HOST[:PORT] URL' in \
        helm_refusal(tmp_path, "", "flyteAdmin.audiences={flyteadmin}")
    assert "authServerType" in helm_refusal(tmp_path, "", "flyteAdmin.authServerType=Okta")


def test_the_kustomize_external_idp_component_renders_what_helms_external_values_do(
        tmp_path: Path) -> None:
    k, h = component_and_chart(tmp_path, "external-idp", *EXTERNAL,
                               "exchange.ownKeySecret=flyte-auth-exchange-own-key")
    for key, obj in k.items():
        assert obj == h[key], key


def test_the_chart_works_as_a_dependency_of_an_umbrella_chart(tmp_path: Path) -> None:
    """Helm adds `global` to a subchart's values: the schema takes it, and the release's
    values reach the subchart under its name."""
    parent = tmp_path / "site"
    parent.mkdir()
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "site", "version": "1.0.0", "dependencies": [{
            "name": "flyte-auth", "version": "*",
            "repository": f"file://{ROOT / 'deploy/helm/flyte-auth'}"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example"},
        "flyte-auth": {"exchange": {"replicas": 3}}}))
    run(renderer("helm"), "dependency", "update", str(parent))
    out = run(renderer("helm"), "template", "site", str(parent), "--namespace", "flyte-auth",
              "--kube-version", "1.30.0")
    objs = by_key(tuple(d for d in yaml.safe_load_all(out) if d))
    assert objs[("Deployment", "site-flyte-auth-exchange")]["spec"]["replicas"] == 3


def test_monitoring_objects_are_named_for_the_release() -> None:
    on = ("metrics.agentPodMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
    names = {(o["kind"], o["metadata"]["name"]) for o in helm_named("other", *on)}
    assert {("PodMonitor", "other-flyte-auth-agents"),
            ("PrometheusRule", "other-flyte-auth")} <= names
    default = {(o["kind"], o["metadata"]["name"]) for o in helm(*on)}
    assert {("PodMonitor", "flyte-auth-agents"), ("PrometheusRule", "flyte-auth")} <= default


def test_a_registry_and_digests_reach_both_images(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    objs = helm("image.registry=registry.example.com/flyte/", f"image.agent.digest={digest}")
    images = {c["image"] for spec in pod_specs(objs) for c in spec["containers"]}
    assert images == {"registry.example.com/flyte/flyte-auth-server:0.1.0"}
    injector = yaml.safe_load(by_key(objs)[("ConfigMap", "flyte-auth-injector-config")]
                              ["data"]["injector.yaml"])
    assert injector["agent_image"] == f"registry.example.com/flyte/flyte-auth-agent@{digest}"
    assert "/image/server/digest" in helm_refusal(tmp_path, "", "image.server.digest=latest")


def test_extra_args_env_log_settings_and_spread_reach_both_servers(tmp_path: Path) -> None:
    spread = "{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, " \
             "whenUnsatisfiable: ScheduleAnyway}"
    values = tmp_path / "values.yaml"
    values.write_text(f"""
logLevel: debug
logFormat: console
injector:
  extraArgs: [--token-wait=60]
  extraEnv: [{{name: HTTPS_PROXY, value: "http://proxy:3128"}}]
  serviceAccountAnnotations: {{iam.example/role: injector}}
exchange:
  extraArgs: [--max-inflight=64]
  extraEnv: [{{name: HTTPS_PROXY, value: "http://proxy:3128"}}]
  serviceAccountAnnotations: {{iam.example/role: exchange}}
  topologySpreadConstraints: [{spread}]
""")
    out = run(renderer("helm"), "template", "flyte-auth", "deploy/helm/flyte-auth",
              "--namespace", "flyte-auth", "--kube-version", "1.30.0", "-f", str(values))
    objs = by_key(tuple(d for d in yaml.safe_load_all(out) if d))
    for component, extra in (("injector", "--token-wait=60"), ("exchange", "--max-inflight=64")):
        name = f"flyte-auth-{component}"
        spec = objs[("Deployment", name)]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["args"][-3:] == ["--log-level=debug", "--log-format=console", extra]
        assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
        assert objs[("ServiceAccount", name)]["metadata"]["annotations"] == {
            "iam.example/role": component}
        options = injector_config.OPTIONS if component == "injector" else \
            exchange_config.OPTIONS
        prefix = injector_config.ENV_PREFIX if component == "injector" else \
            exchange_config.ENV_PREFIX
        parsed = _parse(options, prefix, container["args"])  # the program takes them
        assert (parsed.log_level, parsed.log_format) == ("debug", "console")
    exchange_spec = objs[("Deployment", "flyte-auth-exchange")]["spec"]["template"]["spec"]
    assert exchange_spec["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert "topologySpreadConstraints" not in \
        objs[("Deployment", "flyte-auth-injector")]["spec"]["template"]["spec"]
    assert "/exchange/extraArgs/0" in helm_refusal(tmp_path, "exchange: {extraArgs: [oops]}")


def test_the_injectors_sidecar_settings_reach_its_config_and_load(tmp_path: Path) -> None:
    objs = helm("injector.tokenWait=0", "injector.maxExpiration=7200",
                "injector.probePort=9800", "injector.allowedAudiences={flyte-auth,vault}",
                "injector.sidecar.securityContext.runAsNonRoot=true")
    text = by_key(objs)[("ConfigMap", "flyte-auth-injector-config")]["data"]["injector.yaml"]
    (tmp_path / "injector.yaml").write_text(text)
    config = injector_config.InjectorConfig.load(
        ["--listen", "127.0.0.1:0", "--config", str(tmp_path / "injector.yaml")], {})
    sidecar, tokens = config.sidecar, config.tokens
    assert (tokens.token_wait, tokens.max_expiration, sidecar.probe_port) == (0, 7200, 9800)
    assert tokens.allowed_audiences == ("flyte-auth", "vault")
    assert sidecar.security_context == {"runAsNonRoot": True}
    default = by_key(helm())[("ConfigMap", "flyte-auth-injector-config")]["data"]
    assert "token_wait" not in default["injector.yaml"]  # defaults stay the program's


def test_a_rendering_with_no_fixed_uid_is_valid(tmp_path: Path) -> None:
    """OpenShift's restricted SCC assigns the uid: pods and the injected sidecar can be
    rendered without one, and still valid and locked down."""
    values = tmp_path / "values.yaml"
    restricted = "{runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}"
    values.write_text(f"injector: {{podSecurityContext: {restricted}, sidecar: "
                      f"{{securityContext: {{runAsNonRoot: true, allowPrivilegeEscalation: "
                      f"false, capabilities: {{drop: [ALL]}}}}}}}}\n"
                      f"exchange: {{podSecurityContext: {restricted}}}\n")
    out = run(renderer("helm"), "template", "flyte-auth", "deploy/helm/flyte-auth",
              "--namespace", "flyte-auth", "--kube-version", "1.30.0", "-f", str(values))
    objs = tuple(d for d in yaml.safe_load_all(out) if d)
    assert "runAsUser" not in json.dumps([o for o in objs if o["kind"] == "Deployment"])
    for obj in objs:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, "1.30", strict=True)
    injector = yaml.safe_load(by_key(objs)[("ConfigMap", "flyte-auth-injector-config")]
                              ["data"]["injector.yaml"])
    assert "runAsUser" not in injector["security_context"]


def test_the_exchange_server_can_autoscale_and_its_budget_can_be_set() -> None:
    objs = by_key(helm("exchange.autoscaling.enabled=true", "exchange.autoscaling.maxReplicas=6",
                       "exchange.maxUnavailable=50%"))
    hpa = objs[("HorizontalPodAutoscaler", "flyte-auth-exchange")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "flyte-auth-exchange"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    kubernetes_validate.validate(hpa, "1.30", strict=True)
    assert "replicas" not in objs[("Deployment", "flyte-auth-exchange")]["spec"]
    assert objs[("PodDisruptionBudget", "flyte-auth-exchange")]["spec"]["maxUnavailable"] == \
        "50%"
    assert ("HorizontalPodAutoscaler", "flyte-auth-exchange") not in by_key(helm())


def test_injection_can_be_narrowed_but_the_guard_is_not(tmp_path: Path) -> None:
    objs = by_key(helm("webhook.excludedNamespaces={team-b}",
                       "webhook.objectSelector.matchLabels.team=ml"))
    hooks = {h["name"]: h for h in
             objs[("MutatingWebhookConfiguration", "flyte-auth-injector")]["webhooks"]}
    inject, connect = hooks["inject.flyte-auth.flyte.org"], hooks["connect.flyte-auth.flyte.org"]
    assert "team-b" in inject["namespaceSelector"]["matchExpressions"][1]["values"]
    assert inject["objectSelector"] == {"matchLabels": {"team": "ml"}}
    assert "team-b" not in json.dumps(connect) and "objectSelector" not in connect
    # What the exchange server checks of the guard still holds.
    assert guard.connect_differences(
        objs[("MutatingWebhookConfiguration", "flyte-auth-injector")], "team-b",
        {"flyte-auth.flyte.org/inject": "enabled"}) == []


def test_a_sites_own_cluster_issuer_replaces_the_charts_ca() -> None:
    objs = by_key(helm("tls.issuerRef.name=corp-ca", "tls.issuerRef.kind=ClusterIssuer"))
    assert not [k for k in objs if k[0] == "Issuer"]
    assert ("Certificate", "flyte-auth-ca") not in objs
    for name in ("flyte-auth-injector", "flyte-auth-exchange"):
        assert objs[("Certificate", name)]["spec"]["issuerRef"] == {
            "name": "corp-ca", "kind": "ClusterIssuer"}
    default = by_key(helm())
    assert default[("Certificate", "flyte-auth-exchange")]["spec"]["issuerRef"] == {
        "name": "flyte-auth-ca", "kind": "Issuer"}

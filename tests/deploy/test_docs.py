"""The operator guide's snippets name what the manifests and programs really use."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from flyte_auth_common import contract
from tests.deploy.test_manifests import by_key, kustomize

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "deploy/README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE, re.S)


def commands() -> list[list[str]]:
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def exchange_args() -> list[str]:
    deployment = by_key(kustomize("cert-manager"))[("Deployment", "flyte-auth-exchange")]
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def flyteadmin_snippets() -> list[dict[str, Any]]:
    return [yaml.safe_load(b)["auth"] for b in blocks("yaml")]


def test_authorized_uris_snippet_contains_every_minted_audience() -> None:
    (uris,) = [a["authorizedUris"] for a in flyteadmin_snippets() if "authorizedUris" in a]
    audiences = [a.split("=", 1)[1] for a in exchange_args()
                 if a.startswith("--admin-audience=")]
    assert len(audiences) == 4
    assert set(audiences) <= set(uris)


def test_the_platform_url_tasks_get_is_among_the_audiences() -> None:
    """What the injector gives pods as FLYTE_PLATFORM_URL, FlyteAdmin maps (by hostname) to
    an authorizedUris entry that the minted tokens carry."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    config = yaml.safe_load(by_key(kustomize("cert-manager"))[
        ("ConfigMap", "flyte-auth-injector-config")]["data"]["injector.yaml"])
    host = urlsplit("//" + config["admin_endpoint"]).hostname
    audiences = [a.split("=", 1)[1] for a in exchange_args()
                 if a.startswith("--admin-audience=")]
    assert host in {urlsplit(a).hostname for a in audiences}


def test_signing_key_secret_command_matches_the_mount() -> None:
    deployment = by_key(kustomize("cert-manager"))[("Deployment", "flyte-auth-exchange")]
    volume: dict[str, Any] = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                                  if v["name"] == "signing-key")
    create = next(c for c in commands() if c[:5] == ["kubectl", "-n", "flyte-auth", "create",
                                                      "secret"])
    assert create[6] == volume["secret"]["secretName"]
    assert create[7] == f"--from-file={volume['secret']['items'][0]['key']}"


def test_label_curl_and_rollback_commands_use_the_real_names() -> None:
    flat = [" ".join(c) for c in commands()]
    assert any(f"{contract.NAMESPACE_LABEL}={contract.NAMESPACE_LABEL_VALUE}" in c for c in flat)
    assert any(f"--unix-socket {contract.DEFAULT_SOCKET_PATH}" in c and
               f"{contract.REQUIRED_HEADER}: {contract.REQUIRED_HEADER_VALUE}" in c
               for c in flat)
    assert "kubectl delete mutatingwebhookconfiguration flyte-auth-injector" in GUIDE
    assert f"kubectl label namespace flytesnacks-development {contract.NAMESPACE_LABEL}-" in GUIDE


def _leaves(doc: Any, prefix: str = "") -> set[str]:
    if isinstance(doc, dict) and doc and prefix.count(".") < 2:
        return {leaf for k, v in doc.items() for leaf in _leaves(v, f"{prefix}{k}.")}
    return {prefix.rstrip(".")}


def test_every_helm_value_is_in_the_values_table() -> None:
    values = yaml.safe_load((ROOT / "deploy/helm/flyte-auth/values.yaml").read_text())
    table = GUIDE.split("## Helm values", 1)[1].split("##", 1)[0]
    for leaf in _leaves(values):
        parent, _, last = leaf.rpartition(".")
        assert f"`{leaf}`" in table or (f"`{parent}." in table and last in table), leaf


def test_the_external_mode_snippet_names_what_the_chart_serves() -> None:
    """FlyteAdmin's externalAuthServer, as the guide writes it, reaches the exchange server's
    /external/ (its Service name and --public-url), the path it serves the IdP's document at
    under FlyteAdmin's default metadataUrl, and carries the audience it mints."""
    from flyte_auth_exchange.external import METADATA_PATHS  # noqa: PLC0415
    from tests.deploy.test_manifests import EXTERNAL, exchange_container, helm  # noqa: PLC0415

    (external,) = [a["appAuth"]["externalAuthServer"] for a in flyteadmin_snippets()
                   if "appAuth" in a]
    args = exchange_container(helm(*EXTERNAL))["containers"][0]["args"]
    public_url = next(a.split("=", 1)[1] for a in args if a.startswith("--public-url="))
    assert external["baseUrl"] == public_url + "/external/"
    assert "/external/.well-known/oauth-authorization-server" in METADATA_PATHS


def test_the_guide_says_what_helm_template_needs() -> None:
    """`helm template` without --kube-version fails on the chart's kubeVersion; the install
    step quotes Helm's message and the flag."""
    from tests.renderers import renderer  # noqa: PLC0415

    out = subprocess.run([renderer("helm"), "template", "x", "deploy/helm/flyte-auth"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode != 0
    message = out.stderr.split("Error: ", 1)[1].splitlines()[0]
    assert message in " ".join(GUIDE.split())
    assert "--kube-version 1.30" in GUIDE


def test_the_secrets_left_after_uninstall_are_the_ones_the_servers_make() -> None:
    """The cleanup command names every Secret created at run time or kept by the chart."""
    from tests.deploy.test_manifests import EXTERNAL, helm  # noqa: PLC0415

    (cleanup,) = [c for c in commands() if c[:4] == ["kubectl", "-n", "flyte-auth", "delete"]]
    named = set(cleanup[5:]) - {"--ignore-not-found"}
    made = {a.split("=", 1)[1] for o in helm("tls.mode=self-signed")
            if o["kind"] == "Deployment"
            for a in o["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith("--tls-bootstrap=")}
    kept = {o["metadata"]["name"] for o in helm(*EXTERNAL) if o["kind"] == "Secret"}
    assert made | kept | {"flyte-auth-exchange-signing-key"} == named


def test_the_packaged_charts_readme_is_the_guides_values_table() -> None:
    from devstack.release import chart_readme  # noqa: PLC0415

    readme = chart_readme(GUIDE)
    table = GUIDE.split("## Helm values", 1)[1].split("\n## ", 1)[0].strip()
    assert table.startswith("| value | default | meaning |")
    assert table in readme
    assert "helm install flyte-auth" in readme

"""Build (once per machine) and locate the real peers of the end-to-end suite.

Everything comes from the package registries this machine reaches, never from a fetched
source tree: kube-apiserver from the k8s.io/kubernetes Go module (with `replace` lines for
its staging modules), etcd from Debian (`make e2e-deps`), Keycloak's distribution from Maven
Central. Binaries are cached under ~/.cache/flyte-auth-agent/e2e, keyed by version.

    python -m tests.e2e.peers     build what is missing, saying what and why
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("FLYTE_AUTH_E2E_CACHE", Path.home() / ".cache/flyte-auth-agent/e2e"))
KUBERNETES = "1.30.14"  # the oldest release we support (native sidecars beta, matchConditions GA)
KEYCLOAK = "26.7.3"
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging;
# a module that imports it replaces each with the published v0.X.Y of the same release.
STAGING = (
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base",
    "component-helpers", "controller-manager", "cri-api", "cri-client", "csi-translation-lib",
    "dynamic-resource-allocation", "endpointslice", "kms", "kube-aggregator",
    "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet",
    "legacy-cloud-providers", "metrics", "mount-utils", "pod-security-admission",
    "sample-apiserver", "sample-cli-plugin", "sample-controller",
)


class PeerUnavailable(Exception):
    """A peer cannot be built or found here; the message says what failed."""


def say(message: str) -> None:
    print(f"[e2e peers] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise PeerUnavailable(f"`{' '.join(argv)}` failed in {cwd}:\n{tail}")


def kube_apiserver() -> Path:
    out = CACHE / f"kube-apiserver-v{KUBERNETES}" / "kube-apiserver"
    if out.exists():
        return out
    say(f"building kube-apiserver v{KUBERNETES} from the k8s.io/kubernetes Go module "
        f"(first run on this machine only; several minutes)")
    work = out.parent / "src"
    work.mkdir(parents=True, exist_ok=True)
    minor = "0." + KUBERNETES.split(".", 1)[1]
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} v{minor}" for m in STAGING)
    (work / "go.mod").write_text(f"module flyteauth.e2e/kubeapiserver\n\ngo 1.22\n\n"
                                 f"require k8s.io/kubernetes v{KUBERNETES}\n\n"
                                 f"replace (\n{replaces}\n)\n")
    (work / "tools.go").write_text("//go:build tools\n\npackage tools\n\n"
                                   "import _ \"k8s.io/kubernetes/cmd/kube-apiserver\"\n")
    _run(["go", "mod", "tidy"], work)
    _run(["go", "build", "-o", str(out), "k8s.io/kubernetes/cmd/kube-apiserver"], work)
    return out


def etcd() -> Path:
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(found).exists():
        raise PeerUnavailable("etcd is not installed: `make e2e-deps` installs Debian's "
                              "etcd-server")
    return Path(found)


def java21() -> Path:
    """A JDK new enough for Keycloak 26 (21+): the machine's Temurin, else `java`."""
    for candidate in sorted(Path("/usr/lib/jvm").glob("temurin-2*"), reverse=True):
        if (candidate / "bin/java").exists():
            return candidate
    raise PeerUnavailable("no JDK 21+ under /usr/lib/jvm for Keycloak 26")


def keycloak() -> Path:
    home = CACHE / f"keycloak-{KEYCLOAK}"
    if (home / "bin/kc.sh").exists():
        return home
    say(f"fetching Keycloak {KEYCLOAK} (org.keycloak:keycloak-quarkus-dist) from Maven Central")
    artifact = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK}:zip"
    _run(["mvn", "-q", "dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false"],
         CACHE)
    archive = (Path.home() / ".m2/repository/org/keycloak/keycloak-quarkus-dist" / KEYCLOAK /
               f"keycloak-quarkus-dist-{KEYCLOAK}.zip")
    with zipfile.ZipFile(archive) as z:
        z.extractall(CACHE)
    (home / "bin/kc.sh").chmod(0o755)
    return home


if __name__ == "__main__":
    CACHE.mkdir(parents=True, exist_ok=True)
    for build in (kube_apiserver, etcd, java21, keycloak):
        try:
            say(f"{build.__name__}: {build()}")
        except PeerUnavailable as exc:
            say(f"{build.__name__}: UNAVAILABLE: {exc}")

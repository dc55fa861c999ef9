"""Build (once per machine) and locate the real peers of the end-to-end suite.

Everything comes from the package registries this machine reaches, or from the source
archives in ../shared/peers: kube-apiserver, kube-controller-manager, kube-scheduler and the
kubelet from the k8s.io/kubernetes Go module (with `replace` lines for its staging modules),
etcd, PostgreSQL, containerd and runc from Debian (`make e2e-deps`),
Keycloak's distribution from Maven Central, oauth2-proxy from the Go module proxy, Flyte's
single binary (FlyteAdmin + flytepropeller) from flyte-1.16.8-src.tar.xz and Flyte 2's
(manager/cmd) from flyte-2.0.43-src.tar.xz, with their dependencies from the Go module
proxy.
Binaries are cached under ~/.cache/flyte-auth-agent/e2e, keyed by version (Flyte: by the
archive's sha256 and the Go version).

    python -m devstack.real.peers     build what is missing, saying what and why
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("FLYTE_AUTH_E2E_CACHE", Path.home() / ".cache/flyte-auth-agent/e2e"))
KUBERNETES = "1.30.14"  # the oldest release we support (native sidecars beta, matchConditions GA)
KEYCLOAK = "26.7.3"
#: The auth proxy Flyte 2's backend documents in front of its runs service.
OAUTH2_PROXY = "v7.15.6"
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


ROOT = Path(__file__).resolve().parents[2]
FLYTE_ARCHIVE_NAME = "flyte-1.16.8-src.tar.xz"
FLYTE2_ARCHIVE_NAME = "flyte-2.0.43-src.tar.xz"
#: Flyte 2.0.43 requires github.com/flyteorg/stow v0.3.13, which the Go module proxy refuses
#: (403); v0.3.12 is served and builds (../shared/peers/README.md).
FLYTE2_STOW = "github.com/flyteorg/stow@v0.3.12"


def _archives(name: str, env: str) -> list[Path]:
    """Where a source archive is looked for: $`env`, ../shared/peers beside this checkout,
    and the workplace's shared folder (CI runs in a fresh clone elsewhere)."""
    return [Path(p) for p in (os.environ.get(env),) if p] + [
        ROOT.parent / "shared/peers" / name, Path("/work/shared/peers") / name]


FLYTE_ARCHIVES = _archives(FLYTE_ARCHIVE_NAME, "FLYTE_AUTH_FLYTE_ARCHIVE")
FLYTE2_ARCHIVES = _archives(FLYTE2_ARCHIVE_NAME, "FLYTE_AUTH_FLYTE2_ARCHIVE")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
#: flytepropeller's plugin loader imports the Spark plugin, whose dependency
#: github.com/kubeflow/spark-operator the Go module proxy refuses (403); the suite runs only
#: container tasks, so the build drops that one import line (in the unpacked copy only).
SPARK_IMPORT = '_ "github.com/flyteorg/flyte/flyteplugins/go/tasks/plugins/k8s/spark"'


class PeerUnavailable(Exception):
    """A peer cannot be built or found here; the message says what failed."""


def say(message: str) -> None:
    print(f"[e2e peers] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise PeerUnavailable(f"`{' '.join(argv)}` failed in {cwd}:\n{tail}")


#: The Kubernetes programs the suite runs, all built from the one k8s.io/kubernetes module.
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")


def kube_command(name: str) -> Path:
    """One of KUBE_COMMANDS at v{KUBERNETES}, built (once) with the release's version stamped
    in, as the real release builds are: the kubelet reports it as the node's version."""
    out = CACHE / f"{name}-v{KUBERNETES}" / name
    if out.exists():
        return out
    say(f"building {name} v{KUBERNETES} from the k8s.io/kubernetes Go module "
        f"(first run on this machine only; several minutes)")
    work = CACHE / f"kubernetes-v{KUBERNETES}-src"
    work.mkdir(parents=True, exist_ok=True)
    minor = "0." + KUBERNETES.split(".", 1)[1]
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} v{minor}" for m in STAGING)
    imports = "\n".join(f'import _ "k8s.io/kubernetes/cmd/{c}"' for c in KUBE_COMMANDS)
    tools = f"//go:build tools\n\npackage tools\n\n{imports}\n"
    if not (work / "tools.go").exists() or (work / "tools.go").read_text() != tools:
        (work / "go.mod").write_text(f"module flyteauth.e2e/kubernetes\n\ngo 1.22\n\n"
                                     f"require k8s.io/kubernetes v{KUBERNETES}\n\n"
                                     f"replace (\n{replaces}\n)\n")
        (work / "tools.go").write_text(tools)
        _run(["go", "mod", "tidy"], work)
    major, minor_number = KUBERNETES.split(".")[:2]
    stamp = " ".join(f"-X k8s.io/component-base/version.{k}={v}" for k, v in (
        ("gitVersion", f"v{KUBERNETES}"), ("gitMajor", major), ("gitMinor", minor_number)))
    _run(["go", "build", "-ldflags", stamp, "-o", str(out), f"k8s.io/kubernetes/cmd/{name}"],
         work)
    return out


def kube_apiserver() -> Path:
    return kube_command("kube-apiserver")


def kube_scheduler() -> Path:
    return kube_command("kube-scheduler")


def kubelet() -> Path:
    return kube_command("kubelet")


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
        z.extractall(CACHE)  # noqa: S202 - Keycloak's own distribution from Maven Central
    (home / "bin/kc.sh").chmod(0o755)
    return home


def _unpacked_build(archives: list[Path], env: str, binary: str, what: str
                    ) -> tuple[Path, Path | None]:
    """(where the binary built from the first existing archive goes, the unpacked tree to
    build it in, or None when it is built already). Keyed by the archive's sha256 and the
    Go version."""
    archive = next((a for a in archives if a.exists()), None)
    if archive is None:
        raise PeerUnavailable(f"{archives[-1].name} is not in any of "
                              f"{', '.join(map(str, archives))}; set {env} to its path")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True,
                        check=False).stdout.strip() or "go"
    out = CACHE / f"{binary}-{digest}-{go}" / binary
    if out.exists():
        return out, None
    say(f"building {what} from {archive} (first run on this machine only; several minutes "
        "to a quarter of an hour cold)")
    work = out.parent / "src"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return out, next(work.iterdir())


def flyte() -> Path:
    """Flyte's single binary (`flyte start --config FILE`: FlyteAdmin and flytepropeller)."""
    out, tree = _unpacked_build(FLYTE_ARCHIVES, "FLYTE_AUTH_FLYTE_ARCHIVE", "flyte",
                                "Flyte's single binary")
    if tree is None:
        return out
    loader = tree / "flytepropeller/plugins/loader.go"
    loader.write_text("\n".join(line for line in loader.read_text().splitlines()
                                if SPARK_IMPORT not in line) + "\n")
    _run(["go", "build", "-o", str(out), "./cmd/"], tree)
    shutil.rmtree(tree.parent, ignore_errors=True)
    return out


def flyte2() -> Path:
    """Flyte 2's single binary (manager/cmd: runs, actions, executor and the other services
    on one port)."""
    out, tree = _unpacked_build(FLYTE2_ARCHIVES, "FLYTE_AUTH_FLYTE2_ARCHIVE", "flyte2",
                                "Flyte 2's single binary")
    if tree is None:
        return out
    _run(["env", "GOFLAGS=-mod=mod", "go", "get", FLYTE2_STOW], tree)
    _run(["env", "GOFLAGS=-mod=mod", "go", "build", "-o", str(out), "./manager/cmd/"], tree)
    shutil.rmtree(tree.parent, ignore_errors=True)
    return out


def oauth2_proxy() -> Path:
    """oauth2-proxy, `go install`ed from the Go module proxy (once)."""
    out = CACHE / f"oauth2-proxy-{OAUTH2_PROXY}" / "oauth2-proxy"
    if out.exists():
        return out
    say(f"building oauth2-proxy {OAUTH2_PROXY} from the Go module proxy (first run on this "
        "machine only; a few minutes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["env", f"GOBIN={out.parent}", "go", "install",
          f"github.com/oauth2-proxy/oauth2-proxy/v7@{OAUTH2_PROXY}"], out.parent)
    return out


def postgres() -> Path:
    if not (POSTGRES_BIN / "initdb").exists():
        raise PeerUnavailable(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}): "
                              "`make e2e-deps` installs Debian's postgresql")
    return POSTGRES_BIN


if __name__ == "__main__":
    CACHE.mkdir(parents=True, exist_ok=True)
    for build in (kube_apiserver, kube_scheduler, kubelet, etcd, java21, keycloak, postgres,
                  flyte, flyte2, oauth2_proxy):
        try:
            say(f"{build.__name__}: {build()}")
        except PeerUnavailable as exc:
            say(f"{build.__name__}: UNAVAILABLE: {exc}")

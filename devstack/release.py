"""`make dist`: the release as a user gets it, built and checked, into dist/:

- wheel and sdist of flyte-auth-common, flyte-auth-agent (the servers) and
  flytekitplugins-auth-agent, each passing `twine check`;
- the Helm chart, `helm lint --strict`, then `helm package`;
- both images built from deploy/Dockerfile itself, as OCI archives, their config checked
  (non-root user, entrypoint, the release's version in their labels).

The images install build/wheelhouse: the release's wheels and their dependencies at the
versions the tests ran (this venv's), with no index. The engine is docker or podman if one
runs, else buildah as root (vfs storage, chroot isolation), whose base image (the
Dockerfile's PYTHON) is built here from Debian bookworm's packages, since no registry is
reachable: devstack/real/images.py `base_image`.

    python -m devstack.release [--helm HELM] [--no-images]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from flyte_auth_common import __version__

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
DISTRIBUTIONS = ("common", ".", "flytekit_plugin")
#: Image target in deploy/Dockerfile -> what it runs.
IMAGES = {"agent": (["flyte-auth-agent"], ["serve"]),
          "server": (None, ["flyte-auth-exchange", "serve"])}
USER = "65532:65532"


class ReleaseError(Exception):
    pass


def say(message: str) -> None:
    print(f"[make dist] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: Any) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ReleaseError(f"`{' '.join(argv)}` failed:\n{tail}")
    return str(done.stdout)


def archive(target: str) -> Path:
    """Where `make dist` writes the image of `target` ("agent" or "server")."""
    return DIST / f"flyte-auth-{target}-{__version__}.oci.tar"


def image_name(target: str) -> str:
    """The image's name inside its archive, as the chart's defaults name it."""
    return f"docker.io/library/flyte-auth-{target}:{__version__}"


def python_packages() -> list[Path]:
    for path in DIST.glob("*.whl"):
        path.unlink()
    for path in DIST.glob("*.tar.gz"):
        path.unlink()
    for directory in DISTRIBUTIONS:
        say(f"building the wheel and sdist of {directory}")
        run([sys.executable, "-m", "build", "-q", "--no-isolation", "--outdir", str(DIST),
             directory])
    built = sorted([*DIST.glob("*.whl"), *DIST.glob("*.tar.gz")])
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, built)])
    return built


def chart_readme(guide: str) -> str:
    """The packaged chart's README (`helm show readme`): deploy/README.md's values table,
    the one the tests hold to values.yaml, so the two never disagree."""
    table = guide.split("## Helm values", 1)[1].split("\n## ", 1)[0].strip()
    return ("# flyte-auth\n\nShort-lived FlyteAdmin tokens for Flyte task pods, with no "
            "secret in the task: the exchange server and the sidecar injector. The install "
            "guide, with what to set on the Flyte side first, is deploy/README.md of the "
            f"release ({__version__}).\n\n```sh\nhelm install flyte-auth "
            f"flyte-auth-{__version__}.tgz -n flyte-auth --create-namespace\n```\n\n"
            f"## Values\n\n{table}\n")


def chart(helm: str) -> Path:
    """Lint and package a copy of the chart with its README written from the guide."""
    build = ROOT / "build/chart/flyte-auth"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(ROOT / "deploy/helm/flyte-auth", build)
    (build / "README.md").write_text(chart_readme((ROOT / "deploy/README.md").read_text()))
    run([helm, "lint", "--strict", str(build), "--kube-version", "1.30.0"])
    run([helm, "package", str(build), "--destination", str(DIST)])
    return DIST / f"flyte-auth-{__version__}.tgz"


def wheelhouse() -> None:
    """Our wheels and every dependency of the servers, pinned to this venv's versions."""
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir(parents=True)
    for wheel in DIST.glob("*.whl"):
        shutil.copy(wheel, WHEELHOUSE)
    pins = WHEELHOUSE.parent / "constraints.txt"
    ours = ("flyte-auth", "flytekitplugins-auth")
    pins.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in distributions()
                            if not d.metadata["Name"].startswith(ours)))
    say("filling build/wheelhouse with the servers' dependencies (pip's cache, else PyPI)")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELHOUSE), "-c",
         str(pins), "--find-links", str(WHEELHOUSE),
         "flyte-auth-agent[agent,exchange,injector]"])


def engine() -> list[str]:
    for name in ("docker", "podman"):
        if shutil.which(name) and subprocess.run([name, "info"], capture_output=True,
                                                 check=False).returncode == 0:
            return [name]
    if shutil.which("buildah") and os.geteuid() == 0:
        return ["buildah", "--storage-driver", "vfs"]
    raise ReleaseError("building the images needs docker or podman running, or buildah as "
                       "root (apt-get install buildah)")


def images() -> list[Path]:
    tool = engine()
    build = [*tool, "build", "-f", "deploy/Dockerfile", "--build-arg", f"VERSION={__version__}"]
    if tool[0] == "buildah":
        from devstack.real.images import BASE_IMAGE, base_image  # noqa: PLC0415 - buildah only

        run([*tool, "pull", "-q", f"oci-archive:{base_image()}"])
        build += ["--isolation", "chroot", "--layers", "--pull-never", "--build-arg",
                  f"PYTHON={BASE_IMAGE}"]
    made = []
    for target in IMAGES:
        say(f"building the {target} image from deploy/Dockerfile with {tool[0]}")
        run([*build, "--target", target, "-t", image_name(target), "."])
        out = archive(target)
        out.unlink(missing_ok=True)
        if tool[0] == "docker":
            run(["docker", "save", "-o", str(out), image_name(target)])
        else:
            run([*tool, "push", "-q", image_name(target),
                 f"oci-archive:{out}:{image_name(target)}"])
        check_image(target, out)
        made.append(out)
    return made


def image_config(path: Path) -> dict[str, Any]:
    """The image configuration inside an OCI archive (its one manifest's config)."""
    with tarfile.open(path) as tar:
        def blob(digest: str) -> Any:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return json.load(member)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = blob(index["manifests"][0]["digest"])
        return dict(blob(manifest["config"]["digest"])["config"])


def check_image(target: str, path: Path) -> None:
    config = image_config(path)
    entrypoint, cmd = IMAGES[target]
    labels = config.get("Labels") or {}
    problems = [f"{key} is {got!r}, not {want!r}" for key, got, want in (
        ("User", config.get("User"), USER), ("Entrypoint", config.get("Entrypoint"), entrypoint),
        ("Cmd", config.get("Cmd"), cmd),
        ("version label", labels.get("org.opencontainers.image.version"), __version__),
        ("licenses label", labels.get("org.opencontainers.image.licenses"), "Apache-2.0"))
        if got != want]
    if problems:
        raise ReleaseError(f"{path.name}: " + "; ".join(problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helm", default="helm", help="the helm program")
    parser.add_argument("--no-images", action="store_true", help="skip the images")
    args = parser.parse_args()
    DIST.mkdir(exist_ok=True)
    try:
        made = [*python_packages(), chart(args.helm)]
        if not args.no_images:
            wheelhouse()
            made += images()
    except ReleaseError as exc:
        print(f"make dist: {exc}", file=sys.stderr)
        return 1
    for path in made:
        say(f"{path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

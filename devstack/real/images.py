"""Container images for the real node, built here with no registry and no container engine:
an OCI image layout (one layer tar, a config, a manifest, an index) in a tarball, which
`ctr images import` loads into containerd. Each is cached by the digest of its content.

- `pause`: the pod sandbox image the kubelet asks for (containerd's `sandbox_image`), a
  static Go program that waits for SIGTERM, under the name registry.k8s.io/pause uses.
- `tool`: the same static program, for task containers that only need to run and exit.
- `agent`: not built here: the image `make dist` builds from deploy/Dockerfile
  (devstack/release.py), which users install.
- the base of those images (`base_image`, the Dockerfile's PYTHON): Debian bookworm's
  Python 3.11 and a shell, from Debian's packages.
- any other Python image (`PythonImage`): Debian's Python 3.11 and a virtualenv, filled
  from wheels built here: the e2e suite's task images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from importlib.metadata import distributions
from pathlib import Path

from devstack import release
from devstack.real.peers import CACHE, ROOT, _run, say

PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
TOOL_IMAGE = "flyte-auth.e2e/tool:1"
#: Under the name the chart's defaults give it.
AGENT_IMAGE = release.image_name("agent")
#: Debian bookworm packages behind the agent image's interpreter (libc, Python 3.11 with
#: venv and ensurepip, the libraries its stdlib links), and libstdc++, which grpcio's wheel
#: links and every Debian slim image has (apt needs it).
AGENT_DEBS = (
    "libc6", "libgcc-s1", "libstdc++6", "gcc-12-base", "libpython3.11-minimal",
    "libpython3.11-stdlib", "python3.11-minimal", "python3.11", "python3.11-venv",
    "python3-pip-whl", "python3-setuptools-whl", "libssl3", "zlib1g", "libexpat1", "libffi8",
    "libbz2-1.0",
    "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8",
    "libdb5.3", "libgdbm6", "libcrypt1", "libnsl2", "libtirpc3", "libtirpc-common",
    "libgssapi-krb5-2", "libk5crypto3", "libkrb5-3", "libkrb5support0", "libkeyutils1",
    "libcom-err2", "libzstd1", "media-types",
)

#: `pause` waits for SIGTERM or SIGINT and exits 0; `exit N` exits N; `echo ARGS` prints;
#: `token SOCKET` asks the agent on SOCKET for a token, as a task would, and prints the
#: answer's status and token type (never the token); `recover SOCKET` keeps asking until a
#: call succeeds after one failed.
TOOL_SOURCE = """package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func token(socket string, verbose, wait bool) int {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
	req, _ := http.NewRequest("GET", "http://agent/v1/token", nil)
	req.Header.Set("X-Flyte-Auth-Agent", "1")
	resp, err := client.Do(req)
	// With `wait`, as the stdlib client does: while the socket's directory exists, the
	// agent is starting, so wait for it (up to 30 s).
	for start := time.Now(); wait && err != nil && time.Since(start) < 30*time.Second; {
		if _, statErr := os.Stat(filepath.Dir(socket)); statErr != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
		resp, err = client.Do(req)
	}
	if err != nil {
		if verbose {
			fmt.Println("error", err)
		}
		return 1
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if verbose {
		fmt.Printf("uid=%d status=%d token_type=%v\\n",
			os.Getuid(), resp.StatusCode, body["token_type"])
	}
	if resp.StatusCode != 200 {
		return 1
	}
	return 0
}

// untilRecovered asks for a token every 100 ms, printing each change of answer, and exits 0 once
// a call succeeds after one failed (the agent died and came back); 1 after two minutes.
func untilRecovered(socket string) int {
	last, failed := "", false
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		status := "ok"
		if token(socket, false, false) != 0 {
			status, failed = "failing", true
		} else if failed {
			fmt.Println("ok again")
			return 0
		}
		if status != last {
			fmt.Println(status)
			last = status
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 1
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "recover" {
		os.Exit(untilRecovered(os.Args[2]))
	}
	if len(os.Args) > 2 && os.Args[1] == "exit" {
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	}
	if len(os.Args) > 1 && os.Args[1] == "echo" {
		fmt.Println(strings.Join(os.Args[2:], " "))
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "token" {
		os.Exit(token(os.Args[2], true, true))
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
"""


@dataclass(frozen=True)
class Image:
    """One image: files by absolute path in the image, and how it runs."""

    name: str
    files: dict[str, tuple[bytes, int]]  # path -> (content, mode)
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    user: str = "0:0"
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def _layer(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A deterministic tar: parent directories first, fixed times and owners."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parents = {str(parent.relative_to("/")) for path in files
                   for parent in Path(path).parents if parent != Path("/")}
        for directory in sorted(parents):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def layout(image: Image, layer: bytes | None = None) -> bytes:
    """The image as an OCI image layout in a tar, named for `ctr images import`; its one
    layer holds `image.files`, or is `layer` (a tar) when given."""
    blobs: dict[str, bytes] = {}
    layer = _layer(image.files) if layer is None else layer
    layer_desc = _blob(blobs, layer)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": image.entrypoint, "Cmd": image.cmd,
                         "User": image.user, "Env": image.env, "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
              # One entry per layer: builders (buildah) check the two agree.
              "history": [{"created_by": f"devstack/real/images.py: {image.name}"}]}
    config_desc = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **config_desc},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            **layer_desc}]}
    manifest_desc = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
        "annotations": {"io.containerd.image.name": image.name,
                        "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[1]}}]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entries = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                   "index.json": json.dumps(index, sort_keys=True).encode()}
        entries |= {f"blobs/sha256/{d.removeprefix('sha256:')}": b for d, b in blobs.items()}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tool_binary() -> Path:
    """The static Go program behind both images, built once."""
    digest = hashlib.sha256(TOOL_SOURCE.encode()).hexdigest()[:16]
    out = CACHE / f"tool-{digest}" / "tool"
    if out.exists():
        return out
    say("building the e2e pause/tool program (static Go)")
    work = out.parent / "src"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text("module flyteauth.e2e/tool\n\ngo 1.22\n")
    (work / "main.go").write_text(TOOL_SOURCE)
    _run(["env", "CGO_ENABLED=0", "go", "build", "-trimpath", "-o", str(out), "."], work)
    return out


def tool_images() -> list[Path]:
    """The pause and tool images as import tarballs, cached by content."""
    binary = tool_binary().read_bytes()
    made = []
    for image in (Image(PAUSE_IMAGE, {"/pause": (binary, 0o755)}, ["/pause"],
                        user="65535:65535"),
                  Image(TOOL_IMAGE, {"/tool": (binary, 0o755)}, ["/tool"])):
        data = layout(image)
        path = CACHE / "images" / f"{hashlib.sha256(data).hexdigest()[:16]}.tar"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        made.append(path)
    return made


@dataclass(frozen=True)
class PythonImage:
    """An image with Debian bookworm's Python 3.11 and a virtualenv at `venv` holding
    `packages` (pip requirements, installed from wheels built here), run as `user`."""

    name: str
    venv: str
    packages: tuple[str, ...]  # what `pip install` gets inside the image
    #: What `pip wheel` builds, run in the repository (paths, requirements); third-party
    #: versions pinned to the suite's own environment.
    wheels: tuple[str, ...]
    sources: tuple[str, ...]  # top-level directories whose files the image depends on
    entrypoint: list[str]
    cmd: list[str]
    user: str
    env: tuple[str, ...] = ()
    debs: tuple[str, ...] = AGENT_DEBS
    #: Files copied in as they are: image path -> path under the repository.
    files: tuple[tuple[str, str], ...] = ()

    def digest(self) -> str:
        """What the image is made of: its recipe, how it is built (this module), and the
        sources it installs."""
        digest = hashlib.sha256(repr(self).encode() + Path(__file__).read_bytes())
        for top in self.sources:
            for path in sorted((ROOT / top).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
        for _, source in self.files:
            digest.update((ROOT / source).read_bytes())
        digest.update((ROOT / "pyproject.toml").read_bytes())
        return digest.hexdigest()[:16]


def release_image(target: str = "agent") -> Path:
    """An image `make dist` built from deploy/Dockerfile ("agent" or "server"), as the
    release ships it."""
    path = release.archive(target)
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make dist` (make e2e does it first)")
    return path


def debian_root(packages: tuple[str, ...], debs: Path, rootfs: Path) -> None:
    """Debian's `packages` downloaded into `debs` and unpacked into `rootfs` (no maintainer
    scripts run: what they would link or make, callers make)."""
    _run(["apt-get", "download", "-q", *packages], debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(rootfs)], debs)


#: deploy/Dockerfile's PYTHON as `make images` builds it (no registry here): Debian bookworm's
#: Python 3.11 with `python` on PATH, and the POSIX shell and tools a RUN step uses.
BASE_IMAGE = "localhost/flyte-auth/python:3.11-bookworm"
BASE_DEBS = (*AGENT_DEBS, "dash", "coreutils", "findutils", "libacl1", "libattr1", "libgmp10",
             "libselinux1", "libpcre2-8-0")
BASE_LINKS = (("/bin/sh", "dash"), ("/usr/bin/python3", "python3.11"),
              ("/usr/local/bin/python", "/usr/bin/python3.11"),
              ("/usr/local/bin/python3", "/usr/bin/python3.11"))


def base_image() -> Path:
    """BASE_IMAGE as an OCI archive, cached by its recipe (this module's source)."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    path = CACHE / "images" / f"base-python-{digest}.tar"
    if path.exists():
        return path
    for stale in path.parent.glob("base-python-*.tar"):
        stale.unlink()
    say(f"building {BASE_IMAGE} from Debian bookworm's packages (deploy/Dockerfile's PYTHON)")
    work = CACHE / "base-image"
    shutil.rmtree(work, ignore_errors=True)
    debs, rootfs = work / "debs", work / "rootfs"
    debs.mkdir(parents=True)
    debian_root(BASE_DEBS, debs, rootfs)
    for link, target in BASE_LINKS:  # where a package does not ship the link itself
        made = rootfs / link.lstrip("/")
        made.parent.mkdir(parents=True, exist_ok=True)
        if not made.is_symlink():
            made.symlink_to(target)
    for directory, mode in (("tmp", 0o1777), ("root", 0o700)):
        (rootfs / directory).mkdir(exist_ok=True)
        (rootfs / directory).chmod(mode)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry)
    image = Image(BASE_IMAGE, {}, [], ["python3"],
                  env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "LANG=C.UTF-8"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(layout(image, layer.getvalue()))
    shutil.rmtree(work, ignore_errors=True)
    return path


def python_image(spec: PythonImage) -> Path:
    """`spec` as an import tarball, cached by its digest. Debian's packages unpacked into a
    root filesystem, the virtualenv made and filled inside it (chroot: needs root)."""
    prefix = spec.name.split("/")[-1].replace(":", "-")
    path = CACHE / "images" / f"{prefix}-{spec.digest()}.tar"
    if path.exists():
        return path
    for stale in path.parent.glob(f"{prefix}-*.tar"):  # earlier sources' builds (100+ MB each)
        stale.unlink()
    say(f"building the {spec.name} image (Debian's Python 3.11 + "
        f"{', '.join(spec.packages) or 'nothing else'}; "
        "needs root for chroot)")
    work = CACHE / "python-image"
    shutil.rmtree(work, ignore_errors=True)
    debs, rootfs, wheels = work / "debs", work / "rootfs", work / "rootfs/wheels"
    for d in (debs, wheels):
        d.mkdir(parents=True)
    debian_root(spec.debs, debs, rootfs)
    if spec.wheels:
        pins = work / "constraints.txt"
        ours = ("flyte-auth", "flytekitplugins-auth")
        pins.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in distributions()
                                if not d.metadata["Name"].startswith(ours)))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
              "-c", str(pins), *spec.wheels], ROOT)

    def in_root(*argv: str) -> None:
        done = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), *argv],
                              env={"PATH": "/usr/bin:/bin", "PIP_NO_CACHE_DIR": "1",
                                   "HOME": "/root", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {spec.name}: "
                               f"{(done.stdout + done.stderr)[-2000:]}")

    in_root("/usr/bin/python3.11", "-m", "venv", spec.venv)
    if spec.packages:
        in_root(f"{spec.venv}/bin/pip", "install", "-q", "--no-index", "--find-links", "/wheels",
                *spec.packages)
    shutil.rmtree(wheels)
    for pip in (rootfs / spec.venv.lstrip("/") / "bin").glob("pip*"):
        pip.unlink()
    # As deploy/Dockerfile: bytecode for the interpreter's library and the venv, hash-based
    # (valid whatever the files' times), in place of pip's.
    for cache in list((rootfs / spec.venv.lstrip("/")).rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    in_root("/usr/bin/python3.11", "-m", "compileall", "-q",  # no -j: no /dev/shm in the root
            "--invalidation-mode", "unchecked-hash", "-x", "/tests?/", "/usr/lib/python3.11",
            spec.venv)
    for target, source in spec.files:
        (rootfs / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / source, rootfs / target.lstrip("/"))
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    image = Image(spec.name, {}, spec.entrypoint, spec.cmd, user=spec.user,
                  env=[f"PATH={spec.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                       "/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
                       *spec.env])
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(layout(image, layer.getvalue()))
    shutil.rmtree(work, ignore_errors=True)
    return path

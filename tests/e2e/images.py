"""Container images for the real node, built here with no registry and no container engine:
an OCI image layout (one layer tar, a config, a manifest, an index) in a tarball, which
`ctr images import` loads into containerd. Each is cached by the digest of its content.

- `pause`: the pod sandbox image the kubelet asks for (containerd's `sandbox_image`), a
  static Go program that waits for SIGTERM, under the name registry.k8s.io/pause uses.
- `tool`: the same static program, for task containers that only need to run and exit.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.peers import CACHE, _run, say

PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
TOOL_IMAGE = "flyte-auth.e2e/tool:1"

#: `pause` waits for SIGTERM or SIGINT and exits 0; `exit N` exits N; `echo ARGS` prints.
TOOL_SOURCE = """package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "exit" {
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	}
	if len(os.Args) > 1 && os.Args[1] == "echo" {
		fmt.Println(strings.Join(os.Args[2:], " "))
		return
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


def layout(image: Image) -> bytes:
    """The image as an OCI image layout in a tar, named for `ctr images import`."""
    blobs: dict[str, bytes] = {}
    layer = _layer(image.files)
    layer_desc = _blob(blobs, layer)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": image.entrypoint, "Cmd": image.cmd,
                         "User": image.user, "Env": image.env, "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
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

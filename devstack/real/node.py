"""A real node for the end-to-end cluster: containerd + runc (Debian) and the kubelet, with
kube-scheduler placing pods on it and kube-controller-manager running the two controllers
a node needs (node lifecycle: it lifts the not-ready taint; root-ca-cert-publisher: the
kube-root-ca.crt every pod's service-account volume mounts). All as local processes, state
under one short temp dir.

Pods use the host's network (no CNI plugin here), so everything stays on loopback; the
tests set `hostNetwork` in their pod specs. Images come from devstack/real/images.py, imported
into containerd: nothing is pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.real import images, peers
from devstack.real.cluster import ADMIN_TOKEN, Cluster, free_port
from devstack.real.process import kill_trees, processes_with, stop_all

NODE = "e2e-node"
#: The node's IP: the kubelet refuses a loopback one (127/8), and this machine has no dummy
#: interfaces, so the harness adds this /32 to `lo` for the node's life. Traffic to it never
#: leaves the machine; the kubelet listens on it and pods (host network) get it as their IP.
NODE_IP = "10.254.254.1"
#: The node is tainted so that only pods meant for it run there: other tests' pods stay
#: unscheduled, as they were before the suite had a node (and delete at once).
TAINT = "flyte-auth.e2e/real-node"
TOLERATION = {"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}
KUBELET_TOKEN = "e2e-kubelet-token"
SCHEDULER_TOKEN = "e2e-scheduler-token"
#: Static-token users the cluster knows (tokens.csv lines: token,user,uid,groups).
NODE_USERS = (f'{KUBELET_TOKEN},system:node:{NODE},{NODE},"system:nodes"',
              f"{SCHEDULER_TOKEN},system:kube-scheduler,kube-scheduler,")

CONTAINERD_CONFIG = """version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root
  # lacks (runc: "failed to update /proc/self/oom_score_adj: Permission denied"); kind and
  # rootless setups set the same.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/conf"
"""


def kubelet_config(sock: Path, port: int, healthz: int, client_ca: Path) -> dict[str, Any]:
    """The kubelet of a one-node test cluster on a developer machine: cgroupfs, no swap
    check, no eviction or image GC (a busy disk must not evict the test's pods)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{sock}",
        "address": NODE_IP, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(client_ca)}},  # the API server's
        "authorization": {"mode": "AlwaysAllow"},
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "enforceNodeAllocatable": [], "resolvConf": "", "serializeImagePulls": False,
        "syncFrequency": "2s", "fileCheckFrequency": "2s",
    }


@dataclass
class Node:
    cluster: Cluster
    workdir: Path  # short: containerd's socket path must fit in 107 bytes
    #: Images imported besides pause, the tool and the agent (import tarballs).
    images: tuple[Path, ...] = ()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    added_ip: bool = False

    @property
    def containerd_sock(self) -> Path:
        return self.workdir / "containerd.sock"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def ctr(self, *args: str) -> str:
        done = subprocess.run(["ctr", "--address", str(self.containerd_sock), "-n", "k8s.io",
                               *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _add_node_ip(self) -> None:
        shown = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                               text=True, check=True).stdout
        if f" {NODE_IP}/" not in shown:
            subprocess.run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"], check=True)
            self.added_ip = True

    async def start(self) -> None:
        await asyncio.to_thread(self._add_node_ip)
        for sub in ("containerd", "cni/bin", "cni/conf", "kubelet", "pki"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # Pods here use the host's network, so no CNI plugin ever runs; the runtime reports
        # its network ready (and the kubelet lifts the node's not-ready taint) only once a
        # CNI config exists. This one names a plugin with no binary here: a pod without
        # hostNetwork fails at sandbox creation, saying so.
        (self.workdir / "cni/conf/10-host-network-only.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "host-network-only",
            "plugins": [{"type": "host-network-only"}]}))
        config = self.workdir / "containerd.toml"
        config.write_text(CONTAINERD_CONFIG.format(dir=self.workdir, pause=images.PAUSE_IMAGE))
        self._spawn("containerd", ["containerd", "--config", str(config)])
        await self._until(self.containerd_sock.exists, "containerd's socket")
        for tarball in [*images.tool_images(), images.release_image(), *self.images]:
            self.ctr("images", "import", "--no-unpack=false", str(tarball))
        kubelet_yaml = self.workdir / "kubelet.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(
            self.containerd_sock, free_port(), free_port(), self.cluster.ca_file)))
        admin_kc = self.cluster.kubeconfig(self.workdir / "admin.kc", ADMIN_TOKEN)
        self._spawn("kube-controller-manager", [
            str(peers.kube_command("kube-controller-manager")), f"--kubeconfig={admin_kc}",
            f"--authentication-kubeconfig={admin_kc}", f"--authorization-kubeconfig={admin_kc}",
            "--controllers=nodelifecycle,root-ca-cert-publisher", "--leader-elect=false",
            f"--root-ca-file={self.cluster.ca_file}", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}"])
        self._spawn("kube-scheduler", [
            str(peers.kube_command("kube-scheduler")),
            f"--kubeconfig={self.cluster.kubeconfig(self.workdir / 'sched.kc', SCHEDULER_TOKEN)}",
            f"--authentication-kubeconfig={self.workdir / 'sched.kc'}",
            f"--authorization-kubeconfig={self.workdir / 'sched.kc'}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}"])
        self._spawn("kubelet", [
            str(peers.kube_command("kubelet")), f"--config={kubelet_yaml}",
            f"--kubeconfig={self.cluster.kubeconfig(self.workdir / 'kubelet.kc', KUBELET_TOKEN)}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'pki'}",
            f"--hostname-override={NODE}", f"--node-ip={NODE_IP}",
            f"--register-with-taints={TAINT}=:NoSchedule"])
        await self._until_node_registered()

    async def _until(self, ready: Any, what: str, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not ready():
                self._check_alive(what)
                await asyncio.sleep(0.1)  # polling a process this harness does not own

    def _check_alive(self, waiting_for: str) -> None:
        for p in self.processes:
            if p.poll() is not None:
                raise RuntimeError(f"a node process exited while waiting for {waiting_for}:\n"
                                   f"{self.logs()}")

    async def _until_node_registered(self) -> None:
        async with asyncio.timeout(120):
            while True:
                self._check_alive(f"node {NODE} to register")
                with contextlib.suppress(Exception):
                    node = await self.cluster.request("GET", f"/api/v1/nodes/{NODE}")
                    if node["status"].get("nodeInfo", {}).get("containerRuntimeVersion"):
                        return
                await asyncio.sleep(0.5)  # the kubelet registers and reports its runtime

    async def stop(self) -> None:
        stop_all(self.processes, 30)
        # containerd starts a shim per pod that outlives it (by design: containers survive a
        # containerd restart); ours name our containerd's socket, and go with what they run.
        kill_trees(processes_with(str(self.containerd_sock)))
        await asyncio.to_thread(self._unmount)

    def _unmount(self) -> None:
        """The kubelet leaves tmpfs mounts (projected volumes) under its root dir; the node's
        IP goes if the harness added it."""
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.workdir))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        if self.added_ip:
            subprocess.run(["ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo"], check=False)

    def empty_dir(self, pod: dict[str, Any], volume: str) -> Path:
        """Where the kubelet keeps `pod`'s emptyDir `volume` on this node."""
        return (self.workdir / "kubelet/pods" / str(pod["metadata"]["uid"]) /
                "volumes/kubernetes.io~empty-dir" / volume)

    async def pod_phase(self, namespace: str, name: str) -> str:
        pod = await self.cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return str(pod.get("status", {}).get("phase", ""))

    async def wait_until(self, namespace: str, name: str, done: Callable[[dict[str, Any]], bool],
                         timeout: float = 120) -> dict[str, Any]:
        """The pod once `done(pod)` holds (watched, not polled)."""
        path = (f"/api/v1/namespaces/{namespace}/pods?watch=true"
                f"&fieldSelector=metadata.name%3D{name}")
        assert self.cluster.session is not None
        async with asyncio.timeout(timeout):
            async with self.cluster.session.get(self.cluster.url + path) as resp:
                async for line in resp.content:
                    pod = json.loads(line)["object"]
                    if done(pod):
                        return dict(pod)
        raise RuntimeError(f"the watch on pod {namespace}/{name} ended")

    async def wait_phase(self, namespace: str, name: str, phases: set[str],
                         timeout: float = 120) -> dict[str, Any]:
        return await self.wait_until(
            namespace, name, lambda pod: pod.get("status", {}).get("phase") in phases, timeout)


#: inotify(7): an unlink in the watched directory (an unmount reports IN_UNMOUNT instead).
IN_DELETE = 0x200


@contextlib.asynccontextmanager
async def unlinks(directory: Path) -> AsyncIterator[asyncio.Queue[str]]:
    """The names unlinked from `directory` while the context is open, as inotify reports
    them: an event, not a poll, and unlike the file's absence it cannot be confused with the
    kubelet tearing the volume down."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, str(directory).encode(), IN_DELETE) < 0:
        raise OSError(ctypes.get_errno(), f"inotify on {directory}")
    names: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        data = os.read(fd, 65536)
        while data:  # struct inotify_event: wd, mask, cookie, len, then the name
            _, mask, _, size = struct.unpack_from("iIII", data)
            if mask & IN_DELETE:
                names.put_nowait(data[16:16 + size].rstrip(b"\0").decode())
            data = data[16 + size:]

    loop = asyncio.get_running_loop()
    loop.add_reader(fd, read)
    try:
        yield names
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.asynccontextmanager
async def running_node(cluster: Cluster, extra_images: tuple[Path, ...] = ()
                       ) -> AsyncIterator[Node]:
    workdir = Path(tempfile.mkdtemp(prefix="fa-node-"))
    node = Node(cluster, workdir, extra_images)
    try:
        await node.start()
        yield node
    finally:
        await node.stop()
        shutil.rmtree(workdir, ignore_errors=True)

"""The real programs, built and run on this machine as local processes: kube-apiserver with
etcd, a node (kubelet, kube-scheduler, kube-controller-manager, containerd and runc), the
images its pods run, and the other peers' builds (`python -m devstack.real.peers`). The
end-to-end suite (tests/e2e) and the pod start benchmark (bench/pod_start.py) run them; the
stand-ins beside this package are checked against them."""

# The commands people type. Each sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt when a pyproject.toml changes.
STAMP  := $(VENV)/.installed
# The three distributions: the shared kit, the servers (root), the flytekit plugin.
PYPROJECTS := common/pyproject.toml pyproject.toml flytekit_plugin/pyproject.toml

.PHONY: help venv test unit unit-agent unit-exchange unit-injector unit-plugin lint fmt run bench bench-agent bench-exchange bench-injector \
        bench-plugin bench-pod-start bench-burst dist tools task-envs e2e-peers kustomize-path helm-path manifests chart images e2e e2e-long \
        e2e-deps clean

help:
	@echo "make run    run the whole chain locally and print the token round trip"
	@echo "make manifests / make chart   render the kustomize overlay / the Helm chart"
	@echo "make dist   the release into dist/: wheels, sdists, the chart, both images (OCI archives)"
	@echo "make images the same (docker, podman, or buildah as root)"
	@echo "make test   lint (ruff, mypy --strict) and run every test"
	@echo "make unit-agent (-exchange, -injector, -plugin)  one component's tests and the kit's"
	@echo "make e2e    end to end against real kube-apiserver, a node, Keycloak, Flyte 1 and 2, oauth2-proxy"
	@echo "make e2e-long  the end-to-end cases that wait minutes of real time (token rotation)"
	@echo "make bench  run the benchmarks (prints figures and ratios)"
	@echo "make bench-pod-start  pod start latency on the real node, injected vs not (root)"
	@echo "make bench-burst  N pods exchanging at once against the real API server and FlyteAdmin"
	@echo "make fmt    format and auto-fix with ruff"

$(STAMP): $(PYPROJECTS)
	@echo "make: setting up $(VENV) (first run, or a pyproject.toml changed; about a minute):"
	@echo "      the three distributions (editable) and the dev dependency group: aiohttp,"
	@echo "      grpcio + flyteidl, flytekit, kubernetes-asyncio, joserfc, structlog, pytest, ruff, mypy"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ./common -e ./flytekit_plugin \
	    -e '.[agent,exchange,injector]' --group dev
	@echo "make: $(VENV) is ready"
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# No root needed. The manifest tests render with kustomize and helm, Go programs built once
# per machine (below) before pytest starts, never inside a test's timeout; without Go, make
# says what is missing before any test runs.
unit: $(STAMP) tools task-envs
	$(RENDERERS) $(VENV)/bin/pytest --ignore=tests/e2e $(PYTEST_ARGS)
	$(PY) -m devstack.task_envs --test $(PYTEST_ARGS)

# One component's tests and the shared kit's (make unit-agent, unit-exchange, unit-injector,
# unit-plugin): what a change to that component can break below the end-to-end suite.
UNIT_agent    := tests/agent
UNIT_exchange := tests/exchange
UNIT_injector := tests/injector
UNIT_plugin   := flytekit_plugin/tests task_tests
unit-agent unit-exchange unit-injector unit-plugin: unit-%: $(STAMP)
	$(VENV)/bin/pytest tests/common $(UNIT_$*) $(PYTEST_ARGS)

# What a task image installs (our two task-side wheels, built fresh; flytekit where it installs),
# in a venv per Python task images run besides 3.11: 3.10, 3.12, 3.13 (pyenv's or on PATH).
# Built before pytest starts; the first run downloads flytekit for each (about a minute).
task-envs: $(STAMP)
	$(PY) -m devstack.task_envs

# End to end against real peers (kube-apiserver + etcd, Keycloak, Flyte on PostgreSQL). The
# first run on a machine builds kube-apiserver and Flyte from Go sources (about 20 minutes);
# later runs reuse the cache. etcd, PostgreSQL, containerd and runc come from Debian packages
# (the real node's kubelet runs pods in containerd): installing them
# needs root, as does buildah's image build (make dist); the suite runs them as its own
# processes.
E2E_PACKAGES := $(if $(shell command -v etcd),,etcd-server) \
                $(if $(wildcard /usr/lib/postgresql/15/bin/initdb),,postgresql) \
                $(if $(shell command -v containerd),,containerd) $(if $(shell command -v runc),,runc) \
                $(if $(shell command -v buildah),,buildah)
e2e-deps:
	@test -z "$(strip $(E2E_PACKAGES))" || test "$$(id -u)" = 0 || { echo "make e2e: needs the \
	Debian packages $(strip $(E2E_PACKAGES)); install them (apt-get install $(strip \
	$(E2E_PACKAGES))) or run make e2e-deps as root"; exit 1; }
	@test -z "$(strip $(E2E_PACKAGES))" || { apt-get update -qq && \
	    apt-get install -y -qq $(E2E_PACKAGES) >/dev/null; }

# Peers and images are built (or found in the cache) before pytest starts: no test's timeout
# covers a build.
# The agent image the node runs is the release's: make dist builds it first.
e2e-peers: $(STAMP) tools e2e-deps dist
	$(PY) -m devstack.real.peers
	$(PY) -m tests.e2e.images

e2e: e2e-peers
	$(RENDERERS) $(VENV)/bin/pytest tests/e2e -m "not long" $(PYTEST_ARGS)

# The same suite's cases that wait on real time (the kubelet's token rotation: ~8 minutes).
e2e-long: e2e-peers
	$(RENDERERS) $(VENV)/bin/pytest tests/e2e -m long $(PYTEST_ARGS)

test: lint unit

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

run: $(STAMP)
	$(PY) -m devstack $(if $(ONCE),--once,)

# The agent's benchmark runs the agent from a venv with only the `agent` extra, as its image has.
AGENT_VENV  := .venv-agent
AGENT_STAMP := $(AGENT_VENV)/.installed
$(AGENT_STAMP): $(PYPROJECTS)
	$(PYTHON) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install -q --disable-pip-version-check ./common '.[agent]'
	touch $@

bench: bench-agent bench-exchange bench-injector bench-plugin

bench-agent: $(STAMP) $(AGENT_STAMP)
	$(AGENT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./common .
	$(PY) bench/agent_socket.py --agent-python $(AGENT_VENV)/bin/python

bench-exchange: $(STAMP)
	$(PY) bench/exchange_server.py

bench-injector: $(STAMP)
	$(PY) bench/injector_webhook.py

bench-plugin: $(STAMP)
	$(PY) bench/plugin_overhead.py

# On the real node (root, and make e2e's peers); not part of `make bench`.
bench-pod-start: e2e-peers
	$(PY) bench/pod_start.py

# A burst of pods exchanging at once against the real API server and FlyteAdmin (no node).
bench-burst: e2e-peers
	$(PY) bench/exchange_burst.py

# Renderers, built from the Go module proxy into a cache outside the repo (once per machine).
TOOLS              := $(HOME)/.cache/flyte-auth-agent/tools
KUSTOMIZE_VERSION  := v5.7.1
HELM_VERSION       := v3.19.0
KUSTOMIZE          := $(TOOLS)/kustomize-$(KUSTOMIZE_VERSION)/kustomize
HELM               := $(TOOLS)/helm-$(HELM_VERSION)/helm
KUBE_VERSION       := 1.30.0

NEED_GO = @command -v go >/dev/null || { echo "make: building $(notdir $@) needs Go (1.22 or \
newer) on PATH: install it from https://go.dev/dl or your package manager (apt-get install \
golang), then run make again; it is built once into $(TOOLS)"; exit 1; }

$(KUSTOMIZE):
	$(NEED_GO)
	@echo "make: building kustomize $(KUSTOMIZE_VERSION) from the Go module proxy into $(TOOLS)"
	@echo "      (the manifest tests render deploy/kustomize with it; once per machine, a few minutes)"
	GOBIN=$(dir $@) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(HELM):
	$(NEED_GO)
	@echo "make: building helm $(HELM_VERSION) from the Go module proxy into $(TOOLS)"
	@echo "      (the chart tests render and lint deploy/helm with it; once per machine, a few minutes)"
	GOBIN=$(dir $@) go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" \
	    helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

tools: $(KUSTOMIZE) $(HELM)
# How pytest finds them (tests/renderers.py).
RENDERERS = FLYTE_AUTH_KUSTOMIZE=$(KUSTOMIZE) FLYTE_AUTH_HELM=$(HELM)

# Where the renderers are (built by make tools); for running pytest by hand.
kustomize-path:
	@echo $(KUSTOMIZE)
helm-path:
	@echo $(HELM)

manifests: $(KUSTOMIZE)
	@$(KUSTOMIZE) build deploy/kustomize/overlays/cert-manager

chart: $(HELM)
	@$(HELM) template flyte-auth deploy/helm/flyte-auth --namespace flyte-auth --kube-version $(KUBE_VERSION)

# The release, into dist/: wheels and sdists (twine check), the chart (helm lint --strict,
# helm package), both images from deploy/Dockerfile as OCI archives (docker, podman, or
# buildah as root; devstack/release.py). `make images` is the same.
dist: $(STAMP) $(HELM)
	$(PY) -m devstack.release --helm $(HELM)

images: dist

clean:
	rm -rf $(VENV) $(AGENT_VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache run

# The commands people type. Each sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt when pyproject.toml changes.
STAMP  := $(VENV)/.installed

PACKAGES := agent/flyte_auth_agent exchange_server/flyte_auth_exchange sidecar_injector/flyte_auth_injector \
            flytekit_plugin/flytekitplugins

.PHONY: help venv test unit lint fmt run bench bench-agent bench-exchange bench-injector \
        bench-plugin tools manifests chart images e2e e2e-deps clean

help:
	@echo "make run    run the whole chain locally and print the token round trip"
	@echo "make manifests / make chart   render the kustomize overlay / the Helm chart"
	@echo "make images build the container images (needs a running docker or podman)"
	@echo "make test   lint (ruff, mypy --strict) and run every test"
	@echo "make e2e    end to end against real kube-apiserver, etcd, Keycloak, FlyteAdmin and flytepropeller"
	@echo "make bench  run the benchmarks (prints figures and ratios)"
	@echo "make fmt    format and auto-fix with ruff"

$(STAMP): pyproject.toml
	@echo "make: setting up $(VENV) (first run, or pyproject.toml changed; about a minute):"
	@echo "      the project and its dev extras: aiohttp, grpcio + flyteidl, flytekit,"
	@echo "      kubernetes-asyncio, joserfc, structlog, pytest, ruff, mypy"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@echo "make: $(VENV) is ready"
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES) tests bench

unit: $(STAMP) tools
	KUSTOMIZE=$(KUSTOMIZE) HELM=$(HELM) $(VENV)/bin/pytest --ignore=tests/e2e $(PYTEST_ARGS)

# End to end against real peers (kube-apiserver + etcd, Keycloak, Flyte on PostgreSQL). The
# first run on a machine builds kube-apiserver and Flyte from Go sources (about 20 minutes);
# later runs reuse the cache.
e2e-deps:
	@command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
	@test -x /usr/lib/postgresql/15/bin/initdb || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
	@systemctl disable --now etcd postgresql >/dev/null 2>&1 || true

e2e: $(STAMP) tools e2e-deps
	$(PY) -m tests.e2e.peers
	KUSTOMIZE=$(KUSTOMIZE) HELM=$(HELM) $(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

test: lint unit

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

run: $(STAMP)
	$(PY) -m tests.support.devstack $(if $(ONCE),--once,)

# The agent's benchmark runs the agent from a venv with only the `agent` extra, as its image has.
AGENT_VENV  := .venv-agent
AGENT_STAMP := $(AGENT_VENV)/.installed
$(AGENT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install -q --disable-pip-version-check '.[agent]'
	touch $@

bench: bench-agent bench-exchange bench-injector bench-plugin

bench-agent: $(STAMP) $(AGENT_STAMP)
	$(AGENT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	$(PY) bench/agent_socket.py --agent-python $(AGENT_VENV)/bin/python

bench-exchange: $(STAMP)
	$(PY) bench/exchange_server.py

bench-injector: $(STAMP)
	$(PY) bench/injector_webhook.py

bench-plugin: $(STAMP)
	$(PY) bench/plugin_overhead.py

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
	GOBIN=$(dir $@) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(HELM):
	$(NEED_GO)
	GOBIN=$(dir $@) go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" \
	    helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

tools: $(KUSTOMIZE) $(HELM)

manifests: $(KUSTOMIZE)
	@$(KUSTOMIZE) build deploy/kustomize/overlays/cert-manager

chart: $(HELM)
	@$(HELM) template flyte-auth deploy/helm/flyte-auth --namespace flyte-auth --kube-version $(KUBE_VERSION)

ENGINE := $(shell for e in docker podman; do command -v $$e >/dev/null && $$e info >/dev/null 2>&1 && echo $$e && break; done)
images:
	@test -n "$(ENGINE)" || { echo "make images: no running container engine (docker or podman) here; build on a machine with one"; exit 1; }
	$(ENGINE) build -f deploy/Dockerfile --target agent -t flyte-auth-agent:0.1.0 .
	$(ENGINE) build -f deploy/Dockerfile --target server -t flyte-auth-server:0.1.0 .

clean:
	rm -rf $(VENV) $(AGENT_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache run

# The commands people type. Each sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt when pyproject.toml changes.
STAMP  := $(VENV)/.installed

PACKAGES := agent/flyte_auth_agent exchange_server/flyte_auth_exchange sidecar_injector/flyte_auth_injector \
            flytekit_plugin/flytekitplugins

.PHONY: help venv test unit lint fmt run bench bench-agent bench-exchange bench-injector \
        bench-plugin clean

help:
	@echo "make run    run the whole chain locally and print the token round trip"
	@echo "make test   lint (ruff, mypy --strict) and run every test"
	@echo "make bench  run the benchmarks (prints figures and ratios)"
	@echo "make fmt    format and auto-fix with ruff"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES) tests bench

unit: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) $(AGENT_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache run

# jobq: `make demo` sets up and runs the main job; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test lint typecheck unit integration bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobq needs Python >= 3.11; run make with PYTHON=python3.11 (or newer)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'  # the server side too: base jobq is the light client
	@rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/jobq demo --kill-node

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	@bash tests/tools/ensure_chromium.sh || echo "make test: no Chromium; browser tests will skip (or fail under CI)"
	$(BIN)/python -m pytest -q tests

# Measurements, not tests (not part of `make test`): node-death recovery on a real control plane,
# Job vs jobq (~10 min, docs/kubernetes.md), then recovery over many jobs on the embedded stack,
# then what fsyncing every JetStream write costs (~2 min, docs/configuration.md#nats-fsync), what
# NATS TLS and users cost, what the retention sweeper costs with 0 vs 20,000 kept jobs (~2 min,
# docs/design/retention.md), then
# issue 14's figures (docs/performance.md): intake against a bare loop (~2 min), dispatcher CPU
# with a backlog (<= 5 min), submit -> running latency idle and behind a backlog (~2 min), pod
# start through the fork server against plain subprocesses (~1 min), then
# Kubernetes dispatch on 200 kwok nodes, jobq vs Jobs vs a bare create loop (~10 min), and the
# scale run on 1,000 kwok nodes (7-14 min); kwok and etcd 3.6 are built once from their Go
# modules (~2.5 and ~1 min; docs/performance.md says why the kwok benches need that etcd).
bench: setup
	$(BIN)/python -m bench.k8s_recovery
	$(BIN)/python bench/recovery.py
	$(BIN)/python -m bench.fsync
	$(BIN)/python -m bench.nats_security
	$(BIN)/python -m bench.retention
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.backlog
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.pod_start
	$(BIN)/python -m bench.k8s_dispatch
	$(BIN)/python -m bench.k8s_scale

clean:
	rm -rf .jobq $(VENV)

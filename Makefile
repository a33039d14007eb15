# Every install step lives here: a clean checkout needs only python3.11 and make.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
# checkov pins boto3==1.35.49 (botocore<1.36) and packaging<24: it cannot share .venv with
# aiobotocore's botocore pin, so it gets a venv of its own for the deploy-file checks.
CHECKOV := checkov==3.3.30

.PHONY: install tools run world test lint bench profile clean localstack-install test-localstack

install: $(STAMP)

tools: $(TOOLS_STAMP)
	@# promtool runs the alert rules' unit tests; it ships in Debian's prometheus package.
	@# Installing it needs root (as in CI); elsewhere the rule tests fail and say how to get it.
	@command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || \
		echo "warning: promtool is missing and could not be installed (apt-get install prometheus)"

$(TOOLS_STAMP): Makefile
	$(PY) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet '$(CHECKOV)'
	touch $(TOOLS_STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# DEMO_ARGS: e.g. --fifo (a FIFO queue and DLQ, each device's order checked), --duration 60.
run: install
	$(BIN)/event-processor demo $(DEMO_ARGS)

# The embedded emulator with the queue, DLQ, stream and key set, up until Ctrl-C; it prints
# the exports for other shells (docs/local-world.md). WORLD_ARGS: --port 0, --no-auth, --fifo,
# --env-file.
world: install
	$(BIN)/python -m devworld.world $(WORLD_ARGS)

# pytest-xdist workers: the tests mostly wait (on the emulator, subprocesses, fault windows),
# so more workers than cores pays, up to the point where they fight for the cores
# (docs/development.md, "Tests"). TEST_WORKERS=0 runs the suite in one process. Each worker
# gets whole files (loadfile), in the order collected (e2e, the slowest, first), so a module's
# fixtures are made once. Bytecode caching is on whatever the environment says: without it,
# every worker and every CLI subprocess compiles devworld and the tests again.
TEST_WORKERS ?= 3

test: install tools
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# LocalStack on the host (devworld/localstack_host.py), at docker-compose.yaml's version, with
# its settings and ready.d hook; cached under .localstack-host/ (python3.13, npm).
LOCALSTACK_HOST := $(BIN)/python -m devworld.localstack_host

localstack-install: install
	$(LOCALSTACK_HOST) install

# The end-to-end tier against it (tests/localstack, which plain `make test` does not collect):
# `run` starts LocalStack, runs pytest and stops LocalStack, also when a test fails. -rA shows
# each test's figures (events, duplicates, PutRecords latency, Prometheus checks).
test-localstack: localstack-install tools
	$(LOCALSTACK_HOST) run -- $(BIN)/pytest -q -rA --durations=0 -m localstack tests/localstack

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Throughput table, then the memory, hostile and restart scenarios; BENCH_ARGS narrows or resizes.
bench: install
	$(BIN)/python -m devworld.bench --scenario all $(BENCH_ARGS)

# py-spy records the daemon draining the bench's backlog into .profile/, then a summary by phase,
# frame and module (PROFILE_ARGS: --submissions, --rate, --format speedscope, --summarise FILE).
profile: install
	$(BIN)/python -m devworld.bench.profile $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .cache .localstack-host .mypy_cache .pytest_cache .ruff_cache

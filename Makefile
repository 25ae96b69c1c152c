# memstore: every target sets up what it needs; only Python 3 and make are assumed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TS := client/typescript

.PHONY: help run migrate test test-py test-ts lint lint-ts format proto proto-ts clean bench bench-quick bench-db-paths h2load fuzz reliability

help:
	@echo "make run      serve on 127.0.0.1:50051 (embedded PostgreSQL unless MEMSTORE_DATABASE_URL is set)"
	@echo "make test     run the whole test suite (Python, then the TypeScript client)"
	@echo "make lint     ruff, mypy, buf, hadolint, Kubernetes schemas, tsc and eslint"
	@echo "make proto    regenerate the Python and TypeScript stubs from protos/"
	@echo "make fuzz     the property-based suite with many more cases"
	@echo "make reliability  fault, failover, crash and fuzz tests; figures into RELIABILITY.md"
	@echo "make bench    speed figures beside same-run baselines, into BENCHMARKS.md (bench-quick: 1 minute)"
	@echo "make bench-db-paths  compare ways from grpc.aio to PostgreSQL on minimal servers (2 minutes)"
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

test: test-py test-ts

test-py: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

# The TypeScript client: exact dependencies from its lockfile, built, tested against servers it starts.
test-ts: $(INSTALLED)
	cd $(TS) && npm ci --no-audit --no-fund && npm run build && npm test

lint-ts: $(INSTALLED)
	cd $(TS) && npm ci --no-audit --no-fund && npm run check:generated && npm run lint

proto-ts: $(INSTALLED)
	cd $(TS) && npm ci --no-audit --no-fund && npm run generate

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf format --diff --exit-code
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/deployment.yaml \
		deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml
	$(MAKE) lint-ts

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	cd protos && ../$(BIN)/buf format -w

proto: $(INSTALLED)
	$(BIN)/python scripts/generate_protos.py
	$(MAKE) proto-ts

clean:
	rm -rf $(VENV) .memstore .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules $(TS)/dist $(TS)/build

# Many more generated inputs than the test suite's bounded share.
fuzz: $(INSTALLED)
	MEMSTORE_FUZZ_EXAMPLES=$${MEMSTORE_FUZZ_EXAMPLES:-3000} $(BIN)/pytest -q tests/test_fuzz.py tests/test_input_limits.py

# The fault, failover, crash and fuzz tests, their figures written into RELIABILITY.md.
reliability: $(INSTALLED)
	MEMSTORE_RELIABILITY_REPORT=RELIABILITY.md MEMSTORE_FUZZ_EXAMPLES=$${MEMSTORE_FUZZ_EXAMPLES:-1000} \
		$(BIN)/pytest -q tests/test_faults.py tests/test_failover.py tests/test_replicas.py \
		tests/test_crash_and_shutdown.py tests/test_fuzz.py

# Speed, each figure beside a baseline of the same run; writes BENCHMARKS.md.
bench: $(INSTALLED) h2load
	$(BIN)/python bench/run.py --write BENCHMARKS.md $(BENCH_ARGS)

# The same in about a minute: 100,000 users, short runs; prints only.
bench-quick: $(INSTALLED) h2load
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# Which way from grpc.aio to PostgreSQL is fastest (thread pool, Peewee's asyncio, coalesced reads).
bench-db-paths: $(INSTALLED) h2load
	$(BIN)/python bench/db_paths.py $(BENCH_ARGS)

# h2load (Debian's nghttp2-client) drives the GetUser figures. Installed when it can be (as root,
# with apt-get); otherwise the benchmarks say so and leave those figures out.
h2load:
	@command -v h2load >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing h2load: apt-get install -y nghttp2-client"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -q nghttp2-client || { apt-get update -q && apt-get install -y -q nghttp2-client; } \
				|| echo "could not install h2load: the h2load figures will be skipped"; \
		else \
			echo "h2load is not installed, and installing it needs root and apt-get:" \
				"the h2load figures will be skipped (install nghttp2-client to get them)"; \
		fi; }

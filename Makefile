# The two commands of the README: `make sweep` (the main job) and `make test`.
# Each creates the virtual environment and installs the project when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: sweep test test-fast install chromium system-packages report clean-runs cluster-up cluster-down

install: $(STAMP)

# Re-installs only when pyproject.toml changes; pip resolves torch to the build on this disk
# (a CUDA build that also runs on CPU; see docs/setup notes in README).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) sweeps/kappa_by_order.py $(ARGS)

report: $(STAMP)
	$(PY) -m dashboards.report $(ARGS)

# Debian's packages the tests use: Chromium (the report and MLflow UI pages, headless) and
# PostgreSQL (the local cluster's MLflow backend store, tests/test_cluster.py). Installed once.
DEBIAN_PACKAGES = $(if $(shell command -v chromium),,chromium chromium-driver) \
	$(if $(wildcard /usr/lib/postgresql/*/bin/postgres),,postgresql)

system-packages:
	@test -z "$(strip $(DEBIAN_PACKAGES))" || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBIAN_PACKAGES); }

chromium: system-packages

# Two pytest processes, whole files each: the cluster and sweep tests spend much of their time
# waiting (servers restarting, nodes declared dead, outages sat through), and the other process
# fills those waits. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP) system-packages
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# While working: everything but the tests marked slow (real Ray, MLflow stores and servers, deploy
# files, Chromium). `make test` stays the full suite, and it is what CI runs.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-runs:
	rm -rf runs .test-state

# A multi-node cluster on this machine (PostgreSQL, mlflow server, Ray head and workers): docs/deploy.md.
cluster-up: $(STAMP) system-packages
	$(PY) -m sweeps.local_cluster up $(ARGS)

cluster-down: $(STAMP)
	$(PY) -m sweeps.local_cluster down $(ARGS)

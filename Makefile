# PruningBench harness. `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PBENCH := $(VENV)/bin/pbench-harness
export HF_HUB_OFFLINE := 1
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0

.PHONY: help venv demo test test-fast schema bench clean docker images browser submit new-method check-method digits-leaderboard

help:
	@echo "make demo    - the embedded default: 3 methods on digits at 2x and 4x (subprocess runner), leaderboard"
	@echo "make test    - the test suite"
	@echo "make schema  - regenerate specs/schema/*.json from the pydantic models"
	@echo "make bench   - benchmarks/ (ratios against Torch-Pruning)"
	@echo "make new-method NAME=x    - copy method_template/ to methods/x"
	@echo "make check-method METHOD=x - conformance suite (subprocess runner; IN_DOCKER=1 for the image)"
	@echo "make submit METHOD=x      - image -> conformance in the container -> smoke run -> submissions/x-<version>/"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The Docker Engine and the method images (tests/test_docker_*). On a machine where the
# engine cannot be installed or started, docker tests skip - except in CI, where this fails.
docker: venv
	@if bash .ci/docker-setup.sh; then PYTHON=$(abspath $(PY)) docker/build-images.sh; \
	elif [ -n "$$CI" ]; then echo "make docker: no Docker engine in CI" >&2; exit 1; \
	else echo "make docker: no Docker engine here; docker tests will be skipped" >&2; fi

images: docker

# Debian's chromium for the site test (tests/test_site.py); skipped where it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium >/dev/null)) \
	      && echo "make browser: chromium installed"; \
	  elif [ -n "$$CI" ]; then echo "make browser: cannot install chromium in CI" >&2; exit 1; \
	  else echo "make browser: no chromium here; the site test will be skipped" >&2; fi; }

demo: venv
	$(PBENCH) sweep --track digits-resnet18 --methods magnitude_l1,magnitude_l2,random \
		--speedups 2,4 --seeds 0 --runner subprocess --out results/demo --no-models

new-method: venv
	$(PBENCH) new-method $(NAME)

check-method: venv
	$(PBENCH) check-method $(METHOD) $(if $(IN_DOCKER),--in-docker)

submit: venv docker
	$(PBENCH) submit $(METHOD)

# Every method (and PruningBench's regularizer pairings) on digits at 2x/4x/8x, timed; records go to
# benchmarks/results/ and the README table is regenerated from them.
digits-leaderboard: venv
	$(PY) benchmarks/digits_leaderboard.py --out benchmarks/results --jobs 2
	$(PY) -m harness.docs

# one pytest worker per core (pytest-xdist); a file's tests stay on one worker (module fixtures: the Slurm
# cluster, the attack suite's server). Tests marked serial watch the whole host (its disk, every method
# container) and run alone afterwards; pytest's 5 ("no test selected") is not a failure there.
PYTEST_WORKERS ?= auto
test: venv docker browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

schema: venv
	$(PY) -m specs.schema

bench: venv
	$(PY) benchmarks/prune_vs_torch_pruning.py
	$(PY) -W ignore benchmarks/input_pipeline.py
	$(PY) benchmarks/retrain_vs_minimal_loop.py
	$(PY) benchmarks/regularizer_vs_torch_pruning.py
	@if docker info >/dev/null 2>&1; then $(PY) benchmarks/docker_exchange.py; \
	else echo "bench: no Docker Engine, skipping benchmarks/docker_exchange.py"; fi
	$(PY) benchmarks/cli_startup.py
	$(PY) benchmarks/dry_run_accuracy.py
	$(PY) benchmarks/latency_stability.py
	$(PY) benchmarks/round_to.py
	$(PY) benchmarks/digits_leaderboard.py

clean:
	rm -rf results .pytest_cache

# Two commands on a fresh machine: `make plan STACK=staging` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK ?= staging

.PHONY: plan test lint bench clean venvs

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

plan: $(VENV)/.installed  ## what STACK declares, offline (JSON=1 for machine-readable)
	$(PY) -m infra.plan --stack $(STACK) $(if $(JSON),--json,)

test: $(VENV)/.installed  ## the whole suite: config, stacks, commands against moto
	$(PY) -m ruff check .
	$(PY) -m pytest

venvs:  ## what `pulumi up --policy-pack policy` needs: .venv (runtime) and policy/.venv (used by the CI workflows)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	test -x policy/.venv/bin/python || $(PYTHON) -m venv policy/.venv
	policy/.venv/bin/python -m pip install --quiet -r policy/requirements.txt

bench: $(VENV)/.installed  ## wall time of the offline plan per stack
	$(PY) bench/plan_time.py

clean:
	rm -rf $(VENV) policy/.venv .pytest_cache .ruff_cache

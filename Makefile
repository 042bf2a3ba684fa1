# Two commands on a fresh machine: `make plan STACK=staging` and `make test`.
PYTHON ?= python3
# The gateway's runtime venv runs as the task's non-root user in the contract test, so it is
# built from an interpreter that user can reach (not one under /root).
GATEWAY_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
VENV := .venv
PY := $(VENV)/bin/python
GW_VENV := .venv-gateway
STACK ?= staging

.PHONY: plan cost diff test lint bench bench-gateway serve clean venvs

# Installs report on stderr, so that `make -s plan JSON=1 > plan.json` holds the JSON alone.
$(VENV)/.installed: requirements.txt requirements-dev.txt gateway/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) >&2
	@$(PY) -m pip install --quiet --upgrade pip >&2
	@$(PY) -m pip install --quiet -r requirements-dev.txt >&2
	@touch $@

$(GW_VENV)/.installed: gateway/requirements.txt
	@test -x $(GW_VENV)/bin/python || $(GATEWAY_PYTHON) -m venv $(GW_VENV) >&2
	@$(GW_VENV)/bin/python -m pip install --quiet -r gateway/requirements.txt >&2
	@touch $@

plan: $(VENV)/.installed  ## what STACK declares, offline, ending with its monthly cost (JSON=1 for machine-readable)
	@$(PY) -m offline.plan --stack $(STACK) $(if $(JSON),--json,)

cost: $(VENV)/.installed  ## the monthly cost of STACK, line by line, and its LLM token spend with and without the cache
	@$(PY) -m offline.cost --stack $(STACK) $(if $(JSON),--json,)

FROM ?= staging
TO ?= prod
diff: $(VENV)/.installed  ## what differs between two stacks (FROM=staging TO=prod): config, resources, settings, cost
	@$(PY) -m offline.diff --from $(FROM) --to $(TO)

test: $(VENV)/.installed $(GW_VENV)/.installed  ## the whole suite: config, stacks, gateway, commands against moto
	$(PY) -m ruff check .
	$(PY) -m pytest

serve: $(GW_VENV)/.installed  ## the gateway on 127.0.0.1:8080 against OPENAI_BASE_URL, key from OPENAI_API_KEY
	HOST=127.0.0.1 PYTHONPATH=. $(GW_VENV)/bin/python -m gateway

venvs:  ## what `pulumi up --policy-pack policy` needs: .venv (runtime) and policy/.venv (used by the CI workflows)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	test -x policy/.venv/bin/python || $(PYTHON) -m venv policy/.venv
	policy/.venv/bin/python -m pip install --quiet -r policy/requirements.txt

bench: $(VENV)/.installed  ## wall time of the offline plan per stack
	$(PY) bench/plan_time.py

bench-gateway: $(VENV)/.installed  ## added latency and throughput of the gateway against a direct call
	$(PY) bench/gateway.py

clean:
	rm -rf $(VENV) $(GW_VENV) policy/.venv .pytest_cache .ruff_cache

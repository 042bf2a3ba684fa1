# Two commands on a fresh machine: `make plan STACK=staging` and `make test`.
PYTHON ?= python3
# The gateway's runtime venv runs as the task's non-root user in the contract test, so it is
# built from an interpreter that user can reach (not one under /root).
GATEWAY_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
VENV := .venv
PY := $(VENV)/bin/python
GW_VENV := .venv-gateway
STACK ?= staging

.PHONY: plan cost diff docs test lint lock bench bench-gateway mutate soak serve clean venvs destroy-ready restore

# Every install is from a lock with hashes (requirements*.txt, made from the *.in files by
# `make lock`): pip installs uv, uv installs the rest (about ten times faster than pip), compiled
# to bytecode at install: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every process
# would otherwise compile pulumi_aws's modules from source, 15% of a plan's time.
# Installs report on stderr, so that `make -s plan JSON=1 > plan.json` holds the JSON alone.
UV := $(VENV)/bin/uv
LOCK := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes

$(UV): requirements-uv.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) >&2
	@$(PY) -m pip install --quiet --require-hashes -r requirements-uv.txt >&2
	@touch $@

$(VENV)/.installed: $(UV) requirements-dev.txt
	@$(UV) pip install --quiet --compile-bytecode --python $(PY) --require-hashes -r requirements-dev.txt >&2
	@touch $@

$(GW_VENV)/.installed: $(UV) gateway/requirements.txt
	@test -x $(GW_VENV)/bin/python || $(GATEWAY_PYTHON) -m venv $(GW_VENV) >&2
	@$(UV) pip install --quiet --compile-bytecode --python $(GW_VENV)/bin/python --require-hashes \
		-r gateway/requirements.txt >&2
	@touch $@

lock: $(UV)  ## re-resolve every lock from its .in file (UPGRADE=1 takes the newest releases the ranges allow)
	$(LOCK) $(if $(UPGRADE),--upgrade,) requirements-dev.in -o requirements-dev.txt
	$(LOCK) -c requirements-dev.txt requirements.in -o requirements.txt
	$(LOCK) -c requirements-dev.txt gateway/requirements.in -o gateway/requirements.txt
	$(LOCK) -c requirements-dev.txt policy/requirements.in -o policy/requirements.txt
	$(LOCK) $(if $(UPGRADE),--upgrade,) requirements-uv.in -o requirements-uv.txt

plan: $(VENV)/.installed  ## what STACK declares, offline, ending with its monthly cost (JSON=1 for machine-readable)
	@$(PY) -m offline.plan --stack $(STACK) $(if $(JSON),--json,)

cost: $(VENV)/.installed  ## the monthly cost of STACK, line by line, and its LLM token spend with and without the cache
	@$(PY) -m offline.cost --stack $(STACK) $(if $(JSON),--json,)

docs: $(VENV)/.installed  ## regenerate docs/configuration.md's reference and the components' docstrings from the code
	$(PY) -m offline.config_doc --write
	$(PY) -m offline.component_docs --write

FROM ?= staging
TO ?= prod
diff: $(VENV)/.installed  ## what differs between two stacks (FROM=staging TO=prod): config, resources, settings, cost
	@$(PY) -m offline.diff --from $(FROM) --to $(TO)

test: $(VENV)/.installed $(GW_VENV)/.installed  ## the whole suite: lint, strict types (components, gateway), config, stacks, gateway, commands against moto
	@bash .ci/system-packages
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --dist worksteal

# Mutation testing of the modules that carry the guarantees (mutation/packages.py); PACKAGES=gateway
# runs one, SHARD=2/4 a part of it, SAMPLE=150 a random sample of each package's mutants (an estimate
# of its score, with its interval). Results are cached under .mutation/, so a second run tests only
# what changed.
mutate: $(VENV)/.installed  ## score the tests by the mutants they kill, per package (target 90 %; weekly in CI)
	@bash .ci/system-packages
	$(PY) -m mutation.run $(PACKAGES) $(if $(SHARD),--shard $(SHARD),) $(if $(SAMPLE),--sample $(SAMPLE),)

soak: $(VENV)/.installed $(GW_VENV)/.installed  ## faults under load (deploy, SIGKILL, Valkey failover and outage, 429 storm, stall, burst): what was lost
	@bash .ci/system-packages
	$(PY) -m soak $(if $(JSON),--json $(JSON),)

serve: $(GW_VENV)/.installed  ## the gateway on 127.0.0.1:8080 against OPENAI_BASE_URL, key from OPENAI_API_KEY
	HOST=127.0.0.1 PYTHONPATH=. $(GW_VENV)/bin/python -m gateway

venvs: $(UV)  ## what `pulumi up --policy-pack policy` needs: .venv (runtime) and policy/.venv (used by the CI workflows)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) --require-hashes -r requirements.txt
	test -x policy/.venv/bin/python || $(PYTHON) -m venv policy/.venv
	$(UV) pip install --quiet --compile-bytecode --python policy/.venv/bin/python --require-hashes \
		-r policy/requirements.txt

# The one reviewed `up` before `pulumi destroy` of a protected stack (docs/deploying.md, "Updating,
# destroying, re-creating"): it needs the Pulumi CLI and the stack's AWS credentials.
# REMOVE_GUARDDUTY=1 also removes an endpoint GuardDuty added to the VPC.
destroy-ready: venvs  ## lift STACK's protection in one reviewed `up`, then check `pulumi destroy` can run to the end
	pulumi config set --stack $(STACK) llm-service:teardown true
	pulumi up --stack $(STACK) --policy-pack policy --policy-pack-config policy/teardown.json
	pulumi stack output --stack $(STACK) --json > outputs-$(STACK).json
	$(PY) -m ops.teardown ready --stack $(STACK) --outputs outputs-$(STACK).json \
		$(if $(REMOVE_GUARDDUTY),--remove-guardduty-endpoint,)

restore: $(VENV)/.installed  ## before re-creating a destroyed STACK: restore its secrets and key, print what to adopt
	$(PY) -m ops.teardown restore --stack $(STACK)

bench: $(VENV)/.installed  ## wall time of the offline plan per stack
	$(PY) bench/plan_time.py

bench-gateway: $(VENV)/.installed  ## added latency and throughput of the gateway against a direct call
	$(PY) bench/gateway.py
	$(PY) bench/streams.py

clean:
	rm -rf $(VENV) $(GW_VENV) policy/.venv .pytest_cache .ruff_cache .build infra/.build

"""Entry point for `pulumi up` (Pulumi.yaml: `main: infra/`)."""

import sys
from pathlib import Path

# Pulumi runs this folder as a script: put the project root on the path instead, so that
# `infra` and `components` import as packages (and infra/*.py never shadows a stdlib module).
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import pulumi  # noqa: E402

from infra.config import ConfigError, error_lines  # noqa: E402
from infra.program import main  # noqa: E402

# The stack, step by step (infra/program.py, `main`): the config checked whole before anything
# is declared, then the provider; secrets (the KMS key, the LLM key's secret); the network;
# the load balancer; the cache and its AUTH token; the client-keys secret; the image;
# the service; the edge (WAF); monitoring; the budget; the outputs.
try:
    main()
except ConfigError as e:
    # One line per bad value and no traceback: RunError is Pulumi's clean stop.
    raise pulumi.RunError(error_lines(e)) from None

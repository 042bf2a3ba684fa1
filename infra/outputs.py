"""Read `pulumi stack output --json` saved to a file, for the operator commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_outputs(path: Path, required: list[str]) -> dict[str, Any]:
    """The outputs, or a ValueError naming the first required output that is missing."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON from `pulumi stack output --json`: {e}") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} has no output {missing[0]!r}; run "
                         f"`pulumi stack output --json > {path}` after `pulumi up`")
    return data

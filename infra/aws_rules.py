"""What AWS accepts for values the stack config passes through, in one place, each with its source.

Where botocore's service models carry a list, it is read from there; where only AWS's
documentation has it, the table is written here with the page it comes from, and a test checks
each entry against the text botocore ships where it can (tests/test_config_rules.py).
"""

from __future__ import annotations

import unicodedata
from functools import cache

# CloudWatch Logs retention. Source: the Logs API reference, PutRetentionPolicy.retentionInDays
# ("Possible values are: 1, 3, 5, ... and 3653"), as in botocore's logs model.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                      2192, 2557, 2922, 3288, 3653)

# Tag keys the stack sets itself (infra/program.py, tags_for): the budget filters on
# Environment, cost reports group by Project. Compared case-insensitively, since a key that
# differs only in case reads as the same tag in every console.
RESERVED_TAG_KEYS = ("Project", "Environment", "ManagedBy")
# Source: "Tagging your AWS resources", tag naming limits and requirements: 50 tags a resource.
MAX_TAGS = 50
TAG_RULE = ("tag keys 1 to 128 and values up to 256 Unicode letters, digits, spaces and "
            "_ . : / = + - @; keys may not start with aws: (Tagging AWS resources)")


@cache
def regions() -> frozenset[str]:
    """Every region in botocore's endpoint data, all partitions (aws, aws-cn, aws-us-gov, ...)."""
    import botocore.loaders

    data = botocore.loaders.Loader().load_data("endpoints")
    return frozenset(r for p in data["partitions"] for r in p["regions"])


def tag_problem(key: str, value: str) -> str | None:
    """Why AWS would refuse this tag, or None."""
    def ok(text: str) -> bool:
        return all(unicodedata.category(c)[0] in ("L", "N", "Z") or c in "_.:/=+-@" for c in text)

    if not 1 <= len(key) <= 128 or not ok(key) or key.lower().startswith("aws:"):
        return f"not a valid tag key: {TAG_RULE}"
    if len(value) > 256 or not ok(value):
        return f"not a valid tag value: {TAG_RULE}"
    return None

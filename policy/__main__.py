"""`pulumi preview --policy-pack policy`: the llm-service policy pack."""

from policies import POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name="llm-service", policies=POLICIES)

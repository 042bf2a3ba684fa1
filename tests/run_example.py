"""Runs one example program under a minimal Pulumi mock and prints what it declared as JSON.

Not the project's own mocks (offline/mocks.py): this one returns each resource's inputs as its
state and answers the few invokes examples make with plain values, as a user's own unit test
would. Run with `python -I` from the example's folder, so that nothing of this repository is
importable except the files copied beside the example.
"""

import json
import os
import runpy
import sys

sys.path.insert(0, os.getcwd())  # as Pulumi runs a program: its own folder importable, nothing else

import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

declared = []
INVOKES = {
    "aws:index/getAvailabilityZones:getAvailabilityZones":
        {"names": ["eu-west-1a", "eu-west-1b", "eu-west-1c"], "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]},
    "aws:index/getCallerIdentity:getCallerIdentity": {"accountId": "111122223333"},
    "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com"},
    "aws:index/getRegion:getRegion": {"name": "eu-west-1", "region": "eu-west-1"},
}


class Minimal(pulumi.runtime.Mocks):
    def new_resource(self, args):
        declared.append({"type": args.typ, "name": args.name, "inputs": args.inputs})
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args):
        return INVOKES.get(args.token, {}), []


pulumi.runtime.set_mocks(Minimal(), project="example", stack="dev", preview=False)
_sync_await(run_pulumi_func(lambda: runpy.run_path("__main__.py", run_name="__main__")))
json.dump(declared, sys.stdout, default=str)
sys.stdout.flush()
os._exit(0)  # skip the event loop's noisy teardown at exit

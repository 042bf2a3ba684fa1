"""Runs example programs under a minimal Pulumi mock; for each, writes what it declared as JSON.

`python -I run_examples.py [--preload ec2,ecs,...] <folder>...`, from a folder outside this
repository: each example folder holds an example's `__main__.py` and its component file. Not the
project's own mocks (offline/mocks.py): this one returns each resource's inputs as its state and
answers the few invokes examples make with plain values, as a user's own unit test would.

Pulumi itself (and the pulumi_aws modules named by --preload, the bulk of each example's time) is
imported once here; each example then runs in a child forked from this process, with its own
folder as the only importable place besides the installed packages, and its own mocks. Nothing of
this repository is imported here, so a child finds nothing of it either.
Each child writes `declared.json` (or its traceback to `error.txt`) into its folder.
"""

import importlib
import importlib.util
import json
import os
import runpy
import sys
import traceback

import pulumi


def _private_api():
    """infra/private_api.py, copied beside this file (and not importable by the examples)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "private_api.py")
    spec = importlib.util.spec_from_file_location("private_api", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


private_api = _private_api()

INVOKES = {
    "aws:index/getAvailabilityZones:getAvailabilityZones":
        {"names": ["eu-west-1a", "eu-west-1b", "eu-west-1c"], "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]},
    "aws:index/getCallerIdentity:getCallerIdentity": {"accountId": "111122223333"},
    "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com"},
    "aws:index/getRegion:getRegion": {"name": "eu-west-1", "region": "eu-west-1"},
}


class Minimal(pulumi.runtime.Mocks):
    def __init__(self):
        self.declared = []

    def new_resource(self, args):
        self.declared.append({"type": args.typ, "name": args.name, "inputs": args.inputs})
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args):
        return INVOKES.get(args.token, {}), []


def run(folder: str) -> None:
    """In the child: as Pulumi runs a program, its own folder importable and nothing else."""
    os.chdir(folder)
    sys.path[0] = folder
    mocks = Minimal()
    pulumi.runtime.set_mocks(mocks, project="example", stack="dev", preview=False)
    private_api.run_program(lambda: runpy.run_path("__main__.py", run_name="__main__"))
    with open("declared.json", "w") as f:
        json.dump(mocks.declared, f, default=str)


def preload(modules: str) -> None:
    for name in filter(None, modules.split(",")):
        module = importlib.import_module(f"pulumi_aws.{name}")
        getattr(module, "__all__", None)  # pulumi_aws loads a module's contents on first attribute use


def main(argv: list[str]) -> int:
    folders = argv
    if argv[:1] == ["--preload"]:
        preload(argv[1])
        folders = argv[2:]
    children = []
    for folder in folders:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(os.path.abspath(folder))
            except BaseException:  # noqa: BLE001 - the parent reads the traceback from the file
                with open("error.txt", "w") as f:
                    f.write(traceback.format_exc())
                code = 1
            os._exit(code)  # skip the event loop's noisy teardown at exit
        children.append(pid)
    worst = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

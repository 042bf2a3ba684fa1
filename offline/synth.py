"""Run the real stack program under Pulumi's mocks and record what it declares.

`synthesize("staging")` reads `Pulumi.staging.yaml`, validates it, runs `infra.program.main`
with `pulumi.runtime.set_mocks`, and returns every declared resource: type, logical name,
parent, resolved inputs (secrets flagged), and the options that matter for safety (protect,
ignore_changes, retain_on_delete, import). No Pulumi CLI, AWS credentials or network are used.
The plan command and the test suite both call it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi

from infra import private_api
from infra.config import PROJECT
from infra.stack_files import read_stack_file
from offline.mocks import AwsMocks

STACK_TYPE = "pulumi:pulumi:Stack"


@dataclass
class Declared:
    type: str
    name: str
    custom: bool
    parent: Optional[tuple[str, str]] = None  # (type, name); None under the stack
    inputs: dict[str, Any] = field(default_factory=dict)
    secret_inputs: set[str] = field(default_factory=set)
    protect: bool = False
    retain_on_delete: bool = False  # destroy leaves it in AWS
    import_id: Optional[str] = None  # adopted (imported) instead of created
    ignore_changes: list[str] = field(default_factory=list)
    provider: str = ""  # the provider reference the engine would use ("<urn>::<id>")
    depends_on: list[str] = field(default_factory=list)  # logical names
    outputs: Optional[list[str]] = None  # a component's registered outputs (register_outputs), by name


@dataclass
class Synthesis:
    stack: str
    resources: list[Declared]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    invokes: list[tuple[str, str]] = field(default_factory=list)  # (token, provider reference) of each call

    def of_type(self, typ: str) -> list[Declared]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: Optional[str] = None) -> Declared:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(typ)]
            raise LookupError(f"expected one {typ} named {name!r}, found {names}")
        return found[0]

    def children(self, parent: Declared) -> list[Declared]:
        return [r for r in self.resources if r.parent == (parent.type, parent.name)]


def _as_pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """Pulumi passes every config value as a string; objects and lists as JSON."""
    return {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()
    }


class _Recorder(AwsMocks):
    def __init__(self, region: str):
        super().__init__(region)
        self.declared: dict[tuple[str, str], Declared] = {}
        self.invokes: list[tuple[str, str]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        rid, state = super().new_resource(args)
        d = self.declared.setdefault((args.typ, args.name), Declared(args.typ, args.name, args.custom))
        d.custom = args.custom
        d.provider = args.provider or ""
        d.inputs = {k: _unwrap(v) for k, v in args.inputs.items()}
        d.secret_inputs = {k for k, v in args.inputs.items() if _has_secret(v)}
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, args.provider or ""))
        return super().call(args)


class _Monitor(private_api.mock_monitor()):  # type: ignore[misc]
    """Records what each component registers as its outputs (the engine keeps them in state)."""

    def __init__(self, recorder: _Recorder):
        super().__init__(recorder)
        self.recorder = recorder

    def RegisterResourceOutputs(self, request):  # noqa: N802 - the engine's RPC name
        _, _, qualified, name = request.urn.split("::", 3)  # urn:pulumi:<stack>::<project>::<types>::<name>
        typ = qualified.rsplit("$", 1)[-1]  # the types are the parents' and its own, joined by $
        if typ != STACK_TYPE:
            d = self.recorder.declared.setdefault((typ, name), Declared(typ, name, custom=False))
            d.outputs = sorted(request.outputs.fields.keys())
        return super().RegisterResourceOutputs(request)


def _has_secret(v: Any) -> bool:
    if private_api.is_secret(v):
        return True
    if isinstance(v, dict):
        return any(_has_secret(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_secret(x) for x in v)
    return False


def _unwrap(v: Any) -> Any:
    if private_api.is_secret(v):
        return _unwrap(private_api.unwrap_secret(v))
    if isinstance(v, dict):
        return {k: _unwrap(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unwrap(x) for x in v]
    return v


def _ensure_event_loop() -> None:
    """Pulumi's SDK creates futures on the thread's current loop; asyncio.run() elsewhere in the
    same process leaves none, so synthesis installs a fresh one when it has to."""
    try:
        usable = not asyncio.get_event_loop_policy().get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        asyncio.set_event_loop(asyncio.new_event_loop())


def synthesize(
    stack: str,
    raw: Optional[dict[str, Any]] = None,
    secret_keys: Optional[set[str]] = None,
    program: Optional[Callable[[], None]] = None,
) -> Synthesis:
    """Run the stack program for `stack` under mocks. `raw` overrides the stack file's config."""
    if raw is None:
        raw, file_secret_keys = read_stack_file(stack)
        secret_keys = file_secret_keys if secret_keys is None else secret_keys
    secret_keys = set(secret_keys or ())
    if program is None:
        from infra.program import main

        def program() -> None:
            main(offline=True)

    _ensure_event_loop()
    recorder = _Recorder(str(raw.get("aws:region", "us-east-1")))
    private_api.reset_root()  # nothing left over from an earlier, failed run
    pulumi.runtime.set_all_config(_as_pulumi_config(raw), sorted(secret_keys))
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=False, monitor=_Monitor(recorder))

    def record_options(args: pulumi.ResourceTransformationArgs):
        d = recorder.declared.setdefault(
            (args.type_, args.name), Declared(args.type_, args.name, custom=True)
        )
        parent = args.opts.parent if args.opts else None
        if parent is not None and private_api.resource_type(parent) != STACK_TYPE:
            d.parent = (private_api.resource_type(parent), private_api.resource_name(parent))
        d.protect = bool(args.opts and args.opts.protect)
        d.retain_on_delete = bool(args.opts and args.opts.retain_on_delete)
        d.import_id = (args.opts and args.opts.import_) or None
        d.ignore_changes = list((args.opts and args.opts.ignore_changes) or [])
        deps = (args.opts and args.opts.depends_on) or []
        d.depends_on = [private_api.resource_name(r) for r in (deps if isinstance(deps, list) else [deps])
                        if isinstance(r, pulumi.Resource)]
        return None

    pulumi.runtime.register_stack_transformation(record_options)
    try:
        private_api.run_program(program)
    except Exception as e:
        # Tests prove that bad config declares nothing: hand them what was declared.
        e.declared = [d for d in recorder.declared.values() if d.type != STACK_TYPE]
        raise

    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    for key, value in private_api.root_outputs().items():
        out = pulumi.Output.from_input(value)
        outputs[key] = private_api.wait(out.future())
        if private_api.wait(out.is_secret()):
            secret_outputs.add(key)
    return Synthesis(stack, list(recorder.declared.values()), outputs, secret_outputs, recorder.invokes)

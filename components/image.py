"""A container image built from a local folder and pushed to ECR, deployed by digest.

Creates: a docker-build Image (BuildKit through buildx) for one platform, pushed to the given
ECR repository with a tag derived from the folder's content (ECR tags are immutable: the same
content keeps its tag, new content gets a new one), using a short-lived ECR login token.
`ref` is `<repository>@sha256:...`, so a task definition names exactly the image that was built.

Needs Docker with buildx wherever `pulumi preview` or `up` runs (previews build too, so a broken
image fails the preview, not the deploy); building for another architecture needs QEMU
(docker/setup-qemu-action) or a runner of that architecture.

Cost: nothing beyond the repository's storage.

Args (`ImageArgs`):
    context: str, required — the folder holding the Dockerfile
    repository_url: pulumi.Input[str], required
    registry_id: pulumi.Input[str], required
    architecture: Literal['ARM64', 'X86_64'] = 'ARM64'

Outputs: ref, tag.

Example (examples/image/, runs as written beside a copy of this file):

    import pulumi
    from image import Image, ImageArgs

    img = Image("app", ImageArgs(
        context="app", repository_url="111122223333.dkr.ecr.eu-west-1.amazonaws.com/my-app",
        registry_id="111122223333"))
    pulumi.export("image", img.ref)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

PLATFORMS = {"ARM64": docker_build.Platform.LINUX_ARM64, "X86_64": docker_build.Platform.LINUX_AMD64}
IGNORED = {"__pycache__", ".pytest_cache"}


def problems(a: ImageArgs) -> list[tuple[str, str]]:
    """What the build cannot start from, as (argument, why)."""
    found = []
    if not (Path(a.context) / "Dockerfile").is_file():
        found.append(("context", "a folder holding a Dockerfile"))
    if a.architecture not in ("ARM64", "X86_64"):
        found.append(("architecture", "ARM64 or X86_64"))
    return found


@dataclass
class ImageArgs:
    context: str  # the folder holding the Dockerfile
    repository_url: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    architecture: Literal["ARM64", "X86_64"] = "ARM64"

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"ImageArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


def content_tag(folder: Path) -> str:
    """A tag from every file's path and bytes: stable while nothing changes."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not IGNORED & set(p.parts)):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"src-{h.hexdigest()[:16]}"


class Image(pulumi.ComponentResource):
    ref: pulumi.Output[str]
    tag: str

    def __init__(self, name: str, args: ImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:image:Image", name, None, opts)
        context = Path(args.context)
        self.tag = content_tag(context)
        token = aws.ecr.get_authorization_token_output(
            registry_id=args.registry_id, opts=pulumi.InvokeOutputOptions(parent=self))
        self.image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=str(context)),
            dockerfile=docker_build.DockerfileArgs(location=str(context / "Dockerfile")),
            platforms=[PLATFORMS[args.architecture]],
            push=True,
            tags=[pulumi.Output.concat(args.repository_url, ":", self.tag)],  # both known before the build
            registries=[docker_build.RegistryArgs(
                address=args.repository_url, username=token.user_name,
                password=pulumi.Output.secret(token.password))],
            opts=pulumi.ResourceOptions(parent=self),
        )
        # None where the digest is not known (a test's mock does not build), never "repo@None".
        self.ref = pulumi.Output.all(args.repository_url, self.image.digest).apply(
            lambda a: f"{a[0]}@{a[1]}" if a[1] else None)
        self.register_outputs({"ref": self.ref})

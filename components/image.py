"""A container image built from a local folder and pushed to ECR, deployed by digest.

Creates: a docker-build Image (BuildKit through buildx) for one platform, pushed to the given
ECR repository with a tag derived from what goes into the image (every file's path, bytes and
executable bit, and the platform), using a short-lived ECR login token. `ref` is
`<repository>@sha256:...`, so a task definition names exactly the image that was built.

The build context is a copy of the folder under `.build/` (beside where Pulumi runs the program),
named after the tag, with every file 0644 (0755 if executable) and given to the provider as a
relative path: the provider diffs the context's path and hashes every file's full mode, so a
checkout at another path or under another umask would otherwise rebuild and re-push a tag that
already exists, which an IMMUTABLE repository refuses. The same content on any machine gives the
same inputs; anything that changes the image (a file, an executable bit, the platform) gives a
new tag.

Needs Docker with buildx wherever `pulumi preview` or `up` runs (previews build too, so a broken
image fails the preview, not the deploy); building for another architecture needs QEMU
(docker/setup-qemu-action) or a runner of that architecture.

Cost: nothing beyond the repository's storage.

Args (`ImageArgs`, each described where it is declared below):
    context: str, required
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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

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
    context: str
    """The folder holding the Dockerfile."""
    repository_url: pulumi.Input[str]
    """The ECR repository the image is pushed to."""
    registry_id: pulumi.Input[str]
    """The registry's account id, to log in to it."""
    architecture: Literal["ARM64", "X86_64"] = "ARM64"
    """The CPU architecture the image is built for (the tasks')."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"ImageArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


# Tag prefixes per platform: a tag names one platform's image (an earlier scheme, src-<hash>,
# named the content alone, so it never collides with these).
TAG_PREFIX = {"ARM64": "arm64", "X86_64": "amd64"}
STAGING = Path(".build")  # relative to where the program runs (Pulumi: the `main` folder)


def image_files(folder: Path) -> list[tuple[str, bytes, bool]]:
    """What goes into the image: (path relative to the folder, bytes, executable), sorted."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not IGNORED & set(p.parts)):
        found.append((path.relative_to(folder).as_posix(), path.read_bytes(),
                      bool(path.stat().st_mode & 0o100)))
    return found


def content_tag(folder: Path, architecture: str = "ARM64") -> str:
    """A tag from the platform and every file's path, bytes and executable bit: stable while
    none changes, on any machine (other permission bits, times and owners do not count)."""
    h = hashlib.sha256(architecture.encode() + b"\0")
    for rel, data, executable in image_files(folder):
        h.update(rel.encode() + b"\0" + data + b"\0" + (b"x" if executable else b"-") + b"\0")
    return f"{TAG_PREFIX[architecture]}-{h.hexdigest()[:16]}"


def stage(folder: Path, tag: str, staging: Path = STAGING) -> Path:
    """The folder's image files copied to `<staging>/<tag>` with uniform modes (0644, or 0755
    if executable); already there if an earlier run staged the same tag. Written to a temporary
    folder and renamed into place, so concurrent runs never see half a copy. Earlier tags'
    copies stay until `make clean` (a few hundred KB each)."""
    target = staging / tag
    if target.is_dir():
        return target
    staging.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=staging))
    for rel, data, executable in image_files(folder):
        dest = scratch / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(0o755 if executable else 0o644)
    scratch.chmod(0o755)
    try:
        scratch.rename(target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not target.is_dir():  # not another run staging the same tag first: a real failure
            raise
    return target


class Image(pulumi.ComponentResource):
    ref: pulumi.Output[Optional[str]]
    """The image by digest (<repository>@sha256:...), what a service deploys; None only where the
    digest is unknown (a mock builds nothing)."""
    tag: str
    """The tag pushed: the architecture and a hash of the build context's content."""

    def __init__(self, name: str, args: ImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:image:Image", name, None, opts)
        self.tag = content_tag(Path(args.context), args.architecture)
        # Relative, as the provider compares it: the same on every machine and checkout.
        context = os.path.relpath(stage(Path(args.context), self.tag))
        token = aws.ecr.get_authorization_token_output(
            registry_id=args.registry_id, opts=pulumi.InvokeOutputOptions(parent=self))
        self.image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=context),
            dockerfile=docker_build.DockerfileArgs(location=os.path.join(context, "Dockerfile")),
            platforms=[PLATFORMS[args.architecture]],
            push=True,
            tags=[pulumi.Output.concat(args.repository_url, ":", self.tag)],  # both known before the build
            registries=[docker_build.RegistryArgs(
                address=args.repository_url, username=token.user_name,
                password=pulumi.Output.secret(token.password))],
            opts=pulumi.ResourceOptions(parent=self),
        )
        # None where the digest is not known (a test's mock does not build), never "repo@None".
        self.ref = pulumi.Output.all(args.repository_url, self.image.digest).apply(_by_digest)
        self.register_outputs({"ref": self.ref, "tag": self.tag})


def _by_digest(parts: list[Any]) -> Optional[str]:
    repository, digest = parts
    return f"{repository}@{digest}" if digest else None

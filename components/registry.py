"""A private container registry for the stack's image: an ECR repository and its lifecycle.

Creates: an ECR repository (immutable tags, scan on push, encrypted with the given KMS key,
deleted with its images on destroy unless protected) and a lifecycle policy (untagged images
expire after 7 days; at most 50 images kept).

Cost: $0.10 per GB-month stored (a gateway image is about 60 MB: under $0.01); pulls from tasks
in the same region are free; basic scanning on push is free.

Args (`RegistryArgs`, each described where it is declared below):
    name: str, required
    kms_key_arn: pulumi.Input[str], required
    keep_images: int = 50
    protect: bool = False

Outputs: arn, repository_url, registry_id.

Example (examples/registry/, runs as written beside a copy of this file):

    import pulumi
    from registry import Registry, RegistryArgs

    repo = Registry("registry", RegistryArgs(
        name="my-app", kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"))
    pulumi.export("repositoryUrl", repo.repository_url)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

# ECR repository names (CreateRepository): 2 to 256 of these, lower case.
REPOSITORY_NAME = re.compile(r"(?=.{2,256}$)(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")


def problems(a: RegistryArgs) -> list[tuple[str, str]]:
    """What ECR would refuse in these arguments, as (argument, why)."""
    found = []
    if not REPOSITORY_NAME.fullmatch(a.name):
        found.append(("name", "2 to 256 lower-case letters, digits and . _ - / (ECR repository names)"))
    if a.keep_images < 1:
        found.append(("keep_images", "at least 1"))
    return found


@dataclass
class RegistryArgs:
    name: str
    """The repository name, e.g. llm-service-staging."""
    kms_key_arn: pulumi.Input[str]
    """The KMS key that encrypts the images."""
    keep_images: int = 50
    """The newest images kept; older ones expire (a lifecycle rule)."""
    protect: bool = False
    """Neither the repository nor its images can be destroyed."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"RegistryArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


class Registry(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    """The repository's ARN (the tasks' execution role may pull from it alone)."""
    repository_url: pulumi.Output[str]
    """The repository's URL, to push and pull."""
    registry_id: pulumi.Output[str]
    """The registry's account id."""

    def __init__(self, name: str, args: RegistryArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:registry:Registry", name, None, opts)
        self.repository = aws.ecr.Repository(
            f"{name}-repo", name=args.name, image_tag_mutability="IMMUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(
                encryption_type="KMS", kms_key=args.kms_key_arn)],
            # Deleted with its images on destroy (DeleteRepository refuses a repository that holds
            # any), unless protected: then neither the repository nor its images may go, and a
            # teardown's `up` lifts both at once.
            force_delete=not args.protect,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-repo", repository=self.repository.name, policy=json.dumps({"rules": [
                {"rulePriority": 1, "description": "drop untagged images after 7 days",
                 "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                               "countUnit": "days", "countNumber": 7},
                 "action": {"type": "expire"}},
                {"rulePriority": 2, "description": f"keep the newest {args.keep_images} images",
                 "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                               "countNumber": args.keep_images},
                 "action": {"type": "expire"}},
            ]}), opts=pulumi.ResourceOptions(parent=self),
        )
        self.arn = self.repository.arn
        self.repository_url = self.repository.repository_url
        self.registry_id = self.repository.registry_id
        self.register_outputs({"arn": self.arn, "repository_url": self.repository_url,
                               "registry_id": self.registry_id})

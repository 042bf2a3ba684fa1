"""The registry component alone: copy components/registry.py here, then `pulumi up`."""

import pulumi
from registry import Registry, RegistryArgs

repo = Registry("registry", RegistryArgs(
    name="my-app", kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"))
pulumi.export("repositoryUrl", repo.repository_url)

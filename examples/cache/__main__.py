"""The cache component alone: copy components/cache.py here, then `pulumi up`."""

import pulumi
from cache import Cache, CacheArgs

cache = Cache("cache", CacheArgs(
    vpc_id="vpc-0123456789abcdef0", subnet_ids=["subnet-0eeeeeeeeeeeeeeee", "subnet-0ffffffffffffffff"],
    kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    auth_token=pulumi.Output.secret("use-a-random-password-resource-of-64-characters-instead-000000"),
    replication_group_id="my-app-cache"))
pulumi.export("endpoint", cache.primary_endpoint)

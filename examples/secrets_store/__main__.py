"""The secrets component alone: copy components/secrets_store.py here, then `pulumi up`."""

import pulumi
from secrets_store import Secrets, SecretsArgs

keys = Secrets("secrets", SecretsArgs(prefix="my-app/dev", region="eu-west-1"))
pulumi.export("secretArns", keys.secret_arns)

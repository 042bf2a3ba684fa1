"""The image component alone: copy components/image.py here, then `pulumi up`."""

import pulumi
from image import Image, ImageArgs

img = Image("app", ImageArgs(
    context="app", repository_url="111122223333.dkr.ecr.eu-west-1.amazonaws.com/my-app",
    registry_id="111122223333"))
pulumi.export("image", img.ref)

"""Adapters to other libraries, each an optional import of its own:
``pydiffuse.compat.diffusers`` (needs ``pip install diffusers``) holds ``fuse`` / ``unfuse`` (a
diffusers UNet or pipeline on the fused ops, in place), the drop-in fused schedulers and
``schedule_from_diffusers``."""

"""Adapters to other libraries, each an optional import of its own:
``pydiffuse.compat.diffusers`` (needs ``pip install diffusers``) holds ``fuse`` / ``unfuse`` (a
diffusers UNet or pipeline on the fused ops, in place), drop-in fused schedulers (DDPM, DDIM,
Euler, Euler ancestral, DPM-Solver multistep, PNDM) and
``schedule_from_diffusers``."""

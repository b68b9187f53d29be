"""Adapters to other libraries, each an optional import of its own:
``pydiffuse.compat.diffusers`` (needs ``pip install diffusers``) holds drop-in fused schedulers
for diffusers pipelines (DDPM, DDIM, Euler, Euler ancestral, DPM-Solver multistep, PNDM) and
``schedule_from_diffusers``."""

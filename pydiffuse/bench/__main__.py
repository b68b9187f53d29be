"""``python -m pydiffuse.bench``: the same as ``pydiffuse bench``."""

import sys

from .command import main

sys.exit(main(prog="python -m pydiffuse.bench"))

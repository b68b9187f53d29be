"""Training data: scikit-learn's 8x8 digits, image folders and ``.npz`` arrays, and toy 2-D sets.

Each is a ``torch.utils.data.Dataset`` of x or (x, y): images float32 [C, H, W] in [-1, 1],
toy points float32 [2]. ``StepBatches``, ``mix_seed`` and ``seed_all`` (``batches``): the
reproducible data order and seed streams of the Trainer and SGLD.
"""

from .batches import StepBatches, mix_seed, seed_all
from .digits import LEVELS as DIGITS_LEVELS
from .digits import digits
from .images import ImageFolder, npz_dataset, resize_center_crop
from .toy import TOY_SETS, circle_means, gaussian_mixture, moons, rings, swiss_roll

__all__ = [
           "TOY_SETS",
           "ImageFolder",
           "StepBatches",
           "circle_means",
           "digits", "DIGITS_LEVELS",
           "gaussian_mixture",
           "mix_seed",
           "moons",
           "npz_dataset",
           "resize_center_crop",
           "rings",
           "seed_all",
           "swiss_roll",
]

"""``pydiffuse demo``, the main job: the shipped digits model sampled with DDPM, DDIM, the
score-SDE predictor-corrector and probability-flow ODE samplers, and classifier-free guidance;
a labelled PNG grid, and a table of cost and quality (``pydiffuse.stats.digits_quality``)."""

import time

import numpy as np
import torch

from . import images
from .loading import load
from .samplers import SAMPLERS
from .stats import digits_scorer

# (row label, model, sampler, options): what the demo runs, each on the same n samples and seed;
# model None is the demo's pixel-space model, "lsgm" the shipped latent model (configs/lsgm.yaml)
CASES = [
    ("DDPM (100 respaced steps)", None, "ddpm", {"steps": 100}),
    ("DDIM-50", None, "ddim", {"steps": 50}),
    ("PC (VP SDE, 100 levels, 1 corrector)", None, "pc", {"steps": 100}),
    ("ODE (RK45, tol 1e-3)", None, "ode", {"rtol": 1e-3, "atol": 1e-3}),
    ("CFG DDIM-50 (guidance 2, labels 0-9)", None, "ddim", {"steps": 50, "guidance": 2.0}),
    ("LSGM (latent ODE, RK45, tol 1e-3)", "lsgm", "ode", {"rtol": 1e-3, "atol": 1e-3}),
]


def _labelled_grid(rows, scale: int = 4, per_row: int = 20) -> np.ndarray:
    """One image: for each (label, samples) a caption line and ``per_row`` samples."""
    from PIL import Image, ImageDraw

    tiles = [images.grid(x[:per_row], per_row, scale) for _, x in rows]
    caption_h, width = 14, max(t.shape[1] for t in tiles)
    canvas = Image.new("L", (width, sum(t.shape[0] + caption_h for t in tiles)), 255)
    draw, top = ImageDraw.Draw(canvas), 0
    for (label, _), tile in zip(rows, tiles):
        draw.text((2, top + 1), label, fill=0)
        canvas.paste(Image.fromarray(tile[..., 0]), (0, top + caption_h))
        top += caption_h + tile.shape[0]
    return np.asarray(canvas)[..., None]


def check_model(pipe, name) -> None:
    """Before any sampling: the demo scores 8x8 digits, and its guided row needs a model
    conditioned on (at least) the 10 digit classes."""
    if tuple(pipe.event_shape) != (1, 8, 8):
        raise ValueError(f"the demo samples and scores 8x8 digits [1, 8, 8]; {name} makes "
                         f"samples of shape {list(pipe.event_shape)}")
    null = getattr(pipe.model, "null_label", None)
    if any("guidance" in options for _, model, _, options in CASES if model is None) and (
            null is None or null < 10):
        raise ValueError(f"the demo's guided row needs a model conditioned on the 10 digit "
                         f"classes (labels 0-9); {name} is "
                         f"{'not class-conditional' if null is None else f'{null}-class'}")


def run(ckpt=None, *, n: int = 400, seed: int = 0, out="demo_digits.png", log=print) -> list:
    """Sample every case of ``CASES``; print the table; write the grid. Returns the rows."""
    start = time.perf_counter()
    pipe = load(ckpt or "digits")
    check_model(pipe, ckpt or "digits")
    scorer = digits_scorer()
    ref = scorer.reference()
    params = sum(p.numel() for p in pipe.model.parameters())
    log(f"model: {ckpt or 'the shipped digits checkpoint'} ({params:,} parameters, "
        f"{pipe.prediction} prediction, {pipe.process!r}); quality classifier "
        f"held-out accuracy {scorer.accuracy:.3f}; {n} samples per row, seed {seed}\n")
    rows, pictures = [], []
    for label, model, sampler, options in CASES:
        guided = "guidance" in options
        labels = torch.arange(n) % 10 if guided else None
        source = pipe if model is None else load(model)
        x, info = source.sample(n, sampler=sampler, seed=seed, labels=labels, progress=False,
                                return_info=True, **options)
        score = scorer.score(x)
        rows.append({"sampler": label, "nfe": info["nfe"], "seconds": info["seconds"],
                     "images_per_s": n / info["seconds"], **score})
        pictures.append((label, x))
    header = (f"{'sampler':<38}{'model evals':>12}{'seconds':>9}{'images/s':>10}"
              f"{'confident':>11}{'entropy':>9}{'Frechet':>9}")
    log(header + "\n" + "-" * len(header))
    for r in rows:
        log(f"{r['sampler']:<38}{r['nfe']:>12}{r['seconds']:>9.1f}{r['images_per_s']:>10.1f}"
            f"{r['confident']:>11.3f}{r['label_entropy']:>9.3f}{r['frechet']:>9.2f}")
    for name in ("real", "noise"):
        r = ref[name]
        log(f"{'reference: ' + name + ' digits' if name == 'real' else 'reference: noise':<38}"
            f"{'':>12}{'':>9}{'':>10}{r['confident']:>11.3f}{r['label_entropy']:>9.3f}"
            f"{r['frechet']:>9.2f}")
    log(f"\nconfident: share classified with probability > 0.9 (target >= 0.9); entropy of the "
        f"predicted labels (ln 10 = {np.log(10):.3f}; target >= {0.95 * np.log(10):.3f}); "
        f"Frechet distance to held-out digits in the classifier's features (target <= 2x the "
        f"real figure, {2 * ref['real']['frechet']:.2f})")
    used = dict.fromkeys(sampler for _, _, sampler, _ in CASES)
    log("samplers: " + "; ".join(f"{name}, {SAMPLERS[name].title} ({SAMPLERS[name].paper})"
                                 for name in used))
    path = images.save_png(_labelled_grid(pictures), out)
    log(f"grid: {path}; demo done in {time.perf_counter() - start:.0f} s")
    return rows

# Exact (Hyvarinen 2005) and sliced (Song et al. 2019) score matching of an MLP score net on a 2-D
# Gaussian mixture; writes the true and the two learned score fields as quiver plots to one PNG
# and prints each field's density-weighted error. Run from the repo root:
#     .venv/bin/python examples/score_matching_toy.py --out /tmp/sm.png [--steps 1000] [--quick]
"""Score matching on toy 2-D data: the learned score fields against the true one.

The data are ``pydiffuse.data.gaussian_mixture`` (K Gaussians on a circle), whose exact score
is ``pydiffuse.nn.GaussianMixtureScore(...).score(x, None)``. Each MLP (time-unconditional) is
trained by ``pydiffuse.training.Trainer`` with ``ExactScoreMatching`` or ``SlicedScoreMatching``
(MATH.md section 3). The error of a field s is the density-weighted mean squared error on a grid,
E_p ||s(x) - grad log p(x)||^2 ~ sum_g p(x_g) ||s - grad log p||^2 / sum_g p(x_g), also given
relative to E_p ||grad log p||^2.
"""

import argparse
import tempfile

import matplotlib
import torch

from pydiffuse.data import circle_means, gaussian_mixture
from pydiffuse.nn import MLP, GaussianMixtureScore
from pydiffuse.training import ExactScoreMatching, SlicedScoreMatching, Trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COMPONENTS, RADIUS, NOISE = 4, 2.0, 0.5        # the mixture: 4 x N(mu_k, 0.5^2 I), |mu_k| = 2
LIMIT = 3.5                                    # the plotted square [-LIMIT, LIMIT]^2
OBJECTIVES = {
    "exact score matching": ExactScoreMatching,
    "sliced score matching (SSM-VR)": lambda: SlicedScoreMatching(variance_reduction=True),
}


def grid(points: int) -> torch.Tensor:
    """[points^2, 2] grid over [-LIMIT, LIMIT]^2 (row-major in y, then x)."""
    axis = torch.linspace(-LIMIT, LIMIT, points)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def train(objective, data, steps: int, seed: int, run_dir: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = MLP(dim=2, hidden=64, depth=2, time_input=None)
    trainer = Trainer(model, objective, data, run_dir=run_dir, batch_size=256, lr=2e-3,
                      ema_rates=(), seed=seed, log_every=max(1, steps), keep=1)
    trainer.train(steps)
    return model.eval()


def field_error(score, truth: GaussianMixtureScore, points: int = 80):
    """(density-weighted MSE, that MSE / E_p ||grad log p||^2) of ``score`` on a grid."""
    x = grid(points)
    weight = truth.log_prob(x).exp()
    true = truth.score(x, None).double()
    mse = (weight * (score(x).double() - true).pow(2).sum(1)).sum() / weight.sum()
    return float(mse), float(mse / ((weight * true.pow(2).sum(1)).sum() / weight.sum()))


def learned_score(model):
    def score(x):
        with torch.no_grad():
            return model(x, torch.zeros(len(x)))
    return score


def plot(fields: dict, data: torch.Tensor, path: str, points: int = 21):
    """One quiver panel per field over the data in grey, all on the first field's arrow scale
    (its 90th-percentile arrow 1.5 grid spacings) and colour scale."""
    x = grid(points)
    scores = {name: score(x).double() for name, score in fields.items()}
    first = next(iter(scores.values())).norm(dim=1)
    scale = float(first.quantile(0.9)) / (1.5 * 2 * LIMIT / (points - 1))
    colours = matplotlib.colors.Normalize(0, float(first.max()))
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 4.4))
    for ax, (name, s) in zip(axes, scores.items()):
        ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=1, alpha=0.15, color="tab:gray")
        ax.quiver(x[:, 0].numpy(), x[:, 1].numpy(), s[:, 0].numpy(), s[:, 1].numpy(),
                  s.norm(dim=1).numpy(), cmap="viridis", norm=colours, angles="xy",
                  scale_units="xy", scale=scale)
        ax.set(title=name, xlim=(-LIMIT, LIMIT), ylim=(-LIMIT, LIMIT), aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="score_matching_toy.png", help="PNG path")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per objective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 steps (a smoke run)")
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps

    data = gaussian_mixture(4096, num_components=COMPONENTS, radius=RADIUS, noise=NOISE,
                            seed=args.seed)
    truth = GaussianMixtureScore(circle_means(COMPONENTS, RADIUS), NOISE ** 2)
    fields = {"true score": lambda x: truth.score(x, None)}
    with tempfile.TemporaryDirectory() as run_dir:
        for i, (name, make) in enumerate(OBJECTIVES.items()):
            model = train(make(), data, steps, args.seed, f"{run_dir}/{i}")
            fields[name] = learned_score(model)
            mse, rel = field_error(fields[name], truth)
            print(f"{name:>31}: density-weighted MSE vs the true score {mse:.4f} "
                  f"(relative {rel:.4f}) after {steps} steps")
    plot(fields, data.tensors[0], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

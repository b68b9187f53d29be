"""One training loop for every objective: Adam(W) with warm-up, gradient clipping, EMA, autocast,
a NaN/inf guard, logging, atomic checkpoints, exact resume and data parallelism under torchrun.

Exact resume rests on three choices: each step's batch is a pure function of (seed, step)
(``StepBatches``); the global RNGs are re-seeded at each step from (seed, step, rank), so no
generator state needs saving and a crash at any point of a step loses nothing; and the learning
rate is a function of the step (no scheduler state). Everything else that changes (weights,
EMA, optimizer, loss scaler, the objective's state, the logging window) is checkpointed.

A fresh run is reproducible too when its model is built inside ``seeded_init(seed)`` (as
``pydiffuse.config.train_from_config`` does): the initial weights then come from their own
stream, ``mix_seed(seed, INIT_STREAM)``, apart from the per-step and data streams.

The seed streams (``mix_seed`` of): (seed, STEP_STREAM, step, rank) a step's global RNGs;
(seed, DATA_STREAM, epoch) the data order; (seed, INIT_STREAM) the model's initialisation
(``StepBatches`` and the seeds are ``pydiffuse.data.batches``', shared with SGLD).
"""

import contextlib
import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from ..data.batches import (  # noqa: F401 (re-exported: the Trainer's seed streams)
    DATA_STREAM,
    INIT_STREAM,
    STEP_STREAM,
    StepBatches,
    mix_seed,
    seed_all,
)
from . import distributed
from .checkpoint import (
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_checkpoint,
    save_checkpoint,
)
from .ema import EMA

logger = logging.getLogger("pydiffuse.training")

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
DEFAULT_SEED = 0


@contextlib.contextmanager
def seeded_init(seed: int = DEFAULT_SEED):
    """Build (and so initialise) a model inside this block to make its initial weights a pure
    function of ``seed``: torch's CPU generator (and the current CUDA device's, if CUDA is
    already initialised) is seeded from ``mix_seed(seed, INIT_STREAM)``, a stream apart from the
    Trainer's per-step and data streams, and the caller's generator states are restored on exit
    (``torch.random.fork_rng``), so the block changes no global RNG state as a side effect.

        with seeded_init(seed):
            model = create_model("digits")
        Trainer(model, objective, data, seed=seed, ...)
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        value = mix_seed(seed, INIT_STREAM)
        torch.default_generator.manual_seed(value)
        if cuda:
            torch.cuda.manual_seed(value)
        yield


def _unwrap(batch):
    """x for a one-field batch, else the (x, y, ...) fields."""
    return batch[0] if isinstance(batch, (list, tuple)) and len(batch) == 1 else batch


def _collate(items):
    return _unwrap(default_collate(items))


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line (inf for a line cut short by a crash)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _previous_run(run_dir: Path) -> str:
    """What of a training run ``run_dir`` holds ("" if none): complete checkpoints, a log."""
    found = checkpoints(run_dir)
    parts = [f"{len(found)} checkpoint{'s' * (len(found) > 1)}, the newest {found[-1].name}"
             ] if found else []
    log = run_dir / "log.jsonl"
    if log.is_file() and log.stat().st_size > 0:
        parts.append("a log.jsonl")
    return " and ".join(parts)


def _param_groups(objective, model) -> list:
    """The optimizer's parameter groups: the objective's ``param_groups(model)`` (named groups,
    each with its own settings, e.g. LSGM's VAE and prior) or one group of every parameter."""
    groups = objective.param_groups(model) if hasattr(objective, "param_groups") else [
        {"params": list(model.parameters())}]
    params = [p for g in groups for p in g["params"]]
    if len(set(map(id, params))) != len(params) or set(map(id, params)) != set(
            map(id, model.parameters())):
        raise ValueError("the objective's param_groups must hold each model parameter once")
    return [{**g, "params": list(g["params"])} for g in groups]


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


class Trainer:
    """Train ``model`` on ``objective(model, batch) -> {"loss", "per_example", "t"}``.

    An objective with ``param_groups(model)`` (a list of {"params", and optimizer settings such
    as "lr"}) gets one optimizer group each: Adam's state is per parameter, so this is one
    optimizer per group (LSGM's VAE and prior); gradients are clipped per group and the warm-up
    scales each group's own lr. ``find_unused_parameters`` on the objective is passed to DDP.

    Each step: the batch of ``StepBatches`` (this rank's slice of the global batch), the global
    RNGs seeded from (seed, step, rank) (so the objective's noise is reproducible, and a run
    killed at any point and resumed draws what an uninterrupted one draws), the loss under
    autocast, backward (DDP averages the gradients over the ranks), gradient clipping to
    ``grad_clip`` in global norm, and, if the loss and gradient norm are finite, an Adam(W) step
    at lr * min(1, (step + 1) / warmup) and the EMA updates; otherwise the step is skipped and
    logged. Every ``log_every`` steps a line goes to ``<run_dir>/log.jsonl`` (the mean loss, the
    mean loss per quartile of the objective's t, lr, gradient norm); every ``save_every`` steps
    and at the end a checkpoint ``<run_dir>/step_<N>`` (``checkpoint.py``); an exception or
    KeyboardInterrupt during training writes one for the last completed step before re-raising
    (except in an ``overwrite`` run before its first checkpoint: see below).

    What is guaranteed:

    - **Reproducible runs**, given the model's initial weights: the data order and every step's
      RNGs are functions of (seed, step, rank), so two runs from the same initial weights, data
      and settings give the same losses and weights, bit for bit on the same hardware and
      software. The Trainer takes the model already built, so seeding its initialisation is the
      caller's part: build it inside ``seeded_init(seed)`` (``train_from_config`` and
      ``pydiffuse train`` do); a model built from whatever state torch's global generator is in
      makes fresh runs differ from the first step.
    - **Exact resume**: a run stopped, interrupted or killed at any point and resumed from its
      newest checkpoint (or an older one) continues as the uninterrupted run would, to the bit
      (weights, EMA, losses, log.jsonl).
    - **No run is lost or mixed with another**: a fresh run (``resume=False``) into a
      ``run_dir`` that holds a run (a ``step_<N>`` checkpoint or a non-empty ``log.jsonl``)
      raises ValueError before anything is trained or written. ``overwrite=True`` replaces that
      run, but only once this run's first checkpoint is written (atomically): until then the old
      checkpoints and log.jsonl are left untouched, this run's log lines are held in memory, and
      an exception or kill leaves the old run intact (no emergency checkpoint is written then,
      since it would replace the old run with a few steps of the new one; a kill mid-save can
      leave a temporary ``.step_*`` directory, swept by the next save). At the first checkpoint,
      the old checkpoints are deleted, then the held log replaces log.jsonl, then temporary
      ``.step_*`` directories are swept; pruning never deletes the checkpoint just written.
      Under torchrun only rank 0 touches files.
    - **Verified checkpoints**: each checkpoint carries a manifest of its files' SHA-256 sums,
      checked on every load (``checkpoint.py``).

    Args:
        model: the network (moved to ``device``).
        objective: ``objective(model, batch) -> {"loss": scalar, "per_example": [B],
            "t": [B] in [0, 1] or None}``; if it has ``state_dict``/``load_state_dict`` (e.g. a
            loss history), that state is checkpointed too.
        data: a Dataset of x or (x, y) (a TensorDataset is sliced directly, without a loader).
        run_dir: where logs and checkpoints go.
        batch_size: the global batch (split evenly over the ranks).
        lr, betas, eps, weight_decay, optimizer: Adam ("adam") or AdamW ("adamw") settings.
        warmup: linear warm-up steps (0: none). lr_decay: None or [start, stop]: the learning
            rate follows a half cosine from lr at step start to 0 at step stop.
        grad_clip: max global gradient norm (None: off).
        ema_rates: EMA decay rates (one EMA copy each; () for none).
        amp: None, "bf16" or "fp16" autocast (fp16 with a dynamic loss scaler).
        seed: seeds the data order and the per-step RNG streams (not the model's
            initialisation: build the model inside ``seeded_init(seed)``).
        log_every, save_every: intervals in steps (save_every None: only at the end).
        keep: how many checkpoints to keep (older ones are deleted).
        config: JSON-serializable settings written to each checkpoint's config.json (the model
            preset and kwargs, process and prediction for ``pydiffuse.load``).
        resume: False (a fresh run: refused if run_dir holds a run, unless ``overwrite``); True
            (the newest checkpoint in run_dir; with none, a fresh start that also drops any
            stale log.jsonl lines); or a checkpoint path.
        overwrite: with resume False, replace a run already in run_dir once this run's first
            checkpoint is written (see above).
        device: default the model's device, or this rank's GPU under torchrun.
        num_workers: DataLoader workers (0: load in this process).
        progress: show a tqdm bar (None: when on a terminal; never on ranks other than 0).
    """

    def __init__(self, model, objective, data: Dataset, *, run_dir, batch_size: int = 128,
                 lr: float = 2e-4, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, optimizer: str = "adam", warmup: int = 0,
                 lr_decay=None, grad_clip: float | None = 1.0, ema_rates=(0.9999,),
                 amp: str | None = None,
                 seed: int = DEFAULT_SEED, log_every: int = 100, save_every: int | None = None,
                 keep: int = 2, config: dict | None = None, resume=False,
                 overwrite: bool = False, device=None, num_workers: int = 0,
                 progress: bool | None = None):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
        for name, value, low in (("log_every", log_every, 1), ("keep", keep, 1),
                                 ("warmup", warmup, 0), ("save_every", save_every, 1)):
            if not (value is None and name == "save_every") and (
                    not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if lr_decay is not None:
            if (not isinstance(lr_decay, (list, tuple)) or len(lr_decay) != 2
                    or not all(isinstance(v, int) for v in lr_decay)
                    or not 0 <= lr_decay[0] < lr_decay[1]):
                raise ValueError(f"lr_decay must be [start, stop] steps with 0 <= start < stop, "
                                 f"got {lr_decay!r}")
            lr_decay = tuple(lr_decay)
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other (--resume continues the "
                             "run in run_dir, --overwrite replaces it)")
        self.run_dir = Path(run_dir)
        # A fresh run never mixes with a run already in run_dir: refused, or (overwrite) the old
        # run is kept intact until this one's first checkpoint (_retire_previous_run). Checked on
        # every rank before DDP's first collective, so no rank has started writing yet.
        previous = None if resume else _previous_run(self.run_dir)
        if previous and not overwrite:
            raise ValueError(f"{self.run_dir} already holds a training run ({previous}): pass "
                             f"--resume (resume=True) to continue it or --overwrite "
                             f"(overwrite=True) to replace it")
        self._replacing = bool(previous)
        self._held_log = [] if self._replacing else None     # this run's log lines until then
        self.dist = distributed.setup()
        if batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of ranks "
                             f"({self.dist.world_size})")
        if len(data) == 0:
            raise ValueError("the dataset is empty")
        if device is None:
            device = self.dist.device if self.dist.world_size > 1 else next(
                iter(model.parameters())).device
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.net = model if self.dist.world_size == 1 else DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=getattr(objective, "find_unused_parameters", False))
        self.objective, self.data = objective, data
        self.batch_size, self.lr, self.warmup, self.grad_clip = batch_size, lr, warmup, grad_clip
        self.lr_decay = lr_decay
        self.amp, self.seed, self.num_workers = amp, seed, num_workers
        self.log_every, self.save_every, self.keep = log_every, save_every, keep
        self.config, self.progress = dict(config or {}), progress
        groups = _param_groups(objective, model)
        self.optimizer = OPTIMIZERS[optimizer](groups, lr=lr, betas=tuple(betas), eps=eps,
                                               weight_decay=weight_decay)
        self.group_lrs = [g.get("lr", lr) for g in groups]     # each group's lr before warm-up
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.ema = EMA(model, ema_rates) if ema_rates else None
        self.settings = {"batch_size": batch_size, "lr": lr, "betas": list(betas), "eps": eps,
                         "weight_decay": weight_decay, "optimizer": optimizer, "warmup": warmup,
                         "lr_decay": None if lr_decay is None else list(lr_decay),
                         "grad_clip": grad_clip, "ema_rates": list(ema_rates), "amp": amp,
                         "seed": seed}
        self.step, self.skipped, self.history, self._saved = 0, 0, [], None
        # the logging window: loss sum, steps, 4 quartile loss sums, 4 counts, grad norm sum
        self.window = torch.zeros(11, dtype=torch.float64)
        # a step's phases: _mid_step (objective, backward: undone on a crash), then _updating
        # (optimizer, EMA, counters: a crash there leaves no consistent state to save)
        self._mid_step, self._updating, self._objective_before = False, False, None
        self._shown = {}
        if resume:
            path = latest_checkpoint(self.run_dir) if resume is True else Path(resume)
            if path is not None:
                self.load(path)
            else:
                self._cut_log()

    def lr_at(self, step: int, lr: float | None = None) -> float:
        """The learning rate of step ``step`` (0-based), lr the Trainer's or a parameter group's
        own: lr * min(1, (step + 1) / warmup), times the cosine decay ½(1 + cos(π u)),
        u = (step - start) / (stop - start) clipped to [0, 1], with ``lr_decay=(start, stop)``
        (SGDR's half cosine, Loshchilov & Hutter 2017, annealed once to 0)."""
        lr = self.lr if lr is None else lr
        if self.warmup:
            lr *= min(1.0, (step + 1) / self.warmup)
        if self.lr_decay is not None:
            start, stop = self.lr_decay
            u = min(1.0, max(0.0, (step - start) / (stop - start)))
            lr *= 0.5 * (1.0 + math.cos(math.pi * u))
        return lr

    def ema_model(self, rate: float | None = None) -> torch.nn.Module:
        """A frozen copy of the model with the EMA weights of ``rate`` (default the first)."""
        if self.ema is None:
            raise ValueError("this Trainer keeps no EMA (ema_rates=())")
        return self.ema.model(self.model, rate)

    # -- the loop --------------------------------------------------------------------------

    def _batches(self, stop: int):
        sampler = StepBatches(len(self.data), self.batch_size, self.seed, self.step, stop,
                              self.dist.rank, self.dist.world_size)
        if isinstance(self.data, TensorDataset) and self.num_workers == 0:
            for step in range(self.step, stop):
                idx = sampler.indices(step)
                yield _unwrap(tuple(t[idx] for t in self.data.tensors))
            return
        yield from DataLoader(self.data, batch_sampler=sampler, num_workers=self.num_workers,
                              collate_fn=_collate, pin_memory=self.device.type == "cuda")

    def train(self, steps: int) -> list:
        """Train until ``steps`` steps in all (counting those of a resumed run), then save.

        Returns:
            the loss history, one global mean loss per step (NaN where a step was skipped).
        """
        show = self.dist.is_main and self.progress is not False
        bar = tqdm(total=steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=None if show and self.progress is None else not show)
        start, ran = time.perf_counter(), 0
        try:
            for batch in self._batches(steps):
                self.window += self._step(_to(batch, self.device))
                ran += 1
                bar.update(1)
                bar.set_postfix(loss=f"{self.history[-1]:.4g}", **self._shown, refresh=False)
                if self.step % self.log_every == 0:
                    self._log(ran / max(time.perf_counter() - start, 1e-9))
                    self.window.zero_()
                    start, ran = time.perf_counter(), 0
                if self.save_every and self.step % self.save_every == 0:
                    self.save()
        except BaseException:
            if self._updating:
                logger.error("interrupted inside the optimizer update of step %d: weights are "
                             "half-updated, no checkpoint written", self.step)
                raise
            if self._mid_step and self._objective_before is not None:   # undo its history
                self.objective.load_state_dict(self._objective_before)
            self._mid_step = False
            if self._saved != self.step and self._replacing:
                logger.warning("interrupted at step %d, before this run's first checkpoint: none "
                               "written, and the run already in %s is left intact", self.step,
                               self.run_dir)
            elif self._saved != self.step:
                logger.warning("interrupted at step %d: writing a checkpoint", self.step)
                self.save()
            raise
        finally:
            bar.close()
        if self._saved != self.step:
            self.save()
        return self.history

    def _step(self, batch) -> torch.Tensor:
        """One optimizer step; returns [loss, 1, quartile loss sums (4), counts (4), grad norm]
        for the logging window (zeros where skipped)."""
        seed_all(mix_seed(self.seed, STEP_STREAM, self.step, self.dist.rank))
        self._objective_before = copy.deepcopy(self._objective_state())
        self._mid_step = True
        self.model.train()
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp] or torch.bfloat16,
                            enabled=self.amp is not None):
            out = self.objective(self.net, batch)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = math.sqrt(sum(float(torch.nn.utils.clip_grad_norm_(
            [p for p in group["params"] if p.grad is not None], self.grad_clip or math.inf)) ** 2
            for group in self.optimizer.param_groups))
        local = torch.cat([loss.detach().double().reshape(1), self._quartiles(out)])
        stats = distributed.all_reduce_sum(local).double().cpu()
        stats[0] /= self.dist.world_size
        value = float(stats[0])
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs):
            group["lr"] = self.lr_at(self.step, lr)
        finite = math.isfinite(value) and math.isfinite(norm)
        self._updating = True
        if finite:
            if self.scaler:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.skipped += 1
            if self.dist.is_main:      # an fp16 gradient overflow is the loss scaler's routine
                overflow = self.scaler is not None and math.isfinite(value)
                logger.log(logging.INFO if overflow else logging.WARNING,
                           "step %d: non-finite %s (loss %g, gradient norm %g): optimizer step "
                           "skipped (%d skipped so far)", self.step,
                           "fp16 gradient" if overflow else "loss" if not math.isfinite(value)
                           else "gradient", value, norm, self.skipped)
        if self.scaler:
            self.scaler.update()
        self.step += 1
        self.history.append(value)
        self._mid_step = self._updating = False
        if not finite:
            return torch.zeros(11, dtype=torch.float64)
        return torch.cat([stats[:1], torch.ones(1, dtype=torch.float64), stats[1:],
                          torch.tensor([norm], dtype=torch.float64)])

    @staticmethod
    def _quartiles(out) -> torch.Tensor:
        """[4 per-quartile loss sums, 4 counts] of the batch by the objective's t (zeros if
        it has no t)."""
        per, t = out.get("per_example"), out.get("t")
        if per is None or t is None:
            return torch.zeros(8, dtype=torch.float64, device=out["loss"].device)
        q = (t.detach().double().reshape(-1) * 4).long().clamp(0, 3)
        sums = torch.zeros(4, dtype=torch.float64, device=per.device).index_add_(
            0, q, per.detach().double().reshape(-1))
        return torch.cat([sums, torch.bincount(q, minlength=4).double()])

    def _log(self, steps_per_s: float):
        if not self.dist.is_main:
            return
        window = self.window
        steps = int(window[1])
        record = {"step": self.step, "loss": float(window[0] / steps) if steps else math.nan,
                  "lr": self.lr_at(self.step - 1), "skipped": self.skipped,
                  "grad_norm": float(window[10] / steps) if steps else math.nan,
                  "steps_per_s": steps_per_s}
        for i in range(4):
            if window[6 + i] > 0:
                record[f"loss_q{i + 1}"] = float(window[2 + i] / window[6 + i])
        line = json.dumps(record) + "\n"
        if self._held_log is not None:       # replacing a run: held until the first checkpoint
            self._held_log.append(line)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(line)
        self._shown = {k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss_q")}
        logger.info("step %d: %s", self.step, " ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k.startswith("loss")))

    # -- checkpoints -----------------------------------------------------------------------

    def _objective_state(self):
        state_dict = getattr(self.objective, "state_dict", None)
        return state_dict() if callable(state_dict) else None

    def save(self) -> Path | None:
        """Write the checkpoint ``<run_dir>/step_<N>`` (rank 0 only; returns its path there), then
        (``overwrite``, first checkpoint) remove the run it replaces, and prune older ones."""
        self._saved = self.step
        if not self.dist.is_main:
            self._replacing = False
            return None
        emas = {} if self.ema is None else {
            r: self.ema.state_dict(self.model, r) for r in self.ema.rates}
        state = {"step": self.step, "skipped": self.skipped, "seed": self.seed,
                 "history": torch.tensor(self.history, dtype=torch.float64),
                 "window": self.window.clone(),
                 "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None,
                 "ema_updates": self.ema.num_updates if self.ema else 0,
                 "objective": self._objective_state()}
        config = {**self.config, "trainer": self.settings, "step": self.step}
        path = save_checkpoint(self.run_dir / f"step_{self.step:07d}",
                               model=self.model.state_dict(), emas=emas, state=state,
                               config=config)
        if self._replacing:
            self._retire_previous_run(path)
        prune_checkpoints(self.run_dir, self.keep, protect=path)
        return path

    def _retire_previous_run(self, new: Path):
        """Remove the run this one replaces (``overwrite``), now that ``new`` is written: its
        checkpoints first (so a kill midway leaves ``new`` the newest), then its log.jsonl,
        replaced by this run's held lines (atomically)."""
        for old in checkpoints(self.run_dir):
            if old.name != new.name:
                remove_checkpoint(old)
        log = self.run_dir / "log.jsonl"
        tmp = self.run_dir / ".log.jsonl.tmp"
        tmp.write_text("".join(self._held_log))
        os.replace(tmp, log)
        self._held_log, self._replacing = None, False
        logger.info("replaced the previous run in %s", self.run_dir)

    def load(self, path):
        """Restore everything from a checkpoint: weights, EMA, optimizer, scaler, step, loss
        history, logging window and the objective's state; the log file is cut back to the
        checkpoint's step."""
        ckpt = load_checkpoint(path)
        state = ckpt["state"]
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            missing = set(self.ema.rates) - set(ckpt["ema"])
            if missing:
                raise ValueError(f"{path}: no EMA weights for rates {sorted(missing)}")
            for rate in self.ema.rates:
                self.ema.load_state_dict(rate, ckpt["ema"][rate])
            self.ema.num_updates = state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if state["objective"] is not None and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])
        self.step, self.skipped = state["step"], state["skipped"]
        self.history = state["history"].tolist()
        self.window = state["window"].clone()
        self._saved = self.step
        self._cut_log()
        logger.info("resumed from %s at step %d", path, self.step)

    def _cut_log(self):
        """Drop the log.jsonl lines past this run's step (rank 0)."""
        log = self.run_dir / "log.jsonl"
        if self.dist.is_main and log.is_file():
            kept = [ln for ln in log.read_text().splitlines() if _logged_step(ln) <= self.step]
            log.write_text("".join(ln + "\n" for ln in kept))

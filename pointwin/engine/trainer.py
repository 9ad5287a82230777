"""The training loop: epochs of optimizer steps, schedules, AMP, checkpoints, logs and evaluation.

The model contract (pointwin detectors and segmentors follow it):

- ``model.loss(batch) -> dict[str, Tensor]`` with key ``"loss"`` holding the scalar to minimise; the
  other scalar entries are logged;
- ``model.predict(batch) -> list`` with one result (``Detections`` or a per-point label tensor) per sample;
- optionally ``model.set_grad_checkpointing(enable: bool)`` (the timm convention) for activation
  checkpointing in backbones.

A run is reproducible on the CPU for a fixed seed, and a run resumed from a checkpoint continues
exactly as the uninterrupted run would have (same data order, RNG state, optimizer and schedule state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pointwin.config import ConfigError, to_plain
from pointwin.structures import Boxes3D, Detections, collate

from ..fileio import atomic_path, remove_stale_temporaries, write_text
from . import dist
from .checkpoint import (
    LATEST,
    CheckpointError,
    WeightLoadReport,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    load_model_weights,
    save_checkpoint,
    set_rng_state,
)

#: train.amp values -> None (float32) / "auto" / "bf16" / "fp16"
AMP_MODES = {False: None, True: "auto", "auto": "auto", "bf16": "bf16", "fp16": "fp16", "false": None, "off": None}

#: Final names of the files a run writes into its work dir (their stale temporaries are removed at start).
_WORK_DIR_FILES = re.compile(r"latest\.pth|epoch_\d+(_iter_\d+)?\.pth|config\.yaml|metrics_epoch_\d+\.json"
                             r"|log\.jsonl|test_\w+_metrics\.json")


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient) stayed non-finite for too many consecutive steps."""


@dataclass
class TrainSettings:
    """The ``train:`` section of a config. Batch size is per process (global batch = world_size x batch_size)."""

    epochs: int = 10
    batch_size: int = 4
    eval_batch_size: int = 0  # 0 -> batch_size
    num_workers: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: str = "onecycle"  # onecycle | cosine | constant
    pct_start: float = 0.4  # one-cycle: fraction of steps spent rising
    div_factor: float = 10.0  # one-cycle: start lr = lr / div_factor
    final_div_factor: float = 1e3  # one-cycle: final lr = start lr / final_div_factor
    moms: list[float] | None = field(default_factory=lambda: [0.95, 0.85])  # one-cycle beta1 range; None: fixed
    warmup_iters: int = 0  # cosine: linear warm-up steps
    min_lr_ratio: float = 1e-3  # cosine: final lr = lr * min_lr_ratio
    grad_clip: float = 10.0  # max grad norm; 0 disables
    # mixed precision on CUDA: false | true / "auto" (bf16 autocast where the GPU supports it, else fp16 +
    # GradScaler) | "bf16" | "fp16"; float32 on the CPU whatever the setting
    amp: bool | str = False
    grad_checkpoint: bool = False
    sync_bn: bool = False
    find_unused_parameters: bool = False
    eval_every: int = 1  # epochs; 0 disables evaluation during training
    ckpt_every: int = 1  # epochs
    ckpt_every_iters: int = 0  # also write latest.pth every N steps (0: off)
    keep_ckpts: int = 3  # epoch_*.pth files kept
    log_every: int = 10  # steps between JSON-log lines
    max_bad_steps: int = 10  # consecutive non-finite steps before aborting
    max_iters_per_epoch: int = 0  # cap on steps per epoch (0: the whole dataset)

    @classmethod
    def from_config(cls, cfg: Any) -> TrainSettings:
        data = dict(to_plain(cfg or {}))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"train: unknown key(s) {unknown}; valid: {sorted(names)}")
        s = cls(**data)
        if s.schedule not in ("onecycle", "cosine", "constant"):
            raise ConfigError(f"train.schedule must be onecycle, cosine or constant, got {s.schedule!r}")
        if s.epochs < 1 or s.batch_size < 1:
            raise ConfigError(f"train.epochs and train.batch_size must be >= 1, got {s.epochs}, {s.batch_size}")
        if not (isinstance(s.lr, (int, float)) and math.isfinite(s.lr) and s.lr > 0):
            raise ConfigError(f"train.lr must be a finite number > 0, got {s.lr!r}", key="train.lr")
        if not (isinstance(s.amp, (bool, str)) and s.amp in AMP_MODES):
            raise ConfigError(f"train.amp must be one of false, true, auto, bf16, fp16; got {s.amp!r}", key="train.amp")
        return s

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of ``amp`` on ``device`` (None: float32)."""
        mode = AMP_MODES[self.amp]
        if mode is None or device.type != "cuda":
            return None
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16


# ---------------------------------------------------------------- schedules
class LRSchedule:
    """Per-step learning-rate (and one-cycle momentum) schedule; its state is the step counter only.

    onecycle: cosine rise from ``lr/div`` to ``lr`` over ``pct_start`` of the steps, then cosine decay to
    ``lr/div/final_div``; beta1 moves from ``moms[0]`` to ``moms[1]`` and back (OpenPCDet's adam_onecycle).
    cosine: linear warm-up over ``warmup_iters``, then cosine decay from ``lr`` to ``lr * min_lr_ratio``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int) -> None:
        self.optimizer, self.s, self.total = optimizer, settings, max(int(total_steps), 1)
        self.last_step = 0
        self.apply()

    @staticmethod
    def _cos(start: float, end: float, frac: float) -> float:
        return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))

    def values(self, step: int) -> tuple[float, float | None]:
        s = self.s
        if s.schedule == "constant":
            return s.lr, None
        if s.schedule == "cosine":
            if step < s.warmup_iters:
                return s.lr * (step + 1) / s.warmup_iters, None
            span = max(self.total - s.warmup_iters, 1)
            return self._cos(s.lr, s.lr * s.min_lr_ratio, (step - s.warmup_iters) / span), None
        up = max(int(s.pct_start * self.total), 1)
        lo, hi = s.lr / s.div_factor, s.lr
        m0, m1 = (s.moms if s.moms else (None, None))
        if step < up:
            frac = step / up
            return self._cos(lo, hi, frac), (None if m0 is None else self._cos(m0, m1, frac))
        frac = (step - up) / max(self.total - up, 1)
        return self._cos(hi, lo / s.final_div_factor, frac), (None if m0 is None else self._cos(m1, m0, frac))

    def apply(self) -> None:
        lr, mom = self.values(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if mom is not None and "betas" in group:
                group["betas"] = (mom, group["betas"][1])

    def step(self) -> None:
        self.last_step += 1
        self.apply()

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_step = int(state["last_step"])
        self.apply()


def build_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.AdamW:
    """AdamW; biases and norm weights (1-D parameters) get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr, betas=tuple(s.betas))


# ---------------------------------------------------------------- logging
class RunLogger:
    """JSON-lines log (``log.jsonl``), TensorBoard scalars when tensorboard is importable; rank 0 only."""

    def __init__(self, work_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = work_dir / "log.jsonl"
        self.tb = None
        if enabled:
            work_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    self.tb = None
                else:
                    self.tb = SummaryWriter(str(work_dir / "tb"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in record.items()}
        record.setdefault("wall", round(time.time(), 3))  # unix time, for wall-clock accounting of a run
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and step is not None:
            prefix = record.get("mode", "train")
            for k, v in record.items():
                skip = k in ("epoch", "iter", "mode", "wall")
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not skip:
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def truncate_after(self, iteration: int) -> int:
        """Drop the records of steps after ``iteration`` (and a line torn by a kill), so that a resumed run
        does not log those steps twice; returns the number of lines dropped."""
        if not self.enabled:
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text().splitlines() if self.path.is_file() else []:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(rec, dict) and int(rec.get("iter", 0) or 0) > iteration:
                dropped += 1
                continue
            keep.append(line)
        if dropped:
            write_text(self.path, "".join(f"{ln}\n" for ln in keep))
        if self.tb is not None:  # TensorBoard too: events of the steps after ``iteration`` are purged
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.tb.log_dir
            self.tb.close()
            self.tb = SummaryWriter(log_dir, purge_step=iteration + 1)
        return dropped

    def print(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (seed the legacy global RNG too)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = info.seed % (2**32) if info is not None else worker_id
    np.random.seed(seed)  # noqa: NPY002
    import random

    random.seed(seed)


def enable_grad_checkpointing(model: torch.nn.Module) -> int:
    """Call ``set_grad_checkpointing(True)`` on the model, or else on every submodule that has it (the
    backbones); warn when nothing supports it. Returns the number of modules switched."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return 1
    found = [m for m in model.modules() if m is not model and hasattr(m, "set_grad_checkpointing")]
    for m in found:
        m.set_grad_checkpointing(True)
    if not found:
        warnings.warn(f"train.grad_checkpoint is set but {type(model).__name__} has no module with "
                      "set_grad_checkpointing(); ignored", stacklevel=3)
    return len(found)


def _to_cpu_float(result: Any) -> Any:
    """Move a prediction to the CPU; floating tensors become float32 (autocast may give bf16/fp16)."""
    if isinstance(result, Detections):
        return Detections(Boxes3D(result.boxes.tensor.detach().float().cpu()), result.scores.detach().float().cpu(),
                          result.labels.detach().cpu())
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu()
        return result.float() if result.is_floating_point() else result
    return result.to("cpu") if hasattr(result, "to") else result


class _LossForward(torch.nn.Module):
    """Routes ``forward(batch)`` to ``model.loss(batch)`` so DDP sees the loss computation as its forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available (``cuda:LOCAL_RANK`` under torchrun) else cpu."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
        if dev.index is None:
            dev = torch.device("cuda", dist.env_dist_info().local_rank)
    return dev


# ---------------------------------------------------------------- trainer
class Trainer:
    """Runs training (and evaluation) of ``model`` on ``train_set``.

    Args:
        model: follows the contract in the module docstring.
        train_set, val_set: map-style datasets of ``Sample``; ``val_set`` may be None.
        settings: the ``train:`` section.
        work_dir: checkpoints, ``log.jsonl``, ``tb/`` and ``metrics_*.json`` go here (rank 0 writes).
        evaluate_fn: ``results (list, one per val sample) -> {metric: float}``; None skips metrics.
        config_text: the YAML of the run's config, stored in checkpoints and ``config.yaml``.
        progress: show tqdm bars (rank 0).
    """

    def __init__(self, model: torch.nn.Module, train_set: Dataset | None, settings: TrainSettings,
                 work_dir: str | Path, *, val_set: Dataset | None = None,
                 evaluate_fn: Callable[[list], dict[str, float]] | None = None, device: str | None = None,
                 seed: int = 0, config_text: str = "", progress: bool = True,
                 collate_fn: Callable = collate) -> None:
        self.info = dist.get_info()
        self.s = settings
        self.work_dir = Path(work_dir)
        self.device = resolve_device(device)
        self.seed = seed
        self.config_text = config_text
        self.progress = progress and self.info.is_main
        self.collate_fn = collate_fn
        self.train_set, self.val_set, self.evaluate_fn = train_set, val_set, evaluate_fn
        self.logger = RunLogger(self.work_dir, self.info.is_main)
        self._cleaned = False
        set_seed(seed + self.info.rank)

        self.model = model.to(self.device)
        if settings.grad_checkpoint:
            enable_grad_checkpointing(model)
        self.amp_dtype = settings.amp_dtype(self.device)
        if AMP_MODES[settings.amp] not in (None, "auto") and self.device.type != "cuda":
            warnings.warn("train.amp is only used on CUDA; training in float32 on the CPU", stacklevel=2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.train_loader: DataLoader | None = None
        # the loader draws its worker base seed from its own generator (re-seeded every epoch), not from the
        # global RNG, so a resumed run sees the same global RNG stream as the uninterrupted one
        self.loader_gen = torch.Generator()
        if train_set is not None:
            self.sampler = dist.ShardSampler(len(train_set), self.info.rank, self.info.world_size,
                                             shuffle=True, seed=seed)
            self.train_loader = DataLoader(train_set, batch_size=settings.batch_size, sampler=self.sampler,
                                           collate_fn=collate_fn, num_workers=settings.num_workers,
                                           worker_init_fn=_worker_init, generator=self.loader_gen,
                                           drop_last=len(self.sampler) >= settings.batch_size,
                                           persistent_workers=False)
        self.iters_per_epoch = self._iters_per_epoch()
        self.ddp_model = dist.wrap_model(_LossForward(self.model), self.device, settings.sync_bn,
                                         settings.find_unused_parameters)
        self.optimizer = build_optimizer(self.model, settings)
        self.scheduler = LRSchedule(self.optimizer, settings, settings.epochs * max(self.iters_per_epoch, 1))
        self.epoch = 0  # epochs finished
        self.iteration = 0  # optimizer steps taken (including skipped non-finite steps)
        self.epoch_iter = 0  # batches consumed in the current epoch
        self.bad_steps = 0
        self.history: list[dict[str, float]] = []  # per-step training losses (this process's run)
        self.last_results: list | None = None  # rank 0: per-sample predictions of the last evaluate()

    def _iters_per_epoch(self) -> int:
        if self.train_loader is None:
            return 0
        n_samples = len(self.sampler)
        n = n_samples // self.s.batch_size if n_samples >= self.s.batch_size else 1
        return min(n, self.s.max_iters_per_epoch) if self.s.max_iters_per_epoch > 0 else n

    # ------------------------------------------------------------ checkpoints
    def save(self, name: str | None = None) -> Path | None:
        """Write ``epoch_N.pth`` (at an epoch end) or only ``latest.pth`` (mid-epoch); rank 0 only."""
        if not self.info.is_main:
            return None
        kw = dict(epoch=self.epoch, iteration=self.iteration, epoch_iter=self.epoch_iter,
                  config=self.config_text, meta={"world_size": self.info.world_size, "seed": self.seed})
        latest = self.work_dir / LATEST
        if name is None and self.epoch_iter == 0:
            name = f"epoch_{self.epoch}.pth"
        if name is not None:
            path = save_checkpoint(self.work_dir / name, self.model, self.optimizer, self.scheduler, self.scaler,
                                   **kw)
            with atomic_path(latest) as tmp:
                shutil.copyfile(path, tmp)
            for old in list_checkpoints(self.work_dir)[self.s.keep_ckpts:]:
                old.unlink(missing_ok=True)
            return path
        return save_checkpoint(latest, self.model, self.optimizer, self.scheduler, self.scaler, **kw)

    def resume(self, resume: str | Path, start_over: bool = False) -> bool:
        """Continue from a checkpoint: ``"auto"`` takes the last good one in the work dir.

        With ``"auto"`` and no checkpoint at all, training starts from scratch. When checkpoints exist but
        none is readable (truncated, damaged, weights only), a :class:`CheckpointError` lists them, unless
        ``start_over`` (``pointwin train --start-over``) says to start from scratch and overwrite them.
        """
        self.remove_stale_temporaries()
        if str(resume) == "auto":
            skipped: list[str] = []
            found = find_resume_checkpoint(self.work_dir, skipped)
            if found is None and skipped and not start_over:
                raise CheckpointError(
                    f"--resume auto: {len(skipped)} checkpoint(s) in {self.work_dir} and none is usable: "
                    + "; ".join(skipped)
                    + ". Pass --start-over to train from scratch and overwrite them, or --resume PATH to "
                      "name a good copy", path=self.work_dir)
            if found is None:
                what = f"no usable checkpoint ({len(skipped)} skipped)" if skipped else "no checkpoint"
                self.logger.print(f"resume=auto: {what} in {self.work_dir}; starting from scratch")
                self.logger.truncate_after(0)
                return False
            path, state = found
        else:
            path = Path(resume)
            state = load_checkpoint_file(path, map_location="cpu")
            if "optimizer" not in state:
                raise ConfigError(f"--resume {path}: holds model weights only; use --load-from to start from them")
        load_model_weights(self.model, state, path)
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.epoch_iter = int(state.get("epoch_iter", 0))
        meta = state.get("meta", {})
        if "seed" in meta and int(meta["seed"]) != self.seed:  # the data order of the run continues
            self.logger.print(f"resume: using the run's seed {meta['seed']} (not {self.seed})")
            self.seed = int(meta["seed"])
            if self.train_loader is not None:
                self.sampler.seed = self.seed
        world = int(meta.get("world_size", 1))
        if world == self.info.world_size:
            set_rng_state(state["rng"])
        elif self.epoch_iter:
            warnings.warn(f"resuming mid-epoch with {self.info.world_size} processes from a checkpoint written "
                          f"by {world}; the data order of this epoch will differ", stacklevel=2)
        self.logger.truncate_after(self.iteration)  # the steps after the checkpoint run (and are logged) again
        self.logger.print(f"resumed from {path} (epoch {self.epoch}, step {self.iteration})")
        return True

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries a killed run of this work dir left (a full-size ``.latest.*.tmp.pth``, ...);
        rank 0, once, when training starts or resumes. Only pointwin's own temporary names of the files a
        run writes are touched (not at construction: ``pointwin test`` may share the dir of a running run)."""
        if not self.info.is_main or self._cleaned:
            return []
        self._cleaned = True
        removed = remove_stale_temporaries(self.work_dir, _WORK_DIR_FILES)
        if removed:
            self.logger.print(f"removed {len(removed)} stale temporary file(s) of an interrupted run in "
                              f"{self.work_dir}")
        return removed

    def load_weights(self, path: str | Path, strict: bool = True) -> WeightLoadReport:
        """Model weights from a checkpoint; ``strict=False`` loads what matches by name and shape and prints
        a one-screen report of the rest (fine-tuning)."""
        report = load_model_weights(self.model, load_checkpoint_file(path), path, strict=strict)
        if not report.complete:
            self.logger.print(f"weights from {path}: {report.summary()}")
        return report

    # ------------------------------------------------------------ training
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_step(self, batch: Any) -> dict[str, float] | None:
        """One optimizer step; returns logged scalars (mean over ranks), or None when the step was skipped."""
        self.ddp_model.train()
        batch = batch.to(self.device) if hasattr(batch, "to") else batch
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            losses = self.ddp_model(batch)
        if "loss" not in losses:
            raise KeyError(f"{type(self.model).__name__}.loss() must return a dict with key 'loss', got {list(losses)}")
        loss = losses["loss"]
        bad = dist.any_rank(not bool(torch.isfinite(loss.detach()).all()), self.device)
        grad_norm = float("nan")
        if not bad:
            self.scaler.scale(loss).backward()
            if self.s.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip))
                # with a GradScaler, inf grads are the scaler's business (it skips the step and backs off)
                bad = dist.any_rank(not math.isfinite(grad_norm) and not self.scaler.is_enabled(), self.device)
        if bad:
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            msg = (f"non-finite loss/gradient at epoch {self.epoch + 1} step {self.iteration + 1} "
                   f"({self.bad_steps} in a row); step skipped")
            warnings.warn(msg, stacklevel=2)
            self.logger.log({"mode": "warning", "epoch": self.epoch + 1, "iter": self.iteration + 1, "msg": msg})
            if self.bad_steps >= self.s.max_bad_steps:
                raise NonFiniteLossError(
                    f"the loss or gradient was non-finite for {self.bad_steps} consecutive steps (epoch "
                    f"{self.epoch + 1}, step {self.iteration + 1}; limit train.max_bad_steps="
                    f"{self.s.max_bad_steps}). Lower train.lr, keep train.grad_clip > 0, or check the data for "
                    f"NaN/inf values. Last good checkpoint: {self.work_dir / LATEST}")
            self.scheduler.step()
            self.iteration += 1
            return None
        self.bad_steps = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_lr()
        self.scheduler.step()
        self.iteration += 1
        names = [k for k, v in losses.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
        values = torch.stack([losses[k].detach().float().reshape(()) for k in names])
        values = dist.all_reduce_mean(values).cpu().tolist()
        out = dict(zip(names, values))
        out["lr"] = lr
        out["grad_norm"] = grad_norm
        return out

    def train_epoch(self, max_steps: int | None = None) -> bool:
        """Run (the rest of) one epoch; returns False when stopped early by ``max_steps``."""
        from tqdm import tqdm

        assert self.train_loader is not None
        skip_batches = self.epoch_iter
        self.sampler.set_epoch(self.epoch, skip=skip_batches * self.s.batch_size)
        self.loader_gen.manual_seed((self.seed * 1_000_003 + self.epoch * 1009 + self.info.rank) % (2**63))
        if hasattr(self.train_set, "set_epoch"):  # per-epoch augmentation seeds (pointwin datasets)
            self.train_set.set_epoch(self.epoch)
        total = self.iters_per_epoch
        bar = tqdm(total=total, initial=skip_batches, disable=not self.progress, dynamic_ncols=True, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.s.epochs}", mininterval=1.0, file=sys.stdout)
        t_data = time.perf_counter()
        window: list[float] = []
        for batch in self.train_loader:
            if self.epoch_iter >= total:
                break
            t0 = time.perf_counter()
            out = self.train_step(batch)
            t1 = time.perf_counter()
            self.epoch_iter += 1
            bar.update(1)
            if out is not None:
                window.append(out["loss"])
                self.history.append({"iter": self.iteration, **out})
                bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}", refresh=False)
                if self.iteration % self.s.log_every == 0 or self.epoch_iter == total:
                    self.logger.log({"mode": "train", "epoch": self.epoch + 1, "iter": self.iteration, **out,
                                     "loss_avg": float(np.mean(window)), "time": t1 - t0, "data_time": t0 - t_data},
                                    step=self.iteration)
                    window.clear()
            if self.s.ckpt_every_iters and self.iteration % self.s.ckpt_every_iters == 0 and self.epoch_iter < total:
                self.save()
            t_data = time.perf_counter()
            if max_steps is not None and self.iteration >= max_steps:
                bar.close()
                return self.epoch_iter >= total
        bar.close()
        return True

    def fit(self, max_steps: int | None = None) -> dict[str, float] | None:
        """Train until ``settings.epochs`` (or ``max_steps`` optimizer steps, to simulate a stop);
        returns the last evaluation metrics (rank 0) or None."""
        if self.train_loader is None:
            raise ValueError("Trainer.fit needs a train_set")
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.remove_stale_temporaries()
            if self.config_text:
                write_text(self.work_dir / "config.yaml", self.config_text)
        metrics = None
        self.logger.print(f"training {type(self.model).__name__} on {self.device} x{self.info.world_size}: "
                          f"{self.s.epochs} epochs x {self.iters_per_epoch} steps, global batch "
                          f"{self.s.batch_size * self.info.world_size}; work dir {self.work_dir}")
        t_start = time.perf_counter()
        while self.epoch < self.s.epochs:
            finished = self.train_epoch(max_steps)
            if not finished:
                self.save()
                return metrics
            self.epoch += 1
            self.epoch_iter = 0
            if self.s.ckpt_every and (self.epoch % self.s.ckpt_every == 0 or self.epoch == self.s.epochs):
                self.save()
            if (self.val_set is not None and self.s.eval_every
                    and (self.epoch % self.s.eval_every == 0 or self.epoch == self.s.epochs)):
                metrics = self.evaluate()
            dist.barrier()
            if max_steps is not None and self.iteration >= max_steps:
                return metrics
        self.logger.print(f"training finished in {time.perf_counter() - t_start:.0f} s")
        return metrics

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, dataset: Dataset) -> list | None:
        """``model.predict`` over ``dataset``, sharded over ranks; rank 0 gets every sample's result in order."""
        from tqdm import tqdm

        self.model.eval()
        sampler = dist.ShardSampler(len(dataset), self.info.rank, self.info.world_size, shuffle=False, pad=False)
        indices = list(iter(sampler))
        bs = self.s.eval_batch_size or self.s.batch_size
        loader = DataLoader(dataset, batch_size=bs, sampler=indices, collate_fn=self.collate_fn,
                            num_workers=self.s.num_workers)
        results: list = []
        for batch in tqdm(loader, disable=not self.progress, desc="predict", leave=False, mininterval=1.0,
                          file=sys.stdout):
            batch = batch.to(self.device) if hasattr(batch, "to") else batch
            with self._autocast():
                out = self.model.predict(batch)
            results.extend(_to_cpu_float(r) for r in out)
        if len(results) != len(indices):
            raise RuntimeError(f"{type(self.model).__name__}.predict returned {len(results)} results for "
                               f"{len(indices)} samples")
        return dist.gather_results(indices, results, len(dataset))

    def evaluate(self, dataset: Dataset | None = None) -> dict[str, float] | None:
        """Predict on the validation set and compute metrics on rank 0 (written to ``metrics_epoch_N.json``)."""
        dataset = dataset if dataset is not None else self.val_set
        if dataset is None:
            raise ValueError("Trainer.evaluate: no dataset")
        t0 = time.perf_counter()
        results = self.predict(dataset)
        self.last_results = results
        if not self.info.is_main or self.evaluate_fn is None:
            return None
        metrics = {k: float(v) if isinstance(v, (int, float, np.floating)) else v
                   for k, v in self.evaluate_fn(results).items()}
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
        self.logger.log({"mode": "val", "epoch": self.epoch, "iter": self.iteration, **scalars,
                         "eval_time": time.perf_counter() - t0}, step=self.iteration)
        path = self.work_dir / f"metrics_epoch_{self.epoch}.json"
        write_text(path, json.dumps(metrics, indent=2, default=str))
        shown = ", ".join(f"{k}={v:.4f}" for k, v in scalars.items())
        self.logger.print(f"epoch {self.epoch} eval: {shown}")
        return metrics

    def close(self) -> None:
        self.logger.close()

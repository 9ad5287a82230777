"""Checkpoints: everything a run needs to continue exactly, stored without pickle.

A checkpoint is a ``torch.save`` file whose contents are only tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(weights_only=True)`` (no code runs on load). RNG states are
stored as tensors. Files are written to a temporary name in the same directory and renamed, so a
crash mid-write never leaves a truncated ``latest.pth``.

Layout of a checkpoint::

    {"format": "pointwin-ckpt-1", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "epoch": int (epochs finished), "iteration": int (optimizer steps done),
     "epoch_iter": int (batches consumed in the current epoch), "rng": {...}, "config": yaml str,
     "meta": {...}, "content_sha256": str}

``content_sha256`` is a SHA-256 over every key and value of the other entries (tensor dtype, shape and
bytes; numbers and strings by value), computed when the file is written and checked when it is read:
one changed byte in a tensor, or in any number, raises :class:`CheckpointIntegrityError` instead of
loading silently, and ``--resume auto`` falls back to the previous good checkpoint. Files written before
the hash existed (no ``content_sha256`` key) load as before.
"""

from __future__ import annotations

import hashlib
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PointwinError
from ..fileio import atomic_write

FORMAT = "pointwin-ckpt-1"
LATEST = "latest.pth"
_EPOCH_RE = re.compile(r"^epoch_(\d+)(?:_iter_(\d+))?\.pth$")


HASH_KEY = "content_sha256"


class CheckpointError(PointwinError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message names the file."""


class CheckpointIntegrityError(CheckpointError):
    """The content hash stored in a checkpoint does not match its content: the file was changed or damaged."""


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (the types a weights-only checkpoint holds) with its structure, deterministically."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"B{len(obj)}|".encode() + bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device, torch.Size)):
        text = repr(obj).encode()  # repr of a float round-trips exactly
        h.update(f"S{type(obj).__name__}{len(text)}|".encode() + text)
    else:  # anything else torch.save may hold: by type and repr (deterministic for value types)
        text = f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode()
        h.update(f"O{len(text)}|".encode() + text)


def content_hash(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint dict, ignoring its ``content_sha256`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != HASH_KEY})
    return h.hexdigest()


# ---------------------------------------------------------------- RNG state as tensors
def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states, as tensors and ints only."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (legacy global state, saved for code that uses it)
    state: dict[str, Any] = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": None if py_gauss is None else float(py_gauss),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "numpy_name": str(np_name),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    np_state = (state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                state["numpy_has_gauss"], state["numpy_gauss"])
    np.random.set_state(np_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---------------------------------------------------------------- write / read
def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the target directory, fsync, then rename over ``path``."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, *, epoch: int = 0, iteration: int = 0,
                    epoch_iter: int = 0, config: str = "", meta: dict | None = None) -> Path:
    """Write a full training checkpoint atomically (see the module docstring for the layout)."""
    state = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "epoch_iter": int(epoch_iter),
        "rng": get_rng_state(),
        "config": config,
        "meta": meta or {},
    }
    state[HASH_KEY] = content_hash(state)
    return atomic_torch_save(state, path)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``. Plain state dicts (no ``format`` key) are accepted
    and returned as ``{"model": state_dict}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, pickle with code objects, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    if state.get("format") != FORMAT:
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            return {"model": state["state_dict"]}
        if "model" in state and isinstance(state["model"], dict) and "format" not in state:
            return {"model": state["model"]}
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise CheckpointError(f"checkpoint {path} is not a pointwin checkpoint (format={state.get('format')!r}) "
                              "nor a plain state dict")
    stored = state.get(HASH_KEY)
    if stored is not None:
        actual = content_hash(state)
        if actual != stored:
            raise CheckpointIntegrityError(
                f"checkpoint {path} is damaged: its content hash is {actual[:16]}..., the hash stored when it was "
                f"written is {str(stored)[:16]}... (a byte changed after writing; use an earlier checkpoint)",
                path=path, key=HASH_KEY)
    return state


@dataclass
class WeightLoadReport:
    """What :func:`load_model_weights` did with a checkpoint's model tensors.

    Attributes:
        loaded: model keys filled from the checkpoint.
        shape_mismatch: (key, checkpoint shape, model shape) of tensors skipped (e.g. a head re-sized for
            fine-tuning).
        missing: model keys the checkpoint does not have (left at their initialisation).
        unexpected: checkpoint keys the model does not have.
        epoch: epochs the checkpoint had trained (0 when it does not say).
    """

    loaded: list[str]
    shape_mismatch: list[tuple[str, tuple, tuple]]
    missing: list[str]
    unexpected: list[str]
    epoch: int = 0

    @property
    def complete(self) -> bool:
        return not (self.shape_mismatch or self.missing or self.unexpected)

    def summary(self, limit: int = 8) -> str:
        """A one-screen report: counts, then the first ``limit`` keys of each kind."""
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.shape_mismatch)} skipped (shape), "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"]
        for key, ckpt, own in self.shape_mismatch[:limit]:
            lines.append(f"  skipped {key}: checkpoint {ckpt} vs model {own}")
        lines += [f"  missing {k} (kept at its initialisation)" for k in self.missing[:limit]]
        lines += [f"  unexpected {k} (ignored)" for k in self.unexpected[:limit]]
        hidden = sum(max(0, len(x) - limit) for x in (self.shape_mismatch, self.missing, self.unexpected))
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path = "<memory>",
                       strict: bool = True) -> WeightLoadReport:
    """Load ``state['model']`` into ``model``.

    With ``strict`` any difference (missing, unexpected or differently shaped tensors) raises a
    :class:`CheckpointError` naming the first ones, and nothing is loaded. Without it, every tensor whose
    name and shape match is loaded and the rest is reported (fine-tuning with a changed head).
    """
    target = _unwrap(model)
    own = target.state_dict()
    given = state["model"]
    shape_mismatch = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in given.items()
                      if k in own and tuple(v.shape) != tuple(own[k].shape)]
    skipped = {k for k, _, _ in shape_mismatch}
    report = WeightLoadReport(loaded=[k for k in given if k in own and k not in skipped], shape_mismatch=shape_mismatch,
                              missing=[k for k in own if k not in given], unexpected=[k for k in given if k not in own],
                              epoch=int(state.get("epoch", 0) or 0))
    if strict and not report.complete:
        detail = report.summary(limit=3).replace("\n", ";")
        raise CheckpointError(f"checkpoint {path} does not fit the model ({detail}); to fine-tune from it: "
                              "pointwin train --load-from (loads what matches)", path=path)
    target.load_state_dict({k: given[k] for k in report.loaded}, strict=False)
    return report


def checkpoint_sort_key(path: Path) -> tuple[int, int]:
    m = _EPOCH_RE.match(path.name)
    if not m:
        return (-1, -1)
    return (int(m.group(1)), int(m.group(2)) if m.group(2) is not None else 1 << 62)


def list_checkpoints(work_dir: str | Path) -> list[Path]:
    """``epoch_*.pth`` files in ``work_dir``, newest (by epoch, then iteration) first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [p for p in work_dir.iterdir() if _EPOCH_RE.match(p.name)]
    return sorted(found, key=checkpoint_sort_key, reverse=True)


def find_resume_checkpoint(work_dir: str | Path,
                           skipped: list[str] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The last good checkpoint in ``work_dir``: ``latest.pth`` (always written last) and then ``epoch_*.pth``
    from the newest down; an unreadable or damaged file is skipped with a warning (and its error message
    appended to ``skipped`` when given). None if there is none."""
    work_dir = Path(work_dir)
    candidates = ([work_dir / LATEST] if (work_dir / LATEST).is_file() else []) + list_checkpoints(work_dir)
    for path in candidates:
        try:
            state = load_checkpoint_file(path)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}", stacklevel=2)
            if skipped is not None:
                skipped.append(str(e))
            continue
        if state.get("format") == FORMAT:
            return path, state
        if skipped is not None:
            skipped.append(f"{path}: holds model weights only (no training state)")
    return None

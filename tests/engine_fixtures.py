"""A tiny model and dataset for the engine, CLI and distributed tests (importable as ``tests.engine_fixtures``).

The loss is a mean over samples of per-sample terms, so DDP over k processes with batch b gives the same
gradient as one process with batch k*b (no batch statistics anywhere).
"""

from __future__ import annotations

import torch
from torch import nn

from pointwin.structures import Boxes3D, Detections, Sample


class TinyBoxDataset(torch.utils.data.Dataset):
    """``length`` frames of 64 points scattered around one box; the box centre is the regression target.

    ``nan_frames`` lists frames whose points are NaN in the feature column (to provoke non-finite losses).
    """

    def __init__(self, length: int = 8, seed: int = 0, nan_frames: tuple[int, ...] = ()) -> None:
        self.length, self.seed, self.nan_frames = length, seed, set(nan_frames)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        centre = torch.rand(3, generator=g) * 10 - 5
        pts = centre + torch.randn(64, 3, generator=g) * 0.5
        feat = torch.rand(64, 1, generator=g)
        if i in self.nan_frames:
            feat[:] = float("nan")
        box = torch.cat([centre, torch.tensor([4.0, 2.0, 1.5, 0.3])])[None]
        return Sample(torch.cat([pts, feat], 1), ("x", "y", "z", "intensity"), f"tiny_{i:04d}",
                      Boxes3D(box), torch.zeros(1, dtype=torch.long))

    def evaluate(self, results: list[Detections]) -> dict[str, float]:
        """Mean centre error of each frame's first detection (lower is better)."""
        err = [float((r.boxes.center[0] - self[i].boxes.center[0]).norm()) for i, r in enumerate(results)]
        return {"centre_error": sum(err) / len(err), "num_frames": float(len(err))}


class TinyRegressor(nn.Module):
    """Per-point MLP, mean-pooled per sample, regressing the box centre."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden + 3, 3)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _centres(self, batch) -> torch.Tensor:
        feats = self.mlp(batch.points.data)
        n = batch.batch_size
        idx = batch.points.batch_idx
        count = torch.zeros(n, device=feats.device).index_add_(0, idx, torch.ones_like(idx, dtype=feats.dtype))
        pooled = torch.zeros(n, feats.shape[1], device=feats.device).index_add_(0, idx, feats) / count[:, None]
        mean_xyz = torch.zeros(n, 3, device=feats.device).index_add_(0, idx, batch.points.xyz) / count[:, None]
        return mean_xyz + self.out(torch.cat([pooled, mean_xyz], 1))

    def loss(self, batch) -> dict[str, torch.Tensor]:
        pred = self._centres(batch)
        target = torch.stack([b.center[0] for b in batch.boxes])
        per_sample = ((pred - target) ** 2).sum(1)
        return {"loss": per_sample.mean(), "loss_xy": ((pred - target)[:, :2] ** 2).sum(1).mean()}

    def predict(self, batch) -> list[Detections]:
        pred = self._centres(batch)
        out = []
        for c in pred:
            box = torch.cat([c, torch.tensor([4.0, 2.0, 1.5, 0.3], device=c.device)])[None]
            out.append(Detections(Boxes3D(box), torch.ones(1, device=c.device), torch.zeros(1, dtype=torch.long,
                                                                                               device=c.device)))
        return out


def tiny_config(**train) -> dict:
    settings = {"epochs": 2, "batch_size": 2, "lr": 0.01, "log_every": 1, "schedule": "onecycle"}
    settings.update(train)
    return {
        "model": {"type": "tests.engine_fixtures:TinyRegressor", "hidden": 16},
        "data": {"train": {"type": "tests.engine_fixtures:TinyBoxDataset", "length": 8, "seed": 0},
                 "val": {"type": "tests.engine_fixtures:TinyBoxDataset", "length": 5, "seed": 1}},
        "train": settings,
    }



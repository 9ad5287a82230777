"""Distributed training helpers: torchrun environment, DDP wrapping, sampling and result gathering.

``torchrun --nproc_per_node N -m pointwin train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; :func:`init_distributed` reads them (multi-node works the same through
torchrun's rendezvous). Without them everything runs in one process and these helpers are no-ops.

Results are gathered as tensors (never pickled Python objects): each rank packs its per-sample results
into one float64 tensor with the sample index in column 0, all ranks exchange sizes, pad and
``all_gather``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from pointwin.structures import Boxes3D, Detections


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Rank/world size from torchrun's environment variables (defaults: one process)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise RuntimeError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); pick nccl on CUDA, gloo on the CPU.

    On CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    info = env_dist_info()
    if not info.distributed:
        return info
    if torch_dist.is_initialized():
        return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), info.local_rank)
    dev = torch.device(device) if device is not None else None
    use_cuda = (dev is None or dev.type == "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    backend = backend or ("nccl" if use_cuda else "gloo")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={info.world_size} but {key} is not set; launch with torchrun")
    torch_dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                                  timeout=timedelta(seconds=timeout_s))
    return info


def get_info() -> DistInfo:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), env_dist_info().local_rank)
    return DistInfo()


def cleanup() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier() -> None:
    if get_info().distributed:
        torch_dist.barrier()


def wrap_model(model: torch.nn.Module, device: torch.device, sync_bn: bool = False,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP-wrap ``model`` when distributed (after optional SyncBN conversion); else return it unchanged."""
    if not get_info().distributed:
        return model
    if sync_bn:
        if device.type == "cpu":  # torch's SyncBatchNorm only runs on GPU/XPU inputs
            warnings.warn("train.sync_bn is ignored on the CPU (torch's SyncBatchNorm needs a GPU); "
                          "each process normalises with its own batch statistics", stacklevel=2)
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=find_unused_parameters)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (returns the input unchanged in one process)."""
    if not get_info().distributed:
        return values
    out = values.detach().clone()
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out / get_info().world_size


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one rank (keeps ranks in lock-step on skips)."""
    if not get_info().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class ShardSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, sharded over ranks.

    Epoch e uses ``randperm(n, generator=seed + e)``; with a global batch of B = world * b, rank r
    takes positions r, r + world, ... so the union of the ranks' k-th batches is exactly the
    single-process k-th batch of size B. The permutation is padded by wrapping (train) so every rank
    gets the same number of samples; for evaluation use ``pad=False`` (each sample is seen once).
    ``skip`` drops the first samples of the shard (resuming mid-epoch).
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 pad: bool = True) -> None:
        if length <= 0:
            raise ValueError("ShardSampler: the dataset is empty")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad:
            total = -(-self.length // self.world_size) * self.world_size
            order = (order * (total // self.length + 1))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._order()[self.skip:])

    def __len__(self) -> int:
        return max(len(self._order()) - self.skip, 0)


# ---------------------------------------------------------------- gathering evaluation results
def _pack(indices: list[int], results: list) -> tuple[torch.Tensor, str]:
    """Per-sample results -> one float64 tensor of rows ``(sample_index, payload...)``."""
    rows = []
    kind = "none"
    for idx, res in zip(indices, results):
        if isinstance(res, Detections):
            kind = "det"
            n = len(res)
            payload = torch.cat([res.boxes.tensor.double().cpu(), res.scores.double().cpu()[:, None],
                                 res.labels.double().cpu()[:, None]], 1)
            header = torch.full((max(n, 1), 1), float(idx), dtype=torch.float64)
            if n == 0:  # keep a marker row so the sample is known even without detections
                payload = torch.full((1, payload.shape[1]), float("nan"), dtype=torch.float64)
            rows.append(torch.cat([header, torch.full((max(n, 1), 1), float(payload.shape[1] - 2)), payload], 1))
        elif isinstance(res, torch.Tensor):
            kind = "tensor"
            flat = res.detach().double().cpu().reshape(-1)
            is_int = float(not (res.is_floating_point() or res.is_complex()))
            head = torch.tensor([float(idx), float(flat.numel()), is_int], dtype=torch.float64)
            rows.append(torch.cat([head, flat])[None])
        else:
            raise TypeError(f"cannot gather a result of type {type(res).__name__}; expected Detections or Tensor")
    return rows, kind


def gather_results(indices: list[int], results: list, total: int) -> list | None:
    """Collect per-sample results from all ranks; rank 0 gets them ordered by sample index (others get None).

    Results are :class:`Detections` or tensors; gathered tensors come back flattened, as int64 if they were
    integral (segmentation labels) and float32 otherwise.

    Every sample index in ``range(total)`` must be produced by exactly one rank.
    """
    info = get_info()
    if not info.distributed:
        order = sorted(range(len(indices)), key=lambda i: indices[i])
        return [results[i] for i in order]
    rows, kind = _pack(indices, results)
    if kind == "det":
        width = max((r.shape[1] for r in rows), default=0)
        flat = torch.cat(rows) if rows else torch.zeros(0, width, dtype=torch.float64)
    else:
        flat = torch.cat([r.reshape(-1) for r in rows]) if rows else torch.zeros(0, dtype=torch.float64)
    # exchange kind, width and length so every rank can pad the same way
    meta = torch.tensor([{"none": 0, "det": 1, "tensor": 2}[kind], flat.shape[1] if flat.ndim == 2 else 0,
                         flat.numel()], dtype=torch.float64)
    metas = [torch.zeros_like(meta) for _ in range(info.world_size)]
    torch_dist.all_gather(metas, meta)
    kinds = {int(m[0]) for m in metas} - {0}
    if len(kinds) > 1:
        raise RuntimeError("gather_results: ranks produced different result kinds")
    max_len = int(max(m[2] for m in metas))
    buf = torch.full((max_len,), float("nan"), dtype=torch.float64)
    buf[: flat.numel()] = flat.reshape(-1)
    bufs = [torch.zeros_like(buf) for _ in range(info.world_size)]
    torch_dist.all_gather(bufs, buf)
    if not info.is_main:
        return None
    out: dict[int, object] = {}
    for m, b in zip(metas, bufs):
        k, width, n = int(m[0]), int(m[1]), int(m[2])
        b = b[:n]
        if k == 1:
            table = b.reshape(-1, width)
            for idx in torch.unique(table[:, 0]).tolist():
                sel = table[table[:, 0] == idx]
                box_dim = int(sel[0, 1])
                sel = sel[~torch.isnan(sel[:, 2])]
                out[int(idx)] = Detections(Boxes3D(sel[:, 2:2 + box_dim].float()), sel[:, 2 + box_dim].float(),
                                           sel[:, 3 + box_dim].long())
        elif k == 2:
            pos = 0
            while pos < n:
                idx, size, is_int = int(b[pos]), int(b[pos + 1]), bool(b[pos + 2])
                vals = b[pos + 3: pos + 3 + size].clone()
                out[idx] = vals.long() if is_int else vals.float()
                pos += 3 + size
    missing = [i for i in range(total) if i not in out]
    if missing:
        raise RuntimeError(f"gather_results: no result for samples {missing[:10]}")
    return [out[i] for i in range(total)]

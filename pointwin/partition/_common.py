"""Building blocks shared by the partition schemes: input checks, stable sorting, group cutting.

Everything here is vectorised over voxels and groups (sort, cumsum, repeat_interleave, gathers);
no Python loop ever runs over windows or voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Partition

INT64_MAX = (1 << 63) - 1


def check_coords(name: str, coords: torch.Tensor, spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Validate (N, 4) integer voxel rows ``(b, z, y, x)``; return them as int64.

    Raises ValueError naming ``name`` when the tensor is not an (N, 4) integer tensor, has a negative
    entry, or (when ``spatial_shape = (Z, Y, X)`` is given) lies outside the grid.
    """
    if not isinstance(coords, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of (b, z, y, x) rows, got {type(coords).__name__}")
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) with rows (b, z, y, x), got {tuple(coords.shape)}")
    if coords.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 (or int64), got {str(coords.dtype).removeprefix('torch.')}")
    if coords.shape[0]:
        lo = coords.amin(0).tolist()  # reduce in the input dtype: int32 reductions are cheaper
        hi = coords.amax(0).tolist()
        for axis, label in enumerate("bzyx"):
            if lo[axis] < 0:
                raise ValueError(f"{name} has a negative {label} coordinate ({lo[axis]})")
        if spatial_shape is not None:
            for axis, label in enumerate("zyx", start=1):
                size = spatial_shape[axis - 1]
                if hi[axis] >= size:
                    raise ValueError(f"{name} {label} range [{lo[axis]}, {hi[axis]}] is outside spatial_shape "
                                     f"{label} extent [0, {size})")
    return coords.long()


def check_shape(spatial_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in spatial_shape)
    except TypeError as err:
        raise ValueError(f"spatial_shape must be 3 positive ints (Z, Y, X), got {spatial_shape!r}") from err
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"spatial_shape must be 3 positive ints (Z, Y, X), got {spatial_shape!r}")
    return shape  # type: ignore[return-value]


def check_window(name: str, window: int | Sequence[int], length: int) -> tuple[int, ...]:
    """``window`` as a tuple of ``length`` positive ints (an int is repeated)."""
    if isinstance(window, int):
        window = (window,) * length
    try:
        out = tuple(int(w) for w in window)
    except TypeError as err:
        raise ValueError(f"{name} must be an int or {length} ints, got {window!r}") from err
    if len(out) != length or min(out) < 1:
        raise ValueError(f"{name} must be {length} positive ints, got {window!r}")
    return out


def check_axis(axis: str) -> str:
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    return axis


def check_key_budget(what: str, extents: Sequence[int]) -> None:
    """Raise when the mixed-radix key with digits of the given extents would overflow int64."""
    total = 1
    for e in extents:
        total *= max(int(e), 1)
    if total - 1 > INT64_MAX:
        raise ValueError(f"{what}: the sort key needs {total - 1:.3e} > int64 max; the grid, windows or batch are "
                         f"too large for one key (extents {list(extents)})")


def stable_order(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted key, permutation) with ties kept in input order, identical on CPU and CUDA."""
    return torch.sort(key, stable=True)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.numel() + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(x, 0, out=out[1:])
    return out


def run_lengths(sorted_key: torch.Tensor) -> torch.Tensor:
    """(R,) lengths of the runs of equal values in a sorted 1-D tensor."""
    if sorted_key.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=sorted_key.device)
    return torch.unique_consecutive(sorted_key, return_counts=True)[1]


def variable_groups(order: torch.Tensor, sorted_group_key: torch.Tensor) -> Partition:
    """Partition whose groups are the runs of equal ``sorted_group_key`` over voxels ``order``.

    Args:
        order: int64 (N,) voxel ids in sorted order.
        sorted_group_key: int64 (N,) group key of each sorted voxel (non-decreasing).
    """
    sizes = run_lengths(sorted_group_key)
    return Partition(index=order, offsets=exclusive_cumsum(sizes), owner=inverse_permutation(order), size=None,
                     key_pad=None)


def equal_groups(order: torch.Tensor, sample_sizes: torch.Tensor, group_size: int, tail: str) -> Partition:
    """Cut each sample's sorted voxels into groups of exactly ``group_size`` slots.

    Args:
        order: int64 (N,) voxel ids, samples contiguous, each sample's voxels in its sort order.
        sample_sizes: int64 (B,) voxels per sample (zeros allowed: an empty sample makes no group).
        group_size: G, the slots per group.
        tail: how a sample with n >= G voxels fills its last group when G does not divide n:
            ``"last"`` (FlatFormer): the last group holds the sample's last G voxels in order;
            ``"borrow"`` (PTv3): the last group's missing slots take the voxels G positions earlier
            (from the patch before it), keeping each real voxel at its natural slot.
            Either way a voxel present in two groups is owned by the earlier one. A sample with
            0 < n < G voxels forms one group whose slot j holds its voxel j mod n (``key_pad`` on repeats).
    """
    G = int(group_size)
    device = order.device
    n = sample_sizes[sample_sizes > 0].long()
    starts = exclusive_cumsum(n)[:-1]
    groups = (n + G - 1) // G
    slots = groups * G
    slot_start = exclusive_cumsum(slots)
    M = int(slot_start[-1])
    sample = torch.repeat_interleave(torch.arange(n.numel(), device=device), slots, output_size=M)
    local = torch.arange(M, device=device) - slot_start[:-1][sample]
    g, j = local // G, local % G
    ns, ks = n[sample], groups[sample]
    short = ns < G
    last = g == ks - 1
    if tail == "last":
        tail_pos = ns - G + j
    elif tail == "borrow":
        tail_pos = torch.where(local < ns, local, local - G)
    else:
        raise ValueError(f"tail must be 'last' or 'borrow', got {tail!r}")
    pos = torch.where(short, j % ns.clamp(min=1), torch.where(last, tail_pos, local))
    index = order[starts[sample] + pos]
    key_pad = short & (j >= ns)

    # Owner: the first slot holding each sorted position p of a sample.
    N = order.numel()
    vox_sample = torch.repeat_interleave(torch.arange(n.numel(), device=device), n, output_size=N)
    p = torch.arange(N, device=device) - starts[vox_sample]
    nv, kv = n[vox_sample], groups[vox_sample]
    if tail == "last":
        full = (kv - 1) * G  # positions before this lie in the full groups 0..K-2
        own_local = torch.where((p < full) | (nv < G), p, full + p - (nv - G))
    else:
        own_local = p
    owner = torch.empty(N, dtype=torch.int64, device=device)
    owner[order] = slot_start[:-1][vox_sample] + own_local
    offsets = torch.arange(0, M + 1, G, device=device, dtype=torch.int64)
    return Partition(index=index, offsets=offsets, owner=owner, size=G, key_pad=key_pad)


def sample_sizes_of(batch_sorted: torch.Tensor) -> torch.Tensor:
    """(B,) voxels per sample from the non-decreasing batch ids of the sorted voxels."""
    if batch_sorted.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=batch_sorted.device)
    return torch.bincount(batch_sorted)

"""The one abstraction every windowing scheme returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)  # tensors do not compare to one bool: use equal()
class Partition:
    """Which voxels attend to each other.

    Attributes:
        index: int64 (M,), the voxel id held by each slot; the slots of a group are contiguous.
        offsets: int64 (G+1,), group g is slots ``offsets[g]:offsets[g+1]``.
        size: every group has exactly ``size`` slots (then M = G * size), else None.
        key_pad: bool (M,) or None; True where a slot repeats a voxel already present earlier in its
            group. Such slots are ignored as keys and their query outputs are discarded.
        owner: int64 (N,), the slot whose output becomes voxel n's output.
    """

    index: torch.Tensor
    offsets: torch.Tensor
    owner: torch.Tensor
    size: int | None = None
    key_pad: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_slots(self) -> int:
        return self.index.numel()

    @property
    def num_voxels(self) -> int:
        return self.owner.numel()

    @property
    def device(self) -> torch.device:
        return self.index.device

    def group(self, g: int) -> torch.Tensor:
        """Voxel ids in the slots of group ``g``."""
        return self.index[int(self.offsets[g]) : int(self.offsets[g + 1])]

    def group_sizes(self) -> torch.Tensor:
        """(G,) number of slots per group."""
        return self.offsets[1:] - self.offsets[:-1]

    def slot_group(self) -> torch.Tensor:
        """(M,) group id of each slot."""
        return torch.repeat_interleave(torch.arange(self.num_groups, device=self.device), self.group_sizes())

    def equal(self, other: Partition) -> bool:
        """True when both partitions hold the same tensors (on any devices) and the same size."""
        if self.size != other.size or (self.key_pad is None) != (other.key_pad is None):
            return False
        pairs = [(self.index, other.index), (self.offsets, other.offsets), (self.owner, other.owner)]
        if self.key_pad is not None:
            pairs.append((self.key_pad, other.key_pad))
        return all(a.shape == b.shape and torch.equal(a.cpu(), b.cpu()) for a, b in pairs)

    def to(self, device: torch.device | str) -> Partition:
        return Partition(self.index.to(device), self.offsets.to(device), self.owner.to(device), self.size,
                         None if self.key_pad is None else self.key_pad.to(device))

    def check(self) -> Partition:
        """Validate every invariant; raise ValueError naming the first one broken. Returns self."""
        index, offsets, owner = self.index, self.offsets, self.owner
        for name, t in (("index", index), ("offsets", offsets), ("owner", owner)):
            if t.dtype != torch.int64 or t.ndim != 1:
                raise ValueError(f"Partition.{name} must be a 1-D int64 tensor, got {t.dtype} {tuple(t.shape)}")
        M, N = index.numel(), owner.numel()
        if offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != M:
            raise ValueError(f"Partition.offsets must start at 0 and end at M={M}, got "
                             f"{offsets[:1].tolist()}..{offsets[-1:].tolist()}")
        sizes = self.group_sizes()
        if bool((sizes <= 0).any()):
            raise ValueError("Partition.offsets must be strictly increasing (no empty groups)")
        if self.size is not None and (bool((sizes != self.size).any())):
            raise ValueError(f"Partition.size is {self.size} but group sizes are {sizes.unique().tolist()}")
        if M and (int(index.min()) < 0 or int(index.max()) >= N):
            raise ValueError(f"Partition.index values must lie in [0, {N})")
        if N and (int(owner.min()) < 0 or int(owner.max()) >= M):
            raise ValueError(f"Partition.owner values must lie in [0, {M})")
        if not torch.equal(index[owner], torch.arange(N, device=index.device)):
            bad = (index[owner] != torch.arange(N, device=index.device)).nonzero()[0].item()
            raise ValueError(f"Partition.owner[{bad}] = {int(owner[bad])} holds voxel "
                             f"{int(index[owner[bad]])}, not {bad}")
        if M and torch.bincount(index, minlength=N).min() < 1:
            raise ValueError("Partition.index misses a voxel: every voxel must appear in at least one slot")
        group = self.slot_group()
        # A voxel repeated inside one group must be marked key_pad on every slot but its first.
        pair = group * N + index
        order = torch.sort(pair, stable=True)[1]  # equal pairs keep slot order: the first is the earliest
        first = torch.ones(M, dtype=torch.bool, device=index.device)
        first[order[1:]] = pair[order[1:]] != pair[order[:-1]]
        if self.key_pad is not None:
            kp = self.key_pad
            if kp.dtype != torch.bool or kp.shape != (M,):
                raise ValueError(f"Partition.key_pad must be bool ({M},), got {kp.dtype} {tuple(kp.shape)}")
            if bool(kp[offsets[:-1]].any()):
                raise ValueError("Partition.key_pad is True on the first slot of a group")
            if not torch.equal(kp, ~first):
                raise ValueError("Partition.key_pad must be True exactly where a slot repeats a voxel "
                                 "already present earlier in its group")
            if bool(kp[owner].any()):
                raise ValueError("Partition.owner points at a key_pad slot")
        elif not bool(first.all()):
            raise ValueError("Partition has a voxel repeated inside a group but no key_pad")
        return self

"""Per-layer cost of group attention, scattered linear attention and sparse conv on a real nuScenes frame.

Input: the nuScenes 10-sweep aggregated cloud from ../shared/data (271k points), voxelized on the grid
of ``benchmarks/partition.py`` ((-74.88, -74.88, -2)..(74.88, 74.88, 4) m; 0.32 m pillars, and
0.32 x 0.32 x 0.1875 m voxels). Each layer is one partition of one backbone family, features
C = 128 as H = 8 heads x D = 16.

Compared, per layer:
- softmax attention: pointwin ``group_attention`` (auto dispatch: one SDPA call for equal-size groups;
  Triton on CUDA / length buckets on the CPU for variable-length groups) vs SST-style zero padding to
  bucket sizes 32, 64, 128, ... with a key mask, vs a dense loop with one SDPA call per window;
- scattered linear attention: pointwin vs the naive reference (a Python loop over windows);
- sparse conv (3D voxels, C 32): pointwin's torch path vs spconv (only on CUDA with spconv installed).

Usage:
    python benchmarks/attention.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--write]

On CUDA the script also runs fp16 and bf16 forward+backward for the Triton kernels and reports tokens/s
and the achieved fraction of SDPA (flash) throughput at an equal token count. ``--write`` replaces
the attention section of BENCHMARKS.md (between its markers). Times are medians of ``--repeats`` calls
after a warm-up; peak memory is the extra memory at the high-water mark of one call (CUDA: allocator
peak; CPU: replayed from the torch profiler's allocation events).
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F

from pointwin.ops import SparseConv3d, SubMConv3d, group_attention, scattered_linear_attention, voxelize
from pointwin.partition import Partition, bev_windows, curve_patches, flattened_windows, radial_windows, rotated_sets
from pointwin.structures import SparseVoxels

ROOT = Path(__file__).resolve().parents[1]
NUSCENES = (ROOT / ".." / "shared" / "data" / "nuscenes" / "sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin")
POINT_RANGE = (-74.88, -74.88, -2.0, 74.88, 74.88, 4.0)
PILLAR = (0.32, 0.32, 6.0)
VOXEL = (0.32, 0.32, 0.1875)
HEADS, HEAD_DIM = 8, 16
BEGIN, END = "<!-- attention:begin -->", "<!-- attention:end -->"


# ------------------------------------------------------------------------------------------------
# Measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Extra memory (MiB) at the high-water mark of one call of ``fn``."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations are charged to the op that made them, frees appear as "[memory]" events: replay both.
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def loop_peak(fn: Callable[[], object], device: torch.device, label: str) -> str:
    """Peak MiB as text; not measured for the per-window loops on the CPU (profiling their tens of
    thousands of small ops took more memory than the machine had)."""
    if label == "per-window loop" and device.type != "cuda":
        return "n/m"
    return f"{peak_mib(fn, device):.0f}"


# ------------------------------------------------------------------------------------------------
# Baselines


def sst_padded_attention(q, k, v, p: Partition, first_bucket: int = 32) -> torch.Tensor:
    """SST-style: pad every group with zeros to the next of 32, 64, 128, ... and mask the padding.

    One SDPA call per bucket on zero-padded copies (B, L, H, D); outputs read back at owner slots.
    """
    sizes = p.group_sizes()
    lengths = torch.full_like(sizes, first_bucket)
    while bool((lengths < sizes).any()):
        lengths = torch.where(lengths < sizes, lengths * 2, lengths)
    out_slots = q.new_zeros(p.num_slots, q.shape[1], v.shape[2])
    key_ok = torch.ones(p.num_slots, dtype=torch.bool, device=q.device) if p.key_pad is None else ~p.key_pad
    for L in torch.unique(lengths).tolist():
        g = (lengths == L).nonzero().squeeze(1)
        ar = torch.arange(L, device=q.device)[None]
        valid = ar < sizes[g][:, None]
        slot = (p.offsets[g][:, None] + ar)[valid]
        padded = [t.new_zeros(g.numel(), L, *t.shape[1:]) for t in (q, k, v)]
        for buf, t in zip(padded, (q, k, v)):
            buf[valid] = t[p.index[slot]]
        mask = torch.zeros(g.numel(), L, dtype=torch.bool, device=q.device)
        mask[valid] = key_ok[slot]
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in padded), attn_mask=mask[:, None, None, :])
        out_slots = out_slots.index_put((slot,), o.transpose(1, 2)[valid])
    return out_slots[p.owner]


def per_window_loop_attention(q, k, v, p: Partition) -> torch.Tensor:
    """Dense loop: one SDPA call per window (the obvious implementation)."""
    out_slots = q.new_zeros(p.num_slots, q.shape[1], v.shape[2])
    offsets = p.offsets.tolist()
    pieces = []
    for g in range(p.num_groups):
        s, e = offsets[g], offsets[g + 1]
        vox = p.index[s:e]
        mask = None if p.key_pad is None else ~p.key_pad[s:e][None, None, None, :]
        o = F.scaled_dot_product_attention(*(t[vox].transpose(0, 1)[None] for t in (q, k, v)), attn_mask=mask)
        pieces.append(o[0].transpose(0, 1))
    out_slots = torch.cat(pieces)
    return out_slots[p.owner]


def per_window_loop_sla(q, k, v, p: Partition, eps: float = 1e-6) -> torch.Tensor:
    """Naive SLA reference: a Python loop over windows, einsum per window."""
    offsets = p.offsets.tolist()
    pieces = []
    for g in range(p.num_groups):
        s, e = offsets[g], offsets[g + 1]
        vox = p.index[s:e]
        pk = F.relu(k[vox])
        if p.key_pad is not None:
            pk = pk * (~p.key_pad[s:e])[:, None, None]
        kv = torch.einsum("lhd,lhe->hde", pk, v[vox])
        pq = F.relu(q[vox])
        num = torch.einsum("lhd,hde->lhe", pq, kv)
        pieces.append(num / (torch.einsum("lhd,hd->lh", pq, pk.sum(0))[..., None] + eps))
    return torch.cat(pieces)[p.owner]


# ------------------------------------------------------------------------------------------------
# Inputs


def load_voxels(device: torch.device):
    if not NUSCENES.exists():
        sys.exit(f"benchmark data not found: {NUSCENES} (see ../shared/data/README.md)")
    pts = np.fromfile(NUSCENES, dtype=np.float16).reshape(-1, 5)[:, :3].astype(np.float32)
    xyz = torch.from_numpy(pts)
    pil = voxelize(xyz, PILLAR, POINT_RANGE)
    vox = voxelize(xyz, VOXEL, POINT_RANGE)
    centres = (vox.coords[:, [3, 2, 1]].double() + 0.5) * torch.tensor(VOXEL, dtype=torch.float64) + torch.tensor(
        POINT_RANGE[:3], dtype=torch.float64)
    return (pil.coords.to(device), tuple(pil.spatial_shape), vox.coords.to(device), tuple(vox.spatial_shape),
            centres.float().to(device), len(pts))


def layers(pil, pshape, vox, vshape, centres):
    """(layer, grid, partition) for one layer of each backbone family, plus a long-window stress case."""
    b = vox[:, 0].long()
    return [
        ("FlatFormer: flattened 13x13, G 69", "pillars", flattened_windows(pil, pshape, (13, 13), 69, "x")),
        ("DSVT: rotated sets 12x12x1, S 36", "pillars", rotated_sets(pil, pshape, (12, 12, 1), 36, "x")),
        ("ScatterFormer: BEV window 12", "pillars", bev_windows(pil, 12)),
        ("SphereFormer: radial 2x2 deg x 120 m", "voxels", radial_windows(centres, b, (2.0, 2.0, 120.0))),
        ("PTv3: z-order patches K 1024", "voxels", curve_patches(vox, "z", 1024, spatial_shape=vshape)),
        ("long windows: BEV window 32", "voxels", bev_windows(vox, 32)),
    ]


def fwd_only(fn, q, k, v, p):
    def run():
        with torch.no_grad():
            fn(q, k, v, p)
    return run


def sdpa_dense(q, k, v, _):
    return F.scaled_dot_product_attention(q, k, v)


def fwd_bwd(fn, q, k, v, p):
    def run():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        fn(*leaves, p).float().sum().backward()
    return run


# ------------------------------------------------------------------------------------------------
# Tables


def attention_rows(cases, device, repeats, dtype) -> tuple[list[str], list[str]]:
    att_rows, sla_rows = [], []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name, _, p in cases:
        n = p.num_voxels
        q, k, v = (torch.randn(n, HEADS, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(3))
        sizes = p.group_sizes()
        desc = f"{name} | {n:,} | {p.num_groups:,} | {int(sizes.max()):,}"
        methods = [("pointwin", group_attention), ("SST-style padding", sst_padded_attention),
                   ("per-window loop", per_window_loop_attention)]
        for label, fn in methods:
            reps = 1 if label == "per-window loop" else repeats  # the loop's backward takes tens of seconds
            t_f = time_ms(fwd_only(fn, q, k, v, p), device, reps)
            t_b = time_ms(fwd_bwd(fn, q, k, v, p), device, reps)
            mem = loop_peak(fwd_bwd(fn, q, k, v, p), device, label)
            att_rows.append(f"| {desc} | {label} | {t_f:.1f} | {t_b:.1f} | {mem} |")
            print(att_rows[-1], flush=True)
        if p.size is None:
            for label, fn in (("pointwin", scattered_linear_attention), ("per-window loop", per_window_loop_sla)):
                reps = 1 if label == "per-window loop" else repeats
                t_f = time_ms(fwd_only(fn, q, k, v, p), device, reps)
                t_b = time_ms(fwd_bwd(fn, q, k, v, p), device, reps)
                mem = loop_peak(fwd_bwd(fn, q, k, v, p), device, label)
                sla_rows.append(f"| {desc} | {label} | {t_f:.1f} | {t_b:.1f} | {mem} |")
                print(sla_rows[-1], flush=True)
    return att_rows, sla_rows


def conv_rows(vox, vshape, device, repeats) -> list[str]:
    rows = []
    feats = torch.randn(vox.shape[0], 32, generator=torch.Generator().manual_seed(1)).to(device)
    try:
        import spconv.pytorch  # noqa: F401
        have_spconv = device.type == "cuda"
    except ImportError:
        have_spconv = False
    for label, make in (("SubMConv3d 3x3x3, 32->32", lambda s: SubMConv3d(32, 32, 3, use_spconv=s)),
                        ("SparseConv3d 3x3x3 s2, 32->64", lambda s: SparseConv3d(32, 64, 3, 2, 1, use_spconv=s)),
                        ("SubMConv3d depthwise 3x3x3, 32", lambda s: SubMConv3d(32, 32, 3, depthwise=True,
                                                                                use_spconv=s))):
        for backend in ("pointwin (torch)", "spconv"):
            use = backend == "spconv"
            if use and (not have_spconv or "depthwise" in label):
                reason = "no depthwise in spconv" if "depthwise" in label else "needs CUDA + spconv"
                rows.append(f"| {label} | {backend} | n/a ({reason}) | | | |")
                continue
            conv = make(use).to(device)
            x = SparseVoxels(feats, vox, vshape, 1)
            t0 = time.perf_counter()
            conv(x)
            sync(device)
            t_first = (time.perf_counter() - t0) * 1e3  # includes building the kernel map
            t_f = time_ms(lambda conv=conv, x=x: conv(x), device, repeats)
            t_b = time_ms(lambda conv=conv, x=x: conv(x.replace(x.feats.detach().requires_grad_())).feats.sum()
                          .backward(), device, repeats)
            mem = peak_mib(lambda conv=conv, x=x: conv(x.replace(x.feats.detach().requires_grad_())).feats.sum()
                           .backward(), device)
            rows.append(f"| {label} | {backend} | {t_first:.1f} | {t_f:.1f} | {t_b:.1f} | {mem:.0f} |")
            print(rows[-1], flush=True)
    return rows


def gpu_rows(cases, device, repeats) -> list[str]:
    """fp16/bf16 fwd+bwd of the Triton/SDPA paths: tokens/s and fraction of SDPA flash throughput.

    The SDPA reference runs equal groups holding the same number of tokens, with the group length set
    to the layer's mean group size (rounded up to 16); the fraction compares achieved attention FLOP/s.
    """
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for name, _, p in cases:
            n = p.num_voxels
            q, k, v = (torch.randn(n, HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
            sizes = p.group_sizes().double()
            flops = float((sizes ** 2).sum()) * 4 * HEADS * HEAD_DIM
            t_f = time_ms(fwd_only(group_attention, q, k, v, p), device, repeats)
            t_b = time_ms(fwd_bwd(group_attention, q, k, v, p), device, repeats)
            S = max(16, int(math.ceil(float(sizes.mean()) / 16)) * 16)
            B = max(1, p.num_slots // S)
            qs, ks, vs = (torch.randn(B, HEADS, S, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
            ref_f = time_ms(fwd_only(sdpa_dense, qs, ks, vs, None), device, repeats)
            ref_b = time_ms(fwd_bwd(sdpa_dense, qs, ks, vs, None), device, repeats)
            ref_flops = B * S * S * 4 * HEADS * HEAD_DIM
            frac_f = (flops / t_f) / (ref_flops / ref_f)
            frac_b = (flops / t_b) / (ref_flops / ref_b)
            dt = str(dtype).removeprefix("torch.")
            rows.append(f"| {name} | {dt} | {n:,} | {t_f:.2f} | {t_b:.2f} | {n / t_b * 1e3 / 1e6:.2f} | "
                        f"{S} | {frac_f:.2f} | {frac_b:.2f} |")
            print(rows[-1], flush=True)
    return rows








def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    parser.add_argument("--note", default="", help="sentence added to the table header (e.g. machine load)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    pil, pshape, vox, vshape, centres, npts = load_voxels(device)
    print(f"{npts} points -> {len(pil)} pillars {pshape}, {len(vox)} voxels {vshape}", flush=True)
    cases = layers(pil, pshape, vox, vshape, centres)
    dtype = torch.float32
    att, sla = attention_rows(cases, device, args.repeats, dtype)
    conv = conv_rows(vox, vshape, device, args.repeats)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    head = "| layer | voxels | groups | max group | method | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) |\n" \
           "|---|---:|---:|---:|---|---:|---:|---:|"
    text = (
        f"## Attention and sparse conv ops (`benchmarks/attention.py`, {device.type})\n\n"
        f"Device: {common.device_name(device)}; {common.versions()}; {date}. "
        f"nuScenes 10-sweep cloud ({npts:,} points), "
        f"grid as in the partition table: {len(pil):,} pillars {pshape}, {len(vox):,} voxels {vshape}. "
        f"fp32, H {HEADS} x D {HEAD_DIM}; median of {args.repeats} calls after a warm-up (1 call for the "
        "per-window loops); peak = extra memory at the high-water mark of one forward+backward call. "
        f"{args.note}\n\n"
        "### Softmax group attention\n\n" + head + "\n" + "\n".join(att) + "\n\n"
        "### Scattered linear attention (variable-length layers)\n\n" + head + "\n" + "\n".join(sla) + "\n\n"
        "### Sparse convolution (3D voxels, C 32)\n\n"
        "| op | backend | first call ms (builds map) | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) |\n"
        "|---|---|---:|---:|---:|---:|\n" + "\n".join(conv)
    )
    if device.type == "cuda":
        gpu = gpu_rows(cases, device, max(args.repeats, 10))
        text += (
            "\n\n### GPU fp16/bf16 (Triton kernels for variable-length layers, SDPA for equal-size)\n\n"
            "| layer | dtype | voxels | fwd ms | fwd+bwd ms | Mtokens/s (fwd+bwd) | SDPA group len | "
            "FLOP/s vs SDPA fwd | FLOP/s vs SDPA fwd+bwd |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
            + "\n".join(gpu))
    else:
        text += ("\n\nGPU part (fp16/bf16 Triton kernels, tokens/s, fraction of SDPA flash throughput): not run — "
                 "no CUDA device was available; run `python benchmarks/attention.py --device cuda --write`.")
    print(text)
    if args.write:
        common.write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()

"""3D-backbone latency and memory against the number of voxels, per backbone, from real clouds.

For each backbone at its published setting (``benchmarks/e2e.py``), the nuScenes 10-sweep cloud is
voxelized and encoded by the model's own VFE; voxel sets of the requested sizes are then made from it by
random subsampling (fewer voxels than the frame has) or by tiling copies of the frame as extra batch
samples (more voxels), the last copy subsampled to hit the size exactly. Each timed call runs the 3D
backbone on voxels with an empty cache, so partition building is included. The fitted exponent is the
least-squares slope of log(latency) against log(voxels): 1.0 is linear.

Sizes whose projected memory (last peak scaled linearly, x1.5) exceeds the available memory, or whose
projected time exceeds ``--max-seconds``, are skipped and listed.

Usage:
    python benchmarks/scaling.py [--device auto|cpu|cuda] [--sizes 10000 30000 100000 300000]
                                 [--models FlatFormer DSVT-P ...] [--repeats 2] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import common
import e2e
import torch

from pointwin.structures import SparseVoxels

BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
RESULTS = Path(__file__).resolve().parent / "results"


def voxel_set(base: SparseVoxels, n: int, generator: torch.Generator) -> SparseVoxels:
    """``n`` voxels from ``base``: a random subset when n <= len(base), else whole copies of ``base`` as
    extra batch samples plus a random subset of one more copy. The result has an empty cache."""
    n0 = len(base.feats)
    feats, coords = [], []
    copies = max(1, math.ceil(n / n0))
    left = n
    for c in range(copies):
        take = min(n0, left)
        idx = torch.arange(n0) if take == n0 else torch.randperm(n0, generator=generator)[:take].sort().values
        idx = idx.to(base.feats.device)
        cc = base.coords[idx].clone()
        cc[:, 0] += c * base.batch_size
        feats.append(base.feats[idx])
        coords.append(cc)
        left -= take
    return SparseVoxels(torch.cat(feats), torch.cat(coords), base.spatial_shape, copies * base.batch_size,
                        base.voxel_size, base.origin)


def scale_model(name: str, section: dict, clouds, sizes: Sequence[int], device: torch.device, warmup: int,
                repeats: int, max_seconds: float, log=print) -> tuple[list[tuple[int, float, float]], list[str]]:
    """[(voxels, median ms, peak MiB)] and skip notes for one backbone."""
    torch.manual_seed(0)
    model = e2e.build_model(dict(section)).to(device).eval()
    points = e2e.make_points(clouds, model.vfe.num_point_features, device)
    with torch.no_grad():
        base = model.vfe(points)
    gen = torch.Generator().manual_seed(0)
    points_out, skipped = [], []
    with torch.no_grad():
        small = voxel_set(base, min(sizes), gen)
        for _ in range(warmup):
            model.backbone(SparseVoxels(small.feats, small.coords, small.spatial_shape, small.batch_size,
                                        small.voxel_size, small.origin))
        for n in sorted(sizes):
            if points_out:
                n_prev, ms_prev, mib_prev = points_out[-1]
                need = mib_prev * n / n_prev * 1.5
                avail = common.available_memory_mib() if device.type == "cpu" else \
                    torch.cuda.mem_get_info(device)[0] / 2**20
                if need > avail:
                    skipped.append(f"{n:,} (needs ~{need:,.0f} MiB, {avail:,.0f} MiB free)")
                    continue
                if ms_prev * n / n_prev * repeats / 1e3 > max_seconds:
                    skipped.append(f"{n:,} (projected {ms_prev * n / n_prev / 1e3:,.0f} s per call)")
                    continue
            vs = voxel_set(base, n, gen)
            with common.PeakMemory(device) as mem:
                times = common.time_ms(
                    lambda v=vs: model.backbone(SparseVoxels(v.feats, v.coords, v.spatial_shape, v.batch_size,
                                                             v.voxel_size, v.origin)), device, 0, repeats)
            points_out.append((n, common.median(times), mem.mib))
            log(f"[scaling] {name} {n:,} voxels: {points_out[-1][1]:.1f} ms, {mem.mib:.0f} MiB")
    return points_out, skipped


def plot(curves: dict[str, list[tuple[int, float, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for name, pts in curves.items():
        if not pts:
            continue
        n = [p[0] for p in pts]
        axes[0].plot(n, [p[1] for p in pts], "o-", label=name, ms=3)
        axes[1].plot(n, [max(p[2], 1e-3) for p in pts], "o-", label=name, ms=3)
    for ax, ylabel in zip(axes, ("3D backbone latency (ms)", "peak memory (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("voxels")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def section_text(curves, skipped, header: str, repeats: int, png: Path | None) -> str:
    rows = []
    for name, pts in curves.items():
        t_exp = common.fit_exponent([p[0] for p in pts], [p[1] for p in pts])
        m_exp = common.fit_exponent([p[0] for p in pts], [max(p[2], 1e-3) for p in pts])
        cells = ", ".join(f"{p[0] / 1000:g}k: {common.fmt_ms(p[1])} ms / {p[2]:,.0f} MiB" for p in pts)
        rows.append([name, cells or "-", "n/a" if t_exp != t_exp else f"{t_exp:.2f}",
                     "n/a" if m_exp != m_exp else f"{m_exp:.2f}", "; ".join(skipped.get(name, [])) or "-"])
    table = common.markdown_table(["backbone", "voxels: latency / peak memory", "latency exponent",
                                   "memory exponent", "skipped sizes"], rows, "llrrl")
    pic = "" if png is None else f"\n\n![scaling]({png.relative_to(common.ROOT).as_posix()})"
    return ("## Scaling with the number of voxels (`benchmarks/scaling.py`)\n\n"
            f"{header} 3D backbone forward (no autograd, partitions built in every call), median of {repeats} "
            "call(s); voxel sets from the nuScenes 10-sweep frame encoded by each model's VFE, subsampled or "
            "tiled as extra batch samples. Exponent: least-squares slope of log(value) vs log(voxels) "
            "(1.0 = linear). Memory: extra memory at the high-water mark of the call (CUDA: max_memory_allocated; "
            "CPU: malloc in-use bytes, sampled every 2 ms).\n\n"
            + table + pic)


DEFAULT_MODELS = ("FlatFormer", "DSVT-P", "DSVT-V", "ScatterFormer", "SphereSeg")


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=120.0, help="skip sizes projected to take longer")
    p.add_argument("--quick", action="store_true", help="FlatFormer, 5k..20k voxels")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    if not common.NUSCENES_SWEEPS.is_file():
        raise SystemExit(f"scaling needs the nuScenes sweep cloud: {common.NUSCENES_SWEEPS}")
    clouds = [common.load_cloud(common.NUSCENES_SWEEPS)]
    models = ["FlatFormer"] if args.quick else args.models
    sizes = [5_000, 10_000, 20_000] if args.quick else args.sizes
    table = e2e.published_models()
    header = common.env_header(device)
    curves, skipped = {}, {}
    for name in models:
        if name not in table:
            raise SystemExit(f"--models {name!r}: expected one of {sorted(table)}")
        curves[name], skipped[name] = scale_model(name, table[name], clouds, sizes, device, args.warmup,
                                                  args.repeats, args.max_seconds)
    png = None
    if not args.no_plot:
        png = RESULTS / f"scaling_{device.type}.png"
        plot(curves, png, f"3D backbone, {common.device_name(device)}, {common.now_utc()}")
    text = section_text(curves, skipped, header, args.repeats, png)
    print(text)
    if args.write:
        common.write_section(BEGIN, END, text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

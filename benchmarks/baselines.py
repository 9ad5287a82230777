"""pointwin backbones side by side with the usual baselines, in one run, on the real nuScenes 10-sweep cloud.

1. Attention implementation inside whole 3D backbones (FlatFormer, DSVT-P, DSVT-V at the published
   settings of ``benchmarks/e2e.py``): pointwin ``group_attention`` vs SST-style zero padding to length
   buckets with a key mask vs a dense per-window loop (one SDPA call per window). The baselines are the
   functions of ``benchmarks/attention.py``; they are swapped in for ``pointwin.ops.group_attention``
   (which :class:`pointwin.nn.PartitionAttention` looks up at call time). Partitions are built once
   before timing, so the rows differ only in the attention kernel.
2. A CenterPoint-style sparse-conv 3D backbone (VoxelResBackBone8x layout: 16-32-64-128 channels,
   stride-2 sparse convs, two submanifold residual convs per stage, z compression) on the same 3D voxels
   and VFE features as DSVT-V and ScatterFormer: pointwin's torch sparse conv on the CPU, spconv on CUDA
   when it is installed.

Ratios are baseline time / pointwin time (> 1: pointwin is faster).

Usage:
    python benchmarks/baselines.py [--device auto|cpu|cuda] [--warmup 1] [--repeats 3] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Sequence

import attention as attention_bench  # benchmarks/attention.py: the baseline kernels
import common
import e2e
import torch
from torch import nn

from pointwin.ops import SparseConv3d, SubMConv3d
from pointwin.structures import SparseVoxels

BEGIN, END = "<!-- baselines:begin -->", "<!-- baselines:end -->"


# ------------------------------------------------------------------------------------------------
# Attention swaps


def _sst(q, k, v, partition, scale=None, dropout_p=0.0, backend="auto"):
    return attention_bench.sst_padded_attention(q, k, v, partition)


def _loop(q, k, v, partition, scale=None, dropout_p=0.0, backend="auto"):
    return attention_bench.per_window_loop_attention(q, k, v, partition)


ATTENTION = {"pointwin group_attention": None, "SST-style padding (buckets + key mask)": _sst,
             "per-window loop (SDPA per window)": _loop}


@contextlib.contextmanager
def attention_impl(fn):
    """Temporarily route ``pointwin.ops.group_attention`` (as seen by PartitionAttention) to ``fn``."""
    import pointwin.ops as ops

    original = ops.group_attention
    if fn is not None:
        ops.group_attention = fn
    try:
        yield
    finally:
        ops.group_attention = original


def backbone_inputs(section: dict, clouds, device: torch.device) -> tuple[nn.Module, SparseVoxels]:
    torch.manual_seed(0)
    model = e2e.build_model(copy.deepcopy(section)).to(device).eval()
    points = e2e.make_points(clouds, model.vfe.num_point_features, device)
    with torch.no_grad():
        voxels = model.vfe(points)
    return model, voxels


def attention_rows(names: Sequence[str], clouds, device, warmup, repeats, log=print) -> list[list[str]]:
    rows = []
    table = e2e.published_models()
    for name in names:
        model, voxels = backbone_inputs(table[name], clouds, device)
        with torch.no_grad():
            model.backbone(voxels)  # builds and caches every partition of the input grid
            times = {}
            for label, fn in ATTENTION.items():
                with attention_impl(fn):
                    times[label] = common.median(common.time_ms(lambda m=model, v=voxels: m.backbone(v), device, warmup,
                                                                repeats))
                log(f"[baselines] {name} {label}: {times[label]:.1f} ms")
        base = times["pointwin group_attention"]
        for label, t in times.items():
            rows.append([name, f"{len(voxels.feats):,}",
                         label, common.fmt_ms(t), f"{t / base:.2f}"])
    return rows


# ------------------------------------------------------------------------------------------------
# Sparse-conv CenterPoint-style backbone


class SparseBlock(nn.Module):
    """Submanifold residual block: two 3x3x3 SubM convs with BN/ReLU. Shapes: (N, C) -> (N, C)."""

    def __init__(self, channels: int, use_spconv: bool) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, bias=False, use_spconv=use_spconv)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = SubMConv3d(channels, channels, 3, bias=False, use_spconv=use_spconv)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        y = torch.relu(self.bn1(self.conv1(x).feats))
        y = self.bn2(self.conv2(x.replace(y)).feats)
        return x.replace(torch.relu(y + x.feats))


class CenterPointSparseBackbone(nn.Module):
    """CenterPoint's VoxelResBackBone8x layout on pointwin sparse convs.

    Stem SubM (C_in -> 16); stage 1: 2 residual blocks at 16; stages 2-4: a stride-2 3x3x3 sparse conv
    (16->32, 32->64, 64->128) then 2 residual blocks; output: a (3, 1, 1) stride-(2, 1, 1) sparse conv (z padding 1)
    to 128 channels compressing z. Shapes: SparseVoxels (N, C_in) -> SparseVoxels (M, 128) at stride 8.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 64, 128), use_spconv: bool = False):
        super().__init__()
        c = list(channels)
        self.stem = SubMConv3d(in_channels, c[0], 3, bias=False, use_spconv=use_spconv)
        self.stem_bn = nn.BatchNorm1d(c[0], eps=1e-3, momentum=0.01)
        self.down = nn.ModuleList([nn.Identity()] + [SparseConv3d(c[i - 1], c[i], 3, 2, 1, bias=False,
                                                                  use_spconv=use_spconv) for i in range(1, len(c))])
        self.down_bn = nn.ModuleList([nn.Identity()] + [nn.BatchNorm1d(c[i], eps=1e-3, momentum=0.01)
                                                        for i in range(1, len(c))])
        self.blocks = nn.ModuleList(nn.Sequential(SparseBlock(ch, use_spconv), SparseBlock(ch, use_spconv))
                                    for ch in c)
        self.out = SparseConv3d(c[-1], 128, (3, 1, 1), (2, 1, 1), (1, 0, 0), bias=False, use_spconv=use_spconv)
        self.out_bn = nn.BatchNorm1d(128, eps=1e-3, momentum=0.01)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        x = x.replace(torch.relu(self.stem_bn(self.stem(x).feats)))
        for i, (down, bn, blocks) in enumerate(zip(self.down, self.down_bn, self.blocks, strict=True)):
            if i:
                y = down(x)
                x = y.replace(torch.relu(bn(y.feats)))
            x = blocks(x)
        y = self.out(x)
        return y.replace(torch.relu(self.out_bn(y.feats)))


def spconv_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def fresh(voxels: SparseVoxels) -> SparseVoxels:
    """Same voxels with an empty cache: each timed call pays for its partitions / kernel maps."""
    return SparseVoxels(voxels.feats, voxels.coords, voxels.spatial_shape, voxels.batch_size, voxels.voxel_size,
                        voxels.origin)


def sparse_conv_rows(names: Sequence[str], clouds, device, warmup, repeats, log=print) -> list[list[str]]:
    """Transformer 3D backbones vs the sparse-conv baseline on identical voxels (kernel maps / partitions
    built inside every timed call)."""
    rows = []
    table = e2e.published_models()
    use_spconv = spconv_usable(device)
    conv_label = f"CenterPoint-style sparse conv ({'spconv' if use_spconv else 'pointwin torch sparse conv'})"
    for name in names:
        model, voxels = backbone_inputs(table[name], clouds, device)
        torch.manual_seed(0)
        conv = CenterPointSparseBackbone(voxels.feats.shape[1], use_spconv=use_spconv).to(device).eval()
        with torch.no_grad():
            t_model = common.median(common.time_ms(lambda m=model, v=voxels: m.backbone(fresh(v)), device, warmup,
                                                   repeats))
            t_conv = common.median(common.time_ms(lambda c=conv, v=voxels: c(fresh(v)), device, warmup, repeats))
        p_model = sum(p.numel() for p in model.backbone.parameters()) / 1e6
        p_conv = sum(p.numel() for p in conv.parameters()) / 1e6
        log(f"[baselines] {name} {t_model:.1f} ms vs sparse conv {t_conv:.1f} ms")
        n = f"{len(voxels.feats):,}"
        rows.append([name, n, f"{name} backbone (pointwin)", f"{p_model:.2f}", common.fmt_ms(t_model), "1.00"])
        rows.append([name, n, conv_label, f"{p_conv:.2f}", common.fmt_ms(t_conv), f"{t_conv / t_model:.2f}"])
    return rows


def section_text(att_rows, conv_rows, header: str, warmup: int, repeats: int) -> str:
    att = common.markdown_table(["backbone", "voxels", "attention", "3D backbone fwd ms", "ratio to pointwin"],
                                att_rows, "lrlrr")
    conv = common.markdown_table(["grid of", "voxels", "3D backbone", "params M", "fwd ms", "ratio to pointwin"],
                                 conv_rows, "lrlrrr")
    return (
        "## Baselines side by side (`benchmarks/baselines.py`)\n\n"
        f"{header} nuScenes 10-sweep cloud (271,156 points), published settings of `benchmarks/e2e.py`, fp32 "
        f"forward without autograd; median of {repeats} calls after {warmup} warm-up call(s). Ratio = time / "
        "pointwin time (> 1: pointwin faster).\n\n"
        "### Attention kernel inside the whole 3D backbone (partitions prebuilt)\n\n" + att + "\n\n"
        "SST-style padding rounds every group up to the next power-of-two bucket (32, 64, 128, ...), so fixed-size "
        "groups whose size is not a power of two pay for padding too (FlatFormer's groups, DSVT's sets). Single "
        "variable-window layers are compared in the attention section (`benchmarks/attention.py`).\n\n"
        "### Sparse-conv CenterPoint-style backbone on the same voxels (partitions / kernel maps built per call)"
        "\n\n" + conv)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attention-models", nargs="*", default=["FlatFormer", "DSVT-P", "DSVT-V"])
    p.add_argument("--conv-models", nargs="*", default=["DSVT-V", "ScatterFormer"])
    p.add_argument("--quick", action="store_true", help="FlatFormer attention swap and DSVT-V vs sparse conv only")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    if not common.NUSCENES_SWEEPS.is_file():
        raise SystemExit(f"baselines need the nuScenes sweep cloud: {common.NUSCENES_SWEEPS}")
    clouds = [common.load_cloud(common.NUSCENES_SWEEPS)]
    att_models = ["FlatFormer"] if args.quick else args.attention_models
    conv_models = ["DSVT-V"] if args.quick else args.conv_models
    header = common.env_header(device)
    att = attention_rows(att_models, clouds, device, args.warmup, args.repeats)
    conv = sparse_conv_rows(conv_models, clouds, device, args.warmup, args.repeats)
    text = section_text(att, conv, header, args.warmup, args.repeats)
    print(text)
    if args.write:
        common.write_section(BEGIN, END, text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

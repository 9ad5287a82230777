"""pointwin bench: a tiny smoke run of the e2e table and the benchmark helpers (never asserts speed)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from pointwin.bench import benchmarks_dir, run_bench

benchmarks_dir()  # the benchmark scripts import each other as top-level modules
import common  # noqa: E402
import e2e  # noqa: E402
import scaling  # noqa: E402

TINY_CONFIG = """\
model:
  type: Detector
  class_names: [Car, Pedestrian]
  point_cloud_range: [-6.4, -6.4, -2.0, 6.4, 6.4, 2.0]
  voxel_size: [0.32, 0.32, 4.0]
  vfe: {type: DynamicPillarVFE, num_point_features: 4, feat_channels: [16]}
  backbone: {type: FlatFormer, channels: 16, num_heads: 2, num_blocks: 1, window: [8, 8], group_size: 16}
  backbone_2d:
    type: BEVBackbone
    layer_nums: [1]
    layer_strides: [1]
    num_filters: [16]
    upsample_strides: [1]
    num_upsample_filters: [16]
  head:
    type: CenterPointHead
    tasks: [[Car], [Pedestrian]]
    shared_channels: 8
    head_channels: 8
    max_objs: 40
    pre_max: 50
    post_max: 20
"""


def _cloud(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-6, -6, -1.5], [6, 6, 1.5], size=(n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, size=(n, 1))], 1).astype(np.float32)


def test_bench_e2e_smoke(tmp_path):
    cfg = tmp_path / "tiny_flatformer.yaml"
    cfg.write_text(TINY_CONFIG)
    cloud = tmp_path / "cloud.bin"
    _cloud(3000).tofile(cloud)
    out = tmp_path / "BENCH.md"
    other = "<!-- partition:begin -->\nsomeone else's table\n<!-- partition:end -->"
    out.write_text("# Benchmarks\n\n" + other + "\n")
    texts = run_bench(["e2e"], configs=[cfg], inputs=[cloud], device="cpu", warmup=0, repeats=1, threads=1,
                      out=out, log=lambda *a: None)
    md = out.read_text()
    assert other in md  # other helpers' sections are kept
    assert md.count(e2e.BEGIN) == 1 and md.count(e2e.END) == 1
    section = md[md.index(e2e.BEGIN): md.index(e2e.END)]
    assert texts["e2e"].strip() in section
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for stage in e2e.STAGES:
        assert f"{stage} ms" in header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 1
    row = dict(zip(header, rows[0], strict=True))
    assert row["model"].endswith("/tiny_flatformer") and row["input"] == "cloud.bin (B=1)"
    # all 3000 points fall inside the grid: the voxel count is the number of distinct pillars
    pillars = np.unique(np.floor((_cloud(3000)[:, :2] + 6.4) / 0.32).astype(int), axis=0)
    assert row["voxels"] == f"{len(pillars):,}"
    stage_ms = [float(row[f"{s} ms"].replace(",", "")) for s in e2e.STAGES]
    assert all(v >= 0 for v in stage_ms)
    assert float(row["predict ms"].replace(",", "")) > 0 and float(row["train step ms"].replace(",", "")) > 0
    # a second run replaces the section instead of appending another one
    run_bench(["e2e"], configs=[cfg], inputs=[cloud], device="cpu", warmup=0, repeats=1, threads=1, train=False,
              out=out, log=lambda *a: None)
    assert out.read_text().count(e2e.BEGIN) == 1 and other in out.read_text()


def test_run_bench_rejects_unknown_suite():
    with pytest.raises(ValueError, match="unknown suite"):
        run_bench(["nope"], out=None)


def test_fit_exponent_recovers_power_laws():
    n = [1e4, 3e4, 1e5, 3e5]
    assert common.fit_exponent(n, [2.5e-3 * x for x in n]) == pytest.approx(1.0, abs=1e-12)
    assert common.fit_exponent(n, [7 * x ** 2 for x in n]) == pytest.approx(2.0, abs=1e-12)
    assert common.fit_exponent(n, [5 * x ** 1 * math.log(x) for x in n]) > 1.0
    assert math.isnan(common.fit_exponent([1e4], [3.0]))


def test_write_section_replaces_only_its_markers(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n<!-- a:begin -->\nA1\n<!-- a:end -->\n\ntail\n")
    common.write_section("<!-- b:begin -->", "<!-- b:end -->", "B1", path)
    common.write_section("<!-- a:begin -->", "<!-- a:end -->", "A2", path)
    assert path.read_text() == ("# B\n\n<!-- a:begin -->\nA2\n<!-- a:end -->\n\ntail\n\n"
                                "<!-- b:begin -->\nB1\n<!-- b:end -->\n")


def test_partition_builds_are_timed_from_outside():
    """FlatFormer builds exactly its four flattened orders (x, x-shift, y, y-shift) once per input grid, plus
    one position encoding; the wrapper sees them as 4 partition builds and 1 other build."""
    from pointwin.models.backbones3d import FlatFormer
    from pointwin.structures import SparseVoxels

    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(40 * 40, generator=g)[:300]
    coords = torch.stack([torch.zeros_like(flat), torch.zeros_like(flat), flat // 40, flat % 40], 1).int()
    voxels = SparseVoxels(torch.randn(300, 16, generator=g), coords, (1, 40, 40), 1)
    model = FlatFormer(16, channels=16, num_heads=2, num_blocks=2, window=(8, 8), group_size=16).eval()
    clock = common.Clock(torch.device("cpu"))
    with torch.no_grad(), e2e.timed_cache_builds(clock) as spans:
        model(voxels)
        model(voxels)  # cached: no new builds
    assert sorted(is_part for _, _, is_part in spans) == [False, True, True, True, True]
    assert all(clock.ms(a, b) >= 0 for a, b, _ in spans)
    from pointwin.structures import SparseVoxels as SV

    assert SV.cached is not None and "timed" not in SV.cached.__qualname__  # the wrapper is removed


def test_voxel_set_subsamples_and_tiles():
    from pointwin.structures import SparseVoxels

    g = torch.Generator().manual_seed(1)
    flat = torch.randperm(30 * 30, generator=g)[:100]
    coords = torch.stack([torch.zeros_like(flat), torch.zeros_like(flat), flat // 30, flat % 30], 1).int()
    base = SparseVoxels(torch.arange(100.0)[:, None], coords, (1, 30, 30), 1)
    small = scaling.voxel_set(base, 40, g)
    assert small.batch_size == 1 and len(small.feats) == 40
    assert len(set(small.feats[:, 0].tolist())) == 40  # distinct voxels of the frame
    big = scaling.voxel_set(base, 250, g)
    assert big.batch_size == 3 and len(big.feats) == 250
    b = big.coords[:, 0].long()
    assert torch.bincount(b).tolist() == [100, 100, 50]
    for copy in (0, 1):
        assert torch.equal(big.coords[b == copy][:, 1:], coords[:, 1:])
    last = big.feats[b == 2][:, 0].long()
    assert torch.equal(big.coords[b == 2][:, 1:], coords[last][:, 1:])


def test_peak_memory_counts_live_tensors():
    """Two live 16 MiB float32 tensors at the peak: at least 32 MiB above the level at entry."""
    def work():
        a = torch.ones(4 * 2**20)
        b = a + 1
        time.sleep(0.02)  # let the sampler see the peak
        return float(b[0])

    mib = common.peak_memory_mib(work, torch.device("cpu"))
    assert 31.9 < mib < 64

"""benchmarks/gpu_check.py --dry-run: the GPU acceptance script's code paths on the CPU (Triton interpreter,
tiny sizes), so that it cannot rot between the rare runs on a lent GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")


def test_gpu_check_dry_run_passes():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for what in ("group_attention bev D16 bfloat16", "sla bev D16 float16", "spconv vs pointwin sparse conv",
                 "partition radial", "AMP synthetic/dsvt_pillar_tiny.yaml", "AMP synthetic/ptv3_seg.yaml",
                 "SST-style padding", "predict synthetic/dsvt_pillar_tiny.yaml", " 0 failed"):
        assert what in out, f"{what!r} missing from the dry run's output:\n{out[-3000:]}"


def test_sst_padded_baseline_matches_the_reference():
    """The timing table's SST-style baseline computes the same attention as the exact torch path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    from pointwin.ops.attention.reference import group_attention_reference

    gen = torch.Generator().manual_seed(0)
    coords = gpu_check.random_coords(80, (1, 24, 24), 2, gen)
    for name in ("bev", "rotated_x"):
        part = gpu_check.partitions(coords, (1, 24, 24), True)[name]
        q, k, v = (torch.randn(coords.shape[0], 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
        torch.testing.assert_close(gpu_check.sst_padded_attention(q, k, v, part),
                                   group_attention_reference(q, k, v, part))

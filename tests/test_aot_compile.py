"""Ahead-of-time compile check of every attention kernel for sm_80 (A100) and sm_90 (H100/H200), no GPU.

Triton compiles for an absent GPU with the ptxas bundled in its wheel; the launches are the ones the
launchers produce (pointwin/ops/attention/policy.py, checked below against the launchers themselves).
Rules (pointwin.ops.attention.aot.problems): every launch compiles; fp16/bf16 at head dims <= 64 do not
spill (aot.KNOWN_SPILLS lists documented exceptions: none now); shared memory per block within the target's limit.

Default matrix: fp16/bf16/fp32 (TF32 dots) x head dims 16 and 64 (BLOCK_D 16 and 64: the smallest and the
widest of the shipped head dims <= 64) x both targets, ~1.5 min cold on 2 cores and seconds when cached
(results and Triton's compile cache live in pytest's cache dir). The exhaustive matrix (BLOCK_D 32 and 128,
exact-fp32 "ieee" dots) is marked slow and runs with POINTWIN_EXHAUSTIVE=1 only (`make test` does not set it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from pointwin.ops.attention import aot, policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                                reason=f"the triton wheel has no bundled ptxas/cuobjdump under {BIN}")
EXHAUSTIVE = os.environ.get("POINTWIN_EXHAUSTIVE") == "1"


def _compile(request, tmp_path, args: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = pytest_cache.mkdir("pointwin-aot") if pytest_cache is not None else tmp_path / "cache"
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real triton.jit
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "pointwin.ops.attention.aot", *args, "--cache", str(cache),
                           "--json", str(out), "--jobs", "2"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1800)
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


def test_default_matrix_compiles_without_spills(request, tmp_path):
    proc, rows = _compile(request, tmp_path, ["--arch", "80", "90", "--dtype", "fp16", "bf16", "fp32",
                                              "--head-dim", "16", "64"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"group_fwd", "group_dq", "group_dkdv", "sla_state", "sla_out", "sla_bwd_q",
                       "sla_bwd_state", "sla_bwd_kv"}
    assert {r["arch"] for r in rows} == {80, 90} and {r["dtype"] for r in rows} == {"fp16", "bf16", "fp32"}
    assert all(r["ok"] for r in rows)
    # fp32 takes tensor cores (TF32) by default; SLA's backward its fp32-accurate 3-pass variant
    assert {r["constexprs"]["PREC"] for r in rows if r["kernel"].startswith("group")} == {"tf32"}
    assert {r["constexprs"]["PREC"] for r in rows if r["kernel"].startswith("sla_bwd")} == {"tf32x3"}
    assert aot.problems(rows) == []


@pytest.mark.slow
@pytest.mark.skipif(not EXHAUSTIVE, reason="exhaustive matrix: set POINTWIN_EXHAUSTIVE=1")
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_exhaustive_matrix(request, tmp_path, precision):
    dtypes = ["fp16", "bf16", "fp32"] if precision == "tf32" else ["fp32"]
    proc, rows = _compile(request, tmp_path, ["--arch", "80", "90", "--dtype", *dtypes, "--precision", precision,
                                              "--head-dim", "16", "32", "64", "128"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert rows and all(r["ok"] for r in rows)


def test_problems_rules(monkeypatch):
    row = dict(arch=80, kernel="group_fwd", dtype="fp16", block_d=64, block_dv=64, label="x", ok=True, regs=255,
               spill=8, shared=1024)
    assert "spills 8 B" in aot.problems([row])[0]
    assert aot.problems([{**row, "dtype": "fp32"}]) == []  # fp32 spills are reported, not rejected
    monkeypatch.setattr(aot, "KNOWN_SPILLS", {("sla_bwd_q", 64, 80)})
    assert aot.problems([{**row, "kernel": "sla_bwd_q"}]) == []  # a documented exception
    assert "shared memory" in aot.problems([{**row, "spill": 0, "shared": 170 * 1024}])[0]
    assert aot.problems([{**row, "arch": 90, "spill": 0, "shared": 170 * 1024}]) == []
    assert "does not compile" in aot.problems([{**row, "ok": False, "error": "boom"}])[0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("head_dim", [8, 16, 24, 52, 64, 128])
def test_specs_are_what_the_launchers_launch(dtype, head_dim, monkeypatch):
    """aot.launch_specs and the launchers' _config read the same policy: compare them on a GPU's settings."""
    from pointwin.ops.attention import triton_group, triton_sla

    monkeypatch.setattr(triton_group, "interpreted", lambda: False)
    monkeypatch.setattr(triton_sla, "interpreted", lambda: False)
    specs = {(s.kernel, s.constexprs, s.num_warps, s.num_stages) for s in aot.launch_specs(dtype, head_dim)}
    q = torch.zeros(4, 1, head_dim, dtype=aot.DTYPES[dtype])
    bd = policy.pow2(head_dim)
    for mean in (10, 200):  # short and long groups
        offsets = torch.tensor([0, mean])
        bm, bn, f32, prec, warps, stages = triton_group._config(q, offsets, None, None, None)
        const = tuple(sorted(dict(HAS_PAD=True, F32=f32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bd,
                                  PREC=prec).items()))
        for kernel in ("group_fwd", "group_dq", "group_dkdv"):
            assert (kernel, const, warps, stages) in specs
    chunk, block_s, launch = triton_sla._config(q.dtype, head_dim, head_dim, None, None)
    prec = policy.dot_precision(q.dtype)
    const = tuple(sorted(dict(HAS_PAD=True, CHUNK=chunk, BLOCK_S=block_s, BLOCK_D=bd, BLOCK_DV=bd,
                              PREC=prec).items()))
    assert ("sla_state", const, launch["num_warps"], launch["num_stages"]) in specs

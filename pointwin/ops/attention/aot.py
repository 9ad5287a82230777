"""Ahead-of-time compile check of the attention kernels for GPUs that are not present.

Triton compiles for any NVIDIA target with the ptxas bundled in its wheel, so a CPU machine can check
that every launch the launchers produce compiles for sm_80 (A100) and sm_90 (H100/H200), and read its
registers, local memory (spills) and shared memory. The launches come from the same policy functions
the launchers call (:mod:`pointwin.ops.attention.policy`), so the check cannot drift from them.

Compiling needs the real (not interpreted) ``triton.jit``: run this module in a process without
``TRITON_INTERPRET`` (the tests do it in a subprocess)::

    python -m pointwin.ops.attention.aot --arch 80 90 --dtype fp16 bf16 fp32 --head-dim 16 32 64 --json out.json

Results are cached (JSON, keyed by the kernel source, launch, target and Triton version) under
``--cache`` together with Triton's own compile cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .policy import dot_precision, group_launch, pow2, sla_backward_precision, sla_launch, sla_state_block

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRITON_DT = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
# Per-block shared memory a kernel may use (opt-in maximum): A100 163 KB, H100/H200 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# Head dims of the shipped configs (channels / heads; ConDaFormer widens q/k/v with its folded tables):
# 8 (SphereSeg-tiny), 16 (most), 24 (Waymo DSVT 192/8), 32, 34 and 52 (ConDaFormer), 64. The kernels
# specialise on the padded power of two only, so these are BLOCK_D 16, 32 and 64; 128 is in the slow matrix.
SHIPPED_HEAD_DIMS = (8, 16, 24, 32, 34, 52, 64)


@dataclass(frozen=True)
class Spec:
    kernel: str  # group_fwd, group_dq, group_dkdv, sla_state, sla_out, sla_bwd_q, sla_bwd_state, sla_bwd_kv
    dtype: str  # fp32 / fp16 / bf16 (of q, k, v)
    block_d: int
    block_dv: int
    constexprs: tuple  # sorted (name, value) pairs
    num_warps: int
    num_stages: int

    @property
    def label(self) -> str:
        c = dict(self.constexprs)
        blocks = (f"M{c['BLOCK_M']} N{c['BLOCK_N']}" if "BLOCK_M" in c
                  else f"S{c['BLOCK_S']} C{c['CHUNK']}")
        return (f"{self.kernel} {self.dtype} D{self.block_d}/{self.block_dv} {blocks} {c['PREC']} "
                f"w{self.num_warps} s{self.num_stages}")


def launch_specs(dtype: str, head_dim: int, head_dim_v: int | None = None, precision: str = "tf32") -> list[Spec]:
    """Every kernel launch the launchers make for q/k/v of ``dtype`` and these head dims (on a GPU)."""
    torch_dt = DTYPES[dtype]
    bd, bdv = pow2(head_dim), pow2(head_dim_v or head_dim)
    prec = dot_precision(torch_dt, precision)
    f32 = torch_dt == torch.float32
    specs = []
    seen = set()
    for short in (True, False):
        cfg = group_launch(torch_dt, bd, bdv, short, prec)
        for kernel in ("group_fwd", "group_dq", "group_dkdv"):
            const = dict(HAS_PAD=True, F32=f32, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=bd,
                         BLOCK_DV=bdv, PREC=prec)
            s = Spec(kernel, dtype, bd, bdv, tuple(sorted(const.items())), cfg.num_warps, cfg.num_stages)
            if s not in seen:
                seen.add(s)
                specs.append(s)
    cfg = sla_launch(torch_dt, bd, bdv)
    for kernel in ("sla_state", "sla_out", "sla_bwd_q", "sla_bwd_state", "sla_bwd_kv"):
        block_s = sla_state_block(cfg.block_m) if kernel == "sla_bwd_state" else cfg.block_m
        const = dict(CHUNK=cfg.block_n, BLOCK_S=block_s, BLOCK_D=bd, BLOCK_DV=bdv,
                     PREC=sla_backward_precision(prec, bd, bdv) if kernel.startswith("sla_bwd") else prec)
        if kernel in ("sla_state", "sla_bwd_kv"):
            const["HAS_PAD"] = True
        specs.append(Spec(kernel, dtype, bd, bdv, tuple(sorted(const.items())), cfg.num_warps, cfg.num_stages))
    return specs


def _kernel_fn(name: str):
    from . import triton_group as tg
    from . import triton_sla as ts

    return {"group_fwd": tg._fwd_kernel, "group_dq": tg._bwd_dq_kernel, "group_dkdv": tg._bwd_dkdv_kernel,
            "sla_state": ts._state_kernel, "sla_out": ts._out_kernel, "sla_bwd_q": ts._bwd_q_kernel,
            "sla_bwd_state": ts._bwd_state_kernel, "sla_bwd_kv": ts._bwd_kv_kernel}[name]


def _pointer_types(spec: Spec) -> dict[str, str]:
    x = "*" + TRITON_DT[spec.dtype]
    f = "*fp32"
    if spec.kernel.startswith("group"):
        p = dict(Q=x, K=x, V=x, O=x, DO=x, DQ=x, DK=f, DV_=f, LSE=f, DELTA=f, INDEX="*i64", OWNER="*i64",
                 KEYPAD="*i8", BSTART="*i32", BEND="*i32", BGROUP="*i32")
    else:
        p = dict(Q=x, K=x, V=x, O=x, DO=x, DQ=x, KV=f, S=f, PKV=f, PS=f, PDKV=f, PDS=f, DKV=f, DS=f, DK=f, SCAL=f,
                 DV_=f, INDEX="*i64", OWNER="*i64", KEYPAD="*i8", CSTART="*i32", CEND="*i32", CGROUP="*i64")
    return p


def signature(spec: Spec) -> tuple[dict[str, str], dict]:
    fn = _kernel_fn(spec.kernel)
    const = dict(spec.constexprs)
    ptrs = _pointer_types(spec)
    sig = {}
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
        elif name in ("qk_scale", "sm_scale", "eps"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    missing = set(const) - set(fn.arg_names)
    if missing:
        raise ValueError(f"{spec.kernel}: constexprs {sorted(missing)} are not arguments of the kernel")
    return sig, const


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / LOCAL (spilled bytes per thread) / STACK / static SHARED of the one kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    for line in out.splitlines():
        if "REG:" in line:
            fields = dict(tok.split(":", 1) for tok in line.split() if ":" in tok)
            return {"regs": int(fields["REG"]), "local": int(fields["LOCAL"]), "stack": int(fields["STACK"])}
    raise RuntimeError(f"cuobjdump printed no resource line:\n{out}")


def _source_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("triton_group.py", "triton_sla.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def compile_spec(spec: Spec, arch: int) -> dict:
    """Compile one launch for sm_<arch>; returns regs, spills (local bytes/thread), shared bytes, seconds."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("aot.compile_spec needs the compiled triton.jit: unset TRITON_INTERPRET "
                           "(run `python -m pointwin.ops.attention.aot` in a fresh process)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, const = signature(spec)
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(_kernel_fn(spec.kernel), sig, const), target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    except Exception as e:  # noqa: BLE001 - the error text is the result
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}", "seconds": time.perf_counter() - t0}
    res = resource_usage(k.asm["cubin"])
    # Triton kernels keep no local arrays: a stack frame or local memory is spilled registers.
    return {"ok": True, "regs": res["regs"], "spill": res["local"] + res["stack"],
            "shared": int(k.metadata.shared), "seconds": round(time.perf_counter() - t0, 2)}


def _compile_job(args):
    spec, arch = args
    return compile_spec(spec, arch)


def run(specs: list[Spec], archs: list[int], cache: Path | None, jobs: int = 1) -> list[dict]:
    """Compile every (spec, arch) not in the cache (``jobs`` processes) and return one row each."""
    import triton

    cache_file = None
    cached: dict = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
        cache_file = cache / f"aot-{triton.__version__}-{_source_hash()}.json"
        if cache_file.exists():
            cached = json.loads(cache_file.read_text())
    todo = [(spec, arch) for spec in specs for arch in archs if f"sm{arch} {spec.label}" not in cached]
    if todo:
        if jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                results = list(pool.map(_compile_job, todo))
        else:
            results = [_compile_job(t) for t in todo]
        for (spec, arch), res in zip(todo, results, strict=True):
            cached[f"sm{arch} {spec.label}"] = res
        if cache_file is not None:
            cache_file.write_text(json.dumps(cached, indent=0, sort_keys=True))
    rows = []
    for spec in specs:
        for arch in archs:
            rows.append({"arch": arch, **asdict(spec), "constexprs": dict(spec.constexprs), "label": spec.label,
                         **cached[f"sm{arch} {spec.label}"]})
    return rows


# Spills the acceptance rule knows about, with the reason (kernel, BLOCK_D, arch). Empty since SLA's dq kernel
# no longer accumulates dKV next to the group's KV (_bwd_state_kernel does).
KNOWN_SPILLS: set[tuple[str, int, int]] = set()


def problems(rows: list[dict]) -> list[str]:
    """What the acceptance rules reject: compile errors, fp16/bf16 spills at D <= 64, shared over the limit."""
    bad = []
    for r in rows:
        name = f"sm{r['arch']} {r['label']}"
        if not r["ok"]:
            bad.append(f"{name}: does not compile: {r['error']}")
            continue
        wide = max(r["block_d"], r["block_dv"])
        if (r["dtype"] in ("fp16", "bf16") and wide <= 64 and r["spill"] > 0
                and (r["kernel"], wide, r["arch"]) not in KNOWN_SPILLS):
            bad.append(f"{name}: spills {r['spill']} B/thread ({r['regs']} registers)")
        limit = SHARED_LIMIT.get(r["arch"], 99 * 1024)
        if r["shared"] > limit:
            bad.append(f"{name}: {r['shared']} B shared memory per block > sm{r['arch']} limit {limit}")
    return bad


def markdown(rows: list[dict]) -> str:
    """One line per launch, sm_80 and sm_90 side by side: registers / spilled bytes per thread / shared KB."""
    archs = sorted({r["arch"] for r in rows})
    by = {}
    for r in rows:
        c = r["constexprs"]
        blocks = f"M{c['BLOCK_M']} N{c['BLOCK_N']}" if "BLOCK_M" in c else f"S{c['BLOCK_S']} C{c['CHUNK']}"
        key = (r["kernel"], r["dtype"], r["block_d"], blocks, c["PREC"], f"{r['num_warps']}/{r['num_stages']}")
        by.setdefault(key, {})[r["arch"]] = (f"{r['regs']} / {r['spill']} / {r['shared'] / 1024:.0f}" if r["ok"]
                                             else "compile error")
    head = "| kernel | dtype | BLOCK_D | blocks | dot | warps/stages | " + " | ".join(
        f"sm_{a} regs / spill B / smem KB" for a in archs) + " |"
    lines = [head, "|" + "---|" * (6 + len(archs))]
    for key in sorted(by, key=lambda k: (k[0], k[2], k[1], k[3])):
        lines.append("| " + " | ".join(str(x) for x in key) + " | "
                     + " | ".join(by[key].get(a, "-") for a in archs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtype", nargs="+", default=["fp16", "bf16", "fp32"], choices=sorted(DTYPES))
    ap.add_argument("--head-dim", type=int, nargs="+", default=list(SHIPPED_HEAD_DIMS))
    ap.add_argument("--precision", default="tf32", choices=["tf32", "ieee"], help="float32 dot precision")
    ap.add_argument("--kernel", nargs="*", default=None, help="only these kernels (default all)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pointwin-aot")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args(argv)
    specs, seen = [], set()
    for dt in args.dtype:
        for d in args.head_dim:
            for s in launch_specs(dt, d, precision=args.precision):
                if s not in seen and (not args.kernel or s.kernel in args.kernel):
                    seen.add(s)
                    specs.append(s)
    rows = run(specs, args.arch, args.cache, args.jobs)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print(markdown(rows))
    bad = problems(rows)
    for p in bad:
        print("PROBLEM", p, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

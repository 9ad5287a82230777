"""One-shot GPU acceptance check: run it as is on a machine with one NVIDIA GPU (<= ~8 minutes).

Checks (the script exits 1 when any of them fails):

1. every Triton kernel (group attention fwd/dq/dkdv, SLA state/out/bwd) on CUDA vs the float64 torch path
   on the same rounded inputs, fp32 (TF32 dots, the default) / fp16 / bf16, forward and backward, on
   variable-length partitions with key padding, at the shipped head dims 16, 32 and 64;
2. spconv vs pointwin's sparse conv (SubM, strided, inverse), features and the output-metadata contract
   (skipped, with the reason, when spconv is not installed);
3. every partition scheme: CUDA == CPU (index, offsets, owner, key_pad);
4. every shipped detector and segmentor config (grid shrunk to 32 x 32 cells) forward + backward under
   AMP (bf16 autocast where supported, else fp16): finite loss and gradients.

Then the timing table: group attention (Triton) vs ``scaled_dot_product_attention`` with the flash
backend at an equal token count, vs SST-style zero padding to 32/64/128 slots; SLA fwd+bwd; whole-detector
latency per config with torch.compile off (and on, for the DSVT-pillar and FlatFormer configs). With
``--write`` the table and the check results go into BENCHMARKS.md (section "GPU acceptance", with device,
versions and date).

``--dry-run`` runs the same code paths on the CPU (Triton interpreter, tiny sizes, two model configs,
one timing repeat, no torch.compile, nothing written) so the suite keeps the script from rotting.

Usage:  python benchmarks/gpu_check.py [--dry-run] [--write] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys

if "--dry-run" in sys.argv:  # before triton is imported anywhere: the interpreter runs on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from pointwin.ops.attention.reference import (  # noqa: E402
    group_attention_reference,
    scattered_linear_attention_reference,
)
from pointwin.partition import (  # noqa: E402
    bev_windows,
    curve_patches,
    flattened_windows,
    radial_windows,
    rotated_sets,
)

TOL = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # relative (Frobenius) error
SECTION = "## GPU acceptance (benchmarks/gpu_check.py)"


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, name: str, detail: str, ok: bool) -> None:
        self.rows.append((name, detail, ok))
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [n for n, _, ok in self.rows if not ok]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_coords(n: int, shape: tuple[int, int, int], batch: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` unique (b, z, y, x) int32 rows, clustered like LiDAR (dense near the middle of the grid)."""
    Z, Y, X = shape
    cells = batch * Z * Y * X
    n = min(n, cells // 2)
    # a radial density: more cells near the centre
    lin = torch.randperm(cells, generator=gen)[: n * 3]
    b, rest = lin // (Z * Y * X), lin % (Z * Y * X)
    z, y, x = rest // (Y * X), rest // X % Y, rest % X
    r = ((y - Y / 2) ** 2 + (x - X / 2) ** 2).sqrt() / (max(X, Y) / 2)
    keep = torch.rand(lin.numel(), generator=gen) > r.clamp(max=0.95)
    coords = torch.stack([b, z, y, x], 1)[keep][:n]
    return coords.to(torch.int32)


def partitions(coords: torch.Tensor, shape: tuple[int, int, int], small: bool) -> dict:
    """Every scheme on ``coords`` (the device of ``coords``)."""
    w = 6 if small else 12
    xyz = (coords[:, [3, 2, 1]].float() + 0.5 - torch.tensor([shape[2] / 2, shape[1] / 2, 0.0],
                                                               device=coords.device)) * 0.32
    return {
        "flattened_x": flattened_windows(coords, shape, window=(w, w), group_size=16 if small else 64, axis="x"),
        "flattened_y_shift": flattened_windows(coords, shape, window=(w, w), group_size=16 if small else 64,
                                               axis="y", shift=True),
        "rotated_x": rotated_sets(coords, shape, window=(w, w, 1), set_size=12 if small else 36, axis="x"),
        "rotated_y_shift": rotated_sets(coords, shape, window=(w, w, 1), set_size=12 if small else 36, axis="y",
                                        shift=(w // 2, w // 2, 0)),
        "bev": bev_windows(coords, window=w, spatial_shape=shape),
        "radial": radial_windows(xyz, coords[:, 0].long(), window=(20.0, 20.0, 40.0)),
        "curve_z": curve_patches(coords, curve="z", patch_size=16 if small else 128, spatial_shape=shape),
        "curve_hilbert": curve_patches(coords, curve="hilbert", patch_size=16 if small else 128, spatial_shape=shape),
    }


# ---------------------------------------------------------------------------------------------------
# 1. kernels

def check_kernels(rep: Report, device: torch.device, small: bool) -> None:
    from pointwin.ops import group_attention, scattered_linear_attention

    gen = torch.Generator().manual_seed(0)
    shape = (1, 24, 24) if small else (1, 468, 468)
    coords = random_coords(60 if small else 22000, shape, 1 if small else 2, gen)
    parts = partitions(coords, shape, small)
    heads, dims = (2, (16,)) if small else (8, (16, 32, 64))
    # variable-length groups; fixed-size sets with key padding (the dry run: the first only)
    for pname in ("bev",) if small else ("bev", "rotated_x"):
        part = parts[pname]
        part_dev = part.to(device) if hasattr(part, "to") else part
        n = coords.shape[0]
        for d in dims:
            base = [torch.randn(n, heads, d, generator=gen) for _ in range(3)]
            dout = torch.randn(n, heads, d, generator=gen)
            # one float64 reference per op on the unrounded inputs (the tolerances cover the inputs' rounding)
            leaves64 = [t.double().requires_grad_() for t in base]
            refs = {}
            for ref, name in ((group_attention_reference, "group_attention"),
                              (scattered_linear_attention_reference, "sla")):
                want = ref(*leaves64, part)
                refs[name] = (want, torch.autograd.grad(want, leaves64, dout.double()))
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for op, name in ((group_attention, "group_attention"), (scattered_linear_attention, "sla")):
                    want, gwant = refs[name]
                    leaves = [t.to(device, dtype).requires_grad_() for t in base]
                    got = op(*leaves, part_dev, backend="triton")
                    ggot = torch.autograd.grad(got, leaves, dout.to(device, dtype))
                    errs = [rel_err(got, want)] + [rel_err(g, w) for g, w in zip(ggot, gwant)]
                    ok = max(errs) < TOL[dtype]
                    rep.add(f"{name} {pname} D{d} {str(dtype)[6:]}",
                            "rel err out/dq/dk/dv " + " ".join(f"{e:.1e}" for e in errs), ok)


# ---------------------------------------------------------------------------------------------------
# 2. sparse conv

def check_sparse_conv(rep: Report, device: torch.device, small: bool) -> None:
    from pointwin.ops import SparseConv3d, SparseInverseConv3d, SubMConv3d
    from pointwin.structures import SparseVoxels

    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        rep.add("spconv vs pointwin sparse conv", "skipped: spconv is not installed (the `cuda` extra)", True)
        return
    if device.type != "cuda":
        rep.add("spconv vs pointwin sparse conv", "skipped: spconv runs on CUDA only in pointwin", True)
        return
    gen = torch.Generator().manual_seed(1)
    shape = (8, 64, 64)
    coords = random_coords(4000, shape, 2, gen)
    feats = torch.randn(coords.shape[0], 16, generator=gen)
    x = SparseVoxels(feats.to(device), coords.to(device), shape, 2, (0.1, 0.1, 0.2), (0.0, 0.0, 0.0))
    mods = [SubMConv3d(16, 16, 3), SparseConv3d(16, 32, 3, stride=2, padding=1, indice_key="d"),
            SparseInverseConv3d(32, 16, 3, indice_key="d")]
    outs = {}
    for use in (True, False):
        y = x
        for m in mods:
            m.to(device)
            m.use_spconv = use
            y = m(y)
            outs.setdefault(use, []).append(y)
    ok_meta = all(a.spatial_shape == b.spatial_shape and a.voxel_size == b.voxel_size and a.origin == b.origin
                  for a, b in zip(outs[True], outs[False]))
    ok_meta &= outs[True][-1].coords is x.coords and outs[True][-1].cache is x.cache
    sub = rel_err(outs[True][0].feats, outs[False][0].feats)
    inv = rel_err(outs[True][2].feats, outs[False][2].feats)
    rep.add("spconv vs pointwin sparse conv", f"metadata {'same' if ok_meta else 'DIFFERENT'}, rel err subm "
            f"{sub:.1e} inverse {inv:.1e}", ok_meta and sub < 1e-4 and inv < 1e-4)


# ---------------------------------------------------------------------------------------------------
# 3. partitions

def check_partitions(rep: Report, device: torch.device, small: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    shape = (1, 24, 24) if small else (1, 468, 468)
    coords = random_coords(60 if small else 22000, shape, 2, gen)
    cpu = partitions(coords, shape, small)
    dev = partitions(coords.to(device), shape, small)
    for name in cpu:
        a, b = cpu[name], dev[name]
        same = all(torch.equal(getattr(a, f).cpu(), getattr(b, f).cpu()) for f in ("index", "offsets", "owner"))
        same &= (a.key_pad is None) == (b.key_pad is None) and (
            a.key_pad is None or torch.equal(a.key_pad.cpu(), b.key_pad.cpu()))
        rep.add(f"partition {name} {device.type} == cpu", "identical" if same else "DIFFERENT", same)


# ---------------------------------------------------------------------------------------------------
# 4. models under AMP

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base_" not in p.parts)
# torch.compile takes minutes per model: the compile-on column covers these (the DSVT-P / FlatFormer rows)
COMPILE_CONFIGS = {"nuscenes/dsvt_pillar.yaml", "nuscenes/flatformer.yaml", "waymo/dsvt_pillar.yaml"}
DRY_CONFIGS = ["synthetic/dsvt_pillar_tiny.yaml", "synthetic/ptv3_seg.yaml"]  # one detector, one segmentor


def _shrunk(path: Path) -> dict:
    from pointwin.config import load_config

    return common.shrunk_model(load_config(path)["model"])


def _batch(model, cfg: dict, device: torch.device, points: int):
    from pointwin.structures import Batch, Boxes3D, Points

    g = torch.Generator().manual_seed(0)
    r = cfg["point_cloud_range"]
    c = cfg["vfe"].get("num_point_features", 4)
    lo, hi = torch.tensor(r[:3]), torch.tensor(r[3:])
    clouds, boxes, labels = [], [], []
    dim = 9 if getattr(getattr(model, "head", None), "with_velocity", False) else 7
    for _ in range(2):
        xyz = lo + torch.rand(points, 3, generator=g) * (hi - lo) * 0.999
        clouds.append(torch.cat([xyz, torch.rand(points, c - 3, generator=g)], 1))
        b = torch.tensor([[0.5, 1.0, 0.0, 4.0, 1.8, 1.6, 0.3, 1.0, 0.0]])
        boxes.append(Boxes3D(b[:, :dim]))
        labels.append(torch.tensor([0]))
    pts = Points.from_list(clouds)
    point_labels = torch.randint(-1, len(cfg["class_names"]), (len(pts),), generator=g)
    batch = Batch(pts, ["a", "b"], boxes, labels, point_labels)
    return batch.to(device) if hasattr(batch, "to") else batch


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def check_models(rep: Report, device: torch.device, small: bool) -> list[tuple[str, object, object]]:
    from pointwin.models import build_model

    built = []
    paths = [ROOT / "configs" / p for p in DRY_CONFIGS] if small else CONFIGS
    for path in paths:
        name = str(path.relative_to(ROOT / "configs"))
        try:
            cfg = _shrunk(path)
            torch.manual_seed(0)
            model = build_model(cfg).to(device)
            batch = _batch(model, cfg, device, 300 if small else 4000)
            with torch.autocast(device.type, dtype=amp_dtype(device)):
                losses = model.loss(batch)
            losses["loss"].float().backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            ok = bool(torch.isfinite(losses["loss"])) and bool(grads) and all(torch.isfinite(g).all() for g in grads)
            rep.add(f"AMP {name}", f"loss {float(losses['loss'].detach()):.3f}, {len(grads)} finite grads" if ok
                    else "non-finite loss or gradients", ok)
            built.append((name, model, batch))
        except Exception as e:  # noqa: BLE001 - one failing config must not hide the others
            rep.add(f"AMP {name}", f"{type(e).__name__}: {str(e)[:200]}", False)
    return built


# ---------------------------------------------------------------------------------------------------
# timing

def sst_padded_attention(q, k, v, part) -> torch.Tensor:
    """SST-style: every group zero-padded to the smallest of 32, 64, 128, ... slots, one masked SDPA per size."""
    sizes = part.offsets.diff()
    padded = torch.clamp(2 ** torch.ceil(torch.log2(sizes.clamp(min=1).double())), min=32).long()
    out_slots = q.new_zeros(part.index.numel(), q.shape[1], v.shape[2])
    for L in torch.unique(padded).tolist():
        g = (padded == L).nonzero().squeeze(1)
        ar = torch.arange(L, device=q.device)[None, :]
        valid = ar < sizes[g][:, None]
        pos = torch.where(valid, part.offsets[g][:, None] + ar, part.offsets[g][:, None])
        vox = part.index[pos]
        keys = valid if part.key_pad is None else valid & ~part.key_pad[pos]
        o = F.scaled_dot_product_attention(q[vox].transpose(1, 2), k[vox].transpose(1, 2), v[vox].transpose(1, 2),
                                           attn_mask=keys[:, None, None, :]).transpose(1, 2)
        out_slots = out_slots.index_put((pos[valid],), o[valid])
    return out_slots[part.owner]


def timing(device: torch.device, small: bool, repeats: int, models: list, compile_models: bool) -> list[str]:
    from pointwin.ops import group_attention, scattered_linear_attention
    from pointwin.partition import Partition

    lines = ["| what | tokens | ms (fwd+bwd unless noted) |", "|---|---|---|"]
    gen = torch.Generator().manual_seed(3)
    shape = (1, 24, 24) if small else (1, 468, 468)
    coords = random_coords(60 if small else 22000, shape, 1 if small else 2, gen)
    part = partitions(coords, shape, small)["bev"]
    n, h, d = coords.shape[0], (2 if small else 8), 16
    dtype = torch.float32 if small else torch.float16
    q, k, v = (torch.randn(n, h, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def fwd_bwd(fn):
        def run():
            out = fn()
            out.float().sum().backward()
        return run

    def med(fn):
        return common.median(common.time_ms(fn, device, warmup=1, repeats=repeats))

    tokens = int(part.offsets[-1])
    lines.append(f"| group attention, Triton, BEV windows ({str(dtype)[6:]}) | {tokens} | "
                 f"{med(fwd_bwd(lambda: group_attention(q, k, v, part, backend='triton'))):.2f} |")
    # SST-style: pad every window to the next of 32/64/128... slots, one masked SDPA per bucket
    lines.append(f"| group attention, torch path (length buckets + SDPA) ({str(dtype)[6:]}) | {tokens} | "
                 f"{med(fwd_bwd(lambda: group_attention(q, k, v, part, backend='torch'))):.2f} |")
    lines.append(f"| SST-style padding to 32/64/128, masked SDPA ({str(dtype)[6:]}) | {tokens} | "
                 f"{med(fwd_bwd(lambda: sst_padded_attention(q, k, v, part))):.2f} |")
    # flash SDPA at an equal token count: equal groups of 64
    g = max(1, tokens // 64)
    qf, kf, vf = (torch.randn(g, h, 64, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qf, kf, vf)
    else:
        def flash():
            return F.scaled_dot_product_attention(qf, kf, vf)
    lines.append(f"| SDPA {'flash' if device.type == 'cuda' else 'math (CPU)'}, groups of 64 ({str(dtype)[6:]}) | "
                 f"{g * 64} | {med(fwd_bwd(flash)):.2f} |")
    lines.append(f"| SLA, Triton, BEV windows ({str(dtype)[6:]}) | {tokens} | "
                 f"{med(fwd_bwd(lambda: scattered_linear_attention(q, k, v, part, backend='triton'))):.2f} |")
    assert isinstance(part, Partition)
    for name, model, batch in models:
        model.eval()
        with torch.no_grad():
            eager = med(lambda m=model, b=batch: m.predict(b))
            compiled = "-"
            if compile_models and name in COMPILE_CONFIGS:
                try:
                    predict = torch.compile(model.predict)
                    compiled = f"{med(lambda p=predict, b=batch: p(b)):.1f}"
                except Exception as e:  # noqa: BLE001
                    compiled = f"fails: {type(e).__name__}"
        lines.append(f"| predict {name} (fp32; compile off / on) | {len(batch.points)} pts | "
                     f"{eager:.1f} / {compiled} |")
    return lines


def write_section(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else ""
    if SECTION in doc:
        start = doc.index(SECTION)
        nxt = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + (doc[nxt + 1:] if nxt >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes; writes nothing")
    ap.add_argument("--write", action="store_true", help="put the results into BENCHMARKS.md")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile latency column")
    args = ap.parse_args(argv)
    small = args.dry_run
    if small:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--dry-run needs TRITON_INTERPRET=1 before triton is imported", file=sys.stderr)
            return 2
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --dry-run on a CPU machine", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    t0 = time.perf_counter()
    rep = Report()
    for check in (check_kernels, check_sparse_conv, check_partitions):
        t = time.perf_counter()
        check(rep, device, small)
        print(f"  ({check.__name__}: {time.perf_counter() - t:.0f} s)", flush=True)
    t = time.perf_counter()
    models = check_models(rep, device, small)
    print(f"  (check_models: {time.perf_counter() - t:.0f} s)", flush=True)
    lines = timing(device, small, 1 if small else args.repeats, models, not (small or args.no_compile))
    print("\n".join(lines))
    elapsed = time.perf_counter() - t0
    print(f"{len(rep.rows)} checks, {len(rep.failed)} failed, {elapsed:.0f} s")
    if args.write and not small:
        import triton

        dev = torch.cuda.get_device_name(device)
        checks = ["| check | result | ok |", "|---|---|---|"] + [
            f"| {n} | {d} | {'ok' if ok else 'FAIL'} |" for n, d, ok in rep.rows]
        text = "\n".join([
            SECTION, "",
            f"device={dev}, torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
            f"python {platform.python_version()}, {datetime.date.today().isoformat()}; "
            f"{len(rep.rows)} checks, {len(rep.failed)} failed, {elapsed:.0f} s.", "",
            *checks, "", *lines, ""])
        write_section(ROOT / "BENCHMARKS.md", text)
    for name in rep.failed:
        print(f"FAILED: {name}", file=sys.stderr)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())

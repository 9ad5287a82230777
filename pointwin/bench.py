"""``pointwin bench``: run the benchmark scripts of ``benchmarks/``, print their tables (``--out FILE``: write them).

Suites: ``e2e`` (per-stage latency, peak memory, forward and training step per model and input),
``baselines`` (SST-style padding, per-window loop, a sparse-conv CenterPoint backbone, side by side) and
``scaling`` (latency / memory against the number of voxels, with a PNG plot and fitted exponents).
With ``--out`` (e.g. ``BENCHMARKS.md``) each suite replaces its own marked section of that Markdown file and leaves
the others alone; without it nothing is written, so a run elsewhere never overwrites the repository's file.

The scripts live in the source checkout (``benchmarks/`` next to the package); an installed wheel
without them gets a clear error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

SUITES = ("e2e", "baselines", "scaling")


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder of the source checkout, put on ``sys.path`` (the scripts import each
    other as top-level modules, as when run as ``python benchmarks/x.py``)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (path / "e2e.py").is_file():
        raise FileNotFoundError(f"pointwin bench needs the benchmark scripts of a source checkout; "
                                f"{path / 'e2e.py'} does not exist")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


def _module(name: str):
    benchmarks_dir()
    return importlib.import_module(name)


def run_bench(suites: Sequence[str] = ("e2e",), *, configs: Sequence[str | Path] = (),
              models: Sequence[str] | None = None, inputs: Sequence[str | Path] = (), device: str = "auto",
              warmup: int = 1, repeats: int = 3, quick: bool = False, train: bool = True, threads: int = 2,
              out: str | Path | None = None, log=print) -> dict[str, str]:
    """Run ``suites`` and write each one's Markdown section into ``out`` (None: do not write).

    Returns ``{suite: markdown section}``. ``quick`` runs the small synthetic configs (or the given
    ``configs``) on the real nuScenes cloud with one timed repeat, and the quick versions of the other suites.
    """
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"pointwin bench: unknown suite {s!r}; expected some of {SUITES}")
    benchmarks_dir()
    common = _module("common")
    torch.set_num_threads(threads)
    texts = {}
    for suite in suites:
        mod = _module(suite)
        argv = ["--device", device, "--threads", str(threads), "--warmup", str(warmup), "--repeats", str(repeats)]
        if suite == "e2e":
            for c in configs:
                argv += ["--config", str(c)]
            for m in models or ():
                argv += ["--model", m]
            for i in inputs:
                argv += ["--input", str(i)]
            if not train:
                argv.append("--no-train")
            if quick:
                argv += ["--quick", "--repeats", "1"]
        elif quick:
            argv.append("--quick")
        log(f"[bench] {suite}: {' '.join(argv)}")
        texts[suite] = mod.main(argv)
        if out is not None:
            common.write_section(mod.BEGIN, mod.END, texts[suite], Path(out))
    return texts


def bench_main(args: argparse.Namespace) -> int:
    """Entry point of ``pointwin bench`` (the CLI's parsed arguments)."""
    inp = getattr(args, "input", None)
    inputs = [inp] if isinstance(inp, (str, Path)) else list(inp or [])
    custom = bool(getattr(args, "config", None) or inputs or getattr(args, "model", None))
    # baselines and scaling run on the real nuScenes cloud at published settings: only in the default run
    suites = getattr(args, "suite", None) or (["e2e"] if (getattr(args, "quick", False) or custom) else list(SUITES))
    run_bench(suites, configs=getattr(args, "config", None) or [], models=getattr(args, "model", None),
              inputs=inputs, device=getattr(args, "device", "auto") or "auto", warmup=getattr(args, "warmup", 1),
              repeats=getattr(args, "repeats", 3), quick=getattr(args, "quick", False),
              train=not getattr(args, "no_train", False), threads=getattr(args, "threads", 2) or 2,
              out=getattr(args, "out", None))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pointwin.bench``: the same options as ``pointwin bench`` plus ``--suite``/``--quick``."""
    p = argparse.ArgumentParser(prog="pointwin bench", description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="append", choices=SUITES, default=None)
    p.add_argument("--config", type=Path, action="append", default=[])
    p.add_argument("--model", action="append", default=None)
    p.add_argument("--input", type=Path, action="append", default=[])
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write into (default: print only)")
    return bench_main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared benchmark helpers: timers (CUDA events on the GPU), medians, peak memory, the environment header,
real input clouds, and writing a marked section of BENCHMARKS.md.

Every benchmark script imports this module as ``common`` (the scripts run as ``python benchmarks/x.py``,
which puts ``benchmarks/`` on ``sys.path``; :mod:`pointwin.bench` does the same).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pointwin.fileio import write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("POINTWIN_DATA", ROOT / ".." / "shared" / "data")).resolve()
NUSCENES_SWEEPS = DATA / "nuscenes" / "sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin"
KITTI_FULL = DATA / "kitti" / "full" / "velodyne"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


# ------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks points in time without stalling the GPU: CUDA events on a GPU, ``perf_counter`` on the CPU.

    ``mark()`` returns a token; ``ms(a, b)`` the milliseconds between two tokens (on CUDA it waits for
    ``b`` first). Stage boundaries inside one forward pass are marked with no synchronisation in between.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        if self.cuda:
            b.synchronize()
            return float(a.elapsed_time(b))
        return (b - a) * 1e3


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    clock = Clock(device)
    out = []
    for _ in range(repeats):
        a = clock.mark()
        fn()
        b = clock.mark()
        out.append(clock.ms(a, b))
    return out


def median(values: Sequence[float]) -> float:
    """Median (nan for an empty list)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def fit_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(size): ``value ~ c * size ** slope``."""
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.log(np.asarray(values, dtype=np.float64))
    if len(x) < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------------------------------------
# Memory


_MALLINFO2: list = []


def _mallinfo2():
    """glibc's ``mallinfo2`` through ctypes, or None (other libc, old glibc)."""
    if not _MALLINFO2:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                                               "keepcost")]

        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
            fn.restype = MallInfo2
            fn()
        except (OSError, AttributeError):
            fn = None
        _MALLINFO2.append(fn)
    return _MALLINFO2[0]


class PeakMemory:
    """Peak extra memory (MiB) while the ``with`` block runs.

    CUDA: ``max_memory_allocated`` minus what was allocated at entry (tensor memory, exact). CPU: the bytes
    in use by malloc (glibc ``mallinfo2``: small-block in-use + mmapped blocks; torch's CPU tensors come
    from malloc) sampled every ``interval`` seconds by a thread, minus the value at entry; where
    ``mallinfo2`` is missing, the resident set size instead (which also counts freed memory the allocator
    keeps). Peaks shorter than the interval can be missed.
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.mib = float("nan")

    @staticmethod
    def rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def host_bytes() -> int:
        """Bytes currently allocated through malloc (RSS where glibc's mallinfo2 is unavailable)."""
        fn = _mallinfo2()
        if fn is None:
            return PeakMemory.rss_bytes()
        info = fn()
        return int(info.uordblks + info.hblkhd)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import threading

        self._base = self._peak = self.host_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self.host_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.host_bytes())
        self.mib = (self._peak - self._base) / 2**20


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """:class:`PeakMemory` of one call of ``fn``."""
    with PeakMemory(device) as mem:
        fn()
    return mem.mib


def available_memory_mib() -> float:
    """MemAvailable from /proc/meminfo (inf where unknown): benchmarks skip sizes that would not fit."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.inf


# ------------------------------------------------------------------------------------------------
# Environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)")


def versions() -> str:
    parts = [f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    for name in ("triton", "numba", "spconv"):
        try:
            mod = __import__(name)
            parts.append(f"{name} {getattr(mod, '__version__', '?')}")
        except ImportError:
            parts.append(f"no {name}")
    return ", ".join(parts)


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def env_header(device: torch.device) -> str:
    """One line: device, versions, date, load average (1/5/15 min) at the time of the call."""
    return (f"Device: {device_name(device)}; {versions()}; {now_utc()}; load average {load_average()} "
            f"(1/5/15 min) on {os.cpu_count()} cores.")


def resolve_device(name: str | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


# ------------------------------------------------------------------------------------------------
# Inputs


def shrunk_model(model: dict, cells: int = 32) -> dict:
    """A ``model`` config section with its grid cut to ``cells`` x ``cells`` around the sensor (voxel sizes, z
    range, channels, windows and every other setting unchanged), so the Waymo / nuScenes models run in seconds
    on a CPU; the head's centre range follows. Changes and returns ``model``."""
    r, v = model["point_cloud_range"], model["voxel_size"]
    half = v[0] * cells / 2
    model["point_cloud_range"] = [-half, -half, r[2], half, half, r[5]]
    if "head" in model and "post_center_range" in model["head"]:
        model["head"]["post_center_range"] = [-half - 5, -half - 5, -10, half + 5, half + 5, 10]
    return model


def load_cloud(path: str | Path, columns: int | None = None, dtype: str | None = None) -> np.ndarray:
    """(N, C) float32 array from a raw LiDAR ``.bin``.

    Defaults from the name: ``*.fp16.bin`` float16 x 5 (the nuScenes sweep aggregate), ``*.pcd.bin``
    float32 x 5 (nuScenes), other ``.bin`` float32 x 4 (KITTI velodyne).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark input not found: {path} (see ../shared/data/README.md)")
    name = path.name
    if dtype is None:
        dtype = "float16" if name.endswith(".fp16.bin") else "float32"
    if columns is None:
        columns = 5 if (name.endswith(".fp16.bin") or name.endswith(".pcd.bin")) else 4
    raw = np.fromfile(path, dtype=np.dtype(dtype))
    if raw.size % columns:
        raise ValueError(f"{path}: {raw.size} {dtype} values are not a whole number of {columns}-column points")
    return raw.reshape(-1, columns).astype(np.float32)


def input_label(paths: Sequence[Path]) -> str:
    """Table label of a batch of input files (the real samples get their descriptive names)."""
    paths = [Path(p).resolve() for p in paths]
    if paths == [NUSCENES_SWEEPS]:
        return "nuScenes 10-sweep (B=1)"
    if paths and all(p.parent == KITTI_FULL for p in paths):
        return f"KITTI full scans (B={len(paths)})"
    return f"{', '.join(p.name for p in paths)} (B={len(paths)})"


def kitti_full_paths() -> list[Path]:
    return sorted(KITTI_FULL.glob("*.bin")) if KITTI_FULL.is_dir() else []


def real_inputs(quick: bool = False) -> list[tuple[str, list[np.ndarray]]]:
    """(label, per-sample clouds) of the real inputs present under ../shared/data."""
    out = []
    if NUSCENES_SWEEPS.is_file():
        out.append(("nuScenes 10-sweep (B=1)", [load_cloud(NUSCENES_SWEEPS)]))
    paths = kitti_full_paths()
    if paths and not quick:
        out.append((f"KITTI full scans (B={len(paths)})", [load_cloud(p) for p in paths]))
    return out


# ------------------------------------------------------------------------------------------------
# BENCHMARKS.md


def write_section(begin: str, end: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``begin`` and ``end`` markers of ``path`` (append when absent); atomic."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old and old.index(begin) < old.index(end):
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text(path, new)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one char per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(v: float) -> str:
    if v != v:  # nan
        return "n/a"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"

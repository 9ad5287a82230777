"""Shared test fixtures.

Triton kernels run in the interpreter when no GPU is present: TRITON_INTERPRET must be set before
triton is first imported, which is why it is set here, at collection start.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def shared_file(relpath: str) -> Path:
    """Path of a real sample file in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"real sample file {relpath} not found under {SHARED_DATA} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real sample files are only in the project checkout)")
    return SHARED_DATA


# Under pytest-xdist every worker is its own process: one intra-op thread each keeps the workers from
# oversubscribing the cores (OpenMP spin-waits make index_add_ 100x slower when they do).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on busy shared cores two OpenMP threads spin far more than they
    compute (the sparse convs' ``index_add_`` takes hundreds of ms per call instead of microseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def Polygon(*args, **kwargs):  # shapely's name, so reference code reads the same
    """``shapely.geometry.Polygon``, imported when a test first needs it: the test files that use shapely
    references still collect (and their other tests, e.g. the CUDA ones, still run) without the dev extras;
    the tests that need it skip with the reason."""
    return pytest.importorskip("shapely.geometry", reason="shapely (dev extra) is not installed").Polygon(*args,
                                                                                                          **kwargs)

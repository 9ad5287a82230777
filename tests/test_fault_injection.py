"""Fault injection (issue 18): kill -9 at random points of training and of a Waymo conversion, several times.

After every kill nothing half-written sits under a final name (every checkpoint loads and passes its
content hash; every finished segment folder is complete). After the resumed runs finish, no stale
temporary or ``.partial-*`` folder remains, ``log.jsonl`` holds every step exactly once, and the results
are bit-identical to an uninterrupted run. Small enough for CI: a few seconds per process start.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pointwin.engine.checkpoint import list_checkpoints, load_checkpoint_file
from pointwin.fileio import stale_temporaries
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from pointwin.engine import Trainer, TrainSettings
from tests.engine_fixtures import TinyBoxDataset, TinyRegressor
torch.manual_seed(0)
s = TrainSettings(epochs=4, batch_size=2, lr=0.01, log_every=1, ckpt_every_iters=1, keep_ckpts=2)
t = Trainer(TinyRegressor(), TinyBoxDataset(32), s, sys.argv[1], seed=0, progress=False)
t.resume("auto")
print("READY", flush=True)
t.fit()
print("DONE", flush=True)
"""

CONVERT = """
import sys, warnings
warnings.simplefilter("ignore")
from pointwin.datasets.waymo import create_waymo_infos
print("READY", flush=True)
create_waymo_infos(sys.argv[1], sys.argv[2], workers=1, progress=False, split="val")
print("DONE", flush=True)
"""


def _start(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_ready(proc: subprocess.Popen) -> None:
    seen = []
    while line := proc.stdout.readline():  # readline, then read(): both through the same buffer
        if line.strip() == "READY":
            return
        seen.append(line)
    raise AssertionError(f"the process ended before READY: {''.join(seen)}")


def _run_to_end(code: str, *args: str) -> float:
    """Run to completion; returns the seconds from READY to DONE."""
    proc = _start(code, *args)
    _wait_ready(proc)
    t0 = time.perf_counter()
    out = ""
    while (line := proc.stdout.readline()) and line.strip() != "DONE":
        out += line
    elapsed = time.perf_counter() - t0
    out += line + proc.stdout.read()
    assert proc.wait(timeout=120) == 0 and line.strip() == "DONE", out
    return elapsed


def _kill_at_random(code: str, rng: random.Random, window: float, *args: str) -> bool:
    """Start, wait for READY, SIGKILL after a random delay in [0, window); True if it was killed before DONE."""
    proc = _start(code, *args)
    _wait_ready(proc)
    time.sleep(rng.uniform(0.0, window))
    proc.send_signal(signal.SIGKILL)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    return "DONE" not in out


def _final_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(work_dir / "latest.pth")["model"]


def test_kill_during_training_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    duration = _run_to_end(TRAIN, str(ref))
    expected = _final_weights(ref)
    ref_iters = [r["iter"] for r in map(json.loads, (ref / "log.jsonl").read_text().splitlines())
                 if r["mode"] == "train"]
    assert ref_iters == list(range(1, 65))  # 4 epochs x 16 steps, a checkpoint after each
    rng = random.Random(18)
    killed = 0
    for trial in range(2):
        wd = tmp_path / f"run{trial}"
        for _ in range(2):
            killed += _kill_at_random(TRAIN, rng, duration * 1.2, str(wd))
            # nothing half-written under a final name: every checkpoint present loads and passes its hash
            for p in [wd / "latest.pth", *list_checkpoints(wd)]:
                if p.exists():
                    load_checkpoint_file(p)
        _run_to_end(TRAIN, str(wd))
        assert stale_temporaries(wd) == []  # a killed writer's temporaries were removed on restart
        got = _final_weights(wd)
        assert set(got) == set(expected)
        for k in expected:
            assert torch.equal(got[k], expected[k]), (trial, k)
        records = [json.loads(line) for line in (wd / "log.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in records if r["mode"] == "train"] == ref_iters  # each step logged once
    assert killed >= 2  # most kills land inside training (READY comes after the imports)


def test_kill_during_waymo_conversion_then_rerun_matches(tmp_path):
    data = shared_file("waymo/v1/val.tfrecord").read_bytes()
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(8):
        (raw / f"seg{k}.tfrecord").write_bytes(data)
    ref = tmp_path / "ref"
    duration = _run_to_end(CONVERT, str(raw), str(ref))
    rng = random.Random(7)
    killed = 0
    for trial in range(2):
        out = tmp_path / f"out{trial}"
        for _ in range(2):
            killed += _kill_at_random(CONVERT, rng, duration * 1.2, str(raw), str(out))
            for seg in out.glob("seg*"):  # a folder under its final name is complete
                infos = json.loads((seg / "infos.json").read_text())
                assert all((out / i["lidar_path"]).is_file() for i in infos)
        _run_to_end(CONVERT, str(raw), str(out))
        assert not list(out.glob(".partial-*"))  # the killed runs' partial segments were removed
        assert stale_temporaries(out) == []
        ref_files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
        got_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        assert got_files == ref_files
        for rel in ref_files:
            assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert killed >= 2


@pytest.mark.parametrize("iteration", [0, 3])
def test_log_is_resume_aware_and_torn_line_dropped(tmp_path, iteration):
    from pointwin.engine.trainer import RunLogger

    log = RunLogger(tmp_path, True, tensorboard=False)
    for i in range(1, 6):
        log.log({"mode": "train", "iter": i, "loss": 1.0 / i})
    with open(log.path, "a") as f:
        f.write('{"mode": "train", "it')  # a line torn by a kill
    assert log.truncate_after(iteration) == 5 - iteration + 1
    assert [json.loads(line)["iter"] for line in log.path.read_text().splitlines()] == list(range(1, iteration + 1))


def test_only_pointwins_own_stale_temporaries_are_removed(tmp_path):
    from pointwin.engine import Trainer, TrainSettings
    from pointwin.fileio import atomic_path
    from tests.engine_fixtures import TinyBoxDataset, TinyRegressor

    # what a kill -9 inside atomic_path leaves: the temporary under its own name
    ctx = atomic_path(tmp_path / "latest.pth")
    stale = ctx.__enter__()
    stale.write_bytes(b"x" * 1000)
    keep = [tmp_path / ".latest.notmine.tmp.pth", tmp_path / "notes.tmp", tmp_path / ".other.abcd1234.tmp.txt"]
    for p in keep:
        p.write_text("user file")
    t = Trainer(TinyRegressor(), TinyBoxDataset(4), TrainSettings(epochs=1, batch_size=2), tmp_path,
                progress=False)
    assert stale.exists()  # constructing a trainer (pointwin test, visualize) never deletes anything
    t.fit()
    assert not stale.exists()
    assert all(p.exists() for p in keep)  # other names (and temporaries of files a run never writes) stay


def test_resume_purges_the_repeated_steps_from_log_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pointwin.engine import Trainer, TrainSettings
    from tests.engine_fixtures import TinyBoxDataset, TinyRegressor

    def trainer() -> Trainer:
        torch.manual_seed(0)
        return Trainer(TinyRegressor(), TinyBoxDataset(8), TrainSettings(epochs=2, batch_size=2, log_every=1),
                       tmp_path, seed=0, progress=False)

    first = trainer()
    first.fit(max_steps=3)  # latest.pth at step 3
    for step in (4, 5):  # steps a killed run logged after its last checkpoint
        first.logger.log({"mode": "train", "epoch": 1, "iter": step, "loss": 100.0 + step}, step=step)
    first.close()
    second = trainer()
    assert second.resume("auto") and second.iteration == 3
    second.fit()
    second.close()
    iters = [json.loads(line)["iter"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert iters == list(range(1, 9))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 9))  # steps 4 and 5 of the killed run purged
    assert all(e.value < 100.0 for e in events)

"""DDP on the CPU (gloo): ``torchrun --nproc_per_node 2 -m pointwin train`` with batch 2 per process gives the
same loss curve and the same validation results as one process with batch 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pointwin.cli import main
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _records(work_dir: Path, mode: str) -> list[dict]:
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["mode"] == mode]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_matches_single_process(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg = tiny_config(epochs=2, batch_size=2, lr=0.02)
    cfg["data"]["train"]["length"] = 12
    cfg_path.write_text(yaml.safe_dump(cfg))
    common = ["--device", "cpu", "--no-progress", "--seed", "7"]

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pointwin", "train", str(cfg_path), "--work-dir", str(tmp_path / "ddp"), *common],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    # the single-process reference runs in this process (same code path, no second interpreter start-up)
    assert main(["train", str(cfg_path), "--work-dir", str(tmp_path / "single"), "--set", "train.batch_size=4",
                 *common]) == 0

    ddp, single = _records(tmp_path / "ddp", "train"), _records(tmp_path / "single", "train")
    assert [r["iter"] for r in ddp] == [r["iter"] for r in single] == list(range(1, 7))  # 12 frames / 4, x2 epochs
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-5, abs=1e-7)
    assert [r["lr"] for r in ddp] == pytest.approx([r["lr"] for r in single], rel=1e-12)
    # the loss really moves (a flat curve would make the comparison empty)
    assert ddp[-1]["loss"] < 0.5 * ddp[0]["loss"]

    # evaluation: 5 val frames sharded 3 + 2 over the ranks, gathered on rank 0 -> same metrics
    ddp_val, single_val = _records(tmp_path / "ddp", "val"), _records(tmp_path / "single", "val")
    assert len(ddp_val) == len(single_val) == 2
    assert ddp_val[-1]["num_frames"] == 5.0
    assert ddp_val[-1]["centre_error"] == pytest.approx(single_val[-1]["centre_error"], rel=1e-5)

    # rank 0 alone writes checkpoints; the DDP one loads into the plain model (no "module." prefixes)
    state = torch.load(tmp_path / "ddp" / "latest.pth", weights_only=True)
    assert state["meta"]["world_size"] == 2 and state["iteration"] == 6
    assert all(not k.startswith("module.") for k in state["model"])
    single_state = torch.load(tmp_path / "single" / "latest.pth", weights_only=True)
    for k, v in state["model"].items():
        torch.testing.assert_close(v, single_state["model"][k], rtol=1e-4, atol=1e-6)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as td

    from pointwin.engine.dist import gather_results
    from pointwin.structures import Boxes3D, Detections

    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        indices = list(range(rank, 5, world))  # rank 0: 0, 2, 4; rank 1: 1, 3
        dets, labels = [], []
        for i in indices:
            n = i % 3  # frames with 0, 1 and 2 detections, including an empty one on each rank
            boxes = torch.arange(n * 7, dtype=torch.float32).reshape(n, 7).abs() + i
            dets.append(Detections(Boxes3D(boxes), torch.full((n,), 0.1 * i), torch.full((n,), i, dtype=torch.long)))
            labels.append(torch.arange(i + 1) * 10 + i)  # per-point labels of a different length per frame
        got_dets = gather_results(indices, dets, 5)
        got_labels = gather_results(indices, labels, 5)
        if rank == 0:
            torch.save({"boxes": [d.boxes.tensor for d in got_dets], "scores": [d.scores for d in got_dets],
                        "labels": [d.labels for d in got_dets], "point_labels": got_labels}, f"{out_dir}/gathered.pth")
        else:
            assert got_dets is None and got_labels is None
    finally:
        td.destroy_process_group()


def test_gather_results_over_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "gathered.pth", weights_only=True)
    for i in range(5):
        n = i % 3
        assert torch.equal(got["boxes"][i], torch.arange(n * 7, dtype=torch.float32).reshape(n, 7) + i)
        assert torch.equal(got["scores"][i], torch.full((n,), 0.1 * i))
        assert torch.equal(got["labels"][i], torch.full((n,), i, dtype=torch.long))
        assert torch.equal(got["point_labels"][i], torch.arange(i + 1) * 10 + i)
        assert got["point_labels"][i].dtype == torch.int64

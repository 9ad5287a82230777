"""Training engine: schedules, checkpoints (atomic, weights_only, resume to the same state), non-finite losses."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from pointwin.engine import NonFiniteLossError, Trainer, TrainSettings
from pointwin.engine.checkpoint import (
    LATEST,
    CheckpointError,
    atomic_torch_save,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint_file,
    set_rng_state,
)
from pointwin.engine.dist import ShardSampler, gather_results
from pointwin.engine.trainer import LRSchedule
from pointwin.structures import Boxes3D, Detections
from tests.engine_fixtures import TinyBoxDataset, TinyRegressor


def _trainer(work_dir, seed=0, val=True, **kw) -> Trainer:
    settings = TrainSettings(**{"epochs": 2, "batch_size": 2, "lr": 0.01, "log_every": 1, **kw})
    torch.manual_seed(seed)
    val_set = TinyBoxDataset(5, seed=1) if val else None
    return Trainer(TinyRegressor(), TinyBoxDataset(8), settings, work_dir, val_set=val_set,
                   evaluate_fn=val_set.evaluate if val else None, seed=seed, progress=False)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- schedules
def test_onecycle_schedule_matches_formula():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = TrainSettings(lr=0.1, schedule="onecycle", pct_start=0.4, div_factor=10.0, final_div_factor=100.0,
                      moms=[0.95, 0.85])
    sched = LRSchedule(opt, s, total_steps=10)
    lrs, moms = [], []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        sched.step()
    # hand-worked: rise over 4 steps from 0.01 to 0.1 (cosine), then decay over 6 steps to 0.01/100
    def cos(a, b, f):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * f))
    expect = [cos(0.01, 0.1, i / 4) for i in range(4)] + [cos(0.1, 1e-4, i / 6) for i in range(6)]
    assert lrs == pytest.approx(expect, rel=1e-12)
    assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.1)
    assert moms[0] == pytest.approx(0.95) and moms[4] == pytest.approx(0.85)


def test_cosine_schedule_warmup_and_end():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = LRSchedule(opt, TrainSettings(lr=0.2, schedule="cosine", warmup_iters=4, min_lr_ratio=0.01), 14)
    lrs = []
    for _ in range(15):
        lrs.append(sched.get_lr())
        sched.step()
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lrs[4] == pytest.approx(0.2)
    assert lrs[9] == pytest.approx(0.002 + (0.2 - 0.002) / 2 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[14] == pytest.approx(0.002)


def test_settings_reject_unknown_keys():
    from pointwin.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key.*'epoch'"):
        TrainSettings.from_config({"epoch": 3})
    with pytest.raises(ConfigError, match="schedule"):
        TrainSettings.from_config({"schedule": "linear"})


# ---------------------------------------------------------------- checkpoints
def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)  # noqa: NPY002
    atomic_torch_save({"rng": get_rng_state()}, tmp_path / "rng.pth")
    a = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    state = torch.load(tmp_path / "rng.pth", weights_only=True)
    set_rng_state(state["rng"])
    b = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_checkpoint_resume_gives_identical_run(tmp_path):
    """2 steps, checkpoint, resume in a fresh trainer and finish == the uninterrupted run, bit for bit."""
    full = _trainer(tmp_path / "full", val=False)
    full.fit()
    assert full.iteration == 8  # 2 epochs x 4 steps

    part = _trainer(tmp_path / "part", val=False)
    part.fit(max_steps=2)
    assert part.iteration == 2 and part.epoch == 0 and part.epoch_iter == 2
    saved = _params(part.model)
    ckpt = load_checkpoint_file(tmp_path / "part" / LATEST)  # weights_only=True inside
    assert ckpt["iteration"] == 2 and ckpt["epoch_iter"] == 2

    resumed = _trainer(tmp_path / "part", seed=123, val=False)  # different init on purpose: resume must overwrite
    assert resumed.resume("auto")
    assert resumed.iteration == 2 and resumed.scheduler.last_step == 2
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, saved[k]), k
    # optimizer moments restored too
    s_opt = part.optimizer.state_dict()["state"]
    r_opt = resumed.optimizer.state_dict()["state"]
    for i in s_opt:
        assert torch.equal(s_opt[i]["exp_avg"], r_opt[i]["exp_avg"])
    resumed.fit()
    assert resumed.iteration == 8
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, _params(full.model)[k]), k
    losses_full = [h["loss"] for h in full.history]
    assert [h["loss"] for h in part.history] + [h["loss"] for h in resumed.history] == losses_full


def test_epoch_checkpoints_kept_and_auto_resume_skips_corrupt(tmp_path):
    t = _trainer(tmp_path, epochs=3, keep_ckpts=2)
    metrics = t.fit()
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["epoch_2.pth", "epoch_3.pth", "latest.pth"]
    assert (tmp_path / "metrics_epoch_3.json").is_file()
    assert metrics["num_frames"] == 5.0 and metrics["centre_error"] < 5
    assert not list(tmp_path.glob("*.tmp"))
    # a truncated latest.pth (crash mid-copy by some other tool) -> fall back to epoch_3.pth with a warning
    data = (tmp_path / LATEST).read_bytes()
    (tmp_path / LATEST).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, state = find_resume_checkpoint(tmp_path)
    assert path.name == "epoch_3.pth" and state["epoch"] == 3


class _Payload:
    """Any class instance needs pickle's code-running machinery to load."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    torch.save({"format": "pointwin-ckpt-1", "obj": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint_file(tmp_path / "evil.pth")


def test_checkpoint_mismatch_names_keys(tmp_path):
    t = _trainer(tmp_path, val=False)
    t.save("epoch_0.pth")
    other = torch.nn.Linear(2, 2)
    from pointwin.engine.checkpoint import load_model_weights

    with pytest.raises(CheckpointError, match="missing weight.*unexpected mlp"):
        load_model_weights(other, load_checkpoint_file(tmp_path / "epoch_0.pth"), tmp_path / "epoch_0.pth")


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    t = _trainer(tmp_path, val=False)
    assert t.resume("auto") is False and t.iteration == 0


# ---------------------------------------------------------------- non-finite losses
def test_non_finite_loss_skips_step_then_aborts(tmp_path):
    settings = TrainSettings(epochs=1, batch_size=1, lr=0.01, max_bad_steps=3, log_every=1)
    ds = TinyBoxDataset(8, nan_frames=(0,))
    t = Trainer(TinyRegressor(), ds, settings, tmp_path, seed=0, progress=False)
    order = list(iter(t.sampler))
    before = _params(t.model)
    # one NaN frame: its step is skipped with a warning, the parameters do not become NaN
    with pytest.warns(UserWarning, match="non-finite loss"):
        t.fit()
    assert t.iteration == 8
    assert len(t.history) == 7
    assert all(torch.isfinite(v).all() for v in _params(t.model).values())
    assert any(not torch.equal(v, before[k]) for k, v in _params(t.model).items())
    assert order.index(0) + 1 not in [h["iter"] for h in t.history]

    bad = TinyBoxDataset(8, nan_frames=tuple(range(8)))
    t2 = Trainer(TinyRegressor(), bad, settings, tmp_path / "bad", seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NonFiniteLossError, match="non-finite for 3 consecutive steps.*max_bad_steps=3"):
            t2.fit()
    assert t2.iteration == 2  # two skipped steps, the third bad one aborts


def test_grad_checkpointing_switch_reaches_model(tmp_path):
    t = _trainer(tmp_path, val=False, grad_checkpoint=True)
    assert t.model.grad_checkpointing is True
    from pointwin.engine.trainer import enable_grad_checkpointing

    wrapper = torch.nn.Sequential(TinyRegressor(), torch.nn.Linear(2, 2), TinyRegressor())
    assert enable_grad_checkpointing(wrapper) == 2  # reaches the submodules (the backbones of a detector)
    assert wrapper[0].grad_checkpointing and wrapper[2].grad_checkpointing
    with pytest.warns(UserWarning, match="set_grad_checkpointing"):
        assert enable_grad_checkpointing(torch.nn.Linear(2, 2)) == 0


def test_log_jsonl_records(tmp_path):
    import json

    t = _trainer(tmp_path, epochs=1)
    t.fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["mode"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    assert [r["loss"] for r in train] == pytest.approx([h["loss"] for h in t.history])
    assert {"lr", "loss_xy", "grad_norm", "time"} <= set(train[0])
    assert [r["mode"] for r in records].count("val") == 1


# ---------------------------------------------------------------- sampling and gathering (single process)
def test_shard_sampler_union_is_global_batch():
    one = list(ShardSampler(10, 0, 1, seed=5))
    shards = [list(ShardSampler(10, r, 2, seed=5)) for r in range(2)]
    assert sorted(one) == list(range(10))
    # batch k of size 4 in one process == batch k of size 2 on each of 2 ranks
    for k in range(2):
        assert sorted(one[4 * k: 4 * k + 4]) == sorted(shards[0][2 * k: 2 * k + 2] + shards[1][2 * k: 2 * k + 2])
    padded = [list(ShardSampler(5, r, 2, shuffle=False)) for r in range(2)]
    assert padded == [[0, 2, 4], [1, 3, 0]]
    s = ShardSampler(10, 0, 1, seed=5)
    s.set_epoch(0, skip=3)
    assert list(s) == one[3:]


def test_gather_results_single_process_orders_by_index():
    d = [Detections(Boxes3D(torch.full((1, 7), float(i))), torch.ones(1), torch.zeros(1, dtype=torch.long))
         for i in range(3)]
    out = gather_results([2, 0, 1], [d[2], d[0], d[1]], 3)
    assert [float(r.boxes.tensor[0, 0]) for r in out] == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------- evaluator selection
class _SegFrames:
    class_names = ("a", "b")

    def __init__(self) -> None:
        self.labels = [torch.tensor([0, 0, 1, 1]), torch.tensor([1, -1])]

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        from types import SimpleNamespace

        return SimpleNamespace(point_labels=self.labels[i])


def test_dataset_evaluator_segmentation_by_hand():
    from pointwin.engine.builders import dataset_evaluator

    ev = dataset_evaluator(_SegFrames(), {"type": "segmentation"})
    # frame 0: one "b" point predicted "a"; frame 1: ignore label -1 not counted
    m = ev([torch.tensor([0, 0, 0, 1]), torch.tensor([1, 0])])
    # class a: tp 2, gt 2, pred 3 -> 2/3; class b: tp 2, gt 3, pred 2 -> 2/3
    assert m["IoU/a"] == pytest.approx(2 / 3) and m["IoU/b"] == pytest.approx(2 / 3)
    assert m["mIoU"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 5)


def test_dataset_evaluator_prefers_dataset_method_and_detection_fallback():
    from pointwin.config import ConfigError
    from pointwin.engine.builders import dataset_evaluator

    ds = TinyBoxDataset(2)
    perfect = [Detections(ds[i].boxes, torch.ones(1), torch.zeros(1).long()) for i in range(2)]
    assert dataset_evaluator(ds)(perfect)["centre_error"] == 0
    with pytest.raises(ConfigError, match="eval.type"):
        dataset_evaluator(ds, {"type": "bogus"})
    assert dataset_evaluator(object()) is None


def test_amp_modes(monkeypatch):
    """train.amp: auto = bf16 autocast where the GPU supports it (else fp16 with the GradScaler), explicit
    bf16 / fp16, float32 on the CPU; anything else is a config error naming the key."""
    from pointwin.engine import TrainSettings

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert TrainSettings.from_config({"amp": "auto"}).amp_dtype(cuda) == torch.bfloat16
    assert TrainSettings.from_config({"amp": True}).amp_dtype(cuda) == torch.bfloat16
    assert TrainSettings.from_config({"amp": "fp16"}).amp_dtype(cuda) == torch.float16
    assert TrainSettings.from_config({"amp": "auto"}).amp_dtype(cpu) is None
    assert TrainSettings.from_config({}).amp_dtype(cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 / T4
    assert TrainSettings.from_config({"amp": "auto"}).amp_dtype(cuda) == torch.float16
    assert TrainSettings.from_config({"amp": "bf16"}).amp_dtype(cuda) == torch.bfloat16
    from pointwin.config import ConfigError

    for bad in ("half", [1], 3):
        with pytest.raises(ConfigError, match="train.amp must be one of"):
            TrainSettings.from_config({"amp": bad})

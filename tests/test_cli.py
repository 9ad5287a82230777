"""The ``pointwin`` command: help, argument errors, config overrides, train -> test -> resume, tools wrappers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pointwin.cli import build_parser, main
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "test", "create-data", "eval", "visualize", "export", "predict", "convert", "bench",
               "demo"]


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(epochs=2)))
    return path


def _records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- help and argument errors
def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"pointwin {name}" in capsys.readouterr().out


def test_common_flags_on_train_and_test():
    p = build_parser()
    args = p.parse_args(["train", "c.yaml", "--work-dir", "w", "--set", "a.b=1", "--set", "c=x", "--seed", "3",
                         "--device", "cpu", "--amp", "--resume", "auto"])
    assert (args.config, args.work_dir, args.overrides, args.seed, args.device, args.amp, args.resume) == (
        Path("c.yaml"), Path("w"), ["a.b=1", "c=x"], 3, "cpu", True, "auto")
    args = p.parse_args(["test", "c.yaml", "--ckpt", "k.pth"])
    assert args.ckpt == Path("k.pth") and args.split == "val" and args.device == "auto"


@pytest.mark.parametrize("argv, message", [
    (["frobnicate"], "invalid choice"),
    (["train"], "the following arguments are required: config"),
    (["test", "c.yaml"], "--ckpt"),
    (["create-data", "lidar9000"], "invalid choice"),
    (["train", "c.yaml", "--seed", "abc"], "invalid int value"),
])
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_override_and_missing_config_are_clear_errors(tiny_yaml, tmp_path, capsys):
    assert main(["train", str(tiny_yaml), "--work-dir", str(tmp_path / "w"), "--set", "train.epochz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epochz'" in err and "epochs" in err
    assert main(["train", str(tiny_yaml), "--set", "train.epochs=many"]) == 2
    assert "expects int" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["create-data", "nuscenes"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main(["eval", "waymo", "--pred", str(tmp_path / "missing.bin"), "--gt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_and_bench_say_when_unavailable(tiny_yaml, tmp_path, capsys, monkeypatch):
    import pointwin.export

    # the export entry point is wired: a missing config is reported as a clear error
    assert main(["export", str(tmp_path / "missing.yaml"), "--ckpt", "k.pth", "--out", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    # a build without the entry point (an older or trimmed install) exits 3 with a clear message
    monkeypatch.delattr(pointwin.export, "export_main", raising=False)
    monkeypatch.delattr(pointwin.export, "cli_export", raising=False)
    assert main(["export", str(tiny_yaml), "--ckpt", "k.pth", "--out", str(tmp_path)]) == 3
    assert "not available yet in this build" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pointwin.bench", None)  # import of pointwin.bench fails
    assert main(["bench", "--quick"]) == 3
    assert "not available yet in this build" in capsys.readouterr().err


# ---------------------------------------------------------------- train -> test -> resume through the CLI
def test_train_test_resume_roundtrip(tiny_yaml, tmp_path, capsys):
    wd = tmp_path / "run"
    assert main(["train", str(tiny_yaml), "--work-dir", str(wd), "--device", "cpu", "--no-progress",
                 "--set", "train.epochs=1", "--set", "train.lr=0.02"]) == 0
    saved = yaml.safe_load((wd / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["lr"] == 0.02  # the overrides reached the run
    state = torch.load(wd / "latest.pth", weights_only=True)
    assert state["epoch"] == 1 and state["iteration"] == 4
    val = [r for r in _records(wd) if r["mode"] == "val"][-1]

    # test: same weights -> the same metric as the end-of-training evaluation
    capsys.readouterr()
    assert main(["test", str(tiny_yaml), "--ckpt", str(wd / "epoch_1.pth"), "--work-dir", str(wd),
                 "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "centre_error" in out and "(epoch_1.pth, epoch 1)" in out
    # test writes into its own folder, never into the run's log or curves
    tested = json.loads((wd / "eval" / "epoch_1" / "test_val_metrics.json").read_text())
    assert tested["centre_error"] == pytest.approx(val["centre_error"], rel=1e-6)
    assert [r for r in _records(wd) if r["mode"] == "val"][-1] == val and not (wd / "test_val_metrics.json").exists()

    # resume auto with more epochs continues at step 5 (not from scratch)
    assert main(["train", str(tiny_yaml), "--work-dir", str(wd), "--device", "cpu", "--no-progress",
                 "--set", "train.epochs=2", "--set", "train.lr=0.02", "--resume", "auto"]) == 0
    iters = [r["iter"] for r in _records(wd) if r["mode"] == "train"]
    assert iters == [1, 2, 3, 4, 5, 6, 7, 8]
    assert torch.load(wd / "latest.pth", weights_only=True)["epoch"] == 2

    # a checkpoint that does not fit the model -> clear error, exit 2
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    assert main(["test", str(tiny_yaml), "--ckpt", str(tmp_path / "other.pth"), "--work-dir", str(wd),
                 "--device", "cpu", "--no-progress"]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_fine_tune_with_a_changed_shape_loads_what_matches(tmp_path, capsys):
    """--load-from with a re-sized layer: every tensor of matching name and shape is loaded, the rest named in
    a short report; --strict-load stops instead (one line, exit 2)."""
    from tests.engine_fixtures import tiny_config

    wd = tmp_path / "run"
    src = tmp_path / "src.yaml"
    src.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    assert main(["train", str(src), "--work-dir", str(wd), "--device", "cpu", "--no-progress"]) == 0
    before = torch.load(wd / "latest.pth", weights_only=True)["model"]
    changed = tiny_config(epochs=1)
    changed["model"]["hidden"] = 24  # every layer touching the hidden width changes shape
    dst = tmp_path / "dst.yaml"
    dst.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    assert main(["train", str(dst), "--work-dir", str(tmp_path / "ft"), "--device", "cpu", "--no-progress",
                 "--load-from", str(wd / "latest.pth")]) == 0
    out = capsys.readouterr().out
    # hidden 16 -> 24 re-sizes mlp.0.*, mlp.2.* and out.weight (16 + 3 -> 24 + 3 inputs); out.bias (3,) fits
    assert sorted(before) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight", "out.bias", "out.weight"]
    assert "loaded 1 tensors; 5 skipped (shape), 0 missing, 0 unexpected" in out
    assert "skipped out.weight: checkpoint (3, 19) vs model (3, 27)" in out
    assert main(["train", str(dst), "--work-dir", str(tmp_path / "ft2"), "--device", "cpu", "--no-progress",
                 "--load-from", str(wd / "latest.pth"), "--strict-load"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "skipped" in err and len(err.strip().splitlines()) == 1


def test_create_data_synthetic(tmp_path, capsys):
    pytest.importorskip("pointwin.datasets.synthetic")
    out = tmp_path / "syn"
    assert main(["create-data", "synthetic", "--out", str(out), "--num-train", "2", "--num-val", "1"]) == 0
    infos = json.loads((out / "synthetic_infos_train.json").read_text())
    assert len(infos["frames"]) == 2
    assert len(json.loads((out / "synthetic_infos_val.json").read_text())["frames"]) == 1


def test_create_data_kitti_and_waymo_real_files(tmp_path, capsys):
    from tests.conftest import shared_file

    kitti = shared_file("kitti/full")
    assert main(["create-data", "kitti", "--root", str(kitti), "--out", str(tmp_path / "kitti")]) == 0
    frames = json.loads((tmp_path / "kitti" / "kitti_infos_all.json").read_text())["frames"]
    assert [f["frame_id"] for f in frames] == ["000000", "000001", "000002"]

    raw = tmp_path / "waymo_raw"
    raw.mkdir()
    (raw / "seg.tfrecord").write_bytes(shared_file("waymo/v1/val.tfrecord").read_bytes())
    args = ["create-data", "waymo", "--root", str(raw), "--out", str(tmp_path / "waymo"), "--split", "val",
            "--workers", "1"]
    assert main([*args, "--shard", "2/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err
    assert main([*args, "--shard", "0/1"]) == 0
    infos = json.loads((tmp_path / "waymo" / "waymo_infos_val.json").read_text())
    assert len(infos) == 1 and len(infos[0]["annos"]["boxes"]) == 18  # the record's 18 laser labels
    assert infos[0]["context_name"] == "1071392229495085036_1844_790_1864_790"


# ---------------------------------------------------------------- visualize
def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_visualize_curves_and_points(tiny_yaml, tmp_path):
    wd = tmp_path / "run"
    assert main(["train", str(tiny_yaml), "--work-dir", str(wd), "--device", "cpu", "--no-progress",
                 "--set", "train.epochs=1"]) == 0
    assert main(["visualize", "curves", str(wd)]) == 0
    assert _is_png(wd / "training_curves.png")

    pts = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    np.save(tmp_path / "cloud.npy", pts)
    pts.tofile(tmp_path / "cloud.bin")
    (tmp_path / "boxes.json").write_text(json.dumps([[0, 0, 0, 4, 2, 1.5, 0.3]]))
    assert main(["visualize", "points", str(tmp_path / "cloud.npy"), "--boxes", str(tmp_path / "boxes.json"),
                 "--out", str(tmp_path / "a.png")]) == 0
    assert _is_png(tmp_path / "a.png")
    assert main(["visualize", "points", str(tmp_path / "cloud.bin"), "--dims", "3",
                 "--out", str(tmp_path / "b.png")]) == 2  # 2000 floats is not a multiple of 3
    assert main(["visualize", "sample", str(tiny_yaml), "--ckpt", str(wd / "latest.pth"), "--index", "0", "1",
                 "--out", str(tmp_path / "vis"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["tiny_0000.png", "tiny_0001.png"]


def test_bev_corners_match_hand_worked_box():
    from pointwin.visualize import bev_corners

    # 4 x 2 box at (1, 2) rotated by 90 degrees: length along +y
    c = bev_corners(np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.0, np.pi / 2]]))[0]
    np.testing.assert_allclose(c, [[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]], atol=1e-12)


def test_tools_wrapper_accepts_openpcdet_cfg_file_flag(tiny_yaml, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from _wrapper import translate
    finally:
        sys.path.pop(0)
    assert translate(["--cfg_file", "a.yaml", "--seed", "1"]) == ["a.yaml", "--seed", "1"]
    assert translate(["--cfg_file=a.yaml"]) == ["a.yaml"]
    notes = []
    argv = ["--cfg_file", "cfgs/x.yaml", "--batch_size", "4", "--epochs=3", "--workers", "2", "--pretrained_model",
            "p.pth", "--extra_tag", "ft", "--sync_bn", "--fix_random_seed"]
    assert translate(argv, "train", notes.append) == [
        "cfgs/x.yaml", "--set", "train.batch_size=4", "--set", "train.epochs=3", "--set", "train.num_workers=2",
        "--load-from", "p.pth", "--set", "train.sync_bn=true", "--work-dir", "work_dirs/x/ft"]
    assert "tools/train.py: --batch_size 4 -> --set train.batch_size=4" in notes and len(notes) == 7
    assert translate(["a.yaml", "--ckpt", "c.pth", "--batch_size", "2"], "test", notes.append) == [
        "a.yaml", "--ckpt", "c.pth", "--set", "train.eval_batch_size=2"]
    with pytest.raises(SystemExit, match="instead: torchrun --master_port PORT"):
        translate(["a.yaml", "--tcp_port", "1234"], "train", notes.append)
    with pytest.raises(SystemExit, match="--epochs has no meaning for pointwin test"):
        translate(["a.yaml", "--epochs", "3"], "test", notes.append)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--cfg_file", str(tiny_yaml),
                        "--launcher", "pytorch"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "OpenPCDet's --launcher is not a pointwin flag" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "pointwin train" in r.stdout
    r = subprocess.run(["bash", str(ROOT / "tools" / "dist_train.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


# ---------------------------------------------------------------- convert
DSVT_P_FIXTURE_WIDTHS = ["model.vfe.feat_channels=[32, 64]", "model.backbone.channels=64",
                         "model.backbone.ffn_channels=128", "model.backbone_2d.num_filters=[32, 32, 64]",
                         "model.backbone_2d.num_upsample_filters=[32, 32, 32]"]


def test_convert_official_dsvt_checkpoint(tmp_path, capsys):
    """`pointwin convert` on an OpenPCDet checkpoint holding the official DSVT-P fixture weights: a pointwin
    checkpoint with the config embedded, every tensor equal to the official one; a wrong source and an
    incompatible setting are refused with the fix named, and nothing is written."""
    from pointwin.engine.checkpoint import load_checkpoint_file
    from tests.conftest import shared_file

    weights = np.load(shared_file("parity/dsvt_p_detector/weights.npz"), allow_pickle=False)
    state = {k: torch.from_numpy(weights[k]) for k in weights.files}
    torch.save({"model_state": state, "epoch": 24}, tmp_path / "official.pth")
    sets = [a for w in DSVT_P_FIXTURE_WIDTHS for a in ("--set", w)]
    out = tmp_path / "converted.pth"
    assert main(["convert", "--from", "openpcdet", str(tmp_path / "official.pth"), "--config",
                 "configs/waymo/dsvt_pillar.yaml", "--out", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    assert "0 unmatched reference keys, 0 missing pointwin keys, 0 shape mismatches, 0 incompatible" in printed
    ckpt = load_checkpoint_file(out)
    assert "mix_shift_pos_embed: true" in ckpt["config"] and ckpt["meta"]["source"] == "openpcdet"
    converted = ckpt["model"]
    assert torch.equal(converted["backbone.stages.0.3.1.attn.qkv.weight"],
                       state["backbone_3d.stage_0.3.encoder_list.1.win_attn.self_attn.in_proj_weight"])
    assert torch.equal(converted["head.heads.0.branches.heatmap.3.bias"], state["dense_head.heads_list.0.hm.1.bias"])

    bad = tmp_path / "bad.pth"
    assert main(["convert", "--from", "mmdet3d", str(tmp_path / "official.pth"), "--config",
                 "configs/waymo/dsvt_pillar.yaml", "--out", str(bad), *sets]) == 2
    err = capsys.readouterr().err
    assert "does not convert cleanly" in err and "unmatched reference keys" in err and not bad.exists()
    assert main(["convert", "--from", "openpcdet", str(tmp_path / "official.pth"), "--config",
                 "configs/waymo/dsvt_pillar.yaml", "--out", str(bad), *sets,
                 "--set", "model.backbone.mix_shift_pos_embed=false"]) == 2
    assert "set model.backbone.mix_shift_pos_embed: true" in capsys.readouterr().err and not bad.exists()
    assert main(["convert", "--from", "openpcdet", str(tmp_path / "missing.pth"), "--config",
                 "configs/waymo/dsvt_pillar.yaml", "--out", str(bad)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_test_out_writes_kitti_results_that_eval_reads_back(tmp_path, capsys, one_thread):
    """`pointwin test --out` writes the dataset's own prediction format (KITTI result files here) and
    `pointwin eval kitti` on those files gives the metrics `pointwin test` printed (round trip)."""
    from pointwin.config import load_config
    from pointwin.engine.checkpoint import save_checkpoint
    from pointwin.models import build_model
    from tests.conftest import shared_file

    root = shared_file("kitti/full/velodyne/000000.bin").parents[1]
    sets = ["data.val.root=" + str(root), "data.val.split=null",
            "model.point_cloud_range=[0.0, -20.48, -3.0, 40.96, 20.48, 1.0]", "model.head.score_threshold=0.0"]
    cfg = load_config("configs/kitti/flatformer.yaml", sets)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pth", build_model(cfg["model"]), epoch=3, config=cfg.dump())
    args = [a for s in sets for a in ("--set", s)]
    assert main(["test", "configs/kitti/flatformer.yaml", "--ckpt", str(tmp_path / "m.pth"), "--work-dir",
                 str(tmp_path / "wd"), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "pred"), *args]) == 0
    assert "(m.pth, epoch 3)" in capsys.readouterr().out
    tested = json.loads((tmp_path / "wd" / "eval" / "m" / "test_val_metrics.json").read_text())
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["000000.txt", "000001.txt", "000002.txt"]
    assert main(["eval", "kitti", "--pred", str(tmp_path / "pred"), "--gt", str(root / "label_2"),
                 "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    shared = [k for k in tested if k in evaluated and isinstance(tested[k], float)]
    assert len(shared) > 20
    for k in shared:
        assert tested[k] == pytest.approx(evaluated[k], abs=1e-6, nan_ok=True), k

"""Issue 18: bad input never gives a silently wrong result; errors name the file and what was expected.

Each test reproduces one case of the issue on the real sample files (corrupted copies in tmp_path) or
on the tiny engine fixtures, and checks the one-line error / warning against hand-worked values.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pointwin.cli import main
from pointwin.config import ConfigError, check_top_level_keys
from pointwin.datasets.base import MAX_ABS_COORD, load_points, read_raw_points
from pointwin.engine import Trainer, TrainSettings
from pointwin.engine.checkpoint import (
    HASH_KEY,
    LATEST,
    CheckpointError,
    CheckpointIntegrityError,
    content_hash,
    find_resume_checkpoint,
    load_checkpoint_file,
)
from pointwin.errors import DataError, EvaluationError, PointwinError, PointwinWarning, did_you_mean
from tests.conftest import shared_file
from tests.engine_fixtures import TinyBoxDataset, TinyRegressor, tiny_config


def _err_line(capsys) -> str:
    """The command's error: exactly one ``pointwin <cmd>: error:`` line and no traceback (progress bars aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("pointwin ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def _trainer(work_dir, seed=0, **kw) -> Trainer:
    settings = TrainSettings(**{"epochs": 2, "batch_size": 2, "lr": 0.01, "log_every": 1, **kw})
    torch.manual_seed(seed)
    return Trainer(TinyRegressor(), TinyBoxDataset(8), settings, work_dir, seed=seed, progress=False)


# ---------------------------------------------------------------- bad 1: .bin size not a whole number of points
def test_velodyne_cut_to_odd_size_is_refused(tmp_path, capsys):
    src = shared_file("kitti/full")
    root = tmp_path / "kitti"
    for sub in ("velodyne", "calib", "label_2"):
        (root / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir())[:1]:
            (root / sub / f.name).write_bytes(f.read_bytes())
    bin_path = root / "velodyne" / "000000.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:1_000_001])  # 62,500 points of 16 bytes + 1 stray byte
    with pytest.raises(DataError) as e:
        read_raw_points(bin_path, 4, np.float32, ("x", "y", "z", "intensity"))
    assert e.value.path == str(bin_path) and e.value.offset == 1_000_000
    assert "size 1000001 bytes is not a multiple of 16 bytes per point (4 x float32 (x, y, z, intensity))" in str(
        e.value)
    assert "1 trailing byte" in str(e.value)
    # the command that used to exit 0: one line naming the file, exit 2
    assert main(["create-data", "kitti", "--root", str(root), "--out", str(tmp_path / "out")]) == 2
    line = _err_line(capsys)
    assert line.startswith("pointwin create-data: error: ") and str(bin_path) in line
    assert not (tmp_path / "out" / "kitti_infos_all.json").exists()
    # the same check in every raw reader: nuScenes float32 x 5 (20 bytes per point)
    from pointwin.datasets.nuscenes import load_lidar_points

    key = tmp_path / "key.pcd.bin"
    key.write_bytes(shared_file("nuscenes/n008-2018-09-18-12-07-26-0400__LIDAR_TOP__1537287083900561.pcd.bin")
                    .read_bytes()[:-4])  # 400 points - 4 bytes = 7996 bytes
    with pytest.raises(DataError, match=r"key.pcd.bin: size 7996 bytes is not a multiple of 20 bytes per point"):
        load_lidar_points(key)


# ---------------------------------------------------------------- bad 2: float64 file read as float32
def test_float64_file_read_as_float32_is_implausible(tmp_path, capsys):
    pts = np.fromfile(shared_file("kitti/fov/000000.bin"), np.float32).reshape(-1, 4)
    f64 = tmp_path / "scan64.bin"
    pts.astype(np.float64).tofile(f64)  # twice the bytes, so the size check alone passes (even point count)
    as32 = np.fromfile(f64, np.float32).reshape(-1, 4)
    big = np.abs(as32[:, :3]) > MAX_ABS_COORD
    row, col = (int(v) for v in np.argwhere(big)[0])  # independent: the first implausible value, row-major
    with pytest.raises(DataError) as e:
        read_raw_points(f64, 4, np.float32, ("x", "y", "z", "intensity"))
    msg = str(e.value)
    assert msg.startswith(f"{f64}: point {row} has {'xyz'[col]} = ")
    assert f"({int(big.any(1).sum())} such point(s))" in msg and "float64" in msg
    assert e.value.key == "xyz"[col]
    assert main(["visualize", "points", str(f64), "--out", str(tmp_path / "p.png")]) == 2
    assert str(f64) in _err_line(capsys) and not (tmp_path / "p.png").exists()
    # the original float32 file is fine through the same path
    np.testing.assert_array_equal(read_raw_points(shared_file("kitti/fov/000000.bin"), 4), pts)


def test_nan_in_a_column_names_file_and_column(tmp_path):
    """Weak class 'internal names': NaN intensity is reported by file, point and column, not SparseVoxels.feats."""
    pts = np.fromfile(shared_file("kitti/fov/000001.bin"), np.float32).reshape(-1, 4)
    pts[[17, 40], 3] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, pts)
    with pytest.raises(DataError, match=r"nan.npy: column 'intensity' of point 17 is nan \(2 non-finite"):
        load_points(path, 4, ("x", "y", "z", "intensity"))


# ---------------------------------------------------------------- bad 3: top-level config typo
def test_top_level_config_typo_is_rejected_with_did_you_mean(tmp_path, capsys):
    cfg = tiny_config(epochs=1)
    cfg["trian"] = {"epochs": 2}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "run"
    assert main(["train", str(path), "--work-dir", str(wd), "--device", "cpu", "--no-progress"]) == 2
    line = _err_line(capsys)
    assert f"{path}: unknown top-level key(s) 'trian' (did you mean 'train'?)" in line
    assert not (wd / "latest.pth").exists()  # nothing ran
    check_top_level_keys({"model": {}, "_anchors": {}, "train": {}}, "ok.yaml")  # '_' keys are free
    with pytest.raises(ConfigError) as e:
        check_top_level_keys({"modle": {}, "evall": {}}, "x.yaml")
    assert "'modle' (did you mean 'model'?), 'evall' (did you mean 'eval'?)" in str(e.value)
    assert e.value.key == "modle"
    assert did_you_mean("zzz", ["train"]) == ""


# ---------------------------------------------------------------- bad 4: content hash in every checkpoint
def _flip_byte_of(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0  # the tensor's bytes, exactly once in the file
    data[at + len(raw) // 2] ^= 0x01  # the lowest bit of one byte in the middle of the tensor
    path.write_bytes(bytes(data))


def test_checkpoint_hash_detects_a_flipped_byte_and_resume_falls_back(tmp_path):
    t = _trainer(tmp_path, epochs=2, keep_ckpts=3)
    t.fit()
    state = load_checkpoint_file(tmp_path / "epoch_2.pth")
    assert state[HASH_KEY] == content_hash(state)  # stored at write time, recomputed at read time
    # independent reference: the hash changes with one value and ignores its own entry
    changed = dict(state, epoch=state["epoch"] + 1)
    assert content_hash(changed) != state[HASH_KEY] and content_hash(dict(state, **{HASH_KEY: "x"})) == state[HASH_KEY]

    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    for name in (LATEST, "epoch_2.pth"):  # latest.pth is a copy of epoch_2.pth
        _flip_byte_of(tmp_path / name, exp_avg)
    # without the hash this loads "fine" with one optimizer moment changed: torch itself does not notice
    raw = torch.load(tmp_path / "epoch_2.pth", weights_only=True)
    assert not torch.equal(raw["optimizer"]["state"][0]["exp_avg"], exp_avg)
    with pytest.raises(CheckpointIntegrityError, match=r"epoch_2.pth is damaged: its content hash"):
        load_checkpoint_file(tmp_path / "epoch_2.pth")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, good = find_resume_checkpoint(tmp_path)
    assert path.name == "epoch_1.pth" and good["epoch"] == 1
    resumed = _trainer(tmp_path, seed=5, epochs=2)
    with pytest.warns(UserWarning):
        assert resumed.resume("auto")
    assert resumed.epoch == 1 and resumed.iteration == 4


# ---------------------------------------------------------------- bad 6: resume auto with only bad checkpoints
def test_resume_auto_with_only_unreadable_checkpoints_stops(tmp_path, capsys):
    wd = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    args = ["train", str(cfg), "--work-dir", str(wd), "--device", "cpu", "--no-progress", "--no-eval"]
    assert main(args) == 0
    for p in wd.glob("*.pth"):
        p.write_bytes(p.read_bytes()[:100])  # every checkpoint truncated
    before = {p.name: p.read_bytes() for p in wd.glob("*.pth")}
    capsys.readouterr()
    with pytest.warns(UserWarning):
        assert main([*args, "--resume", "auto"]) == 2
    line = _err_line(capsys)
    assert "--resume auto: 2 checkpoint(s)" in line and "none is usable" in line and "--start-over" in line
    assert "latest.pth" in line and "epoch_1.pth" in line
    assert {p.name: p.read_bytes() for p in wd.glob("*.pth")} == before  # nothing overwritten
    with pytest.warns(UserWarning):
        assert main([*args, "--resume", "auto", "--start-over"]) == 0
    assert load_checkpoint_file(wd / LATEST)["iteration"] == 4  # trained again from scratch


# ---------------------------------------------------------------- bad 5: Waymo evaluator input checks
def _objects(path: Path):
    from pointwin.datasets.waymo.proto import Objects

    msg = Objects()
    msg.ParseFromString(path.read_bytes())
    return msg


def test_waymo_eval_rejects_bad_scores_and_sizes(tmp_path, capsys):
    gt = shared_file("waymo/metrics/fake_ground_truths.bin")
    preds = _objects(shared_file("waymo/metrics/fake_predictions.bin"))
    cases = [("nan", lambda o: setattr(o, "score", math.nan), "score = nan", "bad score(s)"),
             ("high", lambda o: setattr(o, "score", 5.0), "score = 5.0", "bad score(s)"),
             ("low", lambda o: setattr(o, "score", -1.0), "score = -1.0", "bad score(s)"),
             ("size", lambda o: setattr(o.object.box, "width", 0.0), "every size must be > 0", "size(s) <= 0")]
    for name, edit, expected, kind in cases:
        msg = type(preds)()
        msg.CopyFrom(preds)
        for i in (17, 300):  # two bad objects: the first is named
            edit(msg.objects[i])
        path = tmp_path / f"{name}.bin"
        path.write_bytes(msg.SerializeToString())
        o = msg.objects[17]
        with pytest.raises(EvaluationError) as e:
            from pointwin.evaluation.waymo import evaluate_files

            evaluate_files(path, gt)
        text = str(e.value)
        assert text.startswith(f"{path}: predictions: object 17 (frame context_name={o.context_name!r}")
        assert f"timestamp_micros={o.frame_timestamp_micros}" in text and expected in text
        assert text.endswith(f"(2 {kind} of {len(msg.objects)} objects)")
        assert main(["eval", "waymo", "--pred", str(path), "--gt", str(gt)]) == 2
        assert str(path) in _err_line(capsys)


def test_waymo_eval_warns_about_unmatched_frames_and_duplicates(tmp_path, capsys):
    from pointwin.evaluation.waymo import evaluate_files

    gt_path = shared_file("waymo/metrics/fake_ground_truths.bin")
    preds = _objects(shared_file("waymo/metrics/fake_predictions.bin"))
    frames = {(o.context_name, o.frame_timestamp_micros) for o in preds.objects}
    for o in preds.objects:  # every prediction moved to another context: no frame matches
        o.context_name = o.context_name + "_x"
    moved = tmp_path / "moved.bin"
    moved.write_bytes(preds.SerializeToString())
    with pytest.warns(PointwinWarning, match=rf"0 of {len(frames)} prediction frames match a ground-truth frame"):
        result = evaluate_files(moved, gt_path)
    assert result["VEHICLE"]["L1"]["mAP"] == 0.0
    # duplicated ground truth: 3 objects appended again
    gt = _objects(gt_path)
    for i in (0, 5, 9):
        gt.objects.add().CopyFrom(gt.objects[i])
    dup = tmp_path / "gt_dup.bin"
    dup.write_bytes(gt.SerializeToString())
    with pytest.warns(PointwinWarning, match=r"gt_dup.bin: 3 ground-truth object\(s\) repeat another one exactly"):
        evaluate_files(shared_file("waymo/metrics/fake_predictions.bin"), dup)
    # the command prints them in its summary, after the table
    capsys.readouterr()
    assert main(["eval", "waymo", "--pred", str(moved), "--gt", str(dup)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pointwin eval: 2 warning(s):"
    assert "prediction frames match" in err[1] and "repeat another one exactly" in err[2]
    # the official fixtures themselves raise no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", PointwinWarning)
        evaluate_files(shared_file("waymo/metrics/fake_predictions.bin"), gt_path)


# ---------------------------------------------------------------- weak: one error family, CLI, --debug
def test_errors_pickle_with_file_and_offset():
    from pointwin.datasets.waymo.tfrecord import TFRecordCorruptError

    errors = [TFRecordCorruptError("/d/seg.tfrecord", 1234, "data CRC mismatch"),
              DataError("bad column", path="/d/a.parquet", key="x"),
              CheckpointIntegrityError("damaged", path="/w/latest.pth"),
              ConfigError("x.yaml: unknown key", key="trian")]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
        assert (back.path, back.offset, back.key) == (e.path, e.offset, e.key)
        assert isinstance(back, PointwinError)
    assert str(errors[0]) == "/d/seg.tfrecord: corrupt TFRecord record at byte offset 1234: data CRC mismatch"
    assert str(errors[1]) == "/d/a.parquet: bad column"
    assert isinstance(errors[0], ValueError) and isinstance(errors[2], CheckpointError)


def test_nan_learning_rate_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.lr must be a finite number > 0, got nan"):
        TrainSettings.from_config({"lr": float("nan")})
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(lr=float("nan"))))
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--no-progress"]) == 2
    assert "train.lr must be a finite number" in _err_line(capsys)
    with pytest.raises(ConfigError):  # --debug: the exception itself (with its traceback)
        main(["--debug", "train", str(cfg), "--work-dir", str(tmp_path / "w"), "--device", "cpu"])


def _tfrecord_copy(tmp_path: Path, names: list[str]) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    data = shared_file("waymo/v1/val.tfrecord").read_bytes()
    for n in names:
        (raw / f"{n}.tfrecord").write_bytes(data)
    return raw


def test_corrupt_tfrecord_in_worker_process_keeps_file_and_offset(tmp_path, capsys):
    from pointwin.datasets.waymo import create_waymo_infos
    from pointwin.datasets.waymo.tfrecord import TFRecordCorruptError

    raw = _tfrecord_copy(tmp_path, ["a", "b"])
    bad = raw / "b.tfrecord"
    data = bytearray(bad.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[12 + length // 2] ^= 0xFF  # a byte of the first record's payload: data CRC mismatch at offset 0
    bad.write_bytes(bytes(data))
    with pytest.raises(TFRecordCorruptError) as e:
        create_waymo_infos(raw, tmp_path / "out", workers=2, progress=False)
    assert e.value.path == str(bad) and e.value.offset == 0 and "data CRC mismatch" in str(e.value)
    assert not list((tmp_path / "out").glob(".partial-*"))
    assert main(["create-data", "waymo", "--root", str(raw), "--out", str(tmp_path / "out2"),
                 "--workers", "2"]) == 2
    line = _err_line(capsys)
    assert f"{bad}: corrupt TFRecord record at byte offset 0: data CRC mismatch" in line


# ---------------------------------------------------------------- weak: silent skips become counted warnings
def test_empty_tfrecord_is_a_counted_warning(tmp_path, capsys):
    from pointwin.datasets.waymo import create_waymo_infos

    raw = _tfrecord_copy(tmp_path, ["a"])
    (raw / "empty.tfrecord").write_bytes(b"")
    with pytest.warns(PointwinWarning, match=r"1 of 2 TFRecord files of shard 0/1 are empty \(0 bytes\).*empty"):
        path = create_waymo_infos(raw, tmp_path / "out", workers=1, progress=False)
    assert len(json.loads(path.read_text())) == 1  # the real record's frame; the empty file adds none
    assert main(["create-data", "waymo", "--root", str(raw), "--out", str(tmp_path / "out2"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "pointwin create-data: 1 warning(s):" in err and "empty.tfrecord" in err


def test_unknown_kitti_class_is_a_counted_warning(tmp_path):
    from pointwin.datasets.kitti import create_kitti_infos, read_label

    src = shared_file("kitti/full")
    root = tmp_path / "kitti"
    for sub in ("velodyne", "calib", "label_2"):
        (root / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir())[:2]:
            (root / sub / f.name).write_bytes(f.read_bytes())
    lab = root / "label_2" / "000000.txt"
    lines = lab.read_text().splitlines()
    assert lines[0].startswith("Pedestrian ")
    lines[0] = lines[0].replace("Pedestrian", "Pedestrain", 1)
    lab.write_text("\n".join(lines) + "\n")
    with pytest.warns(PointwinWarning, match=r"000000.txt:1") as rec:
        objs = read_label(lab)
    assert "'Pedestrain' x1 (did you mean 'Pedestrian'?)" in str(rec[0].message)
    assert objs[0].type == "Pedestrain"
    with pytest.warns(PointwinWarning) as rec:
        written = create_kitti_infos(root, tmp_path / "out", progress=False)
    msgs = [str(w.message) for w in rec if issubclass(w.category, PointwinWarning)]
    assert len(msgs) == 1  # one summary per split, not one per row
    assert msgs[0].startswith("kitti all: 1 KITTI label row(s) in 1 file(s) have an unknown class and are dropped")
    frame0 = json.loads(written["all"].read_text())["frames"][0]
    known = [ln.split()[0] for ln in lines if ln.split()[0] not in ("DontCare", "Pedestrain")]
    assert frame0["labels"] == known  # the typo row is the only one missing


# ---------------------------------------------------------------- weak: configs are code (trust boundary)
def test_config_types_from_the_standard_library_are_refused(tmp_path, capsys):
    from pointwin.engine.builders import build_model, import_modules

    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"model: type 'subprocess:check_call' names the Python standard-library "
                                          r"module 'subprocess'"):
        build_model({"type": "subprocess:check_call", "args": ["touch", str(marker)]}, "model")
    with pytest.raises(ConfigError, match="imports: module 'os.path' names the Python standard-library module 'os'"):
        import_modules({"imports": ["os.path"]})
    cfg = tiny_config()
    cfg["model"] = {"type": "builtins:eval", "source": "1"}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--no-progress"]) == 2
    assert "standard-library module 'builtins'" in _err_line(capsys)
    assert not marker.exists()
    # the user's own code stays allowed (the tiny fixtures are import-path types)
    assert type(build_model(tiny_config()["model"], "model")).__name__ == "TinyRegressor"


def test_conversion_error_is_in_the_family():
    from pointwin.export.converters import ConversionError

    e = ConversionError("x.pth (openpcdet) does not convert cleanly to this model:\nmissing: a.b")
    assert isinstance(e, PointwinError) and isinstance(e, ValueError)
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_info_file_errors_name_the_file_and_key(tmp_path):
    from pointwin.datasets.base import read_infos

    path = tmp_path / "infos.json"
    path.write_text('{"format": "pointwin.infos", "version": 1, "class_names": [], "channels": [],\n "frames": [{}]}')
    with pytest.raises(DataError) as e:
        read_infos(path)
    assert str(e.value) == f"{path}: frames[0] has no key 'frame_id'" and e.value.key == "frames[0].frame_id"
    path.write_text('{"format": "pointwin.infos",\n "version": 1,,}')
    with pytest.raises(DataError, match=r"infos.json: not valid JSON") as e:
        read_infos(path)
    assert e.value.line == 2


def test_bad_point_file_in_dataloader_workers_is_one_line(tmp_path, capsys):
    """train.num_workers = 2: the worker's DataError reaches the user as one line naming the file."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        data = (rng.random((64, 4)) * 4).astype(np.float32).tobytes()
        (tmp_path / f"p{i}.bin").write_bytes(data[:-3] if i == 2 else data)  # frame 2: 3 bytes short
        frames.append({"frame_id": f"f{i}", "points_path": f"p{i}.bin", "boxes": [[1, 1, 0, 4, 2, 1.5, 0]],
                       "labels": ["Car"]})
    info = tmp_path / "infos.json"
    info.write_text(json.dumps({"format": "pointwin.infos", "version": 1, "class_names": ["Car"],
                                "channels": ["x", "y", "z", "intensity"], "frames": frames}))
    cfg = tiny_config(epochs=1, num_workers=2)
    cfg["data"] = {"train": {"type": "InfoDataset", "info_path": str(info)}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--no-progress"]) == 2
    line = _err_line(capsys)
    assert line == (f"pointwin train: error: {tmp_path / 'p2.bin'}: size 1021 bytes is not a multiple of 16 bytes "
                    f"per point (4 x float32 (x, y, z, intensity)); 13 trailing byte(s): the file is truncated or "
                    f"has another layout")


def test_parquet_missing_a_column_names_file_and_column(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from pointwin.datasets.waymo.v2 import read_vehicle_poses

    src = next(iter(sorted(shared_file("waymo/v2/vehicle_pose").glob("*.parquet"))))
    table = pq.read_table(src)
    col = "[VehiclePoseComponent].world_from_vehicle.transform"
    assert col in table.column_names
    (tmp_path / "vehicle_pose").mkdir()
    dst = tmp_path / "vehicle_pose" / src.name
    pq.write_table(table.drop([col]), dst)
    poses = read_vehicle_poses(src.parents[1], src.stem)  # the real file reads
    assert len(poses) == table.num_rows
    with pytest.raises(DataError) as e:
        read_vehicle_poses(tmp_path, src.stem)
    assert e.value.path == str(dst) and e.value.key == col
    assert str(e.value).startswith(f"{dst}: missing column {col!r}; columns are [")
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # truncated file
    with pytest.raises(DataError, match=r"cannot read Waymo v2 component 'vehicle_pose'"):
        read_vehicle_poses(tmp_path, src.stem)


def test_visualize_bad_boxes_json_is_one_line(tmp_path, capsys):
    pts = tmp_path / "p.npy"
    np.save(pts, np.zeros((10, 4), np.float32))
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[1, 2, 3, 4, 5, 6]]")  # 6 numbers, not 7
    assert main(["visualize", "points", str(pts), "--boxes", str(boxes), "--out", str(tmp_path / "o.png")]) == 2
    line = _err_line(capsys)
    assert f"{boxes}: expected a JSON list of [x, y, z, dx, dy, dz, yaw] boxes" in line


def test_nuscenes_submission_bad_boxes_name_the_entry(tmp_path):
    from pointwin.evaluation.nuscenes import read_submission

    good = {"sample_token": "s1", "translation": [1.0, 2.0, 0.5], "size": [1.9, 4.5, 1.6],
            "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0], "detection_name": "car",
            "detection_score": 0.7, "attribute_name": "vehicle.moving"}
    path = tmp_path / "results.json"
    for field, value, expected in [("detection_score", float("nan"), "detection_score = nan"),
                                   ("detection_score", 1.5, "detection_score = 1.5"),
                                   ("size", [1.9, 0.0, 1.6], "size (w, l, h) = [1.9, 0.0, 1.6]; every size must be"),
                                   ("translation", [1.0, float("inf"), 0.5], "translation [1.0, inf, 0.5] is not")]:
        bad = dict(good, **{field: value})
        path.write_text(json.dumps({"meta": {}, "results": {"s1": [good, bad]}}))
        with pytest.raises(EvaluationError) as e:
            read_submission(path)
        assert str(e.value).startswith(f"{path}: results['s1'][1]: {expected}")
        assert e.value.key == "results['s1'][1]"
    path.write_text(json.dumps({"meta": {}, "results": {"s1": [good]}}))
    boxes, _ = read_submission(path)
    assert len(boxes.scores) == 1 and float(boxes.scores[0]) == pytest.approx(0.7)


def test_npy_keeps_large_coordinates_bin_does_not(tmp_path):
    """A .npy records its dtype: global-frame coordinates (UTM, 5e5 m) are legitimate there; a raw .bin with
    the same values is refused because its dtype is only assumed."""
    pts = np.array([[512_345.5, 5_403_210.0, 12.0, 0.3]], np.float32)
    np.save(tmp_path / "utm.npy", pts)
    np.testing.assert_array_equal(load_points(tmp_path / "utm.npy", 4), pts)
    pts.tofile(tmp_path / "utm.bin")
    with pytest.raises(DataError, match=r"utm.bin: point 0 has x = 512346, beyond the plausible \+-10000 m"):
        load_points(tmp_path / "utm.bin", 4)
    assert read_raw_points(tmp_path / "utm.bin", 4, max_abs_coord=None).shape == (1, 4)  # explicit opt-out

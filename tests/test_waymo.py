"""Waymo without TensorFlow: TFRecord framing + CRC-32C, protobuf messages, range images, v2 Parquet, converter."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter

import numpy as np
import pytest

from tests.conftest import shared_file

pytest.importorskip("google.protobuf")

from pointwin.datasets.waymo import proto  # noqa: E402
from pointwin.datasets.waymo.range_image import (  # noqa: E402
    beam_inclinations,
    decode_matrix,
    encode_matrix,
    frame_to_points,
    points_to_range_image,
    range_image_to_points,
)
from pointwin.datasets.waymo.tfrecord import (  # noqa: E402
    TFRecordCorruptError,
    crc32c,
    iter_records,
    masked_crc32c,
    write_records,
)

VAL_RECORD = "waymo/v1/val.tfrecord"


# ---- CRC-32C and record framing ------------------------------------------------------------------
def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors_and_bitwise_reference():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(bytes([0xFF]) * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 63, 200):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n
    # continuing a CRC over two chunks equals the CRC of the whole
    assert crc32c(b"56789", crc32c(b"1234")) == crc32c(b"123456789")


def test_write_and_read_records_roundtrip(tmp_path):
    recs = [b"", b"a", bytes(range(256)) * 3]
    path = tmp_path / "x.tfrecord"
    assert write_records(path, recs) == 3
    assert list(iter_records(path)) == recs
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 0
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert not list(tmp_path.glob("*.tmp*"))


def test_corrupt_records_raise_with_file_and_offset(tmp_path):
    good = tmp_path / "good.tfrecord"
    write_records(good, [b"first record", b"second record"])
    raw = bytearray(good.read_bytes())
    second = 12 + len(b"first record") + 4

    bad_data = tmp_path / "bad_data.tfrecord"
    flipped = bytearray(raw)
    flipped[second + 12 + 3] ^= 0x40
    bad_data.write_bytes(bytes(flipped))
    with pytest.raises(TFRecordCorruptError, match=rf"bad_data\.tfrecord.*offset {second}.*data CRC") as e:
        list(iter_records(bad_data))
    assert e.value.offset == second and e.value.path == str(bad_data)
    assert list(iter_records(bad_data, check_crc=False))[1] != b"second record"

    bad_len = tmp_path / "bad_len.tfrecord"
    flipped = bytearray(raw)
    flipped[0] ^= 0x01
    bad_len.write_bytes(bytes(flipped))
    with pytest.raises(TFRecordCorruptError, match="offset 0: length CRC"):
        list(iter_records(bad_len))

    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(bytes(raw[:-3]))
    with pytest.raises(TFRecordCorruptError, match=f"offset {second}: truncated"):
        list(iter_records(truncated))


# ---- the real v1 record -----------------------------------------------------------------------------
def _real_frame():
    (rec,) = list(iter_records(shared_file(VAL_RECORD)))
    frame = proto.Frame()
    frame.ParseFromString(rec)
    return frame


def test_real_v1_record_parses():
    frame = _real_frame()
    assert frame.context.name == "1071392229495085036_1844_790_1864_790"
    assert frame.timestamp_micros == 1507315488219118
    calibs = {c.name: c for c in frame.context.laser_calibrations}
    assert sorted(calibs) == [1, 2, 3, 4, 5]
    top = calibs[proto.LaserName.TOP]
    assert len(top.beam_inclinations) == 64
    inc = np.asarray(top.beam_inclinations)
    assert np.all(np.diff(inc) > 0), "calibrated inclinations are stored bottom beam first"
    assert inc[0] == pytest.approx(top.beam_inclination_min, abs=0.01)
    assert inc[-1] == pytest.approx(top.beam_inclination_max, abs=0.01)
    for name in (2, 3, 4, 5):
        assert len(calibs[name].beam_inclinations) == 0
    for c in calibs.values():
        ext = np.asarray(c.extrinsic.transform).reshape(4, 4)
        np.testing.assert_allclose(ext[:3, :3] @ ext[:3, :3].T, np.eye(3), atol=1e-6)
        np.testing.assert_allclose(ext[3], [0, 0, 0, 1])
    pose = np.asarray(frame.pose.transform).reshape(4, 4)
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
    assert len(frame.laser_labels) == 18
    # the segment stats count the same object types as the frame's labels
    counts = Counter(label.type for label in frame.laser_labels)
    stats = {oc.type: oc.count for oc in frame.context.stats.laser_object_counts}
    assert counts == stats == {proto.Label.TYPE_VEHICLE: 1, proto.Label.TYPE_SIGN: 17}
    for label in frame.laser_labels:
        assert label.box.length > 0 and label.box.width > 0 and label.box.height > 0
        assert -math.pi <= label.box.heading < math.pi
        assert label.id
    # range images were stripped from the sample: the lasers list is empty
    assert len(frame.lasers) == 0
    # parse -> serialise -> parse keeps the unknown fields (camera data, ...) byte for byte
    again = proto.Frame()
    again.ParseFromString(frame.SerializeToString())
    assert again == frame


def test_real_metrics_objects_bin():
    objs = proto.Objects()
    objs.ParseFromString(shared_file("waymo/v1/gt.bin").read_bytes())
    assert len(objs.objects) == 1
    o = objs.objects[0]
    assert o.context_name == "1071392229495085036_1844_790_1864_790"
    assert o.frame_timestamp_micros == 1507315488219118
    assert o.object.type == proto.Label.TYPE_VEHICLE
    assert o.object.box.length == pytest.approx(4.36, abs=1e-6)


# ---- range images ---------------------------------------------------------------------------------
def _rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _extrinsic(yaw, t, pitch=0.0):
    c, s = math.cos(pitch), math.sin(pitch)
    ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    m = np.eye(4)
    m[:3, :3] = _rot_z(yaw) @ ry
    m[:3, 3] = t
    return m


def _pose_matrix_reference(p):
    """(roll, pitch, yaw, x, y, z) -> 4x4 with scipy's intrinsic z-y'-x'' Euler angles (independent path)."""
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("ZYX", [p[2], p[1], p[0]]).as_matrix()
    m[:3, 3] = p[3:]
    return m


def _synthetic_scan(h, w, inclinations_rows, extrinsic, n, seed, pixel_pose=None, frame_pose=None):
    """Known points: a random subset of pixels with random ranges, placed by a float64 per-pixel loop."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(h * w, n, replace=False)
    rows, cols = flat // w, flat % w
    ranges = rng.uniform(2.0, 75.0, n)
    feats = np.stack([rng.uniform(0, 1, n), rng.uniform(0, 0.5, n), rng.integers(0, 2, n)], 1)
    az_corr = math.atan2(extrinsic[1, 0], extrinsic[0, 0])
    frame_inv = None if frame_pose is None else np.linalg.inv(frame_pose)
    pts = np.zeros((n, 3))
    for i in range(n):
        az = math.pi * (1 - 2 * (cols[i] + 0.5) / w) - az_corr
        inc = inclinations_rows[rows[i]]
        d = np.array([math.cos(inc) * math.cos(az), math.cos(inc) * math.sin(az), math.sin(inc)])
        p = extrinsic @ np.append(d * ranges[i], 1.0)
        if pixel_pose is not None:
            p = frame_inv @ (_pose_matrix_reference(pixel_pose[rows[i], cols[i]]) @ p)
        pts[i] = p[:3]
    image = np.zeros((h, w, 4), np.float32)
    image[rows, cols, 0] = ranges
    image[rows, cols, 1:] = feats
    return np.concatenate([pts, feats], 1), image, rows, cols


def _top_inclinations_rows(h=64):
    asc = np.sort(np.random.default_rng(3).uniform(-0.31, 0.042, h))
    return beam_inclinations(asc, -0.31, 0.042, h)


def test_beam_inclinations_uniform_and_given():
    rows = beam_inclinations(None, -0.3, 0.1, 4)
    np.testing.assert_allclose(rows, [0.05, -0.05, -0.15, -0.25])  # pixel centres, row 0 on top
    np.testing.assert_allclose(beam_inclinations([0.1, 0.2, 0.3], 0, 0, 3), [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="3 entries but the range image has 4 rows"):
        beam_inclinations([0.1, 0.2, 0.3], 0, 0, 4)


def test_range_image_round_trip_without_pixel_pose():
    h, w = 64, 400
    inc = _top_inclinations_rows(h)
    ext = _extrinsic(0.13, [1.43, 0.02, 2.18], pitch=0.01)
    known, image, rows, cols = _synthetic_scan(h, w, inc, ext, 3000, seed=1)

    pts, pix = range_image_to_points(image, ext, inc)
    order = np.lexsort((cols, rows))  # range_image_to_points returns pixels in row-major order
    np.testing.assert_array_equal(pix, np.stack([rows, cols], 1)[order])
    assert np.abs(pts[:, :3] - known[order, :3]).max() < 0.01
    np.testing.assert_allclose(pts[:, 3:], known[order, 3:], atol=1e-6)

    back = points_to_range_image(known, ext, inc, w)
    np.testing.assert_allclose(back[..., 0], image[..., 0], atol=0.01)
    np.testing.assert_allclose(back[..., 1:], image[..., 1:], atol=1e-6)


def test_range_image_round_trip_with_per_pixel_pose():
    h, w = 32, 300
    inc = beam_inclinations(None, -0.4, 0.05, h)
    ext = _extrinsic(-0.07, [1.4, 0.0, 2.1])
    # the vehicle drives 1.5 m and turns 0.03 rad during the spin (per-column pose), small roll/pitch
    t = (np.arange(w) + 0.5) / w
    pose = np.zeros((h, w, 6))
    pose[..., 0] = 0.004
    pose[..., 1] = -0.006
    pose[..., 2] = 0.6 + 0.03 * t
    pose[..., 3] = 1000.0 + 1.5 * t * math.cos(0.6)
    pose[..., 4] = -500.0 + 1.5 * t * math.sin(0.6)
    pose[..., 5] = 12.0
    frame_pose = _pose_matrix_reference([0.004, -0.006, 0.615, 1000 + 0.75 * math.cos(0.6),
                                         -500 + 0.75 * math.sin(0.6), 12.0])
    known, image, rows, cols = _synthetic_scan(h, w, inc, ext, 1500, seed=2, pixel_pose=pose, frame_pose=frame_pose)

    pts, pix = range_image_to_points(image, ext, inc, pixel_pose=pose, frame_pose=frame_pose)
    order = np.lexsort((cols, rows))
    assert np.abs(pts[:, :3] - known[order, :3]).max() < 0.01
    # ignoring the per-pixel pose would smear points by up to ~0.75 m: the correction matters
    plain, _ = range_image_to_points(image, ext, inc)
    assert np.abs(plain[:, :3] - known[order, :3]).max() > 0.3

    back = points_to_range_image(known, ext, inc, w, pixel_pose=pose, frame_pose=frame_pose)
    np.testing.assert_allclose(back[..., 0], image[..., 0], atol=0.01)
    with pytest.raises(ValueError, match="needs frame_pose"):
        range_image_to_points(image, ext, inc, pixel_pose=pose)


def test_matrix_encoding_roundtrip():
    a = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(decode_matrix(encode_matrix(a)), a)
    b = np.arange(12, dtype=np.int32).reshape(2, 3, 2)
    np.testing.assert_array_equal(decode_matrix(encode_matrix(b), "int32"), b)


def _make_frame_with_range_images(seed=0):
    """A v1 Frame with TOP (calibrated inclinations, per-pixel pose, two returns) and FRONT (uniform)."""
    frame = proto.Frame()
    frame.context.name = "synthetic_segment"
    frame.timestamp_micros = 1_000_000
    frame_pose = _pose_matrix_reference([0.0, 0.0, 0.3, 50.0, 20.0, 1.0])
    frame.pose.transform.extend(frame_pose.ravel().tolist())
    expected = []
    # TOP
    h, w = 64, 200
    asc = np.sort(np.random.default_rng(seed).uniform(-0.31, 0.042, h))
    top_ext = _extrinsic(0.02, [1.4, 0.0, 2.2])
    cal = frame.context.laser_calibrations.add(name=proto.LaserName.TOP)
    cal.beam_inclinations.extend(asc.tolist())
    cal.beam_inclination_min, cal.beam_inclination_max = float(asc[0]), float(asc[-1])
    cal.extrinsic.transform.extend(top_ext.ravel().tolist())
    t = (np.arange(w) + 0.5) / w
    pose = np.zeros((h, w, 6), np.float32)
    pose[..., 2] = 0.29 + 0.02 * t
    pose[..., 3] = 49.5 + 1.0 * t
    pose[..., 4] = 20.0
    pose[..., 5] = 1.0
    laser = frame.lasers.add(name=proto.LaserName.TOP)
    laser.ri_return1.range_image_pose_compressed = encode_matrix(pose)
    inc_rows = asc[::-1]
    for r, ri_msg in enumerate((laser.ri_return1, laser.ri_return2)):
        known, image, rows, cols = _synthetic_scan(h, w, inc_rows, top_ext, 500, seed=seed + r,
                                                   pixel_pose=pose.astype(np.float64), frame_pose=frame_pose)
        ri_msg.range_image_compressed = encode_matrix(image)
        if r == 0:  # segmentation labels on the first return only: instance = row * 1000 + col, class (r + c) % 23
            rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            ri_msg.segmentation_label_compressed = encode_matrix(np.stack([rr * 1000 + cc, (rr + cc) % 23], -1)
                                                                 .astype(np.int32))
        expected.append((1, r, known, rows, cols))
    # FRONT: uniform inclinations between min and max, no per-pixel pose
    h, w = 16, 100
    front_ext = _extrinsic(0.0, [4.0, 0.0, 0.5], pitch=0.2)
    cal = frame.context.laser_calibrations.add(name=proto.LaserName.FRONT)
    cal.beam_inclination_min, cal.beam_inclination_max = -1.5707963267948966, 0.5235987755982988
    cal.extrinsic.transform.extend(front_ext.ravel().tolist())
    laser = frame.lasers.add(name=proto.LaserName.FRONT)
    known, image, _, _ = _synthetic_scan(h, w, beam_inclinations(None, cal.beam_inclination_min,
                                                                 cal.beam_inclination_max, h),
                                         front_ext, 300, seed=seed + 7)
    laser.ri_return1.range_image_compressed = encode_matrix(image)
    expected.append((2, 0, known, None, None))
    return frame, expected


def _sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


def test_frame_to_points_all_lasers_both_returns(tmp_path):
    frame, expected = _make_frame_with_range_images()
    path = tmp_path / "seg.tfrecord"
    write_records(path, [frame.SerializeToString()])
    (rec,) = list(iter_records(path))
    parsed = proto.Frame()
    parsed.ParseFromString(rec)
    fp = frame_to_points(parsed)
    assert fp.points.shape == (500 + 500 + 300, 6)
    for laser, ret, known, rows, cols in expected:
        sel = (fp.laser == laser) & (fp.return_index == ret)
        seg = fp.segmentation[sel]
        if laser == 1 and ret == 0:
            # each point carries the label of its own pixel (matched through the unique intensities)
            by_intensity = {float(np.float32(i)): (r, c) for i, r, c in zip(known[:, 3], rows, cols)}
            pix = np.array([by_intensity[float(i)] for i in fp.points[sel, 3]])
            np.testing.assert_array_equal(seg[:, 0], pix[:, 0] * 1000 + pix[:, 1])
            np.testing.assert_array_equal(seg[:, 1], (pix[:, 0] + pix[:, 1]) % 23)
        else:
            assert (seg == -1).all()
    for laser, ret, known, *_ in expected:
        sel = (fp.laser == laser) & (fp.return_index == ret)
        got = fp.points[sel]
        assert len(got) == len(known)
        # match by features (unique random floats) then compare xyz
        g = got[np.argsort(got[:, 3])]
        k = known[np.argsort(known[:, 3])]
        np.testing.assert_allclose(g[:, 3:], k[:, 3:], atol=1e-6)
        assert np.abs(g[:, :3] - k[:, :3]).max() < 0.01, (laser, ret)
    first_only = frame_to_points(parsed, returns=(0,))
    assert len(first_only.points) == 800


# ---- v2 Parquet --------------------------------------------------------------------------------------
def test_real_v2_vehicle_pose_reads_float32_storage():
    pytest.importorskip("pyarrow")
    from pointwin.datasets.waymo.v2 import read_vehicle_poses

    path = shared_file("waymo/v2/vehicle_pose/10023947602400723454_1120_000_1140_000.parquet")
    poses = read_vehicle_poses(path.parents[1], path.stem)
    assert len(poses) == 199
    ts = np.array(sorted(poses))
    assert np.allclose(np.diff(ts), 100_000, atol=2_000)  # 10 Hz
    for m in poses.values():
        assert m.dtype == np.float64 and m.shape == (4, 4)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    first = poses[int(ts[0])]
    assert first[0, 3] == pytest.approx(860.5948, abs=1e-3) and first[1, 3] == pytest.approx(15568.675, abs=1e-3)
    # consecutive poses move a plausible distance (< 4 m per 0.1 s)
    steps = [np.linalg.norm(poses[int(b)][:3, 3] - poses[int(a)][:3, 3]) for a, b in zip(ts[:-1], ts[1:])]
    assert max(steps) < 4.0


def _write_v2_segment(root, segment, frame, known_by_frame_ts=None):
    """Write the v2 components of a synthetic segment built from a v1-style Frame with range images."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def put(component, cols):
        (root / component).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), root / component / f"{segment}.parquet")

    cal = frame.context.laser_calibrations
    p = "[LiDARCalibrationComponent]"
    put("lidar_calibration", {
        "key.segment_context_name": [segment] * len(cal),
        "key.laser_name": pa.array([c.name for c in cal], pa.int8()),
        f"{p}.extrinsic.transform": [list(c.extrinsic.transform) for c in cal],
        f"{p}.beam_inclination.min": [c.beam_inclination_min for c in cal],
        f"{p}.beam_inclination.max": [c.beam_inclination_max for c in cal],
        f"{p}.beam_inclination.values": [list(c.beam_inclinations) or None for c in cal],
    })
    ts = frame.timestamp_micros
    rows = {"key.segment_context_name": [], "key.frame_timestamp_micros": [], "key.laser_name": []}
    p = "[LiDARComponent]"
    for r in (1, 2):
        rows[f"{p}.range_image_return{r}.values"] = []
        rows[f"{p}.range_image_return{r}.shape"] = []
    for laser in frame.lasers:
        rows["key.segment_context_name"].append(segment)
        rows["key.frame_timestamp_micros"].append(ts)
        rows["key.laser_name"].append(laser.name)
        for r, msg in ((1, laser.ri_return1), (2, laser.ri_return2)):
            img = decode_matrix(msg.range_image_compressed) if msg.range_image_compressed else None
            rows[f"{p}.range_image_return{r}.values"].append(None if img is None else img.ravel().tolist())
            rows[f"{p}.range_image_return{r}.shape"].append(None if img is None else list(img.shape))
    put("lidar", rows)
    pose_img = decode_matrix(frame.lasers[0].ri_return1.range_image_pose_compressed)
    p = "[LiDARPoseComponent]"
    put("lidar_pose", {"key.segment_context_name": [segment], "key.frame_timestamp_micros": [ts],
                       "key.laser_name": pa.array([1], pa.int8()),
                       f"{p}.range_image_return1.values": [pose_img.ravel().tolist()],
                       f"{p}.range_image_return1.shape": [list(pose_img.shape)]})
    # float32 storage on purpose, like the public sample
    put("vehicle_pose", {"key.segment_context_name": [segment], "key.frame_timestamp_micros": [ts],
                         "[VehiclePoseComponent].world_from_vehicle.transform":
                             pa.array([list(frame.pose.transform)], pa.list_(pa.float32(), 16))})
    p = "[LiDARBoxComponent]"
    put("lidar_box", {
        "key.segment_context_name": [segment] * 2, "key.frame_timestamp_micros": [ts, ts],
        "key.laser_object_id": ["a", "b"],
        f"{p}.box.center.x": [10.0, -5.0], f"{p}.box.center.y": [2.0, 3.0], f"{p}.box.center.z": [1.0, 0.9],
        f"{p}.box.size.x": [4.5, 0.8], f"{p}.box.size.y": [2.0, 0.7], f"{p}.box.size.z": [1.6, 1.8],
        f"{p}.box.heading": [0.3, -1.2], f"{p}.type": pa.array([1, 2], pa.int8()),
        f"{p}.speed.x": [5.0, None], f"{p}.speed.y": [0.5, None], f"{p}.speed.z": [0.0, None],
        f"{p}.num_lidar_points_in_box": [120, 0], f"{p}.num_top_lidar_points_in_box": [100, 0],
        f"{p}.difficulty_level.detection": pa.array([1, 2], pa.int8()),
        f"{p}.difficulty_level.tracking": pa.array([1, 2], pa.int8()),
    })
    p = "[LiDARSegmentationLabelComponent]"
    seg = np.stack([np.arange(64 * 200).reshape(64, 200) % 7, np.full((64, 200), 3)], -1).astype(np.int32)
    put("lidar_segmentation", {"key.segment_context_name": [segment], "key.frame_timestamp_micros": [ts],
                               "key.laser_name": [1], f"{p}.range_image_return1.values": [seg.ravel().tolist()],
                               f"{p}.range_image_return1.shape": [list(seg.shape)],
                               f"{p}.range_image_return2.values": [None], f"{p}.range_image_return2.shape": [None]})
    return seg


def test_v2_components_read_and_convert_to_points(tmp_path):
    from pointwin.datasets.waymo import v2

    frame, expected = _make_frame_with_range_images()
    seg_labels = _write_v2_segment(tmp_path, "segA", frame)
    assert v2.list_segments(tmp_path) == ["segA"]
    calibs = v2.read_lidar_calibrations(tmp_path, "segA")
    assert sorted(calibs) == [1, 2] and calibs[2].inclinations is None and len(calibs[1].inclinations) == 64
    (f,) = list(v2.iter_lidar_frames(tmp_path, "segA"))
    assert f.timestamp == frame.timestamp_micros and f.pixel_pose.shape == (64, 200, 6)
    fp = v2.frame_points(f, calibs)
    assert fp.segmentation is None
    for laser, ret, known, *_ in expected:
        got = fp.points[(fp.laser == laser) & (fp.return_index == ret)]
        g, k = got[np.argsort(got[:, 3])], known[np.argsort(known[:, 3])]
        # the vehicle pose went through float32 storage: allow 1 cm
        assert np.abs(g[:, :3] - k[:, :3]).max() < 0.01, (laser, ret)
    boxes = v2.read_lidar_boxes(tmp_path, "segA")[frame.timestamp_micros]
    np.testing.assert_allclose(boxes.boxes[0], [10, 2, 1, 4.5, 2, 1.6, 0.3])
    np.testing.assert_allclose(boxes.speed, [[5, 0.5, 0], [0, 0, 0]])
    assert boxes.types.tolist() == [1, 2] and boxes.ids == ["a", "b"] and boxes.num_lidar_points.tolist() == [120, 0]
    segs = v2.read_lidar_segmentation(tmp_path, "segA")
    np.testing.assert_array_equal(segs[(frame.timestamp_micros, 1)][0], seg_labels)
    assert segs[(frame.timestamp_micros, 1)][1] is None
    labelled = v2.frame_points(f, calibs, segmentation=segs)
    top0 = (labelled.laser == 1) & (labelled.return_index == 0)
    assert (labelled.segmentation[~top0] == -1).all() and (labelled.segmentation[top0, 1] == 3).all()
    with pytest.raises(FileNotFoundError, match="lidar_box"):
        v2.read_lidar_boxes(tmp_path, "nope")


# ---- converter ------------------------------------------------------------------------------------------
def _v1_segments(tmp_path, n):
    src = tmp_path / "v1"
    src.mkdir()
    for s in range(n):
        frames = []
        for k in range(2):
            frame, _ = _make_frame_with_range_images(seed=10 * s + k)
            frame.context.name = f"seg{s}"
            frame.timestamp_micros = 1_000_000 + 100_000 * k
            lb = frame.laser_labels.add(type=proto.Label.TYPE_VEHICLE, id=f"car{s}", num_lidar_points_in_box=50,
                                        detection_difficulty_level=proto.Label.LEVEL_2)
            lb.box.center_x, lb.box.length, lb.box.width, lb.box.height, lb.box.heading = 7.0, 4.0, 1.9, 1.5, 0.2
            lb.metadata.speed_x, lb.metadata.speed_y = 3.0, -1.0
            frames.append(frame.SerializeToString())
        write_records(src / f"segment-{s}.tfrecord", frames)
    return src


def test_convert_v1_sharded_resumable(tmp_path, monkeypatch):
    from pointwin.datasets.waymo import convert
    from pointwin.datasets.waymo.dataset import WaymoDataset

    src = _v1_segments(tmp_path, 3)
    out = tmp_path / "out"
    path0 = convert.create_waymo_infos(src, out, shard=(0, 2), workers=1, progress=False)
    assert path0 == out / "waymo_infos_shard0of2.json"
    infos0 = json.loads(path0.read_text())
    assert sorted({i["segment"] for i in infos0}) == ["segment-0", "segment-2"]
    assert not (out / "segment-1").exists()

    # an interrupted segment leaves no finished folder behind ...
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(convert.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert.create_waymo_infos(src, out, shard=(1, 2), workers=1, progress=False)
    assert not (out / "segment-1").exists()
    assert not list(out.glob(".partial-*"))
    monkeypatch.setattr(convert.np, "save", real_save)

    # ... and the rerun converts it while skipping the finished ones (their files are untouched)
    stamp = (out / "segment-0" / "infos.json").stat().st_mtime_ns
    infos1 = json.loads(convert.create_waymo_infos(src, out, shard=(1, 2), workers=1, progress=False).read_text())
    assert [i["segment"] for i in infos1] == ["segment-1", "segment-1"]
    convert.create_waymo_infos(src, out, shard=(0, 2), workers=1, progress=False)
    assert (out / "segment-0" / "infos.json").stat().st_mtime_ns == stamp
    assert (out / "waymo_infos_shard0of2.json").exists() and (out / "waymo_infos_shard1of2.json").exists()

    merged = convert.merge_waymo_infos(out)
    assert len(merged) == 6
    info = merged[0]
    assert info["frame_id"] == "segment-0_1000000" and info["context_name"] == "seg0" and info["sample_idx"] == 0
    assert info["annos"]["names"] == ["Vehicle"] and info["annos"]["difficulty"] == [2]
    np.testing.assert_allclose(info["annos"]["boxes"][0], [7, 0, 0, 4, 1.9, 1.5, 0.2, 3, -1])
    pts = np.load(out / info["lidar_path"])
    assert pts.shape == (1300, 6) and pts.dtype == np.float32

    ds = WaymoDataset(out, with_velocity=True, drop_nlz_points=False)
    sample = ds[0]
    assert sample.points.shape == (1300, 5) and sample.channels == ("x", "y", "z", "intensity", "elongation")
    np.testing.assert_allclose(sample.points[:, 3].numpy(), np.tanh(pts[:, 3]), rtol=1e-6)
    assert sample.labels.tolist() == [0] and sample.boxes.tensor.shape == (1, 9)
    kept = WaymoDataset(out)[0]
    assert len(kept.points) == int((pts[:, 5] <= 0).sum()) < 1300
    seg = np.load(out / info["seg_path"])
    assert seg.shape == (1300, 2) and (seg[500:, 1] == -1).all() and (seg[:500, 1] >= 0).all()
    labelled = WaymoDataset(out, with_segmentation=True)[0]
    expected_labels = np.where(seg[:, 1] > 0, seg[:, 1] - 1, -1)[pts[:, 5] <= 0]
    np.testing.assert_array_equal(labelled.point_labels.numpy(), expected_labels)
    assert labelled.point_labels.max() <= 21


def test_convert_v2_with_process_pool(tmp_path):
    pytest.importorskip("pyarrow")
    from pointwin.datasets.waymo.convert import create_waymo_infos

    for name in ("segA", "segB"):
        frame, _ = _make_frame_with_range_images(seed=len(name))
        _write_v2_segment(tmp_path / "v2", name, frame)
    infos = json.loads(create_waymo_infos(tmp_path / "v2", tmp_path / "out", workers=2, progress=False).read_text())
    assert [i["segment"] for i in infos] == ["segA", "segB"]
    assert infos[0]["annos"]["names"] == ["Vehicle", "Pedestrian"]
    assert infos[0]["annos"]["num_lidar_points_in_box"] == [120, 0]
    assert np.load(tmp_path / "out" / infos[0]["lidar_path"]).shape == (1300, 6)


def test_convert_rejects_bad_input(tmp_path):
    from pointwin.datasets.waymo.convert import create_waymo_infos

    with pytest.raises(FileNotFoundError, match="no \\*.tfrecord"):
        create_waymo_infos(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="shard"):
        create_waymo_infos(tmp_path, tmp_path / "out", shard=(2, 2), progress=False)


def test_parse_shard_and_cli(tmp_path, capsys):
    from pointwin.datasets.waymo.convert import main, parse_shard

    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    src = _v1_segments(tmp_path, 2)
    main([str(src), str(tmp_path / "out"), "--shard", "1/2", "--workers", "1", "--merge"])
    out = capsys.readouterr().out
    assert "2 frames in shard 1/2" in out and "2 frames in" in out
    assert (tmp_path / "out" / "segment-1").is_dir() and not (tmp_path / "out" / "segment-0").exists()


def test_import_without_optional_dependencies():
    import subprocess
    import sys

    code = ("import sys; sys.modules['google.protobuf'] = None; sys.modules['pyarrow'] = None\n"
            "import pointwin, pointwin.datasets.waymo as w, pointwin.datasets.waymo.convert, "
            "pointwin.datasets.waymo.v2, pointwin.datasets.waymo.tfrecord, pointwin.datasets.nuscenes\n"
            "try:\n    import pointwin.datasets.waymo.proto\nexcept ImportError as e:\n    print('OK', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "pointwin[waymo]" in res.stdout


def test_all_five_real_calibrations_round_trip():
    """Synthetic range images at the real sensors' resolutions, through the real frame's five calibrations."""
    frame = _real_frame()
    frame_pose = np.asarray(frame.pose.transform).reshape(4, 4)
    sizes = {1: (64, 2650), 2: (200, 600), 3: (200, 600), 4: (200, 600), 5: (200, 600)}
    for cal in frame.context.laser_calibrations:
        h, w = sizes[cal.name]
        inc = beam_inclinations(list(cal.beam_inclinations), cal.beam_inclination_min, cal.beam_inclination_max, h)
        assert inc[0] > inc[-1]  # row 0 is the top beam
        ext = np.asarray(cal.extrinsic.transform).reshape(4, 4)
        pose = None
        if cal.name == proto.LaserName.TOP:
            t = (np.arange(w) + 0.5) / w
            yaw0 = math.atan2(frame_pose[1, 0], frame_pose[0, 0])
            pose = np.zeros((h, w, 6))
            pose[..., 2] = yaw0 - 0.01 + 0.02 * t
            pose[..., 3] = frame_pose[0, 3] - 0.5 + t
            pose[..., 4] = frame_pose[1, 3]
            pose[..., 5] = frame_pose[2, 3]
        known, image, rows, cols = _synthetic_scan(h, w, inc, ext, 2000, seed=cal.name, pixel_pose=pose,
                                                   frame_pose=frame_pose if pose is not None else None)
        pts, _ = range_image_to_points(image, ext, inc, pixel_pose=pose,
                                       frame_pose=frame_pose if pose is not None else None)
        order = np.lexsort((cols, rows))
        assert np.abs(pts[:, :3] - known[order, :3]).max() < 0.01, cal.name
        back = points_to_range_image(known, ext, inc, w, pixel_pose=pose,
                                     frame_pose=frame_pose if pose is not None else None)
        np.testing.assert_allclose(back[..., 0], image[..., 0], atol=0.01, err_msg=str(cal.name))


def test_waymo_dataset_evaluate_and_submission(tmp_path):
    import torch

    from pointwin.datasets.waymo.convert import create_waymo_infos, merge_waymo_infos
    from pointwin.datasets.waymo.dataset import WaymoDataset
    from pointwin.evaluation.waymo import evaluate_files
    from pointwin.structures import Boxes3D, Detections

    src = _v1_segments(tmp_path, 2)
    out = tmp_path / "out"
    create_waymo_infos(src, out, workers=1, progress=False)
    merge_waymo_infos(out)
    ds = WaymoDataset(out, drop_nlz_points=False)

    def predictions(shift):
        res = []
        for i in range(len(ds)):
            b = ds[i].boxes.tensor.clone()
            b[:, 0] += shift if np.isscalar(shift) else shift[i]
            res.append(Detections(Boxes3D(b), torch.full((len(b),), 0.9), torch.zeros(len(b), dtype=torch.long)))
        return res

    perfect = ds.evaluate(predictions(0.0))
    assert perfect["Vehicle/L2/mAP"] == pytest.approx(1.0) and perfect["Vehicle/L2/mAPH"] == pytest.approx(1.0)
    assert perfect["mAP/L2"] == pytest.approx(np.mean([perfect[f"{c}/L2/mAP"] for c in ds.class_names]))
    assert ds.evaluate(predictions(5.0))["Vehicle/L2/mAP"] == 0.0
    # the official-format round trip gives the same numbers
    mixed = [0.3, 2.0, 0.3, 2.0]  # half the frames matched (IoU > 0.7), half not
    sub = ds.format_results(predictions(mixed), tmp_path / "pred.bin")
    gt = proto.Objects()
    for info in ds.infos:
        for box, name, npts, diff in zip(info["annos"]["boxes"], info["annos"]["names"],
                                         info["annos"]["num_lidar_points_in_box"], info["annos"]["difficulty"]):
            o = gt.objects.add(context_name=info["context_name"], frame_timestamp_micros=info["timestamp_micros"])
            o.object.box.center_x, o.object.box.center_y, o.object.box.center_z = box[:3]
            o.object.box.length, o.object.box.width, o.object.box.height, o.object.box.heading = box[3:7]
            o.object.type = proto.Label.TYPE_VEHICLE if name == "Vehicle" else proto.Label.TYPE_UNKNOWN
            o.object.num_lidar_points_in_box, o.object.detection_difficulty_level = npts, diff
    (tmp_path / "gt.bin").write_bytes(gt.SerializeToString())
    files = evaluate_files(sub, tmp_path / "gt.bin")
    mem = ds.evaluate(predictions(mixed))
    assert 0.0 < files["VEHICLE"]["L2"]["mAP"] < 1.0
    assert mem["Vehicle/L2/mAP"] == pytest.approx(files["VEHICLE"]["L2"]["mAP"], abs=1e-9)


def test_split_info_file_written_by_the_last_shard(tmp_path):
    from pointwin.datasets.waymo.convert import create_waymo_infos

    src = _v1_segments(tmp_path, 3)
    out = tmp_path / "out"
    first = create_waymo_infos(src, out, shard=(1, 2), workers=1, progress=False, split="val")
    assert first == out / "waymo_infos_val_shard1of2.json" and not (out / "waymo_infos_val.json").exists()
    last = create_waymo_infos(src, out, shard=(0, 2), workers=1, progress=False, split="val")
    assert last == out / "waymo_infos_val.json"
    infos = json.loads(last.read_text())
    assert [i["segment"] for i in infos] == ["segment-0"] * 2 + ["segment-1"] * 2 + ["segment-2"] * 2


def test_datasets_registered_for_configs():
    from pointwin.datasets import DATASETS

    assert "NuScenesDataset" in DATASETS and "WaymoDataset" in DATASETS

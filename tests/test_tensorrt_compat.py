"""TensorRT compatibility of exported graphs, checked without a GPU against the parser's support matrix.

Each rule is shown to fire on a small hand-built graph that breaks it (and only it), and the graphs that
`pointwin export` writes for the detectors pass every rule.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pointwin.export.tensorrt_compat import OPSET_RANGE, check_graph  # noqa: E402


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype=TensorProto.FLOAT, shape=(4, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _rules(model):
    return [(p.op_type, p.rule) for p in check_graph(model)]


def test_a_plain_graph_passes():
    add = helper.make_node("Add", ["x", "x"], ["y"], name="add")
    assert check_graph(_model([add], [_vi("x")], [_vi("y")])) == []


def test_scatternd_reduction_and_scatterelements():
    idx = numpy_helper.from_array(np.array([[0], [2]], np.int64), "idx")
    upd = numpy_helper.from_array(np.ones((2, 3), np.float32), "upd")
    bad = helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="sc", reduction="add")
    (rule,) = _rules(_model([bad], [_vi("x")], [_vi("y")], [idx, upd], opset=18))
    assert rule[0] == "ScatterND" and "reduction 'add' is unsupported" in rule[1]
    good = helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="sc")
    assert _rules(_model([good], [_vi("x")], [_vi("y")], [idx, upd], opset=18)) == []
    eidx = numpy_helper.from_array(np.zeros((4, 3), np.int64), "eidx")
    emax = helper.make_node("ScatterElements", ["x", "eidx", "x"], ["y"], name="se", reduction="max")
    assert _rules(_model([emax], [_vi("x")], [_vi("y")], [eidx], opset=18)) == []


def test_unsupported_operator_and_opset_and_domain():
    uniq = helper.make_node("Unique", ["x"], ["y"], name="u")
    assert any("no Unique importer" in r for _, r in _rules(_model([uniq], [_vi("x")], [_vi("y", shape=(None,))])))
    add = helper.make_node("Add", ["x", "x"], ["y"], name="add")
    too_new = _model([add], [_vi("x")], [_vi("y")], opset=OPSET_RANGE[1] + 1)
    assert any("outside TensorRT" in r for _, r in _rules(too_new))
    custom = helper.make_node("Foo", ["x"], ["y"], name="foo", domain="my.ops")
    m = _model([custom], [_vi("x")], [_vi("y")])
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    rules = _rules(m)
    assert any("custom domain 'my.ops'" in r for _, r in rules) and any("domain 'my.ops'" in r for _, r in rules)


def test_axes_must_be_constant():
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    axes = helper.make_node("Slice", ["s", "zero", "one"], ["ax"], name="ax")  # computed axes tensor
    starts = numpy_helper.from_array(np.array([0], np.int64), "zero")
    ends = numpy_helper.from_array(np.array([1], np.int64), "one")
    red = helper.make_node("ReduceMax", ["x", "ax"], ["y"], name="red", keepdims=0)
    rules = _rules(_model([shape, axes, red], [_vi("x")], [_vi("y", shape=(3,))], [starts, ends], opset=18))
    assert ("ReduceMax", "input 1 (axes) is computed at run time") in rules
    const_axes = numpy_helper.from_array(np.array([0], np.int64), "cax")
    ok = helper.make_node("ReduceMax", ["x", "cax"], ["y"], name="red", keepdims=0)
    assert _rules(_model([ok], [_vi("x")], [_vi("y", shape=(3,))], [const_axes], opset=18)) == []


def test_topk_k_limit_and_types():
    k = numpy_helper.from_array(np.array([5000], np.int64), "k")
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")
    rules = _rules(_model([topk], [_vi("x", shape=(10000,))],
                          [_vi("v", shape=(5000,)), _vi("i", TensorProto.INT64, (5000,))], [k]))
    assert ("TopK", "K = 5000 is not below 3840") in rules
    dbl = helper.make_node("Add", ["x", "x"], ["y"], name="dbl")
    assert any("DOUBLE" in r for _, r in _rules(_model([dbl], [_vi("x", TensorProto.DOUBLE)],
                                                       [_vi("y", TensorProto.DOUBLE)])))
    nz = helper.make_node("NonZero", ["x"], ["y"], name="nz")  # the matrix lists FP32, FP16 only
    rules = _rules(_model([nz], [_vi("x", TensorProto.INT64)], [_vi("y", TensorProto.INT64, (2, None))]))
    assert ("NonZero", "data type INT64 is not among FP32, FP16") in rules


def test_layernorm_extra_outputs():
    scale = numpy_helper.from_array(np.ones(3, np.float32), "scale")
    ln = helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"], name="ln")
    rules = _rules(_model([ln], [_vi("x")], [_vi("y"), _vi("mean", shape=(4, 1))], [scale]))
    assert ("LayerNormalization", "only the first output is supported") in rules


@pytest.mark.parametrize("config,extra", [
    ("configs/synthetic/flatformer_tiny.yaml", []),
    ("configs/synthetic/dsvt_pillar_tiny.yaml", ["+model.backbone.downsample_stride=[[2, 2, 1]]",
                                                 "+model.backbone.pool_mode=reference"]),
])
def test_exported_detectors_pass(config, extra, tmp_path, one_thread):
    """Both graphs of the FlatFormer and DSVT (two stages, official reference pooling) exports."""
    from pointwin.export.onnx import export_onnx
    from pointwin.export.tensorrt_compat import check_export
    from tests.test_export import NUSCENES_FRAME, SMALL_RANGE, _nuscenes_points
    from tests.test_export import _model as build

    model, cfg = build(config, [SMALL_RANGE, *extra])
    result = export_onnx(model, _nuscenes_points(NUSCENES_FRAME), tmp_path, model_cfg=cfg["model"])
    problems = check_export([result.backbone, result.head])
    assert problems == [], "\n".join(map(str, problems))
    ops = {n.op_type for p in (result.backbone, result.head) for n in onnx.load(str(p)).graph.node}
    assert {"ScatterElements", "GatherND", "Conv"} <= ops  # the checks saw the risky ops


def test_profile_consistency(tmp_path, one_thread):
    """The profile pointwin derives from frames fits both graphs' inputs (ranks, static sizes, one range per
    dynamic axis); a tampered profile is caught input by input."""
    from pointwin.export.onnx import export_onnx
    from pointwin.export.runtime import load_meta
    from pointwin.export.tensorrt import collect_profile, input_shapes
    from pointwin.export.tensorrt_compat import check_profile
    from tests.test_export import NUSCENES_FRAME, NUSCENES_SMALL, SMALL_RANGE, _nuscenes_points
    from tests.test_export import _model as build

    model, cfg = build("configs/synthetic/flatformer_tiny.yaml", [SMALL_RANGE])
    result = export_onnx(model, _nuscenes_points(NUSCENES_FRAME), tmp_path, model_cfg=cfg["model"])
    profile = collect_profile(model, [_nuscenes_points(NUSCENES_FRAME), _nuscenes_points(NUSCENES_SMALL)])
    shapes = input_shapes(load_meta(tmp_path), profile)
    graphs = {"backbone": result.backbone, "head": result.head}
    assert check_profile(graphs, shapes) == []

    bad = {g: dict(v) for g, v in shapes.items()}
    lo, mid, hi = bad["backbone"]["point_feats"]
    bad["backbone"]["point_feats"] = (hi, mid, lo)  # unordered
    bad["backbone"]["point_voxel"] = (lo[:1], mid[:1], (hi[0] + 1,))  # same axis as point_feats, other range
    lo, mid, hi = bad["head"]["voxel_coords"]
    bad["head"]["voxel_coords"] = (lo[:1] + (3,), mid[:1] + (3,), hi[:1] + (3,))  # static axis 4 -> 3
    del bad["head"]["voxel_feats"]
    rules = {(p.node, p.rule.split(" ")[0]) for p in check_profile(graphs, bad)}
    assert ("point_feats", "axis") in rules and ("point_voxel", "axis") in rules
    assert ("voxel_coords", "axis") in rules and ("voxel_feats", "graph") in rules


def test_export_command_checks_graphs_and_profile(tmp_path, capsys, one_thread):
    """`pointwin export --format onnx --profile-from val` end to end: graphs, parity, TensorRT compatibility
    and the profile check all reported."""
    import argparse

    import torch

    from pointwin.config import load_config
    from pointwin.engine.checkpoint import save_checkpoint
    from pointwin.export import export_main
    from pointwin.models import build_model

    overrides = ["data.val.num_frames=3"]
    cfg = load_config("configs/synthetic/flatformer_tiny.yaml", overrides)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pth", build_model(cfg["model"]), config=cfg.dump())
    args = argparse.Namespace(config="configs/synthetic/flatformer_tiny.yaml", ckpt=tmp_path / "m.pth",
                              format="onnx", out=tmp_path / "deploy", profile_from="val", profile_frames=3,
                              overrides=overrides)
    assert export_main(args) == 0
    out = capsys.readouterr().out
    assert "TensorRT compatibility: every node passes" in out and "wrote" in out
    assert (tmp_path / "deploy" / "profile.json").is_file() and "profile:" not in out

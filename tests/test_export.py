"""Deployment: ONNX export + onnxruntime parity, the index_add duplicate-index case, checkpoint converters,
TensorRT profiles (engines only where TensorRT and a GPU exist)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from pointwin.config import load_config
from pointwin.models import build_model
from pointwin.structures import Points
from tests.conftest import shared_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NUSCENES_FRAME = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
NUSCENES_SMALL = "nuscenes/n008-2018-09-18-12-07-26-0400__LIDAR_TOP__1537287083900561.pcd.bin"
# +-20.48 m (128 x 128 pillars): keeps the dense BEV half of the test time small
SMALL_RANGE = "model.point_cloud_range=[-20.48, -20.48, -3.0, 20.48, 20.48, 3.0]"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _nuscenes_points(relpath: str) -> Points:
    data = np.fromfile(shared_file(relpath), dtype=np.float32).reshape(-1, 5)
    pts = torch.from_numpy(data[:, :4].copy())
    return Points(pts, torch.zeros(len(pts), dtype=torch.long), 1)


def _model(config: str, overrides=()):
    torch.manual_seed(0)
    cfg = load_config(config, list(overrides))
    model = build_model(cfg["model"]).eval()
    # non-trivial BatchNorm statistics in the VFE / 3D backbone, so that eval-mode norms are not identities
    # (the head keeps its init: random statistics there saturate the heatmap into exact score ties)
    with torch.no_grad():
        for m in [*model.vfe.modules(), *model.backbone.modules()]:
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, cfg


# ------------------------------------------------------------------ index_add with repeated indices

class _IndexAdd(torch.nn.Module):
    def forward(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(4, src.shape[1], dtype=src.dtype).index_add_(0, index, src)


class _IndexPutAccumulate(torch.nn.Module):
    def forward(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(4, src.shape[1], dtype=src.dtype).index_put((index,), src, accumulate=True)


def _run_onnx(path, src, index):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"src": src.numpy(), "index": index.numpy()})[0]


@pytest.mark.parametrize("module", [_IndexAdd, _IndexPutAccumulate])
def test_index_add_repeated_indices_dynamo(module, tmp_path):
    src = torch.arange(12, dtype=torch.float32).view(6, 2)
    index = torch.tensor([0, 1, 1, 3, 3, 3])
    # hand-worked sums: row 1 = [2+4, 3+5], row 3 = [6+8+10, 7+9+11]
    expected = np.array([[0, 1], [6, 8], [0, 0], [24, 27]], dtype=np.float32)
    np.testing.assert_array_equal(module()(src, index).numpy(), expected)
    program = torch.onnx.export(module(), (src, index), dynamo=True, input_names=["src", "index"],
                                output_names=["out"], verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(_run_onnx(tmp_path / "m.onnx", src, index), expected)
    # a different index pattern through the same graph: the reduction is in the graph, not constant-folded
    index2 = torch.tensor([2, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(_run_onnx(tmp_path / "m.onnx", src, index2), module()(src, index2).numpy())


def test_legacy_exporter_overwrites_repeated_indices(tmp_path):
    """Why pointwin uses dynamo=True: the legacy TorchScript exporter turns index_put(accumulate=True) with
    repeated indices into a ScatterND overwrite (last write wins) and refuses index_add_ outright."""
    src = torch.arange(12, dtype=torch.float32).view(6, 2)
    index = torch.tensor([0, 1, 1, 3, 3, 3])
    path = tmp_path / "legacy.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_IndexPutAccumulate(), (src, index), str(path), dynamo=False,
                              input_names=["src", "index"], output_names=["out"], opset_version=17)
    except Exception as e:  # the legacy exporter is deprecated and may be gone
        pytest.skip(f"legacy exporter unavailable: {type(e).__name__}")
    got = _run_onnx(path, src, index)
    # last write wins: row 1 = src[2], row 3 = src[5]
    np.testing.assert_array_equal(got, np.array([[0, 1], [4, 5], [0, 0], [10, 11]], dtype=np.float32))


# ------------------------------------------------------------------ whole-detector export + parity

@pytest.fixture(scope="module")
def flatformer_export(tmp_path_factory):
    from pointwin.export.onnx import export_onnx
    from pointwin.export.runtime import OnnxDetector

    model, cfg = _model("configs/synthetic/flatformer_tiny.yaml", [SMALL_RANGE])
    points = _nuscenes_points(NUSCENES_FRAME)
    out = tmp_path_factory.mktemp("flatformer_onnx")
    result = export_onnx(model, points, out, model_cfg=cfg["model"])
    return model, cfg, result, OnnxDetector(out, detector=model)


def test_export_writes_graphs_and_meta(flatformer_export):
    import onnx

    model, _, result, runtime = flatformer_export
    meta = json.loads(result.meta.read_text())
    assert meta["format"] == "pointwin-deploy-1"
    # FlatFormer reads four partitions (x, x-shift, y, y-shift) and one sinusoidal position tensor
    kinds = [e["kind"] for e in meta["cache_entries"]]
    assert kinds == ["partition"] * 4 + ["tensor"]
    assert [e["size"] for e in meta["cache_entries"]] == [64, 64, 64, 64, 32]
    g1 = onnx.load(str(result.backbone))
    onnx.checker.check_model(g1)
    assert [i.name for i in g1.graph.input] == meta["backbone"]["inputs"]
    # dynamic dims are symbolic in the graph: points, voxels, groups
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g1.graph.input}
    assert isinstance(dims["point_feats"][0], str) and isinstance(dims["p0_index"][0], str)
    assert dims["p0_index"][1] == 64 and isinstance(dims["p0_owner"][0], str)
    g2 = onnx.load(str(result.head))
    assert [o.name for o in g2.graph.output] == meta["head"]["outputs"]
    assert meta["head"]["outputs"][:2] == ["task0.heatmap", "task0.center"]


def test_onnx_parity_real_nuscenes_frame(flatformer_export):
    from pointwin.export.onnx import TOLERANCES, parity_check

    model, _, result, runtime = flatformer_export
    points = _nuscenes_points(NUSCENES_FRAME)
    lines = []
    report = parity_check(model, result.out_dir, points, printer=lines.append, runtime=runtime)
    assert len(lines) == 3 and lines[0].startswith("voxel features: max abs")
    assert report.voxel_abs <= TOLERANCES["voxel_feats_atol"]
    assert report.head_abs <= TOLERANCES["head_atol"]
    assert report.num_unique > 0 and report.num_unmatched == 0
    assert report.box_abs <= TOLERANCES["box_atol"] and report.score_abs <= TOLERANCES["score_atol"]


def test_onnx_runtime_other_sizes(flatformer_export):
    """The graphs are dynamic: a 400-point sweep (fewer voxels than one group, repeated slots with key_pad)
    and a cropped frame run through the same files and match PyTorch."""
    from pointwin.export.onnx import parity_check
    from pointwin.export.runtime import OnnxDetector

    model, _, result, runtime = flatformer_export
    sweep = _nuscenes_points(NUSCENES_SMALL)
    small = Points(sweep.data[:80], sweep.batch_idx[:80], 1)
    rebuilt = OnnxDetector(result.out_dir)  # pre/post rebuilt from deploy.json's model config
    frame = rebuilt.preprocess(small)
    assert frame.num_voxels < 64 and bool(frame.cache_tensors[1].any())  # one padded group
    report = parity_check(model, result.out_dir, small, printer=lambda s: None, runtime=rebuilt)
    assert report.voxel_abs <= 1e-3 and report.head_abs <= 1e-3
    full = _nuscenes_points(NUSCENES_FRAME)
    near = full.data[:, :2].abs().max(1).values < 12
    cropped = Points(full.data[near], full.batch_idx[near], 1)
    report = parity_check(model, result.out_dir, cropped, printer=lambda s: None, runtime=runtime)
    assert report.failures() == []
    # the runtime's own detections equal the PyTorch detector's
    dets = runtime(cropped)[0]
    ref = model.head.predict(model.head(model.backbone_2d(model.scatter(model.backbone(model.vfe(cropped))))))[0]
    assert len(dets.scores) == len(ref.scores)
    torch.testing.assert_close(dets.scores.sort().values, ref.scores.sort().values, atol=1e-4, rtol=0)


def test_onnx_parity_fails_loudly(flatformer_export):
    from pointwin.export.onnx import ParityError, parity_check

    model, _, result, runtime = flatformer_export
    points = _nuscenes_points(NUSCENES_SMALL)
    other, _ = _model("configs/synthetic/flatformer_tiny.yaml", [SMALL_RANGE])
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.add_(0.05)
    with pytest.raises(ParityError, match="voxel features max abs"):
        parity_check(other, result.out_dir, points, printer=lambda s: None, runtime=runtime)


def test_dsvt_two_stage_export_parity(tmp_path):
    """DSVT with attention pooling between two stages: partitions of both stages and the pooling map are
    runtime inputs; the graph runs the pooling's maths on them."""
    from pointwin.export.onnx import export_onnx, parity_check

    model, cfg = _model("configs/synthetic/dsvt_pillar_tiny.yaml",
                        [SMALL_RANGE, "+model.backbone.downsample_stride=[[2, 2, 1]]"])
    points = _nuscenes_points(NUSCENES_FRAME)
    result = export_onnx(model, points, tmp_path, model_cfg=cfg["model"])
    meta = json.loads(result.meta.read_text())
    # per stage: two shifts x (y-major, x-major) sets of 36 and one window position (N, 2) per shift;
    # between the stages the 2 x 2 pooling map
    stage = [("partition", 36), ("partition", 36), ("tensor", 2)] * 2
    assert [(e["kind"], e["size"]) for e in meta["cache_entries"]] == stage + [("pooling", 4)] + stage
    assert [e["stage"] for e in meta["cache_entries"]] == [0] * 7 + [1] * 6
    n0, n1 = result.frame.stage_voxel_counts()
    assert n0 > n1 == result.frame.num_voxels > 0
    report = parity_check(model, tmp_path, points, printer=lambda s: None)
    assert report.failures() == [] and report.num_unique > 0


def test_unsupported_backbone_is_named():
    from pointwin.export.modules import Preprocessor

    model, _ = _model("configs/synthetic/flatformer_tiny.yaml")

    class CustomBackbone(torch.nn.Module):
        pass

    model.backbone = CustomBackbone()
    with pytest.raises(NotImplementedError, match="CustomBackbone is not exportable"):
        Preprocessor(model)


# ------------------------------------------------------------------ converters

@pytest.mark.parametrize("config,source", [("configs/synthetic/dsvt_pillar_tiny.yaml", "openpcdet"),
                                           ("configs/synthetic/flatformer_tiny.yaml", "mmdet3d")])
def test_converter_round_trip(config, source):
    from pointwin.export.converters import build_keymap, from_reference, to_reference

    model, _ = _model(config)
    state = model.state_dict()
    keymap = build_keymap(model, source)
    assert keymap.pointwin_only == []
    ref = to_reference(state, model, source)
    assert len(ref) == len(state)
    back = from_reference(ref, model, source)
    assert back.unmatched_reference == [] and back.missing_pointwin == [] and back.shape_mismatch == []
    assert set(back.state_dict) == set(state)
    for k, v in state.items():
        assert torch.equal(back.state_dict[k], v), k


def test_converter_reference_names():
    """Spot checks against the names in the reference checkpoints (OpenPCDet DSVT / CenterHead,
    FlatFormer-mmdet3d middle encoder, SECOND/SECONDFPN, mmdet3d CenterHead)."""
    from pointwin.export.converters import build_keymap

    dsvt, _ = _model("configs/synthetic/dsvt_pillar_tiny.yaml")
    m = build_keymap(dsvt, "openpcdet").to_reference
    assert m["backbone.stages.0.1.0.attn.qkv.weight"] == \
        "backbone_3d.stage_0.1.encoder_list.0.win_attn.self_attn.in_proj_weight"
    assert m["backbone.stages.0.0.1.ffn.fc2.bias"] == "backbone_3d.stage_0.0.encoder_list.1.win_attn.linear2.bias"
    assert m["backbone.pos_embed.0.1.0.mlp.3.weight"] == \
        "backbone_3d.input_layer.posembed_layers.0.1.0.position_embedding_head.3.weight"
    assert m["backbone.residual_norms.0.1.weight"] == "backbone_3d.residual_norm_stage_0.1.weight"
    assert m["vfe.layers.0.norm.running_var"] == "vfe.pfn_layers.0.norm.running_var"
    assert m["backbone_2d.blocks.0.0.0.weight"] == "backbone_2d.blocks.0.1.weight"  # index 0 is ZeroPad2d
    assert m["head.heads.0.branches.heatmap.3.bias"] == "dense_head.heads_list.0.hm.1.bias"
    assert m["head.heads.0.branches.center_z.1.weight"] == "dense_head.heads_list.0.center_z.0.1.weight"
    flat, _ = _model("configs/synthetic/flatformer_tiny.yaml")
    m = build_keymap(flat, "mmdet3d").to_reference
    assert m["backbone.layers.3.attn.qkv.weight"] == "pts_middle_encoder.block_list.0.block.3.attn.attn.in_proj_weight"
    assert m["backbone.layers.2.attn.proj.bias"] == "pts_middle_encoder.block_list.0.block.2.attn.attn.out_proj.bias"
    assert m["backbone.layers.1.ffn.fc1.weight"] == "pts_middle_encoder.block_list.0.block.1.fc1.weight"
    assert m["vfe.layers.0.linear.weight"] == "pts_voxel_encoder.vfe_layers.0.0.weight"
    assert m["backbone_2d.blocks.1.1.1.running_mean"] == "pts_backbone.blocks.1.4.running_mean"
    assert m["backbone_2d.deblocks.1.0.weight"] == "pts_neck.deblocks.1.0.weight"
    assert m["head.shared_conv.1.weight"] == "pts_bbox_head.shared_conv.bn.weight"
    assert m["head.heads.0.branches.center.0.weight"] == "pts_bbox_head.task_heads.0.reg.0.conv.weight"
    assert m["head.heads.0.branches.center_z.3.bias"] == "pts_bbox_head.task_heads.0.height.1.bias"


DSVT_OFFICIAL_FLAGS = ["+model.backbone.mix_shift_pos_embed=true", "+model.vfe.cell_dtype=float32",
                       "+model.head.rot_order=cos_sin"]


def test_load_openpcdet_checkpoint_file(tmp_path):
    """A checkpoint in OpenPCDet's layout ({'model_state': ...}) loads into a fresh model built with the
    official settings and reproduces the source model's outputs; a reference-only key makes the strict
    (default) load refuse, and the non-strict load lists it."""
    from pointwin.export.converters import ConversionError, load_reference_checkpoint, to_reference

    src, _ = _model("configs/synthetic/dsvt_pillar_tiny.yaml", DSVT_OFFICIAL_FLAGS)
    ref = to_reference(src.state_dict(), src, "openpcdet")
    assert "backbone_3d.stage_0.0.encoder_list.0.norm.weight" in ref  # DSVT_EncoderLayer.norm maps
    torch.save({"model_state": ref, "epoch": 24}, tmp_path / "dsvt.pth")
    torch.manual_seed(123)
    dst = build_model(load_config("configs/synthetic/dsvt_pillar_tiny.yaml", DSVT_OFFICIAL_FLAGS)["model"]).eval()
    result = load_reference_checkpoint(dst, tmp_path / "dsvt.pth", "openpcdet")
    assert result.clean
    points = _nuscenes_points(NUSCENES_SMALL)
    with torch.no_grad():
        torch.testing.assert_close(dst.backbone(dst.vfe(points)).feats, src.backbone(src.vfe(points)).feats)

    ref["backbone_3d.stage_0.0.encoder_list.0.extra_norm.weight"] = torch.ones(32)
    torch.save({"model_state": ref}, tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match="unmatched reference keys"):
        load_reference_checkpoint(dst, tmp_path / "extra.pth", "openpcdet")
    result = load_reference_checkpoint(dst, tmp_path / "extra.pth", "openpcdet", strict=False)
    assert result.unmatched_reference == ["backbone_3d.stage_0.0.encoder_list.0.extra_norm.weight"]
    assert "1 unmatched reference keys" in result.report()


@pytest.mark.parametrize("override,message", [
    ("model.backbone.mix_shift_pos_embed=false", "set model.backbone.mix_shift_pos_embed: true"),
    ("model.vfe.cell_dtype=float64", "set model.vfe.cell_dtype: float32"),
    ("model.head.rot_order=sin_cos", "set model.head.rot_order: cos_sin"),
    ("model.backbone_2d.block=basic", "set model.backbone_2d.block: conv"),
    ("+model.head.box_convention=mmdet3d_legacy", "set model.head.box_convention: pointwin"),
])
def test_openpcdet_checkpoint_refused_for_incompatible_settings(tmp_path, override, message):
    """Settings a state dict does not show are checked against what OpenPCDet always does: the load is
    refused (even non-strict), names the config change, and leaves the model untouched."""
    from pointwin.export.converters import ConversionError, load_reference_checkpoint, to_reference

    src, _ = _model("configs/synthetic/dsvt_pillar_tiny.yaml", DSVT_OFFICIAL_FLAGS)
    torch.save({"model_state": to_reference(src.state_dict(), src, "openpcdet")}, tmp_path / "dsvt.pth")
    dst = build_model(load_config("configs/synthetic/dsvt_pillar_tiny.yaml",
                                  [*DSVT_OFFICIAL_FLAGS, override])["model"]).eval()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(ConversionError, match=message.replace(".", r"\.")):
            load_reference_checkpoint(dst, tmp_path / "dsvt.pth", "openpcdet", strict=strict)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_mmdet3d_layouts_detected_and_round_trip():
    """Both mmdetection3d layouts: mainline CenterPoint (pts_ prefix, flat SECOND, vfe_layers.i.{0,1}) and the
    FlatFormer fork (no prefix, nested SECOND, vfe_layers.i.{linear,norm}); names spot-checked against the
    official FlatFormer checkpoint's keys (../shared/data/parity/flatformer_detector)."""
    from pointwin.export.converters import MMDet3DLayout, from_reference, to_reference

    model, _ = _model("configs/synthetic/flatformer_tiny.yaml")
    for layout in (MMDet3DLayout(), MMDet3DLayout.flatformer()):
        ref = to_reference(model.state_dict(), model, "mmdet3d", layout)
        assert MMDet3DLayout.detect(ref) == layout
        back = from_reference(ref, model, "mmdet3d")
        assert back.layout == layout and not back.unmatched_reference and not back.missing_pointwin
    ref = to_reference(model.state_dict(), model, "mmdet3d", MMDet3DLayout.flatformer())
    assert "voxel_encoder.vfe_layers.0.linear.weight" in ref
    assert "backbone.blocks.1.1.0.weight" in ref and "backbone.blocks.1.1.1.running_mean" in ref
    assert "bbox_head.shared_conv.bn.weight" in ref and "bbox_head.task_heads.0.reg.1.bias" in ref
    ref = to_reference(model.state_dict(), model, "mmdet3d", MMDet3DLayout())
    assert "pts_voxel_encoder.vfe_layers.0.0.weight" in ref and "pts_backbone.blocks.1.4.running_mean" in ref


def test_mmdet3d_flatformer_fork_needs_residual_second():
    """The FlatFormer fork's SECOND adds skips (residual=True in all its configs), which keys cannot show."""
    from pointwin.export.converters import MMDet3DLayout, compatibility_problems, to_reference

    model, _ = _model("configs/synthetic/flatformer_tiny.yaml", ["+model.vfe.cell_dtype=float32"])
    fork = to_reference(model.state_dict(), model, "mmdet3d", MMDet3DLayout.flatformer())
    mainline = to_reference(model.state_dict(), model, "mmdet3d", MMDet3DLayout())
    assert compatibility_problems(model, "mmdet3d", mainline) == []
    problems = compatibility_problems(model, "mmdet3d", fork)
    assert any("set model.backbone_2d.block: conv_skip" in p for p in problems)
    assert any("set model.head.box_convention: mmdet3d_legacy" in p for p in problems)  # the fork is mmdet3d 0.15


# ------------------------------------------------------------------ TensorRT

def test_profile_summary_hand_worked():
    from pointwin.export.tensorrt import summarize

    samples = [{"num_voxels": n, "p0_groups": g} for n, g in [(100, 3), (300, 9), (200, 5), (1000, 20)]]
    s = summarize(samples, headroom=1.25)
    # median of 100, 200, 300, 1000 = 250; max 1000 * 1.25 = 1250; groups median (5 + 9) / 2 = 7
    assert s["num_voxels"] == {"min": 2, "opt": 250, "max": 1250}
    assert s["p0_groups"] == {"min": 1, "opt": 7, "max": 25}
    assert summarize(samples, 1.25, min_from_data=True)["num_voxels"]["min"] == 100


def test_profile_input_shapes(flatformer_export):
    from pointwin.export.runtime import load_meta
    from pointwin.export.tensorrt import collect_profile, input_shapes

    model, _, result, runtime = flatformer_export
    clouds = [_nuscenes_points(NUSCENES_FRAME), _nuscenes_points(NUSCENES_SMALL)]
    profile = collect_profile(model, clouds, headroom=1.5)
    assert profile["frames"] == 2
    shapes = input_shapes(load_meta(result.out_dir), profile)
    n_max = profile["dims"]["num_voxels"]["max"]
    assert shapes["backbone"]["point_feats"][2] == (profile["dims"]["num_points"]["max"], 10)
    assert shapes["backbone"]["p2_index"][1] == (profile["dims"]["p2_groups"]["opt"], 64)
    assert shapes["backbone"]["t4_value"][2] == (n_max, 32)
    assert shapes["head"]["voxel_coords"][0] == (2, 4)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is missing")
def test_tensorrt_missing_says_what_to_install(capsys):
    from pointwin.export import EXIT_UNAVAILABLE, export_main

    args = argparse.Namespace(config="configs/synthetic/flatformer_tiny.yaml", ckpt="unused.pth",
                              format="tensorrt", out="unused", profile_from="val", overrides=[])
    assert export_main(args) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "pip install tensorrt" in err and "NVIDIA GPU" in err


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs TensorRT and an NVIDIA GPU")
def test_tensorrt_engine_matches_pytorch(flatformer_export):
    from pointwin.export.tensorrt import TensorRTGraph, build_engines, collect_profile

    model, _, result, runtime = flatformer_export
    points = _nuscenes_points(NUSCENES_FRAME)
    profile = collect_profile(model, [points, _nuscenes_points(NUSCENES_SMALL)])
    plans = build_engines(result.out_dir, profile, fp16=True)
    frame = result.frame
    meta = json.loads(result.meta.read_text())
    g1 = TensorRTGraph(plans["backbone"])
    feed = dict(zip(meta["backbone"]["inputs"], frame.backbone_inputs(), strict=True))
    voxel = g1(feed)["voxel_feats"].float().cpu()
    with torch.no_grad():
        ref = model.backbone(model.vfe(points)).feats
    assert float((voxel - ref).abs().max()) < 5e-2  # fp16
    g2 = TensorRTGraph(plans["head"])
    maps = g2({"voxel_feats": voxel, "voxel_coords": frame.coords.long()})
    assert set(maps) == set(meta["head"]["outputs"])
    from pointwin.export.tensorrt import TensorRTDetector

    _, voxel2, _ = TensorRTDetector(result.out_dir, detector=model).run_graphs(points)
    assert float((voxel2.cpu() - ref).abs().max()) < 5e-2


def test_partial_checkpoint_checks_only_the_parts_it_holds(tmp_path):
    """An official nuScenes DSVT checkpoint ends in a TransFusion head: the CenterPoint head's settings are
    not judged by it (its keys are simply missing / unmatched, which --allow-partial accepts)."""
    from pointwin.export.converters import compatibility_problems, load_reference_checkpoint, to_reference

    src, _ = _model("configs/synthetic/dsvt_pillar_tiny.yaml", DSVT_OFFICIAL_FLAGS)
    ref = {k: v for k, v in to_reference(src.state_dict(), src, "openpcdet").items()
           if not k.startswith("dense_head.")}
    ref["dense_head.decoder.0.self_attn.in_proj_weight"] = torch.zeros(96, 32)  # a TransFusion-style key
    dst, _ = _model("configs/synthetic/dsvt_pillar_tiny.yaml", DSVT_OFFICIAL_FLAGS[:2])  # head: sin_cos
    assert compatibility_problems(dst, "openpcdet", ref) == []
    assert any("rot_order" in p for p in compatibility_problems(dst, "openpcdet"))  # no keys: all checked
    torch.save({"model_state": ref}, tmp_path / "nusc.pth")
    result = load_reference_checkpoint(dst, tmp_path / "nusc.pth", "openpcdet", strict=False)
    assert result.unmatched_reference == ["dense_head.decoder.0.self_attn.in_proj_weight"]
    assert result.missing_pointwin and all(k.startswith("head.") for k in result.missing_pointwin)


def test_onnx_runtime_takes_numpy_and_paths(flatformer_export, tmp_path):
    """OnnxDetector accepts what pointwin.load_detector's predict accepts: an (N, C) array, a tensor, a path;
    its numpy result equals the PyTorch model's on the same cloud (same top boxes)."""
    import pointwin.api as api

    model, cfg, _, runtime = flatformer_export
    path = shared_file(NUSCENES_FRAME)
    array = np.fromfile(path, dtype=np.float32).reshape(-1, 5)[:, :model.vfe.num_point_features]
    np.save(tmp_path / "cloud.npy", array)
    from_path = runtime.predict(tmp_path / "cloud.npy")
    from_array = runtime.predict(array)
    from_tensor = runtime.predict(torch.from_numpy(array))
    np.testing.assert_array_equal(from_array.scores, from_tensor.scores)
    np.testing.assert_array_equal(from_path.scores, from_array.scores)
    torch_result = api.Predictor(model, {"model": cfg["model"]}, torch.device("cpu"), "memory").predict(array)
    k = min(10, len(torch_result))
    np.testing.assert_allclose(from_array.scores[:k], torch_result.scores[:k], atol=1e-4)
    np.testing.assert_allclose(from_array.boxes[:k], torch_result.boxes[:k], atol=1e-3)
    with pytest.raises(ValueError, match=r"expected \(N, >= 4\) points"):
        runtime.predict(array[:, :3])

"""Checkpoint converters: OpenPCDet (DSVT) and mmdetection3d (FlatFormer / CenterPoint) state dicts.

The key map is explicit: for every parameter/buffer of a pointwin detector one rule below gives the name
the reference framework uses for the same tensor (names are facts of those frameworks' checkpoints:
OpenPCDet ``pcdet/models/backbones_3d/dsvt.py``, ``vfe/dynamic_pillar_vfe.py``,
``backbones_2d/base_bev_backbone.py`` / ``base_bev_res_backbone.py``, ``dense_heads/center_head.py``;
mmdetection3d ``DynamicVFE``, ``SECOND``, ``SECONDFPN``, ``CenterHead`` / ``SeparateHead`` and FlatFormer's
``middle_encoders/flatformer.py``). Tensors are copied unchanged (the layouts agree: e.g. pointwin's fused
``qkv`` Linear is ``nn.MultiheadAttention.in_proj_weight`` in q, k, v order).

mmdetection3d checkpoints come in two layouts, detected from the keys (:class:`MMDet3DLayout`):

* mainline CenterPoint (``MVXTwoStageDetector``): ``pts_`` prefixes, ``DynamicVFE`` layers as
  ``vfe_layers.i.{0,1}`` (Linear, BN), ``SECOND`` levels flat (``blocks.i.{3j + k}``);
* the FlatFormer code's single-stage ``DynamicCenterPoint``: no prefix, ``vfe_layers.i.{linear,norm}``,
  ``SECOND`` levels nested (``blocks.i.j.{0,1}``).

A converted model only reproduces the reference if it is built the way the reference computes. Some of
those settings are invisible in a state dict (e.g. DSVT's position-embedding mix-up); for each source the
converter knows what the reference always does and refuses a model that does otherwise, naming the config
key to change (:func:`compatibility_problems`). Shapes are checked tensor by tensor.

Usage (or ``pointwin convert --from openpcdet CKPT --config CONFIG --out OUT.pth``)::

    result = load_reference_checkpoint(model, "dsvt.pth", source="openpcdet")
    print(result.report())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PointwinError
from ._seg_rules import (
    XYZ_INDEX_SOURCES,
    problems_pointcept,
    problems_sphereformer,
    rules_pointcept,
    rules_sphereformer,
)

SOURCES = ("openpcdet", "mmdet3d", "pointcept", "sphereformer")

#: key rules and setting checks of the segmentation sources (Pointcept PTv3, official SphereFormer)
_SEG_RULES = {"pointcept": rules_pointcept, "sphereformer": rules_sphereformer}
_SEG_PROBLEMS = {"pointcept": problems_pointcept, "sphereformer": problems_sphereformer}

#: reference keys that carry no model tensor of pointwin's (training counters)
IGNORED_REFERENCE_SUFFIXES = ("num_batches_tracked", "global_step")

Rule = tuple[str, Callable[[re.Match], str]]


@dataclass(frozen=True)
class MMDet3DLayout:
    """Key layout of an mmdetection3d detector checkpoint.

    Attributes:
        prefix: ``"pts_"`` (mainline ``MVXTwoStageDetector`` CenterPoint) or ``""`` (single-stage detectors,
            e.g. the FlatFormer code's ``DynamicCenterPoint``).
        vfe_names: sub-names of the Linear and BatchNorm of a ``DynamicVFE`` layer: ``("0", "1")`` (an
            ``nn.Sequential``, mainline) or ``("linear", "norm")`` (FlatFormer's ``DynamicVFELayer``).
        nested_second: ``SECOND`` levels as lists of conv-BN-ReLU Sequentials (``blocks.i.j.{0,1}``,
            FlatFormer) instead of one flat Sequential (``blocks.i.{3j + k}``, mainline).
    """

    prefix: str = "pts_"
    vfe_names: tuple[str, str] = ("0", "1")
    nested_second: bool = False

    @property
    def name(self) -> str:
        return "mainline CenterPoint (pts_ prefix)" if self.prefix else "FlatFormer single-stage (no prefix)"

    @classmethod
    def flatformer(cls) -> MMDet3DLayout:
        return cls("", ("linear", "norm"), True)

    @classmethod
    def detect(cls, keys) -> MMDet3DLayout:
        """The layout of a checkpoint from its keys (mainline when nothing tells)."""
        keys = list(keys)
        prefix = "pts_" if any(k.startswith("pts_") for k in keys) else ""
        vfe = ("linear", "norm") if any(re.search(r"vfe_layers\.\d+\.linear\.", k) for k in keys) else ("0", "1")
        nested = any(re.match(rf"{prefix}backbone\.blocks\.\d+\.\d+\.\d+\.", k) for k in keys)
        return cls(prefix, vfe, nested)


def _rules_openpcdet(model: nn.Module) -> list[Rule]:
    head_conv = _head_num_conv(model)

    def head(m: re.Match) -> str:
        t, name, idx, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        name = "hm" if name == "heatmap" else name
        if idx == 3 * (head_conv - 1):  # final conv
            return f"dense_head.heads_list.{t}.{name}.{head_conv - 1}.{rest}"
        k, sub = divmod(idx, 3)
        return f"dense_head.heads_list.{t}.{name}.{k}.{sub}.{rest}"

    def bev_block(m: re.Match) -> str:
        i, k, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        return f"backbone_2d.blocks.{i}.{1 + 3 * k + sub}.{rest}"  # after the ZeroPad2d at index 0

    attn = r"backbone\.stages\.(\d+)\.(\d+)\.(\d+)\."
    enc = "backbone_3d.stage_{0}.{1}.encoder_list.{2}.win_attn."
    rules: list[Rule] = [
        (r"vfe\.layers\.(\d+)\.(linear|norm)\.(.+)", lambda m: f"vfe.pfn_layers.{m[1]}.{m[2]}.{m[3]}"),
        (attn + r"attn\.qkv\.(weight|bias)", lambda m: enc.format(m[1], m[2], m[3]) + f"self_attn.in_proj_{m[4]}"),
        (attn + r"attn\.proj\.(.+)", lambda m: enc.format(m[1], m[2], m[3]) + f"self_attn.out_proj.{m[4]}"),
        (attn + r"ffn\.fc([12])\.(.+)", lambda m: enc.format(m[1], m[2], m[3]) + f"linear{m[4]}.{m[5]}"),
        (attn + r"(norm[12])\.(.+)", lambda m: enc.format(m[1], m[2], m[3]) + f"{m[4]}.{m[5]}"),
        # DSVT_EncoderLayer's own LayerNorm around the set attention (outside win_attn)
        (attn + r"norm_out\.(.+)", lambda m: f"backbone_3d.stage_{m[1]}.{m[2]}.encoder_list.{m[3]}.norm.{m[4]}"),
        (r"backbone\.pos_embed\.(\d+)\.(\d+)\.(\d+)\.mlp\.(.+)",
         lambda m: f"backbone_3d.input_layer.posembed_layers.{m[1]}.{m[2]}.{m[3]}.position_embedding_head.{m[4]}"),
        (r"backbone\.residual_norms\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"backbone_3d.residual_norm_stage_{m[1]}.{m[2]}.{m[3]}"),
        (r"backbone\.pools\.(\d+)\.pool\.attn\.(.+)", lambda m: f"backbone_3d.stage_{m[1]}_reduction.self_attn.{m[2]}"),
        (r"backbone\.pools\.(\d+)\.pool\.(norm\..+|pos_embedding)",
         lambda m: f"backbone_3d.stage_{m[1]}_reduction.{m[2]}"),
        (r"backbone_2d\.deblocks\.(\d+)\.([01])\.(.+)", lambda m: f"backbone_2d.deblocks.{m[1]}.{m[2]}.{m[3]}"),
        (r"head\.shared_conv\.([01])\.(.+)", lambda m: f"dense_head.shared_conv.{m[1]}.{m[2]}"),
        (r"head\.heads\.(\d+)\.branches\.(\w+)\.(\d+)\.(.+)", head),
        # BaseBEVResBackbone (basic blocks) ...
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.(conv[12]|bn[12])\.(.+)",
         lambda m: f"backbone_2d.blocks.{m[1]}.{m[2]}.{m[3]}.{m[4]}"),
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.skip\.([01])\.(.+)",
         lambda m: f"backbone_2d.blocks.{m[1]}.{m[2]}.downsample_layer.{m[3]}.{m[4]}"),
        # ... or BaseBEVBackbone (conv-BN-ReLU layers behind a ZeroPad2d)
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.([01])\.(.+)", bev_block),
    ]
    if type(getattr(model, "backbone", None)).__name__ == "ScatterFormer":
        rules = _rules_scatterformer(len(model.backbone.stem.blocks)) + rules
    return rules


def _rules_scatterformer(stem_blocks: int) -> list[Rule]:
    """The official ScatterFormer backbone (``pcdet/models/backbones_3d/scatterformer.py``): ``cpe`` stem
    (``0`` = subm conv + BN, ``1..3`` = ``SparseBasicBlock``, ``4`` = z-stride conv + BN), ``stage{s+1}`` =
    (``ScatterFormerLayer3x``, BN[, stride-2 conv]), ``app`` = ``AttnPillarPool``. Layer ``i`` of a stage is
    spread over ``norm_layers.i`` / ``attn_layers.i`` / ``cffn_layers.i``; the CWI's ``conv_k``, ``conv_h``
    (along x) and ``conv_w`` (along y) are pointwin's ``conv_local``, ``conv_x`` and ``conv_y``."""
    stage = r"backbone\.stages\.(\d+)\."
    layer = stage + r"layers\.(\d+)\."

    def ref_layer(m: re.Match, what: str) -> str:
        return f"backbone_3d.stage{int(m[1]) + 1}.0.{what}.{m[2]}."

    cwi = {"norm": "bn", "conv_local": "conv_k", "conv_x": "conv_h", "conv_y": "conv_w"}
    blocks = {"conv1": "conv1", "norm1": "bn1", "conv2": "conv2", "norm2": "bn2"}
    return [
        (r"backbone\.stem\.conv_in\.(.+)", lambda m: f"backbone_3d.cpe.0.0.{m[1]}"),
        (r"backbone\.stem\.norm_in\.(.+)", lambda m: f"backbone_3d.cpe.0.1.{m[1]}"),
        (r"backbone\.stem\.blocks\.(\d+)\.(conv[12]|norm[12])\.(.+)",
         lambda m: f"backbone_3d.cpe.{int(m[1]) + 1}.{blocks[m[2]]}.{m[3]}"),
        # the z-stride conv follows the residual blocks
        (r"backbone\.stem\.down\.(.+)", lambda m: f"backbone_3d.cpe.{stem_blocks + 1}.0.{m[1]}"),
        (r"backbone\.stem\.norm_down\.(.+)", lambda m: f"backbone_3d.cpe.{stem_blocks + 1}.1.{m[1]}"),
        (layer + r"norm_attn\.(.+)", lambda m: ref_layer(m, "norm_layers") + m[3]),
        (layer + r"attn\.(qkv|proj)\.(.+)", lambda m: ref_layer(m, "attn_layers") + f"{m[3]}.{m[4]}"),
        (layer + r"cwi\.(norm|conv_local|conv_x|conv_y)\.(.+)",
         lambda m: ref_layer(m, "cffn_layers") + f"{cwi[m[3]]}.{m[4]}"),
        (layer + r"norm_ffn\.(.+)", lambda m: ref_layer(m, "cffn_layers") + f"bn2.{m[3]}"),
        (layer + r"ffn\.(fc[12])\.(.+)", lambda m: ref_layer(m, "cffn_layers") + f"{m[3]}.{m[4]}"),
        (stage + r"norm\.(.+)", lambda m: f"backbone_3d.stage{int(m[1]) + 1}.1.{m[2]}"),
        (stage + r"down\.(.+)", lambda m: f"backbone_3d.stage{int(m[1]) + 1}.2.{m[2]}"),
        (r"backbone\.height_pool\.attn\.(.+)", lambda m: f"backbone_3d.app.self_attn.{m[1]}"),
        (r"backbone\.height_pool\.norm\.(.+)", lambda m: f"backbone_3d.app.norm.{m[1]}"),
        (r"backbone\.height_pool\.pos_embedding", lambda m: "backbone_3d.app.pos_embedding.weight"),
    ]


def _rules_mmdet3d(model: nn.Module, layout: MMDet3DLayout) -> list[Rule]:
    head_conv = _head_num_conv(model)
    p = layout.prefix
    branch = {"heatmap": "heatmap", "center": "reg", "center_z": "height", "dim": "dim", "rot": "rot", "vel": "vel",
              "iou": "iou"}

    def head(m: re.Match) -> str:
        t, name, idx, rest = m.group(1), branch[m.group(2)], int(m.group(3)), m.group(4)
        if idx == 3 * (head_conv - 1):
            return f"{p}bbox_head.task_heads.{t}.{name}.{head_conv - 1}.{rest}"
        k, sub = divmod(idx, 3)
        return f"{p}bbox_head.task_heads.{t}.{name}.{k}.{('conv', 'bn')[sub]}.{rest}"

    def flat_layer(m: re.Match) -> str:
        layer, rest = int(m.group(1)), m.group(2)
        fused = {"attn.qkv.weight": "attn.attn.in_proj_weight", "attn.qkv.bias": "attn.attn.in_proj_bias"}
        rest = fused.get(rest, rest)
        rest = re.sub(r"^attn\.proj\.", "attn.attn.out_proj.", rest)
        rest = re.sub(r"^ffn\.", "", rest)
        return f"{p}middle_encoder.block_list.{layer // 4}.block.{layer % 4}.{rest}"

    def second(m: re.Match) -> str:
        level, j, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        inner = f"{j}.{sub}" if layout.nested_second else f"{3 * j + sub}"
        return f"{p}backbone.blocks.{level}.{inner}.{rest}"

    lin, norm = layout.vfe_names
    return [
        (r"vfe\.layers\.(\d+)\.linear\.(.+)", lambda m: f"{p}voxel_encoder.vfe_layers.{m[1]}.{lin}.{m[2]}"),
        (r"vfe\.layers\.(\d+)\.norm\.(.+)", lambda m: f"{p}voxel_encoder.vfe_layers.{m[1]}.{norm}.{m[2]}"),
        (r"backbone\.layers\.(\d+)\.((?:attn\.(?:qkv|proj)|ffn\.fc[12]|norm[12])\..+)", flat_layer),
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.([01])\.(.+)", second),
        (r"backbone_2d\.deblocks\.(\d+)\.([01])\.(.+)", lambda m: f"{p}neck.deblocks.{m[1]}.{m[2]}.{m[3]}"),
        (r"head\.shared_conv\.([01])\.(.+)", lambda m: f"{p}bbox_head.shared_conv.{('conv', 'bn')[int(m[1])]}.{m[2]}"),
        (r"head\.heads\.(\d+)\.branches\.(\w+)\.(\d+)\.(.+)", head),
    ]


def _sparse_conv_kinds(model: nn.Module) -> dict[str, str]:
    """pointwin key -> ``"depthwise"`` or ``"dense"`` for the weight of every sparse conv of ``model``."""
    from ..ops.sparse_conv import _SparseConvBase

    return {f"{name}.weight" if name else "weight": "depthwise" if m.depthwise else "dense"
            for name, m in model.named_modules() if isinstance(m, _SparseConvBase)}


def _sparse_weight_from_reference(value: torch.Tensor, own_shape: tuple, kind: str, source: str
                                  ) -> tuple[torch.Tensor, str] | None:
    """A reference sparse conv weight in pointwin's layout ``(C_out, kz, ky, kx, C_in)`` (depthwise:
    ``(C, kz, ky, kx, 1)``), with a note on the layout read, or None when no known layout fits.

    Known layouts: spconv 2.x ``(C_out, kz, ky, kx, C_in)`` (pointwin's own, copied), spconv 1.x
    ``(kz, ky, kx, C_in, C_out)``, and (OpenPCDet, depthwise) the ScatterFormer ``SparseDwConv``
    ``(kz, ky, kx, C)``.
    """
    if source in XYZ_INDEX_SOURCES and kind == "dense" and value.dim() == 5:
        out = value.permute(0, 3, 2, 1, 4)  # spconv on (b, x, y, z) indices: kernel axes (kx, ky, kz)
        if tuple(out.shape) != tuple(own_shape):
            return None
        return out.contiguous(), "spconv on (b, x, y, z) rows: (C_out, kx, ky, kz, C_in) -> (C_out, kz, ky, kx, C_in)"
    if tuple(value.shape) == tuple(own_shape):
        return None
    if kind == "depthwise" and source == "openpcdet" and value.dim() == 4:
        out = value.permute(3, 0, 1, 2).unsqueeze(-1)
        if tuple(out.shape) == tuple(own_shape):
            return out.contiguous(), "SparseDwConv (kz, ky, kx, C) -> (C, kz, ky, kx, 1)"
    if kind == "dense" and value.dim() == 5:
        out = value.permute(4, 0, 1, 2, 3)
        if tuple(out.shape) == tuple(own_shape):
            return out.contiguous(), "spconv 1.x (kz, ky, kx, C_in, C_out) -> (C_out, kz, ky, kx, C_in)"
    return None


def _sparse_weight_to_reference(value: torch.Tensor, kind: str, source: str) -> torch.Tensor:
    """Inverse of :func:`_sparse_weight_from_reference` for the layout the reference code uses (spconv 2.x
    for dense convs, ``SparseDwConv`` for OpenPCDet depthwise convs)."""
    if kind == "depthwise" and source == "openpcdet":
        return value[..., 0].permute(1, 2, 3, 0).contiguous()
    if kind == "dense" and source in XYZ_INDEX_SOURCES:
        return value.permute(0, 3, 2, 1, 4).contiguous()
    return value


def _head_num_conv(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "heads"):
        return 2
    seq = next(iter(head.heads[0].branches.values()))
    return (len(seq) - 1) // 3 + 1


@dataclass
class KeyMap:
    """pointwin key -> reference key for one model and source, plus the pointwin keys no rule covers."""

    source: str
    to_reference: dict[str, str]
    pointwin_only: list[str] = field(default_factory=list)

    @property
    def to_pointwin(self) -> dict[str, str]:
        return {v: k for k, v in self.to_reference.items()}

    def lines(self) -> list[str]:
        return [f"{k} -> {v}" for k, v in self.to_reference.items()] + [f"{k} -> (none)" for k in self.pointwin_only]


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; valid: {list(SOURCES)}")


def build_keymap(model: nn.Module, source: str, layout: MMDet3DLayout | None = None) -> KeyMap:
    """The explicit key map of ``model`` (a pointwin Detector) for checkpoints of ``source``.

    ``layout`` applies to ``mmdet3d`` only (default: the mainline layout).
    """
    _check_source(source)
    if source in _SEG_RULES:
        rules = _SEG_RULES[source](model)
    else:
        rules = (_rules_openpcdet(model) if source == "openpcdet"
                 else _rules_mmdet3d(model, layout or MMDet3DLayout()))
    compiled = [(re.compile(p + r"$"), f) for p, f in rules]
    mapping, only = {}, []
    for key in model.state_dict():
        for pattern, fn in compiled:
            m = pattern.match(key)
            if m:
                mapping[key] = fn(m)
                break
        else:
            only.append(key)
    if len(set(mapping.values())) != len(mapping):
        raise RuntimeError(f"{source} key map is not one-to-one for this model (a rule maps two keys to one name)")
    return KeyMap(source, mapping, only)


# ---------------------------------------------------------------- compatibility of the model's settings
def _setting(module: nn.Module | None, name: str, default=None):
    return getattr(module, name, default) if module is not None else default


def compatibility_problems(model: nn.Module, source: str, reference_keys=()) -> list[str]:
    """Settings of ``model`` with which a checkpoint of ``source`` cannot give the reference's numbers.

    Each entry names the setting, what the reference does, and the config change that fixes it. Settings
    that a state dict shows (layer widths, which branches exist) are checked by the key and shape
    comparison instead; these are the ones it does not show. A part is checked only when
    ``reference_keys`` hold weights for it (a checkpoint whose head is of another kind says nothing about
    the head's settings); with no keys given, every part is checked.
    """
    _check_source(source)
    keys = list(reference_keys)

    def has(pattern: str) -> bool:
        return not keys or any(re.search(pattern, k) for k in keys)

    if source in _SEG_PROBLEMS:
        return _SEG_PROBLEMS[source](model, has)
    problems = []
    vfe = getattr(model, "vfe", None)
    if vfe is not None and has(r"(^vfe\.|voxel_encoder\.)") and _setting(vfe, "cell_dtype", "float32") != "float32":
        problems.append("model.vfe.cell_dtype is 'float64'; OpenPCDet and mmdetection3d assign points to cells in "
                        "float32 (a few border points change voxel otherwise): set model.vfe.cell_dtype: float32")
    backbone = getattr(model, "backbone", None)
    if source == "openpcdet" and type(backbone).__name__ == "DSVT" and has(r"^backbone_3d\."):
        if not _setting(backbone, "mix_shift_pos_embed", False):
            problems.append("model.backbone.mix_shift_pos_embed is false; the official DSVT feeds layer i of every "
                            "block the position embedding of shift i: set model.backbone.mix_shift_pos_embed: true")
        if _setting(backbone, "shift_counter", "global") != "global":
            problems.append("model.backbone.shift_counter is not 'global'; the official DSVT alternates the shift "
                            "over the blocks of the whole backbone: set model.backbone.shift_counter: global")
        if len(getattr(backbone, "pools", ())) and _setting(backbone, "pool_mode", "reference") != "reference":
            problems.append("model.backbone.pool_mode is not 'reference'; the official DSVT pools with zero-filled "
                            "slots, a max over all of them and the slot embedding on the keys only: set "
                            "model.backbone.pool_mode: reference")
    if source == "openpcdet" and type(backbone).__name__ == "ScatterFormer" and has(r"^backbone_3d\.(cpe|stage1)\."):
        # (setting, official value, why); the CWI kernel (window + 1) and the widths show in the shapes
        wanted = [("num_heads", 4, "the official SLALayer has 4 heads"),
                  ("window", _setting(backbone, "cwi_kernel", 1) - 1,
                   "the official window is the CWI kernel - 1 (conv_size = WIN_SIZE + 1)"),
                  ("z_pad", 1, "the official sparse_shape adds one z slice (grid_size[::-1] + [1, 0, 0])"),
                  ("pool_mode", "scatterformer", "the official AttnPillarPool starts its max query from 0 and "
                   "adds the slot embedding to the keys only"),
                  ("pool_heads", 8, "the official AttnPillarPool has 8 heads")]
        for name, value, why in wanted:
            own = _setting(backbone, name, value)
            if own != value:
                problems.append(f"model.backbone.{name} is {own!r}; {why}: set model.backbone.{name}: {value!r}")
    bev = getattr(model, "backbone_2d", None)
    block = _setting(bev, "block")
    if block is not None:
        if source == "openpcdet":
            if any(re.match(r"backbone_2d\.blocks\.\d+\.\d+\.conv1\.", k) for k in keys):
                expected, what = "basic", "BaseBEVResBackbone (ResNet basic blocks)"
            elif any(re.match(r"backbone_2d\.blocks\.\d+\.\d+\.weight", k) for k in keys):
                expected, what = "conv", "BaseBEVBackbone (conv-BN-ReLU layers)"
            else:
                expected = None
        else:
            layout = MMDet3DLayout.detect(keys)
            if any(re.match(rf"{layout.prefix}backbone\.blocks\.", k) for k in keys):
                # every released FlatFormer config builds SECOND(residual=True); mainline SECOND has no skips
                expected, what = (("conv_skip", "the FlatFormer code's SECOND(residual=True)") if layout.nested_second
                                  else ("conv", "mmdetection3d's SECOND"))
            else:
                expected = None
        if expected is not None and block != expected:
            problems.append(f"model.backbone_2d.block is {block!r} but the checkpoint's 2D backbone is {what}: "
                            f"set model.backbone_2d.block: {expected}")
    head = getattr(model, "head", None)
    center_head_keys = has(r"(dense_head\.heads_list|bbox_head\.task_heads)\.")
    if head is not None and _setting(head, "rot_order") is not None and center_head_keys:
        # what each framework's CenterHead regresses: (setting, value, why)
        if source == "openpcdet":
            wanted = [("rot_order", "cos_sin", "OpenPCDet's CenterHead regresses (cos, sin) yaw"),
                      ("box_convention", "pointwin", "OpenPCDet's boxes are (dx, dy, dz, yaw) as pointwin's"),
                      ("iou_range", "signed", "OpenPCDet's IoU branch predicts 2 IoU - 1")]
        else:
            wanted = [("rot_order", "sin_cos", "mmdetection3d's CenterHead regresses (sin, cos) yaw")]
            if MMDet3DLayout.detect(keys).nested_second:
                wanted += [("box_convention", "mmdet3d_legacy", "the FlatFormer code is mmdetection3d 0.15, whose "
                            "boxes are (dy, dx, dz) with angle -yaw - pi/2"),
                           ("iou_range", "unit", "the FlatFormer code's IoU branch predicts IoU in [0, 1]")]
        for name, value, why in wanted:
            if name == "iou_range" and not _setting(head, "with_iou", False):
                continue
            own = _setting(head, name, value)
            if own != value:
                problems.append(f"model.head.{name} is {own!r}; {why}: set model.head.{name}: {value}")
    return problems


# ---------------------------------------------------------------- conversion
@dataclass
class ConversionResult:
    """A reference state dict renamed to pointwin names.

    Attributes:
        state_dict: pointwin key -> tensor, for every key the reference provided with the right shape.
        unmatched_reference: reference keys with no pointwin counterpart (not loaded).
        missing_pointwin: pointwin keys the reference did not provide (left at their init).
        shape_mismatch: (pointwin key, reference key, reference shape, pointwin shape) of tensors not loaded.
        incompatible: model settings with which the reference numbers cannot be reproduced
            (:func:`compatibility_problems`).
        ignored: reference keys skipped on purpose (training counters such as ``num_batches_tracked``).
        layout: the mmdetection3d key layout used, or None.
        relaid: ``"pointwin key <- reference key: layout change"`` for every tensor whose layout was converted
            (sparse conv weights stored in another axis order).
    """

    state_dict: dict[str, torch.Tensor]
    unmatched_reference: list[str]
    missing_pointwin: list[str]
    shape_mismatch: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    layout: MMDet3DLayout | None = None
    relaid: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every reference tensor loaded, every pointwin tensor provided, every setting compatible."""
        return not (self.unmatched_reference or self.missing_pointwin or self.shape_mismatch or self.incompatible)

    def report(self) -> str:
        lines = [f"converted {len(self.state_dict)} tensors, {len(self.unmatched_reference)} unmatched reference "
                 f"keys, {len(self.missing_pointwin)} missing pointwin keys, {len(self.shape_mismatch)} shape "
                 f"mismatches, {len(self.incompatible)} incompatible settings"
                 + (f", {len(self.ignored)} counters ignored" if self.ignored else "")]
        if self.layout is not None:
            lines.append(f"mmdetection3d layout: {self.layout.name}")
        if self.relaid:
            lines.append(f"layouts converted ({len(self.relaid)}):")
            lines += [f"  {k}" for k in self.relaid]
        for text in self.incompatible:
            lines.append(f"incompatible setting: {text}")
        if self.unmatched_reference:
            lines.append(f"unmatched reference keys ({len(self.unmatched_reference)}):")
            lines += [f"  {k}" for k in self.unmatched_reference]
        if self.missing_pointwin:
            lines.append(f"pointwin keys without a reference tensor ({len(self.missing_pointwin)}):")
            lines += [f"  {k}" for k in self.missing_pointwin]
        for k, ref, a, b in self.shape_mismatch:
            lines.append(f"shape mismatch {k} <- {ref}: reference {a} vs pointwin {b}")
        return "\n".join(lines)


def _ignored(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in IGNORED_REFERENCE_SUFFIXES


def from_reference(state: Mapping[str, torch.Tensor], model: nn.Module, source: str,
                   layout: MMDet3DLayout | None = None) -> ConversionResult:
    """Rename a reference-framework state dict to ``model``'s names (shapes and settings checked).

    For ``mmdet3d`` the key layout is detected from ``state`` unless ``layout`` is given.
    """
    _check_source(source)
    if source == "mmdet3d" and layout is None:
        layout = MMDet3DLayout.detect(state)
    keymap = build_keymap(model, source, layout)
    inverse = keymap.to_pointwin
    own = model.state_dict()
    sparse = _sparse_conv_kinds(model)
    out, unmatched, mismatch, ignored, relaid = {}, [], [], [], []
    for ref_key, value in state.items():
        key = inverse.get(ref_key)
        if key is None:
            (ignored if _ignored(ref_key) else unmatched).append(ref_key)
            continue
        if key in sparse:
            converted = _sparse_weight_from_reference(value, tuple(own[key].shape), sparse[key], source)
            if converted is not None:
                value = converted[0]
                relaid.append(f"{key} <- {ref_key}: {converted[1]}")
        if tuple(value.shape) != tuple(own[key].shape):
            mismatch.append((key, ref_key, tuple(value.shape), tuple(own[key].shape)))
            continue
        out[key] = value
    mismatched = {m[0] for m in mismatch}
    # BatchNorm counters are training state: a checkpoint without them (mmdetection3d's) loses nothing
    missing = [k for k in own if k not in out and k not in mismatched and not _ignored(k)]
    return ConversionResult(out, unmatched, missing, mismatch, compatibility_problems(model, source, state),
                            ignored, layout if source == "mmdet3d" else None, relaid)


def to_reference(state: Mapping[str, torch.Tensor], model: nn.Module, source: str,
                 layout: MMDet3DLayout | None = None) -> dict[str, torch.Tensor]:
    """Rename a pointwin state dict to the reference names (keys without a counterpart are dropped)."""
    keymap = build_keymap(model, source, layout).to_reference
    sparse = _sparse_conv_kinds(model)
    return {keymap[k]: _sparse_weight_to_reference(v, sparse[k], source) if k in sparse else v
            for k, v in state.items() if k in keymap}


def read_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict inside an OpenPCDet (``model_state``) or mmdetection3d (``state_dict``) checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, expected a dict")
    for key in ("model_state", "state_dict", "model"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()
             if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path}: no tensors found (expected keys model_state / state_dict / a plain state dict)")
    return state


class ConversionError(PointwinError, ValueError):
    """A reference checkpoint does not convert to the model (the message carries the full report)."""


def load_reference_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True,
                         origin: str = "checkpoint") -> ConversionResult:
    """Convert ``state`` and load it into ``model``.

    With ``strict`` (the default) anything short of a clean conversion raises :class:`ConversionError` and
    leaves ``model`` untouched: an unmatched or missing key, a shape mismatch or an incompatible setting.
    ``strict=False`` loads what matches and returns the report; incompatible settings still raise, since no
    partial load can make them right.
    """
    result = from_reference(state, model, source)
    if result.incompatible or (strict and not result.clean):
        raise ConversionError(f"{origin} ({source}) does not convert cleanly to this model:\n{result.report()}")
    model.load_state_dict(result.state_dict, strict=False)
    return result


def load_reference_checkpoint(model: nn.Module, path: str | Path, source: str, strict: bool = True
                              ) -> ConversionResult:
    """Load a reference checkpoint file into ``model`` (see :func:`load_reference_state`)."""
    return load_reference_state(model, read_reference_state(path), source, strict, str(path))


__all__ = ["SOURCES", "ConversionError", "ConversionResult", "KeyMap", "MMDet3DLayout", "build_keymap",
           "compatibility_problems", "from_reference", "load_reference_checkpoint", "load_reference_state",
           "read_reference_state", "to_reference"]

"""Checkpoint converters: OpenPCDet (DSVT) and mmdetection3d (FlatFormer / CenterPoint) state dicts.

The key map is explicit: for every parameter/buffer of a pointwin detector one rule below gives the name
the reference framework uses for the same tensor (names are facts of those frameworks' checkpoints:
OpenPCDet ``pcdet/models/backbones_3d/dsvt.py``, ``vfe/dynamic_pillar_vfe.py``,
``backbones_2d/base_bev_backbone.py``, ``dense_heads/center_head.py``; mmdetection3d ``DynamicVFE``,
``SECOND``, ``SECONDFPN``, ``CenterHead`` / ``SeparateHead`` and FlatFormer's
``middle_encoders/flatformer.py``). Tensors are copied unchanged (the layouts agree: e.g. pointwin's
fused ``qkv`` Linear is ``nn.MultiheadAttention.in_proj_weight`` in q, k, v order).

Known structural differences (reported as unmatched keys, never silently dropped):

* OpenPCDet DSVT feeds layer i the position embedding of shift i (its TODO "mismatch of pos_embed"):
  build the pointwin DSVT with ``mix_shift_pos_embed: true`` to load its checkpoints.
* pointwin's ``input_proj`` (VFE width != model width) has no reference counterpart.
* OpenPCDet's ResBackbone always gives the first block of a level a ``downsample_layer``; pointwin adds
  the skip projection only when the shape changes.

Usage::

    result = load_reference_checkpoint(model, "dsvt.pth", source="openpcdet")
    print(result.report())      # unmatched reference keys / pointwin keys left at their init
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SOURCES = ("openpcdet", "mmdet3d")

Rule = tuple[str, Callable[[re.Match], str]]


def _rules_openpcdet(model: nn.Module) -> list[Rule]:
    head_conv = _head_num_conv(model)
    residual = _is_residual_bev(model)

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
    ]
    if residual:
        rules += [
            (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.(conv[12]|bn[12])\.(.+)",
             lambda m: f"backbone_2d.blocks.{m[1]}.{m[2]}.{m[3]}.{m[4]}"),
            (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.skip\.([01])\.(.+)",
             lambda m: f"backbone_2d.blocks.{m[1]}.{m[2]}.downsample_layer.{m[3]}.{m[4]}"),
        ]
    else:
        rules.append((r"backbone_2d\.blocks\.(\d+)\.(\d+)\.([01])\.(.+)", bev_block))
    return rules


def _rules_mmdet3d(model: nn.Module) -> list[Rule]:
    head_conv = _head_num_conv(model)
    branch = {"heatmap": "heatmap", "center": "reg", "center_z": "height", "dim": "dim", "rot": "rot", "vel": "vel",
              "iou": "iou"}

    def head(m: re.Match) -> str:
        t, name, idx, rest = m.group(1), branch[m.group(2)], int(m.group(3)), m.group(4)
        if idx == 3 * (head_conv - 1):
            return f"pts_bbox_head.task_heads.{t}.{name}.{head_conv - 1}.{rest}"
        k, sub = divmod(idx, 3)
        return f"pts_bbox_head.task_heads.{t}.{name}.{k}.{('conv', 'bn')[sub]}.{rest}"

    def flat_layer(m: re.Match) -> str:
        layer, rest = int(m.group(1)), m.group(2)
        fused = {"attn.qkv.weight": "attn.attn.in_proj_weight", "attn.qkv.bias": "attn.attn.in_proj_bias"}
        rest = fused.get(rest, rest)
        rest = re.sub(r"^attn\.proj\.", "attn.attn.out_proj.", rest)
        rest = re.sub(r"^ffn\.", "", rest)
        return f"pts_middle_encoder.block_list.{layer // 4}.block.{layer % 4}.{rest}"

    return [
        (r"vfe\.layers\.(\d+)\.linear\.(.+)", lambda m: f"pts_voxel_encoder.vfe_layers.{m[1]}.0.{m[2]}"),
        (r"vfe\.layers\.(\d+)\.norm\.(.+)", lambda m: f"pts_voxel_encoder.vfe_layers.{m[1]}.1.{m[2]}"),
        (r"backbone\.layers\.(\d+)\.((?:attn\.(?:qkv|proj)|ffn\.fc[12]|norm[12])\..+)", flat_layer),
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.([01])\.(.+)",
         lambda m: f"pts_backbone.blocks.{m[1]}.{3 * int(m[2]) + int(m[3])}.{m[4]}"),
        (r"backbone_2d\.deblocks\.(\d+)\.([01])\.(.+)", lambda m: f"pts_neck.deblocks.{m[1]}.{m[2]}.{m[3]}"),
        (r"head\.shared_conv\.([01])\.(.+)", lambda m: f"pts_bbox_head.shared_conv.{('conv', 'bn')[int(m[1])]}.{m[2]}"),
        (r"head\.heads\.(\d+)\.branches\.(\w+)\.(\d+)\.(.+)", head),
    ]


def _head_num_conv(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "heads"):
        return 2
    seq = next(iter(head.heads[0].branches.values()))
    return (len(seq) - 1) // 3 + 1


def _is_residual_bev(model: nn.Module) -> bool:
    return any(k.endswith("conv1.weight") for k in model.state_dict() if k.startswith("backbone_2d."))


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


def build_keymap(model: nn.Module, source: str) -> KeyMap:
    """The explicit key map of ``model`` (a pointwin Detector) for checkpoints of ``source``."""
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; valid: {list(SOURCES)}")
    rules = _rules_openpcdet(model) if source == "openpcdet" else _rules_mmdet3d(model)
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


@dataclass
class ConversionResult:
    """A reference state dict renamed to pointwin names.

    Attributes:
        state_dict: pointwin key -> tensor, for every key the reference provided.
        unmatched_reference: reference keys with no pointwin counterpart (not loaded).
        missing_pointwin: pointwin keys the reference did not provide (left at their init).
        shape_mismatch: (pointwin key, reference shape, pointwin shape) for tensors not loaded.
    """

    state_dict: dict[str, torch.Tensor]
    unmatched_reference: list[str]
    missing_pointwin: list[str]
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"converted {len(self.state_dict)} tensors"]
        if self.unmatched_reference:
            lines.append(f"unmatched reference keys ({len(self.unmatched_reference)}):")
            lines += [f"  {k}" for k in self.unmatched_reference]
        if self.missing_pointwin:
            lines.append(f"pointwin keys without a reference tensor ({len(self.missing_pointwin)}):")
            lines += [f"  {k}" for k in self.missing_pointwin]
        for k, a, b in self.shape_mismatch:
            lines.append(f"shape mismatch {k}: reference {a} vs pointwin {b}")
        return "\n".join(lines)


def from_reference(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> ConversionResult:
    """Rename a reference-framework state dict to ``model``'s names (shapes checked)."""
    keymap = build_keymap(model, source)
    inverse = keymap.to_pointwin
    own = model.state_dict()
    out, unmatched, mismatch = {}, [], []
    for ref_key, value in state.items():
        key = inverse.get(ref_key)
        if key is None:
            unmatched.append(ref_key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            mismatch.append((key, tuple(value.shape), tuple(own[key].shape)))
            continue
        out[key] = value
    missing = [k for k in own if k not in out and not any(k == m[0] for m in mismatch)]
    return ConversionResult(out, unmatched, missing, mismatch)


def to_reference(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Rename a pointwin state dict to the reference names (keys without a counterpart are dropped)."""
    keymap = build_keymap(model, source).to_reference
    return {keymap[k]: v for k, v in state.items() if k in keymap}


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


def load_reference_checkpoint(model: nn.Module, path: str | Path, source: str, strict: bool = False
                              ) -> ConversionResult:
    """Load a reference checkpoint into ``model``; with ``strict`` any unmatched/missing key is an error."""
    result = from_reference(read_reference_state(path), model, source)
    if strict and (result.unmatched_reference or result.missing_pointwin or result.shape_mismatch):
        raise ValueError(f"{path} does not convert cleanly to this model:\n{result.report()}")
    model.load_state_dict(result.state_dict, strict=False)
    return result


__all__ = ["SOURCES", "ConversionResult", "KeyMap", "build_keymap", "from_reference", "load_reference_checkpoint",
           "read_reference_state", "to_reference"]

"""Key rules and setting checks of the segmentation sources of :mod:`pointwin.export.converters`.

* ``pointcept``: Pointcept's ``DefaultSegmentorV2`` with ``PT-v3m1`` (``pointcept/models/
  point_transformer_v3/point_transformer_v3m1_base.py``): ``backbone.embedding.stem.{conv,norm}``,
  ``backbone.enc.enc{s}.down.{proj,norm.0}``, ``backbone.enc.enc{s}.block{j}.{cpe.0,cpe.1,cpe.2,norm1.0,
  attn.qkv,attn.proj,norm2.0,mlp.0.fc1,mlp.0.fc2}``, ``backbone.dec.dec{s}.up.{proj,proj_skip}.{0,1}``,
  ``seg_head``.
* ``sphereformer``: the official SphereFormer ``Semantic`` model (``model/unet_spherical_transformer.py``):
  ``input_conv.0``, nested ``unet.u.u...`` levels with ``blocks.block{i}``, ``transformer_block``,
  ``conv``, ``deconv``, ``blocks_tail.block{i}``, then ``output_layer.0`` and ``linear``.

Both index their sparse tensors ``(b, x, y, z)``, so spconv stores their conv weights ``(C_out, kx, ky, kz,
C_in)``; pointwin's are ``(C_out, kz, ky, kx, C_in)``: :data:`XYZ_INDEX_SOURCES` tells the converter to swap
kernel axes 1 and 3 (same shape for cubic kernels, so the swap is by source, not by shape).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

Rule = tuple[str, Callable[[re.Match], str]]

#: sources whose spconv tensors are indexed (b, x, y, z): kernel axes are (kx, ky, kz)
XYZ_INDEX_SOURCES = ("pointcept", "sphereformer")

_PTV3_BLOCK = {"cpe_conv": "cpe.0", "cpe_linear": "cpe.1", "cpe_norm": "cpe.2", "norm1": "norm1.0",
               "norm2": "norm2.0", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "ffn.fc1": "mlp.0.fc1",
               "ffn.fc2": "mlp.0.fc2"}


def rules_pointcept(model: nn.Module) -> list[Rule]:
    backbone = getattr(model, "backbone", None)
    n = len(getattr(backbone, "enc", ()))
    part = "|".join(re.escape(k) for k in _PTV3_BLOCK)

    def block(prefix: str, stage: Callable[[int], int]):
        def fn(m: re.Match) -> str:
            s = stage(int(m[1]))
            return f"backbone.{prefix}.{prefix}{s}.block{m[2]}.{_PTV3_BLOCK[m[3]]}.{m[4]}"
        return fn

    return [
        (r"backbone\.stem_conv\.(weight)", lambda m: "backbone.embedding.stem.conv.weight"),
        (r"backbone\.stem_norm\.(.+)", lambda m: f"backbone.embedding.stem.norm.{m[1]}"),
        (r"backbone\.pools\.(\d+)\.proj\.(.+)", lambda m: f"backbone.enc.enc{int(m[1]) + 1}.down.proj.{m[2]}"),
        (r"backbone\.pools\.(\d+)\.norm\.(.+)", lambda m: f"backbone.enc.enc{int(m[1]) + 1}.down.norm.0.{m[2]}"),
        (rf"backbone\.enc\.(\d+)\.(\d+)\.({part})\.(.+)", block("enc", lambda s: s)),
        # pointwin's decoder list runs from the deepest stage up: unpools[u] / dec[u] is Pointcept's dec{n-2-u}
        (r"backbone\.unpools\.(\d+)\.(proj|proj_skip)\.([01])\.(.+)",
         lambda m: f"backbone.dec.dec{n - 2 - int(m[1])}.up.{m[2]}.{m[3]}.{m[4]}"),
        (rf"backbone\.dec\.(\d+)\.(\d+)\.({part})\.(.+)", block("dec", lambda u: n - 2 - u)),
        (r"head\.cls\.(.+)", lambda m: f"seg_head.{m[1]}"),
    ]


def _eps(module: nn.Module | None) -> float | None:
    return None if module is None else float(getattr(module, "eps", 0.0))


def problems_pointcept(model: nn.Module, has: Callable[[str], bool]) -> list[str]:
    """Settings with which a Pointcept PTv3 checkpoint cannot give Pointcept's numbers (see
    :func:`pointwin.export.converters.compatibility_problems`)."""
    problems = []
    backbone = getattr(model, "backbone", None)
    if not has(r"^backbone\."):
        return problems
    if type(backbone).__name__ != "PTv3":
        return [f"model.backbone is {type(backbone).__name__}; Pointcept PT-v3m1 weights need model.backbone.type: "
                "PTv3"]
    vfe = getattr(model, "vfe", None)
    if vfe is not None and type(vfe).__name__ != "MeanVFE":
        problems.append(f"model.vfe.type is {type(vfe).__name__}; Pointcept feeds each voxel's point features "
                        "(x, y, z, strength) straight to the stem conv: set model.vfe.type: MeanVFE")
    for name, mod in (("stem", backbone.stem_norm),
                      *((f"pooling {i}", p.norm) for i, p in enumerate(backbone.pools)),
                      *((f"unpooling {i}", u.proj[1]) for i, u in enumerate(backbone.unpools))):
        if abs(_eps(mod) - 1e-3) > 1e-12:
            problems.append(f"PTv3 {name} BatchNorm eps is {_eps(mod)}; Pointcept uses 1e-3 in the stem, pooling "
                            "and unpooling: set model.backbone.bn_eps: 0.001")
            break
    if getattr(backbone, "grid", "data") != "data":
        problems.append("model.backbone.grid is 'shape'; Pointcept serializes coordinates counted from each "
                        "sample's minimum with the depth of the data: set model.backbone.grid: data")
    return problems



_SPHERE_RES = {"bn1": "conv_branch.0", "conv1": "conv_branch.2", "bn2": "conv_branch.3", "conv2": "conv_branch.5",
               "skip": "i_branch.0"}
_SPHERE_ATTN = {"norm1": "norm1", "norm2": "norm2", "ffn.fc1": "mlp.fc1", "ffn.fc2": "mlp.fc2",
                "attn.qkv": "attn.qkv", "attn.proj": "attn.proj"}
_SPHERE_TABLES = {"cubic_table_q": "relative_pos_query_table", "cubic_table_k": "relative_pos_key_table",
                  "cubic_table_v": "relative_pos_value_table", "radial_table_q": "relative_pos_query_table_sphere",
                  "radial_table_k": "relative_pos_key_table_sphere",
                  "radial_table_v": "relative_pos_value_table_sphere"}


def rules_sphereformer(model: nn.Module) -> list[Rule]:
    def level(i: str | int) -> str:
        return "unet." + "u." * int(i)  # the official UBlock nests the next level as ``.u``

    res = "|".join(_SPHERE_RES)
    attn = "|".join(re.escape(k) for k in _SPHERE_ATTN)
    tables = "|".join(_SPHERE_TABLES)
    return [
        (r"backbone\.stem_conv\.weight", lambda m: "input_conv.0.weight"),
        (rf"backbone\.enc_blocks\.(\d+)\.(\d+)\.({res})\.(.+)",
         lambda m: f"{level(m[1])}blocks.block{m[2]}.{_SPHERE_RES[m[3]]}.{m[4]}"),
        (rf"backbone\.dec_blocks\.(\d+)\.(\d+)\.({res})\.(.+)",
         lambda m: f"{level(m[1])}blocks_tail.block{m[2]}.{_SPHERE_RES[m[3]]}.{m[4]}"),
        (rf"backbone\.enc_attn\.(\d+)\.({attn})\.(.+)",
         lambda m: f"{level(m[1])}transformer_block.{_SPHERE_ATTN[m[2]]}.{m[3]}"),
        (rf"backbone\.enc_attn\.(\d+)\.attn\.({tables})",
         lambda m: f"{level(m[1])}transformer_block.attn.{_SPHERE_TABLES[m[2]]}"),
        (r"backbone\.down_bn\.(\d+)\.(.+)", lambda m: f"{level(m[1])}conv.0.{m[2]}"),
        (r"backbone\.down\.(\d+)\.weight", lambda m: f"{level(m[1])}conv.2.weight"),
        (r"backbone\.up_bn\.(\d+)\.(.+)", lambda m: f"{level(m[1])}deconv.0.{m[2]}"),
        (r"backbone\.up\.(\d+)\.weight", lambda m: f"{level(m[1])}deconv.2.weight"),
        (r"backbone\.out_bn\.(.+)", lambda m: f"output_layer.0.{m[1]}"),
        (r"head\.cls\.(.+)", lambda m: f"linear.{m[1]}"),
    ]


def problems_sphereformer(model: nn.Module, has: Callable[[str], bool]) -> list[str]:
    """Settings with which an official SphereFormer checkpoint cannot give the official numbers."""
    backbone = getattr(model, "backbone", None)
    if not has(r"^(unet|input_conv)\."):
        return []
    if type(backbone).__name__ != "SphereSeg":
        return [f"model.backbone is {type(backbone).__name__}; SphereFormer weights need model.backbone.type: "
                "SphereSeg"]
    wanted = [("unet", "official", "the official U-Net (pre-activation residual blocks, skip concatenation)"),
              ("rpe", "contextual", "the official contextual relative positions on q, k and v of both head groups"),
              ("positions", "input_mean", "the official voxel positions (point means, children's mean deeper)"),
              ("window_origin", "batch_min", "the official window grid counted from the batch-wide minimum")]
    problems = [f"model.backbone.{name} is {getattr(backbone, name, None)!r}; {why}: set model.backbone.{name}: "
                f"{value}" for name, value, why in wanted if getattr(backbone, name, None) != value]
    vfe = getattr(model, "vfe", None)
    if vfe is not None and type(vfe).__name__ != "MeanVFE":
        problems.append(f"model.vfe.type is {type(vfe).__name__}; SphereFormer feeds each voxel's mean (x, y, z, "
                        "intensity) to its stem conv: set model.vfe.type: MeanVFE")
    out_bn = getattr(backbone, "out_bn", None)
    if out_bn is not None and abs(out_bn.eps - 1e-4) > 1e-12:
        problems.append(f"SphereSeg BatchNorm eps is {out_bn.eps}; SphereFormer uses 1e-4: set "
                        "model.backbone.bn_eps: 0.0001")
    return problems

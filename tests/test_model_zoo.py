"""Every config in configs/ builds, and its model runs forward + backward (+ predict) on a tiny batch.

The grid extent is shrunk to 32 x 32 cells around the sensor (voxel sizes, z range, channels, windows and all
other settings stay as configured) so the Waymo/nuScenes-scale models run in seconds on a CPU. Decoding
(predict) runs for the synthetic configs; the others share the same head code with other settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pointwin.bench import benchmarks_dir
from pointwin.config import load_config
from pointwin.models import Detector, Segmentor, build_model
from pointwin.structures import Batch, Boxes3D, Points

benchmarks_dir()  # the benchmark helpers import as top-level modules
import common  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)


def shrunk(cfg):
    """The config's model section on a 32 x 32-cell grid (benchmarks/common.py, shared with gpu_check.py)."""
    return common.shrunk_model(cfg["model"])


def tiny_batch(model, cfg_model, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    r = cfg_model["point_cloud_range"]
    c = cfg_model["vfe"].get("num_point_features", 4)
    clouds, boxes, labels = [], [], []
    for _ in range(2):
        lo, hi = torch.tensor(r[:3]), torch.tensor(r[3:])
        xyz = lo + torch.rand(400, 3, generator=g) * (hi - lo) * 0.999
        clouds.append(torch.cat([xyz, torch.rand(400, c - 3, generator=g)], 1))
        dim = 9 if getattr(getattr(model, "head", None), "with_velocity", False) else 7
        b = torch.tensor([[0.5, 1.0, 0.0, 4.0, 1.8, 1.6, 0.3, 1.0, 0.0],
                          [-1.0, -0.5, 0.0, 0.8, 0.7, 1.7, -1.0, 0.0, 0.5]])
        boxes.append(Boxes3D(b[:, :dim]))
        labels.append(torch.tensor([0, 1]))
    points = Points.from_list(clouds)
    n_cls = len(cfg_model["class_names"])
    point_labels = torch.randint(-1, n_cls, (len(points),), generator=g)
    return Batch(points, ["a", "b"], boxes, labels, point_labels)




@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_builds_and_trains_one_step(path, one_thread):
    cfg = load_config(path)
    cfg_model = shrunk(cfg)
    torch.manual_seed(0)
    model = build_model(cfg_model)
    assert isinstance(model, (Detector, Segmentor))
    batch = tiny_batch(model, cfg_model)
    losses = model.loss(batch)
    assert set(losses) >= {"loss"} and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if "synthetic" not in path.parts:
        return
    model.eval()
    out = model.predict(batch)
    assert len(out) == 2
    if isinstance(model, Detector):
        assert all(d.labels.lt(len(cfg_model["class_names"])).all() for d in out)
    else:
        assert [len(o) for o in out] == batch.points.counts().tolist()


def test_unknown_type_lists_valid_names():
    from pointwin.config import ConfigError

    cfg = load_config(CONFIGS[0])
    cfg_model = shrunk(cfg)
    cfg_model["backbone"] = {"type": "NoSuchNet"}
    with pytest.raises(ConfigError, match="valid names: .*DSVT.*FlatFormer"):
        build_model(cfg_model)
    cfg_model = shrunk(load_config(CONFIGS[0]))
    cfg_model["head"]["bogus_key"] = 1
    with pytest.raises(ConfigError, match="bogus_key"):
        build_model(cfg_model)


@pytest.mark.parametrize("name", ["synthetic/flatformer_tiny.yaml", "waymo/dsvt_voxel.yaml", "waymo/scatterformer.yaml",
                                  "synthetic/sphereseg_tiny.yaml"])
def test_batch_without_points_in_range(name, one_thread):
    cfg_model = shrunk(load_config(CONFIG_DIR / name))
    model = build_model(cfg_model)
    c = cfg_model["vfe"].get("num_point_features", 4)
    points = Points.from_list([torch.full((5, c), 500.0), torch.zeros(0, c)])  # all outside the grid
    batch = Batch(points, ["a", "b"], [Boxes3D.empty(), Boxes3D.empty()], [torch.zeros(0, dtype=torch.long)] * 2,
                  torch.zeros(5, dtype=torch.long))
    losses = model.loss(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    model.eval()
    out = model.predict(batch)
    assert len(out) == 2
    if isinstance(model, Segmentor):
        assert out[0].tolist() == [-1] * 5 and len(out[1]) == 0

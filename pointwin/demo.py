"""``pointwin demo``: synthetic scenes -> train a small window-attention detector -> evaluate -> pictures.

Everything comes from one config (default ``configs/synthetic/demo.yaml``): the model, the synthetic
data (``data.train`` / ``data.val``), the schedule (``train``) and a ``demo`` section::

    demo:
      pictures: 4                 # validation frames drawn with predictions vs ground truth
      score_thr: 0.3              # predictions drawn from this score up
      target_metric: Car/AP_BEV   # the number the demo reports (and checks against target_value)
      target_value: 0.6
      quick: [train.epochs=2, ...] # --set style overrides applied by --quick

The work dir then holds ``metrics.md`` / ``metrics.json`` (the table), ``bev/*.png`` (predictions dashed,
ground truth green), ``training_curves.png``, ``log.jsonl``, ``config.yaml`` and the checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pointwin.config import Config, apply_overrides, config_from_dict, load_config, to_plain

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "synthetic" / "demo.yaml"


def demo_config(config: str | os.PathLike | None = None, quick: bool = False,
                overrides: Sequence[str] = ()) -> Config:
    """The demo's config: the file, then the ``demo.quick`` overrides (with ``quick``), then ``overrides``."""
    path = Path(config) if config is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"demo config not found: {path} (pass --config, or run from a source checkout "
                                "that has configs/synthetic/demo.yaml)")
    cfg = load_config(path)
    tree = to_plain(cfg)
    if quick:
        tree = apply_overrides(tree, (tree.get("demo") or {}).get("quick") or [], source=f"{path} demo.quick")
    tree = apply_overrides(tree, overrides)
    return config_from_dict(tree)


def _format_table(metrics: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max([len(k) for k, _ in rows] + [6])
    lines = [f"| {'metric':<{width}} | value  |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {k:<{width}} | {v:.4f} |" for k, v in rows]
    return "\n".join(lines)


def run_demo(work_dir: str | os.PathLike | None = None, quick: bool = False, device: str = "auto", seed: int = 0,
             overrides: Sequence[str] = (), amp: bool = False, data_dir: str | os.PathLike | None = None,
             config: str | os.PathLike | None = None, threads: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo; returns ``{"metrics", "target_metric", "target_value", "paths", "wall_s"}``."""
    from pointwin.datasets.synthetic import create_synthetic
    from pointwin.engine import Trainer, TrainSettings
    from pointwin.engine.builders import build_dataset, build_model, dataset_evaluator, import_modules
    from pointwin.engine.trainer import set_seed
    from pointwin.visualize import draw_sample_bev, plot_training_curves

    t_start = time.perf_counter()
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = demo_config(config, quick, overrides)
    import_modules(cfg)
    demo = dict(cfg.get("demo") or {})
    if amp:
        cfg["train"]["amp"] = True
    work_dir = Path(work_dir) if work_dir is not None else Path("work_dirs") / ("demo_quick" if quick else "demo")
    data_dir = Path(data_dir) if data_dir is not None else work_dir / "data"
    work_dir.mkdir(parents=True, exist_ok=True)

    # 1. data: written once to disk (resumable), then read back each epoch
    train_cfg, val_cfg = dict(cfg["data"]["train"]), dict(cfg["data"]["val"])
    scene = train_cfg.get("scene")
    data_seed = int(train_cfg.get("seed", 0))
    print(f"[1/4] synthetic data -> {data_dir}")
    create_synthetic(data_dir, num_train=int(train_cfg.get("num_frames", 100)),
                     num_val=int(val_cfg.get("num_frames", 20)), seed=data_seed, scene=scene, progress=progress,
                     workers=min(os.cpu_count() or 1, 4))
    for split_cfg in (train_cfg, val_cfg):
        split_cfg["data_root"] = str(data_dir)
    cfg["data"]["train"], cfg["data"]["val"] = Config(train_cfg), Config(val_cfg)

    # 2. train
    settings = TrainSettings.from_config(cfg.get("train"))
    train_set = build_dataset(cfg["data"]["train"], "data.train")
    val_set = build_dataset(cfg["data"]["val"], "data.val")
    set_seed(seed)
    model = build_model(cfg["model"], "model")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[2/4] training {cfg['model'].get('type')} ({n_params / 1e6:.2f} M parameters) on {len(train_set)} "
          f"frames, {settings.epochs} epochs")
    trainer = Trainer(model, train_set, settings, work_dir, val_set=val_set,
                      evaluate_fn=dataset_evaluator(val_set, cfg.get("eval")), device=device, seed=seed,
                      config_text=cfg.dump(), progress=progress)
    metrics = trainer.fit()
    t_train = time.perf_counter() - t_start
    if metrics is None:  # evaluation during training was switched off
        print("[3/4] evaluating")
        metrics = trainer.evaluate(val_set)
    results = trainer.last_results
    trainer.close()

    # 3. metrics table
    table = _format_table(metrics)
    try:
        from pointwin.evaluation.detection import format_ap_table

        table = format_ap_table(metrics) + "\n\n" + table
    except (ImportError, ValueError, KeyError):
        pass
    target_metric = demo.get("target_metric")
    target_value = demo.get("target_value")
    (work_dir / "metrics.md").write_text(f"# pointwin demo ({'quick' if quick else 'full'})\n\n```\n{table}\n```\n")
    (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print("[3/4] validation metrics")
    print(table)

    # 4. pictures
    print("[4/4] pictures")
    n_pic = min(int(demo.get("pictures", 4)), len(val_set))
    score_thr = float(demo.get("score_thr", 0.3))
    pictures = []
    rng = (cfg.get("model") or {}).get("point_cloud_range")
    extent = (rng[0], rng[1], rng[3], rng[4]) if rng else None
    for i in range(n_pic):
        sample = val_set[i]
        pictures.append(draw_sample_bev(sample, work_dir / "bev" / f"{sample.frame_id}.png",
                                        pred=results[i] if results is not None else None, score_thr=score_thr,
                                        class_names=getattr(val_set, "class_names", None), extent=extent))
    curves = plot_training_curves(work_dir / "log.jsonl", work_dir / "training_curves.png")
    wall = time.perf_counter() - t_start
    print(f"\ndone in {wall / 60:.1f} min (training + evaluation {t_train / 60:.1f} min) on {trainer.device}")
    print(f"  metrics table : {work_dir / 'metrics.md'}")
    print(f"  BEV pictures  : {work_dir / 'bev'}/ ({len(pictures)} frames; ground truth green, predictions dashed)")
    print(f"  training curve: {curves}")
    print(f"  checkpoint    : {work_dir / 'latest.pth'}")
    if target_metric is not None:
        value = metrics.get(target_metric)
        if value is None:
            print(f"  target metric {target_metric!r} is not among the metrics")
        else:
            verdict = "reached" if target_value is None or value >= target_value else "NOT reached"
            print(f"  {target_metric} = {value:.3f} (target {target_value}: {verdict})")
    return {"metrics": metrics, "target_metric": target_metric, "target_value": target_value,
            "paths": {"metrics": work_dir / "metrics.md", "pictures": pictures, "curves": curves,
                      "work_dir": work_dir}, "wall_s": wall}

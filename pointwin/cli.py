"""The ``pointwin`` command.

Subcommands::

    pointwin demo [--quick]                       synthetic data -> train -> evaluate -> pictures
    pointwin train CONFIG [--resume auto]         (torchrun --nproc_per_node N -m pointwin train CONFIG)
    pointwin test CONFIG --ckpt CKPT              evaluate a checkpoint
    pointwin create-data {nuscenes,waymo,kitti,synthetic} ...
    pointwin eval {waymo,nuscenes} ...            metrics from prediction files
    pointwin visualize {sample,points,curves} ... BEV / 3D pictures, training curves
    pointwin export CONFIG --ckpt CKPT ...        ONNX / TensorRT
    pointwin convert --from openpcdet CKPT --config CONFIG --out OUT.pth   official checkpoint -> pointwin
    pointwin predict CKPT FILES... --out DIR      per-frame detections / labels as JSON (and BEV PNGs)
    pointwin bench ...                            speed benchmarks

Common flags: --work-dir, --set key=value (repeatable), --seed, --device, --amp.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CLIError(Exception):
    """A user-facing error: printed as ``pointwin <cmd>: error: ...`` without a traceback."""


def _common(parser: argparse.ArgumentParser, work_dir: bool = True) -> None:
    g = parser.add_argument_group("common options")
    if work_dir:
        g.add_argument("--work-dir", type=Path, default=None,
                       help="output folder (default: work_dirs/<config name>)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; +key=value adds a key)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision on CUDA (= train.amp: auto: bf16 autocast where supported, else fp16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointwin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from pointwin import __version__

    parser.add_argument("--version", action="version", version=f"pointwin {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of input errors too (they print as one line otherwise)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate synthetic scenes, train a small detector, evaluate, draw pictures")
    p.add_argument("--quick", action="store_true", help="1-2 minute smoke version (low accuracy)")
    p.add_argument("--data-dir", type=Path, default=None, help="where to write the synthetic data "
                   "(default: <work-dir>/data)")
    p.add_argument("--config", type=Path, default=None, help="demo config (default: configs/synthetic/demo.yaml)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    _common(p)

    p = sub.add_parser("train", help="train a model from a config (torchrun-aware)")
    p.add_argument("config", type=Path, help="YAML config")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue a run: 'auto' takes the last good checkpoint in the work dir")
    p.add_argument("--start-over", action="store_true",
                   help="with --resume auto: when every checkpoint in the work dir is unreadable, train from "
                        "scratch and overwrite them (without it, that stops with what was found)")
    p.add_argument("--load-from", type=Path, default=None,
                   help="start from these model weights (fine-tuning): tensors whose name and shape match are "
                        "loaded, the rest is reported")
    p.add_argument("--strict-load", action="store_true",
                   help="with --load-from: stop instead when any tensor is missing, extra or of another shape")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation during training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(p)

    p = sub.add_parser("test", help="evaluate a checkpoint on the validation (or test) split")
    p.add_argument("config", type=Path, help="YAML config")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint (.pth) to evaluate")
    p.add_argument("--split", default="val", help="data.<split> section of the config to use (default val)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the predictions in the dataset's own format (Waymo .bin, nuScenes results "
                        "JSON, KITTI label folder) for pointwin eval / the benchmark servers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(p)

    p = sub.add_parser("create-data", help="convert a dataset to pointwin's info files")
    p.add_argument("dataset", choices=["nuscenes", "waymo", "kitti", "synthetic"])
    p.add_argument("--root", type=Path, default=None, help="dataset root (raw files)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --root; synthetic: data/synthetic)")
    p.add_argument("--version", default=None, help="nuScenes version, e.g. v1.0-mini, v1.0-trainval")
    p.add_argument("--split", default=None, help="split to convert (dataset specific)")
    p.add_argument("--max-sweeps", type=int, default=10, help="nuScenes: sweeps per keyframe")
    p.add_argument("--workers", type=int, default=4, help="parallel worker processes")
    p.add_argument("--shard", default=None, metavar="I/N", help="convert only shard I of N (Waymo)")
    p.add_argument("--num-train", type=int, default=200, help="synthetic: training frames")
    p.add_argument("--num-val", type=int, default=50, help="synthetic: validation frames")
    p.add_argument("--seed", type=int, default=0, help="synthetic: base seed")
    p.add_argument("--gt-database", action="store_true",
                   help="kitti: also build the GT-sampling database <out>/kitti_gt_database from the train split "
                        "(what configs/kitti read)")

    p = sub.add_parser("eval", help="compute metrics from prediction files")
    p.add_argument("benchmark", choices=["waymo", "nuscenes", "kitti"])
    p.add_argument("--pred", type=Path, required=True,
                   help="predictions (Waymo Objects .bin / nuScenes JSON / KITTI folder of <frame>.txt results)")
    p.add_argument("--gt", type=Path, default=None,
                   help="Waymo: ground truth Objects .bin; KITTI: the label_2 folder")
    p.add_argument("--frames", type=Path, default=None,
                   help="KITTI: frame list (e.g. ImageSets/val.txt; default: the frames with a result file)")
    p.add_argument("--dataroot", type=Path, default=None, help="nuScenes: dataset root")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version")
    p.add_argument("--eval-set", default="val", help="nuScenes split (val, mini_val, ...)")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON here")

    p = sub.add_parser("visualize", help="bird's-eye-view / 3D pictures and training curves")
    vsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    v = vsub.add_parser("sample", help="a dataset frame with GT boxes (and predictions with --ckpt)")
    v.add_argument("config", type=Path)
    v.add_argument("--ckpt", type=Path, default=None, help="draw this model's predictions too")
    v.add_argument("--split", default="val")
    v.add_argument("--index", type=int, nargs="+", default=[0], help="frame index(es)")
    v.add_argument("--score-thr", type=float, default=0.3)
    v.add_argument("--renderer", choices=["bev", "open3d"], default="bev")
    v.add_argument("--out", type=Path, default=None, help="output folder (default: <work-dir>/vis)")
    _common(v)
    v = vsub.add_parser("points", help="a point file (.bin float32 / .npy) with optional boxes JSON")
    v.add_argument("file", type=Path)
    v.add_argument("--dims", type=int, default=4, help=".bin: float32 values per point (KITTI 4, nuScenes 5)")
    v.add_argument("--boxes", type=Path, default=None, help="JSON list of [x,y,z,dx,dy,dz,yaw] boxes")
    v.add_argument("--renderer", choices=["bev", "open3d"], default="bev")
    v.add_argument("--range", type=float, default=60.0, help="half-width of the BEV picture in metres")
    v.add_argument("--out", type=Path, required=True, help="output PNG")
    v = vsub.add_parser("curves", help="training curves PNG from a run's log.jsonl")
    v.add_argument("log", type=Path, help="log.jsonl (or the work dir holding it)")
    v.add_argument("--out", type=Path, default=None, help="output PNG (default: next to the log)")

    p = sub.add_parser("export", help="export a detector to ONNX / TensorRT")
    p.add_argument("config", type=Path)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--profile-from", default=None, help="dataset (config split) for TensorRT shape profiles")
    _common(p, work_dir=False)

    p = sub.add_parser("predict", help="run a checkpoint on point files: per-frame JSON (and BEV PNGs)",
                       description="Load a pointwin checkpoint (its embedded config builds the model) and write, "
                       "per input file, OUT/<name>.json with the detections (class, score, box) or the per-point "
                       "class counts and OUT/<name>.labels.npy for a segmentor.")
    p.add_argument("ckpt", type=Path, help="pointwin checkpoint (or a config YAML: untrained weights)")
    p.add_argument("files", type=Path, nargs="+", help="point files: raw float32 .bin or .npy (N, C)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None, help="config to use when the checkpoint carries none")
    p.add_argument("--dims", type=int, default=None,
                   help="float32 values per point in .bin files (default: the model's point width)")
    p.add_argument("--score-threshold", type=float, default=0.0, help="keep detections scoring at least this")
    p.add_argument("--png", action="store_true", help="also draw a bird's-eye-view PNG per file")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")

    p = sub.add_parser("convert", help="convert an official OpenPCDet / mmdetection3d checkpoint to pointwin",
                       description="Rename an official checkpoint's tensors to a pointwin model built from CONFIG, "
                       "check every key, shape and compatibility setting, and write a pointwin checkpoint "
                       "(with the config embedded) atomically to OUT.")
    p.add_argument("checkpoint", type=Path, help="the official checkpoint (.pth)")
    p.add_argument("--from", dest="source", required=True,
                   choices=("openpcdet", "mmdet3d", "pointcept", "sphereformer"),
                   help="framework that wrote it: openpcdet (DSVT), mmdet3d (FlatFormer, CenterPoint), pointcept "
                        "(PTv3) or sphereformer (the official SphereFormer code)")
    p.add_argument("--config", type=Path, required=True, help="the pointwin config of the same model")
    p.add_argument("--out", type=Path, required=True, help="where to write the pointwin checkpoint")
    p.add_argument("--allow-partial", action="store_true",
                   help="write even if some keys are unmatched / missing / of another shape (reported)")
    g = p.add_argument_group("common options")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")

    p = sub.add_parser("bench", help="per-stage latency and memory benchmarks")
    p.add_argument("--suite", action="append", choices=["e2e", "baselines", "scaling"], default=None,
                   help="benchmark suite(s) to run (default: all; e2e only with --quick/--config/--input/--model)")
    p.add_argument("--config", type=Path, action="append", default=[], help="config(s) to benchmark (default: all)")
    p.add_argument("--model", action="append", default=None, help="model name(s) of the built-in list")
    p.add_argument("--input", type=Path, action="append", default=[],
                   help="input cloud(s) (default: the real sample files)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.add_argument("--quick", action="store_true", help="small configs, one timed repeat")
    p.add_argument("--out", type=Path, default=None,
                   help="Markdown file to write the tables into (its sections replaced, the rest kept), e.g. "
                        "BENCHMARKS.md; default: print them only")
    _common(p, work_dir=False)
    return parser


# ---------------------------------------------------------------- helpers
def _load_config(path: Path, overrides: list[str], seed: int | None = None, amp: bool = False):
    from pointwin.config import check_top_level_keys, load_config

    cfg = load_config(path, overrides)
    check_top_level_keys(cfg, path)
    if amp:
        cfg.setdefault("train", {})["amp"] = True
    from pointwin.engine.builders import import_modules

    import_modules(cfg)
    return cfg


def _work_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "work_dir", None) is not None:
        return args.work_dir
    return Path("work_dirs") / args.config.stem


def _data_section(cfg: Any, split: str) -> Any:
    data = cfg.get("data") or {}
    if split not in data:
        raise CLIError(f"config has no data.{split} section (found: {sorted(data)})")
    return data[split]


def _call_available(module: str, names: tuple[str, ...], what: str) -> Any:
    """The first of ``module.names`` that exists, or a CLIError saying the feature is not in this build."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if e.name and not e.name.startswith(module.split(".")[0]):
            raise CLIError(f"{what} needs the Python package {e.name!r}, which is not installed") from None
        raise CLIError(f"{what} is not available yet in this build ({module} is missing)") from None
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    raise CLIError(f"{what} is not available yet in this build ({module} has no {' / '.join(names)})")


def print_metrics(metrics: dict, title: str = "metrics") -> str:
    """A two-column table of the scalar metrics; returns the text."""
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max([len(k) for k, _ in rows] + [len(title)])
    lines = [f"{title:<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
    text = "\n".join(lines)
    print(text)
    return text


# ---------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from pointwin.engine import Trainer, TrainSettings, dist
    from pointwin.engine.builders import build_dataset, build_model, dataset_evaluator
    from pointwin.engine.trainer import set_seed

    cfg = _load_config(args.config, args.overrides, amp=args.amp)
    info = dist.init_distributed(None if args.device == "auto" else args.device)
    try:
        settings = TrainSettings.from_config(cfg.get("train"))
        set_seed(args.seed)  # same initial weights on every rank and in every run with this seed
        model = build_model(cfg["model"], "model")
        train_set = build_dataset(_data_section(cfg, "train"), "data.train")
        val_cfg = (cfg.get("data") or {}).get("val")
        val_set = build_dataset(val_cfg, "data.val") if val_cfg and not args.no_eval else None
        if val_set is None:
            settings.eval_every = 0
        trainer = Trainer(model, train_set, settings, _work_dir(args), val_set=val_set,
                          evaluate_fn=dataset_evaluator(val_set, cfg.get("eval")) if val_set is not None else None,
                          device=args.device, seed=args.seed, config_text=cfg.dump(),
                          progress=not args.no_progress)
        if args.load_from is not None:
            trainer.load_weights(args.load_from, strict=args.strict_load)
        if args.resume:
            trainer.resume(args.resume, start_over=args.start_over)
        metrics = trainer.fit()
        trainer.close()
        if info.is_main and metrics:
            print_metrics(metrics, "validation")
        # every rank leaves together: a rank tearing gloo down while its peer still runs can abort (SIGABRT)
        dist.barrier()
    finally:
        dist.cleanup()
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    import json

    from pointwin.engine import Trainer, TrainSettings, dist
    from pointwin.engine.builders import build_dataset, build_model, dataset_evaluator

    cfg = _load_config(args.config, args.overrides, amp=args.amp)
    info = dist.init_distributed(None if args.device == "auto" else args.device)
    try:
        settings = TrainSettings.from_config(cfg.get("train"))
        model = build_model(cfg["model"], "model")
        dataset = build_dataset(_data_section(cfg, args.split), f"data.{args.split}")
        evaluate_fn = dataset_evaluator(dataset, cfg.get("eval"))
        writer = getattr(dataset, "format_results", None)
        if evaluate_fn is None and (args.out is None or writer is None):
            raise CLIError(f"the data.{args.split} dataset ({type(dataset).__name__}) has no evaluate() method")
        if args.out is not None and writer is None:
            raise CLIError(f"--out: the data.{args.split} dataset ({type(dataset).__name__}) has no prediction "
                           "file format (format_results)")
        # its own folder per checkpoint: nothing goes into the training run's log.jsonl or curves
        work_dir = _work_dir(args) / "eval" / args.ckpt.stem
        trainer = Trainer(model, None, settings, work_dir, evaluate_fn=evaluate_fn, device=args.device,
                          seed=args.seed, progress=not args.no_progress)
        report = trainer.load_weights(args.ckpt)
        trainer.epoch = report.epoch
        if evaluate_fn is not None:
            metrics = trainer.evaluate(dataset)
        else:
            trainer.last_results, metrics = trainer.predict(dataset), None
        trainer.close()
        if info.is_main and metrics is not None:
            print_metrics(metrics, f"{args.split} ({args.ckpt.name}, epoch {report.epoch})")
            out = work_dir / f"test_{args.split}_metrics.json"
            from pointwin.fileio import write_text

            write_text(out, json.dumps(metrics, indent=2, default=str))  # atomic: temp name + rename
            print(f"metrics written to {out}")
        if info.is_main and args.out is not None:
            path = writer(trainer.last_results, args.out)
            print(f"predictions written to {path}")
        dist.barrier()
    finally:
        dist.cleanup()
    return 0


def cmd_create_data(args: argparse.Namespace) -> int:
    what = f"create-data {args.dataset}"
    if getattr(args, "gt_database", False) and args.dataset != "kitti":
        raise CLIError(f"{what} --gt-database: only kitti has a GT-sampling database builder on the command line; "
                       "for other datasets call pointwin.datasets.gt_sampling.build_gt_database(dataset, out_dir)")
    if args.dataset == "synthetic":
        create = _call_available("pointwin.datasets.synthetic", ("create_synthetic",), what)
        written = create(args.out or Path("data/synthetic"), num_train=args.num_train, num_val=args.num_val,
                         seed=args.seed, workers=args.workers)
    else:
        if args.root is None:
            raise CLIError(f"{what} needs --root (the folder holding the raw dataset)")
        if not args.root.exists():
            raise CLIError(f"{what}: --root {args.root} does not exist")
        out = args.out or args.root
        if args.dataset == "nuscenes":
            create = _call_available("pointwin.datasets.nuscenes", ("create_nuscenes_infos",), what)
            written = create(args.root, version=args.version or "v1.0-trainval", out=out, max_sweeps=args.max_sweeps)
        elif args.dataset == "waymo":
            create = _call_available("pointwin.datasets.waymo", ("create_waymo_infos",), what)
            written = create(args.root, out, shard=_parse_shard(args.shard), workers=args.workers, split=args.split)
        else:
            create = _call_available("pointwin.datasets.kitti", ("create_kitti_infos",), what)
            written = create(args.root, out, split=args.split)
            if args.gt_database:
                from pointwin.datasets.gt_sampling import create_kitti_gt_database

                db = create_kitti_gt_database(args.root, out, split=args.split)
                print(f"gt database: {db}")
    if isinstance(written, dict):
        for split, path in written.items():
            print(f"{split}: {path}")
    else:
        print(f"wrote {written}")
    return 0


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CLIError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise CLIError(f"--shard {text}: need 0 <= I < N")
    return (i, n)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    if not args.pred.exists():
        raise CLIError(f"--pred {args.pred} does not exist")
    if args.benchmark == "waymo":
        if args.gt is None:
            raise CLIError("eval waymo needs --gt (ground-truth Objects .bin)")
        if not args.gt.exists():
            raise CLIError(f"--gt {args.gt} does not exist")
        evaluate_files = _call_available("pointwin.evaluation.waymo", ("evaluate_files",), "eval waymo")
        format_table = _call_available("pointwin.evaluation.waymo", ("format_table",), "eval waymo")
        result = evaluate_files(args.pred, args.gt)
        print(format_table(result))
    elif args.benchmark == "kitti":
        if args.gt is None or not args.gt.is_dir():
            raise CLIError(f"eval kitti needs --gt, the label_2 folder ({args.gt} is not a folder)")
        from pointwin.evaluation.kitti import evaluate_folders
        from pointwin.evaluation.kitti import format_table as kitti_table

        try:
            result = evaluate_folders(args.gt, args.pred, frame_ids=args.frames)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(f"eval kitti: {e}") from None
        print(kitti_table(result, ("Car", "Pedestrian", "Cyclist")))
    else:
        if args.dataroot is None:
            raise CLIError("eval nuscenes needs --dataroot (the nuScenes folder with the JSON tables)")
        evaluate = _call_available("pointwin.evaluation.nuscenes", ("evaluate_files",),
                                   "eval nuscenes")
        result = evaluate(args.pred, args.dataroot, version=args.version, eval_set=args.eval_set)
        table = getattr(importlib.import_module("pointwin.evaluation.nuscenes"), "format_table", None)
        print(table(result) if callable(table) else json.dumps(result, indent=2, default=str))
    if args.out is not None:
        from pointwin.fileio import write_text

        write_text(args.out, json.dumps(result, indent=2, default=str))  # atomic: temp name + rename
        print(f"metrics written to {args.out}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from pointwin import visualize as vis

    if args.what == "curves":
        log = args.log / "log.jsonl" if args.log.is_dir() else args.log
        if not log.is_file():
            raise CLIError(f"no training log at {log}")
        out = args.out or log.with_name("training_curves.png")
        vis.plot_training_curves(log, out)
        print(f"wrote {out}")
        return 0
    if args.what == "points":
        import json

        import numpy as np

        try:
            points = vis.read_points_file(args.file, args.dims)
        except ValueError as e:
            raise CLIError(str(e)) from None
        boxes = None
        if args.boxes is not None:
            from pointwin.errors import DataError

            try:
                boxes = np.asarray(json.loads(args.boxes.read_text()), dtype=np.float32).reshape(-1, 7)
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                raise DataError(f"expected a JSON list of [x, y, z, dx, dy, dz, yaw] boxes ({e})",
                                path=args.boxes) from None
        r = args.range
        if args.renderer == "open3d":
            vis.render_open3d(points, args.out, gt_boxes=boxes)
        else:
            vis.draw_bev(points, args.out, gt_boxes=boxes, extent=(-r, -r, r, r), title=args.file.name)
        print(f"wrote {args.out}")
        return 0
    # sample
    cfg = _load_config(args.config, args.overrides)
    from pointwin.engine import Trainer, TrainSettings
    from pointwin.engine.builders import build_dataset, build_model

    dataset = build_dataset(_data_section(cfg, args.split), f"data.{args.split}")
    predictions = None
    if args.ckpt is not None:
        model = build_model(cfg["model"], "model")
        trainer = Trainer(model, None, TrainSettings.from_config(cfg.get("train")), _work_dir(args),
                          device=args.device, seed=args.seed, progress=False)
        trainer.load_weights(args.ckpt)
        from torch.utils.data import Subset

        predictions = trainer.predict(Subset(dataset, args.index))
    out_dir = args.out or _work_dir(args) / "vis"
    for k, index in enumerate(args.index):
        if not 0 <= index < len(dataset):
            raise CLIError(f"--index {index} out of range for data.{args.split} ({len(dataset)} frames)")
        sample = dataset[index]
        pred = predictions[k] if predictions is not None else None
        path = out_dir / f"{sample.frame_id}.png"
        if args.renderer == "open3d":
            vis.render_open3d(sample.points.numpy(), path, gt_boxes=sample.boxes, pred=pred,
                              score_thr=args.score_thr)
        else:
            vis.draw_sample_bev(sample, path, pred=pred, score_thr=args.score_thr,
                                class_names=getattr(dataset, "class_names", None))
        print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    fn = _call_available("pointwin.export", ("export_main", "cli_export"), "pointwin export")
    return int(fn(args) or 0)


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from pointwin.api import load_predictor
    from pointwin.fileio import atomic_write, write_json

    predictor = load_predictor(args.ckpt, args.device, args.config, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [f.name.split(".")[0] for f in args.files]
    if len(set(names)) != len(names):
        raise CLIError("two input files share a name stem; their outputs would overwrite each other")
    total = 0
    for path, name in zip(tqdm(args.files, desc="predict", unit="file", disable=len(args.files) < 2), names,
                          strict=True):
        try:
            points = predictor.read_points(path, args.dims)
        except ValueError as e:
            raise CLIError(str(e)) from None
        result = predictor.predict(points)
        if predictor.task == "detection":
            result = result.above(args.score_threshold)
            total += len(result)
            write_json(args.out / f"{name}.json", {"file": str(path), **result.to_json()}, indent=1)
            if args.png:
                from pointwin.visualize import draw_bev

                draw_bev(points, args.out / f"{name}.png", pred_boxes=result.boxes, pred_scores=result.scores,
                         pred_labels=result.labels, class_names=result.class_names, title=path.name)
        else:
            with atomic_write(args.out / f"{name}.labels.npy", "wb") as f:
                np.save(f, result.labels, allow_pickle=False)
            write_json(args.out / f"{name}.json", {"file": str(path), **result.to_json()}, indent=1)
            if args.png:
                from pointwin.visualize import draw_bev

                draw_bev(points, args.out / f"{name}.png", title=path.name)
    what = f"{total} detections" if predictor.task == "detection" else "per-point labels"
    print(f"wrote {what} for {len(args.files)} files to {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pointwin.engine.builders import build_model
    from pointwin.engine.checkpoint import save_checkpoint
    from pointwin.export.converters import ConversionError, load_reference_checkpoint

    if args.out.resolve() == args.checkpoint.resolve():
        raise CLIError(f"--out {args.out} is the input checkpoint; choose another file")
    cfg = _load_config(args.config, args.overrides)
    model = build_model(cfg["model"], "model").eval()
    try:
        result = load_reference_checkpoint(model, args.checkpoint, args.source, strict=not args.allow_partial)
    except ConversionError as e:
        hint = "" if args.allow_partial else "\n(--allow-partial writes it anyway when only keys are off)"
        raise CLIError(f"{e}{hint}") from None
    except ValueError as e:  # unreadable file
        raise CLIError(str(e)) from None
    print(result.report())
    meta = {"converted_from": str(args.checkpoint), "source": args.source, "clean": result.clean}
    save_checkpoint(args.out, model, config=cfg.dump(), meta=meta)
    print(f"wrote {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    fn = _call_available("pointwin.bench", ("bench_main",), "pointwin bench")
    return int(fn(args) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from pointwin.demo import run_demo

    result = run_demo(work_dir=args.work_dir, quick=args.quick, device=args.device, seed=args.seed,
                      overrides=args.overrides, amp=args.amp, data_dir=args.data_dir, config=args.config,
                      threads=args.threads)
    return 0 if result is not None else 1


COMMANDS = {"train": cmd_train, "test": cmd_test, "create-data": cmd_create_data, "eval": cmd_eval,
            "visualize": cmd_visualize, "export": cmd_export, "predict": cmd_predict,
            "convert": cmd_convert, "bench": cmd_bench,
            "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    from pointwin.errors import PointwinError, PointwinWarning, one_line

    collected: list[str] = []
    show = warnings.showwarning

    def _collect(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, PointwinWarning):
            collected.append(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    debug = getattr(args, "debug", False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PointwinWarning)
            warnings.showwarning = _collect
            try:
                return COMMANDS[args.command](args)
            finally:
                warnings.showwarning = show
                _print_warnings(args.command, collected)
    except CLIError as e:
        if debug:
            raise
        print(f"pointwin {args.command}: error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE if "not available yet" in str(e) else EXIT_USAGE
    except (PointwinError, FileNotFoundError) as e:  # input errors (ConfigError, CheckpointError, DataError, ...)
        if debug:
            raise
        print(f"pointwin {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pointwin {args.command}: interrupted", file=sys.stderr)
        return 130


def _print_warnings(command: str, messages: list[str]) -> None:
    """The command's summary of accepted-but-partly-ignored input (each PointwinWarning once, in order)."""
    unique = list(dict.fromkeys(messages))
    if unique:
        print(f"pointwin {command}: {len(unique)} warning(s):", file=sys.stderr)
        for msg in unique:
            print(f"pointwin {command}: warning: {msg}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

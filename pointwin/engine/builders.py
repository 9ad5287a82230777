"""Build models, datasets and evaluators named in a config.

A ``type`` is either a registered name (``FlatFormer``, ``SyntheticDataset``; built by
``pointwin.models.build_model`` / ``pointwin.datasets.build_dataset``) or an import path
``package.module:Name`` for user code outside pointwin. A config may also list ``imports:`` — modules
imported before anything is built, so that their registry decorators run (mmdet's ``custom_imports``).

Trust boundary: a config is code. An import-path type runs the callable it names with the config's
arguments, and ``imports:`` runs a module's top level, so a config can do whatever that code does.
Standard-library modules (``subprocess:check_call``, ``os:system``) are refused as types and imports;
anything else installed can be named, so use configs only from sources you trust (as with any Python
script). Deployed models (``deploy.json``) never import anything a file names.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pointwin.config import Config, ConfigError, to_plain


def import_modules(cfg: Mapping) -> None:
    """Import every module named in ``cfg['imports']`` (a list of dotted module names)."""
    names = cfg.get("imports") or []
    if isinstance(names, str):
        names = [names]
    for name in names:
        _refuse_stdlib(str(name), f"module {name!r}", "imports")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import module {name!r}: {e}") from None


def _refuse_stdlib(module_name: str, what: str, where: str) -> None:
    """A config naming the standard library (``subprocess:check_call``, ``os:system``, ``builtins:eval``) is
    never a model or dataset: refuse it. This narrows, but does not close, what a config can run; see the
    README ("Configs are code"): use configs only from sources you trust."""
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names:
        raise ConfigError(f"{where}: {what} names the Python standard-library module {top!r}; import-path types "
                          "and imports must be pointwin's or your own code (configs can run code: use them only "
                          "from sources you trust)", key=where)


def import_object(path: str, where: str) -> Any:
    """``"pkg.mod:Name"`` -> the object (never from the standard library, see :func:`_refuse_stdlib`)."""
    module_name, _, attr = path.partition(":")
    _refuse_stdlib(module_name, f"type {path!r}", where)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: type {path!r}: cannot import {module_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: type {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _build_imported(cfg: Mapping, where: str) -> Any:
    target = import_object(cfg["type"], where)
    kwargs = {k: v for k, v in to_plain(cfg).items() if k != "type"}
    params = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"{where}: {cfg['type']} has no parameter(s) {unknown}; valid: {list(params)}")
    return target(**kwargs)


def _check(cfg: Any, where: str) -> None:
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {cfg!r}")


def _builder(module: str, name: str, where: str, registry: str) -> Callable:
    """``module.name`` (a build function), else ``module.registry.build``."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{where}: {module} cannot be imported in this build ({e})") from None
    fn = getattr(mod, name, None)
    if fn is None and hasattr(mod, registry):
        reg = getattr(mod, registry)
        return lambda cfg: reg.build(cfg, where=where)
    if fn is None:
        raise ConfigError(f"{where}: {module}.{name} is not available in this build; "
                          "name an importable class as 'type: package.module:Class' instead")
    return fn


def build_model(cfg: Mapping, where: str = "model") -> Any:
    _check(cfg, where)
    if ":" in str(cfg["type"]):
        return _build_imported(cfg, where)
    return _builder("pointwin.models", "build_model", where, "MODELS")(Config(cfg))


def build_dataset(cfg: Mapping, where: str = "data") -> Any:
    _check(cfg, where)
    if ":" in str(cfg["type"]):
        return _build_imported(cfg, where)
    return _builder("pointwin.datasets", "build_dataset", where, "DATASETS")(Config(cfg))


def dataset_evaluator(dataset: Any, eval_cfg: Mapping | None = None) -> Callable[[list], dict[str, float]] | None:
    """The evaluation function ``results -> {metric: value}`` for ``dataset``.

    In order: the dataset's own ``evaluate(results, **eval_cfg)`` method; with ``eval.type: segmentation``,
    per-class IoU / mIoU against the frames' ``point_labels``; otherwise, for a dataset with
    ``class_names``, Waymo-style AP/APH with BEV and 3D IoU
    (:func:`pointwin.evaluation.detection.evaluate_detections`, keys such as ``Car/AP_BEV``). None when
    nothing applies. The ``eval:`` config section (minus ``type``) becomes keyword arguments.
    """
    kwargs = {k: v for k, v in to_plain(eval_cfg or {}).items() if k != "type"}
    kind = (eval_cfg or {}).get("type")
    fn = getattr(dataset, "evaluate", None)
    if fn is not None and kind is None:
        return lambda results: fn(results, **kwargs)
    class_names = getattr(dataset, "class_names", None)
    if kind == "segmentation":
        from pointwin.evaluation.segmentation import SegmentationEvaluator

        names = kwargs.pop("class_names", None) or getattr(dataset, "point_label_names", None) or class_names
        if names is None:
            raise ConfigError("eval.type=segmentation needs eval.class_names or a dataset with point_label_names")

        def evaluate_segmentation(results: list) -> dict[str, float]:
            ev = SegmentationEvaluator(tuple(names), **kwargs)
            for i, pred in enumerate(results):
                ev.update(pred, dataset[i].point_labels)
            return ev.compute().as_dict()

        return evaluate_segmentation
    if kind not in (None, "detection"):
        raise ConfigError(f"eval.type must be detection or segmentation, got {kind!r}")
    if class_names is None:
        return None
    from pointwin.evaluation.detection import evaluate_detections

    def evaluate(results: list) -> dict[str, float]:
        gts = [dataset[i] for i in range(len(dataset))]
        return evaluate_detections(results, gts, class_names=list(class_names), **kwargs)

    return evaluate

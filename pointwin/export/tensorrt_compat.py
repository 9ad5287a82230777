"""Can TensorRT build an engine from these ONNX graphs? Checked node by node without a GPU.

The facts come from the operator support matrix of the ONNX-TensorRT parser that ships with TensorRT
(``docs/operators.md`` of github.com/onnx/onnx-tensorrt, release ``TENSORRT_VERSION``): which operators it
parses, the opset range, the data types per operator, and the restrictions below that can be decided from
a graph (each is one check in :func:`check_graph`). A graph that passes can still fail for reasons only a
build shows (memory, tactic availability), but one that fails here will not build: each problem names the
node, the rule and what to change.

Restrictions checked (TensorRT 10.1):

* ``ScatterND`` without ``reduction``; ``ScatterElements`` with any of TensorRT's reductions.
* ``axes`` of ``ReduceMax/Min/Sum/Mean/Prod``, ``Slice``, ``Squeeze``, ``Unsqueeze``, ``Pad`` and the ``axis`` of
  ``CumSum`` given as initializers / constants, not computed tensors.
* ``LayerNormalization``, ``MaxPool``: only the first output used.
* ``TopK``: ``sorted = 1`` and a constant ``K`` below 3840.
* ``Dropout``: not in training mode.
* ``Constant``: no sparse or string values.
* data types: the operator's data tensor in the types listed for it; DOUBLE anywhere is reported (TensorRT
  casts it down to FLOAT, clamping).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TENSORRT_VERSION = "10.1"
#: opsets the parser accepts (inclusive)
OPSET_RANGE = (9, 20)
#: source of the tables: onnx-tensorrt docs/operators.md at the 10.1 GA release (commit 96e7811)
SOURCE = "onnx-tensorrt docs/operators.md, ONNX-TensorRT 10.1 GA (96e7811)"

_FLOAT = ("FP32", "FP16", "BF16")
_FLOAT_INT = (*_FLOAT, "INT32", "INT64")
_FLOAT_INT_BOOL = (*_FLOAT_INT, "BOOL")
#: operator -> data types of its data tensor that the parser accepts (``Supported Types`` column of the matrix)
SUPPORTED_TYPES = {
    "Abs": _FLOAT_INT,
    "Acos": _FLOAT,
    "Acosh": _FLOAT,
    "Add": _FLOAT_INT,
    "And": ('BOOL',),
    "ArgMax": _FLOAT_INT,
    "ArgMin": _FLOAT_INT,
    "Asin": _FLOAT,
    "Asinh": _FLOAT,
    "Atan": _FLOAT,
    "Atanh": _FLOAT,
    "AveragePool": _FLOAT,
    "BatchNormalization": _FLOAT,
    "Cast": ('FP32', 'FP16', 'BF16', 'INT32', 'INT64', 'UINT8', 'BOOL'),
    "CastLike": ('FP32', 'FP16', 'BF16', 'INT32', 'INT64', 'UINT8', 'BOOL'),
    "Ceil": _FLOAT,
    "Celu": _FLOAT,
    "Clip": _FLOAT,
    "Concat": _FLOAT_INT_BOOL,
    "Constant": _FLOAT_INT_BOOL,
    "ConstantOfShape": _FLOAT_INT_BOOL,
    "Conv": _FLOAT,
    "ConvTranspose": _FLOAT,
    "Cos": _FLOAT,
    "Cosh": _FLOAT,
    "CumSum": _FLOAT,
    "DeformConv": ('FP32', 'FP16'),
    "DepthToSpace": _FLOAT_INT,
    "DequantizeLinear": ('INT8', 'FP8', 'INT4'),
    "Div": _FLOAT_INT,
    "Dropout": _FLOAT,
    "Einsum": _FLOAT,
    "Elu": _FLOAT,
    "Equal": _FLOAT_INT,
    "Erf": _FLOAT,
    "Exp": _FLOAT,
    "Expand": _FLOAT_INT_BOOL,
    "EyeLike": _FLOAT_INT_BOOL,
    "Flatten": _FLOAT_INT_BOOL,
    "Floor": _FLOAT,
    "GRU": _FLOAT,
    "Gather": _FLOAT_INT_BOOL,
    "GatherElements": _FLOAT_INT_BOOL,
    "GatherND": _FLOAT_INT_BOOL,
    "Gelu": ('FP32', 'FP16', 'BF16', 'INT8', 'INT32', 'INT64'),
    "Gemm": _FLOAT,
    "GlobalAveragePool": _FLOAT,
    "GlobalLpPool": _FLOAT,
    "GlobalMaxPool": _FLOAT,
    "Greater": _FLOAT_INT,
    "GreaterOrEqual": _FLOAT_INT,
    "GridSample": ('FP32', 'FP16'),
    "GroupNormalization": _FLOAT,
    "HardSigmoid": _FLOAT,
    "HardSwish": _FLOAT,
    "Hardmax": _FLOAT,
    "Identity": _FLOAT_INT_BOOL,
    "If": _FLOAT_INT_BOOL,
    "ImageScaler": _FLOAT,
    "InstanceNormalization": _FLOAT,
    "IsInf": _FLOAT,
    "IsNaN": _FLOAT_INT,
    "LRN": _FLOAT,
    "LSTM": _FLOAT,
    "LayerNormalization": _FLOAT,
    "LeakyRelu": _FLOAT,
    "Less": _FLOAT_INT,
    "LessOrEqual": _FLOAT_INT,
    "Log": _FLOAT,
    "LogSoftmax": _FLOAT,
    "Loop": _FLOAT_INT_BOOL,
    "LpNormalization": _FLOAT,
    "LpPool": _FLOAT,
    "MatMul": _FLOAT,
    "Max": _FLOAT_INT,
    "MaxPool": _FLOAT,
    "Mean": ('FP32', 'FP16', 'BF16', 'FP8', 'INT32', 'INT64'),
    "MeanVarianceNormalization": _FLOAT,
    "Min": _FLOAT_INT,
    "Mish": ('FP32', 'FP16'),
    "Mod": _FLOAT_INT,
    "Mul": _FLOAT_INT,
    "Neg": _FLOAT_INT,
    "NonMaxSuppression": ('FP32', 'FP16'),
    "NonZero": ('FP32', 'FP16'),
    "Not": ('BOOL',),
    "OneHot": _FLOAT_INT_BOOL,
    "Or": ('BOOL',),
    "PRelu": _FLOAT,
    "Pad": _FLOAT_INT,
    "ParametricSoftplus": _FLOAT,
    "Pow": _FLOAT,
    "QuantizeLinear": _FLOAT,
    "RNN": _FLOAT,
    "RandomNormal": _FLOAT,
    "RandomNormalLike": _FLOAT,
    "RandomUniform": _FLOAT,
    "RandomUniformLike": _FLOAT,
    "Range": _FLOAT_INT,
    "Reciprocal": _FLOAT,
    "ReduceL1": _FLOAT_INT,
    "ReduceL2": _FLOAT_INT,
    "ReduceLogSum": _FLOAT_INT,
    "ReduceLogSumExp": _FLOAT_INT,
    "ReduceMax": _FLOAT_INT,
    "ReduceMean": _FLOAT_INT,
    "ReduceMin": _FLOAT_INT,
    "ReduceProd": _FLOAT_INT,
    "ReduceSum": _FLOAT_INT,
    "ReduceSumSquare": _FLOAT_INT,
    "Relu": _FLOAT_INT,
    "Reshape": _FLOAT_INT_BOOL,
    "Resize": _FLOAT,
    "ReverseSequence": _FLOAT_INT_BOOL,
    "RoiAlign": ('FP32', 'FP16'),
    "Round": _FLOAT,
    "ScaledTanh": _FLOAT,
    "Scan": _FLOAT,
    "Scatter": _FLOAT_INT,
    "ScatterElements": _FLOAT_INT,
    "ScatterND": _FLOAT_INT,
    "Selu": _FLOAT,
    "Shape": _FLOAT_INT_BOOL,
    "Shrink": _FLOAT_INT,
    "Sigmoid": _FLOAT,
    "Sign": _FLOAT_INT,
    "Sin": _FLOAT,
    "Sinh": _FLOAT,
    "Size": _FLOAT_INT_BOOL,
    "Slice": _FLOAT_INT_BOOL,
    "Softmax": _FLOAT,
    "Softplus": _FLOAT,
    "Softsign": _FLOAT,
    "SpaceToDepth": _FLOAT_INT,
    "Split": _FLOAT_INT_BOOL,
    "Sqrt": _FLOAT,
    "Squeeze": _FLOAT_INT_BOOL,
    "Sub": _FLOAT_INT,
    "Sum": _FLOAT_INT,
    "Tan": _FLOAT,
    "Tanh": _FLOAT,
    "ThresholdedRelu": _FLOAT,
    "Tile": _FLOAT_INT_BOOL,
    "TopK": _FLOAT_INT,
    "Transpose": _FLOAT_INT_BOOL,
    "Trilu": _FLOAT_INT_BOOL,
    "Unsqueeze": _FLOAT_INT_BOOL,
    "Upsample": _FLOAT,
    "Where": _FLOAT_INT_BOOL,
    "Xor": ('BOOL',),
}
#: operators the matrix marks as not supported
UNSUPPORTED = frozenset({
    'AffineGrid', 'Bernoulli', 'BitShift', 'BitwiseAnd', 'BitwiseNot', 'BitwiseOr', 'BitwiseXor',
    'BlackmanWindow', 'CenterCropPad', 'Col2Im', 'Compress', 'ConcatFromSequence', 'ConvInteger', 'DFT', 'Det',
    'DynamicQuantizeLinear', 'HammingWindow', 'HannWindow', 'ImageDecoder', 'MatMulInteger', 'MaxRoiPool',
    'MaxUnpool', 'MelWeightMatrix', 'Multinomial', 'NegativeLogLikelihoodLoss', 'Optional',
    'OptionalGetElement', 'OptionalHasElement', 'QLinearConv', 'QLinearMatMul', 'RegexFullMatch', 'STFT',
    'SequenceAt', 'SequenceConstruct', 'SequenceEmpty', 'SequenceErase', 'SequenceInsert', 'SequenceLength',
    'SequenceMap', 'SoftmaxCrossEntropyLoss', 'SplitToSequence', 'StringConcat', 'StringNormalizer',
    'StringSplit', 'TfIdfVectorizer', 'Unique'
})

#: ONNX TensorProto data type number -> the names the support matrix uses
_ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
               16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4"}
#: inputs that must be constant: op -> (input index, attribute name of older opsets)
_CONSTANT_INPUTS = {"ReduceMax": 1, "ReduceMin": 1, "ReduceSum": 1, "ReduceMean": 1, "ReduceProd": 1, "Slice": 3,
                    "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "CumSum": 1}
#: the input that carries the data whose type the matrix lists (default 0)
_DATA_INPUT = {"Where": 1}
_SCATTER_REDUCTIONS = {"none", "add", "mul", "max", "min"}


@dataclass(frozen=True)
class Problem:
    """One reason TensorRT would refuse a graph: where, which rule, and the fix."""

    graph: str
    node: str
    op_type: str
    rule: str
    fix: str

    def __str__(self) -> str:
        return f"{self.graph}: node {self.node!r} ({self.op_type}): {self.rule}; {self.fix}"


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def check_graph(model, name: str = "graph") -> list[Problem]:
    """Problems TensorRT's ONNX parser would have with ``model`` (an ``onnx.ModelProto`` or a path)."""
    import onnx

    if isinstance(model, (str, Path)):
        name = Path(model).name if name == "graph" else name
        model = onnx.load(str(model))
    problems: list[Problem] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= imp.version <= OPSET_RANGE[1]:
            problems.append(Problem(name, "(model)", "opset", f"opset {imp.version} is outside TensorRT "
                                    f"{TENSORRT_VERSION}'s range {OPSET_RANGE[0]}-{OPSET_RANGE[1]}",
                                    f"export with opset_version <= {OPSET_RANGE[1]}"))
        elif imp.domain not in ("", "ai.onnx"):
            problems.append(Problem(name, "(model)", "opset", f"custom domain {imp.domain!r}",
                                    "needs a TensorRT plugin for every op of that domain"))
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output]}
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in model.graph.output}
    for i, node in enumerate(model.graph.node):
        label = node.name or f"#{i}"

        def add(rule: str, fix: str, node=node, label=label) -> None:
            problems.append(Problem(name, label, node.op_type, rule, fix))

        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            add(f"operator of domain {node.domain!r}", "replace it by standard ONNX ops or provide a plugin")
            continue
        if op in UNSUPPORTED or op not in SUPPORTED_TYPES:
            add(f"TensorRT {TENSORRT_VERSION} has no {op} importer", "express it with supported ops (see "
                "pointwin.export.tensorrt_compat.SUPPORTED_TYPES)")
            continue
        k = _DATA_INPUT.get(op, 0)
        tensor = node.input[k] if len(node.input) > k and node.input[k] else (node.output[0] if node.output else "")
        if op in ("Constant", "ConstantOfShape", "Cast", "Shape"):
            tensor = node.output[0]
        dtype = _ONNX_TYPES.get(types.get(tensor, 0))
        if dtype == "DOUBLE":
            add("a DOUBLE tensor (TensorRT casts it to FLOAT, clamping to +-FLT_MAX)", "keep the graph in float32")
        elif dtype is not None and dtype not in SUPPORTED_TYPES[op] and op not in ("Shape",):
            add(f"data type {dtype} is not among {', '.join(SUPPORTED_TYPES[op])}",
                "cast before this node to a supported type")
        if op == "ScatterND" and _attr(node, "reduction", "none") != "none":
            add(f"ScatterND reduction {_attr(node, 'reduction')!r} is unsupported",
                "use ScatterElements with the reduction, or ScatterND on unique indices")
        if op == "ScatterElements" and _attr(node, "reduction", "none") not in _SCATTER_REDUCTIONS:
            add(f"ScatterElements reduction {_attr(node, 'reduction')!r}", "use none/add/mul/max/min")
        if op in _CONSTANT_INPUTS:
            j = _CONSTANT_INPUTS[op]
            if len(node.input) > j and node.input[j] and node.input[j] not in constants:
                add(f"input {j} (axes) is computed at run time", "make it a constant / initializer")
        if op in ("LayerNormalization", "MaxPool") and any(o and (consumers.get(o) or o in outputs)
                                                              for o in node.output[1:]):
            add("only the first output is supported", "do not use the extra outputs")
        if op == "TopK":
            if _attr(node, "sorted", 1) != 1:
                add("sorted must be 1", "export TopK sorted")
            kname = node.input[1] if len(node.input) > 1 else ""
            kval = _constant_value(model, kname)
            if kval is None:
                add("K is computed at run time", "make K a constant")
            elif int(kval) >= 3840:
                add(f"K = {int(kval)} is not below 3840", "take the top-K in smaller pieces or on the host")
        if op == "Dropout" and len(node.input) > 2 and node.input[2]:
            value = _constant_value(model, node.input[2])
            if value is None or bool(value):
                add("training_mode must be a constant False", "export in eval mode")
        if op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings")
                                    for a in node.attribute):
            add("sparse or string constants are unsupported", "use dense numeric constants")
    return problems


def _constant_value(model, name: str):
    """The first element of the initializer or ``Constant`` output called ``name``; None if not constant."""
    import onnx.numpy_helper as nh

    tensors = [t for t in model.graph.initializer if t.name == name]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" and n.output and n.output[0] == name
                for a in n.attribute if a.name == "value"]
    if not tensors:
        return None
    arr = nh.to_array(tensors[0])
    return arr.reshape(-1)[0] if arr.size else None


def check_profile(graphs: dict[str, str | Path], shapes: dict[str, dict[str, tuple]]) -> list[Problem]:
    """Is an optimisation profile consistent with the graphs' inputs?

    Args:
        graphs: graph name -> ONNX path (e.g. ``{"backbone": ".../backbone.onnx", "head": ...}``).
        shapes: graph name -> input name -> (min, opt, max) shapes, as
            :func:`pointwin.export.tensorrt.input_shapes` gives them.

    Every input needs a profile and every profile an input; ranks agree; a static axis has the graph's size
    in min, opt and max; a dynamic axis has ``1 <= min <= opt <= max``; inputs that share a dynamic axis
    name (one symbol, one size at run time) have the same min / opt / max on it.
    """
    import onnx

    problems: list[Problem] = []
    for gname, path in graphs.items():
        model = onnx.load(str(path))
        given = shapes.get(gname, {})
        symbols: dict[str, tuple[str, tuple[int, int, int]]] = {}
        inputs = {i.name: i for i in model.graph.input}
        for name in sorted(set(given) - set(inputs)):
            problems.append(Problem(gname, name, "profile", "profile for an input the graph does not have",
                                    "drop it or re-export"))
        for name, vi in inputs.items():
            if name not in given:
                problems.append(Problem(gname, name, "profile", "graph input without a profile",
                                        "add its (min, opt, max) shapes"))
                continue
            dims = vi.type.tensor_type.shape.dim
            mins, opts, maxs = (tuple(int(v) for v in s) for s in given[name])
            if not len(mins) == len(opts) == len(maxs) == len(dims):
                problems.append(Problem(gname, name, "profile", f"rank {len(dims)} in the graph, profile shapes "
                                        f"{mins} / {opts} / {maxs}", "give one size per axis"))
                continue
            for axis, (d, lo, mid, hi) in enumerate(zip(dims, mins, opts, maxs, strict=True)):
                where = f"axis {axis}"
                if d.HasField("dim_value"):
                    if not lo == mid == hi == d.dim_value:
                        problems.append(Problem(gname, name, "profile", f"{where} is static {d.dim_value} but the "
                                                f"profile gives {lo}/{mid}/{hi}", f"use {d.dim_value}"))
                    continue
                if not 1 <= lo <= mid <= hi:
                    problems.append(Problem(gname, name, "profile", f"{where} ({d.dim_param or '?'}): min/opt/max "
                                            f"{lo}/{mid}/{hi} not ordered", "need 1 <= min <= opt <= max"))
                if d.dim_param:
                    seen = symbols.setdefault(d.dim_param, (name, (lo, mid, hi)))
                    if seen[1] != (lo, mid, hi):
                        problems.append(Problem(gname, name, "profile", f"{where} is {d.dim_param!r} like "
                                                f"{seen[0]} but has {lo}/{mid}/{hi} vs {'/'.join(map(str, seen[1]))}",
                                                "one dynamic axis, one range"))
    return problems


def check_export(paths: Iterable[str | Path]) -> list[Problem]:
    """Problems of every graph in ``paths`` (e.g. ``backbone.onnx`` and ``head.onnx`` of a deploy folder)."""
    problems: list[Problem] = []
    for p in paths:
        problems += check_graph(p)
    return problems


__all__ = ["OPSET_RANGE", "SOURCE", "SUPPORTED_TYPES", "TENSORRT_VERSION", "UNSUPPORTED", "Problem", "check_export",
           "check_graph", "check_profile"]

"""Static check: will TensorRT's ONNX parser take this graph? (No TensorRT needed.)

The list of supported operators, the opsets each TensorRT release reads, and the first release of
operators added during 10.x are in ``onnx_ops.txt`` beside this file, with their source named in
its header. The check walks every node, including those inside If/Loop/Scan bodies and model-local
functions, and also tests the few operator restrictions that matter for rada-export's graphs
(zero points of Q/DQ nodes, constant ``axes`` inputs, LayerNormalization's single output).

The default target is TensorRT 10.3, what JetPack 6 ships: the oldest TensorRT a bundle is meant
to be built with, so a graph that passes here parses on every later 10.x and on 11.x.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rada_export.errors import RadaError
from rada_export.runtimes.trt_environment import parse_version

OPS_FILE = Path(__file__).with_name("onnx_ops.txt")
DEFAULT_TARGET = "10.3"  # JetPack 6
BASE_VERSION = "10.0"
DEFAULT_DOMAINS = ("", "ai.onnx")

REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
# (op, input index of `axes`, first TensorRT version that accepts a computed `axes` tensor or None)
CONSTANT_AXES = [(op, 1, None) for op in REDUCE_OPS] + [
    ("Squeeze", 1, "10.7"),
    ("Unsqueeze", 1, "10.7"),
    ("Slice", 3, "10.3"),
    ("Pad", 3, "10.4"),
]


@dataclass(frozen=True)
class SupportedOps:
    ops: dict[str, tuple[int, ...]]  # operator -> first TensorRT version (parsed)
    opsets: list[tuple[tuple[int, ...], int, int]]  # (TensorRT version, lowest, highest), ascending
    source: str

    @property
    def newest_known(self) -> tuple[int, ...]:
        return max([v for v, _, _ in self.opsets] + list(self.ops.values()))

    def opset_range(self, target: tuple[int, ...]) -> tuple[int, int]:
        usable = [(lo, hi) for version, lo, hi in self.opsets if version <= target]
        if not usable:
            raise RadaError(f"no opset range is known for TensorRT {'.'.join(map(str, target))}",
                            f"check against TensorRT {BASE_VERSION} or newer")
        return usable[-1]

    def first_version(self, op: str) -> tuple[int, ...] | None:
        return self.ops.get(op)


@functools.lru_cache(maxsize=4)
def load_supported_ops(path: str | os.PathLike | None = None) -> SupportedOps:
    path = Path(path) if path is not None else OPS_FILE
    ops: dict[str, tuple[int, ...]] = {}
    opsets = []
    source: list[str] = []
    in_source = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            in_source = (in_source and bool(text)) or text.startswith("Source:")
            if in_source:
                source.append(text)
            continue
        parts = line.split()
        try:
            if parts[0] == "@opset":
                opsets.append((parse_version(parts[1]), int(parts[2]), int(parts[3])))
            elif len(parts) in (1, 2):
                ops[parts[0]] = parse_version(parts[1] if len(parts) == 2 else BASE_VERSION)
            else:
                raise ValueError(line)
        except (IndexError, ValueError):
            raise RadaError(f"{path}:{number}: cannot read {raw!r}", "restore onnx_ops.txt from the rada-export source") from None
    return SupportedOps(ops=ops, opsets=sorted(opsets), source=" ".join(source))


@dataclass
class OpCheck:
    """What the static check found in one graph."""

    target: str
    opset: int | None
    op_counts: dict[str, int] = field(default_factory=dict)  # every op type in the graph
    unsupported: dict[str, int] = field(default_factory=dict)  # op -> number of nodes
    problems: list[str] = field(default_factory=list)  # opset and restriction violations
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.problems

    def describe(self) -> str:
        parts = []
        if self.unsupported:
            parts.append("unsupported operators: " + ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})"
                                                               for op, n in sorted(self.unsupported.items())))
        parts.extend(self.problems)
        return "; ".join(parts) if parts else "all operators supported"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "opset": self.opset, "ok": self.ok, "unsupported": self.unsupported,
                "problems": self.problems, "notes": self.notes, "op_counts": self.op_counts}


def _load(model_or_path: Any):
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, None
    path = Path(model_or_path)
    if not path.is_file():
        raise RadaError(f"ONNX graph {path} does not exist", "re-export the bundle")
    try:
        return onnx.load(str(path), load_external_data=False), path.parent
    except Exception as err:
        raise RadaError(f"{path} is not a readable ONNX graph ({str(err).splitlines()[0][:200]})",
                        "re-export the bundle (the file may be truncated)") from None


def _subgraphs(node) -> Iterator[Any]:
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _walk(graph, functions: dict, seen_functions: set) -> Iterator[tuple[Any, Any]]:
    """(node, the graph or function holding it) for every node, bodies of subgraphs and local functions included."""
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in functions:
            if key not in seen_functions:
                seen_functions.add(key)
                for inner in functions[key].node:
                    yield inner, functions[key]
                    for sub in _subgraphs(inner):
                        yield from _walk(sub, functions, seen_functions)
            continue
        yield node, graph
        for sub in _subgraphs(node):
            yield from _walk(sub, functions, seen_functions)


def _constants(model) -> tuple[dict[str, Any], set[str]]:
    """Initializers by name, and names of every tensor produced by a Constant node (anywhere)."""
    inits = {t.name: t for t in model.graph.initializer}
    constant_outputs = set()
    functions = {(f.domain, f.name): f for f in model.functions}
    for node, _ in _walk(model.graph, functions, set()):
        if node.op_type == "Constant":
            constant_outputs.update(node.output)
    # An Identity of a constant is still a constant (exporters emit those for shared weights).
    identities = {}
    for node, _ in _walk(model.graph, functions, set()):
        if node.op_type == "Identity" and node.input:
            identities[node.output[0]] = node.input[0]
    changed = True
    while changed:
        changed = False
        for out, src in identities.items():
            if out not in constant_outputs and (src in constant_outputs or src in inits):
                constant_outputs.add(out)
                changed = True
    return inits, constant_outputs


def _tensor_value(tensor, base_dir):
    from onnx import numpy_helper

    if tensor.data_location == tensor.EXTERNAL:
        if base_dir is None:
            return None
        return numpy_helper.to_array(tensor, str(base_dir))
    return numpy_helper.to_array(tensor)


def _constant_node_values(model) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _qdq_problems(model, base_dir, inits, constant_outputs) -> list[str]:
    import numpy as np

    problems = []
    node_values = None
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        if len(node.input) < 3 or not node.input[2]:
            # No zero point: allowed. onnx-tensorrt 10.1-GA onnxOpImporters.cpp (QuantDequantLinearHelper)
            # reads the zero point only when the input is present and otherwise quantizes symmetrically,
            # to INT8, with zero point 0 (https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/onnxOpImporters.cpp).
            continue
        name = node.input[2]
        if name in inits:
            value = _tensor_value(inits[name], base_dir)
        elif name in constant_outputs:
            node_values = node_values if node_values is not None else _constant_node_values(model)
            value = node_values.get(name)
        else:
            problems.append(f"{label}: its zero point {name!r} is computed, TensorRT needs a constant 0")
            continue
        if value is None:
            continue
        if np.asarray(value).dtype != np.int8:
            problems.append(f"{label}: zero point is {np.asarray(value).dtype}, TensorRT's explicit quantization needs int8")
        if np.any(np.asarray(value) != 0):
            problems.append(f"{label}: zero point is not 0 (asymmetric), TensorRT needs symmetric quantization (zero point 0)")
    return problems


def check_ops(model_or_path: Any, trt_version: str = DEFAULT_TARGET, supported: SupportedOps | None = None) -> OpCheck:
    """Checks every operator of a graph (a path or an onnx.ModelProto) against TensorRT ``trt_version``."""
    supported = supported or load_supported_ops()
    target = parse_version(trt_version)
    if not target or target < parse_version(BASE_VERSION):
        raise RadaError(f"cannot check against TensorRT {trt_version}", f"the list covers TensorRT {BASE_VERSION} and newer")
    model, base_dir = _load(model_or_path)
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    result = OpCheck(target=trt_version, opset=opset)
    if target > supported.newest_known:
        result.notes.append(f"TensorRT {trt_version} is newer than the operator list ({supported.source or OPS_FILE.name}); "
                            "operators it added later are reported as unsupported")
    low, high = supported.opset_range(target)
    if opset is None:
        result.problems.append("the graph imports no default-domain (ai.onnx) opset")
    elif not low <= opset <= high:
        result.problems.append(f"opset {opset} is outside the opsets TensorRT {trt_version}'s ONNX parser reads ({low}-{high})")

    functions = {(f.domain, f.name): f for f in model.functions}
    counts: Counter = Counter()
    unsupported: Counter = Counter()
    inits, constant_outputs = _constants(model)
    restrictions = []
    for node, _holder in _walk(model.graph, functions, set()):
        domain = node.domain or ""
        name = node.op_type if domain in DEFAULT_DOMAINS else f"{domain}:{node.op_type}"
        counts[name] += 1
        if domain not in DEFAULT_DOMAINS:
            unsupported[name] += 1
            continue
        first = supported.first_version(node.op_type)
        if first is None:
            unsupported[name] += 1
            continue
        if first > target:
            unsupported[f"{name} (needs TensorRT {'.'.join(map(str, first))})"] += 1
            continue
        if node.op_type == "LayerNormalization" and sum(1 for o in node.output[1:] if o) > 0:
            restrictions.append(f"LayerNormalization {node.name!r} uses its Mean/InvStdDev outputs; TensorRT imports only the first output")
        for op, index, free_from in CONSTANT_AXES:
            if node.op_type != op or len(node.input) <= index or not node.input[index]:
                continue
            if free_from is not None and target >= parse_version(free_from):
                continue
            axes = node.input[index]
            if axes not in inits and axes not in constant_outputs:
                until = f" before TensorRT {free_from}" if free_from else ""
                restrictions.append(f"{op} {node.name!r}: its axes input {axes!r} is computed; TensorRT needs a constant{until}")
    result.op_counts = dict(sorted(counts.items()))
    result.unsupported = dict(sorted(unsupported.items()))
    result.problems.extend(sorted(set(restrictions)))
    result.problems.extend(_qdq_problems(model, base_dir, inits, constant_outputs))
    return result


def unsupported_ops(model_or_path: Any, trt_version: str = DEFAULT_TARGET) -> dict[str, int]:
    """Operator types TensorRT ``trt_version``'s ONNX parser does not take -> number of nodes (empty when all are fine)."""
    return check_ops(model_or_path, trt_version).unsupported

"""Which graphs `rada-export trt` builds, in which precision, and how to use what it built. No TensorRT needed.

The runtime runs three graphs: the fused ``model`` (predict on the bundle's classes), the
``image_encoder`` (test-time adaptation, and predict after ``set_classes``) and the ``text_encoder``
(``set_classes``). ``graph="all"``, the default, builds an engine for each, so that no path the
runtime takes falls back to ONNX Runtime unsaid; the head graph is not among them (the runtime
computes the head on the host, where TTA updates it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rada_export.errors import RadaError
from rada_export.runtimes.engine_selection import RUNTIME_GRAPHS
from rada_export.runtimes.manifest import GRAPH_NAMES, Manifest

from .plan import VARIANT_GRAPHS, BuildRequest

ALL = "all"


@dataclass(frozen=True)
class GraphBuild:
    """One engine of a `trt` call: its request, and why its precision differs from the one asked for (or "")."""

    request: BuildRequest
    note: str = ""
    skipped: bool = False  # not built in this call (the note says why and how to build it)


def parse_graphs(spec: str) -> list[str]:
    """'all' -> the runtime's graphs; 'model,text_encoder' -> those, in that order, each once."""
    names = [part.strip() for part in str(spec).split(",") if part.strip()]
    if not names:
        raise RadaError("graph is empty", "pass graph='all' (the default) or graph names, e.g. graph='model,text_encoder'",
                        field="graph")
    if names == [ALL]:
        return list(RUNTIME_GRAPHS)
    unknown = [n for n in names if n not in GRAPH_NAMES and n != ALL]
    if unknown or ALL in names:
        bad = ALL if not unknown else unknown[0]
        raise RadaError(f"graph {bad!r} is unknown" if unknown else "graph 'all' cannot be combined with graph names",
                        "use graph='all', or one or more (comma-separated) of "
                        + ", ".join(f"graph={g!r}" for g in GRAPH_NAMES), field="graph")
    return list(dict.fromkeys(names))


def plan_graphs(request: BuildRequest, spec: str, manifest: Manifest) -> list[GraphBuild]:
    """One request per graph of ``spec``. With several graphs, a graph that has no variant in the requested
    precision (the text encoder and the head are FP32 only) is built in FP32, and the note says so; a
    single named graph keeps the precision asked for (the plan then says why it cannot be built)."""
    graphs = parse_graphs(spec)
    several = spec.strip() == ALL or len(graphs) > 1
    if spec.strip() == ALL:
        graphs = [g for g in graphs if g in manifest.graphs]
    builds = []
    for graph in graphs:
        precision = request.precision
        note = ""
        has_variant = precision == "fp32" or manifest.graph_key(graph, precision) in manifest.graphs
        if several and not has_variant and graph not in VARIANT_GRAPHS:
            if request.dla_core is not None:
                builds.append(GraphBuild(replace(request, graph=graph), (
                    f"{graph}: not built: the bundle has it in FP32 only, which the DLA cannot run; build it for the GPU "
                    f"with graph='{graph}', precision='fp32' and no DLA core"), skipped=True))
                continue
            precision = "fp32"
            note = f"{graph}: the bundle has it in FP32 only, so its engine is FP32 (it is small)"
        builds.append(GraphBuild(replace(request, graph=graph, precision=precision), note))
    return builds


def usage_lines(bundle: str | Path, precision: str) -> tuple[str, str]:
    """(the `rada-export predict` command, the `load_bundle(...)` line) that run on the engines `trt` built.

    The precision is named: with it the runtime takes, per graph, this precision's engine or the FP32
    engine of graphs that have no such variant (:func:`rada_export.runtimes.engine_selection.select_engines`).
    """
    where = str(bundle)
    quoted = f"'{where}'" if any(c in where for c in " \"'$") else where
    return (f"rada-export predict --bundle {quoted} --precision {precision} IMAGE ...",
            f"rt = load_bundle({where!r}, precision={precision!r})")


__all__ = ["ALL", "GraphBuild", "parse_graphs", "plan_graphs", "usage_lines"]

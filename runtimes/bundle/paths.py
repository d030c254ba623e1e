"""Confinement of every path a bundle names: one set of checks, used by every reader of a bundle.

A bundle is untrusted input (copied between machines, downloaded, shared). Whatever it names (a
graph, a weights file, the tokenizer's vocabulary, a checksummed file, an external-data location
inside an ONNX graph) must stay inside the bundle folder: no absolute path, no ``..``, and no
symbolic link that leads out. Errors name the entry and the path as written, never the content of
what it points at.

Only the standard library and protobuf (a dependency of onnxruntime) are used: the device runtime
has no ``onnx`` package.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from rada_export.errors import RadaError

_FIX = "re-export the bundle with `rada-export onnx` (a bundle names only files inside its own folder)"


def _shown(rel: object) -> str:
    text = repr(rel)
    return text if len(text) <= 120 else text[:117] + "...'"


def check_relative(rel: object, entry: str, where: str = "the bundle") -> PurePosixPath:
    """The lexical rules: a non-empty relative POSIX path without ``..``, drive or backslash."""
    if not isinstance(rel, str) or not rel.strip():
        raise RadaError(f"{where}: {entry} must be a relative path inside the bundle, got {_shown(rel)}", _FIX)
    if "\x00" in rel or "\\" in rel:
        raise RadaError(f"{where}: {entry} holds a NUL or backslash: {_shown(rel)}", _FIX)
    posix = PurePosixPath(rel)
    if posix.is_absolute() or PureWindowsPath(rel).drive or rel.startswith("~"):
        raise RadaError(f"{where}: {entry} is an absolute path ({_shown(rel)}); paths in a bundle are relative to it", _FIX)
    if ".." in posix.parts:
        raise RadaError(f"{where}: {entry} climbs out of the bundle with '..' ({_shown(rel)})", _FIX)
    if posix == PurePosixPath("."):
        raise RadaError(f"{where}: {entry} names the bundle folder itself, not a file in it", _FIX)
    return posix


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real != root_real and (real + os.sep).startswith(root_real.rstrip(os.sep) + os.sep)


def confine(root: str | os.PathLike, rel: object, entry: str, where: str | None = None) -> Path:
    """``root / rel`` after checking that ``rel`` is relative, has no ``..`` and, once symbolic links
    are resolved, stays inside ``root``. ``entry`` names the manifest entry in the error."""
    root = Path(root)
    where = where or f"bundle {root}"
    posix = check_relative(rel, entry, where)
    if not _inside(os.path.join(root, *posix.parts), os.path.realpath(root)):
        raise RadaError(f"{where}: {entry} ({_shown(rel)}) leads outside the bundle through a symbolic link", _FIX)
    return root.joinpath(*posix.parts)


def check_links(root: str | os.PathLike, where: str | None = None) -> None:
    """Refuses a folder holding any symbolic link that resolves outside it (or dangles).

    This covers the files a bundle reads by fixed name (head.safetensors, text_features.npy,
    engines/) and the external-data files an ONNX graph names, whatever the manifest says.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    where = where or f"bundle {root}"
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(path, root_real):
                rel = os.path.relpath(path, root)
                raise RadaError(f"{where}: {rel} is a symbolic link that leads outside the bundle", _FIX)


# -- external data named inside ONNX graphs -----------------------------------------------------------
# ONNX Runtime reads a tensor's weights from the file its `external_data` "location" names. Versions
# from 1.24 refuse locations outside the model's folder themselves; older ones (Jetson wheels) do not.
# The few onnx.proto messages that can carry a tensor are declared here with their field numbers
# (onnx/onnx.proto; tests/test_trust.py checks them against the onnx package), so the check parses a
# graph without the onnx package and skips everything else (weights included) as unknown fields.

ONNX_SUBSET = {
    "Entry": [("key", 1, "string", False), ("value", 2, "string", False)],
    # raw_data is declared (as bytes) only because upb skips a known bytes field faster than an unknown one.
    "Tensor": [("external_data", 13, "Entry", True), ("data_location", 14, "int32", False), ("name", 8, "string", False),
               ("raw_data", 9, "bytes", False)],
    "Sparse": [("values", 1, "Tensor", False), ("indices", 2, "Tensor", False)],
    "Attribute": [("t", 5, "Tensor", False), ("g", 6, "Graph", False), ("tensors", 10, "Tensor", True),
                  ("graphs", 11, "Graph", True), ("sparse_tensor", 22, "Sparse", False), ("sparse_tensors", 23, "Sparse", True)],
    "Node": [("attribute", 5, "Attribute", True)],
    "Graph": [("node", 1, "Node", True), ("initializer", 5, "Tensor", True), ("sparse_initializer", 15, "Sparse", True)],
    "Function": [("node", 7, "Node", True)],
    "Model": [("graph", 7, "Graph", False), ("functions", 25, "Function", True)],
}
_MODEL_CLASS = None


def _model_class():
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        proto = descriptor_pb2.FileDescriptorProto(name="rada_onnx_subset.proto", package="rada_onnx_subset", syntax="proto2")
        types = descriptor_pb2.FieldDescriptorProto
        scalar = {"string": types.TYPE_STRING, "int32": types.TYPE_INT32, "bytes": types.TYPE_BYTES}
        for message, fields in ONNX_SUBSET.items():
            msg = proto.message_type.add(name=message)
            for name, number, kind, repeated in fields:
                field = msg.field.add(name=name, number=number, label=3 if repeated else 1)
                if kind in scalar:
                    field.type = scalar[kind]
                else:
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                    field.type_name = f".rada_onnx_subset.{kind}"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _MODEL_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("rada_onnx_subset.Model"))
    return _MODEL_CLASS


def _tensors(graph):
    for tensor in graph.initializer:
        yield tensor
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for sparse in list(attr.sparse_tensors) + ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []):
            yield sparse.values
            yield sparse.indices
        for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            yield from _tensors(sub)


def external_data_locations(graph: str | os.PathLike | bytes) -> list[str]:
    """Every external-data location an ONNX file (a path, or its bytes) names (in its graph, subgraphs
    and functions); none for a file that does not parse (ONNX Runtime cannot open it either)."""
    from google.protobuf.message import DecodeError

    model = _model_class()()
    try:
        model.ParseFromString(graph if isinstance(graph, (bytes, bytearray, memoryview)) else Path(graph).read_bytes())
    except DecodeError:
        return []  # not a graph at all: nothing reads external data from it (the checksums say what is wrong)
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors += list(_node_tensors(node))
    locations = []
    for tensor in tensors:
        for item in tensor.external_data:
            if item.key == "location" and item.value not in locations:
                locations.append(item.value)
    return locations


_PARSED: dict[tuple, list[str]] = {}  # (real path, inode, size, mtime) -> locations: one parse per file version


def check_graph_external_data(graph_path: str | os.PathLike, entry: str, where: str | None = None) -> list[str]:
    """Refuses an ONNX file whose external data lies outside its own folder (ONNX Runtime resolves
    locations against the graph's folder); returns the locations it names."""
    graph_path = Path(graph_path)
    st = graph_path.stat()
    key = (os.path.realpath(graph_path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[key] = external_data_locations(graph_path)
    for location in _PARSED[key]:
        confine(graph_path.parent, location, f"the external-data location inside {entry}", where)
    return list(_PARSED[key])

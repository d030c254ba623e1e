"""OpenVINO on the CPU: the bundle's ONNX graphs compiled as they are, one infer request per thread.

OpenVINO reads the same ONNX files as ONNX Runtime (external data beside the graph included) and
compiles them for this CPU. Its inference precision is a compile setting, not a graph variant: the
FP32 graph runs in bf16 where the CPU computes bf16 natively (AVX512_BF16 or AMX, listed by
OpenVINO as ``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES``), in f32 elsewhere, and always in
f32 when precision ``fp32`` is asked for. The setting is passed explicitly either way, and read
back from the compiled model, so what ran never depends on OpenVINO's changing defaults.

A frames graph's camera-frame preprocessing always runs in f32 (runtimes/openvino_frames.py): in
bf16 it moved the resized pixels by up to 3.8 (normalised units) on 1080p frames, since its filter
weights come from pixel positions bf16 cannot hold. Under bf16 such a graph is compiled as two
models, the preprocessing in f32 and the rest in bf16; a frames graph that cannot be split runs
whole in f32.

Compiled models may be cached (``RADA_EXPORT_OPENVINO_CACHE``, a folder; off when unset): each
graph gets a folder named after the OpenVINO version and the sha256 of its files as the manifest
records them, so a changed graph or another OpenVINO never reads a stale blob, and nothing is ever
written into the bundle.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rada_export.errors import RadaError

from .manifest import GraphEntry, Manifest
from .openvino_frames import PIXELS, split_at_pixels, takes_frames

OPENVINO = "openvino"
CACHE_ENV = "RADA_EXPORT_OPENVINO_CACHE"
DEFAULT_CACHE = Path("~/.cache/rada-export/openvino")  # the documented place, when the variable names no other
INSTALL = "pip install 'rada-export[openvino]'"
SNIPPETS = "SNIPPETS_MODE"  # the CPU plugin's subgraph JIT; see free_dimensions
PRECISION = "INFERENCE_PRECISION_HINT"

_core_lock = threading.Lock()
_core = None


def openvino_installed() -> bool:
    """OpenVINO's package is present (cheap: nothing is imported)."""
    return importlib.util.find_spec("openvino") is not None


def import_openvino():
    try:
        import openvino
    except ImportError as err:
        raise RadaError("OpenVINO is not installed", f"{INSTALL}, or use backend='onnxruntime'", field="backend") from err
    return openvino


def shared_core():
    """One OpenVINO Core per process: it holds the device plugins, which load once."""
    global _core
    with _core_lock:
        if _core is None:
            ov = import_openvino()
            try:
                _core = ov.Core()
            except Exception as err:  # openvino raises its own exception types
                raise RadaError(f"OpenVINO does not start here: {_first_line(err)}",
                                "reinstall the openvino package, or use backend='onnxruntime'",
                                field="backend") from err
        return _core


@dataclass(frozen=True)
class CpuInfo:
    name: str  # OpenVINO's FULL_DEVICE_NAME of the CPU
    native_bf16: bool  # BF16 among OPTIMIZATION_CAPABILITIES: AVX512_BF16 or AMX
    openvino_default: str  # OpenVINO's own INFERENCE_PRECISION_HINT default on this CPU
    version: str  # OpenVINO's version


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """What OpenVINO says of this CPU (asked once per process)."""
    ov = import_openvino()
    core = shared_core()
    try:
        capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        default = _type_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME")).strip()
    except Exception as err:  # openvino raises its own exception types
        raise RadaError(f"OpenVINO has no usable CPU device here: {_first_line(err)}", "use backend='onnxruntime'",
                        field="backend") from err
    return CpuInfo(name, "BF16" in capabilities, default, ov.__version__.split("-")[0])


def _type_name(value) -> str:
    """OpenVINO's element type as its short name: f32, bf16, f16."""
    text = str(value)
    match = re.search(r"'(\w+)'", text)  # <Type: 'bfloat16'>
    name = match.group(1) if match else text
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


@dataclass(frozen=True)
class OpenVinoPlan:
    """How OpenVINO runs this runtime's graphs: decided once per load, applied to every graph."""

    inference_precision: str  # "bf16" or "f32", set explicitly on every compiled graph
    why: str  # the reason for that precision, in words
    cpu: CpuInfo
    cache_root: Path | None = None  # compiled-model cache, or None (off)
    threads: int | None = None  # INFERENCE_NUM_THREADS (None: OpenVINO's default, every core)

    def graph_variant(self, precision: str) -> str:
        """The bundle graph OpenVINO compiles for a requested variant: FP16 graphs are not used, since
        OpenVINO computes in 16 bits from the FP32 graph itself (``inference_precision``), and an FP16
        graph's casts only added conversions (measured slower than the FP32 graph in f32, no faster in bf16)."""
        return "fp32" if precision == "fp16" else precision

    def describe(self) -> str:
        cache = f"; compiled models cached in {self.cache_root}" if self.cache_root else ""
        threads = f", {self.threads} inference threads" if self.threads is not None else ""
        return (f"OpenVINO {self.cpu.version} on the CPU ({self.cpu.name}{threads}), computing in {self.inference_precision}: "
                f"{self.why}{cache}")


def plan_openvino(precision: str, bundle: Path) -> OpenVinoPlan:
    """The inference precision for a requested precision (``auto`` is the default), and the cache folder.

    ``fp32``: f32 always. Otherwise bf16 where the CPU computes it natively, else f32: ``auto`` and
    ``fp16`` run the FP32 graph so; ``int8`` runs the Q/DQ graph, its float layers so (on an AMX
    Xeon, bf16 there was as fast at batch 1 and 1.4x faster at batch 8, features within 0.9998 of
    ONNX Runtime's INT8 graph).
    """
    cpu = cpu_info()
    if precision == "fp32":
        return OpenVinoPlan("f32", "precision 'fp32' asks for full precision", cpu, cache_root(bundle))
    what = {"auto": "the FP32 graphs", "fp16": "fp16 asks for 16-bit compute: the FP32 graphs",
            "int8": "the INT8 graph's float layers"}.get(precision, "the graphs")
    if cpu.native_bf16:
        why = f"{what} in bf16, which this CPU computes natively (precision 'fp32' forces f32)"
        return OpenVinoPlan("bf16", why, cpu, cache_root(bundle))
    why = f"{what} in f32: this CPU has no native bf16"
    if cpu.openvino_default not in ("f32", "bf16"):  # e.g. f16 on ARM: not what the ViTs' parity was measured with
        why += f" (OpenVINO's own default here would be {cpu.openvino_default})"
    return OpenVinoPlan("f32", why, cpu, cache_root(bundle))


def cache_root(bundle: Path) -> Path | None:
    """The compiled-model cache named by RADA_EXPORT_OPENVINO_CACHE (``1`` for the default place), or None."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if not value or value == "0":
        return None
    root = (DEFAULT_CACHE if value == "1" else Path(value)).expanduser().resolve()
    inside = root == bundle.resolve() or bundle.resolve() in root.parents
    if inside:
        raise RadaError(f"the OpenVINO cache folder {root} is inside the bundle {bundle}, and reading a bundle never changes it",
                        f"set {CACHE_ENV} to a folder outside the bundle (e.g. {DEFAULT_CACHE})", field="cache")
    return root


def cache_folder(root: Path, manifest: Manifest, entry: GraphEntry, version: str) -> Path:
    """The cache folder of one graph: OpenVINO's version, then the sha256 of the graph and its external
    data as the (verified) manifest records them. OpenVINO keys blobs by path and settings within it."""
    digest = hashlib.sha256()
    for rel in (entry.file, entry.external_data):
        if rel is not None:
            digest.update(f"{rel}={manifest.files.get(rel, '')}\n".encode())
    safe_version = re.sub(r"[^A-Za-z0-9._-]", "_", version)
    return root / f"openvino-{safe_version}" / digest.hexdigest()


class OpenVinoRefusal(RadaError):
    """OpenVINO cannot run this graph (it does not compile, or computes it wrongly): ``auto`` runs the
    graph on ONNX Runtime instead; an explicit OpenVINO request gets the error."""


def probe_feeds(manifest: Manifest, entry: GraphEntry) -> dict[str, np.ndarray] | None:
    """A seeded one-image input for an image graph (pixels or frames at the model's size); None otherwise."""
    height, width = manifest.preprocess.size
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dtype in ((n, entry.input_dtypes.get(n, "float32")) for n in entry.inputs):
        if dtype == "uint8":
            feeds[name] = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        elif name == "pixels":
            feeds[name] = rng.standard_normal((1, 3, height, width), dtype=np.float32)
        else:
            return None
    return feeds


class OpenVinoRunner:
    """One graph compiled for the CPU. ``run`` is thread-safe: each thread infers on a request of its
    own (an infer request holds its tensors and must not run twice at once); the compiled model,
    weights included, is shared.

    A frames graph under bf16 is two compiled models (``preprocessing``: frames -> pixels in f32, then
    ``compiled``: pixels -> outputs), each with a request per thread; ``run`` chains them. Elsewhere
    ``preprocessing`` is None and ``compiled`` is the whole graph.

    ``probe``: an input run once after compiling, whose outputs must be finite. INT8 graphs get one:
    OpenVINO 2026.4's low-precision transformations returned NaN for every input of the ConvNeXt INT8
    graphs (a quantized convolution whose output a residual Add shares), while its float path and ONNX
    Runtime were exact; the probe turns that into a refusal at load, not NaN predictions.
    """

    def __init__(self, path: Path, entry: GraphEntry, plan: OpenVinoPlan, cache_dir: Path | None = None,
                 probe: dict[str, np.ndarray] | None = None, source: Any = None):
        """``source``: the VerifiedBundle the graph comes from (runtimes/bundle/verified.py), whose
        verified bytes OpenVINO reads from memory; None (a path only) for tools that checked the file."""
        path = Path(path)
        if source is None and not path.is_file():
            raise RadaError(f"ONNX graph {path} does not exist", "re-export the bundle")
        config = {PRECISION: plan.inference_precision}
        if plan.threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(plan.threads)
        if free_dimensions(entry):
            config[SNIPPETS] = "DISABLE"
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RadaError(f"cannot make the OpenVINO cache folder {cache_dir}: {err.strerror}",
                                f"set {CACHE_ENV} to a writable folder, or unset it", field="cache") from err
            config["CACHE_DIR"] = str(cache_dir)
        split = plan.inference_precision != "f32" and takes_frames(entry)
        compile_graph = functools.partial(_compile_split if split else _compile, config=config)
        compiled = _compile_verified(source, entry, path, compile_graph) if source is not None and hasattr(source, "graph_bytes") \
            else compile_graph(path)
        self.preprocessing, self.compiled = compiled if split else (None, compiled)
        self.snippets = config.get(SNIPPETS) != "DISABLE"
        self.path = path
        self.input_names = list(entry.inputs)
        self.output_names = list(entry.outputs)
        first = self.compiled if self.preprocessing is None else self.preprocessing  # fed the graph's inputs
        self._inputs = {name: _port_index(first.inputs, name, path) for name in self.input_names}
        self._outputs = [(name, self.compiled.outputs[_port_index(self.compiled.outputs, name, path)])
                         for name in self.output_names]
        self.inference_precision = _type_name(self.compiled.get_property(PRECISION))
        self.preprocessing_precision = None if self.preprocessing is None else \
            _type_name(self.preprocessing.get_property(PRECISION))
        whole_in_f32 = split and self.preprocessing is None
        self.precision_note = _precision_note(self.preprocessing_precision, whole_in_f32, self.inference_precision)
        if self.inference_precision != plan.inference_precision and not whole_in_f32:  # the description would not say what runs
            warnings.warn(f"OpenVINO compiled {path.name} for {self.inference_precision}, not the "
                          f"{plan.inference_precision} asked for", stacklevel=2)
        self.cache_dir = cache_dir
        self.version = plan.cpu.version
        self._local = threading.local()
        if probe is not None:
            try:
                self.run(probe)
            except OpenVinoRefusal as err:
                raise OpenVinoRefusal(f"{err.problem} on a seeded probe input, right after compiling",
                                      "use precision 'fp32' or 'fp16' with OpenVINO, or backend='onnxruntime' for this graph",
                                      field="precision") from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            first = None if self.preprocessing is None else self.preprocessing.create_infer_request()
            requests = self._local.requests = (first, self.compiled.create_infer_request())
        unknown = set(feeds) - set(self._inputs)
        if unknown:
            raise RadaError(f"{self.path.name} has no input(s) {sorted(unknown)}", f"feed {', '.join(self.input_names)}")
        inputs = {self._inputs[k]: v for k, v in feeds.items()}
        preprocessing, request = requests
        try:
            if preprocessing is not None:
                # The pixels stay in the preprocessing request's tensor, read in place by the second
                # request within this call (both belong to this thread).
                inputs = {0: preprocessing.infer(inputs, share_inputs=True, share_outputs=True)[0]}
            # Inputs are read in place; outputs are copies, since the request's own tensors are
            # overwritten by this thread's next call while the caller may still hold them.
            out = request.infer(inputs, share_inputs=True, share_outputs=False)
        except Exception as err:  # openvino raises its own exception types
            shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
            raise RadaError(f"OpenVINO cannot run {self.path.name} on inputs {shapes}: {_first_line(err)}",
                            f"feed the shapes the manifest gives: {dict(zip(self.input_names, self._shapes()))}") from err
        outputs = {name: out[port] for name, port in self._outputs}
        bad = [name for name, value in outputs.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
        if bad and all(np.isfinite(v).all() for v in feeds.values() if np.asarray(v).dtype.kind == "f"):
            raise OpenVinoRefusal(f"OpenVINO {self.version} returned non-finite {', '.join(bad)} from {self.path.name} "
                                  "for finite inputs", "use backend='onnxruntime' for this graph")
        return outputs

    def _shapes(self) -> list[str]:
        first = self.compiled if self.preprocessing is None else self.preprocessing
        return [str(first.inputs[i].get_partial_shape()) for i in self._inputs.values()]


def _precision_note(preprocessing: str | None, whole_in_f32: bool, precision: str) -> str:
    """What ran in which precision where a frames graph did not simply run in ``precision``; else ''."""
    if preprocessing is not None:
        return f"camera-frame preprocessing (frames -> {PIXELS}) in {preprocessing}, the rest in {precision}"
    if whole_in_f32:
        return (f"all in f32: this frames graph has no tensor named {PIXELS!r} ending its camera-frame preprocessing "
                "(a graph edited since its export), and that preprocessing is wrong in bf16")
    return ""


def free_dimensions(entry: GraphEntry) -> list[str]:
    """The graph's symbolic input dimensions other than the first input's leading (batch) one: the
    head graph's class count, a frames graph's height and width.

    OpenVINO 2026.4's CPU "snippets" (the JIT kernels it fuses attention-like subgraphs into) computed
    the head graph wrongly wherever its class count was left free: errors up to 1e25 on the attention
    product, at every batch and class count tried, while the same head inside the fused graph (classes
    fixed) was exact at every batch. With snippets off, every graph matched ONNX Runtime. Graphs whose
    only free dimension is the batch keep them (the INT8 graph ran up to 20 % slower without).
    """
    names = [name for shape in entry.inputs.values() for name in shape if isinstance(name, str)]
    first = next(iter(entry.inputs.values()), [])
    batch = first[0] if first and isinstance(first[0], str) else None
    return [name for name in dict.fromkeys(names) if name != batch]


def _compile_verified(source: Any, entry: GraphEntry, path: Path, compile_graph):
    """``compile_graph(path, model)`` on the graph's verified bytes (``model``). OpenVINO reads an ONNX
    graph's external data from files only, so a graph that has some is compiled from its path (no
    ``model``), and the files at the path must be the very files pinned and verified at load (same
    inodes) before and after the compilation."""
    model, external = source.graph_bytes(entry.file)
    if not external:
        return compile_graph(path, model)
    rels = [entry.file] + [(Path(entry.file).parent / loc).as_posix() for loc in external]
    compiled = compile_graph(path) if source.still_pinned(rels) else None
    if compiled is None or not source.still_pinned(rels):
        raise RadaError(f"bundle {source.path} was replaced after it was loaded, and {entry.file} could not be read from "
                        "the files that were verified", "load the bundle again (load_bundle) to use the new one")
    return compiled


def _compile_split(path: Path, model: bytes | None = None, *, config: dict) -> tuple[Any, Any]:
    """A frames graph as (preprocessing compiled in f32, the rest compiled with ``config``), or
    (None, the whole graph compiled in f32) where it cannot be split at ``pixels``."""
    graph = _read(path, model)
    parts = split_at_pixels(graph)
    in_f32 = {**config, PRECISION: "f32"}
    if parts is None:
        return None, _compile(path, graph, config=in_f32)
    preprocessing, rest = parts
    # Both keep the frames graph's settings, snippets off included: on the rest (pixels free in the
    # batch only) snippets were measured no faster on a ViT-B-32 (27-28 ms at batch 1, 108-112 at 8).
    return _compile(path, preprocessing, config=in_f32), _compile(path, rest, config=config)


def _read(path: Path, model: bytes | None = None):
    """The graph as an ``openvino.Model``: from ``model`` (its bytes) where given, else from ``path``."""
    core = shared_core()
    try:
        return core.read_model(model if model is not None else str(path))
    except Exception as err:  # openvino raises its own exception types
        raise OpenVinoRefusal(f"OpenVINO cannot read {path.name}: {_first_line(err)}",
                              "use backend='onnxruntime' for this bundle") from err


def _compile(path: Path, model: Any = None, *, config: dict):
    """``model`` (the graph's bytes, or an ``openvino.Model``) compiled for the CPU; the graph at
    ``path`` where ``model`` is None."""
    core = shared_core()
    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            model = _read(path, bytes(model))
        return core.compile_model(model if model is not None else str(path), "CPU", config)
    except OpenVinoRefusal:
        raise
    except Exception as err:  # openvino raises its own exception types
        if SNIPPETS in config and SNIPPETS in str(err):  # an OpenVINO without the (internal) setting
            return _compile(path, model, config={k: v for k, v in config.items() if k != SNIPPETS})
        raise OpenVinoRefusal(f"OpenVINO cannot compile {path.name}: {_first_line(err)}",
                              "use backend='onnxruntime' for this bundle") from err


def _port_index(ports, name: str, path: Path) -> int:
    for index, port in enumerate(ports):
        if name in port.get_names():
            return index
    raise RadaError(f"{path.name} compiled by OpenVINO has no tensor named {name!r}", "re-export the bundle")


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # OpenVINO's messages start with the source location; the reason follows.
    useful = [line for line in lines if not line.startswith(("Exception from", "Check "))] or lines or [type(err).__name__]
    return useful[0][:300]

"""The TensorRT calls of a build: parse the ONNX graph into a network, configure the builder, build.

Precision comes from the graph itself, never from builder flags: each graph is parsed into a
STRONGLY_TYPED network, so TensorRT builds exactly the types the graph holds, except DLA engines
on TensorRT 10.x (:func:`rada_export.tensorrt.dla.dla_build_mode`).

TensorRT 10 vs 11, the code paths that differ:

- Network creation: ``STRONGLY_TYPED`` is opt-in on 10.x; on 11.x every network is strongly typed
  and the flag is accepted and ignored, so it is set whenever the enum has it, and 0 is passed on
  an 11.x that no longer has it (:func:`network_flags`). ``EXPLICIT_BATCH`` is never passed: 10.x
  ignores it (networks are always explicit batch) and 11.x removed it.
- Precision flags: ``BuilderFlag.FP16`` / ``INT8`` / ``BF16`` and weak typing were deprecated
  in 10.x (weak typing from 10.12) and removed in 11.x. They are used in one place only: DLA
  on 10.0-10.7 (JetPack 6.1/6.2 = 10.3), whose DLA takes FP16/INT8 only through these flags,
  which a strongly typed network rejects; strongly typed DLA arrived in 11.4.1. There the
  network is weakly typed with FP16 set, as ``trtexec --useDLACore=0 --fp16
  --allowGPUFallback`` does on 10.x, plus ``OBEY_PRECISION_CONSTRAINTS`` with every layer the
  graph types FP32 pinned to FP32 (:func:`pin_fp32_layers`), so that the FP16 flag does not
  lower the graph's FP32 islands (``trtexec --precisionConstraints=obey --layerPrecisions``).
  INT8 with a DLA core is refused before the build (:data:`~rada_export.tensorrt.dla.DLA_INT8_PROBLEM`).
- INT8 calibrators (``IInt8EntropyCalibrator2``, ``config.int8_calibrator``): deprecated in 10.1,
  removed in 11.x. Not used: INT8 is only the Q/DQ graph (explicit quantization).
- ``BuilderFlag.TF32`` exists on both and is on by default; FP32 builds clear it.
- DLA: ``DeviceType.DLA``, ``config.DLA_core``, ``BuilderFlag.GPU_FALLBACK`` and
  ``config.can_run_on_DLA(layer)`` (recorded per layer type in the engine's JSON as
  ``dla_gpu_layers``: the layers that run on the GPU) exist on 10.x; 10.8+ and 11.0-11.4.0 have
  no DLA on Jetson, so the release is checked before the build (:func:`~rada_export.tensorrt.dla.dla_build_mode`).
- Unchanged between 10 and 11 and used as is (TensorRT Python API, "Builder", "NetworkConfig",
  "OnnxParser" pages of docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
  ``Builder``, ``OnnxParser.parse_from_file`` (a path,
  so external ``.onnx.data`` weights are found), ``set_memory_pool_limit(MemoryPoolType.WORKSPACE)``,
  ``create_optimization_profile``/``set_shape``, ``create_timing_cache``/``set_timing_cache``/
  ``get_timing_cache().serialize()``, ``build_serialized_network``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rada_export.errors import RadaError
from rada_export.progress import Reporter
from rada_export.runtimes import cuda_memory as cm
from rada_export.runtimes.trt_environment import TensorRTEnvironment, parse_version
from rada_export.runtimes.trt_logging import LogCapture, bullet_list, shared_logger

from .dla import DlaMode
from .plan import BuildPlan


@dataclass
class SerializedEngine:
    """What a build returns: the engine's bytes and how it was built."""

    data: Any  # TensorRT's IHostMemory: the serialized engine (a buffer)
    profiles: dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"} shapes
    build_flags: dict[str, Any]  # recorded in the engine's JSON
    seconds: float
    timing_cache: Any = None  # the updated timing cache (a buffer) when the plan names a cache file


def network_flags(trt) -> tuple[int, bool]:
    """(flags for create_network, strongly typed?)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        # 10.x: opt in to strong typing. 11.x: accepted and ignored (every network is strongly typed).
        return 1 << int(flag), True
    if parse_version(trt.__version__)[:1] >= (11,):
        return 0, True  # an 11.x without the flag: strong typing is the only mode
    raise RadaError(f"TensorRT {trt.__version__} cannot build strongly typed networks", "use TensorRT 10.0 or newer")


def parser_errors(parser) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        text = str(err.desc()) if hasattr(err, "desc") else str(err)
        where = []
        for attr in ("node_name", "node_operator"):  # IParserError accessors of TensorRT 9.1+/10
            getter = getattr(err, attr, None)
            try:
                value = getter() if callable(getter) else None
            except Exception:
                value = None
            if value:
                where.append(str(value))
        if not where and hasattr(err, "node"):
            try:
                where.append(f"node #{err.node()}")
            except Exception:
                pass
        lines.append(text + (f" [{' / '.join(where)}]" if where else ""))
    return lines


def serialize_engine(env: TensorRTEnvironment, plan: BuildPlan, reporter: Reporter, warnings: list[str],
                     dla: DlaMode | None = None) -> SerializedEngine:
    """Parses the graph and builds it; TensorRT's warnings are added to ``warnings``."""
    logger = shared_logger(env.trt)  # the process's one logger (TensorRT keeps the first it is given)
    with logger.capture() as log:
        return _serialize(env, plan, reporter, warnings, dla, logger, log)


def _serialize(env: TensorRTEnvironment, plan: BuildPlan, reporter: Reporter, warnings: list[str], dla: DlaMode | None,
               logger, log: LogCapture) -> SerializedEngine:
    trt = env.trt
    try:
        builder = trt.Builder(logger)
    except Exception as err:
        builder, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = ""
    if builder is None:
        raise RadaError("TensorRT could not start its builder" + (f" ({reason})" if reason else "") + bullet_list(log.errors()),
                        cm.GPU_FIX)
    if dla is not None and not dla.strongly_typed:
        flags, strongly_typed = 0, False  # DLA on 10.x: weakly typed, precision from builder flags (dla_build_mode)
    else:
        flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)): the parser finds external weights (<name>.onnx.data) beside the file.
    if not parser.parse_from_file(str(plan.onnx_path)):
        messages = parser_errors(parser) or log.errors()
        raise RadaError(
            f"TensorRT's ONNX parser rejected {plan.entry.file}:" + bullet_list(messages, limit=20),
            "re-export the bundle (rada-export onnx); if an operator is named, see rada_export/tensorrt/onnx_ops.txt "
            "for what this TensorRT supports",
        )
    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:
        if plan.tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)

    shapes = _add_profile(builder, network, config, plan, log)
    cache_reused = _use_timing_cache(config, plan, warnings)
    dla_fallback, pinned = _target_dla(trt, builder, network, config, plan, dla) if plan.dla_core is not None else ({}, None)

    reporter.log(f"building the {plan.precision} {plan.graph} engine with TensorRT {trt.__version__} on {env.device.name} "
                 "(minutes on a Jetson) ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RadaError(
            f"TensorRT could not build the {plan.precision} {plan.graph} engine" + bullet_list(log.errors(), limit=12),
            "a smaller max batch (max_batch=N) or a larger workspace (workspace_gb=N) often helps; "
            "for DLA, pass gpu_fallback=True",
        )
    timing_cache = config.get_timing_cache().serialize() if plan.timing_cache is not None else None
    for message in log.warnings()[-5:]:
        warnings.append(f"TensorRT: {message}")
    build_flags = {
        "strongly_typed": strongly_typed, "tf32": plan.tf32, "workspace_bytes": plan.workspace_bytes,
        "dla_core": plan.dla_core, "gpu_fallback": plan.gpu_fallback,
        "timing_cache": str(plan.timing_cache) if plan.timing_cache else None, "timing_cache_reused": cache_reused,
        "network_flags": flags,
        "dla_mode": dla.reason if dla is not None else None,
        "dla_gpu_layers": dla_fallback if plan.dla_core is not None else None,
        # weakly typed DLA (10.x): OBEY_PRECISION_CONSTRAINTS, this many FP32-typed layers pinned to FP32
        "dla_fp32_pinned_layers": pinned,
    }
    return SerializedEngine(serialized, shapes, build_flags, seconds, timing_cache)


def _add_profile(builder, network, config, plan: BuildPlan, log: LogCapture) -> dict[str, dict[str, list[int]]]:
    """One optimisation profile from the plan's ranges; returns its shapes per input (for the engine's JSON)."""
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low, opt, high = plan.input_profile(tensor.name)
        if len(tuple(tensor.shape)) != len(low):
            raise RadaError(f"input {tensor.name!r} has rank {len(tuple(tensor.shape))} in the graph and {len(low)} in the manifest",
                            "re-export the bundle")
        profile.set_shape(tensor.name, low, opt, high)
        shapes[tensor.name] = {"min": list(low), "opt": list(opt), "max": list(high)}
    if config.add_optimization_profile(profile) < 0:
        raise RadaError("TensorRT rejected the optimisation profile" + bullet_list(log.errors()), "check the batch options")
    return shapes


def _use_timing_cache(config, plan: BuildPlan, warnings: list[str]) -> bool:
    """Starts the build from the plan's timing cache file, when there is one; True when its entries are reused."""
    if plan.timing_cache is None:
        return False
    blob = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not half used.
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.append(f"timing cache {plan.timing_cache} is from another device or TensorRT version, or damaged: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
        return False
    return bool(blob)


def _target_dla(trt, builder, network, config, plan: BuildPlan, mode: DlaMode | None) -> tuple[dict[str, int], int | None]:
    """Sends the build to the plan's DLA core; returns the layers left to the GPU, counted per layer type,
    and how many layers were pinned to FP32 (None: not a weakly typed build)."""
    dla_device = getattr(getattr(trt, "DeviceType", None), "DLA", None)
    if dla_device is None:
        raise RadaError(f"TensorRT {trt.__version__} has no DLA support here", "build for the GPU instead (no DLA core)",
                        field="dla_core")
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if plan.dla_core >= cores:
        raise RadaError(f"dla_core={plan.dla_core} is not on this device: it has {cores} DLA core(s)",
                        "pass a lower core number, or build for the GPU (Orin Nano has no DLA)", field="dla_core")
    config.default_device_type = dla_device
    config.DLA_core = plan.dla_core
    for name in (mode.precision_flags if mode is not None else ()):
        config.set_flag(getattr(trt.BuilderFlag, name))
    pinned = pin_fp32_layers(trt, network, config) if mode is not None and mode.pin_fp32_layers else None
    if plan.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    # Which layers the DLA cannot take (they run on the GPU with gpu_fallback, else the build fails).
    on_gpu: dict[str, int] = {}
    can_run = getattr(config, "can_run_on_DLA", None)
    if can_run is not None:
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not can_run(layer):
                kind = str(layer.type).split(".")[-1]
                on_gpu[kind] = on_gpu.get(kind, 0) + 1
    if on_gpu and not plan.gpu_fallback:
        counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(on_gpu.items()))
        raise RadaError(f"{sum(on_gpu.values())} layers of the {plan.graph} graph cannot run on the DLA ({counts})",
                        "pass gpu_fallback=True to run them on the GPU (a ViT's attention and LayerNorm always need it)",
                        field="gpu_fallback")
    return on_gpu, pinned


# Layers whose output type is their job (a Cast) or that carry no float computation.
UNPINNED_LAYERS = ("CAST", "SHAPE", "ASSERTION", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT")


def pin_fp32_layers(trt, network, config) -> int:
    """Weakly typed DLA builds (10.x): keeps every layer whose outputs the graph types FP32 in FP32.

    The FP16 builder flag lets TensorRT run any layer of a weakly typed network in FP16, the FP16
    graph's FP32 islands included (LayerNorm, Softmax, the L2 norms, the head): ViTs lose accuracy
    there. OBEY_PRECISION_CONSTRAINTS makes the precision and output types set on a layer binding
    (``layer.precision``, ``layer.set_output_type``: TensorRT 10 Python API, ILayer). Returns how many
    layers were pinned.
    """
    obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
    if obey is None:  # 11.x removed it, and weak typing with it: this path is 10.x only
        raise RadaError(f"TensorRT {trt.__version__} has no OBEY_PRECISION_CONSTRAINTS flag for a weakly typed DLA build",
                        "use JetPack 6.1/6.2 (TensorRT 10.3) for DLA, or build for the GPU (no DLA core)", field="dla_core")
    config.set_flag(obey)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if str(layer.type).split(".")[-1] in UNPINNED_LAYERS or layer.num_outputs == 0:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if all(t is not None and t.dtype == trt.float32 for t in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned

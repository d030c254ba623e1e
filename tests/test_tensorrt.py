"""TensorRT engines: building, loading, refusing foreign engines, and the `rada-export trt` command.

Two kinds of tests:

- CPU tests (run everywhere): input validation, the missing-TensorRT / missing-GPU errors, engine
  folder naming, refusing an engine built for another TensorRT or GPU, and the whole build / load /
  run path driven through a test double of the TensorRT 10 Python API (``FakeTensorRT`` below,
  which runs the ONNX graph with ONNX Runtime and keeps "device" memory in host arrays). The double
  checks *our* call sequence against the API names and semantics; it proves nothing about TensorRT
  itself.
- ``@pytest.mark.tensorrt`` tests: real TensorRT and a real GPU. Elsewhere they are skipped, with
  the reason (what is missing) printed by ``-ra``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rada_export.errors import RadaError, VerificationError
from rada_export.runtimes import cuda_memory as cm
from rada_export.runtimes import tensorrt_engine as te
from rada_export.runtimes.manifest import read_manifest, sha256_file, write_manifest

CLASSES = ["cat", "dog", "bird"]


# ---------------------------------------------------------------------------------------------
# Bundles


def _export(out: Path, model: str = "rada-tiny-ViT"):
    pytest.importorskip("open_clip")
    from rada_export.export.bundle import ExportRequest, export_bundle

    export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=CLASSES, fp16=True))
    return out


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("trt") / "tiny")


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle (tests write engines into it or damage it)."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


# ---------------------------------------------------------------------------------------------
# A test double of the TensorRT 10 Python API and of cuda-python's runtime bindings


class _Stream(int):
    pass


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime, with device memory in host arrays and bounds-checked copies."""

    def __init__(self, devices: int = 1, name: bytes = b"Fake GPU\0\0", cc=(8, 7)):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.name, self.cc = devices, name, cc
        self.allocations: dict[int, np.ndarray] = {}
        self.malloc_calls = 0
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (100, 0)

    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorNoDevice" if int(err) == 100 else b"cudaErrorUnknown"

    def cudaGetErrorString(self, err):
        return 0, b"no CUDA-capable device is detected" if int(err) == 100 else b"unknown error"

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=self.name, major=self.cc[0], minor=self.cc[1], totalGlobalMem=8 << 30)

    def cudaRuntimeGetVersion(self):
        return 0, 12060

    def cudaMalloc(self, size):
        self.malloc_calls += 1
        buf = np.zeros(int(size), dtype=np.uint8)
        self.allocations[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaFree(self, ptr):
        self.allocations.pop(int(ptr))
        return (0,)

    def cudaStreamCreate(self):
        return 0, _Stream(7)  # cuda-python's cudaStream_t converts to int the same way

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def _check_device_range(self, ptr, nbytes):
        for base, buf in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + buf.nbytes:
                return
        raise AssertionError(f"device access [{ptr}, +{nbytes}) is outside every allocation")

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self._check_device_range(dst if kind == 1 else src, count)
        ctypes.memmove(dst, src, count)
        return (0,)


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class FakeILogger:
    Severity = Severity

    def __init__(self):
        pass


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT32 = np.int32
    INT64 = np.int64
    UINT8 = np.uint8
    BOOL = np.bool_


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 2: DataType.UINT8}


class _Tensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.path = None

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class _ParserError:
    def __init__(self, text):
        self.text = text

    def desc(self):
        return self.text

    def node_name(self):
        return "/visual/Unique_0"

    def node_operator(self):
        return "Unique"

    def code(self):
        return 8


class FakeParser:
    fail_with: list[str] = []

    def __init__(self, network, logger):
        self.network, self.logger, self.errors = network, logger, []

    def parse_from_file(self, path):
        import onnx

        if self.fail_with:
            self.errors = [_ParserError(t) for t in self.fail_with]
            return False
        model = onnx.load(path, load_external_data=False)
        for value in model.graph.input:
            dims = [d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim]
            self.network.inputs.append(_Tensor(value.name, tuple(dims)))
        self.network.path = str(path)
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeTimingCache:
    def __init__(self, blob: bytes):
        self.entries = json.loads(blob.decode()) if blob else []

    def serialize(self):
        return json.dumps(self.entries + ["tactic"]).encode()


class FakeConfig:
    def __init__(self, trt):
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32}  # TF32 is on by default in TensorRT 10 and 11
        self.flags_set: list = []
        self.pools = {}
        self.profiles = []
        self.timing_cache = None
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1

    def set_flag(self, flag):
        self.flags_set.append(flag)
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob):
        return FakeTimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class FakeBuilder:
    def __init__(self, trt, logger):
        self.trt, self.logger = trt, logger
        self.num_DLA_cores = trt.dla_cores
        trt.builders.append(self)

    def create_network(self, flags):
        self.network = FakeNetwork(flags)
        return self.network

    def create_builder_config(self):
        self.config = FakeConfig(self.trt)
        return self.config

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if self.trt.fail_build:
            self.logger.log(Severity.ERROR, "out of memory while building (fake)")
            return None
        plan = {"path": network.path, "profile": config.profiles[0].shapes, "dla": config.DLA_core}
        return json.dumps(plan).encode()


class FakeEngine:
    def __init__(self, plan, trt):
        import onnx

        from rada_export.runtimes.ort_session import create_session

        self.plan, self.trt = plan, trt
        model = onnx.load(plan["path"], load_external_data=False)
        self.session = create_session(plan["path"], "cpu", "fp16" if ".fp16." in plan["path"] else "fp32")
        self.names, self.modes, self.dtypes, self.shapes = [], {}, {}, {}
        for value, mode in [(v, TensorIOMode.INPUT) for v in model.graph.input] + [(v, TensorIOMode.OUTPUT) for v in model.graph.output]:
            self.names.append(value.name)
            self.modes[value.name] = mode
            self.dtypes[value.name] = _ONNX_TO_TRT[value.type.tensor_type.elem_type]
            self.shapes[value.name] = tuple(d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim)

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.input_shapes, self.addresses = {}, {}
        self._outputs = None

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            return False
        self.input_shapes[name] = tuple(shape)
        self._outputs = None
        return True

    def _feeds(self, zeros: bool):
        feeds = {}
        for name, shape in self.input_shapes.items():
            arr = np.zeros(shape, dtype=self.engine.dtypes[name].value)
            if not zeros:
                ctypes.memmove(arr.ctypes.data, self.addresses[name], arr.nbytes)
            feeds[name] = arr
        return feeds

    def get_tensor_shape(self, name):
        if self.engine.modes[name] == TensorIOMode.INPUT:
            return self.input_shapes[name]
        if self._outputs is None:
            self._outputs = dict(zip([o.name for o in self.engine.session.get_outputs()], self.engine.session.run(None, self._feeds(True))))
        return self._outputs[name].shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int) and stream_handle != 0, "execute_async_v3 takes our own stream as an int"
        outputs = self.engine.session.run(None, self._feeds(False))
        for value, out in zip(self.engine.session.get_outputs(), outputs):
            out = np.ascontiguousarray(out * self.engine.trt.output_scale, dtype=self.engine.dtypes[value.name].value)
            self.engine.trt.cudart._check_device_range(self.addresses[value.name], out.nbytes)
            ctypes.memmove(self.addresses[value.name], out.ctypes.data, out.nbytes)
        return True


class FakeRuntime:
    def __init__(self, trt, logger):
        self.trt, self.DLA_core = trt, -1
        trt.runtimes.append(self)

    def deserialize_cuda_engine(self, data):
        try:
            return FakeEngine(json.loads(bytes(data).decode()), self.trt)
        except (ValueError, KeyError):
            return None


def make_fake_tensorrt(version: str = "10.3.0", cudart: FakeCudart | None = None, strongly_typed_flag: bool = True,
                       dla: bool = True, dla_cores: int = 0) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.ILogger = FakeILogger
    members = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if strongly_typed_flag else {}
    if version.startswith("11"):
        members.pop("EXPLICIT_BATCH", None)  # removed in 11
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members) if members else types.SimpleNamespace()
    flags = {"GPU_FALLBACK": 3, "TF32": 6} if version.startswith("11") else {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 3, "TF32": 6}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = enum.Enum("DeviceType", {"GPU": 0, "DLA": 1} if dla else {"GPU": 0})
    trt.TensorIOMode = TensorIOMode
    trt.DataType = DataType
    trt.nptype = lambda dt: dt.value
    trt.builders, trt.runtimes = [], []
    trt.fail_build, trt.output_scale, trt.dla_cores = False, 1.0, dla_cores
    trt.cudart = cudart
    trt.Builder = lambda logger: FakeBuilder(trt, logger)
    trt.OnnxParser = FakeParser
    trt.Runtime = lambda logger: FakeRuntime(trt, logger)
    return trt


@pytest.fixture
def fake_env():
    cudart = FakeCudart()
    trt = make_fake_tensorrt(cudart=cudart)
    FakeParser.fail_with = []
    return te.TensorRTEnvironment(trt=trt, cudart=cudart, device=cm.device_info(cudart, 0))


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_engine_dir_name():
    assert te.engine_dir_name("NVIDIA GeForce RTX 4090", 8, 9, "10.3.0") == "nvidia-geforce-rtx-4090-sm89-trt10.3.0"
    assert te.engine_dir_name("Orin", 8, 7, "10.3.0.30") == "orin-sm87-trt10.3.0.30"
    assert te.engine_dir_name("NVIDIA H200 (MIG 1g.18gb)", 9, 0, "11.0.0") == "nvidia-h200-mig-1g-18gb-sm90-trt11.0.0"
    assert te.engine_dir_name("", 7, 2, "10.1/x") == "gpu-sm72-trt10.1-x"
    env = te.EngineEnvironment("10.3.0", "Orin", "8.7")
    assert env.dir_name == "orin-sm87-trt10.3.0"
    assert te.meta_path(Path("e/model.fp16.engine")) == Path("e/model.fp16.json")
    assert te.parse_version("10.3.0.30") == (10, 3, 0, 30) and te.parse_version("11.0.0b1") == (11, 0, 0)


def _meta(**over):
    meta = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "graph": "model", "precision": "fp16"}
    meta.update(over)
    return meta


def test_engine_from_another_tensorrt_or_gpu_is_refused():
    here = te.EngineEnvironment("10.3.0", "Orin", "8.7")
    te.check_engine_compat(_meta(), here)
    with pytest.raises(RadaError) as err:
        te.check_engine_compat(_meta(tensorrt_version="10.7.0"), here, "model.fp16.engine")
    text = str(err.value)
    assert "10.7.0" in text and "10.3.0" in text and "TensorRT version" in text and "rebuild" in text
    with pytest.raises(RadaError) as err:
        te.check_engine_compat(_meta(gpu_name="NVIDIA GeForce RTX 3090", compute_capability="8.6"), here)
    text = str(err.value)
    assert "RTX 3090" in text and "Orin" in text and "compute capability 8.6" in text and "8.7" in text
    with pytest.raises(RadaError, match="lacks"):
        te.check_engine_compat({"graph": "model"}, here)


def test_engine_from_another_onnx_file_is_refused(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    meta = _meta(onnx_file="model.fp16.onnx", onnx_sha256=manifest.files["model.fp16.onnx"])
    te.check_engine_matches_bundle(meta, manifest)
    with pytest.raises(RadaError, match="another version of model.fp16.onnx"):
        te.check_engine_matches_bundle({**meta, "onnx_sha256": "0" * 64}, manifest)


def test_find_engine(tmp_path):
    env = te.EngineEnvironment("10.3.0", "Orin", "8.7")
    assert te.find_engine(tmp_path, "model", "fp16", env) is None
    path = te.engine_path(tmp_path, "model", "fp16", env)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"engine")
    te.meta_path(path).write_text(json.dumps(_meta()))
    assert te.find_engine(tmp_path, "model", "fp16", env) == path
    assert te.find_engine(tmp_path, "model", "int8", env) is None
    assert te.find_engine(tmp_path, "model", "fp16", te.EngineEnvironment("10.7.0", "Orin", "8.7")) is None
    assert [p for p, _ in te.list_engines(tmp_path)] == [path]


# ---------------------------------------------------------------------------------------------
# Environment checks


def _importer(missing=(), modules=None):
    import importlib

    def import_module(name):
        if name in missing:
            raise ImportError(f"No module named {name!r}")
        if modules and name in modules:
            return modules[name]
        return importlib.import_module(name)

    return import_module


def test_missing_tensorrt_says_how_to_get_it():
    cudart = FakeCudart()
    missing, env = te.diagnose_environment(_importer(missing={"tensorrt"}, modules={"cuda.bindings.runtime": cudart}))
    assert env is None and [m.component for m in missing] == ["TensorRT"]
    err = te.environment_error(missing)
    assert "tensorrt" in err.problem and "rada-export[trt]" in err.fix and "python3-libnvinfer" in err.fix


def test_missing_cuda_python_and_gpu_are_each_named():
    trt = make_fake_tensorrt()
    missing, _ = te.diagnose_environment(_importer(missing={"cuda.bindings.runtime", "cuda.cudart"}, modules={"tensorrt": trt}))
    assert [m.component for m in missing] == ["cuda-python"]
    assert "cuda-python" in te.environment_error(missing).fix

    missing, _ = te.diagnose_environment(_importer(modules={"tensorrt": trt, "cuda.bindings.runtime": FakeCudart(devices=0)}))
    assert [m.component for m in missing] == ["NVIDIA GPU"]
    err = te.environment_error(missing)
    assert "no CUDA-capable device" in err.problem and "nvidia-smi" in err.fix

    missing, _ = te.diagnose_environment(_importer(missing={"tensorrt"}, modules={"cuda.bindings.runtime": FakeCudart(devices=0)}))
    assert [m.component for m in missing] == ["TensorRT", "NVIDIA GPU"]


def test_old_cuda_python_module_name_is_accepted():
    cudart = FakeCudart()
    assert cm.import_cudart(_importer(missing={"cuda.bindings.runtime"}, modules={"cuda.cudart": cudart})) is cudart


def test_tensorrt_older_than_10_is_refused():
    with pytest.raises(RadaError, match="8.6.1 is too old"):
        te.import_tensorrt(_importer(modules={"tensorrt": make_fake_tensorrt("8.6.1")}))


def test_real_cuda_python_without_a_gpu_reports_the_driver():
    try:
        cudart = cm.import_cudart()
    except RadaError:
        pytest.skip("cuda-python is not installed here")
    count, reason = cm.gpu_count(cudart)
    if count:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RadaError) as err:
        cm.require_gpu(cudart)
    assert "cudaGetDeviceCount" in err.value.problem and "driver" in err.value.fix


def test_runtime_and_engine_building_import_no_torch():
    code = ("import sys; import rada_export.runtimes.tensorrt_engine, rada_export.runtimes.cuda_memory, rada_export.tensorrt; "
            "bad = [m for m in ('torch', 'open_clip', 'tensorrt', 'rada_export.export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Input validation (before TensorRT is imported) and the CLI contract


def _cli():
    from rada_export.cli import trt as trt_cmd

    app = typer.Typer()

    @app.callback()
    def _root():
        pass

    app.command("trt")(trt_cmd.trt)
    return app


def _run(args, monkeypatch, tensorrt=None):
    """Invokes `rada-export trt ARGS`; `tensorrt` None makes `import tensorrt` fail."""
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    result = CliRunner().invoke(_cli(), ["trt", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("args, message", [
    (["--min-batch", "4", "--opt-batch", "2"], "1 <= min <= opt <= max"),
    (["--opt-batch", "16", "--max-batch", "8"], "min 1, opt 16, max 8"),
    (["--min-batch", "0"], "at least 1"),
    (["--precision", "fp8"], "unknown precision"),
    (["--graph", "vision"], "unknown graph"),
    (["--graph", "head", "--precision", "fp16"], "FP16 variants are made for"),
    (["--precision", "int8"], "rada-export calibrate"),
    (["--gpu-fallback"], "--gpu-fallback only applies with --dla-core"),
    (["--workspace", "0"], "--workspace must be a positive"),
    (["--precision", "int8", "--calib-images", "/no/such/dir"], "is not a folder"),
    (["--precision", "fp16", "--calib-images", "."], "only applies to --precision int8"),
])
def test_bad_input_exits_2_before_tensorrt(bundle, monkeypatch, args, message):
    code, out = _run(["--bundle", bundle, *args], monkeypatch)
    assert code == 2, out
    assert message in " ".join(out.split()), out
    assert "tensorrt` is not installed" not in out


def test_dla_needs_a_jetson_and_fp16_or_int8(bundle, monkeypatch):
    from rada_export.tensorrt import build

    monkeypatch.setattr(build, "is_jetson", lambda: False)
    code, out = _run(["--bundle", bundle, "--dla-core", "0"], monkeypatch)
    assert code == 2 and "needs a Jetson" in out
    monkeypatch.setattr(build, "is_jetson", lambda: True)
    code, out = _run(["--bundle", bundle, "--dla-core", "0", "--precision", "fp32"], monkeypatch)
    assert code == 2 and "FP16 and INT8 only" in out
    code, out = _run(["--bundle", bundle, "--dla-core", "0", "--min-batch", "1", "--max-batch", "8"], monkeypatch)
    assert code == 2 and "fixed batch" in out
    plan = build.plan_build(bundle, dla_core=0, gpu_fallback=True)
    assert set(plan.ranges.values()) == {(1, 1, 1), (3, 3, 3)}


def test_missing_bundle_corrupt_onnx_and_unwritable_engines_exit_2(bundle, tmp_path, monkeypatch):
    code, out = _run(["--bundle", tmp_path / "nothing"], monkeypatch)
    assert code == 2 and "does not exist" in out

    data = (bundle / "model.fp16.onnx").read_bytes()
    (bundle / "model.fp16.onnx").write_bytes(data[: len(data) // 2])
    code, out = _run(["--bundle", bundle], monkeypatch)
    assert code == 2 and "checksum mismatch" in out and "model.fp16.onnx" in out
    (bundle / "model.fp16.onnx").write_bytes(data)

    (bundle / "engines").write_text("not a folder")
    code, out = _run(["--bundle", bundle], monkeypatch)
    assert code == 2 and "engines go into a folder" in out


def test_unsupported_operator_is_refused_before_tensorrt(bundle, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Unique", ["image_features"], ["u"]), helper.make_node("MatMul", ["u", "text_features"], ["logits"])],
        "head", [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", 64]),
                 helper.make_tensor_value_info("text_features", TensorProto.FLOAT, ["num_classes", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), bundle / "head.onnx")
    manifest = read_manifest(bundle)
    manifest.files["head.onnx"] = sha256_file(bundle / "head.onnx")
    write_manifest(bundle, manifest)
    code, out = _run(["--bundle", bundle, "--graph", "head", "--precision", "fp32"], monkeypatch)
    assert code == 2 and "Unique" in out and "cannot parse" in out


def test_missing_tensorrt_exits_2_naming_it(bundle, monkeypatch):
    monkeypatch.setattr(cm, "import_cudart", lambda *_: FakeCudart())
    code, out = _run(["--bundle", bundle], monkeypatch, tensorrt=None)
    assert code == 2, out
    flat = " ".join(out.split())
    assert "missing TensorRT" in flat and "pip install 'rada-export[trt]'" in flat and "python3-libnvinfer" in flat


def test_missing_gpu_exits_2_naming_it(bundle, monkeypatch):
    monkeypatch.setattr(cm, "import_cudart", lambda *_: FakeCudart(devices=0))
    code, out = _run(["--bundle", bundle], monkeypatch, tensorrt=make_fake_tensorrt())
    assert code == 2, out
    flat = " ".join(out.split())
    assert "missing NVIDIA GPU" in flat and "TensorRT:" not in flat and "nvidia-smi" in flat


# ---------------------------------------------------------------------------------------------
# The build / load / run path through the TensorRT double


def test_build_writes_engine_and_description_and_passes_parity(bundle, fake_env, tmp_path):
    from rada_export.tensorrt.build import build_engine

    cache = tmp_path / "trt.cache"
    result = build_engine(bundle, "model", "fp16", max_batch=16, workspace_gb=1.5, timing_cache=cache, environment=fake_env)
    assert result.engine_path == bundle / "engines" / "fake-gpu-sm87-trt10.3.0" / "model.fp16.engine"
    assert result.report.passed and result.engine_path.is_file() and result.meta_path.is_file()
    meta = json.loads(result.meta_path.read_text())
    assert meta["tensorrt_version"] == "10.3.0" and meta["gpu_name"] == "Fake GPU" and meta["compute_capability"] == "8.7"
    assert meta["onnx_file"] == "model.fp16.onnx" and meta["onnx_sha256"] == sha256_file(bundle / "model.fp16.onnx")
    assert meta["engine_sha256"] == sha256_file(result.engine_path) and meta["engine_size"] == result.engine_path.stat().st_size
    assert meta["profiles"] == [{"pixels": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [16, 3, 64, 64]}}]
    assert meta["build_flags"]["strongly_typed"] and meta["build_flags"]["tf32"] and meta["verification"]["passed"]
    assert "built_at" in meta and meta["build_seconds"] >= 0
    builder = fake_env.trt.builders[-1]
    assert builder.network.flags == 1 << int(fake_env.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.config.pools == {fake_env.trt.MemoryPoolType.WORKSPACE: int(1.5 * 2**30)}
    assert not {f.name for f in builder.config.flags_set} & {"FP16", "INT8"}, "precision comes from the graph, never from flags"
    assert cache.is_file() and json.loads(cache.read_bytes()) == ["tactic"]
    assert not [p for p in result.engine_path.parent.iterdir() if p.name.startswith(".")], "no temporary files left"

    second = build_engine(bundle, "model", "fp16", max_batch=16, timing_cache=cache, environment=fake_env)
    assert second.meta["build_flags"]["timing_cache_reused"]


def test_fp32_build_turns_tf32_off_and_meets_fp32_thresholds(bundle, fake_env):
    from rada_export.tensorrt.build import build_engine

    result = build_engine(bundle, "image_encoder", "fp32", environment=fake_env)
    assert fake_env.trt.BuilderFlag.TF32 not in fake_env.trt.builders[-1].config.flags
    assert not result.meta["build_flags"]["tf32"]
    assert {r.thresholds.min_cosine for r in result.report.results} == {0.99999}


@pytest.mark.parametrize("graph, inputs", [
    ("text_encoder", {"token_ids": {"min": [1, 77], "opt": [3, 77], "max": [256, 77]}}),
    ("head", {"image_features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]},
              "text_features": {"min": [1, 64], "opt": [3, 64], "max": [256, 64]}}),
])
def test_profiles_cover_every_dynamic_dim(bundle, fake_env, graph, inputs):
    from rada_export.tensorrt.build import build_engine

    result = build_engine(bundle, graph, "fp32", environment=fake_env)
    assert result.meta["profiles"] == [inputs] and result.report.passed


def test_engine_runs_with_dynamic_shapes_and_reuses_buffers(bundle, fake_env):
    from rada_export.runtimes.ort_session import create_session
    from rada_export.tensorrt.build import build_engine

    path = build_engine(bundle, "model", "fp32", max_batch=8, environment=fake_env).engine_path
    reference = create_session(bundle / "model.onnx")
    rng = np.random.default_rng(1)
    mallocs = fake_env.cudart.malloc_calls
    with te.TensorRTEngine(path, read_manifest(bundle), environment=fake_env) as engine:
        assert engine.input_names == ["pixels"] and engine.output_names == ["logits", "image_features"]
        assert engine.profile("pixels")[2] == (8, 3, 64, 64) and engine.max_batch == 8
        for batch in (8, 1, 5):
            pixels = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
            out = engine.run({"pixels": pixels})
            logits, features = reference.run(None, {"pixels": pixels})
            np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out["image_features"], features, rtol=1e-5, atol=1e-6)
        assert fake_env.cudart.malloc_calls - mallocs == 3, "buffers sized for batch 8 are reused for batches 1 and 5"
        out = engine.run({"pixels": rng.standard_normal((2, 3, 64, 64))})  # float64 is converted
        assert out["logits"].shape == (2, 3) and out["logits"].dtype == np.float32
        with pytest.raises(RadaError, match=r"outside the engine's range \[1, 8\]"):
            engine.run({"pixels": np.zeros((9, 3, 64, 64), np.float32)})
        with pytest.raises(RadaError, match="size 64 on axis 2"):
            engine.run({"pixels": np.zeros((1, 3, 32, 64), np.float32)})
        with pytest.raises(RadaError, match="exactly these inputs: pixels"):
            engine.run({"frames": np.zeros((1, 64, 64, 3), np.uint8)})
        with pytest.raises(RadaError, match="must be float32"):
            engine.run({"pixels": np.zeros((1, 3, 64, 64), np.int64)})
        assert engine.run({"pixels": np.zeros((1, 3, 64, 64), np.float32)})["logits"].shape == (1, 3)  # still usable
    assert fake_env.cudart.allocations == {}, "close() frees every buffer"
    with pytest.raises(RadaError, match="closed"):
        engine.run({"pixels": np.zeros((1, 3, 64, 64), np.float32)})


def test_loading_refuses_foreign_or_damaged_engines(bundle, fake_env):
    from rada_export.tensorrt.build import build_engine

    result = build_engine(bundle, "model", "fp16", max_batch=4, environment=fake_env)
    original = result.meta_path.read_text()
    runtimes = len(fake_env.trt.runtimes)
    for change, expected in [({"tensorrt_version": "10.7.0"}, "TensorRT 10.7.0"),
                             ({"gpu_name": "NVIDIA A100", "compute_capability": "8.0"}, "NVIDIA A100")]:
        result.meta_path.write_text(json.dumps({**json.loads(original), **change}))
        with pytest.raises(RadaError) as err:
            te.TensorRTEngine(result.engine_path, environment=fake_env)
        assert expected in str(err.value) and "Fake GPU" in str(err.value) and "rebuild it on this device" in str(err.value)
        assert len(fake_env.trt.runtimes) == runtimes, "refused before TensorRT saw the file"
    result.meta_path.write_text(original)
    data = result.engine_path.read_bytes()
    result.engine_path.write_bytes(data[:-3])
    with pytest.raises(RadaError, match="truncated"):
        te.TensorRTEngine(result.engine_path, environment=fake_env)
    result.engine_path.write_bytes(data)
    result.meta_path.unlink()
    with pytest.raises(RadaError, match="no model.fp16.json beside it"):
        te.TensorRTEngine(result.engine_path, environment=fake_env)


def test_calib_images_calls_the_calibration_module(bundle, fake_env, tmp_path, monkeypatch):
    from rada_export.tensorrt.build import build_engine

    images = tmp_path / "images"
    images.mkdir()
    monkeypatch.setitem(sys.modules, "rada_export.calibration.bundle", None)
    monkeypatch.setitem(sys.modules, "rada_export.calibration", types.ModuleType("rada_export.calibration"))
    with pytest.raises(RadaError, match="cannot calibrate"):
        build_engine(bundle, "model", "int8", calib_images=images, environment=fake_env)
    calls = []
    module = types.ModuleType("rada_export.calibration")
    module.calibrate_bundle = lambda b, i: calls.append((Path(b), Path(i)))
    monkeypatch.setitem(sys.modules, "rada_export.calibration", module)
    with pytest.raises(RadaError, match="no INT8"):  # this stand-in writes no Q/DQ graph
        build_engine(bundle, "model", "int8", calib_images=images, environment=fake_env)
    assert calls == [(bundle, images)]


def test_int8_engine_calibrated_on_the_way(bundle, fake_env, tmp_path, monkeypatch):
    """--calib-images: the Q/DQ graph is made by rada_export.calibration, then built and checked (INT8 thresholds)."""
    import functools

    from rada_export.tensorrt.build import build_engine

    calibration = pytest.importorskip("rada_export.calibration.bundle")
    from PIL import Image

    # Few images, and past calibration's own accuracy gate (a random tiny model flips top-1 on noise
    # images; that gate is calibration's to test): this test is about the hand-over to the build.
    monkeypatch.setattr(calibration, "CalibrateRequest", functools.partial(
        calibration.CalibrateRequest, samples=24, holdout=8, accept_degraded=True, cache_dir=tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)).save(images / f"{i}.png")
    result = build_engine(bundle, "model", "int8", max_batch=8, calib_images=images, environment=fake_env)
    assert result.meta["onnx_file"] == "model.int8.onnx" and result.report.passed
    assert {r.thresholds.mean_cosine for r in result.report.results} == {0.98}
    assert "model.int8" in read_manifest(bundle).graphs


def test_parity_failure_keeps_nothing(bundle, fake_env):
    from rada_export.tensorrt.build import build_engine

    fake_env.trt.output_scale = -1.0
    with pytest.raises(VerificationError) as err:
        build_engine(bundle, "model", "fp16", environment=fake_env)
    assert not err.value.report.passed
    folder = bundle / "engines" / "fake-gpu-sm87-trt10.3.0"
    assert list(folder.iterdir()) == []


def test_parser_and_builder_errors_are_reported(bundle, fake_env):
    from rada_export.tensorrt.build import build_engine

    FakeParser.fail_with = ["No importer registered for op: Unique"]
    try:
        with pytest.raises(RadaError) as err:
            build_engine(bundle, "model", "fp16", environment=fake_env)
        assert "No importer registered for op: Unique" in str(err.value) and "/visual/Unique_0" in str(err.value)
    finally:
        FakeParser.fail_with = []
    fake_env.trt.fail_build = True
    with pytest.raises(RadaError, match="out of memory while building"):
        build_engine(bundle, "model", "fp16", environment=fake_env)


def test_dla_build_sets_the_core_and_fallback(bundle, fake_env, monkeypatch):
    from rada_export.tensorrt import build

    monkeypatch.setattr(build, "is_jetson", lambda: True)
    with pytest.raises(RadaError, match="has 0 DLA core"):
        build.build_engine(bundle, "model", "fp16", dla_core=0, environment=fake_env)
    fake_env.trt.dla_cores = 2
    result = build.build_engine(bundle, "model", "fp16", dla_core=1, gpu_fallback=True, environment=fake_env)
    config = fake_env.trt.builders[-1].config
    assert config.default_device_type == fake_env.trt.DeviceType.DLA and config.DLA_core == 1
    assert fake_env.trt.BuilderFlag.GPU_FALLBACK in config.flags
    assert result.meta["dla_core"] == 1 and fake_env.trt.runtimes[-1].DLA_core == 1
    no_dla = te.TensorRTEnvironment(make_fake_tensorrt(cudart=fake_env.cudart, dla=False), fake_env.cudart, fake_env.device)
    with pytest.raises(RadaError, match="no DLA support"):
        build.build_engine(bundle, "model", "fp16", dla_core=0, environment=no_dla)


def test_tensorrt_11_without_precision_flags_or_explicit_batch(bundle):
    from rada_export.tensorrt.build import build_engine, network_flags

    cudart = FakeCudart()
    trt11 = make_fake_tensorrt("11.0.0", cudart=cudart, strongly_typed_flag=False)
    assert network_flags(trt11) == (0, True)
    env = te.TensorRTEnvironment(trt11, cudart, cm.device_info(cudart, 0))
    result = build_engine(bundle, "model", "fp16", environment=env)
    assert result.report.passed and result.engine_path.parent.name == "fake-gpu-sm87-trt11.0.0"
    with pytest.raises(RadaError, match="strongly typed"):
        network_flags(make_fake_tensorrt("10.3.0", strongly_typed_flag=False))


def test_cli_prints_the_parity_table(bundle, fake_env, monkeypatch):
    monkeypatch.setattr(te, "require_environment", lambda *a, **k: fake_env)
    code, out = _run(["--bundle", bundle, "--max-batch", "4"], monkeypatch, tensorrt=fake_env.trt)
    assert code == 0, out
    assert "parity: TensorRT fp16 against ONNX Runtime FP32" in out and "pass" in out and "strongly typed" in out
    assert (bundle / "engines" / "fake-gpu-sm87-trt10.3.0" / "model.fp16.engine").is_file()
    code, out = _run(["--bundle", bundle, "--max-batch", "4", "--json"], monkeypatch, tensorrt=fake_env.trt)
    data = json.loads(out)
    assert code == 0 and data["verification"]["passed"] and data["description"]["precision"] == "fp16"
    fake_env.trt.output_scale = -1.0
    code, out = _run(["--bundle", bundle, "--max-batch", "4"], monkeypatch, tensorrt=fake_env.trt)
    assert code == 1 and "FAIL" in out and "not kept" in " ".join(out.split())


def test_parity_plumbing_with_onnx_runtime_standing_in(tiny_bundle):
    """verify_engine on the FP16 graph run by ONNX Runtime: the FP16 thresholds hold for the tiny model."""
    from rada_export.runtimes.ort_session import create_session
    from rada_export.tensorrt.build import plan_build
    from rada_export.tensorrt.verify import verify_engine

    plan = plan_build(tiny_bundle, "model", "fp16")
    session = create_session(tiny_bundle / "model.fp16.onnx", "cpu", "fp16")
    names = [o.name for o in session.get_outputs()]
    report = verify_engine(tiny_bundle, plan.manifest, "model", "fp16", lambda f: dict(zip(names, session.run(None, f))), plan.ranges)
    assert report.passed, report.to_dict()
    assert [r.output for r in report.results] == ["logits", "image_features", "logits B=1", "image_features B=1"]


# ---------------------------------------------------------------------------------------------
# Real TensorRT and a real GPU


@pytest.fixture(scope="module")
def trt_env():
    try:
        return te.require_environment()
    except RadaError as err:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {err.problem}")


def _int8_or_skip(bundle: Path, tmp_path: Path) -> None:
    if "model.int8" in read_manifest(bundle).graphs:
        return
    try:
        from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    except ImportError:
        pytest.skip("rada_export.calibration.bundle.calibrate_bundle is not available: no INT8 graph to build")
    from PIL import Image

    images = tmp_path / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(images / f"{i}.png")
    # accept_degraded: these tests need the Q/DQ graph; calibration's accuracy gate is tested with calibration
    calibrate_bundle(CalibrateRequest(bundle=bundle, images=images, samples=24, holdout=8, accept_degraded=True,
                                      cache_dir=tmp_path / "calib-cache"))


def _build_and_check(bundle: Path, precision: str, env, tmp_path: Path):
    from rada_export.tensorrt.build import build_engine

    if precision == "int8":
        _int8_or_skip(bundle, tmp_path)
    result = build_engine(bundle, "model", precision, max_batch=8, environment=env)
    assert result.report.passed, result.report.to_dict()
    with te.TensorRTEngine(result.engine_path, read_manifest(bundle), environment=env) as engine:
        out = engine.run({"pixels": np.zeros((3, 3, *read_manifest(bundle).preprocess.size), np.float32)})
        assert out["logits"].shape == (3, len(CLASSES)) and np.isfinite(out["logits"]).all()
    return result


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engines_for_the_tiny_config(bundle, trt_env, precision, tmp_path):
    _build_and_check(bundle, precision, trt_env, tmp_path)


@pytest.mark.tensorrt
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engines_for_vit_b_32(trt_env, precision, tmp_path):
    bundle = _export(tmp_path / "vitb32", "ViT-B-32")
    _build_and_check(bundle, precision, trt_env, tmp_path)


@pytest.mark.tensorrt
def test_real_timing_cache_makes_the_second_build_faster(bundle, trt_env, tmp_path):
    from rada_export.tensorrt.build import build_engine

    cache = tmp_path / "timing.cache"
    first = build_engine(bundle, "model", "fp32", max_batch=32, timing_cache=cache, environment=trt_env, verify=False)
    second = build_engine(bundle, "model", "fp32", max_batch=32, timing_cache=cache, environment=trt_env, verify=False)
    assert second.meta["build_flags"]["timing_cache_reused"]
    assert second.build_seconds < first.build_seconds, (first.build_seconds, second.build_seconds)


@pytest.mark.tensorrt
def test_real_engine_from_another_version_or_gpu_is_refused(bundle, trt_env):
    from rada_export.tensorrt.build import build_engine

    result = build_engine(bundle, "model", "fp16", max_batch=2, environment=trt_env, verify=False)
    original = json.loads(result.meta_path.read_text())
    for change in ({"tensorrt_version": "9.9.9"}, {"gpu_name": "Another GPU", "compute_capability": "1.0"}):
        result.meta_path.write_text(json.dumps({**original, **change}))
        with pytest.raises(RadaError, match="rebuild it on this device"):
            te.TensorRTEngine(result.engine_path, environment=trt_env)

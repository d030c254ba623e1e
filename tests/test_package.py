"""Packaging: the design card's layout installs as rada_export.{cli,calibration,runtimes}."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def read_pyproject() -> dict:
    """pyproject.toml, parsed by tomllib (Python 3.11+) or tomli where installed; skipped otherwise
    (JetPack 6's Python is 3.10, which has no tomllib)."""
    try:
        import tomllib as toml
    except ModuleNotFoundError:
        toml = pytest.importorskip("tomli", reason="Python < 3.11 has no tomllib, and tomli is not installed")
    return toml.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(names: list[str], machine: str, python: str = "3.10"):
    """The requirements of ``names`` whose environment markers hold on ``machine`` (Linux, CPython ``python``)."""
    from packaging.requirements import Requirement

    env = {"platform_machine": machine, "sys_platform": "linux", "python_version": python, "extra": ""}
    reqs = [Requirement(name) for name in names]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def test_numpy_admits_jetpacks_1_21_and_stays_below_2_on_aarch64():
    project = read_pyproject()["project"]
    for machine, admits_2 in (("x86_64", True), ("aarch64", False)):
        numpy = [r.specifier for r in _requirements(project["dependencies"], machine) if r.name == "numpy"]
        assert numpy, machine
        allowed = lambda version: all(spec.contains(version) for spec in numpy)  # noqa: E731
        assert allowed("1.21.5"), (machine, numpy)  # JetPack 6.1/6.2's python3-numpy
        assert allowed("1.26.4") and not allowed("1.20.3")
        assert allowed("2.2.6") == admits_2, (machine, numpy)


def test_jetson_extra_brings_onnx_and_cpu_onnxruntime_and_no_tensorrt():
    extras = read_pyproject()["project"]["optional-dependencies"]
    names = {r.name for r in _requirements(extras["jetson"], "aarch64")}
    assert names == {"onnx", "onnxruntime"}, names  # JetPack ships TensorRT; GPU ONNX Runtime is NVIDIA's wheel


def test_built_wheel_holds_and_imports_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("rada_export-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("rada_export/cli/app.py", "rada_export/runtimes/runtime.py", "rada_export/calibration/__init__.py",
                     "rada_export/export/bundle.py", "rada_export/model_configs/rada-tiny-ViT.json"):
        assert expected in names, expected
    assert not [n for n in names if n.startswith(("cli/", "runtimes/", "calibration/", "tests/"))]
    extracted = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(extracted)
    code = (f"import sys; sys.path.insert(0, {str(extracted)!r}); import rada_export, rada_export.cli.app, "
            "rada_export.runtimes.manifest, rada_export.calibration; "
            f"assert rada_export.__file__.startswith({str(extracted)!r}), rada_export.__file__; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_editable_install_maps_the_folders():
    import rada_export.calibration
    import rada_export.cli
    import rada_export.runtimes

    assert Path(rada_export.cli.__file__).parent == REPO / "cli"
    assert Path(rada_export.runtimes.__file__).parent == REPO / "runtimes"
    assert Path(rada_export.calibration.__file__).parent == REPO / "calibration"


def test_cli_version_and_help_on_every_command():
    from rada_export import __version__
    from rada_export.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [c.name for c in app.registered_commands]
    assert {"train", "onnx", "verify"} <= set(commands)
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example:" in result.output, f"`{name} --help` shows no example"


def test_console_script_is_installed():
    result = subprocess.run(["rada-export", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "rada-export" in result.stdout


def test_calibration_imports_no_torch():
    """INT8 calibration works on graphs alone (ONNX Runtime's quantizer): a host without torch can run
    it, and the crash-safety tests' killed `calibrate` processes start without loading torch."""
    code = ("import sys; import rada_export.calibration.bundle, rada_export.cli.calibrate, rada_export.cli.app; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tests_read_pyproject_without_needing_tomllib():
    """JetPack 6's Python is 3.10, which has no tomllib: only read_pyproject may name it, behind its fallback."""
    users = [path.name for path in sorted((REPO / "tests").glob("*.py"))
             if "tomllib" in path.read_text(encoding="utf-8") and path.name != "test_package.py"]
    assert users == [], f"{users} import tomllib directly: use test_package.read_pyproject"
    code = ("import sys\n"
            "class NoTomllib:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'tomllib':\n"
            "            raise ModuleNotFoundError(\"No module named 'tomllib'\", name=name)\n"
            "sys.meta_path.insert(0, NoTomllib())\n"
            f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
            "import pytest, test_package\n"
            "try:\n"
            "    print(sorted(test_package.read_pyproject()['project']['optional-dependencies'])[:1])\n"
            "except pytest.skip.Exception as skip:\n"
            "    print('skipped:', skip)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("skipped: Python < 3.11 has no tomllib") or out.startswith("['"), out  # tomli, where installed, reads it

"""Packaging: the design card's layout installs as rada_export.{cli,calibration,runtimes}."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


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

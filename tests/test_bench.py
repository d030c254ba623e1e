"""`rada-export bench`: its JSON fields (documented in the README) and the plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from rada_export.cli.app import app
from rada_export.export.bundle import ExportRequest, export_bundle

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"backend", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput", "peak_rss_mb", "repeats"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_clip) -> Path:
    out = tmp_path_factory.mktemp("bench") / "bundle"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=["a", "b", "c"], fp16=True,
                                max_batch=8, verify=False), clip=tiny_clip)
    return out


def test_bench_json_and_plot(bundle, tmp_path):
    png = tmp_path / "latency.png"
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundle), "--batch", "1,4", "--repeats", "3", "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = data["results"]
    assert {(r["backend"], r["precision"]) for r in rows} >= {("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"), ("pytorch-eager", "fp32")}
    for row in rows:
        assert set(row) == FIELDS
        assert row["batch"] in (1, 4) and row["repeats"] == 3
        # 3 runs are too few for a p90 or p99 that means more than the slowest run: none is claimed.
        assert 0 < row["p50_ms"] <= row["max_ms"] and row["p90_ms"] is None and row["p99_ms"] is None
        assert row["throughput"] == pytest.approx(1000 * row["batch"] / row["p50_ms"])
        assert row["peak_rss_mb"] > 10
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 300
    readme = (REPO / "README.md").read_text()
    for field in FIELDS:
        assert re.search(rf"`{field}`", readme), f"bench --json field {field} is not documented in the README"


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "positive"), (["--batch", "x"], "integers"), (["--batch", "64"], "max batch"),
    (["--batch", "1", "--backend", "tensorrt"], "not available"), (["--batch", "1", "--backend", "jax"], "unknown backend"),
])
def test_bench_bad_input(bundle, args, message):
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundle), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split())


TTA_FIELDS = {"backend", "precision", "p50_ms", "encoder_ms", "adapt_ms", "updates", "encoder_on", "repeats"}


def test_bench_tta_times_the_continual_adaptation_path(bundle):
    """--tta: predict(adapt=True) runs the image_encoder graph and an update step per frame (no fused graph)."""
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundle), "--tta", "--backend", "onnxruntime-cpu",
                                      "--repeats", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["tta"]
    assert {r["precision"] for r in rows} == {"fp32", "fp16"}
    for row in rows:
        assert set(row) == TTA_FIELDS and row["repeats"] == 3
        assert 0 < row["encoder_ms"] < row["p50_ms"] and row["adapt_ms"] > 0
        assert row["updates"] == 2 + 3  # warm-up and timed runs: every frame took its update step
        assert "ONNX Runtime on the CPU" in row["encoder_on"]
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundle), "--tta", "--frames"])
    assert result.exit_code == 2 and "--tta" in result.output


def test_tail_percentiles_need_enough_runs():
    from rada_export.bench import tail_latency

    runs = [float(i) for i in range(1, 10)]
    assert tail_latency(runs, 90) is None and tail_latency(runs + [10.0], 90) == pytest.approx(9.1)
    assert tail_latency([1.0] * 99, 99) is None and tail_latency([1.0] * 99 + [2.0], 99) == pytest.approx(1.01)


def test_bench_takes_the_runtimes_backend_name(bundle):
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundle), "--backend", "onnxruntime", "--batch", "1",
                                      "--repeats", "10", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["results"]
    assert {r["backend"] for r in rows} == {"onnxruntime-cpu"}
    assert all(r["p90_ms"] is not None and r["p99_ms"] is None for r in rows)

"""The quality benchmark (benchmarks.quality): the tiny scale end to end on both benchmarks (real WordNet
glosses, real digits, tiny models from configs), resuming without retraining, and the mean/std aggregation
by hand."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from benchmarks import quality
from benchmarks.quality import (
    NO_TEACHER_ROW,
    PEER_ROW,
    BenchmarkOptions,
    RunRecord,
    aggregate_runs,
    feature_losses,
    format_benchmark_table,
    run_benchmarks,
)

pytestmark = pytest.mark.slow

LOSSES = ["perception_coherence", "projected_mse"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_options(tmp_path) -> BenchmarkOptions:
    return BenchmarkOptions(
        benchmarks=["text", "vision"], losses=LOSSES, seeds=[0], scale="tiny", output_dir=str(tmp_path / "results"),
        work_dir=str(tmp_path / "work"), teachers_dir=str(tmp_path / "teachers"), num_threads=1,
    )


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory, minilm_path):
    """Both benchmarks at the tiny scale: 2 losses + the references, one seed each."""
    tmp_path = tmp_path_factory.mktemp("benchmark")
    options = tiny_options(tmp_path)
    return tmp_path, options, run_benchmarks(options)


@pytest.mark.parametrize("benchmark", ["text", "vision"])
def test_tiny_benchmark_trains_and_measures_every_row_on_the_same_student(tiny_benchmark, benchmark) -> None:
    tmp_path, options, reports = tiny_benchmark
    report = reports[benchmark]
    expected_rows = LOSSES + [NO_TEACHER_ROW] + ([PEER_ROW] if benchmark == "text" else [])
    saved = json.loads((tmp_path / "results" / f"{benchmark}.json").read_text())
    assert [(run["row"], run["seed"]) for run in saved["runs"]] == [(row, 0) for row in expected_rows]
    assert saved["settings"]["scale"] == "tiny" and saved["seeds"] == [0]
    for run in saved["runs"]:
        metrics = run["metrics"]
        for name in ("knn_accuracy@10", "linear_probe_accuracy", "map_at_r", "teacher_neighbour_recall@10",
                     "dissimilarity_spearman", "perception_coherence"):
            assert math.isfinite(metrics[name]), (run["row"], name)
        assert 0.0 <= metrics["knn_accuracy@10"] <= 1.0 and 0.0 <= metrics["teacher_neighbour_recall@10"] <= 1.0
        assert run["train_samples_per_second"] > 0 and 0 < run["train_seconds"] < run["wall_seconds"]
    # every row trains the same student architecture, which is smaller than the teacher
    parameters = {run["metrics"]["parameters"] for run in saved["runs"]}
    assert len(parameters) == 1 and parameters.pop() < saved["teacher"]["parameters"]
    # the teacher is measured on the same held-out sample, with the class-aware metrics only
    assert "knn_accuracy@10" in saved["teacher"] and "teacher_neighbour_recall@10" not in saved["teacher"]
    # the summary of one seed is the run itself, with no spread
    for run in saved["runs"]:
        summary = saved["summary"][run["row"]]["knn_accuracy@10"]
        assert summary == {"mean": run["metrics"]["knn_accuracy@10"], "std": 0.0, "n": 1}
    # the students' weights are not kept (only their measurements)
    weights = [name for _, _, names in os.walk(tmp_path / "work" / benchmark) for name in names
               if name.endswith(".safetensors")]
    assert weights == []
    assert report.files["json"].endswith(f"{benchmark}.json")


@pytest.mark.parametrize("benchmark", ["text", "vision"])
def test_tiny_benchmark_writes_a_mean_std_table_and_both_plots(tiny_benchmark, benchmark) -> None:
    tmp_path, _, reports = tiny_benchmark
    table = (tmp_path / "results" / f"{benchmark}.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| loss / reference"))
    for column in ("knn_accuracy@10", "teacher_neighbour_recall@10", "train_samples_per_second", "wall_seconds"):
        assert column in header
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    expected_rows = LOSSES + [NO_TEACHER_ROW] + ([PEER_ROW] if benchmark == "text" else []) + ["teacher"]
    assert set(expected_rows) <= set(rows)
    knn = reports[benchmark].summary["perception_coherence"]["knn_accuracy@10"].mean
    assert f"{knn:.4f} ± 0.0000" in rows["perception_coherence"]
    for plot in (f"{benchmark}_quality.png", f"{benchmark}_quality_vs_time.png"):
        content = (tmp_path / "results" / plot).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 10_000


def test_a_rerun_reuses_the_recorded_runs_without_training(tiny_benchmark, monkeypatch) -> None:
    tmp_path, options, reports = tiny_benchmark

    def must_not_train(*args, **kwargs):
        raise AssertionError("a run recorded with the same settings was trained again")

    for runner in ("run_distillation_row", "run_no_teacher_row", "run_peer_row"):
        monkeypatch.setattr(quality, runner, must_not_train)
    again = run_benchmarks(options)
    for name, report in reports.items():
        assert [run.to_dict() for run in again[name].runs] == [run.to_dict() for run in report.runs]


def record(row: str, seed: int, knn: float, seconds: float, **metrics: float) -> RunRecord:
    return RunRecord(row, "distillation", seed, {"knn_accuracy@10": knn, **metrics}, train_samples_per_second=640 / seconds,
                     train_seconds=seconds, wall_seconds=seconds + 5.0)


def test_aggregation_is_the_mean_and_sample_std_over_seeds() -> None:
    runs = [
        record("cka", 0, 0.50, 10.0, perception_coherence=0.80),
        record("cka", 1, 0.60, 20.0, perception_coherence=0.90),
        record("cka", 2, 0.70, 30.0, perception_coherence=0.70),
        record("gram", 0, 0.40, 8.0),
    ]
    summary = aggregate_runs(runs)
    assert list(summary) == ["cka", "gram"]
    cka = summary["cka"]
    # mean 0.6; sample std sqrt(((-0.1)^2 + 0^2 + 0.1^2) / (3 - 1)) = 0.1
    assert cka["knn_accuracy@10"].mean == pytest.approx(0.6) and cka["knn_accuracy@10"].std == pytest.approx(0.1)
    assert cka["perception_coherence"].mean == pytest.approx(0.8) and cka["perception_coherence"].std == pytest.approx(0.1)
    # seconds 10, 20, 30: mean 20, std sqrt((100 + 0 + 100) / 2) = 10; wall = seconds + 5
    assert (cka["train_seconds"].mean, cka["train_seconds"].std) == (pytest.approx(20.0), pytest.approx(10.0))
    assert cka["wall_seconds"].mean == pytest.approx(25.0)
    # samples/s 64, 32, 21.33: mean 39.11, std 22.20 (by hand: deviations 24.89, -7.11, -17.78)
    assert cka["train_samples_per_second"].mean == pytest.approx((64 + 32 + 64 / 3) / 3)
    assert cka["train_samples_per_second"].std == pytest.approx(np.sqrt((24.888889**2 + 7.111111**2 + 17.777778**2) / 2))
    assert cka["knn_accuracy@10"].n == 3
    # one seed: no spread; a metric a row lacks is absent from its summary
    assert (summary["gram"]["knn_accuracy@10"].mean, summary["gram"]["knn_accuracy@10"].std) == (0.4, 0.0)
    assert "perception_coherence" not in summary["gram"]
    table = format_benchmark_table(summary, {"knn_accuracy@10": 0.9})
    lines = table.splitlines()
    assert lines[0] == ("| loss / reference | seeds | knn_accuracy@10 | perception_coherence | train_samples_per_second "
                        "| train_seconds | wall_seconds |")
    assert lines[2] == "| cka | 3 | 0.6000 ± 0.1000 | 0.8000 ± 0.1000 | 39.1 ± 22.2 | 20.0 ± 10.0 | 25.0 ± 10.0 |"
    assert lines[3] == "| gram | 1 | 0.4000 ± 0.0000 | - | 80.0 ± 0.0 | 8.0000 ± 0.0000 | 13.0 ± 0.0 |"
    assert lines[4] == "| teacher | - | 0.9000 | - | - | - | - |"


def test_the_rows_are_the_feature_losses_and_options_are_checked() -> None:
    assert "logit_kd" not in feature_losses()
    assert {"perception_coherence", "projected_mse", "cka", "procrustes"} <= set(feature_losses())
    with pytest.raises(ValueError, match="compares logits"):
        BenchmarkOptions(losses=["logit_kd"])
    with pytest.raises(ValueError, match="Known: .*perception_coherence"):
        BenchmarkOptions(losses=["perception_coherense"])
    with pytest.raises(ValueError, match="benchmark 'audio'"):
        BenchmarkOptions(benchmarks=["audio"])
    with pytest.raises(ValueError, match="scale='huge'"):
        BenchmarkOptions(scale="huge")

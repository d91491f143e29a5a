"""benchmarks.end_to_end: hf_pcoh end to end beside the sentence-transformers recipe (smoke sizes, real MiniLM)."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.end_to_end import (
    RECALL,
    SPEARMAN,
    TABLE_HEADER,
    EndToEndOptions,
    JobRun,
    markdown_table,
    run_end_to_end,
    summarise,
)

pytestmark = pytest.mark.slow


def table_rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    assert lines[0] == TABLE_HEADER
    return {cells[0]: cells for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])}


def test_the_smoke_run_tables_each_job_with_its_ratio_the_quotient_of_samples_per_second(tmp_path, minilm_path) -> None:
    output = tmp_path / "end_to_end.json"
    options = EndToEndOptions(smoke=True, output=str(output), work_dir=str(tmp_path / "work"),
                              variants=["hf_pcoh", "hf_pcoh_cache_auto"])
    report = run_end_to_end(options)

    rows = table_rows(report.table)
    assert list(rows) == ["sentence_transformers", "hf_pcoh", "hf_pcoh_cache_auto"]
    reference = float(rows["sentence_transformers"][2])
    for job, cells in rows.items():
        samples_per_second, ratio = float(cells[2]), float(cells[3])
        rounding = 0.005 + (samples_per_second / reference) * (0.05 / samples_per_second + 0.05 / reference)
        assert ratio == pytest.approx(samples_per_second / reference, abs=rounding), job
    for summary in report.summaries:  # unrounded: exactly the quotient, and what the table prints
        assert summary.samples_per_second == pytest.approx(options.trained_samples / summary.wall_seconds)
        st = report.summaries[0]
        assert summary.ratio_to_sentence_transformers == pytest.approx(summary.samples_per_second / st.samples_per_second)
        assert rows[summary.job][3] == f"{summary.ratio_to_sentence_transformers:.2f}"
        assert 0 <= summary.recall_at_10 <= 1 and -1 <= summary.spearman <= 1
    assert options.trained_samples == 64 and all(run.samples == 64 for run in report.runs)

    written = json.loads(output.read_text())
    assert written["table"] == report.table and [row["job"] for row in written["summary"]] == list(rows)
    # teacher_cache auto did cache: the features were computed once, from an empty cache
    cache = tmp_path / "work" / "round0" / "hf_pcoh_cache_auto" / "hf_datasets_cache" / "hf_pcoh_teacher_features"
    assert len(os.listdir(cache)) == 1


def test_rounds_are_summarised_by_the_median_wall_time() -> None:
    metrics = {RECALL: 0.5, SPEARMAN: 0.4}
    runs = [JobRun("sentence_transformers", 0, 10.0, 8.0, 100, metrics), JobRun("hf_pcoh", 0, 5.0, 4.0, 100, metrics),
            JobRun("hf_pcoh", 1, 7.0, 6.0, 100, metrics), JobRun("sentence_transformers", 1, 30.0, 9.0, 100, metrics),
            JobRun("hf_pcoh", 2, 100.0, 5.0, 100, metrics), JobRun("sentence_transformers", 2, 20.0, 7.0, 100, metrics)]
    summaries = summarise(runs)
    assert [summary.job for summary in summaries] == ["sentence_transformers", "hf_pcoh"]
    assert summaries[0].wall_seconds == 20.0 and summaries[1].wall_seconds == 7.0
    assert summaries[1].ratio_to_sentence_transformers == pytest.approx((100 / 7.0) / (100 / 20.0))
    assert "| hf_pcoh | 7.0 | 14.3 | 2.86 | 5.0 | 0.5000 | 0.4000 |" in markdown_table(summaries)


def test_options_refuse_what_cannot_be_measured() -> None:
    assert EndToEndOptions().variants == ["hf_pcoh_cache_auto"]  # what the minilm-wordnet recipe runs
    with pytest.raises(ValueError, match="variants: 'hf_pcoh_fast'"):
        EndToEndOptions(variants=["hf_pcoh_fast"])
    with pytest.raises(ValueError, match="fewer than one batch"):
        EndToEndOptions(num_glosses=10, batch_size=64)
    assert EndToEndOptions(smoke=True).num_glosses == 64

"""The loss-cost suites (benchmarks.loss_cost.SUITES): their result files, the blocks of README and docs rendered
from them, the skip cap, and ``scripts/bench_losses.py --suite``. Rendering is checked on hand-made rows; one slow
test measures tiny suites for real into a temporary folder (never into benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import loss_cost
from benchmarks.loss_cost import (
    EXACT, NAIVE, SAMPLED_128, SAMPLED_256, SORTED, SUITES, LossCostOptions, committed_blocks, measure_losses,
    rendered_blocks,
)
from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.rendered_tables import DOCUMENTS, has_block

MiB, GiB = 2**20, 2**30
SCRIPT = REPOSITORY_ROOT / "scripts" / "bench_losses.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_losses_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(loss: str, batch_size: int, seconds: float | None = None, peak_bytes: float = 0, **extra) -> dict:
    figures = {} if seconds is None else {"seconds": seconds, "runs": 1, "peak_bytes": peak_bytes, "value": 0.5}
    return {"loss": loss, "batch_size": batch_size, **figures, **extra}


def suite_result(suite: str, rows: list[dict], load: tuple[float, float] = (0.05, 1.01)) -> dict:
    """A result file's content as measure_suite writes it, around hand-made rows."""
    return {"suite": suite, "command": loss_cost.suite_command(suite),
            "options": asdict(loss_cost.suite_options(suite)),
            "machine": {"device": "cpu", "gpu": None, "cpu": "Test CPU, 2 cores"}, "threads": 1,
            "load_average": {"before": [load[0], 0.1, 0.1], "after": [load[1], 0.5, 0.2]}, "rows": rows}


def exact_result() -> dict:
    return suite_result("pc_exact_vs_naive", [
        row(EXACT, 256, 0.0901, 87 * MiB),
        row(NAIVE, 256, 0.477, 295 * MiB, max_value_difference=0.0, max_relative_grad_difference=3.0e-7),
        row(EXACT, 512, 0.96, 146 * MiB),
        row(NAIVE, 512, 8.54, 2.13 * GiB, max_value_difference=1.2e-8, max_relative_grad_difference=4.1e-7),
        row(EXACT, 1024, 6.95, 175 * MiB),
        row(NAIVE, 1024, 87.0, 17.0 * GiB, max_value_difference=0.0, max_relative_grad_difference=2.0e-7),
        row(EXACT, 2048, 65.3, 301 * MiB),
        row(NAIVE, 2048, note="skipped: needs ~128.00 GiB, 20.00 GiB available", needed_bytes=16 * 2048**3,
            available_bytes=20 * GiB),
    ])


def large_result() -> dict:
    figures = {SORTED: [(0.022, 15 * MiB), (0.42, 200 * MiB), (1.83, 351 * MiB), (8.9, 648 * MiB), (41.0, 2.26 * GiB)],
               SAMPLED_128: [(0.025, 47 * MiB), (0.92, 151 * MiB), (3.84, 184 * MiB), (17.1, 539 * MiB),
                             (57.6, 1.94 * GiB)],
               SAMPLED_256: [(0.089, 88 * MiB), (1.78, 156 * MiB), (7.74, 187 * MiB)]}
    rows = []
    for index, batch_size in enumerate((256, 1024, 2048, 4096, 8192)):
        for loss, measured in figures.items():
            rows.append(row(loss, batch_size, *measured[index]) if index < len(measured) else
                        row(loss, batch_size, note=f"not run: the suite leaves {loss} out at B={batch_size} (skip)"))
    return suite_result("pc_large_batches", rows)


def others_result() -> dict:
    return suite_result("all_losses_b1024", [row(EXACT, 1024, 7.07, 187 * MiB), row("cospress", 1024, 0.318, 286 * MiB),
                                             row("logit_kd", 1024, 0.0012, 0)])


def study_results() -> dict[str, list[dict]]:
    """Seed-0 validation runs as the study writes them, with the figures docs/study.md shows."""
    recall = {"vision": {"pc_cos_t0.1_b1024": 0.1873, "pc_cos_t0.1_b1024_sorted": 0.1867,
                         "pc_cos_t0.1_b1024_m256": 0.1472, "pc_cos_t0.1_b1024_m128": 0.1309,
                         "pc_cos_t0.1_b256": 0.2874, "pc_cos_t0.1_b256_sorted": 0.2849},
              "text": {"pc_cos_t0.1_b1024": 0.5659, "pc_cos_t0.1_b1024_sorted": 0.5661,
                       "pc_cos_t0.1_b1024_m256": 0.561, "pc_cos_t0.1_b1024_m128": 0.5581}}
    spearman = {"pc_cos_t0.1_b1024": 0.8332, "pc_cos_t0.1_b1024_sorted": 0.8263, "pc_cos_t0.1_b1024_m256": 0.7743,
                "pc_cos_t0.1_b1024_m128": 0.7264}
    def run(variant: str, recall_at_10: float) -> dict:
        return {"variant": variant, "seed": 0, "metrics": {"validation": {
            "teacher_neighbour_recall@10/cosine": recall_at_10,
            "dissimilarity_spearman/cosine": spearman.get(variant, 0.5)}}}

    return {benchmark: [run(variant, value) for variant, value in values.items()]
            for benchmark, values in recall.items()}


def test_the_committed_suites_are_the_settings_the_documents_describe() -> None:
    assert SUITES["pc_exact_vs_naive"] == dict(losses=[EXACT], batch_sizes=[256, 512, 1024, 2048], naive=True,
                                               naive_memory_fraction=0.8)
    assert SUITES["all_losses_b1024"] == dict(losses=loss_cost.DEFAULT_LOSSES, batch_sizes=[1024], naive=False)
    assert SUITES["pc_large_batches"]["skip"] == {SAMPLED_256: [4096, 8192]}
    for name in SUITES:
        assert loss_cost.suite_options(name).repeats == 3  # valid options, three timed repeats
    with pytest.raises(ValueError, match="unknown suite 'pc_exact'"):
        loss_cost.suite_options("pc_exact")
    # every block reads committed suites, and exactly one document holds its markers
    texts = [(REPOSITORY_ROOT / document).read_text(encoding="utf-8") for document in DOCUMENTS]
    for name, (suites, _) in loss_cost.BLOCKS.items():
        assert set(suites) <= set(SUITES), name
        assert sum(has_block(text, name) for text in texts) == 1, name


def test_the_exact_table_renders_time_memory_and_the_naive_cells_not_run() -> None:
    block = loss_cost.pc_exact_block(exact_result()).splitlines()

    assert block[0].startswith("`python scripts/bench_losses.py --suite pc_exact_vs_naive`: each measurement in its "
                               "own process; Test CPU, 2 cores, 1 thread, load average 0.05 before and 1.01 after")
    assert block[2:6] == [
        "| perception coherence | B=256 | B=512 | B=1024 | B=2048 |",
        "|---|---:|---:|---:|---:|",
        "| ours (folded comparisons, custom autograd Function) | 90 ms, 87 MiB | 960 ms, 146 MiB | 6.95 s, 175 MiB "
        "| 65.3 s, 301 MiB |",
        "| naive reference (autograd over the [B, B, B] comparisons) | 477 ms, 295 MiB | 8.54 s, 2.13 GiB | "
        "87.0 s, 17.0 GiB | needs ~128 GiB: not run |",
    ]
    # the largest differences over the sizes where both ran (B=2048's naive row did not run)
    assert block[-1] == ("Ours against the naive reference on the same inputs, at every batch size where both ran "
                         "(B = 256, 512 and 1,024): |Δ loss| ≤ 1.2e-8, max |Δ gradient| / max |gradient| "
                         "≤ 4.1e-7.")


def test_times_and_sizes_read_like_the_documents() -> None:
    assert [loss_cost.format_seconds(s) for s in (0.0012, 0.0901, 0.9994, 0.9996, 6.954, 65.3, 123.4)] == [
        "1.2 ms", "90 ms", "999 ms", "1.00 s", "6.95 s", "65.3 s", "123 s"]
    assert [loss_cost.format_memory(b) for b in (0, 87 * MiB, 1023.9 * MiB, 2.126 * GiB, 17.0 * GiB, 128 * GiB)] == [
        "0.0 MiB", "87 MiB", "1.00 GiB", "2.13 GiB", "17.0 GiB", "128 GiB"]
    assert [loss_cost.format_difference(d) for d in (0.0, 4.1e-7, 1.5e-10)] == ["0", "4.1e-7", "1.5e-10"]


def test_the_other_losses_and_the_large_batches_tables() -> None:
    others = loss_cost.other_losses_block(others_result()).splitlines()
    assert others[2:] == ["| loss | B=1024 |", "|---|---:|", "| perception coherence | 7.07 s, 187 MiB |",
                          "| CosPress | 318 ms, 286 MiB |", "| logit KD | 1.2 ms, 0.0 MiB |"]
    large = loss_cost.large_batches_block(large_result()).splitlines()
    assert large[2:] == [
        "| perception coherence | B=256 | B=1024 | B=2048 | B=4096 | B=8192 |",
        "|---|---:|---:|---:|---:|---:|",
        "| `soft_rank: sorted` | 22 ms, 15 MiB | 420 ms, 200 MiB | 1.83 s, 351 MiB | 8.90 s, 648 MiB "
        "| 41.0 s, 2.26 GiB |",
        "| `num_references: 128` | 25 ms, 47 MiB | 920 ms, 151 MiB | 3.84 s, 184 MiB | 17.1 s, 539 MiB "
        "| 57.6 s, 1.94 GiB |",
        "| `num_references: 256` | 89 ms, 88 MiB | 1.78 s, 156 MiB | 7.74 s, 187 MiB | not run | not run |",
    ]


def test_readme_sentence_and_the_study_table_join_the_suites_and_the_study_runs() -> None:
    summary = loss_cost.cost_summary(exact_result(), large_result())
    assert summary == (
        "Forward + backward on one CPU thread (widths 384/768; "
        "`python scripts/bench_losses.py --suite pc_large_batches` and `--suite pc_exact_vs_naive`): 22 ms at B=256, "
        "420 ms at 1,024, 1.83 s at 2,048, 8.90 s at 4,096 and "
        "41.0 s (2.26 GiB) at 8,192 with the sorted rank, against 90 ms, 960 ms, 6.95 s and 65.3 s for the exact rank "
        "at B = 256, 512, 1,024 and 2,048; `num_references: 128` takes 920 ms at B=1,024 (and costs quality, see the "
        "study).")
    table = loss_cost.study_b1024_block(exact_result(), large_result(), study_results()).splitlines()
    assert table[2:] == [
        "| perception coherence at B=1024 | fwd+bwd | peak memory | vision val recall@10 | vision val Spearman | "
        "text val recall@10 |",
        "|---|---:|---:|---:|---:|---:|",
        "| exact (pairwise sigmoid, every point a reference) | 6.95 s | 175 MiB | 0.187 | 0.833 | 0.566 |",
        "| `soft_rank: sorted` (ramp kernel by sorting, every point a reference) | 420 ms | 200 MiB | 0.187 | 0.826 | "
        "0.566 |",
        "| `num_references: 256` (sampled reference points) | 1.78 s | 156 MiB | 0.147 | 0.774 | 0.561 |",
        "| `num_references: 128` | 920 ms | 151 MiB | 0.131 | 0.726 | 0.558 |",
        "",
        "At B=1024 the sorted rank's forward + backward is 17x faster than the exact rank's.",
    ]
    # a figure the sentence quotes that was not measured is an error naming the suite's command
    unmeasured = large_result()
    unmeasured["rows"] = [r for r in unmeasured["rows"] if not (r["loss"] == SAMPLED_128 and r["batch_size"] == 1024)]
    with pytest.raises(ValueError, match="num_references=128 at B=1024 has no row.*--suite pc_large_batches"):
        loss_cost.cost_summary(exact_result(), unmeasured)


def test_quality_figures_the_prose_quotes_come_from_the_study_runs() -> None:
    figures = loss_cost.quoted_figures(study_results())
    assert figures["docs/study.md"] == ["student loses 0.04–0.06 recall against the exact loss",
                                        "the text student loses only 0.005–0.008 (0.561 and 0.558 against 0.566)",
                                        "(0.285 against 0.287; 0.187 against 0.187)"]
    assert figures["README.md"] == ["cost 0.04–0.06 recall at B=1024 on vision and 0.005–0.008 on text"]
    assert figures["docs/benchmarks.md"] == ["sampled references lose 0.04–0.06 recall at B=1024"]


def test_the_skip_cap_leaves_its_rows_unmeasured_and_says_so(monkeypatch) -> None:
    measured: list[tuple[str, int]] = []
    monkeypatch.setattr(loss_cost, "run_one", lambda spec, timeout: measured.append((spec["loss"], spec["batch_size"]))
                        or {**spec, "seconds": 0.5, "runs": 1, "peak_bytes": MiB, "value": 0.0})
    options = LossCostOptions(losses=[SORTED, SAMPLED_256], batch_sizes=[256, 4096], naive=False,
                              skip={SAMPLED_256: [4096]})
    rows = measure_losses(options)

    assert measured == [(SORTED, 256), (SAMPLED_256, 256), (SORTED, 4096)]
    assert rows[3]["loss"] == SAMPLED_256 and "seconds" not in rows[3]
    assert rows[3]["note"] == f"not run: the suite leaves {SAMPLED_256} out at B=4096 (skip)"
    assert loss_cost.cost_cell(rows[3]) == "not run"
    with pytest.raises(ValueError, match="skip: 'cka' is not one of the losses"):
        LossCostOptions(losses=[SORTED], skip={"cka": [256]})
    with pytest.raises(ValueError, match=r"skip: .* at \[512\]: every batch size must be one of"):
        LossCostOptions(losses=[SORTED], batch_sizes=[256], skip={SORTED: [512]})


def test_a_missing_result_file_is_an_error_naming_the_command_that_writes_it(tmp_path) -> None:
    (tmp_path / "all_losses_b1024.json").write_text(json.dumps(others_result()))
    with pytest.raises(FileNotFoundError) as error:
        committed_blocks(tmp_path)
    message = str(error.value)
    assert "python scripts/bench_losses.py --suite pc_exact_vs_naive" in message
    assert "python scripts/bench_losses.py --suite pc_large_batches" in message
    assert "--suite all_losses_b1024" not in message
    # what is there renders: only the blocks whose suites are all present
    assert set(rendered_blocks({"all_losses_b1024": others_result()})) == {"loss_cost_others"}


def test_after_measuring_the_blocks_with_every_suite_present_are_rendered(tmp_path, monkeypatch) -> None:
    from benchmarks import rendered_tables

    (tmp_path / "pc_large_batches.json").write_text(json.dumps(large_result()))
    monkeypatch.setattr(loss_cost, "RESULTS_DIR", tmp_path)
    written: list[dict[str, str]] = []
    monkeypatch.setattr(rendered_tables, "render_into_documents",
                        lambda blocks: written.append(blocks) or {"docs/benchmarks.md": list(blocks)})
    rendered, pending = loss_cost.render_committed_suites()

    assert rendered == {"docs/benchmarks.md": ["loss_cost_large"]}
    assert written[0]["loss_cost_large"] == loss_cost.large_batches_block(large_result())
    assert pending == {"loss_cost_pc_exact": ["pc_exact_vs_naive"], "loss_cost_others": ["all_losses_b1024"],
                       "loss_cost_summary": ["pc_exact_vs_naive"], "loss_cost_study_b1024": ["pc_exact_vs_naive"]}


def test_the_command_line_measures_named_suites_with_their_own_settings(capsys) -> None:
    script = load_script()
    repeated = script.parse_args(["--suite", "pc_large_batches", "--suite", "pc_exact_vs_naive",
                                  "--suite", "pc_large_batches"])
    assert script.suite_names(repeated) == ["pc_large_batches", "pc_exact_vs_naive"]
    assert script.suite_names(script.parse_args(["--suite", "pc_exact_vs_naive", "--suite", "all"])) == list(SUITES)
    free = script.parse_args(["--batch-sizes", "64", "--losses", "cka"])
    assert free.suite is None and free.batch_sizes == [64]
    for arguments, message in ((["--suite", "bogus"], "invalid choice: 'bogus'"),
                               (["--suite", "all", "--batch-sizes", "64", "--no-naive"],
                                "drop --batch-sizes, --no-naive"),
                               (["--results-dir", "/tmp/elsewhere"], "--results-dir is where --suite writes")):
        with pytest.raises(SystemExit):
            script.parse_args(arguments)
        assert message in capsys.readouterr().err


@pytest.mark.slow  # real measurements, each in its own process (tiny batches)
def test_tiny_suites_write_their_result_files_and_render_every_block(tmp_path, monkeypatch, capsys) -> None:
    tiny = {"dim": 8, "teacher_dim": 12, "repeats": 1}
    monkeypatch.setitem(SUITES, "pc_exact_vs_naive", dict(losses=[EXACT], batch_sizes=[12, 16], naive=True,
                                                          naive_memory_fraction=0.8, **tiny))
    monkeypatch.setitem(SUITES, "all_losses_b1024", dict(losses=["cka"], batch_sizes=[16], naive=False, **tiny))
    monkeypatch.setitem(SUITES, "pc_large_batches", dict(losses=[SORTED, SAMPLED_128, SAMPLED_256],
                                                         batch_sizes=[12, 16], naive=False, skip={SAMPLED_256: [12]},
                                                         **tiny))
    monkeypatch.setattr(loss_cost, "SUMMARY_BATCH", 16)
    monkeypatch.setattr(loss_cost, "STUDY_BATCH", 16)
    assert load_script().main(["--suite", "all", "--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"pc_large_batches: wrote {tmp_path / 'pc_large_batches.json'}" in printed
    assert "rendered" not in printed  # not the committed folder: README and docs are left alone

    result = json.loads((tmp_path / "pc_exact_vs_naive.json").read_text())
    assert result["command"] == "python scripts/bench_losses.py --suite pc_exact_vs_naive"
    assert result["options"]["batch_sizes"] == [12, 16] and result["options"]["naive_memory_fraction"] == 0.8
    assert {"device", "cpu", "torch", "hf_pcoh", "git_sha"} <= set(result["machine"])
    assert len(result["load_average"]["before"]) == len(result["load_average"]["after"]) == 3
    assert [(r["loss"], r["batch_size"]) for r in result["rows"]] == [
        (EXACT, 12), (NAIVE, 12), (EXACT, 16), (NAIVE, 16)]
    assert all(r["seconds"] > 0 and r["runs"] == 2 for r in result["rows"])
    assert result["rows"][1]["max_value_difference"] < 1e-5
    large = json.loads((tmp_path / "pc_large_batches.json").read_text())
    assert loss_cost.find_row(large, SAMPLED_256, 12)["note"].startswith("not run:")

    blocks = committed_blocks(Path(tmp_path))
    assert set(blocks) == set(loss_cost.BLOCKS)
    assert "| `num_references: 256` | not run | " in blocks["loss_cost_large"]
    assert "(B = 12 and 16): |Δ loss| " in blocks["loss_cost_pc_exact"]
    assert "| exact (pairwise sigmoid, every point a reference) | " in blocks["loss_cost_study_b1024"]

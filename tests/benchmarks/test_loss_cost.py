"""The loss-cost benchmark (benchmarks.loss_cost): the default perception coherence against its naive
reference on the same batch, each measured in its own process, and the rows of the table."""

from __future__ import annotations

import pytest

from benchmarks.loss_cost import NAIVE, LossCostOptions, markdown_table, measure, measure_losses

pytestmark = pytest.mark.slow

SMALL = {"batch_size": 24, "dim": 8, "teacher_dim": 12, "device": "cpu", "repeats": 0}


def test_the_naive_row_reports_the_default_loss_value_on_the_same_batch() -> None:
    default = measure({"loss": "perception_coherence", **SMALL})
    naive = measure({"loss": NAIVE, **SMALL})
    # both rows draw the same seeded inputs: the chunked default and the [B, B, B] formula agree on them
    assert naive["value"] == pytest.approx(default["value"], abs=1e-5)
    assert naive["max_value_difference"] == pytest.approx(abs(default["value"] - naive["value"]), abs=1e-6)
    assert naive["max_value_difference"] < 1e-5 and naive["max_relative_grad_difference"] < 1e-3
    assert default["seconds"] > 0 and default["peak_bytes"] >= 0
    assert "max_value_difference" not in default


def test_each_measurement_runs_in_its_own_process_and_fills_the_table() -> None:
    options = LossCostOptions(batch_sizes=[16], losses=["perception_coherence", "cka"], dim=8, teacher_dim=12,
                              repeats=0, timeout=300)
    messages: list[str] = []
    rows = measure_losses(options, progress=messages.append)

    # the naive reference comes right after the default perception coherence
    assert [row["loss"] for row in rows] == ["perception_coherence", NAIVE, "cka"]
    for row in rows:
        assert "note" not in row, row  # a failed subprocess would leave a note instead of figures
        assert row["batch_size"] == 16 and row["seconds"] > 0
    in_process = measure({"loss": "perception_coherence", "batch_size": 16, "dim": 8, "teacher_dim": 12,
                          "device": "cpu", "repeats": 0})
    assert rows[0]["value"] == pytest.approx(in_process["value"], abs=1e-6)
    assert rows[1]["value"] == pytest.approx(rows[0]["value"], abs=1e-5)
    assert messages == [f"measured {name} at B=16" for name in ("perception_coherence", NAIVE, "cka")]
    table = markdown_table(rows, options).splitlines()
    assert table[2] == "| loss | B | fwd+bwd | peak memory | note |"
    assert table[5].startswith(f"| {NAIVE} | 16 | ") and "default (chunked) vs naive: |Δ loss| = " in table[5]


def test_the_naive_reference_is_skipped_where_it_would_not_fit(monkeypatch) -> None:
    from benchmarks import loss_cost

    measured: list[tuple[str, int]] = []
    monkeypatch.setattr(loss_cost, "available_bytes", lambda device: 2 * 2**30)  # 2 GiB free
    monkeypatch.setattr(loss_cost, "run_one", lambda spec, timeout: measured.append((spec["loss"], spec["batch_size"]))
                        or {**spec, "seconds": 0.5, "peak_bytes": 2**20, "value": 0.0})
    options = LossCostOptions(batch_sizes=[256, 512], losses=["perception_coherence"])
    rows = loss_cost.measure_losses(options)

    # 16 bytes per comparison: B = 256 needs 256 MiB (under half of 2 GiB), B = 512 needs 2 GiB (over)
    assert measured == [("perception_coherence", 256), (NAIVE, 256), ("perception_coherence", 512)]
    assert rows[3]["loss"] == NAIVE and rows[3]["note"] == "skipped: needs ~2.00 GiB, 2.00 GiB available"
    assert markdown_table(rows, options).splitlines()[-1] == (
        f"| {NAIVE} | 512 | — | — | skipped: needs ~2.00 GiB, 2.00 GiB available |")
    assert [row["loss"] for row in loss_cost.measure_losses(LossCostOptions(batch_sizes=[256], losses=[
        "perception_coherence"], naive=False))] == ["perception_coherence"]


def test_options_name_what_to_fix() -> None:
    with pytest.raises(ValueError, match="Known: .*perception_coherence"):
        LossCostOptions(losses=["perception_coherense"])
    with pytest.raises(ValueError, match="batch_sizes=\\[1\\]"):
        LossCostOptions(batch_sizes=[1])


def test_a_loss_with_options_is_priced_as_that_variant() -> None:
    from benchmarks.loss_cost import parse_loss_spec

    assert parse_loss_spec("perception_coherence:soft_rank=sorted,num_references=128") == (
        "perception_coherence", {"soft_rank": "sorted", "num_references": 128})
    assert parse_loss_spec("cka") == ("cka", {})
    sorted_rank = measure({"loss": "perception_coherence:soft_rank=sorted", **SMALL})
    default = measure({"loss": "perception_coherence", **SMALL})
    assert sorted_rank["value"] != pytest.approx(default["value"], abs=1e-9)  # another kernel, another value
    assert 0 < sorted_rank["value"] < 1
    with pytest.raises(ValueError, match="soft_rank='bogus'"):
        LossCostOptions(losses=["perception_coherence:soft_rank=bogus"])
    with pytest.raises(ValueError, match="NAME:KEY=VALUE"):
        LossCostOptions(losses=["perception_coherence:sorted"])

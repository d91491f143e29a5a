"""The registered experiment's rule (docs/study.md), applied to hand-made result records: ties, real weight, the
finalists, the winner and the default's margin."""

from __future__ import annotations

import pytest

from benchmarks.registered_study import (
    KNN, RECALL, batch_outcome_sentence, batch_table, outcome_sentence, pc_carries_real_weight, ranked,
    recipe_loss_fields, selection,
)
from benchmarks.study import RowSummary, registered_variants

GROUPS = {variant.name: variant.group for variant in registered_variants("text")}


VARIANTS = {variant.name: variant for variant in registered_variants("text")}


def run(variant: str, seed: int, recall: float, knn: float = 0.45) -> dict:
    figures = {RECALL: recall, KNN: knn, "dissimilarity_spearman/cosine": 0.8, "perception_coherence/cosine": 0.8}
    settings = {"recipe": {"per_device_train_batch_size": 64, "max_train_samples": 16000},
                "variant": {"overrides": dict(VARIANTS[variant].overrides)}}
    return {"variant": variant, "group": GROUPS[variant], "seed": seed, "train_seconds": 300.0 * (1 + seed),
            "settings": settings, "metrics": {split: dict(figures) for split in ("validation", "test", "ood")}}


def row(variant: str, recall: float, knn: float) -> RowSummary:
    return RowSummary(variant, GROUPS[variant], [0], {RECALL: recall, KNN: knn}, {}, 1.0)


def test_rows_within_the_tie_margin_are_ordered_by_10nn_accuracy() -> None:
    rows = [row("reg_pc_top10", 0.600, 0.40), row("reg_pc_top30", 0.5985, 0.46), row("reg_pc_t0.03", 0.590, 0.50)]
    assert [r.variant for r in ranked(rows)] == ["reg_pc_top30", "reg_pc_top10", "reg_pc_t0.03"]
    rows[1] = row("reg_pc_top30", 0.5975, 0.46)  # 0.0025 behind: no longer a tie
    assert [r.variant for r in ranked(rows)] == ["reg_pc_top10", "reg_pc_top30", "reg_pc_t0.03"]


def test_perception_coherence_carries_real_weight_alone_or_at_three_tenths() -> None:
    assert pc_carries_real_weight("reg_pc_top10") and pc_carries_real_weight("reg_pc_b256")
    assert pc_carries_real_weight("reg_projected_mse+pc_top10_w0.3")
    assert not pc_carries_real_weight("reg_projected_mse+pc_top10_w0.1")
    assert not pc_carries_real_weight("reg_projected_mse") and not pc_carries_real_weight("reg_cospress_identity_ln")


def screening_runs() -> list[dict]:
    return [run("reg_projected_mse", 0, 0.634), run("reg_cospress_identity_ln", 0, 0.635),
            run("reg_pc_two_sided0.1", 0, 0.604), run("reg_pc_top30", 0, 0.603), run("reg_pc_top10", 0, 0.597),
            run("reg_projected_mse+pc_top30_w0.1", 0, 0.633),  # best PC mixture, but PC's weight is too small
            run("reg_projected_mse+pc_top30_w0.3", 0, 0.628), run("reg_pc_t0.1", 0, 0.650)]  # reference: passed over


def test_finalists_are_the_best_three_with_real_weight_then_the_controls() -> None:
    chosen = selection(screening_runs())
    assert chosen.best_candidates == ["reg_pc_two_sided0.1", "reg_pc_top30"]
    assert chosen.finalists == ["reg_projected_mse+pc_top30_w0.3", "reg_pc_two_sided0.1", "reg_pc_top30",
                                "reg_projected_mse", "reg_cospress_identity_ln"]
    assert chosen.winner is None and chosen.beats_default is None  # the finalists lack seeds 1 and 2
    with pytest.raises(ValueError, match="seeds"):
        outcome_sentence(screening_runs(), chosen)


@pytest.mark.parametrize("spread, beats", [(0.001, True), (0.006, False)])
def test_the_winner_replaces_the_default_only_beyond_the_larger_seed_std(spread, beats) -> None:
    # the winner: 0.640 with a seed std of `spread`; the default 0.635 on every seed (std 0)
    runs = [r for r in screening_runs() if r["variant"] != "reg_projected_mse+pc_top30_w0.3"]
    runs.append(run("reg_projected_mse+pc_top30_w0.3", 0, 0.640))
    for seed in (1, 2):
        runs += [run("reg_projected_mse", seed, 0.634), run("reg_pc_two_sided0.1", seed, 0.604),
                 run("reg_pc_top30", seed, 0.603)]
        runs += [run("reg_projected_mse+pc_top30_w0.3", seed, 0.640 + (spread if seed == 1 else -spread))]
        runs += [run("reg_cospress_identity_ln", seed, 0.635)]
    chosen = selection(runs)
    assert chosen.winner == "reg_projected_mse+pc_top30_w0.3"  # the best PC-carrying finalist over 3 seeds
    assert chosen.beats_default is beats
    sentence = outcome_sentence(runs, chosen)
    assert "`reg_projected_mse+pc_top30_w0.3`" in sentence
    assert ("so it is the default now" in sentence) is beats
    # test figures as validation here: ahead beyond the larger seed std, level within it
    assert ("ahead of both controls on test" if beats else "level with both controls on test") in sentence


def test_the_recipe_takes_the_winners_losses() -> None:
    assert recipe_loss_fields("reg_projected_mse+pc_top30_w0.3") == {
        "losses": ["projected_mse", "perception_coherence"], "loss_weights": [1.0, 0.3],
        "loss_kwargs": {"perception_coherence": {"temperature": 0.1, "dissimilarity": "cosine", "soft_rank": "sorted",
                                                 "top_k": 30}}}
    with pytest.raises(ValueError, match="by hand"):
        recipe_loss_fields("reg_pc_b256")


def test_batch_rows_are_compared_with_mse_at_their_batch_never_screened_for_the_recipe() -> None:
    # arm 4 sees B/64 times the recipe's samples: even the best row is no finalist (docs/study.md, the departure)
    runs = screening_runs() + [run("reg_pc_b256", 0, 0.660), run("reg_projected_mse_b256", 0, 0.679),
                               run("reg_pc_b512", 0, 0.670)]  # B = 512's MSE has not run
    chosen = selection(runs)
    assert chosen.finalists == selection(screening_runs()).finalists
    assert not any("_b256" in row.variant or "_b512" in row.variant for row in chosen.screening)
    lines = batch_table(runs).splitlines()
    assert lines[2].startswith("| 64 | 1 | 0 / 0 | 0.650 / 0.634 |")  # the reference row reg_pc_t0.1 beside the control
    assert lines[3].startswith("| 256 | 4 | 0 / 0 | 0.660 / 0.679 |") and lines[3].endswith("| 5 / 5 |")
    assert "not run" in lines[4] and "not run" in lines[5]  # a pair lacking a row is not shown half
    sentence = batch_outcome_sentence(runs)
    assert "perception coherence 0.650 → 0.660, projected MSE 0.634 → 0.679" in sentence
    assert "is behind MSE at some batches, not all (MSE minus perception coherence: -0.016, +0.019)" in sentence  # behind at 256 only
    assert sentence.endswith("B = 512 and 1,024 have not run yet.")
    with pytest.raises(ValueError, match="reg_pc_b256"):
        batch_outcome_sentence(screening_runs())  # the B = 64 pair alone says nothing about batches


def test_batch_rows_with_three_seeds_show_their_spread_and_weigh_the_gap_against_it() -> None:
    three = [run(variant, seed, recall + 0.002 * (seed - 1)) for seed in (0, 1, 2)
             for variant, recall in (("reg_pc_t0.1", 0.604), ("reg_projected_mse", 0.634),
                                     ("reg_pc_b256", 0.670), ("reg_projected_mse_b256", 0.673))]
    runs = three + [run("reg_pc_b512", 0, 0.682), run("reg_projected_mse_b512", 0, 0.696)]
    lines = batch_table(runs).splitlines()
    assert lines[3].startswith("| 256 | 4 | 0,1,2 / 0,1,2 | 0.670 ± 0.002 / 0.673 ± 0.002 |")
    assert lines[3].endswith("| 10 / 10 |")  # mean train minutes over the seeds (5, 10, 15)
    assert lines[4].startswith("| 512 | 8 | 0 / 0 | 0.682 / 0.696 |")
    sentence = batch_outcome_sentence(runs)
    assert "seeds 0–2 (mean) at B = 64, 256; seed 0 at B = 512" in sentence
    assert "(MSE minus perception coherence: +0.030, +0.003, +0.014;" in sentence
    # B = 64's gap (0.030) is beyond its seed std (0.002); B = 256's (0.003) is, narrowly: 0.003 > 0.002
    assert ("where several seeds ran, each gap is beyond the larger of the two seed stds, 0.002 at B = 64 and 0.002 at "
            "B = 256)") in sentence
    level = [r if r["variant"] != "reg_pc_b256" else run("reg_pc_b256", r["seed"], 0.672 + 0.002 * (r["seed"] - 1))
             for r in runs]
    assert "the gap is beyond the larger of the two seed stds at B = 64 only" in batch_outcome_sentence(level)

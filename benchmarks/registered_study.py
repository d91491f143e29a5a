"""The experiment registered in docs/study.md ("Registered before it runs"): its rule applied to the result files,
and its tables.

The rows are :func:`benchmarks.study.registered_variants` (``reg_*``), their runs the study's result files. The
registration fixed, before any run:

* **screening** (seed 0): every candidate, chosen on validation cosine teacher-neighbour recall@10, ties within
  :data:`TIE` broken by validation cosine 10-NN accuracy (:func:`ranked`);
* **mixtures**: the best two of candidates 1-3 (two-sided locality, top-k, sharper ranks) beside projected MSE and
  CosPress at weights 0.1 and 0.3; **teacher-neighbour batches** on the best of 1-3 and on MSE;
* **finalists**: the best three configurations in which perception coherence carries real weight (alone, or at
  weight >= 0.3 beside another term) plus both controls, at seeds 0, 1, 2, reported on test and out of domain;
* **decision**: the best finalist by validation recall is the ``minilm-wordnet-pc`` recipe; it replaces the default
  only if its validation recall beats the default's by more than the larger of the two seed standard deviations.

:func:`selection` applies these rules to whatever runs are stored, so the tables, the recipe's provenance and the
README's sentence come from the files; :func:`committed_blocks` renders docs/study.md's and README's blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.study import (
    COMMITTED_RESULTS, HEADLINE, RowSummary, known_variants, load_results, markdown_row, mean_and_std,
    registered_variants, summarise_rows,
)

TIE = 0.002  # validation recall@10 differences within this are ties, broken by validation 10-NN accuracy
RECALL = f"{HEADLINE}/cosine"
KNN = "knn_accuracy@10/cosine"
CANDIDATE_GROUPS = ("registered: two-sided locality", "registered: top-k", "registered: sharper ranks")
CONTROLS = ("reg_projected_mse", "reg_cospress_identity_ln")
REFERENCE_GROUP = "registered: reference (not a candidate)"
REAL_WEIGHT = 0.3  # perception coherence "carries real weight" at this weight or more beside another term
FINALIST_COUNT = 3
FINAL_SEEDS = (0, 1, 2)
# The default recipe's configuration among the rows: minilm-wordnet is CosPress with the identity map
DEFAULT_ROW = "reg_cospress_identity_ln"


def ranked(rows: Sequence[RowSummary]) -> list[RowSummary]:
    """``rows`` best first by the registered rule: the highest validation recall@10, except that among rows within
    :data:`TIE` of the best remaining one the highest validation 10-NN accuracy goes first."""
    remaining, order = list(rows), []
    while remaining:
        top = max(row.means[RECALL] for row in remaining)
        tied = [row for row in remaining if top - row.means[RECALL] <= TIE]
        chosen = max(tied, key=lambda row: (row.means[KNN], row.means[RECALL]))
        order.append(chosen)
        remaining.remove(chosen)
    return order


def pc_carries_real_weight(variant_name: str, benchmark: str = "text") -> bool:
    """Perception coherence alone, or beside another term at weight >= :data:`REAL_WEIGHT`."""
    variant = known_variants(benchmark)[variant_name]
    if "perception_coherence" not in variant.losses:
        return False
    if len(variant.losses) == 1:
        return True
    weights = variant.loss_weights or (1.0,) * len(variant.losses)
    return weights[variant.losses.index("perception_coherence")] >= REAL_WEIGHT


@dataclass
class Selection:
    """The registered rules applied to the stored runs."""

    screening: list[RowSummary]  # every registered row with a seed-0 run, best first (validation)
    best_candidates: list[str]  # the best two of 1-3: their mixtures and neighbour batches run next
    finalists: list[str]  # the best three PC-carrying rows (so far), then the controls
    winner: str | None  # the best finalist by validation recall over its seeds, once all have 3 seeds
    beats_default: bool | None  # whether it clears the default by more than the larger seed std


def registered_runs(output_dir: str, benchmark: str = "text") -> list[dict[str, Any]]:
    names = {variant.name for variant in registered_variants(benchmark)}
    return [result for result in load_results(output_dir, benchmark) if result["variant"] in names]


def final_summaries(results: list[dict[str, Any]], finalists: Sequence[str]) -> dict[str, dict[str, RowSummary]]:
    """Mean and std over seeds 0, 1, 2 of each finalist, by split."""
    runs = [r for r in results if r["variant"] in finalists and r["seed"] in FINAL_SEEDS]
    return {split: {row.variant: row for row in summarise_rows(runs, split)} for split in ("validation", "test", "ood")}


def selection(results: list[dict[str, Any]]) -> Selection:
    """The registration's rule on the registered text runs ``results`` (module docstring)."""
    screening = ranked(summarise_rows([r for r in results if r["seed"] == 0], "validation"))
    candidates = [row.variant for row in screening if row.group in CANDIDATE_GROUPS]
    eligible = [row.variant for row in screening
                if row.group != REFERENCE_GROUP and pc_carries_real_weight(row.variant)]
    finalists = eligible[:FINALIST_COUNT] + [control for control in CONTROLS
                                             if any(row.variant == control for row in screening)]
    winner, beats_default = None, None
    seeds = {variant: {r["seed"] for r in results if r["variant"] == variant} for variant in finalists}
    if finalists and all(set(FINAL_SEEDS) <= seeds[variant] for variant in finalists):
        full = final_summaries(results, finalists)["validation"]
        winner = ranked([full[variant] for variant in finalists if pc_carries_real_weight(variant)])[0].variant
        default = full.get(DEFAULT_ROW)
        if default is not None:
            margin = max(full[winner].stds[RECALL], default.stds[RECALL])
            beats_default = full[winner].means[RECALL] - default.means[RECALL] > margin
    return Selection(screening, candidates[:2], finalists, winner, beats_default)


# --------------------------------------------------------------------------- tables

SCREENING_COLUMNS = (
    (RECALL, "val nbr recall@10"),
    (KNN, "val 10-NN"),
    ("dissimilarity_spearman/cosine", "val Spearman"),
    ("perception_coherence/cosine", "val coherence"),
)
FINAL_COLUMNS = (
    ("test", RECALL, "nbr recall@10"),
    ("test", KNN, "10-NN"),
    ("test", "dissimilarity_spearman/cosine", "Spearman"),
    ("test", "perception_coherence/cosine", "coherence"),
    ("ood", RECALL, "OOD nbr recall@10"),
    ("ood", "dissimilarity_spearman/cosine", "OOD Spearman"),
)


def short_group(group: str) -> str:
    return group.removeprefix("registered: ")


def screening_table(chosen: Selection) -> str:
    """Every registered row's seed-0 validation figures, best first by the rule; the finalists marked."""
    lines = [markdown_row(["#", "variant", "arm", *(header for _, header in SCREENING_COLUMNS), "finalist"]),
             "|---:|---|---|" + "---:|" * len(SCREENING_COLUMNS) + "---|"]
    for position, row in enumerate(chosen.screening, 1):
        cells = [f"{row.means[key]:.3f}" for key, _ in SCREENING_COLUMNS]
        mark = "yes" if row.variant in chosen.finalists else ""
        lines.append(markdown_row([str(position), f"`{row.variant}`", short_group(row.group), *cells, mark]))
    return "\n".join(lines)


def missing_seeds(results: list[dict[str, Any]], finalists: Sequence[str]) -> list[str]:
    done = {(r["variant"], r["seed"]) for r in results}
    return [f"{variant} seed {seed}" for variant in finalists for seed in FINAL_SEEDS if (variant, seed) not in done]


def final_table(results: list[dict[str, Any]], chosen: Selection) -> str:
    """The finalists on test and out of domain, mean ± sample std over seeds 0, 1, 2; bold near each column's best."""
    missing = missing_seeds(results, chosen.finalists)
    if missing:
        raise ValueError(f"the registered finalists lack runs: {', '.join(missing)}; run them "
                         "(scripts/study.py run --benchmarks text --variants ... --seeds 0 1 2)")
    summaries = final_summaries(results, chosen.finalists)
    best = {(split, key): max(summaries[split][variant].means[key] for variant in chosen.finalists)
            for split, key, _ in FINAL_COLUMNS}
    lines = [markdown_row(["test split, 3 seeds", *(header for _, _, header in FINAL_COLUMNS)]),
             "|---|" + "---:|" * len(FINAL_COLUMNS)]
    for variant in chosen.finalists:
        note = " (winner: `minilm-wordnet-pc`)" if variant == chosen.winner else (
            " (the `minilm-wordnet` recipe)" if variant == DEFAULT_ROW else "")
        cells = [mean_and_std(summaries[split][variant], key, best[(split, key)]) for split, key, _ in FINAL_COLUMNS]
        lines.append(markdown_row([f"`{variant}`{note}", *cells]))
    return "\n".join(lines)


def vision_table(vision_results: list[dict[str, Any]], chosen: Selection) -> str:
    """The finalists' vision rows (seed 0, validation), where any were run."""
    rows = {row.variant: row for row in summarise_rows([r for r in vision_results if r["seed"] == 0], "validation")}
    shown = [variant for variant in chosen.finalists if variant in rows]
    if not shown:
        raise ValueError("no registered vision run of the finalists: scripts/study.py run --benchmarks vision "
                         f"--variants {' '.join(chosen.finalists)} --seeds 0")
    lines = [markdown_row(["vision, validation, seed 0", *(header for _, header in SCREENING_COLUMNS)]),
             "|---|" + "---:|" * len(SCREENING_COLUMNS)]
    for variant in shown:
        lines.append(markdown_row([f"`{variant}`", *(f"{rows[variant].means[key]:.3f}" for key, _ in SCREENING_COLUMNS)]))
    return "\n".join(lines)


def outcome_sentence(results: list[dict[str, Any]], chosen: Selection) -> str:
    """README's verdict, from the files: the winner against the default and projected MSE on test."""
    if chosen.winner is None:
        raise ValueError("the registered finalists do not all have seeds 0, 1, 2 yet: no outcome to state")
    test = final_summaries(results, chosen.finalists)["test"]

    def figure(variant: str) -> str:
        return f"{test[variant].means[RECALL]:.3f} ± {test[variant].stds[RECALL]:.3f}"

    winner, default, mse = chosen.winner, DEFAULT_ROW, "reg_projected_mse"

    def against(variant: str) -> str:  # beyond the larger of the two seed stds, or level
        margin = max(test[winner].stds[RECALL], test[variant].stds[RECALL])
        difference = test[winner].means[RECALL] - test[variant].means[RECALL]
        return "ahead of" if difference > margin else "behind" if difference < -margin else "level with"

    verdicts = {against(default), against(mse)}
    verdict = (f"{verdicts.pop()} both controls on test" if len(verdicts) == 1 else
               f"{against(default)} CosPress and {against(mse)} projected MSE on test")
    decision = "on validation, where the rule decides, it " + (
        "beats the default by more than the larger seed std, so it is the default now" if chosen.beats_default else
        "does not beat the default by more than the larger seed std, so `minilm-wordnet` stays the default")
    return (f"The registered experiment's best perception-coherence configuration, `{winner}` (the "
            f"`minilm-wordnet-pc` recipe), reaches test teacher-neighbour recall@10 {figure(winner)} (3 seeds), "
            f"{verdict} (only a difference beyond the larger seed std counts): CosPress with the identity map "
            f"{figure(default)}, "
            f"projected MSE {figure(mse)}; "
            f"{decision}.")


def rendered_blocks(output_dir: str) -> dict[str, str]:
    """docs/study.md's ``registered_screening``, ``registered_test``, ``registered_vision`` and README's
    ``registered_outcome``, from the registered runs in ``output_dir``."""
    results = registered_runs(output_dir, "text")
    chosen = selection(results)
    return {"registered_screening": screening_table(chosen),
            "registered_test": final_table(results, chosen),
            "registered_vision": vision_table(registered_runs(output_dir, "vision"), chosen),
            "registered_outcome": outcome_sentence(results, chosen)}


def committed_blocks() -> dict[str, str]:
    """:func:`rendered_blocks` of the committed result files."""
    return rendered_blocks(str(COMMITTED_RESULTS))


def recipe_loss_fields(variant_name: str) -> dict[str, Any]:
    """The recipe fields of a registered text row that differ from ``minilm-wordnet``: its losses, their weights
    and options (the ``minilm-wordnet-pc`` recipe is ``minilm-wordnet`` with these)."""
    variant = known_variants("text")[variant_name]
    if variant.neighbour_fraction is not None or variant.overrides.get("per_device_train_batch_size"):
        raise ValueError(f"{variant_name} needs a sampler or batch the recipe does not set: write its recipe by hand")
    fields: dict[str, Any] = {"losses": list(variant.losses),
                              "loss_kwargs": {name: dict(options) for name, options in variant.loss_kwargs.items()}}
    if variant.loss_weights is not None:
        fields["loss_weights"] = list(variant.loss_weights)
    return fields

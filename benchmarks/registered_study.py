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

One departure, written after arm 4's first rows came in and recorded in docs/study.md: arm 4 (**batch at equal
steps**, :data:`BATCH_GROUP`) trains 250 steps of B, so its rows see B/64 times the recipe's samples. The recipe must
keep ``minilm-wordnet``'s data and budget, and the default was never run at those batches, so these rows are
neither screened for the recipe nor finalists: :func:`batch_table` sets each perception-coherence row beside MSE
at the same batch, the comparison the arm was registered for.

:func:`selection` applies these rules to whatever runs are stored, so the tables, the recipe's provenance and the
README's sentence come from the files; :func:`committed_blocks` renders docs/study.md's and README's blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.study import (
    COMMITTED_RESULTS, HEADLINE, REGISTERED_BATCHES, TEXT_BATCH, RowSummary, known_variants, load_results,
    format_cell, markdown_row, mean_and_std, registered_variants, summarise_rows,
)

TIE = 0.002  # validation recall@10 differences within this are ties, broken by validation 10-NN accuracy
RECALL = f"{HEADLINE}/cosine"
KNN = "knn_accuracy@10/cosine"
CANDIDATE_GROUPS = ("registered: two-sided locality", "registered: top-k", "registered: sharper ranks")
BATCH_GROUP = "registered: batch at equal steps"  # arm 4: B/64 times the recipe's samples (module docstring)
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

    screening: list[RowSummary]  # every registered row at the recipe's budget with a seed-0 run, best first
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
    screening = ranked(summarise_rows([r for r in results if r["seed"] == 0 and r["group"] != BATCH_GROUP],
                                      "validation"))
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


BATCH_COLUMNS = (  # (split, metric, header): arm 4's table, each cell "perception coherence / MSE"
    ("validation", RECALL, "val nbr recall@10"),
    ("validation", KNN, "val 10-NN"),
    ("test", RECALL, "test nbr recall@10"),
    ("test", KNN, "test 10-NN"),
    ("ood", RECALL, "OOD nbr recall@10"),
)


def batch_pairs() -> list[tuple[int, str, str]]:
    """Arm 4's ``(B, perception-coherence row, MSE row)``, the recipe's batch first: at B = 64 the reference row
    ``reg_pc_t0.1`` (the same loss and options as ``reg_pc_b{B}``) and the control ``reg_projected_mse``."""
    return [(TEXT_BATCH, "reg_pc_t0.1", "reg_projected_mse")] + [
        (batch, f"reg_pc_b{batch}", f"reg_projected_mse_b{batch}") for batch in REGISTERED_BATCHES]


def passes_over_training_set(result: dict[str, Any]) -> float:
    """How many times a run's steps pass over its training glosses: steps x batch / training samples."""
    recipe, overrides = result["settings"]["recipe"], result["settings"]["variant"]["overrides"]
    batch = overrides.get("per_device_train_batch_size", recipe["per_device_train_batch_size"])
    return overrides["max_steps"] * batch / recipe["max_train_samples"]


def arm_four_summaries(results: list[dict[str, Any]]) -> dict[str, dict[str, RowSummary]]:
    """Arm 4's rows summarised over every seed stored: ``{split: {variant: RowSummary}}``."""
    names = {name for _, pc, mse in batch_pairs() for name in (pc, mse)}
    rows = [r for r in results if r["variant"] in names]
    return {split: {summary.variant: summary for summary in summarise_rows(rows, split)}
            for split in ("validation", "test", "ood")}


def seeds_text(seeds: Sequence[int]) -> str:
    """``seed 0`` or ``seeds 0-2`` (consecutive) or ``seeds 0, 2``."""
    seeds = sorted(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def batch_table(results: list[dict[str, Any]]) -> str:
    """Arm 4: perception coherence beside projected MSE at each batch, 250 steps each, mean ± std over the seeds run
    (the seeds column; one seed: the value alone); a batch whose pair has not run reads "not run"."""
    summaries = arm_four_summaries(results)
    validation = summaries["validation"]
    lines = [markdown_row(["B (250 steps)", "passes over the glosses", "seeds: PC / MSE",
                           *(f"{header}: PC / MSE" for _, _, header in BATCH_COLUMNS), "train min: PC / MSE"]),
             "|---:|---:|---:|" + "---:|" * (len(BATCH_COLUMNS) + 1)]
    for batch, pc, mse in batch_pairs():
        if pc not in validation or mse not in validation:
            lines.append(markdown_row([str(batch), "", "", *(["not run"] * (len(BATCH_COLUMNS) + 1))]))
            continue
        passes = passes_over_training_set(next(r for r in results if r["variant"] == pc))
        seeds = f"{','.join(map(str, validation[pc].seeds))} / {','.join(map(str, validation[mse].seeds))}"
        cells = [f"{format_cell(summaries[split][pc], key, None)} / {format_cell(summaries[split][mse], key, None)}"
                 for split, key, _ in BATCH_COLUMNS]
        minutes = f"{validation[pc].train_seconds / 60:.0f} / {validation[mse].train_seconds / 60:.0f}"
        lines.append(markdown_row([str(batch), f"{passes:g}", seeds, *cells, minutes]))
    return "\n".join(lines)


def batch_outcome_sentence(results: list[dict[str, Any]]) -> str:
    """README's sentence on arm 4, from the files: validation recall of each loss by batch (mean over the seeds
    run), the gap, and at the batches with several seeds whether the gap is beyond the larger seed std."""
    validation = arm_four_summaries(results)["validation"]
    done = [(batch, pc, mse) for batch, pc, mse in batch_pairs() if pc in validation and mse in validation]
    if len(done) < 2:
        raise ValueError("arm 4 needs the B = 64 pair and at least one larger batch at seed 0: scripts/study.py run "
                         "--benchmarks text --seeds 0 --variants reg_pc_b256 reg_projected_mse_b256")
    pending = [f"{batch:,}" for batch, pc, mse in batch_pairs() if (batch, pc, mse) not in done]

    def recall(variant: str) -> float:
        return validation[variant].means[RECALL]

    def series(column: int) -> list[float]:
        return [recall(row[column]) for row in done]

    def trend(values: list[float]) -> str:
        return " → ".join(f"{value:.3f}" for value in values)

    by_seeds: dict[str, list[str]] = {}  # which seeds each batch's figures average, in batch order
    for batch, pc, mse in done:
        pc_seeds, mse_seeds = validation[pc].seeds, validation[mse].seeds
        label = seeds_text(pc_seeds) if pc_seeds == mse_seeds else f"{seeds_text(pc_seeds)} / {seeds_text(mse_seeds)}"
        if len(pc_seeds) > 1 and len(mse_seeds) > 1:
            label += " (mean)"
        by_seeds.setdefault(label, []).append(f"{batch:,}")
    seeds = "; ".join(f"{label} at B = {', '.join(batches)}" for label, batches in by_seeds.items())
    rises = all(b > a for values in (series(1), series(2)) for a, b in zip(values, values[1:]))
    gaps = [recall(mse) - recall(pc) for _, pc, mse in done]
    batches = ", ".join(f"{batch:,}" for batch, _, _ in done)
    comparison = ("perception coherence stays behind MSE at every batch run" if all(gap > 0 for gap in gaps) else
                  "perception coherence is ahead of MSE at every batch run" if all(gap < 0 for gap in gaps) else
                  "perception coherence is behind MSE at some batches, not all")
    seeded = [(batch, pc, mse) for batch, pc, mse in done
              if len(validation[pc].seeds) > 1 and len(validation[mse].seeds) > 1]
    beyond = ""
    if seeded:
        margins = {batch: max(validation[pc].stds[RECALL], validation[mse].stds[RECALL]) for batch, pc, mse in seeded}
        outside = [batch for batch, pc, mse in seeded if abs(recall(mse) - recall(pc)) > margins[batch]]
        where = " and ".join(f"{margins[batch]:.3f} at B = {batch:,}" for batch in margins)
        beyond = ("; where several seeds ran, " + (
            "each gap is beyond the larger of the two seed stds" if len(outside) == len(seeded) else
            "no gap is beyond the larger of the two seed stds" if not outside else
            f"the gap is beyond the larger of the two seed stds at B = {', '.join(f'{b:,}' for b in outside)} only")
            + f", {where}")
    return (f"Larger batches at the same 250 steps (arm 4; validation teacher-neighbour recall@10 at B = {batches}; "
            f"{seeds}): the recall of both losses "
            f"{'rises with the batch' if rises else 'does not rise steadily'} "
            f"— perception coherence {trend(series(1))}, projected MSE {trend(series(2))} — and {comparison} (MSE "
            f"minus perception coherence: {', '.join(f'{gap:+.3f}' for gap in gaps)}{beyond}). These rows see B/64 "
            "times the recipe's samples, so they are a finding about budget, not candidates for the recipe"
            + (f"; B = {' and '.join(pending)} {'has' if len(pending) == 1 else 'have'} not run yet." if pending
               else "."))


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
    """docs/study.md's ``registered_screening``, ``registered_batch``, ``registered_test``, ``registered_vision`` and
    README's ``registered_outcome`` and ``registered_batch_outcome``, from the registered runs in ``output_dir``."""
    results = registered_runs(output_dir, "text")
    chosen = selection(results)
    return {"registered_screening": screening_table(chosen),
            "registered_batch": batch_table(results),
            "registered_batch_outcome": batch_outcome_sentence(results),
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

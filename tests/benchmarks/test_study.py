"""The study's grid and bookkeeping (benchmarks.study): what each variant trains, that a recipe's loss options never
leak into a variant, equal epochs across batch sizes, resume/sharding of the stored runs, when a stored run is run
again (settings, versions, corpus; never the commit alone), and a report of the current grid only."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.study import (
    StudyOptions, corpus_description, known_variants, measurement_spec, pending_runs, registered_screening_names, registered_variants,
    result_path, run_settings, stored_result, study_specs, study_variants, variant_config, write_study_report,
)
from hf_pcoh.artifacts import write_json
from hf_pcoh.config import DistillationConfig
from hf_pcoh.recipes import read_recipe

COMMITTED = REPOSITORY_ROOT / "benchmarks" / "results" / "study"


def provenance(specs, benchmark: str = "vision", **changes) -> dict:
    """A run's provenance as :func:`benchmarks.study.run_provenance` records it, with ``changes``."""
    recorded = {"device": "cpu", "gpu": None, "cpu": "a CPU, 2 cores", "torch": "2.13.0+cpu", "transformers": "5.25.0",
                "accelerate": "1.16.0", "datasets": "5.2.0", "hf_pcoh": "0.1.0", "python": "3.11.7",
                "git_sha": "0" * 40, "git_dirty": False, "corpus": corpus_description(specs[benchmark], benchmark)}
    return {**recorded, **changes}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return study_specs(str(tmp_path_factory.mktemp("teachers")))  # no teacher is trained to build the specs


def test_the_grid_covers_the_issue_and_names_each_variant_once() -> None:
    for benchmark in ("text", "vision"):
        names = [variant.name for variant in study_variants(benchmark)]
        assert len(names) == len(set(names))
        for needed in ("pc_euc_t0.03", "pc_cos_t1", "pc_cos_t0.1_median", "pc_cos_t0.1_b256", "pc_cos_t0.1_b1024",
                       "pc_cos_t0.1_b1024_m128", "pc_cos_t0.1_b1024_sorted", "pc_cos_t0.1_local0.05",
                       "pc_cos_t0.1+procrustes0.1", "pc_cos_t0.1+projected_mse1", "gram", "cka", "rkd_distance",
                       "cospress", "cospress_identity", "no_teacher_ce", "narrow_pc_cos_t0.1"):
            assert needed in names, (benchmark, needed)
    assert "sentence_transformers_mse" in [variant.name for variant in study_variants("text")]


def test_variants_get_their_own_loss_options_not_the_recipes(specs, tmp_path) -> None:
    grid = {variant.name: variant for variant in study_variants("text")}
    assert "loss_kwargs" not in specs["text"].recipe  # the minilm-wordnet recipe sets CosPress's map_init
    plain = variant_config(specs["text"], grid["cospress"], 0, str(tmp_path / "a"), str(tmp_path / "cache"))
    assert plain.loss_kwargs.get("cospress", {}).get("map_init", "random") == "random"  # the paper's recipe
    identity = variant_config(specs["text"], grid["cospress_identity"], 0, str(tmp_path / "b"), str(tmp_path / "cache"))
    assert identity.loss_kwargs["cospress"] == {"map_init": "identity", "map_layer_norm": False}
    sorted_rank = variant_config(specs["text"], grid["pc_cos_t0.1_b1024_sorted"], 0, str(tmp_path / "c"), str(tmp_path / "c"))
    assert sorted_rank.loss_kwargs["perception_coherence"]["soft_rank"] == "sorted"


def test_larger_batches_keep_the_epochs_and_scale_the_learning_rate(specs) -> None:
    grid = {variant.name: variant for variant in study_variants("vision")}
    base, large = grid["pc_cos_t0.1"].overrides, grid["pc_cos_t0.1_b1024"].overrides
    assert large["per_device_train_batch_size"] == 1024 and large["max_steps"] == 600 * 128 // 1024
    assert large["learning_rate"] == pytest.approx(1e-3 * (1024 / 128) ** 0.5)
    assert base == {}  # the base row trains as the spec says: 600 steps of 128
    assert specs["vision"].recipe["max_steps"] == 600 and specs["vision"].recipe["per_device_train_batch_size"] == 128


def test_stored_runs_are_resumed_and_shards_split_the_pending_ones(specs, tmp_path) -> None:
    options = StudyOptions(benchmarks=("vision",), seeds=(0,), variants=["gram", "cka", "procrustes"],
                           output_dir=str(tmp_path))
    everything = pending_runs(options, specs)
    assert [variant.name for variant, _ in everything] == ["gram", "cka", "procrustes"]
    gram = everything[0][0]
    (tmp_path / "vision").mkdir()
    current = {"vision": provenance(specs)}
    write_json(result_path(str(tmp_path), gram, 0), {"settings": run_settings(specs["vision"], gram, 0),
                                                     "provenance": current["vision"]})
    assert stored_result(result_path(str(tmp_path), gram, 0), run_settings(specs["vision"], gram, 0),
                         current["vision"]) is not None
    remaining = pending_runs(options, specs, current)
    assert [variant.name for variant, _ in remaining] == ["cka", "procrustes"]
    halves = [pending_runs(StudyOptions(**{**options.__dict__, "shard": (index, 2)}), specs, current)
              for index in (0, 1)]
    assert sorted(variant.name for half in halves for variant, _ in half) == ["cka", "procrustes"]
    assert all(len(half) == 1 for half in halves)
    changed = run_settings(specs["vision"], gram, 1)  # another seed: not the stored run
    assert stored_result(result_path(str(tmp_path), gram, 0), changed, current["vision"]) is None


@pytest.mark.parametrize(("change", "reuse_any_version", "reused"), [
    ("nothing", False, True),
    ("the commit and dirty flag only", False, True),
    ("the settings", False, False),
    ("the settings", True, False),
    ("a library version", False, False),
    ("the Python version", False, False),
    ("the corpus", False, False),
    ("a library version", True, True),
    ("the corpus", True, True),
    ("no provenance: a file written before it was recorded", False, False),
    ("no provenance: a file written before it was recorded", True, True),
])
def test_a_stored_run_is_run_again_when_its_settings_versions_or_corpus_differ(specs, tmp_path, change: str,
                                                                             reuse_any_version: bool,
                                                                             reused: bool) -> None:
    variant = {variant.name: variant for variant in study_variants("vision")}["gram"]
    settings, current = run_settings(specs["vision"], variant, 0), provenance(specs)
    stored = {"settings": settings, "provenance": current}
    if change == "the commit and dirty flag only":
        stored["provenance"] = {**current, "git_sha": "1" * 40, "git_dirty": True}
    elif change == "the settings":
        stored["settings"] = run_settings(specs["vision"], variant, 1)
    elif change == "a library version":
        stored["provenance"] = {**current, "transformers": "5.24.0"}
    elif change == "the Python version":
        stored["provenance"] = {**current, "python": "3.10.12"}
    elif change == "the corpus":
        stored["provenance"] = {**current, "corpus": {**current["corpus"], "train_rows": 10000}}
    elif change.startswith("no provenance"):
        del stored["provenance"]
    path = result_path(str(tmp_path), variant, 0)
    (tmp_path / "vision").mkdir()
    write_json(path, stored)
    assert (stored_result(path, settings, current, reuse_any_version) is not None) == reused
    options = StudyOptions(benchmarks=("vision",), seeds=(0,), variants=["gram"], output_dir=str(tmp_path),
                           reuse_any_version=reuse_any_version)
    assert [v.name for v, _ in pending_runs(options, specs, {"vision": current})] == ([] if reused else ["gram"])


def test_the_corpus_names_the_data_and_the_rows_each_benchmark_reads(specs) -> None:
    text, vision = corpus_description(specs["text"], "text"), corpus_description(specs["vision"], "vision")
    assert (text["dataset_name"], text["train_rows"]) == ("wordnet_glosses", 16000)
    assert text["held_out_rows"] == {"test": 2000, "validation": 2000} and text["ood"]["rows"] == 2000
    assert (vision["dataset_name"], vision["train_rows"]) == ("fashion_mnist", 20000)
    assert vision["held_out_rows"] == {"test": 3000, "validation": 3000} and vision["ood"]["rows"] == 1797


def stored_run(variant: str, seed: int, recall: float) -> dict:
    metrics = {"teacher_neighbour_recall@10/cosine": recall, "dissimilarity_spearman/cosine": 0.8}
    return {"benchmark": "vision", "variant": variant, "group": "grid", "seed": seed, "train_seconds": 10.0,
            "metrics": {"validation": metrics, "test": metrics, "ood": metrics}}


def test_the_report_shows_the_current_grid_and_names_the_other_stored_variants(tmp_path) -> None:
    readme = (REPOSITORY_ROOT / "README.md").read_text(encoding="utf-8")
    (tmp_path / "vision").mkdir()
    for variant in ("pc_cos_t0.1", "pc_retired_option", "gram_old_name"):
        for seed in (0, 1, 2):
            write_json(tmp_path / "vision" / f"{variant}__seed{seed}.json", stored_run(variant, seed, 0.3 + seed / 100))
    table_path = write_study_report(str(tmp_path), ["vision"])["vision"]
    with open(table_path, encoding="utf-8") as stream:
        report = stream.read()
    assert report.count("| `pc_cos_t0.1` |") == 2  # the validation row and the test row
    assert "`pc_retired_option`" not in report and "`gram_old_name`" not in report
    assert "\nnot in the current grid: gram_old_name, pc_retired_option\n" in report
    # a report written elsewhere than the committed folder leaves README and docs alone
    assert (REPOSITORY_ROOT / "README.md").read_text(encoding="utf-8") == readme


def test_the_report_renders_the_committed_tables_again_from_files_without_provenance(tmp_path) -> None:
    for benchmark in ("text", "vision"):
        shutil.copytree(COMMITTED / benchmark, tmp_path / benchmark)
    files = write_study_report(str(tmp_path), ["text", "vision"])
    for benchmark, path in files.items():
        with open(path, encoding="utf-8") as rendered:
            assert rendered.read() == (COMMITTED / f"study_{benchmark}.md").read_text(encoding="utf-8"), benchmark


# ---- the registered experiment (docs/study.md, "Registered before it runs") ---------------------------------
def test_the_registered_rows_are_the_registrations_candidates_at_its_setting(specs, tmp_path) -> None:
    rows = {variant.name: variant for variant in registered_variants("text")}
    assert len(rows) == len(registered_variants("text"))
    assert not set(rows) & {variant.name for variant in study_variants("text")}  # the grid's names untouched
    assert registered_screening_names() == [
        "reg_pc_two_sided0.1", "reg_pc_two_sided0.3", "reg_pc_top10", "reg_pc_top30", "reg_pc_t0.03", "reg_pc_t0.05",
        "reg_pc_t0.05_hard", "reg_pc_b256", "reg_projected_mse_b256", "reg_pc_b512", "reg_projected_mse_b512",
        "reg_pc_b1024", "reg_projected_mse_b1024", "reg_projected_mse", "reg_cospress_identity_ln"]
    for variant in rows.values():  # the recipe as it ships: 64 tokens, 250 steps whatever the batch
        config = variant_config(specs["text"], variant, 0, str(tmp_path / variant.name), str(tmp_path / "cache"))
        assert (config.max_length, config.max_steps, config.warmup_steps) == (64, 250, 0.05), variant.name
        assert config.learning_rate == pytest.approx(1e-4 * (config.per_device_train_batch_size / 64) ** 0.5)
        assert config.max_train_samples == 16000 and config.teacher_cache == str(tmp_path / "cache")
    assert variant_config(specs["text"], rows["reg_pc_b1024"], 0, str(tmp_path / "b"), "c").per_device_train_batch_size == 1024
    options = rows["reg_pc_two_sided0.1"].loss_kwargs["perception_coherence"]
    # lambda' = 0.1 per integer rank at B = 64 is locality 1 / (62 * 0.1)
    assert options == {"temperature": 0.1, "dissimilarity": "cosine", "soft_rank": "sorted",
                       "locality": pytest.approx(1 / 6.2), "locality_sides": "both"}
    assert rows["reg_pc_top30"].loss_kwargs["perception_coherence"]["top_k"] == 30
    assert rows["reg_pc_t0.05_hard"].loss_kwargs["perception_coherence"]["hard_teacher_ranks"] is True
    mixture = variant_config(specs["text"], rows["reg_cospress_identity_ln+pc_top10_w0.3"], 0, str(tmp_path / "m"), "c")
    assert mixture.losses == ["cospress", "perception_coherence"] and mixture.loss_weights == [1.0, 0.3]
    assert mixture.loss_kwargs["cospress"] == {"map_init": "identity"}
    assert mixture.loss_kwargs["perception_coherence"]["top_k"] == 10
    # arm 5: the sampler's fraction is the variant's, and it enters the settings only where it is set
    neighbours = rows["reg_pc_top10_nbr0.5"]
    assert neighbours.neighbour_fraction == 0.5 and rows["reg_projected_mse_nbr0.25"].losses == ("projected_mse",)
    assert neighbours.loss_kwargs == rows["reg_pc_top10"].loss_kwargs
    assert run_settings(specs["text"], neighbours, 0)["variant"]["neighbour_fraction"] == 0.5
    assert "neighbour_fraction" not in run_settings(specs["text"], rows["reg_pc_top10"], 0)["variant"]


def test_the_registered_vision_check_has_the_text_rows_at_the_vision_setting(specs, tmp_path) -> None:
    text = {variant.name: variant for variant in registered_variants("text")}
    vision = {variant.name: variant for variant in registered_variants("vision")}
    # every candidate, control and mixture has its vision row; batches and neighbour batches do not
    without = ("registered: batch at equal steps", "registered: teacher-neighbour batches",
               "registered: reference (not a candidate)")
    assert set(vision) == {name for name, variant in text.items() if variant.group not in without}
    config = variant_config(specs["vision"], vision["reg_pc_top10"], 0, str(tmp_path / "v"), str(tmp_path / "c"))
    assert (config.max_steps, config.per_device_train_batch_size) == (600, 128)
    assert vision["reg_pc_top10"].loss_kwargs == text["reg_pc_top10"].loss_kwargs
    # two-sided locality keeps its decay per rank: locality from B = 128
    assert vision["reg_pc_two_sided0.1"].loss_kwargs["perception_coherence"]["locality"] == pytest.approx(1 / 12.6)
    assert vision["reg_cospress_identity_ln"].loss_kwargs == {}  # the narrower student: the learned map


def test_registered_rows_run_by_name_only_and_are_measured_at_their_own_max_length(specs, tmp_path) -> None:
    everything = pending_runs(StudyOptions(benchmarks=("text",), output_dir=str(tmp_path), reuse_any_version=True), specs)
    assert not any(variant.name.startswith("reg_") for variant, _ in everything)
    named = pending_runs(StudyOptions(benchmarks=("text",), variants=registered_screening_names(), output_dir=str(tmp_path),
                                      reuse_any_version=True), specs)
    assert [variant.name for variant, _ in named] == registered_screening_names()
    row = named[0][0]
    assert measurement_spec(specs["text"], row).recipe["max_length"] == 64
    assert specs["text"].recipe["max_length"] == 32  # the grid's rows are measured as before
    grid_row = {variant.name: variant for variant in study_variants("text")}["pc_cos_t0.1"]
    assert measurement_spec(specs["text"], grid_row) is specs["text"]


def test_the_report_shows_registered_runs_in_a_table_of_their_own(tmp_path) -> None:
    (tmp_path / "text").mkdir()
    for variant in ("pc_cos_t0.1", "reg_pc_top10", "reg_projected_mse"):
        write_json(tmp_path / "text" / f"{variant}__seed0.json", {**stored_run(variant, 0, 0.5), "benchmark": "text"})
    with open(write_study_report(str(tmp_path), ["text"])["text"], encoding="utf-8") as stream:
        report = stream.read()
    grid, registered = report.split("## The registered experiment")
    assert "| `pc_cos_t0.1` |" in grid and "reg_" not in grid  # neither in the grid's tables nor "not in the grid"
    assert "| `reg_pc_top10` |" in registered and "| `reg_projected_mse` |" in registered


# Recipe fields that say where a run writes, logs and saves, or which folder holds the teacher — not what is trained.
NOT_TRAINING = ("output_dir", "logging_steps", "save_steps", "save_total_limit", "seed", "teacher_model_name_or_path",
                "teacher_cache")


@pytest.mark.parametrize("recipe, benchmark, variant", [
    ("fashion-mnist", "vision", "pc_cos_t0.1+procrustes1"),  # the grid's vision winner
    ("minilm-wordnet", "text", "reg_cospress_identity_ln"),  # the registered control at the recipe's setting
])
def test_each_recipe_is_a_studied_configuration(specs, tmp_path, recipe, benchmark, variant) -> None:
    """README says the recipes are configurations the study trained: their training fields equal the study row's."""
    studied = variant_config(specs[benchmark], known_variants(benchmark)[variant], 0, str(tmp_path / "run"), "cache")
    shipped = DistillationConfig(**{**read_recipe(recipe), "output_dir": str(tmp_path / "recipe")})
    studied_steps = studied.max_steps if studied.max_steps > 0 else None
    shipped_steps = shipped.max_steps if shipped.max_steps > 0 else None
    if studied_steps is None or shipped_steps is None:  # one epoch of the same rows is the same number of steps
        rows = min(shipped.max_train_samples, studied.max_train_samples)
        epoch_steps = rows // shipped.per_device_train_batch_size
        studied_steps = studied_steps or epoch_steps * int(studied.num_train_epochs)
        shipped_steps = shipped_steps or epoch_steps * int(shipped.num_train_epochs)
    assert shipped_steps == studied_steps
    for name in read_recipe(recipe):
        if name in NOT_TRAINING or name in ("max_steps", "num_train_epochs"):
            continue
        assert getattr(shipped, name) == getattr(studied, name), f"{recipe}: {name}"

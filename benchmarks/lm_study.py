"""The causal-LM study: does a hidden-state geometry loss help a language-model student beyond CE and logit KD?

The setting of the Procrustes/Gram paper (arXiv 2509.25253) at the scale of this machine: the ``opt-lm`` recipe's
4-layer OPT teacher (trained here on WordNet glosses, ``outputs/opt-wordnet-teacher``) into its 2-layer OPT
student, every run at one budget (:data:`STEPS` optimizer steps of :data:`BATCH` glosses, ``max_length``
:data:`MAX_LENGTH`, the recipe's learning rate), only the objective differing:

* ``ce``: next-token cross-entropy alone (``logit_kd_weight`` 0; the library needs a feature loss, so Procrustes is
  named with weight 0: it is logged, it sends no gradient);
* ``ce_kd``: CE + logit KD over the vocabulary (forward KL, temperature 2: the recipe's);
* ``ce_kd_<loss>``: CE + KD + one geometry loss on the last layer's states: Procrustes, Gram, CKA and projected MSE
  on the tokens (``pooling: none``, padding masked), perception coherence on one vector per gloss (``pooling:
  last_token``, the state that has read the whole gloss: it compares points of a batch, not tokens).

Selection on validation: at seed 0 each geometry arm is trained with weight 0.1 and 1.0 (:data:`SELECTION_WEIGHTS`),
and the weight with the lower validation student perplexity is kept; seeds 1 and 2 are then run for the chosen
weight of every arm (``ce`` and ``ce_kd`` have nothing to choose). Figures are reported on test and out of domain.

Held-out sets, never trained on by student or teacher (the teacher trained on the train split):

* ``test``: rows 0-499 of WordNet's test split shuffled with :data:`EVALUATION_SEED` (the ``opt-lm`` run's
  evaluation sample);
* ``validation``: rows 500-999 of the same shuffle (settings are chosen here);
* ``ood``: 500 one-line summaries of the Python standard library's docstrings
  (:func:`benchmarks.study.python_docstring_summaries`).

Per split: student perplexity, KL(teacher || student) per token, next-token top-1 agreement (and the teacher's
perplexity); greedy continuations (exact match, ROUGE-L) on the first :data:`GENERATION_TEXTS` test glosses only.

Each run writes ``OUTPUT_DIR/lm/<arm>__w<weight>__seed<k>.json`` as it ends (``w0`` for ``ce`` and ``ce_kd``), so a
stopped study resumes. A stored run is reused when its ``settings`` equal the current ones: the training fields, the
evaluation sizes, the teacher's weights (SHA-256), the held-out texts (SHA-256) and the versions of torch,
transformers, accelerate, datasets, hf_pcoh and Python. The git commit and a digest of the library's sources are
recorded (``provenance``) but not compared: a commit that changes neither the library's version nor these settings
keeps the runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from benchmarks.provenance import REPOSITORY_ROOT, describe_machine
from benchmarks.quality import EVALUATION_SEED, RUN_OVERRIDES, remove_weights
from benchmarks.rendered_tables import render_into_file
from benchmarks.study import load_results, python_docstring_summaries
from hf_pcoh.artifacts import write_json
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.evaluation.language_model import evaluate_language_models, next_token_agreement, tokenise_texts
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.recipes import read_recipe

logger = logging.getLogger(__name__)

RECIPE = "opt-lm"
STEPS = 80
BATCH = 32
MAX_LENGTH = 64
GEOMETRY_LOSSES = ("procrustes", "gram", "cka", "projected_mse", "perception_coherence")
POOLED_LOSSES = frozenset({"perception_coherence"})  # compare points of a batch: one vector per gloss
SELECTION_WEIGHTS = (0.1, 1.0)
SPLITS = ("validation", "test", "ood")
HELD_OUT_SIZE = 500  # texts per split: about 8,000 next-token positions, 7-8 s of evaluation each on one core
GENERATION_TEXTS = 50
MAX_NEW_TOKENS = 16
BENCHMARK = "lm"
REPORT_FILE = "benchmarks/results/study_lm.md"
DOCUMENTS = ("README.md", "docs/study.md")


# --------------------------------------------------------------------------- what is run


@dataclass(frozen=True)
class Arm:
    """One objective: CE, optionally logit KD, optionally one geometry loss."""

    name: str
    logit_kd: bool
    geometry_loss: str | None = None

    @property
    def weights(self) -> tuple[float, ...]:
        """The geometry weights tried at seed 0 (0 alone: nothing to choose)."""
        return SELECTION_WEIGHTS if self.geometry_loss else (0.0,)


def lm_arms() -> list[Arm]:
    return [Arm("ce", logit_kd=False), Arm("ce_kd", logit_kd=True),
            *(Arm(f"ce_kd_{loss}", logit_kd=True, geometry_loss=loss) for loss in GEOMETRY_LOSSES)]


def arm_fields(arm: Arm, weight: float) -> dict[str, Any]:
    """The DistillationConfig fields that make ``arm`` at geometry weight ``weight``."""
    loss = arm.geometry_loss or "procrustes"  # CE / CE + KD: a feature loss is required; weight 0 sends no gradient
    return {"losses": [loss], "loss_weights": [float(weight) if arm.geometry_loss else 0.0],
            "loss_kwargs": {}, "ce_weight": 1.0, "logit_kd_weight": 1.0 if arm.logit_kd else 0.0,
            "pooling": "last_token" if loss in POOLED_LOSSES else "none"}


def training_fields(arm: Arm, weight: float) -> dict[str, Any]:
    """The recipe at the study's budget, the run overrides (no saving, no evaluation), then the arm."""
    fields = read_recipe(RECIPE)
    for name in ("output_dir", "seed", "save_steps", "save_total_limit"):
        fields.pop(name, None)
    fields.update(max_steps=STEPS, per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                  max_train_samples=STEPS * BATCH, num_train_epochs=1, logging_steps=20)
    fields.update(RUN_OVERRIDES)
    fields.update(arm_fields(arm, weight))
    return fields


def teacher_path() -> str:
    path = read_recipe(RECIPE)["teacher_model_name_or_path"]
    return path if os.path.isabs(path) else str(REPOSITORY_ROOT / path)


def run_config(arm: Arm, weight: float, seed: int, run_dir: str) -> DistillationConfig:
    fields = training_fields(arm, weight)
    fields["teacher_model_name_or_path"] = teacher_path()
    return DistillationConfig(output_dir=run_dir, seed=seed, **fields)


# --------------------------------------------------------------------------- where it is measured


def held_out_texts() -> dict[str, list[str]]:
    """``{split: texts}``: validation and test from WordNet's shuffled test split, ood from Python's docstrings."""
    glosses = load_splits("wordnet_glosses")["test"].shuffle(seed=EVALUATION_SEED)
    return {"validation": list(glosses.select(range(HELD_OUT_SIZE, 2 * HELD_OUT_SIZE))["text"]),
            "test": list(glosses.select(range(HELD_OUT_SIZE))["text"]),
            "ood": python_docstring_summaries(HELD_OUT_SIZE)}


def sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_texts(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def source_sha256() -> str:
    """One digest of the library's Python sources and this module: which code a run used, even uncommitted."""
    digest = hashlib.sha256()
    for path in sorted([*(REPOSITORY_ROOT / "hf_pcoh").rglob("*.py"), REPOSITORY_ROOT / "benchmarks" / "lm_study.py"]):
        digest.update(str(path.relative_to(REPOSITORY_ROOT)).encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    from hf_pcoh.version import __version__ as hf_pcoh_version

    return {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "hf_pcoh": hf_pcoh_version, "python": platform.python_version()}


def measure(teacher: torch.nn.Module, student: torch.nn.Module, tokenizer: Any,
            texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """``{split: metrics}``: next-token figures on every split, greedy continuations on the test split's first
    :data:`GENERATION_TEXTS` glosses."""
    teacher.eval()
    student.eval()
    metrics: dict[str, dict[str, float]] = {}
    for split, split_texts in texts.items():
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        metrics[split] = next_token_agreement(teacher, student, tokenise_texts(tokenizer, split_texts, MAX_LENGTH),
                                              pad_token_id=pad_token_id)
    greedy = evaluate_language_models(teacher, student, tokenizer, texts["test"][:GENERATION_TEXTS],
                                      max_length=MAX_LENGTH, max_new_tokens=MAX_NEW_TOKENS)
    metrics["test"].update(greedy_exact_match=greedy["greedy_exact_match"], greedy_rouge_l=greedy["greedy_rouge_l"],
                           greedy_texts=float(GENERATION_TEXTS))
    return metrics


# --------------------------------------------------------------------------- running and resuming


@dataclass
class StudyContext:
    """What every run shares: the held-out texts and the fingerprints a stored run is compared with."""

    texts: dict[str, list[str]]
    teacher_sha256: str
    versions: dict[str, str]

    @classmethod
    def build(cls) -> StudyContext:
        return cls(held_out_texts(), sha256_of_file(os.path.join(teacher_path(), "model.safetensors")),
                   library_versions())


def run_settings(arm: Arm, weight: float, seed: int, context: StudyContext) -> dict[str, Any]:
    """Everything a run's figures depend on; a stored run is reused only when these agree."""
    training = {key: value for key, value in training_fields(arm, weight).items() if key != "teacher_model_name_or_path"}
    return json.loads(json.dumps({
        "arm": arm.name, "geometry_loss": arm.geometry_loss, "weight": weight, "seed": seed,
        "training": training, "teacher_sha256": context.teacher_sha256,
        "evaluation": {"held_out_size": HELD_OUT_SIZE, "max_length": MAX_LENGTH, "evaluation_seed": EVALUATION_SEED,
                       "generation_texts": GENERATION_TEXTS, "max_new_tokens": MAX_NEW_TOKENS,
                       "texts_sha256": {split: sha256_of_texts(texts) for split, texts in context.texts.items()}},
        "versions": context.versions,
    }, sort_keys=True, default=str))


def result_path(output_dir: str, arm: Arm, weight: float, seed: int) -> str:
    return os.path.join(output_dir, BENCHMARK, f"{arm.name}__w{weight:g}__seed{seed}.json")


def stored_result(path: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        stored = json.load(stream)
    return stored if stored.get("settings") == settings else None


def chosen_weight(arm: Arm, output_dir: str, context: StudyContext) -> float | None:
    """The selection rule: of the seed-0 runs at each weight, the lower validation student perplexity (ties: the
    smaller weight); None while one of them is missing."""
    if not arm.geometry_loss:
        return 0.0
    perplexities = []
    for weight in arm.weights:
        stored = stored_result(result_path(output_dir, arm, weight, 0), run_settings(arm, weight, 0, context))
        if stored is None:
            return None
        perplexities.append((stored["metrics"]["validation"]["student_perplexity"], weight))
    return min(perplexities)[1]


@dataclass
class LMStudyOptions:
    seeds: Sequence[int] = (0,)
    arms: Sequence[str] | None = None  # names; default: every arm
    output_dir: str = "benchmarks/results/study"
    work_dir: str = "outputs/study"
    shard: tuple[int, int] = (0, 1)  # (index, count): this process runs every count-th pending run


def planned_runs(options: LMStudyOptions, context: StudyContext) -> list[tuple[Arm, float, int]]:
    """(arm, weight, seed) of the asked seeds: every weight at seed 0, the chosen one at other seeds."""
    arms = [arm for arm in lm_arms() if options.arms is None or arm.name in options.arms]
    runs = []
    for seed in options.seeds:
        for arm in arms:
            if seed == 0:
                runs.extend((arm, weight, seed) for weight in arm.weights)
                continue
            weight = chosen_weight(arm, options.output_dir, context)
            if weight is None:
                logger.warning("%s seed %d left out: its weight is not chosen yet (run seed 0 at weights %s first)",
                               arm.name, seed, list(arm.weights))
            else:
                runs.append((arm, weight, seed))
    return runs


def pending_runs(options: LMStudyOptions, context: StudyContext) -> list[tuple[Arm, float, int]]:
    runs = [(arm, weight, seed) for arm, weight, seed in planned_runs(options, context)
            if stored_result(result_path(options.output_dir, arm, weight, seed),
                             run_settings(arm, weight, seed, context)) is None]
    index, count = options.shard
    return [run for position, run in enumerate(runs) if position % count == index]


def corpus_description(context: StudyContext) -> dict[str, str]:
    return {"train": f"wordnet_glosses train split (hf_pcoh.data.load_splits), its first {STEPS * BATCH} rows",
            "validation": f"wordnet_glosses test split shuffled (seed {EVALUATION_SEED}), rows "
                          f"{HELD_OUT_SIZE}-{2 * HELD_OUT_SIZE - 1}",
            "test": f"wordnet_glosses test split shuffled (seed {EVALUATION_SEED}), rows 0-{HELD_OUT_SIZE - 1}",
            "ood": f"{HELD_OUT_SIZE} Python {platform.python_version()} standard-library docstring summaries "
                   "(benchmarks.study.python_docstring_summaries)"}


def train_and_measure(arm: Arm, weight: float, seed: int, run_dir: str, teacher: torch.nn.Module, tokenizer: Any,
                      context: StudyContext) -> dict[str, Any]:
    start = time.perf_counter()
    config = run_config(arm, weight, seed, run_dir)
    set_seed(seed)
    result = run_distillation(config)
    evaluation_start = time.perf_counter()
    student = AutoModelForCausalLM.from_pretrained(result.output_dir, use_safetensors=True)
    metrics = measure(teacher, student, tokenizer, context.texts)
    remove_weights(result.output_dir)
    return {"metrics": metrics, "train_seconds": float(result.train_metrics["train_runtime"]),
            "train_loss": float(result.train_metrics.get("train_loss", float("nan"))),
            "evaluation_seconds": time.perf_counter() - evaluation_start,
            "wall_seconds": time.perf_counter() - start}


def run_lm_study(options: LMStudyOptions) -> list[str]:
    """Run every pending (arm, weight, seed) of this shard, writing one JSON per run; return the paths written."""
    context = StudyContext.build()
    runs = pending_runs(options, context)
    logger.info("lm study: %d runs to do in this shard", len(runs))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path(), use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path())
    written = []
    for number, (arm, weight, seed) in enumerate(runs, 1):
        run_dir = os.path.join(options.work_dir, BENCHMARK, f"{arm.name}__w{weight:g}", f"seed{seed}")
        outcome = train_and_measure(arm, weight, seed, run_dir, teacher, tokenizer, context)
        path = result_path(options.output_dir, arm, weight, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, {"benchmark": BENCHMARK, "arm": arm.name, "geometry_loss": arm.geometry_loss,
                          "weight": weight, "seed": seed, "settings": run_settings(arm, weight, seed, context),
                          **outcome, "torch_threads": torch.get_num_threads(),
                          "provenance": {**describe_machine("cpu"), "source_sha256": source_sha256(),
                                         "corpus": corpus_description(context)}})
        logger.info("[%d/%d] %s w%g seed %d: validation perplexity %.1f, test %.1f; %.0f s (evaluation %.0f s)",
                    number, len(runs), arm.name, weight, seed, outcome["metrics"]["validation"]["student_perplexity"],
                    outcome["metrics"]["test"]["student_perplexity"], outcome["wall_seconds"],
                    outcome["evaluation_seconds"])
        written.append(path)
    return written


# --------------------------------------------------------------------------- tables

# (split, metric, header, decimals)
TEST_COLUMNS = (
    ("test", "student_perplexity", "test ppl", 1),
    ("test", "kl_teacher_student", "test KL", 4),
    ("test", "top1_agreement", "test top-1", 4),
    ("test", "greedy_rouge_l", "ROUGE-L (50)", 3),
    ("ood", "student_perplexity", "OOD ppl", 1),
    ("ood", "kl_teacher_student", "OOD KL", 4),
    ("ood", "top1_agreement", "OOD top-1", 4),
)
SELECTION_COLUMNS = (
    ("validation", "student_perplexity", "val ppl", 1),
    ("validation", "kl_teacher_student", "val KL", 4),
    ("validation", "top1_agreement", "val top-1", 4),
)


def load_lm_results(output_dir: str) -> list[dict[str, Any]]:
    """Every stored run of the study (whatever its settings: the report shows what the files hold)."""
    return load_results(output_dir, BENCHMARK)


def stored_choices(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """:func:`chosen_weight` read from the files themselves: per arm, the weight whose seed-0 run has the lower
    validation perplexity, once every weight of the arm has its seed-0 run (None before)."""
    choices: dict[str, float | None] = {}
    for arm in lm_arms():
        seed_zero = {run["weight"]: run for run in results if run["arm"] == arm.name and run["seed"] == 0}
        if all(weight in seed_zero for weight in arm.weights):
            choices[arm.name] = min((seed_zero[weight]["metrics"]["validation"]["student_perplexity"], weight)
                                    for weight in arm.weights)[1]
        else:
            choices[arm.name] = None
    return choices


def mean_and_spread(values: Sequence[float], decimals: int) -> str:
    """``mean ± sample std`` (ddof 1), the mean alone for one value."""
    text = f"{np.mean(values):.{decimals}f}"
    return text + (f" ± {np.std(values, ddof=1):.{decimals}f}" if len(values) > 1 else "")


def teacher_row(results: list[dict[str, Any]], columns: Sequence[tuple[str, str, str, int]]) -> list[str]:
    """The teacher's perplexity per split (the same in every run: it is the same model on the same texts)."""
    cells = []
    for split, metric, _, decimals in columns:
        values = [run["metrics"][split]["teacher_perplexity"] for run in results]
        if metric != "student_perplexity" or not values:
            cells.append("—")
            continue
        if max(values) - min(values) > 1e-6 * max(values):
            logger.warning("the teacher's %s perplexity differs between runs (%.4f-%.4f)", split, min(values),
                           max(values))
        cells.append(f"{np.mean(values):.{decimals}f}")
    return cells


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: list[dict[str, Any]]) -> str:
    """Test and out-of-domain figures of each arm at its chosen weight: mean ± sample std over its seeds."""
    choices = stored_choices(results)
    headers = ["objective", "weight", "seeds", *(header for _, _, header, _ in TEST_COLUMNS), "train s"]
    rows = [["teacher (4-layer OPT, 11.0M)", "—", "—", *teacher_row(results, TEST_COLUMNS), "—"]]
    for arm in lm_arms():
        weight = choices[arm.name]
        runs = sorted((run for run in results if run["arm"] == arm.name and run["weight"] == weight),
                      key=lambda run: run["seed"])
        if not runs:
            rows.append([f"`{arm.name}`", "—", "0", *("not run" for _ in TEST_COLUMNS), "—"])
            continue
        cells = [mean_and_spread([run["metrics"][split][metric] for run in runs], decimals)
                 for split, metric, _, decimals in TEST_COLUMNS]
        rows.append([f"`{arm.name}`", f"{weight:g}" if arm.geometry_loss else "—", str(len(runs)), *cells,
                     f"{np.mean([run['train_seconds'] for run in runs]):.0f}"])
    return markdown_table(headers, rows)


def selection_table(results: list[dict[str, Any]]) -> str:
    """Seed 0 on validation, every weight tried; the chosen weight of each arm marked."""
    choices = stored_choices(results)
    headers = ["objective", "weight", *(header for _, _, header, _ in SELECTION_COLUMNS), "chosen"]
    rows = []
    for arm in lm_arms():
        for weight in arm.weights:
            run = next((run for run in results if run["arm"] == arm.name and run["weight"] == weight
                        and run["seed"] == 0), None)
            cells = (["not run"] * len(SELECTION_COLUMNS) if run is None else
                     [f"{run['metrics'][split][metric]:.{decimals}f}" for split, metric, _, decimals in SELECTION_COLUMNS])
            chosen = "—" if not arm.geometry_loss else ("yes" if choices[arm.name] == weight else "")
            rows.append([f"`{arm.name}`", f"{weight:g}" if arm.geometry_loss else "—", *cells, chosen])
    return markdown_table(headers, rows)


def rendered_blocks(output_dir: str) -> dict[str, str]:
    """The blocks README and docs/study.md hold, rendered from the result files in ``output_dir``."""
    results = load_lm_results(output_dir)
    return {"study_lm": results_table(results), "study_lm_selection": selection_table(results)}


def write_lm_report(output_dir: str = "benchmarks/results/study", report_file: str = REPORT_FILE,
                    documents: Sequence[str] = DOCUMENTS) -> str:
    """``study_lm.md`` (both tables) and the rendered blocks of ``documents``; paths relative to the repository."""
    blocks = rendered_blocks(output_dir)
    report_path = str(REPOSITORY_ROOT / report_file)
    lines = ["# Study: causal-LM students (see docs/study.md, \"Causal-LM students\")", "",
             "## Selection on the validation split (seed 0; the weight with the lower student perplexity is kept)", "",
             blocks["study_lm_selection"], "",
             "## Test split and out-of-domain set (each arm at its chosen weight; mean ± sample std over seeds)", "",
             blocks["study_lm"], ""]
    with open(report_path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines))
    for document in documents:
        replaced = render_into_file(str(REPOSITORY_ROOT / document), blocks)
        logger.info("%s: rendered %s", document, replaced or "no block")
    return report_path

"""What the card of a language-model student adds (``task: causal_lm``): its task, its token objectives and its
language-model metrics.

A decoder distilled as a language model (next-token cross-entropy and token KD, :mod:`hf_pcoh.losses.token_kd`,
beside hidden-state losses) is published for text generation: the card's ``pipeline_tag`` is ``text-generation``
and its usage transformers' ``text-generation`` pipeline (:func:`~hf_pcoh.hub.usage.text_generation_snippet`); the
Distillation table lists the two token objectives with their options beside the hidden-state terms; the
``language_model`` section of ``eval_results.json`` (:mod:`hf_pcoh.evaluation.language_model`) becomes a
student-vs-teacher table and ``model-index`` entries of task ``text-generation``; the token KD cites GKD (Agarwal
et al. 2024: forward / reverse KL and the generalised JSD) and Hinton et al. 2015 (the temperature).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult
from transformers import AutoTokenizer

from ..models import CAUSAL_LM_CLASSES
from .usage import text_generation_snippet

logger = logging.getLogger(__name__)

TEXT_GENERATION = "text-generation"
RESULTS_SECTION = "language_model"  # the key of eval_results.json the language-model metrics are under
# The two token objectives, under the names the training logs them with (loss/<name>).
NEXT_TOKEN_CE, TOKEN_KD = "next_token_cross_entropy", "token_kd"

OBJECTIVE_NAMES = {NEXT_TOKEN_CE: "next-token cross-entropy", TOKEN_KD: "KD over the vocabulary at every token"}

# eval_results.json's language-model metrics in reading order, with the names the card shows them under. The
# perplexities are each model's own on the held-out text; the others compare the student with the teacher there.
METRIC_NAMES = {
    "student_perplexity": "Perplexity",
    "teacher_perplexity": "Teacher perplexity",
    "kl_teacher_student": "KL(teacher || student)",
    "top1_agreement": "Top-1 agreement with the teacher",
    "greedy_exact_match": "Greedy exact match with the teacher",
    "greedy_rouge_l": "Greedy ROUGE-L with the teacher",
}
# The comparisons with the teacher, as the results table shows them (the perplexities are one row).
AGREEMENT_ROWS = {
    "kl_teacher_student": "KL(teacher ‖ student), nats per token",
    "top1_agreement": "Top-1 next-token agreement",
    "greedy_exact_match": "Greedy continuation: exact match",
    "greedy_rouge_l": "Greedy continuation: ROUGE-L",
}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_language_model(description: dict[str, Any], model_config: dict[str, Any],
                      results: dict[str, Any] | None) -> bool:
    """Whether the run distilled a language model: it was measured as one, or its recipe's ``task`` is (or, for
    ``auto``, resolved to) ``causal_lm``, as :meth:`DistillationConfig.resolved_task` resolves it from the saved
    student's architecture (``config.json``)."""
    if (results or {}).get(RESULTS_SECTION):
        return True
    recipe = description["recipe"]
    task = recipe.get("task", "auto")
    if task != "auto":
        return task == "causal_lm"
    token_objectives = (recipe.get("ce_weight") or 0) > 0 or (recipe.get("logit_kd_weight") or 0) > 0
    architectures = model_config.get("architectures") or []
    return (token_objectives and recipe.get("label_column") is None
            and any(name in CAUSAL_LM_CLASSES for name in architectures))


def logit_kd_losses(recipe: dict[str, Any], language_model: bool) -> list[str]:
    """The registered losses whose papers a run's logit KD cites: token KD over the vocabulary (GKD's divergences)
    and Hinton's temperature KD for a language model or another divergence, Hinton's alone over class logits; none
    without ``logit_kd_weight``."""
    if not (recipe.get("logit_kd_weight") or 0) > 0:
        return []
    if language_model or recipe.get("logit_kd_divergence", "forward_kl") != "forward_kl":
        return [TOKEN_KD, "logit_kd"]
    return ["logit_kd"]


def token_objectives(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The token objectives as rows of the card's terms table: next-token CE on the student's logits, token KD
    between both models' logits with its divergence and temperature."""
    rows = []
    if (recipe.get("ce_weight") or 0) > 0:
        rows.append({"student_layer": "logits", "teacher_layer": "—", "loss": NEXT_TOKEN_CE,
                     "options": "the next token", "weight": recipe["ce_weight"]})
    if (recipe.get("logit_kd_weight") or 0) > 0:
        divergence = recipe.get("logit_kd_divergence", "forward_kl")
        options = divergence + (f", beta {recipe.get('logit_kd_beta')}" if divergence == "jsd" else "")
        options += f", temperature {recipe.get('logit_kd_temperature', 1.0)}"
        rows.append({"student_layer": "logits", "teacher_layer": "logits", "loss": TOKEN_KD, "options": options,
                     "weight": recipe["logit_kd_weight"]})
    return rows


def format_value(name: str, value: Any) -> str:
    """Perplexities to 0.01, the other metrics to 4 decimals; a dash when not measured."""
    if not finite(value):
        return "—"
    return f"{value:,.2f}" if name.endswith("perplexity") else f"{value:.4f}"


def results_context(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """The language-model results table: perplexity of student and teacher (and the student's as a share of the
    teacher's), then the student's agreement with the teacher; None when the run was not measured as one."""
    metrics = (results or {}).get(RESULTS_SECTION)
    if not metrics:
        return None
    student, teacher = metrics.get("student_perplexity"), metrics.get("teacher_perplexity")
    ratio = f"{student / teacher:.2f}x" if finite(student) and finite(teacher) and teacher > 0 else "—"
    rows = [{"name": "Perplexity (lower is better)", "student": format_value("student_perplexity", student),
             "teacher": format_value("teacher_perplexity", teacher), "ratio": ratio}]
    rows += [{"name": label, "student": format_value(name, metrics.get(name)), "teacher": "—", "ratio": "—"}
             for name, label in AGREEMENT_ROWS.items() if name in metrics]
    return {
        "rows": rows,
        "num_texts": f"{int(metrics['num_texts']):,}" if finite(metrics.get("num_texts")) else "—",
        "positions": (f"{int(metrics['num_next_token_positions']):,}"
                      if finite(metrics.get("num_next_token_positions")) else "—"),
    }


def eval_results(results: dict[str, Any], dataset_type: str, dataset_name: str) -> list[EvalResult]:
    """The language-model metrics as ``model-index`` entries of task ``text-generation`` (both perplexities,
    KL, top-1 agreement, greedy exact match and ROUGE-L), on the data set and split the run was measured on."""
    metrics = results.get(RESULTS_SECTION) or {}
    return [
        EvalResult(
            task_type=TEXT_GENERATION,
            task_name="Text Generation",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=results.get("split"),
            metric_type=name,
            metric_value=metrics[name],
            metric_name=display_name,
        )
        for name, display_name in METRIC_NAMES.items()
        if finite(metrics.get(name))
    ]


def closing_token(folder: Path) -> str | None:
    """The token the student's tokenizer ends every text with (BERT's ``[SEP]``: the student learned it as the end
    of a text, so a prompt must not end with it); None when it appends none, or the folder's tokenizer is unreadable."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        logger.warning("the student's tokenizer in %s could not be read (%s): the usage snippet assumes it appends "
                       "no end token", folder, error)
        return None
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if not with_special or with_special[-1:] == plain[-1:]:
        return None
    return tokenizer.convert_ids_to_tokens(with_special[-1])


def card_context(folder: Path, recipe: dict[str, Any], results: dict[str, Any] | None, model_id: str) -> dict[str, Any]:
    """The template's ``language_model`` variable: the token objectives (as a phrase and as rows of the terms
    table), the results table and the usage snippet."""
    objectives = token_objectives(recipe)
    return {
        "objectives_text": ", ".join([OBJECTIVE_NAMES[row["loss"]] for row in objectives]),
        "objectives": objectives,
        "results": results_context(results),
        "usage": text_generation_snippet(model_id, closing_token(folder)),
    }

"""A student causal language model beside its teacher on held-out text: perplexity, KL, top-1 and greedy agreement.

Both models read the same token ids (one shared tokenizer, one vocabulary). Each held-out text is one sequence
``x_0 .. x_{n-1}`` (with the tokenizer's special tokens, e.g. ``[CLS] ... [SEP]``); the *next-token positions*
are ``t = 0 .. n-2``, where a model predicts ``x_{t+1}`` from ``x_0 .. x_t``. Padding is never a position.

- **perplexity** ``exp(sum NLL / number of positions)``, token-weighted over the whole set (a long text counts
  by its tokens, not once), ``NLL = -log p(x_{t+1} | x_<=t)``;
- **KL(teacher || student)** ``sum_v p_T(v) (log p_T(v) - log p_S(v))`` at each position, averaged over the
  positions (in nats): how much of the teacher's next-token distribution the student misses;
- **top-1 agreement**: the share of positions where both models' most likely next token is the same;
- **greedy continuations**: the first half of each text (``prompt_fraction``) is a prompt, each model continues
  it greedily (``generate(do_sample=False)``) for ``max_new_tokens`` tokens, stopping after the end-of-sequence
  token; the student's continuation is compared with the teacher's: exact match (the same token ids) and ROUGE-L
  F-measure on the token ids (the local ``evaluate`` module ``metrics/rouge_l``; Lin, 2004).

Memory: texts are scored in batches sorted by length (little padding); each batch's logits are read in chunks of
``position_chunk_size`` valid positions, cast to float32 there, so the float32 log-probabilities of the two models
exist for one chunk at a time, never for the whole set. Example::

    from hf_pcoh.evaluation.language_model import evaluate_language_models

    metrics = evaluate_language_models(teacher, student, tokenizer, held_out_texts, max_new_tokens=16)
    # {'teacher_perplexity': 61.2, 'student_perplexity': 88.0, 'kl_teacher_student': 0.41, 'top1_agreement': 0.63,
    #  'greedy_exact_match': 0.22, 'greedy_rouge_l': 0.55, 'num_texts': 1000.0, 'num_next_token_positions': 17094.0}
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..citations import ROUGE_L

ROUGE_L_METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "rouge_l")
ROUGE_L_CITATION = ROUGE_L  # Lin (2004), from hf_pcoh.citations like every metric's paper


# ---- token sequences --------------------------------------------------------------------------------------

def tokenise_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Each text's token ids with the tokenizer's special tokens (``[CLS] ... [SEP]``), truncated to ``max_length``."""
    encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
    return [list(ids) for ids in encoded["input_ids"]]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str = "right"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[B, T]`` of ``sequences`` padded to the longest, on ``side``."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r}: expected 'left' or 'right'")
    longest = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(longest - len(sequence), longest) if side == "left" else slice(0, len(sequence))
        input_ids[row, span] = torch.as_tensor(list(sequence), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def batches_by_length(sequences: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Row indices of ``sequences`` in batches of similar length (longest first, so memory peaks at once)."""
    order = sorted(range(len(sequences)), key=lambda row: -len(sequences[row]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def check_sequences(sequences: Sequence[Sequence[int]], batch_size: int,
                    position_chunk_size: int | None = None) -> None:
    if len(sequences) == 0:
        raise ValueError("no sequences to score: pass at least one held-out text")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if position_chunk_size is not None and position_chunk_size < 1:
        raise ValueError(f"position_chunk_size={position_chunk_size} must be at least 1 (or None: a whole batch)")


# ---- next-token statistics --------------------------------------------------------------------------------

@dataclass
class NextTokenStatistics:
    """Sums over the valid next-token positions of a set of texts; the metrics are their means."""

    positions: int = 0
    nll_sums: tuple[float, ...] = ()  # one per model, in nats
    kl_sum: float = 0.0  # KL(models[0] || models[1]) summed over positions, in nats
    top1_agreements: int = 0  # positions where models[0] and models[1] rank the same token first

    def perplexity(self, model_index: int = 0) -> float:
        return math.exp(self.nll_sums[model_index] / self.positions) if self.positions else float("nan")


def model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.inference_mode()
def next_token_statistics(
    models: Sequence[torch.nn.Module],
    sequences: Sequence[Sequence[int]],
    batch_size: int = 16,
    position_chunk_size: int | None = 1024,
    pad_token_id: int = 0,
) -> NextTokenStatistics:
    """NLL sums of one or two causal LMs on ``sequences`` and, with two, KL(first || second) and top-1 agreement.

    Batches are right-padded (a causal model's valid positions never attend to right padding, so padding changes
    nothing); each batch's valid positions are read ``position_chunk_size`` at a time (None: all at once).
    """
    if len(models) not in (1, 2):
        raise ValueError(f"{len(models)} models given: expected one (perplexity) or two (teacher, student)")
    check_sequences(sequences, batch_size, position_chunk_size)
    nll_sums = [0.0] * len(models)
    kl_sum, agreements, positions = 0.0, 0, 0
    for rows in batches_by_length(sequences, batch_size):
        input_ids, attention_mask = pad_sequences([sequences[row] for row in rows], pad_token_id, "right")
        valid = attention_mask[:, 1:].bool()  # [B, T-1]: position t predicts token t+1, a real token
        batch_rows, batch_positions = valid.nonzero(as_tuple=True)
        targets = input_ids[:, 1:][batch_rows, batch_positions]  # [P]
        logits = []
        for model in models:
            device = model_device(model)
            output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
            logits.append(output.logits[:, :-1])  # [B, T-1, V], in the model's dtype
        if len(models) == 2 and logits[0].shape[-1] != logits[1].shape[-1]:
            raise ValueError(f"the teacher predicts {logits[0].shape[-1]} tokens and the student "
                             f"{logits[1].shape[-1]}: the models must share one vocabulary")
        device = logits[0].device  # the chunks of both models meet on the first model's device
        targets = targets.to(device)
        chunk = position_chunk_size or max(len(targets), 1)
        for start in range(0, len(targets), chunk):
            span = slice(start, start + chunk)
            log_probs = [
                torch.log_softmax(model_logits[batch_rows[span].to(model_logits.device),
                                               batch_positions[span].to(model_logits.device)].float(),
                                  dim=-1).to(device)
                for model_logits in logits
            ]  # each [chunk, V], float32
            chunk_targets = targets[span]
            for index, model_log_probs in enumerate(log_probs):
                nll_sums[index] -= float(model_log_probs.gather(1, chunk_targets[:, None]).double().sum())
            if len(models) == 2:
                teacher_log_probs, student_log_probs = log_probs
                teacher_probs = teacher_log_probs.exp()
                # 0 * log 0 = 0 where the teacher gives a token no mass (a -inf logit)
                pointwise = torch.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs),
                                        torch.zeros((), dtype=teacher_probs.dtype))
                kl_sum += float(pointwise.sum(-1).double().sum())
                agreements += int((teacher_log_probs.argmax(-1) == student_log_probs.argmax(-1)).sum())
        positions += len(targets)
    if positions == 0:
        raise ValueError(f"the {len(sequences)} sequences have no next-token positions (each is a single token): "
                         "a text needs at least two tokens")
    return NextTokenStatistics(positions=positions, nll_sums=tuple(nll_sums), kl_sum=kl_sum,
                               top1_agreements=agreements)


def perplexity(model: torch.nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 16,
               position_chunk_size: int | None = 1024, pad_token_id: int = 0) -> float:
    """``exp(mean NLL)`` of ``model`` over every valid next-token position of ``sequences`` (token-weighted)."""
    return next_token_statistics([model], sequences, batch_size, position_chunk_size, pad_token_id).perplexity()


def next_token_agreement(teacher: torch.nn.Module, student: torch.nn.Module, sequences: Sequence[Sequence[int]],
                         batch_size: int = 16, position_chunk_size: int | None = 1024, pad_token_id: int = 0
                         ) -> dict[str, float]:
    """Both perplexities, the mean KL(teacher || student) per position and top-1 agreement, in one pass."""
    statistics = next_token_statistics([teacher, student], sequences, batch_size, position_chunk_size, pad_token_id)
    return {
        "teacher_perplexity": statistics.perplexity(0),
        "student_perplexity": statistics.perplexity(1),
        "kl_teacher_student": statistics.kl_sum / statistics.positions,
        "top1_agreement": statistics.top1_agreements / statistics.positions,
        "num_next_token_positions": float(statistics.positions),
    }


def unigram_perplexity(train_sequences: Sequence[Sequence[int]], eval_sequences: Sequence[Sequence[int]],
                       vocab_size: int, smoothing: float = 1.0) -> float:
    """Perplexity of a unigram model (token frequencies of ``train_sequences``, additively smoothed over the
    vocabulary) on ``eval_sequences``, at the same positions as :func:`perplexity`: every token but the first.

    The baseline a language model must beat: it knows which tokens are frequent, nothing of their context.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing={smoothing} must be positive (an unseen token would have probability 0)")
    counts = np.full(vocab_size, float(smoothing))
    for token, count in Counter(token for sequence in train_sequences for token in sequence[1:]).items():
        counts[token] += count
    log_probs = np.log(counts) - np.log(counts.sum())
    targets = np.fromiter((token for sequence in eval_sequences for token in sequence[1:]), dtype=np.int64)
    if targets.size == 0:
        raise ValueError("the evaluation sequences have no next-token positions (every one is a single token)")
    return float(np.exp(-log_probs[targets].mean()))


# ---- greedy continuations ---------------------------------------------------------------------------------

def split_prompts(sequences: Sequence[Sequence[int]], prompt_fraction: float = 0.5) -> list[list[int]]:
    """The first ``prompt_fraction`` of each sequence's tokens (at least one): the prompts of the continuations."""
    if not 0.0 < prompt_fraction < 1.0:
        raise ValueError(f"prompt_fraction={prompt_fraction} must be in (0, 1)")
    return [list(sequence[:max(1, int(len(sequence) * prompt_fraction))]) for sequence in sequences]


@torch.inference_mode()
def greedy_continuations(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 16,
                         batch_size: int = 16, pad_token_id: int = 0, eos_token_id: int | None = None
                         ) -> list[list[int]]:
    """The tokens ``model`` appends greedily to each prompt, up to ``max_new_tokens``, cut after the first
    ``eos_token_id``. Prompts are left-padded in batches of similar length."""
    check_sequences(prompts, batch_size)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    device = model_device(model)
    continuations: list[list[int]] = [[] for _ in prompts]
    for rows in batches_by_length(prompts, batch_size):
        input_ids, attention_mask = pad_sequences([prompts[row] for row in rows], pad_token_id, "left")
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=pad_token_id, eos_token_id=eos_token_id)
        for row, new_tokens in zip(rows, output[:, input_ids.shape[1]:].tolist()):
            if eos_token_id is not None and eos_token_id in new_tokens:
                new_tokens = new_tokens[:new_tokens.index(eos_token_id) + 1]  # the padding after it is not text
            continuations[row] = new_tokens
    return continuations


def longest_common_subsequence_length(first: Sequence[int], second: Sequence[int]) -> int:
    """The length of the longest common subsequence (not necessarily contiguous), by dynamic programming."""
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for column, other in enumerate(second):
            current.append(previous[column] + 1 if item == other else max(previous[column + 1], current[column]))
        previous = current
    return previous[-1]


def rouge_l_f_measure(prediction: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences: ``2 P R / (P + R)`` with ``P = LCS / |prediction|``, ``R = LCS /
    |reference|`` (Lin, 2004; beta = 1, as ``rouge-score``); 0 when either is empty or nothing is shared."""
    common = longest_common_subsequence_length(prediction, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def greedy_agreement(teacher: torch.nn.Module, student: torch.nn.Module, sequences: Sequence[Sequence[int]],
                     prompt_fraction: float = 0.5, max_new_tokens: int = 16, batch_size: int = 16,
                     pad_token_id: int = 0, eos_token_id: int | None = None, cache_dir: str | None = None
                     ) -> dict[str, float]:
    """Greedy continuations of the prompts of ``sequences`` by both models: exact-match rate and mean ROUGE-L F1
    of the student's against the teacher's (the teacher's is the reference)."""
    import evaluate  # only this part needs it; the metric module reads from disk, never the Hub

    prompts = split_prompts(sequences, prompt_fraction)
    teacher_continuations = greedy_continuations(teacher, prompts, max_new_tokens, batch_size, pad_token_id,
                                                 eos_token_id)
    student_continuations = greedy_continuations(student, prompts, max_new_tokens, batch_size, pad_token_id,
                                                 eos_token_id)
    exact = float(np.mean([s == t for s, t in zip(student_continuations, teacher_continuations)]))
    rouge = evaluate.load(ROUGE_L_METRIC_PATH, cache_dir=cache_dir)
    scores = rouge.compute(predictions=student_continuations, references=teacher_continuations)
    return {"greedy_exact_match": exact, "greedy_rouge_l": float(scores["rouge_l"])}


# ---- everything, from texts -------------------------------------------------------------------------------

def check_shared_vocabulary(teacher: torch.nn.Module, student: torch.nn.Module, tokenizer: Any) -> None:
    """Raise when the two models' vocabularies differ or the tokenizer yields ids beyond them."""
    teacher_vocab = getattr(teacher.config, "vocab_size", None)
    student_vocab = getattr(student.config, "vocab_size", None)
    if teacher_vocab is not None and student_vocab is not None and teacher_vocab != student_vocab:
        raise ValueError(f"teacher vocab_size={teacher_vocab} but student vocab_size={student_vocab}: KL and "
                         "agreement need one vocabulary (the same tokenizer for both)")
    if teacher_vocab is not None and len(tokenizer) > teacher_vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the models only {teacher_vocab}: "
                         "use the tokenizer the teacher was trained with")


def evaluate_language_models(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None = 64,
    batch_size: int = 16,
    position_chunk_size: int | None = 1024,
    prompt_fraction: float = 0.5,
    max_new_tokens: int = 16,
    max_generation_texts: int | None = None,
    cache_dir: str | None = None,
) -> dict[str, float]:
    """Every metric of this module for ``student`` against ``teacher`` on held-out ``texts`` (see the module's
    docstring): ``teacher_perplexity``, ``student_perplexity``, ``kl_teacher_student``, ``top1_agreement``,
    ``greedy_exact_match``, ``greedy_rouge_l``, plus ``num_texts`` and ``num_next_token_positions``.

    ``texts`` are tokenised by ``tokenizer`` (special tokens included, truncated to ``max_length``); greedy
    continuations use the first ``max_generation_texts`` of them (None: all), as generation costs most. The
    end-of-sequence token is the teacher's (``generation_config.eos_token_id``), padding the tokenizer's.
    """
    if len(texts) == 0:
        raise ValueError("texts is empty: pass at least one held-out text")
    check_shared_vocabulary(teacher, student, tokenizer)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_token_id = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
    if isinstance(eos_token_id, list):
        eos_token_id = eos_token_id[0] if eos_token_id else None
    sequences = tokenise_texts(tokenizer, texts, max_length)
    was_training = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        metrics = next_token_agreement(teacher, student, sequences, batch_size, position_chunk_size, pad_token_id)
        generation_sequences = sequences if max_generation_texts is None else sequences[:max_generation_texts]
        metrics.update(greedy_agreement(teacher, student, generation_sequences, prompt_fraction, max_new_tokens,
                                        batch_size, pad_token_id, eos_token_id, cache_dir))
    finally:
        teacher.train(was_training[0])
        student.train(was_training[1])
    metrics["num_texts"] = float(len(sequences))
    return metrics


__all__ = [
    "NextTokenStatistics",
    "ROUGE_L_CITATION",
    "ROUGE_L_METRIC_PATH",
    "evaluate_language_models",
    "greedy_agreement",
    "greedy_continuations",
    "longest_common_subsequence_length",
    "next_token_agreement",
    "next_token_statistics",
    "perplexity",
    "rouge_l_f_measure",
    "split_prompts",
    "tokenise_texts",
    "unigram_perplexity",
]

"""Language-model evaluation (``hf_pcoh.evaluation.language_model``) against direct formulas on tiny random OPTs.

Perplexity is ``exp`` of the mean NLL over every valid next-token position, and padding (its side, its amount, its
id) changes nothing; KL(teacher || student) is zero for identical models and equals a direct per-position sum
otherwise; chunking the positions changes nothing; greedy continuations do not depend on the batch they run in; and
ROUGE-L gives the values worked out by hand, through the local ``evaluate`` module with the network cut off.
"""

from __future__ import annotations

import copy
import math
import socket

import pytest
import torch
from transformers import AutoTokenizer, OPTForCausalLM

from hf_pcoh.evaluation.language_model import (
    ROUGE_L_METRIC_PATH,
    evaluate_language_models,
    greedy_agreement,
    greedy_continuations,
    longest_common_subsequence_length,
    next_token_agreement,
    perplexity,
    rouge_l_f_measure,
    split_prompts,
    unigram_perplexity,
)
from hf_pcoh.models import config_from_dict

from tiny_models import TINY_OPT

# init_std 0.5: logits far apart, so a greedy choice never hangs on a float rounding (the default 0.02 leaves the
# top tokens of a random model within 1e-6 of each other)
DECISIVE_OPT = {**TINY_OPT, "init_std": 0.5}
SEQUENCES = [[101, 2023, 2003, 1037, 3899, 102], [101, 7592, 102],
             [101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102],
             [101, 2009, 102], [101, 3071, 4511, 2015, 1998, 2500, 2017, 102]]
TEXTS = ["a domesticated carnivorous mammal", "the act of announcing or being announced", "a hormone",
         "relating to the sea; \"marine explorations\"", "move fast by using one's feet"]


def tiny_opt(seed: int, **overrides) -> OPTForCausalLM:
    torch.manual_seed(seed)
    return OPTForCausalLM(config_from_dict({**DECISIVE_OPT, **overrides})).eval()


@pytest.fixture(scope="module")
def teacher() -> OPTForCausalLM:
    return tiny_opt(0)


@pytest.fixture(scope="module")
def student() -> OPTForCausalLM:
    return tiny_opt(1)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def direct_log_probs(model, sequence) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) over the vocabulary, one unpadded sequence alone: ``[n-1, V]``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence])).logits[0, :-1]
    return torch.log_softmax(logits.double(), dim=-1)


def test_perplexity_is_exp_of_the_token_weighted_mean_nll(teacher) -> None:
    nll, count = 0.0, 0
    for sequence in SEQUENCES:
        log_probs = direct_log_probs(teacher, sequence)
        nll -= float(log_probs[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])].sum())
        count += len(sequence) - 1
    assert count == 24  # every token but each sequence's first; padding never counts
    assert perplexity(teacher, SEQUENCES, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_padding_changes_nothing(teacher) -> None:
    alone = perplexity(teacher, SEQUENCES, batch_size=1)  # no padding at all
    assert perplexity(teacher, SEQUENCES, batch_size=len(SEQUENCES)) == pytest.approx(alone, rel=1e-6)
    padded_with_a_word = perplexity(teacher, SEQUENCES, batch_size=len(SEQUENCES), pad_token_id=2023)
    assert padded_with_a_word == pytest.approx(alone, rel=1e-6)


def test_identical_models_have_zero_kl_and_agree_everywhere(teacher) -> None:
    metrics = next_token_agreement(teacher, copy.deepcopy(teacher), SEQUENCES, batch_size=2)
    assert metrics["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["top1_agreement"] == 1.0
    assert metrics["teacher_perplexity"] == pytest.approx(metrics["student_perplexity"], rel=1e-6)
    assert metrics["num_next_token_positions"] == 24.0


def test_kl_and_top1_agreement_equal_a_direct_computation(teacher, student) -> None:
    kl, agreements, count = 0.0, 0, 0
    for sequence in SEQUENCES:
        teacher_log_probs, student_log_probs = direct_log_probs(teacher, sequence), direct_log_probs(student, sequence)
        kl += float((teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum())
        agreements += int((teacher_log_probs.argmax(-1) == student_log_probs.argmax(-1)).sum())
        count += len(sequence) - 1
    metrics = next_token_agreement(teacher, student, SEQUENCES, batch_size=3)
    assert metrics["kl_teacher_student"] == pytest.approx(kl / count, rel=1e-5)
    assert metrics["kl_teacher_student"] > 0.1  # two different random models: far from zero
    assert metrics["top1_agreement"] == agreements / count
    assert metrics["student_perplexity"] == pytest.approx(perplexity(student, SEQUENCES), rel=1e-6)


def test_chunks_of_positions_give_the_unchunked_values(teacher, student) -> None:
    whole = next_token_agreement(teacher, student, SEQUENCES, batch_size=len(SEQUENCES), position_chunk_size=None)
    for batch_size, chunk in [(2, 3), (5, 1), (1, 1000)]:
        chunked = next_token_agreement(teacher, student, SEQUENCES, batch_size=batch_size, position_chunk_size=chunk)
        assert chunked == pytest.approx(whole, rel=1e-6), (batch_size, chunk)


def test_models_of_different_vocabularies_are_refused(teacher, minilm_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    other = tiny_opt(2, vocab_size=1000)
    with pytest.raises(ValueError, match="teacher vocab_size=30522 but student vocab_size=1000"):
        evaluate_language_models(teacher, other, tokenizer, TEXTS)
    with pytest.raises(ValueError, match="the models must share one vocabulary"):
        next_token_agreement(teacher, other, [[1, 2, 3]])


def test_texts_without_a_next_token_are_refused(teacher) -> None:
    with pytest.raises(ValueError, match="no next-token positions"):
        perplexity(teacher, [[101], [102]])
    with pytest.raises(ValueError, match="no sequences to score"):
        perplexity(teacher, [])


def test_unigram_perplexity_known_value() -> None:
    # vocabulary of 8, add-one: counts 1 each + (5: 2, 6: 1) from the training targets (the leading 101 is a
    # prompt, not a target) -> p(5) = 3/11, p(6) = 2/11; evaluated on 5 then 6: exp(-(ln 3/11 + ln 2/11) / 2)
    value = unigram_perplexity([[7, 5, 5, 6]], [[7, 5, 6]], vocab_size=8)
    assert value == pytest.approx(11 / math.sqrt(6))


def test_prompts_are_the_first_half_of_each_text() -> None:
    assert split_prompts([[101, 1, 2, 3, 102], [101, 102], [101]]) == [[101, 1], [101], [101]]


def test_greedy_continuations_do_not_depend_on_their_batch(teacher) -> None:
    prompts = split_prompts(SEQUENCES)
    together = greedy_continuations(teacher, prompts, max_new_tokens=5, batch_size=len(prompts))
    alone = [greedy_continuations(teacher, [prompt], max_new_tokens=5)[0] for prompt in prompts]
    assert together == alone  # left padding and the batch change no token
    assert all(len(continuation) == 5 for continuation in together)
    first = together[0][0]
    stopped = greedy_continuations(teacher, prompts[:1], max_new_tokens=5, eos_token_id=first)
    assert stopped == [[first]]  # cut after the end-of-sequence token, the padding after it dropped


def test_identical_models_continue_every_prompt_alike(no_network, tmp_path, teacher, student) -> None:
    same = greedy_agreement(teacher, copy.deepcopy(teacher), SEQUENCES, max_new_tokens=4, cache_dir=str(tmp_path))
    assert same == {"greedy_exact_match": 1.0, "greedy_rouge_l": 1.0}
    different = greedy_agreement(teacher, student, SEQUENCES, max_new_tokens=4, cache_dir=str(tmp_path))
    assert 0.0 <= different["greedy_exact_match"] < 1.0
    assert 0.0 <= different["greedy_rouge_l"] < 1.0


@pytest.mark.parametrize(
    ("prediction", "reference", "lcs", "f_measure"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 4, 1.0),
        ([1, 2, 3, 4], [1, 3, 4, 5, 6], 3, 2 / 3),  # P 3/4, R 3/5: 2PR/(P+R) = 0.9/1.35
        ([1, 5, 3, 4], [1, 2, 3, 4], 3, 0.75),  # "police kill the gunman" / "police killed the gunman"
        ([4, 3, 2, 1], [1, 2, 3, 4], 1, 0.25),  # order matters: a subsequence, not a bag
        ([1, 2], [3, 4], 0, 0.0),
        ([], [1, 2], 0, 0.0),
    ],
)
def test_rouge_l_known_values(prediction, reference, lcs, f_measure) -> None:
    assert longest_common_subsequence_length(prediction, reference) == lcs
    assert rouge_l_f_measure(prediction, reference) == pytest.approx(f_measure)


def test_rouge_l_evaluate_module_loads_offline_and_averages(no_network, tmp_path) -> None:
    import evaluate

    rouge = evaluate.load(ROUGE_L_METRIC_PATH, cache_dir=str(tmp_path))
    result = rouge.compute(predictions=[[1, 2, 3, 4], [5, 6], [7]], references=[[1, 3, 4, 5, 6], [5, 6], [8]])
    assert result == {"rouge_l": pytest.approx((2 / 3 + 1.0 + 0.0) / 3)}


def test_evaluate_language_models_from_texts(no_network, tmp_path, minilm_path, teacher, student) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    names = {"teacher_perplexity", "student_perplexity", "kl_teacher_student", "top1_agreement", "greedy_exact_match",
             "greedy_rouge_l", "num_texts", "num_next_token_positions"}
    same = evaluate_language_models(teacher, copy.deepcopy(teacher), tokenizer, TEXTS, max_new_tokens=3,
                                    cache_dir=str(tmp_path))
    assert set(same) == names and all(isinstance(value, float) for value in same.values())
    assert same["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert (same["top1_agreement"], same["greedy_exact_match"], same["greedy_rouge_l"]) == (1.0, 1.0, 1.0)
    metrics = evaluate_language_models(teacher, student, tokenizer, TEXTS, max_new_tokens=3, batch_size=2,
                                       position_chunk_size=4, cache_dir=str(tmp_path))
    sequences = [tokenizer(text)["input_ids"] for text in TEXTS]  # [CLS] ... [SEP], as the function reads them
    assert metrics["num_texts"] == 5.0
    assert metrics["num_next_token_positions"] == sum(len(sequence) - 1 for sequence in sequences)
    assert metrics["teacher_perplexity"] == pytest.approx(perplexity(teacher, sequences), rel=1e-5)
    assert metrics["kl_teacher_student"] > 0.1
    assert not teacher.training and not student.training

"""Decoder students as language models (task: causal_lm): token labels from the collator, the task resolved from the
student, next-token cross-entropy and logit KD over the vocabulary beside hidden-state losses, on tiny OPT models
built from configs and real WordNet glosses; the saved student generates text with plain transformers."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from datasets import Dataset
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

from hf_pcoh.collator import DistillationCollator
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.distillation_model import DistillationModel
from hf_pcoh.features import FeatureExtractor, Features
from hf_pcoh.losses import TokenKDLoss
from hf_pcoh.losses.token_kd import IGNORE_INDEX, next_token_targets
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup_models import planned_task
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_OPT

SMALL_OPT = {"num_hidden_layers": 1, "hidden_size": 16, "word_embed_proj_dim": 16, "ffn_dim": 32}


def lm_config(output_dir: str, **fields) -> DistillationConfig:
    """A causal-LM run on one repeated batch of 16 WordNet glosses (so the curve shows learning only)."""
    defaults = dict(
        output_dir=output_dir, teacher_config=TINY_OPT, teacher_processor_name_or_path=MINILM, student_config=SMALL_OPT,
        dataset_name="wordnet_glosses", max_length=24, padding_side="left", task="causal_lm", max_train_samples=16,
        per_device_train_batch_size=16, max_steps=10, learning_rate=3e-3, logging_steps=1, save_strategy="no",
        evaluate_after_training=False, seed=0, disable_tqdm=True, report_to="none",
    )
    defaults.update(fields)
    return DistillationConfig(**defaults)


def logged(output_dir: str, key: str) -> list[float]:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    return [entry[key] for entry in history if key in entry]


# ---- the collator's token labels ------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_labels_are_the_input_ids_with_padding_and_the_prompt_left_out(padding_side, minilm_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.padding_side = padding_side
    collator = DistillationCollator(tokenizer, tokenizer, "text", "text", max_length=16, next_token_labels=True)
    batch = collator([{"text": "a short gloss"}, {"text": "a somewhat longer gloss of a word"}])
    ids, mask = batch["student_inputs"]["input_ids"], batch["student_inputs"]["attention_mask"]
    assert torch.equal(batch["labels"], ids.masked_fill(mask == 0, IGNORE_INDEX))
    assert (mask == 0).any()  # the short text was padded

    prompted = DistillationCollator(tokenizer, tokenizer, "completion", "text", max_length=16, next_token_labels=True,
                                    prompt_column="prompt")
    rows = [{"prompt": "define: dog", "completion": "a domestic animal"}, {"prompt": "define: a cat", "completion": "a pet"}]
    batch = prompted(rows)
    ids, mask, labels = batch["student_inputs"]["input_ids"], batch["student_inputs"]["attention_mask"], batch["labels"]
    assert "prompt_lengths" not in batch["student_inputs"]  # the model never sees it
    for row, (text_ids, text_mask, text_labels) in enumerate(zip(ids, mask, labels)):
        real, targets = text_ids[text_mask.bool()], text_labels[text_mask.bool()]
        prompt = tokenizer(rows[row]["prompt"])["input_ids"]
        completion = tokenizer(rows[row]["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        assert real.tolist() == prompt + completion  # the prompt, then the completion, closed by [SEP]
        assert targets.tolist() == [IGNORE_INDEX] * len(prompt) + completion  # only the completion is learned
        assert (text_labels[~text_mask.bool()] == IGNORE_INDEX).all()


# ---- which task a run is ---------------------------------------------------------------------------------------
def test_auto_task_is_causal_lm_for_a_causal_lm_student_with_token_objectives(tmp_path) -> None:
    checkpoint = tmp_path / "opt_lm"
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_OPT)).save_pretrained(checkpoint)
    assert json.loads((checkpoint / "config.json").read_text())["architectures"] == ["OPTForCausalLM"]

    def task(**fields) -> str:
        config = DistillationConfig(output_dir=str(tmp_path / "out"), student_model_name_or_path=str(checkpoint), **fields)
        return planned_task(config)

    assert task(logit_kd_weight=1.0) == task(ce_weight=1.0) == "causal_lm"
    assert task() == "features"  # no token objective: a feature-distilled encoder, as before
    assert task(ce_weight=1.0, label_column="label") == "features"  # class labels: a classification head
    assert task(ce_weight=1.0, task="features") == "features"
    built = DistillationConfig(output_dir=str(tmp_path / "out"), student_config=SMALL_OPT, ce_weight=1.0)
    assert planned_task(built) == "features"  # a student from a config names no architecture: say task causal_lm
    with pytest.raises(ValueError, match="task='lm' is not a task: use one of auto, features, causal_lm"):
        DistillationConfig(output_dir=str(tmp_path / "out"), task="lm")
    with pytest.raises(ValueError, match="task=causal_lm: teacher_cache='cache' cannot apply"):
        DistillationConfig(output_dir=str(tmp_path / "out"), task="causal_lm", logit_kd_weight=1.0, teacher_cache="cache")


# ---- a causal-LM object passed from Python -------------------------------------------------------------------
def glosses(rows: int) -> Dataset:
    return load_splits("wordnet_glosses")["train"].select(range(rows))


def test_a_causal_lm_object_with_logit_kd_averages_over_target_tokens_only(tmp_path, minilm_path) -> None:
    """Objects built in Python: task auto becomes causal_lm, and the KD is the mean over the tokens with a target,
    not over every position of the padded batch."""
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, **SMALL_OPT}))
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_OPT))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = DistillationConfig(output_dir=str(tmp_path), logit_kd_weight=1.0, logit_kd_temperature=1.0,
                                losses=["procrustes"], pooling="last_token", padding_side="left", max_length=24,
                                per_device_train_batch_size=8, max_steps=1, report_to="none")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=glosses(8),
                                  processing_class=tokenizer)
    assert trainer.model.causal_lm and trainer.distillation_collator.next_token_labels
    batch = trainer.distillation_collator([glosses(8)[index] for index in range(8)])
    inputs = batch["student_inputs"]
    assert (inputs["attention_mask"] == 0).any()
    with torch.no_grad():
        output = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
        student_logits = student(**inputs).logits.double()
        teacher_logits = teacher(**inputs).logits.double()
    valid = next_token_targets(batch["labels"], inputs["attention_mask"]) != IGNORE_INDEX
    per_position = torch.nn.functional.kl_div(student_logits.log_softmax(-1), teacher_logits.log_softmax(-1),
                                              log_target=True, reduction="none").sum(-1)
    expected = per_position[valid].mean()
    assert output.terms["token_kd"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert per_position.mean().item() != pytest.approx(expected.item(), rel=1e-3)  # the mean over every position


def test_vocabularies_that_differ_are_refused_before_training(tmp_path, minilm_path) -> None:
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, **SMALL_OPT}))
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, "vocab_size": 30600}))
    config = DistillationConfig(output_dir=str(tmp_path), task="causal_lm", logit_kd_weight=1.0, losses=["procrustes"],
                                pooling="last_token", max_length=24, per_device_train_batch_size=8, max_steps=1,
                                report_to="none")
    with pytest.raises(ValueError, match="the student's has 30522 tokens and the teacher's 30600"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=glosses(8),
                            processing_class=AutoTokenizer.from_pretrained(minilm_path))


def test_a_language_model_read_as_a_classifier_is_refused(tmp_path, minilm_path) -> None:
    """task: features with a causal LM's per-token logits would average its KD over padding: refused, naming the fix."""
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, **SMALL_OPT}))
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_OPT))
    config = DistillationConfig(output_dir=str(tmp_path), task="features", logit_kd_weight=1.0, losses=["procrustes"],
                                pooling="last_token", max_length=24, per_device_train_batch_size=8, max_steps=1,
                                report_to="none")
    with pytest.raises(ValueError, match="use --task causal_lm"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=glosses(8),
                            processing_class=AutoTokenizer.from_pretrained(minilm_path))


# ---- end to end ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a run of 12 steps with a 30k vocabulary, its evaluation and a generation: ~half a minute
def test_opt_student_trains_as_a_language_model_and_generates_after_saving(tmp_path, minilm_path) -> None:
    """CE + KD + token-level Procrustes (pooling none, masked) through the whole job: each term logged, the total
    falling; the saved folder is a plain causal LM that transformers' text-generation pipeline runs."""
    output_dir = str(tmp_path / "run")
    config = lm_config(output_dir, ce_weight=1.0, logit_kd_weight=1.0, logit_kd_divergence="jsd", logit_kd_beta=0.5,
                       losses=["procrustes"], pooling="none", max_steps=12, evaluate_after_training=True,
                       max_eval_samples=32)
    result = run_distillation(config)
    total = logged(output_dir, "loss")
    terms = {key: logged(output_dir, f"loss/{key}")
             for key in ("next_token_cross_entropy", "token_kd", "procrustes[slast>tlast]")}
    assert len(total) == 12 and all(np.isfinite(total)) and all(len(values) == 12 for values in terms.values())
    assert np.mean(total[-3:]) < np.mean(total[:3]), total
    assert terms["next_token_cross_entropy"][-1] < terms["next_token_cross_entropy"][0]
    assert terms["next_token_cross_entropy"][0] == pytest.approx(np.log(30522), rel=0.05)  # ~uniform at the start
    assert result.evaluation is not None and "teacher_neighbour_recall@10" in result.evaluation["student"]
    # measured as a language model too: a random teacher of the same vocabulary, so only sanity bounds here
    language_model = json.loads((tmp_path / "run" / "eval_results.json").read_text())["language_model"]
    assert language_model == result.evaluation["language_model"]
    assert 1.0 < language_model["student_perplexity"] and 1.0 < language_model["teacher_perplexity"] < 2 * 30522
    assert 0.0 <= language_model["top1_agreement"] <= 1.0 and language_model["kl_teacher_student"] >= 0.0
    assert 0.0 <= language_model["greedy_rouge_l"] <= 1.0 and language_model["num_texts"] == 32

    student = AutoModelForCausalLM.from_pretrained(output_dir)  # plain transformers, no hf_pcoh class
    assert type(student).__name__ == "OPTForCausalLM" and student.config.num_hidden_layers == 1
    generator = pipeline("text-generation", model=output_dir, tokenizer=output_dir)
    prompt_ids = generator.tokenizer("a domestic animal")["input_ids"]
    generated = generator("a domestic animal", min_new_tokens=5, max_new_tokens=5, do_sample=False, return_tensors=True)
    token_ids = generated[0]["generated_token_ids"]
    assert token_ids[:len(prompt_ids)] == prompt_ids and len(token_ids) == len(prompt_ids) + 5
    text = generator("a domestic animal", min_new_tokens=5, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("a domestic animal")


@pytest.mark.slow  # two short runs with a 30k vocabulary
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_logit_kd_alone_pulls_the_student_to_the_teacher(divergence, tmp_path, minilm_path) -> None:
    """KD over the vocabulary (no CE) with a pooled hidden-state loss (last_token): the KD term itself decreases."""
    output_dir = str(tmp_path / "run")
    run_distillation(lm_config(output_dir, logit_kd_weight=1.0, logit_kd_divergence=divergence,
                               logit_kd_temperature=1.0, losses=["procrustes"], pooling="last_token", max_steps=8,
                               teacher_config={**TINY_OPT, "init_std": 0.2}, learning_rate=1e-2,
                               lr_scheduler_type="constant"))
    kd = logged(output_dir, "loss/token_kd")
    assert len(kd) == 8 and all(later < earlier for earlier, later in zip(kd, kd[1:])) and kd[-1] < 0.85 * kd[0], kd
    assert logged(output_dir, "loss/procrustes[slast>tlast]")


# ---- data parallelism: a mean over the tokens of the global batch -------------------------------------------
VOCABULARY, TOKENS = 50, 7
LM_STUDENT = {"model_type": "opt", "vocab_size": VOCABULARY, "hidden_size": 16, "num_hidden_layers": 1, "ffn_dim": 32,
              "num_attention_heads": 2, "word_embed_proj_dim": 16, "max_position_embeddings": 16, "dropout": 0.0,
              "attention_dropout": 0.0, "pad_token_id": 0}
# Real tokens per row (right padding): the first process's rows are short, the second's long, so a mean of the two
# processes' means would weigh a token of the first three times as much as one of the second.
LM_LENGTHS = [2, 3, 2, 7, 6, 7]


def make_lm_model() -> DistillationModel:
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**LM_STUDENT))
    model = DistillationModel(student, [FeatureExtractor("last", "last_token")], {}, [], ce_weight=1.0,
                              logit_kd=TokenKDLoss(VOCABULARY, VOCABULARY, divergence="jsd", beta=0.3, temperature=2.0,
                                                   chunk_size=4),
                              logit_kd_weight=0.5)
    model.causal_lm = True
    return model


def make_lm_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and the teacher's logits ``[B, T, V]`` of the global batch."""
    generator = torch.Generator().manual_seed(1)
    attention_mask = (torch.arange(TOKENS)[None, :] < torch.tensor(LM_LENGTHS)[:, None]).long()
    input_ids = torch.randint(1, VOCABULARY, (len(LM_LENGTHS), TOKENS), generator=generator) * attention_mask
    return input_ids, attention_mask, 3.0 * torch.randn(len(LM_LENGTHS), TOKENS, VOCABULARY, generator=generator)


def lm_loss_and_gradients(model, input_ids, attention_mask, teacher_logits):
    """The total loss, its two terms and the gradients of one step on these rows (cut to their longest row)."""
    length = int(attention_mask.sum(dim=1).max())
    input_ids, attention_mask, teacher_logits = input_ids[:, :length], attention_mask[:, :length], teacher_logits[:, :length]
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    output = model(student_inputs={"input_ids": input_ids, "attention_mask": attention_mask},
                   teacher_features=[Features(torch.zeros(len(input_ids), 16))], labels=labels,
                   teacher_logits=teacher_logits)
    output.loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    values = torch.stack([output.loss.detach(), output.terms["next_token_cross_entropy"].detach(),
                          output.terms["token_kd"].detach()])
    return values, gradients


def lm_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(make_lm_model(), find_unused_parameters=True)
        rows = slice(rank * len(LM_LENGTHS) // world_size, (rank + 1) * len(LM_LENGTHS) // world_size)
        values, gradients = lm_loss_and_gradients(model, *(tensor[rows] for tensor in make_lm_batch()))
        dist.all_reduce(values)  # what the Trainer logs: the mean over processes
        if rank == 0:
            torch.save({"values": values / world_size, "gradients": gradients}, result_path)
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
def test_two_processes_equal_one_process_on_the_global_batch_token_weighted(tmp_path) -> None:
    """Next-token CE and token KD are means over the global batch's target tokens under data parallelism (the token
    count all-reduced), not means of each process's mean: loss, terms and gradients equal one process's."""
    from test_distributed import free_port

    reference, reference_gradients = lm_loss_and_gradients(make_lm_model(), *make_lm_batch())
    halves = [lm_loss_and_gradients(make_lm_model(), *(tensor[rows] for tensor in make_lm_batch()))[0]
              for rows in (slice(0, 3), slice(3, 6))]
    assert not torch.allclose((halves[0] + halves[1]) / 2, reference, rtol=1e-3)  # the mean of means differs
    result_path = str(tmp_path / "rank0.pt")
    context = mp.start_processes(lm_worker, args=(2, free_port(), result_path), nprocs=2, start_method="spawn",
                                 join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 120 s")
    result = torch.load(result_path)
    torch.testing.assert_close(result["values"], reference, atol=1e-5, rtol=1e-5)
    assert set(result["gradients"]) == set(reference_gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(result["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)

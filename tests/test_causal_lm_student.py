"""Decoder students as language models (task: causal_lm): token labels from the collator, the task resolved from the
student, next-token cross-entropy and logit KD over the vocabulary beside hidden-state losses, on tiny OPT models
built from configs and real WordNet glosses; the saved student generates text with plain transformers."""

from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
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
from hf_pcoh.token_accumulation import tokens_per_micro_batch
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

    # its card (written by the run) publishes it for text generation, and the card's own snippet generates
    card = ModelCard.load(os.path.join(output_dir, "README.md"))
    assert card.data.pipeline_tag == "text-generation"
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    generation = {result.metric_type: result.metric_value for result in results if result.task_type == "text-generation"}
    assert generation == {name: value for name, value in language_model.items() if not name.startswith("num_")}
    usage = re.search(r"```python\n(.*?)\n```", card.text, flags=re.S).group(1)
    assert 'pipeline("text-generation", model="<user>/run")' in usage
    namespace: dict = {}
    exec(usage.replace('"<user>/run"', repr(output_dir)), namespace)  # noqa: S102 - the card's own snippet
    assert namespace["outputs"][0]["generated_text"].strip()


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


def run_two_gloo_processes(worker, result_path: str, deadline_seconds: float = 120.0) -> None:
    """Spawn ``worker(rank, 2, port, result_path)`` twice; a hung collective fails the test instead of hanging."""
    from test_scale_out import run_two_processes

    run_two_processes(worker, result_path, deadline_seconds=deadline_seconds)


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
    run_two_gloo_processes(lm_worker, result_path)
    result = torch.load(result_path)
    torch.testing.assert_close(result["values"], reference, atol=1e-5, rtol=1e-5)
    assert set(result["gradients"]) == set(reference_gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(result["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


# ---- gradient accumulation: a mean over the tokens of the whole accumulated batch ------------------------------
# Rows of very different lengths, so that the two micro-batches of two rows hold different numbers of target tokens
# (and different padding): a mean of the two micro-batches' token means would weigh a token of the short one more.
ACCUMULATION_TEXTS = ["a dog", "an animal", "a small domesticated carnivorous mammal with soft fur and a short snout",
                      "any of various fishes that live in the sea and are caught for food or for sport by anglers"]
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0}


def accumulation_trainer(tmp_path, minilm_path, gradient_accumulation_steps: int, batch_size: int, **fields):
    """CE + token KD (and a pooled hidden-state loss of weight 0) on tiny OPT models without dropout, plain SGD."""
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, **SMALL_OPT, **NO_DROPOUT}))
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, **NO_DROPOUT}))
    config = DistillationConfig(
        output_dir=str(tmp_path / f"run{gradient_accumulation_steps}"), ce_weight=1.0, logit_kd_weight=0.5,
        logit_kd_divergence="jsd", logit_kd_beta=0.3, logit_kd_temperature=2.0, losses=["projected_mse"],
        loss_weights=[0.0], pooling="last_token", padding_side="right", max_length=24, task="causal_lm",
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
        max_steps=1, save_strategy="no", evaluate_after_training=False, report_to="none", disable_tqdm=True, seed=0,
        **fields)
    return DistillationTrainer(model=student, teacher_model=teacher, args=config,
                               train_dataset=Dataset.from_dict({"text": ACCUMULATION_TEXTS}),
                               processing_class=AutoTokenizer.from_pretrained(minilm_path))


def accumulated_gradients(trainer: DistillationTrainer, micro_batches: list[dict], count: bool = True):
    """The gradients after the Trainer's own training steps over ``micro_batches`` (one update's), its count of
    their target tokens handed over as the training loop hands it (or none), and the logged token terms."""
    trainer.model.zero_grad(set_to_none=True)
    samples, num_items_in_batch = trainer.get_batch_samples(iter(micro_batches), len(micro_batches),
                                                            trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(samples)  # what the training loop sets
    terms = []
    for batch in samples:
        trainer.training_step(trainer.model, batch, num_items_in_batch if count else None)
        terms.append(torch.stack([trainer.last_terms[name].detach()
                                  for name in ("next_token_cross_entropy", "token_kd")]))
    gradients = {name: parameter.grad.clone() for name, parameter in trainer.model.named_parameters()
                 if parameter.grad is not None}
    return gradients, num_items_in_batch, torch.stack(terms).mean(dim=0)


def test_accumulating_uneven_micro_batches_gives_the_gradient_of_one_batch(tmp_path, minilm_path) -> None:
    """Two micro-batches of different lengths (so different padding) accumulated through the Trainer's own training
    step, which divides each micro-batch's loss by 2: next-token CE and token KD have exactly the gradients (and the
    logged values) of one batch of the four rows, each target token weighted alike."""
    trainer = accumulation_trainer(tmp_path, minilm_path, gradient_accumulation_steps=2, batch_size=2)
    collate = trainer.distillation_collator
    rows = [{"text": text} for text in ACCUMULATION_TEXTS]
    halves = [collate(rows[:2]), collate(rows[2:])]
    whole = collate(rows)
    targets = [int((next_token_targets(batch["labels"], batch["student_inputs"]["attention_mask"]) != IGNORE_INDEX)
                   .sum()) for batch in (*halves, whole)]
    assert targets[0] * 3 < targets[1] and targets[0] + targets[1] == targets[2]  # uneven micro-batches
    assert halves[0]["labels"].shape[1] < whole["labels"].shape[1]  # padded to different lengths

    accumulated, counted, accumulated_terms = accumulated_gradients(trainer, halves)
    assert int(counted) == targets[2]  # the Trainer's num_items_in_batch: the target tokens of both micro-batches
    trainer.current_gradient_accumulation_steps = 1
    one_batch, _, one_batch_terms = accumulated_gradients(trainer, [whole])
    assert set(accumulated) == set(one_batch) and any(gradient.abs().sum() > 0 for gradient in one_batch.values())
    for name, gradient in one_batch.items():
        torch.testing.assert_close(accumulated[name], gradient, atol=1e-7, rtol=1e-4, msg=name)
    torch.testing.assert_close(accumulated_terms, one_batch_terms, atol=1e-6, rtol=1e-5)  # the logged token means

    # A mean per micro-batch (no count handed over) weighs a token of the short micro-batch more: not one batch's.
    per_micro_batch, _, _ = accumulated_gradients(trainer, halves, count=False)
    assert not all(torch.allclose(per_micro_batch[name], gradient, atol=1e-7, rtol=1e-3)
                   for name, gradient in one_batch.items())


@pytest.mark.slow  # two short trainings with a 30k vocabulary
def test_one_sgd_update_with_accumulation_equals_one_without(tmp_path, minilm_path) -> None:
    """``trainer.train()`` end to end (data loader, the Trainer's count, its scaling, the optimizer): one SGD update
    over 2 micro-batches of 2 rows moves the student exactly as one update over the batch of 4 rows."""
    students = []
    for accumulation, batch_size in ((2, 2), (1, 4)):
        trainer = accumulation_trainer(tmp_path, minilm_path, gradient_accumulation_steps=accumulation,
                                       batch_size=batch_size)
        before = {name: value.clone() for name, value in trainer.model.student.state_dict().items()}
        trainer.train()
        students.append({name: value - before[name] for name, value in trainer.model.student.state_dict().items()})
    accumulated, one_batch = students
    assert any(step.abs().sum() > 0 for step in one_batch.values())
    for name, step in one_batch.items():
        torch.testing.assert_close(accumulated[name], step, atol=1e-7, rtol=1e-4, msg=name)


def lm_accumulation_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    """Each process's three rows as two micro-batches (one row, then two), accumulated as the Trainer does: the
    token terms divided by the update's tokens per micro-batch and process, each loss by 2, DDP's sync at the last."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(make_lm_model(), find_unused_parameters=True)
        input_ids, attention_mask, teacher_logits = make_lm_batch()
        global_tokens = int(attention_mask.sum() - attention_mask.shape[0])  # right padding: length - 1 targets a row
        denominator = tokens_per_micro_batch(torch.tensor(global_tokens), micro_batches=2)
        first = rank * len(LM_LENGTHS) // world_size
        for step, rows in enumerate((slice(first, first + 1), slice(first + 1, first + 3))):
            length = int(attention_mask[rows].sum(dim=1).max())
            ids, mask = input_ids[rows, :length], attention_mask[rows, :length]
            with model.no_sync() if step == 0 else contextlib.nullcontext():
                output = model(student_inputs={"input_ids": ids, "attention_mask": mask},
                               teacher_features=[Features(torch.zeros(len(ids), 16))],
                               labels=ids.masked_fill(mask == 0, IGNORE_INDEX),
                               teacher_logits=teacher_logits[rows, :length],
                               target_tokens_per_micro_batch=denominator)
                (output.loss / 2).backward()
        if rank == 0:
            torch.save({name: p.grad.clone() for name, p in model.module.named_parameters() if p.grad is not None},
                       result_path)
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
def test_accumulation_on_two_processes_equals_one_process_on_the_global_batch(tmp_path) -> None:
    """Two processes, two uneven micro-batches each: after the accumulation and DDP's average, the gradients of
    next-token CE and token KD are those of one process on the six rows (the W of D = N / (k W))."""
    _, reference_gradients = lm_loss_and_gradients(make_lm_model(), *make_lm_batch())
    result_path = str(tmp_path / "rank0.pt")
    run_two_gloo_processes(lm_accumulation_worker, result_path)
    gradients = torch.load(result_path)
    assert set(gradients) == set(reference_gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)

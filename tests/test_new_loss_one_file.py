"""A new loss is one file: ``tests/similarity_preserving_loss.py`` (a class with ``@register_loss``), and no
other file edited, is a loss of every part of hf_pcoh: the contract tests, the config and its ``--help``, the
package exports, the citations, ``DistillationTrainer`` and ``SentenceTransformerTrainer``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

import hf_pcoh
from hf_pcoh import citations
from hf_pcoh.config import DistillationConfig
from hf_pcoh.losses import LOSSES, loss_options_help
from hf_pcoh.losses.external import LOSS_MODULES_VARIABLE, import_loss_module
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from loss_contract import CONTRACT_CHECKS
from tiny_models import MINILM, TINY_BERT

LOSS_FILE = Path(__file__).with_name("similarity_preserving_loss.py")
NAME = "similarity_preserving_test"
CLASS_NAME = "SimilarityPreservingTestLoss"
REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def new_loss():
    """The loss file imported as ``HF_PCOH_LOSS_MODULES`` imports it: its decorator registers it. Unregistered
    afterwards, so that the other tests' registry holds hf_pcoh's own losses only."""
    assert NAME not in LOSSES
    module = import_loss_module(str(LOSS_FILE))
    yield getattr(module, CLASS_NAME)
    LOSSES.pop(NAME, None)
    sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_the_new_loss_is_held_to_the_contract(new_loss, check) -> None:
    check(new_loss)


def test_the_new_loss_is_known_wherever_losses_are_named(new_loss, tmp_path) -> None:
    assert LOSSES[NAME] is new_loss
    assert getattr(hf_pcoh, CLASS_NAME) is getattr(hf_pcoh.losses, CLASS_NAME) is new_loss
    assert citations.loss_citation(NAME) == new_loss.citation and NAME in citations.loss_citations()
    assert f"{NAME}: weight_of_self_similarity (float, default 1.0)" in loss_options_help()
    config = DistillationConfig(output_dir=str(tmp_path), report_to="none", losses=[NAME, "procrustes"],
                                loss_kwargs={NAME: {"weight_of_self_similarity": 0.5}})
    assert config.loss_options(NAME) == {"weight_of_self_similarity": 0.5}
    with pytest.raises(ValueError, match=rf"loss_kwargs\['{NAME}'\]: unknown {NAME} option 'weight'"):
        DistillationConfig(output_dir=str(tmp_path), report_to="none", losses=[NAME], loss_kwargs={NAME: {"weight": 1.0}})
    with pytest.raises(ValueError, match=rf"loss_kwargs\['{NAME}'\]: weight_of_self_similarity=-1.0 must be >= 0"):
        DistillationConfig(output_dir=str(tmp_path), report_to="none", losses=[NAME],
                           loss_kwargs={NAME: {"weight_of_self_similarity": -1.0}})


def test_the_new_loss_trains_a_student_through_the_distillation_trainer(new_loss, tmp_path, minilm_path) -> None:
    """Tiny BERT teacher and student, one batch of 32 real WordNet glosses repeated: the loss falls, and its term
    is logged under its name."""
    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
        dataset_name="wordnet_glosses", pooling="mean", max_length=32, max_train_samples=32,
        per_device_train_batch_size=32, max_steps=15, learning_rate=3e-3, logging_steps=1, save_strategy="no",
        evaluate_after_training=False, losses=[NAME], seed=0, disable_tqdm=True, report_to="none",
    )
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 15 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert any(key.startswith(f"loss/{NAME}[") for key in trainer.state.log_history[0])


def test_the_new_loss_trains_inside_the_sentence_transformers_trainer(new_loss, tmp_path, minilm_path) -> None:
    """The sentence-transformers loss is made from the registry: named after the class, with the loss's options,
    its settings and paper for the model card; SentenceTransformerTrainer trains the student with it."""
    pytest.importorskip("sentence_transformers")
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    import hf_pcoh.sentence_transformers as hf_pcoh_st

    loss_class = getattr(hf_pcoh_st, CLASS_NAME)
    assert hf_pcoh_st.SENTENCE_TRANSFORMERS_LOSSES[NAME] is loss_class is hf_pcoh_st.sentence_transformers_loss(NAME)
    assert f"{loss_class.__module__}.{loss_class.__qualname__}" == f"hf_pcoh.sentence_transformers.{CLASS_NAME}"

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path / "student")
    student = SentenceTransformer(modules=[Transformer(str(tmp_path / "student"), max_seq_length=32),
                                           Pooling(32, "mean")], device="cpu")
    texts = [f"gloss number {index}: {'a small dog runs' if index % 2 else 'the theory of quarks'} {index}"
             for index in range(64)]
    labels = torch.randn(len(texts), 24, generator=torch.Generator().manual_seed(0)).numpy()
    train = Dataset.from_dict({"text": texts, "label": list(labels)})

    loss = loss_class(student, teacher_dim=24, weight_of_self_similarity=0.5)
    assert loss.get_config_dict() == {"teacher_dim": 24, "weight_of_self_similarity": 0.5}
    json.dumps(loss.get_config_dict())
    assert loss.citation == new_loss.citation
    before = [parameter.detach().clone() for parameter in student.parameters()]
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=8, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = SentenceTransformerTrainer(model=student, args=arguments, train_dataset=train, loss=loss)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert any(not torch.equal(old, new) for old, new in zip(before, student.parameters()))


@pytest.mark.slow  # a second process: seconds
def test_the_new_loss_appears_in_the_command_line_help() -> None:
    """``HF_PCOH_LOSS_MODULES`` names the file; ``scripts/distill.py --help`` then lists the loss and its options
    (the help is built from the registry when the config is imported, after the hook has run)."""
    environment = {**os.environ, LOSS_MODULES_VARIABLE: str(LOSS_FILE)}
    result = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "distill.py"), "--help"], cwd=REPOSITORY,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    assert f"{NAME}: weight_of_self_similarity (float, default 1.0)" in help_text

"""Evaluation during training reports the student's agreement with its teacher, so the best checkpoint can be
chosen by it (metric_for_best_model) and loaded at the end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

from hf_pcoh.config import DistillationConfig
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT

AGREEMENT = "eval_teacher_neighbour_recall@10"


@pytest.mark.parametrize("greater_is_better", [True, False])
def test_best_checkpoint_by_teacher_neighbour_recall_is_loaded_at_the_end(greater_is_better, tmp_path, minilm_path) -> None:
    """greater_is_better=False picks the checkpoint that agrees least (here the first): loading it at the end
    must then undo the later steps."""
    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
        dataset_name="wordnet_glosses", max_length=32, max_train_samples=64, max_eval_samples=40,
        per_device_train_batch_size=16, max_steps=6, learning_rate=3e-3, logging_steps=2,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True, metric_for_best_model=AGREEMENT, greater_is_better=greater_is_better,
        losses=["perception_coherence"], seed=0, disable_tqdm=True, report_to="none",
    )
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
                                  collator=setup.collator)
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if AGREEMENT in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 6]
    for entry in evaluations:
        assert 0.0 <= entry[AGREEMENT] <= 1.0
        assert -1.0 <= entry["eval_dissimilarity_spearman"] <= 1.0
        assert 0.0 <= entry["eval_knn_accuracy@10"] <= 1.0  # WordNet glosses have labels
        assert "eval_loss" in entry  # the loss terms are still there
    recalls = [entry[AGREEMENT] for entry in evaluations]
    assert recalls[-1] > recalls[0]  # the student learns to agree with its teacher
    choose = np.argmax if greater_is_better else np.argmin
    best_step, best_recall = evaluations[int(choose(recalls))]["step"], recalls[int(choose(recalls))]
    assert best_step == (6 if greater_is_better else 2)
    assert trainer.state.best_metric == pytest.approx(best_recall)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    # the student now holds the best checkpoint's weights, and measures as it did then
    best = AutoModel.from_pretrained(trainer.state.best_model_checkpoint).state_dict()
    for name, value in trainer.model.student.state_dict().items():
        torch.testing.assert_close(value, best[name], msg=name)
    assert trainer.evaluate()[AGREEMENT] == pytest.approx(best_recall)

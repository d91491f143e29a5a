"""DDP without the search for unused parameters: every trainable parameter gets a gradient at every step.

transformers would pass ``find_unused_parameters=True`` for ``DistillationModel`` (not a ``PreTrainedModel``); the
student's unread parameters (a pooler, the blocks after the layer read) and the heads' untrained ones are frozen
instead, and DDP runs with ``False`` unless something may still go unread (routed experts) or the user says.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_pcoh.config import DistillationConfig
from hf_pcoh.distillation_model import MAY_GO_UNREAD, freeze_unread_parameters, settle_find_unused_parameters
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.losses import build_loss
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationTrainer

from loss_contract import declared_training_holds
from test_scale_out import STUDENT, join_process_group, leave_process_group, run_config, run_two_processes

# A 3-block student read at hidden_states[1] (after its first block): blocks 1 and 2 and the pooler are unread.
# CosPress learns a map h of the teacher's features; projected MSE (weight 0) a projector that still gets gradients.
LAYER_CUT = dict(student_config=dict(STUDENT, num_hidden_layers=3), student_layers=[1], teacher_layers=[1],
                 losses=["cospress", "projected_mse"], loss_weights=[1.0, 0.0])
UNREAD = ("student.encoder.layer.1.", "student.encoder.layer.2.", "student.pooler.")


def build_trainer(config: DistillationConfig) -> DistillationTrainer:
    setup = build_setup(config)
    return DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                               train_dataset=setup.train_dataset, collator=setup.collator)


def test_unread_student_blocks_and_untrained_head_parameters_are_frozen_and_ddp_skips_the_search(tmp_path,
                                                                                                minilm_path) -> None:
    # CosPress without its similarity-map terms reads its map's output detached: the map never trains
    trainer = build_trainer(run_config(str(tmp_path / "cut"), loss_kwargs={"cospress": {"lambda_global": 0.0}},
                                       **LAYER_CUT))
    frozen = {name for name, parameter in trainer.model.named_parameters() if not parameter.requires_grad}
    unread = {name for name, _ in trainer.model.named_parameters() if name.startswith(UNREAD)}
    cospress_map = {name for name, _ in trainer.model.named_parameters() if name.startswith("heads.pair0_cospress.")}
    assert frozen == unread | cospress_map
    # the zero-weight loss's projector is trained (with zero gradients), so it stays trainable
    projector = [p for name, p in trainer.model.named_parameters() if name.startswith("heads.pair0_projected")]
    assert projector and all(p.requires_grad for p in projector)
    assert MAY_GO_UNREAD[trainer.model.student] == []
    assert trainer.accelerator.ddp_handler.find_unused_parameters is False
    # the user's explicit value wins
    explicit = build_trainer(run_config(str(tmp_path / "explicit"), ddp_find_unused_parameters=True, **LAYER_CUT))
    assert explicit.accelerator.ddp_handler.find_unused_parameters is True
    assert {name for name, p in explicit.model.named_parameters() if not p.requires_grad} == unread


@pytest.mark.parametrize("options, tokens", [
    ({"lambda_global": 0.0}, False),  # h trains only through the global map: frozen
    ({"lambda_global": 0.0}, True),  # on tokens the local map still trains it
    ({"lambda_global": 0.0, "lambda_local": 0.0}, True),
    ({"lambda_token": 0.0}, False),  # nothing reaches the student
    ({"lambda_token": 0.0, "lambda_feature": 0.0}, True),
    ({}, True),
])
def test_cospress_declares_which_of_its_terms_train_its_map_and_the_student(options: dict, tokens: bool) -> None:
    declared_training_holds(build_loss("cospress", student_dim=5, teacher_dim=7, **options).double(), tokens)


class RoutedBlock(nn.Module):
    """A block whose router sends every row to its first expert: the second gets no gradient on these rows."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Linear(4, 4)
        self.experts = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attention(hidden)
        return hidden + self.experts[0](hidden)


class RoutedStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([RoutedBlock(), RoutedBlock()])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = True) -> SimpleNamespace:
        hidden_states = [self.embeddings(input_ids)]
        for block in self.layers:
            hidden_states.append(block(hidden_states[-1]))
        return SimpleNamespace(hidden_states=tuple(hidden_states), last_hidden_state=hidden_states[-1])


def test_an_expert_the_probe_rows_did_not_reach_stays_trainable_and_keeps_the_search_on() -> None:
    student = RoutedStudent()
    inputs = {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    frozen = freeze_unread_parameters(student, inputs, [FeatureExtractor(1, "mean")], logits=False)
    # the block after the layer read is frozen whole; in the block read, the expert no row reached is left alone
    assert frozen == [name for name, _ in student.named_parameters() if name.startswith("layers.1.")]
    assert student.layers[0].experts[1].weight.requires_grad
    assert "layers.0.experts.1.weight" in MAY_GO_UNREAD[student][0]
    handler = SimpleNamespace(find_unused_parameters=True)
    model = SimpleNamespace(student=student)
    args = SimpleNamespace(ddp_find_unused_parameters=None)
    assert settle_find_unused_parameters(SimpleNamespace(ddp_handler=handler), args, model, []) is True
    MAY_GO_UNREAD[student] = []
    assert settle_find_unused_parameters(SimpleNamespace(ddp_handler=handler), args, model, []) is False
    assert handler.find_unused_parameters is False
    # a head the probe could not check keeps it on
    assert settle_find_unused_parameters(SimpleNamespace(ddp_handler=handler), args, model, ["loss x"]) is True


def ddp_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """Two DDP (gloo) processes train the layer-cut student with CosPress and a zero-weight projected MSE."""
    from torch.nn.parallel import DistributedDataParallel

    join_process_group(rank, world_size, port)
    try:
        trainer = build_trainer(run_config(output_dir, **LAYER_CUT))
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        trainer.train()
        wrapped = trainer.model_wrapped
        record = {
            "ddp": isinstance(wrapped, DistributedDataParallel),
            "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
            "global_step": trainer.state.global_step,
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
            "before": before,
            "after": {name: p.detach().clone() for name, p in trainer.model.named_parameters()},
            "trainable": [name for name, p in trainer.model.named_parameters() if p.requires_grad],
        }
        torch.save(record, os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        leave_process_group()


@pytest.mark.slow  # two gloo processes
def test_two_ddp_processes_train_a_layer_cut_student_with_learned_heads_without_the_search(tmp_path,
                                                                                       minilm_path) -> None:
    run_two_processes(ddp_worker, str(tmp_path))
    records = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for record in records:
        assert record["ddp"] and record["find_unused_parameters"] is False
        assert record["global_step"] == 3 and len(record["losses"]) == 3
        assert all(torch.isfinite(torch.tensor(record["losses"])))
        for name, tensor in record["before"].items():
            changed = not torch.equal(record["after"][name], tensor)
            # what is trained moved (CosPress's map included); the unread blocks stay as they were
            assert changed == (name in record["trainable"] and not name.startswith("heads.pair0_projected")), name
    for name, tensor in records[0]["after"].items():  # both processes took the same steps
        torch.testing.assert_close(records[1]["after"][name], tensor, rtol=0, atol=0, msg=name)

"""A teacher too large for one device, on 2 gloo processes under FSDP2: sharded only as deep as the run reads it
(the blocks after the deepest layer read never wrapped, moved or run), with the whole teacher's features; and its
evaluation embeddings computed sharded, every process its share of the rows, equal to one process's."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from hf_pcoh.config import DistillationConfig

from test_scale_out import enable_fsdp_on_cpu, join_process_group, leave_process_group, run_config, run_two_processes
from tiny_models import TINY_BERT, TINY_OPT

# (teacher config, teacher layer read, blocks run): BERT read at -3 of 5 hidden states (index 2), OPT at 1 of 4
TEACHERS = {
    "bert": ({**TINY_BERT, "num_hidden_layers": 4}, "-3", 2),
    "opt": ({**TINY_OPT, "num_hidden_layers": 3}, "1", 1),
}
EMBEDDED_ROWS = 13  # odd: the second process's share is padded with a copy of a row
PER_BATCH = 8


def teacher_config(output_dir: str, name: str, **fields) -> DistillationConfig:
    config, layer, _ = TEACHERS[name]
    return run_config(output_dir, teacher_config=config, teacher_layers=[layer], student_layers=["last"],
                      losses=["projected_mse"], **fields)


def cut_teacher_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """For each teacher: the trainer's sharded teacher, its blocks' calls and its features (a training step's, the
    per-evaluation embedding's, the sharded final embedding's) beside the whole teacher's, on every process."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from hf_pcoh.embedding import embed
    from hf_pcoh.frozen_teacher import as_read_from_whole, block_list, uncut_teacher
    from hf_pcoh.setup import build_setup
    from hf_pcoh.sharded_embedding import embed_sharded
    from hf_pcoh.trainer import DistillationTrainer

    join_process_group(rank, world_size, port)
    enable_fsdp_on_cpu()
    try:
        record = {}
        for name in TEACHERS:
            config = teacher_config(os.path.join(output_dir, name), name, fsdp=True, fsdp_config={"version": 2})
            setup = build_setup(config)
            whole = copy.deepcopy(setup.teacher).eval()  # the uncut teacher, run whole on this process
            trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                          train_dataset=setup.train_dataset, collator=setup.collator,
                                          readout=setup.readout)
            blocks = setup.teacher.get_submodule(block_list(whole)[0])  # every block of the teacher the setup loaded
            calls = [0] * len(blocks)
            for index, block in enumerate(blocks):
                block.register_forward_hook(lambda *args, index=index: calls.__setitem__(index, calls[index] + 1))
            # a training step's teacher features
            batch = setup.collator([setup.train_dataset[index] for index in range(PER_BATCH)])
            (features,), _ = trainer.teacher_forward(batch)
            inputs = batch.get("teacher_inputs", batch["student_inputs"])
            extractor = setup.readout.teacher_extractors[0]
            with torch.no_grad():
                expected = extractor(whole(**inputs, output_hidden_states=True), inputs.get("attention_mask")).values
            # the embedding of each evaluation during training (embedding_metrics), then the final one, sharded
            texts = list(setup.eval_dataset[setup.collator.input_column][:EMBEDDED_ROWS])
            options = dict(modality=setup.modality, batch_size=4, max_length=config.max_length)
            embedding = setup.readout.teacher_embedding
            reference = embed(whole, setup.collator.teacher_processor, texts, embedding, **options).values
            during = embed(trainer.teacher, setup.collator.teacher_processor, texts,
                           as_read_from_whole(trainer.teacher, embedding), **options).values
            final = embed_sharded(trainer.teacher, setup.collator.teacher_processor, texts, embedding, **options)
            parameters = list(trainer.teacher.parameters())
            record[name] = {
                "calls": calls,
                "wrapped": [isinstance(block, FSDPModule) for block in blocks],
                "sharded_parameters": [isinstance(parameter, DTensor) for parameter in parameters],
                "uncut_is_the_setup_teacher": uncut_teacher(trainer.teacher) is setup.teacher,
                "feature_difference": (features.values - expected).abs().max().item(),
                "during_difference": float(abs(during - reference).max()),
                "final_difference": None if final is None else float(abs(final.values - reference).max()),
                "final_rows": None if final is None else len(final.values),
            }
        with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as stream:
            json.dump(record, stream)
    finally:
        leave_process_group()



@pytest.mark.slow  # two gloo processes
def test_an_fsdp2_teacher_read_below_its_last_layer_is_sharded_and_run_only_that_deep(tmp_path, minilm_path) -> None:
    run_two_processes(cut_teacher_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, record in enumerate(ranks):
        for name, (config, _, depth) in TEACHERS.items():
            measured = record[name]
            later = config["num_hidden_layers"] - depth
            # the blocks after the deepest layer read are not wrapped and never run; those before are sharded units
            assert measured["wrapped"] == [True] * depth + [False] * later, name
            assert all(measured["calls"][:depth]) and measured["calls"][depth:] == [0] * later, name
            assert all(measured["sharded_parameters"]) and measured["uncut_is_the_setup_teacher"], name
            # the whole teacher's features: a step's, each evaluation's, the final (sharded) embedding's
            assert measured["feature_difference"] <= 1e-5, name
            assert measured["during_difference"] <= 1e-5, name
            if rank == 0:
                assert measured["final_rows"] == EMBEDDED_ROWS and measured["final_difference"] <= 1e-5, name
            else:
                assert measured["final_rows"] is None, name

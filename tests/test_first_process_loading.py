"""Under FSDP2 with ``cpu_ram_efficient_loading`` only the first process reads the models' weights.

The other processes build teacher and student on the meta device from their configs, laid out as the first's, and
FSDP2 fills their shards from the first process's weights: they open no weight file, and the run trains and saves the
student that one process with the doubled batch does.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_pcoh.config import DistillationConfig
from hf_pcoh.first_process_loading import fsdp2_loads_from_first_process

from test_scale_out import (
    PER_PROCESS_BATCH,
    STUDENT,
    enable_fsdp_on_cpu,
    join_process_group,
    leave_process_group,
    loss_logs,
    run_config,
    run_two_processes,
    train,
)
from tiny_models import TINY_BERT

LOW_MEMORY_FSDP = {"version": 2, "cpu_ram_efficient_loading": True}


def save_checkpoints(folder) -> dict[str, str]:
    """A tiny BERT teacher and student, saved as checkpoints."""
    torch.manual_seed(0)
    values = dict(TINY_BERT)
    teacher = AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    student_values = dict(TINY_BERT, **STUDENT)
    student = AutoModel.from_config(AutoConfig.for_model(student_values.pop("model_type"), **student_values))
    paths = {"teacher_model_name_or_path": str(folder / "teacher"), "student_model_name_or_path": str(folder / "student")}
    teacher.save_pretrained(paths["teacher_model_name_or_path"])
    student.save_pretrained(paths["student_model_name_or_path"])
    return paths


def checkpoint_config(output_dir: str, paths: dict[str, str], **fields) -> DistillationConfig:
    return run_config(output_dir, teacher_config=None, student_config=None, **paths, **fields)


def loading_worker(rank: int, world_size: int, port: int, output_dir: str, paths: dict[str, str]) -> None:
    import transformers.modeling_utils as modeling_utils

    from hf_pcoh.pipeline import build_setup, save_sharded_student

    join_process_group(rank, world_size, port)
    enable_fsdp_on_cpu()
    opened = []
    safe_open = modeling_utils.safe_open

    def counted_safe_open(filename, *args, **kwargs):
        opened.append(os.path.basename(filename))
        return safe_open(filename, *args, **kwargs)

    modeling_utils.safe_open = counted_safe_open  # how from_pretrained reads a safetensors file
    try:
        config = checkpoint_config(output_dir, paths, fsdp=True, fsdp_config=dict(LOW_MEMORY_FSDP))
        built = {}

        def note_models(setup) -> None:
            built.update({role: {"meta": all(p.is_meta for p in model.parameters()),
                                 "dtypes": sorted({str(p.dtype) for p in model.parameters()})}
                          for role, model in (("teacher", setup.teacher), ("student", setup.student))})
            built["files_opened"] = list(opened)

        trainer, setup = train(config, note_models)
        save_sharded_student(setup, trainer)
        with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as stream:
            json.dump({"built": built, "logs": loss_logs(trainer)}, stream)
    finally:
        leave_process_group()


def test_fsdp2_with_cpu_ram_efficient_loading_is_recognised_from_the_config_and_from_accelerate_launch(
        tmp_path, monkeypatch) -> None:
    config = DistillationConfig(output_dir=str(tmp_path), teacher_config=TINY_BERT, student_config=STUDENT,
                                report_to=[])
    assert not fsdp2_loads_from_first_process(config)
    config.fsdp, config.fsdp_config = True, dict(LOW_MEMORY_FSDP)
    assert fsdp2_loads_from_first_process(config)
    config.fsdp_config = {"version": 2, "cpu_ram_efficient_loading": "false"}
    assert not fsdp2_loads_from_first_process(config)
    config.fsdp = False  # accelerate launch --config_file scripts/accelerate/fsdp.yaml sets these variables
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert fsdp2_loads_from_first_process(config)
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert not fsdp2_loads_from_first_process(config)


@pytest.mark.slow  # two gloo processes
def test_only_the_first_fsdp2_process_reads_the_weights_and_the_student_trains_as_on_one_process(tmp_path,
                                                                                                minilm_path) -> None:
    from safetensors.torch import load_file

    from hf_pcoh.pipeline import save_student

    paths = save_checkpoints(tmp_path / "checkpoints")
    reference, _ = train(checkpoint_config(str(tmp_path / "one"), paths,
                                           per_device_train_batch_size=2 * PER_PROCESS_BATCH))
    save_student(reference)
    run_two_processes(loading_worker, str(tmp_path), paths)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    first, other = ranks[0]["built"], ranks[1]["built"]
    # the first process read both checkpoints; the other opened no weight file and held no weight before sharding
    assert sorted(first["files_opened"]) == ["model.safetensors", "model.safetensors"]
    assert other["files_opened"] == []
    assert not first["teacher"]["meta"] and not first["student"]["meta"]
    assert other["teacher"]["meta"] and other["student"]["meta"]
    for role in ("teacher", "student"):
        assert other[role]["dtypes"] == first[role]["dtypes"]
    reference_logs = loss_logs(reference)
    for record in ranks:
        assert [entry["loss"] for entry in record["logs"]] == pytest.approx(
            [entry["loss"] for entry in reference_logs], rel=1e-4, abs=1e-6)
    saved, expected = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

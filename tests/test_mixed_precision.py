"""bf16 mixed precision: training through the Trainer's own flag, float32 losses, and the multi-GPU launch configs."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, TrainerCallback

from hf_pcoh.config import DistillationConfig
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.losses import LOSSES, build_loss
from hf_pcoh.losses.perception_coherence import rank_disagreement, soft_ranks_reference
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationModel, DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_OPT, TINY_VIT

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "accelerate"


class StudentGradients(TrainerCallback):
    """Before every optimiser step: are the student's gradients finite, and how large are they?"""

    def __init__(self) -> None:
        self.all_finite: list[bool] = []
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        grads = [parameter.grad for parameter in model.student.parameters() if parameter.grad is not None]
        self.all_finite.append(all(bool(torch.isfinite(grad).all()) for grad in grads))
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([grad.float().norm() for grad in grads]))))


def test_bf16_training_on_cpu_learns_with_finite_student_gradients(tmp_path, minilm_path) -> None:
    """DistillationConfig(bf16=True) on CPU: the student runs in bf16, learns, and its fp32 grads stay finite."""
    config = DistillationConfig(
        output_dir=str(tmp_path), bf16=True, use_cpu=True,
        teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
        dataset_name="wordnet_glosses", pooling="mean", max_length=32,
        losses=["perception_coherence", "projected_mse"],
        max_train_samples=32, per_device_train_batch_size=32, max_steps=20, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", evaluate_after_training=False, seed=0, disable_tqdm=True, report_to="none",
    )
    setup = build_setup(config)
    gradients = StudentGradients()
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator, callbacks=[gradients])
    student_matmul_dtypes: set[torch.dtype] = set()
    hook = setup.student.encoder.layer[0].output.dense.register_forward_hook(
        lambda module, inputs, output: student_matmul_dtypes.add(output.dtype)
    )
    trainer.train()
    hook.remove()

    assert student_matmul_dtypes == {torch.bfloat16}  # the flag really switched autocast on, on CPU
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert len(gradients.all_finite) == 20 and all(gradients.all_finite)
    assert all(norm > 0 for norm in gradients.norms)  # gradients reach the student at every step
    # the master weights (and so the saved student) stay float32
    assert {parameter.dtype for parameter in setup.student.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_computes_in_float32_under_bf16_autocast(name) -> None:
    """Features as a bf16 model gives them, inside bf16 autocast: a float32 result equal to the float32 computation."""
    generator = torch.Generator().manual_seed(0)
    student_dim, teacher_dim = 32, (32 if LOSSES[name].equal_widths else 48)
    student = torch.randn(64, student_dim, generator=generator).bfloat16()
    teacher = torch.randn(64, teacher_dim, generator=generator).bfloat16()
    torch.manual_seed(1)
    loss = build_loss(name, student_dim=student_dim, teacher_dim=teacher_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(student, teacher)
    full = loss(student.float(), teacher.float())
    assert mixed.dtype == torch.float32
    assert torch.isfinite(mixed)
    torch.testing.assert_close(mixed, full, rtol=1e-3, atol=1e-6)


def test_perception_coherence_ranks_stay_float32_under_autocast() -> None:
    """The dissimilarities and soft ranks are float32 under bf16 autocast; in bf16 they would be visibly off."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(64, 32, generator=generator).bfloat16()
    teacher = torch.randn(64, 48, generator=generator).bfloat16()
    loss = build_loss("perception_coherence", student_dim=32, teacher_dim=48)
    references = torch.arange(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student_d = loss.scaled_dissimilarities(student, loss.dissimilarity)
        teacher_d = loss.scaled_dissimilarities(teacher, loss.teacher_dissimilarity)
        student_ranks = soft_ranks_reference(student_d, references, loss.temperature)
        value = loss(student, teacher)
    assert student_d.dtype == teacher_d.dtype == student_ranks.dtype == torch.float32
    full = loss(student.float(), teacher.float())
    # The tolerance of the test above is meaningful: the same formula evaluated in bf16 misses it.
    bf16_ranks = [soft_ranks_reference(d.bfloat16(), references, loss.temperature) for d in (student_d, teacher_d)]
    in_bf16 = rank_disagreement(*bf16_ranks, references)
    assert abs(float(value) - float(full)) <= 1e-3 * float(full) < abs(float(in_bf16) - float(full))


# ---- the accelerate launch configs --------------------------------------------------------------------
def launch_environment(config_file: Path) -> tuple[dict[str, str], object]:
    """The environment ``accelerate launch --config_file FILE scripts/distill.py`` gives each process.

    Computed by accelerate's own launch code on 8 (pretended) GPUs; nothing is started.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "scripts/distill.py", "minilm-wordnet"])
    with mock.patch("torch.cuda.device_count", return_value=8), mock.patch("torch.cuda.is_available", return_value=True):
        args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1], args
    return prepare_multi_gpu_env(args), args


@pytest.mark.parametrize("name, distributed_type", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"),
                                                     ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_config_parses_as_8_process_bf16_launch(name, distributed_type) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config_file = ACCELERATE_CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(config_file))  # raises on any key accelerate does not know
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == distributed_type
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (8, 1, "bf16")
    environment, args = launch_environment(config_file)
    assert args.num_processes == 8
    assert environment["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize("student_config", [TINY_BERT, TINY_VIT, TINY_OPT], ids=["bert", "vit", "opt"])
def test_fsdp_config_shards_fully_wraps_student_blocks_and_saves_a_full_state_dict(student_config: dict) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    environment, _ = launch_environment(ACCELERATE_CONFIGS / "fsdp.yaml")
    # Built from the environment the launcher gives each process, as on the GPU node; FSDP2 looks up no device here
    # (sync_module_states is an FSDP1 setting), so nothing pretends a GPU is there.
    with mock.patch.dict(os.environ, environment):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # full shard
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    # Rank 0 alone reads the weights: FSDP broadcasts them to student and teacher (both sharded by hf_pcoh).
    assert plugin.cpu_ram_efficient_loading is True
    # No class named in the config: the transformer-based policy takes the student's blocks, whatever the
    # architecture, from the trainable DistillationModel's _no_split_modules.
    student = AutoModel.from_config(AutoConfig.for_model(**student_config))
    plugin.set_auto_wrap_policy(DistillationModel(student, [FeatureExtractor()], {}, []))
    assert plugin.auto_wrap_policy.func is transformer_auto_wrap_policy
    wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
    block = {"bert": "BertLayer", "vit": "ViTLayer", "opt": "OPTDecoderLayer"}[student_config["model_type"]]
    assert block in wrapped and wrapped == set(student._no_split_modules)


def test_deepspeed_zero3_config_saves_16bit_weights_and_loads_models_whole() -> None:
    from accelerate.utils import DeepSpeedPlugin

    environment, _ = launch_environment(ACCELERATE_CONFIGS / "deepspeed_zero3.yaml")
    with mock.patch.dict(os.environ, environment):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 3 and zero["stage"] == 3
    # the saved student is gathered whole; models load whole, the setup runs the teacher before training
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.zero3_init_flag is False
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"


def test_deepspeed_config_is_zero2_and_leaves_accumulation_and_clipping_to_the_trainer() -> None:
    from accelerate.utils import DeepSpeedPlugin

    environment, _ = launch_environment(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml")
    with mock.patch.dict(os.environ, environment):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 2 and zero["stage"] == 2
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    # "auto": filled from the Trainer's --gradient_accumulation_steps / --max_grad_norm / batch size
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"

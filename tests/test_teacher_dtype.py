"""teacher_dtype and teacher_model_init_kwargs: the teacher is held in the dtype asked for (a float32 checkpoint is
not kept in float32 under bf16 training), its from_pretrained takes the user's arguments, bad values are refused in
one line naming the field; the student keeps training in float32."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertModel

from hf_pcoh.cli import distill_main
from hf_pcoh.config import DistillationConfig
from hf_pcoh.setup import build_setup
from hf_pcoh.setup_models import build_teacher
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_VIT


@pytest.fixture(scope="module")
def float32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A teacher checkpoint saved in float32 (safetensors)."""
    folder = tmp_path_factory.mktemp("float32_teacher")
    config = {key: value for key, value in TINY_BERT.items() if key != "model_type"}
    torch.manual_seed(0)
    BertModel(BertModel.config_class(**config)).save_pretrained(folder)
    return str(folder)


def config_for(tmp_path, **fields) -> DistillationConfig:
    values = dict(output_dir=str(tmp_path), teacher_processor_name_or_path=MINILM, student_config={"num_hidden_layers": 1},
                  dataset_name="wordnet_glosses", max_train_samples=32, per_device_train_batch_size=16, max_steps=2,
                  max_length=32, losses=["perception_coherence", "projected_mse"], save_strategy="no",
                  evaluate_after_training=False, disable_tqdm=True, report_to="none", seed=0)
    values.update(fields)
    return DistillationConfig(**values)


def dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {parameter.dtype for parameter in model.parameters()}


@pytest.mark.parametrize("name, dtype", [("auto", torch.float32), ("float32", torch.float32),
                                         ("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_a_loaded_teacher_takes_the_dtype_asked_for(tmp_path, float32_checkpoint, name, dtype) -> None:
    teacher = build_teacher(config_for(tmp_path, teacher_model_name_or_path=float32_checkpoint, teacher_dtype=name), None)
    assert dtypes(teacher) == {dtype}  # auto: the checkpoint's own (float32 here)


def test_a_bfloat16_teacher_trains_a_float32_student_and_built_teachers_follow_too(tmp_path, minilm_path,
                                                                                   float32_checkpoint) -> None:
    config = config_for(tmp_path, teacher_model_name_or_path=float32_checkpoint, teacher_dtype="bfloat16")
    setup = build_setup(config)
    assert dtypes(setup.teacher) == {torch.bfloat16}
    assert dtypes(setup.student) == {torch.float32}  # built from the teacher's config, not in its dtype
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator, readout=setup.readout)
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))  # bfloat16 features, float32 losses
    built = build_teacher(config_for(tmp_path, teacher_config=TINY_BERT, teacher_dtype="bfloat16"), None)
    assert dtypes(built) == {torch.bfloat16}
    # the trainer loading the teacher from a folder applies it too
    trainer = DistillationTrainer(model=setup.student, teacher_model=float32_checkpoint, args=config,
                                  train_dataset=setup.train_dataset)
    assert dtypes(trainer.teacher) == {torch.bfloat16}


def test_a_bfloat16_vision_teacher_caches_its_features(tmp_path, digits_processor_dir) -> None:
    """Images reach a bfloat16 teacher in its dtype, in the cache pass as in a training step."""
    config = config_for(tmp_path / "run", teacher_config=TINY_VIT, teacher_dtype="bfloat16", student_config=TINY_VIT,
                        teacher_processor_name_or_path=digits_processor_dir, dataset_name="digits", pooling="mean",
                        losses=["projected_mse"], teacher_cache=str(tmp_path / "cache"))
    setup = build_setup(config)
    assert len(setup.train_dataset["teacher_features_0"][0]) == TINY_VIT["hidden_size"]


def test_teacher_model_init_kwargs_reach_from_pretrained(tmp_path, float32_checkpoint) -> None:
    config = config_for(tmp_path, teacher_model_name_or_path=float32_checkpoint,
                        teacher_model_init_kwargs='{"attn_implementation": "eager", "dtype": "bfloat16"}')
    assert config.teacher_model_init_kwargs == {"attn_implementation": "eager", "dtype": "bfloat16"}  # JSON parsed
    teacher = build_teacher(config, None)
    assert teacher.config._attn_implementation == "eager" and dtypes(teacher) == {torch.bfloat16}


@pytest.mark.parametrize("fields, message", [
    ({"teacher_dtype": "bf16"}, "teacher_dtype='bf16' is not a dtype hf_pcoh loads a teacher in: use one of auto, "
                                "float32, bfloat16, float16"),
    ({"teacher_dtype": "float16", "teacher_model_init_kwargs": {"torch_dtype": "bfloat16"}},
     "teacher_dtype='float16' and teacher_model_init_kwargs['torch_dtype']='bfloat16' both set the teacher's dtype"),
    ({"teacher_model_init_kwargs": {"trust_remote_code": True}}, "use --trust_remote_code"),
    ({"teacher_model_init_kwargs": "[1, 2]"}, "teacher_model_init_kwargs must be a JSON object"),
])
def test_bad_values_are_refused_in_one_line_naming_the_field(tmp_path, fields, message) -> None:
    with pytest.raises(ValueError) as raised:
        config_for(tmp_path, teacher_model_name_or_path="some/teacher", **fields)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_command_line_takes_the_options_and_refuses_a_bad_dtype_in_one_line(tmp_path, capsys) -> None:
    from hf_pcoh.cli import parse_distillation_args

    argv = ["opt-wordnet", "--teacher_config", json.dumps(TINY_BERT), "--teacher_processor_name_or_path", MINILM,
            "--student_config", '{"num_hidden_layers": 1}', "--output_dir", str(tmp_path / "run")]
    assert parse_distillation_args([*argv, "--teacher_dtype", "bfloat16"]).teacher_dtype == "bfloat16"
    assert DistillationConfig(output_dir=str(tmp_path), teacher_config=TINY_BERT, teacher_dtype=torch.float16,
                              report_to="none").teacher_dtype == "float16"  # a torch.dtype, by its name
    assert distill_main([*argv, "--teacher_dtype", "half"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "teacher_dtype='half'" in errors[0]
    assert not (tmp_path / "run").exists()

"""The main job as a function: data -> teacher and student -> train -> save -> measure.

``scripts/distill.py`` only parses a recipe into a :class:`DistillationConfig` and calls
:func:`run_distillation`; everything a test needs to reach lives here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import PreTrainedModel, set_seed

from . import __version__
from .artifacts import (
    DISTILLATION_CONFIG_FILE,
    EVAL_RESULTS_FILE,
    LAYER_QUALITY_PLOT_FILE,
    LAYER_QUALITY_TABLE_FILE,
)
from .auto_layers import choose_teacher_layers
from .collator import DistillationCollator, process
from .config import DistillationConfig
from .data import load_splits
from .features import FeatureExtractor
from .hub import publish, write_model_card
from .probe_head import fit_head_by_probe, head_accuracy
from .models import (
    build_from_config,
    config_from_dict,
    count_parameters,
    init_student_from_teacher,
    is_vision_config,
    load_pretrained,
    load_processor,
)

from .student_report import compare_teacher_and_student
from .teacher_cache import add_cached_teacher_features
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)



@dataclass
class DistillationSetup:
    """Everything a :class:`DistillationTrainer` needs, built from a config."""

    config: DistillationConfig
    teacher: PreTrainedModel
    student: PreTrainedModel
    collator: DistillationCollator
    train_dataset: Dataset
    eval_dataset: Dataset | None
    modality: str
    extra: dict[str, Any] = field(default_factory=dict)


def needs_logits(config: DistillationConfig) -> tuple[bool, bool]:
    """(teacher needs logits, student needs logits)."""
    return config.logit_kd_weight > 0, config.ce_weight > 0 or config.logit_kd_weight > 0 or config.fit_head_by_probe


def choose_input_column(config: DistillationConfig, columns: list[str], vision: bool) -> str:
    given = config.image_column if vision else config.text_column
    option = "image_column" if vision else "text_column"
    if given is not None:
        if given not in columns:
            raise ValueError(f"{option}={given!r} is not a column of {config.dataset_name} (columns: {columns})")
        return given
    for candidate in (("image", "img", "pixel_values") if vision else ("text", "sentence", "content")):
        if candidate in columns:
            return candidate
    raise ValueError(f"{config.dataset_name} has no obvious {'image' if vision else 'text'} column (columns: {columns}); "
                     f"set --{option}")


def prepare_splits(config: DistillationConfig, splits: DatasetDict, vision: bool) -> tuple[Dataset, Dataset | None, str, str | None]:
    for option in ("train_split",):
        split = getattr(config, option)
        if split not in splits:
            raise ValueError(f"{option}={split!r} is not a split of {config.dataset_name} (splits: {list(splits)})")
    train = splits[config.train_split]
    evaluation = splits[config.eval_split] if config.eval_split in splits else None
    if evaluation is None and config.evaluate_after_training:
        raise ValueError(f"eval_split={config.eval_split!r} is not a split of {config.dataset_name} (splits: "
                         f"{list(splits)}); name one or pass --evaluate_after_training false")
    columns = list(train.column_names)
    input_column = choose_input_column(config, columns, vision)
    label_column = config.label_column
    if label_column is not None and label_column not in columns:
        raise ValueError(f"label_column={label_column!r} is not a column of {config.dataset_name} (columns: {columns})")
    if label_column is None and "label" in columns:
        label_column = "label"
    if len(train) == 0:
        raise ValueError(f"split {config.train_split!r} of {config.dataset_name} is empty")
    train = train.shuffle(seed=config.seed)
    if config.max_train_samples is not None:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if evaluation is not None and config.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=config.seed).select(range(min(config.max_eval_samples, len(evaluation))))
    if vision:
        # Images as numpy arrays: datasets otherwise converts every pixel to a Python int on each read,
        # which costs more than the training step itself on small images.
        train = train.with_format("numpy", columns=[input_column], output_all_columns=True)
        if evaluation is not None:
            evaluation = evaluation.with_format("numpy", columns=[input_column], output_all_columns=True)
    return train, evaluation, input_column, label_column


def build_teacher(config: DistillationConfig, num_labels: int | None) -> PreTrainedModel:
    teacher_logits, _ = needs_logits(config)
    if config.teacher_model_name_or_path:
        return load_pretrained("teacher", config.teacher_model_name_or_path, teacher_logits, config.trust_remote_code, num_labels)
    return build_from_config(config_from_dict(config.teacher_config), teacher_logits, num_labels)


def build_student(config: DistillationConfig, teacher: PreTrainedModel, num_labels: int | None) -> PreTrainedModel:
    _, student_logits = needs_logits(config)
    if config.student_model_name_or_path:
        return load_pretrained("student", config.student_model_name_or_path, student_logits, config.trust_remote_code, num_labels)
    student = build_from_config(config_from_dict(config.student_config, base=teacher.config), student_logits, num_labels)
    if config.student_init_from_teacher:
        init_student_from_teacher(student, teacher, config.student_init_layer_map)
    return student


def build_processors(config: DistillationConfig, teacher: PreTrainedModel, student: PreTrainedModel, vision: bool):
    teacher_source = config.teacher_processor_name_or_path or config.teacher_model_name_or_path
    if teacher_source is None:
        raise ValueError("a teacher built from teacher_config needs --teacher_processor_name_or_path (a tokenizer or "
                         "image processor folder / Hub id)")
    teacher_processor = load_processor(teacher_source, vision, config.trust_remote_code, "teacher_processor_name_or_path")
    student_source = config.student_processor_name_or_path
    if student_source is None and config.student_model_name_or_path and has_processor_files(config.student_model_name_or_path):
        student_source = config.student_model_name_or_path
    if student_source is None or student_source == teacher_source:
        student_processor = teacher_processor
    else:
        student_processor = load_processor(student_source, vision, config.trust_remote_code, "student_processor_name_or_path")
    for processor in {id(teacher_processor): teacher_processor, id(student_processor): student_processor}.values():
        if config.padding_side is not None and not vision:
            processor.padding_side = config.padding_side
    if not vision:
        check_tokenizer_fits("student", student, student_processor, config)
        check_tokenizer_fits("teacher", teacher, teacher_processor, config)
    return teacher_processor, student_processor


def check_image_channels(role: str, model: PreTrainedModel, processor: Any, example_image: Any) -> None:
    """The processor must produce as many channels as the model's first convolution expects."""
    channels = process(processor, [example_image], "vision", 0)["pixel_values"].shape[1]
    expected = getattr(model.config, "num_channels", channels)
    if channels != expected:
        raise ValueError(
            f"the {role} expects {expected}-channel images but its image processor gives {channels}-channel ones: "
            f"build the {role} with num_channels={channels} (e.g. in {role}_config) or give it an image processor "
            f"that converts the images (--{role}_processor_name_or_path)"
        )


def has_processor_files(path: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "preprocessor_config.json")
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name)) for name in names)


def check_tokenizer_fits(role: str, model: PreTrainedModel, tokenizer: Any, config: DistillationConfig) -> None:
    """A model whose embedding table is smaller than its tokenizer's vocabulary would index out of range;
    texts longer than its position table would too."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config.max_length > positions:
        raise ValueError(
            f"max_length={config.max_length} is longer than the {role} can read (max_position_embeddings={positions}): "
            f"use --max_length {positions} or less (longer texts are truncated)"
        )
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"the {role}'s tokenizer has {len(tokenizer)} tokens but the {role} model's vocab_size is {vocab_size}: "
            f"the tokenizers differ. Give the {role} its own tokenizer with --{role}_processor_name_or_path, or "
            f"build it with vocab_size >= {len(tokenizer)}"
        )


def build_setup(config: DistillationConfig) -> DistillationSetup:
    """Load data, models and processors as the config says; fail early with a clear message."""
    set_seed(config.seed)  # models built from configs (and their heads) start from the same weights every run
    splits = load_splits(config.dataset_name, config.dataset_config_name)
    label_feature = splits[next(iter(splits))].features.get(config.label_column or "label")
    num_labels = getattr(label_feature, "num_classes", None)
    teacher = build_teacher(config, num_labels)
    vision = is_vision_config(teacher.config)
    train, evaluation, input_column, label_column = prepare_splits(config, splits, vision)
    student = build_student(config, teacher, num_labels)
    if is_vision_config(student.config) != vision:
        raise ValueError("teacher and student must both be text models or both be vision models")
    teacher_processor, student_processor = build_processors(config, teacher, student, vision)
    if vision:
        example_image = train[0][input_column]
        check_image_channels("teacher", teacher, teacher_processor, example_image)
        check_image_channels("student", student, student_processor, example_image)
    collator = DistillationCollator(
        student_processor=student_processor,
        teacher_processor=teacher_processor,
        input_column=input_column,
        modality="vision" if vision else "text",
        label_column=label_column,
        max_length=config.max_length,
    )
    setup = DistillationSetup(config, teacher, student, collator, train, evaluation, collator.modality)
    if config.teacher_layers_auto:
        choice = choose_teacher_layers(
            teacher, teacher_processor, train, input_column, label_column, collator.modality,
            config.teacher_pooling or config.pooling, top_k=len(config.student_layers),
            num_samples=config.layer_selection_samples, max_length=config.max_length, device=config.device,
            seed=config.seed,
        )
        config.teacher_layers = choice.selected
        setup.extra["layer_choice"] = choice
    if config.teacher_cache:
        teacher_pooling = config.teacher_pooling or config.pooling
        setup.train_dataset = add_cached_teacher_features(
            setup.train_dataset, config.teacher_cache, teacher, teacher_processor,
            [FeatureExtractor(layer, teacher_pooling, "teacher") for layer in config.teacher_layers],
            input_column, collator.modality, config.max_length, with_logits=config.logit_kd_weight > 0,
            device=config.device,
        )
    return setup


def embedding_extractors(config: DistillationConfig) -> tuple[FeatureExtractor, FeatureExtractor]:
    """The (student, teacher) embeddings measured after training: the deepest distilled pair."""
    # Token-level recipes (pooling 'none') are measured on mean-pooled embeddings ('mean' = GAP on maps).
    pooling = "mean" if config.pooling == "none" else config.pooling
    teacher_pooling = config.teacher_pooling or config.pooling
    teacher_pooling = "mean" if teacher_pooling == "none" else teacher_pooling
    return (
        FeatureExtractor(config.student_layers[-1], pooling, "student"),
        FeatureExtractor(config.teacher_layers[-1], teacher_pooling, "teacher"),
    )


def describe_run(setup: DistillationSetup, trainer: DistillationTrainer) -> dict[str, Any]:
    """The provenance written to ``distillation_config.json`` (read by evaluate.py and the model card)."""
    config = setup.config
    student_extractor, teacher_extractor = embedding_extractors(config)
    recipe = {key: value for key, value in config.distillation_fields().items()}
    return {
        "hf_pcoh_version": __version__,
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "teacher": {
            "name_or_path": config.teacher_model_name_or_path or "config",
            "model_type": setup.teacher.config.model_type,
            "parameters": count_parameters(setup.teacher),
        },
        "student": {"model_type": setup.student.config.model_type, "parameters": count_parameters(setup.student)},
        "dataset": {
            "name": config.dataset_name,
            "train_samples": len(setup.train_dataset),
            "eval_samples": len(setup.eval_dataset) if setup.eval_dataset is not None else 0,
            ("image_column" if setup.modality == "vision" else "text_column"): setup.collator.input_column,
            "label_column": setup.collator.label_column,
        },
        "terms": [
            {
                "student_layer": config.student_layers[term.pair_index],
                "teacher_layer": config.teacher_layers[term.pair_index],
                "loss": term.key.split("_", 1)[1],
                "weight": term.weight,
            }
            for term in trainer.model.terms
        ],
        "losses": list(config.losses),
        "embedding": {
            "student_layer": student_extractor.layer,
            "teacher_layer": teacher_extractor.layer,
            "pooling": student_extractor.pooling,
            "teacher_pooling": teacher_extractor.pooling,
        },
        "layer_selection": setup.extra["layer_choice"].to_dict() if "layer_choice" in setup.extra else None,
        "modality": setup.modality,
        "task": "image-feature-extraction" if setup.modality == "vision" else "feature-extraction",
    }


@dataclass
class DistillationResult:
    output_dir: str
    train_metrics: dict[str, float]
    evaluation: dict[str, Any] | None


def run_distillation(config: DistillationConfig) -> DistillationResult:
    """Distil, save the student to ``config.output_dir``, measure it against the teacher, write its card.

    With ``push_to_hub`` (and ``hub_model_id``, ``hub_private_repo``, ``hub_token``: the Trainer's own Hub
    options) the finished folder is published by :func:`hf_pcoh.hub.publish` once everything is written,
    rather than by the Trainer at every save: the card needs the evaluation, and an offline or
    token-less machine must still end with a complete folder.
    """
    setup = build_setup(config)
    trainer_args = dataclasses.replace(config, push_to_hub=False) if config.push_to_hub else config
    trainer = DistillationTrainer(
        student=setup.student,
        teacher=setup.teacher,
        args=trainer_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset if config.eval_strategy != "no" else None,
        collator=setup.collator,
    )
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    student = trainer.accelerator.unwrap_model(trainer.model).student
    if config.fit_head_by_probe:
        fit_probe_head_on_sample(setup, student)
    trainer.save_model()
    trainer.save_state()
    description = describe_run(setup, trainer)
    evaluation = None
    if trainer.args.should_save:
        write_json(os.path.join(config.output_dir, DISTILLATION_CONFIG_FILE), description)
        if "layer_choice" in setup.extra:
            choice = setup.extra["layer_choice"]
            with open(os.path.join(config.output_dir, LAYER_QUALITY_TABLE_FILE), "w", encoding="utf-8") as stream:
                stream.write(choice.table() + "\n")
            choice.plot(os.path.join(config.output_dir, LAYER_QUALITY_PLOT_FILE))
        if config.evaluate_after_training and setup.eval_dataset is not None:
            student_extractor, teacher_extractor = embedding_extractors(config)
            evaluation = compare_teacher_and_student(
                teacher=setup.teacher,
                student=student,
                teacher_processor=setup.collator.teacher_processor,
                student_processor=setup.collator.student_processor,
                train_dataset=setup.train_dataset,
                eval_dataset=setup.eval_dataset,
                input_column=setup.collator.input_column,
                label_column=setup.collator.label_column,
                modality=setup.modality,
                student_extractor=student_extractor,
                teacher_extractor=teacher_extractor,
                max_length=config.max_length,
                device=trainer.args.device,
                dataset_name=config.dataset_name,
            )
            if config.fit_head_by_probe:
                evaluation["student"]["probe_head_accuracy"] = head_accuracy(
                    student, setup.collator.student_processor, setup.eval_dataset[setup.collator.input_column],
                    np.asarray(setup.eval_dataset[setup.collator.label_column]), setup.modality,
                    max_length=config.max_length, device=trainer.args.device,
                )
            write_json(os.path.join(config.output_dir, EVAL_RESULTS_FILE), evaluation)
        write_model_card(config.output_dir)
        if config.push_to_hub:
            publish(config.output_dir, config.hub_model_id, private=bool(config.hub_private_repo), token=config.hub_token)
    return DistillationResult(config.output_dir, dict(train_output.metrics), evaluation)


def evaluate_saved_student(
    student_dir: str, teacher: str | None = None, max_eval_samples: int | None = None,
    max_reference_samples: int = 3000,
) -> dict[str, Any]:
    """Measure a student saved by a distillation run beside its teacher, on the run's held-out split.

    The run's ``distillation_config.json`` says which teacher, data, layers and pooling; ``teacher``
    replaces the teacher (a folder or Hub id) and ``max_eval_samples`` the number of held-out rows.
    """
    description_path = os.path.join(student_dir, DISTILLATION_CONFIG_FILE)
    if not os.path.isfile(description_path):
        raise ValueError(f"{student_dir} has no {DISTILLATION_CONFIG_FILE}: give the output_dir of a distillation run")
    with open(description_path, encoding="utf-8") as stream:
        recipe = dict(json.load(stream)["recipe"])
    recipe.update(student_model_name_or_path=student_dir, student_config=None, student_init_from_teacher=False,
                  teacher_cache=None, output_dir=student_dir, push_to_hub=False)
    if teacher is not None:
        recipe.update(teacher_model_name_or_path=teacher, teacher_config=None)
    if max_eval_samples is not None:
        recipe["max_eval_samples"] = max_eval_samples
    config = DistillationConfig(**{key: value for key, value in recipe.items() if value is not None or key == "student_config"})
    setup = build_setup(config)
    student_extractor, teacher_extractor = embedding_extractors(config)
    return compare_teacher_and_student(
        teacher=setup.teacher, student=setup.student, teacher_processor=setup.collator.teacher_processor,
        student_processor=setup.collator.student_processor, train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset, input_column=setup.collator.input_column,
        label_column=setup.collator.label_column, modality=setup.modality, student_extractor=student_extractor,
        teacher_extractor=teacher_extractor, max_length=config.max_length, device=config.device,
        max_reference_samples=max_reference_samples, dataset_name=config.dataset_name,
    )


def fit_probe_head_on_sample(setup: DistillationSetup, student: PreTrainedModel, max_samples: int = 5000) -> None:
    """Fit the student's head by a linear probe on (a sample of) the training split's frozen features."""
    label_column = setup.collator.label_column
    if label_column is None:
        raise ValueError("fit_head_by_probe needs class labels: set label_column")
    sample = setup.train_dataset.select(range(min(max_samples, len(setup.train_dataset))))
    fit_head_by_probe(
        student, setup.collator.student_processor, sample[setup.collator.input_column],
        np.asarray(sample[label_column]), setup.modality, max_length=setup.config.max_length,
        device=setup.config.device, seed=setup.config.seed,
    )


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=2, default=str)
    os.replace(temporary, path)

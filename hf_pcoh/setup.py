"""From a :class:`DistillationConfig` to everything a run needs: data, teacher, student, processors, collator.

:func:`build_setup` loads and checks them in order, failing early with a message that names the option
to change; with ``teacher_layers: auto`` it also chooses the teacher layers (:mod:`hf_pcoh.layers`),
and with ``teacher_cache`` it adds the cached teacher features to the training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedModel, set_seed

from .collator import DistillationCollator, process
from .config import DistillationConfig
from .data import load_splits
from .features import FeatureExtractor
from .layers import LayerChoice, choose_teacher_layers
from .models import (
    build_from_config,
    config_from_dict,
    init_student_from_teacher,
    is_vision_config,
    load_pretrained,
    load_processor,
)
from .teacher_cache import add_cached_teacher_features
from .trainer import teacher_extractors


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


def build_setup(config: DistillationConfig) -> DistillationSetup:
    """Load data, models and processors as the config says; fail early with a clear message."""
    set_seed(config.seed)  # models built from configs (and their heads) start from the same weights every run
    splits = load_splits(config.dataset_name, config.dataset_config_name)
    num_labels = count_labels(config, splits)
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
        choice = choose_layers_by_quality(setup, top_k=len(config.student_layers))
        config.teacher_layers = choice.selected
        setup.extra["layer_choice"] = choice
    if config.teacher_cache:
        setup.train_dataset = with_cached_teacher_features(setup)
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


# ---- data -------------------------------------------------------------------------------------------


def count_labels(config: DistillationConfig, splits: DatasetDict) -> int | None:
    """The number of classes of the label column, when the data set declares it (a ``ClassLabel``)."""
    label_feature = splits[next(iter(splits))].features.get(config.label_column or "label")
    return getattr(label_feature, "num_classes", None)


def prepare_splits(config: DistillationConfig, splits: DatasetDict, vision: bool) -> tuple[Dataset, Dataset | None, str, str | None]:
    """(train, evaluation or None, input column, label column or None): shuffled and cut as the config says."""
    train, evaluation = select_splits(config, splits)
    columns = list(train.column_names)
    input_column = choose_input_column(config, columns, vision)
    label_column = choose_label_column(config, columns)
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


def select_splits(config: DistillationConfig, splits: DatasetDict) -> tuple[Dataset, Dataset | None]:
    """The training split, and the evaluation split when the data set has it."""
    if config.train_split not in splits:
        raise ValueError(f"train_split={config.train_split!r} is not a split of {config.dataset_name} (splits: {list(splits)})")
    evaluation = splits[config.eval_split] if config.eval_split in splits else None
    if evaluation is None and config.evaluate_after_training:
        raise ValueError(f"eval_split={config.eval_split!r} is not a split of {config.dataset_name} (splits: "
                         f"{list(splits)}); name one or pass --evaluate_after_training false")
    return splits[config.train_split], evaluation


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


def choose_label_column(config: DistillationConfig, columns: list[str]) -> str | None:
    """``label_column`` when given, else ``label`` when the data set has it, else None (no labels)."""
    label_column = config.label_column
    if label_column is not None and label_column not in columns:
        raise ValueError(f"label_column={label_column!r} is not a column of {config.dataset_name} (columns: {columns})")
    if label_column is None and "label" in columns:
        label_column = "label"
    return label_column


# ---- models and processors ----------------------------------------------------------------------------


def needs_logits(config: DistillationConfig) -> tuple[bool, bool]:
    """(teacher needs logits, student needs logits)."""
    return config.logit_kd_weight > 0, config.ce_weight > 0 or config.logit_kd_weight > 0 or config.fit_head_by_probe


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
    """(teacher processor, student processor): the same object when the student reads the teacher's inputs."""
    teacher_source = config.teacher_processor_name_or_path or config.teacher_model_name_or_path
    if teacher_source is None:
        raise ValueError("a teacher built from teacher_config needs --teacher_processor_name_or_path (a tokenizer or "
                         "image processor folder / Hub id)")
    teacher_processor = load_processor(teacher_source, vision, config.trust_remote_code, "teacher_processor_name_or_path")
    student_source = student_processor_source(config)
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


def student_processor_source(config: DistillationConfig) -> str | None:
    """Where the student's processor comes from: the option, else the student's folder when it holds one."""
    source = config.student_processor_name_or_path
    if source is None and config.student_model_name_or_path and has_processor_files(config.student_model_name_or_path):
        source = config.student_model_name_or_path
    return source


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


# ---- optional steps: the automatic layer choice and the teacher-feature cache --------------------------


def choose_layers_by_quality(setup: DistillationSetup, top_k: int) -> LayerChoice:
    """Score every teacher layer by knowledge quality on the training set; the top ``top_k`` are chosen."""
    config = setup.config
    return choose_teacher_layers(
        setup.teacher, setup.collator.teacher_processor, setup.train_dataset, setup.collator.input_column,
        setup.collator.label_column, setup.modality, config.teacher_pooling or config.pooling, top_k=top_k,
        num_samples=config.layer_selection_samples, max_length=config.max_length, device=config.device,
        seed=config.seed,
    )


def with_cached_teacher_features(setup: DistillationSetup) -> Dataset:
    """The training set with the teacher's features of every layer pair as columns, read from or written to the cache."""
    config = setup.config
    return add_cached_teacher_features(
        setup.train_dataset, config.teacher_cache, setup.teacher, setup.collator.teacher_processor,
        teacher_extractors(config), setup.collator.input_column, setup.modality, config.max_length,
        with_logits=config.logit_kd_weight > 0, device=config.device,
    )

"""The run's models and processors: teacher and student built from the config (or given, loaded from folders or
Hub ids: :func:`build_trainer_inputs`), their processors, checked against them, and the collator that feeds them.

Part of :func:`hf_pcoh.setup.build_setup`; ``DistillationTrainer`` built without a setup gets its models and
collator here too. Every check fails early with a message that names the option to change.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoConfig, PreTrainedModel

from .collator import COMPLETION_COLUMN, PROMPT_COLUMN, DistillationCollator, cached_feature_column, process
from .config import DistillationConfig
from .data.sources import column_names
from .first_process_loading import first_process_or_meta
from .models import (
    build_from_config,
    config_from_dict,
    init_student_from_teacher,
    is_causal_lm,
    is_vision_config,
    load_pretrained,
    load_processor,
    resolve_checkpoint,
    weights_dtype,
    weights_released,
)
from .setup_data import choose_input_column, choose_label_column, teacher_input_column


def needs_logits(config: DistillationConfig) -> tuple[bool, bool]:
    """(teacher needs logits, student needs logits)."""
    return config.logit_kd_weight > 0, config.ce_weight > 0 or config.logit_kd_weight > 0 or config.fit_head_by_probe


def planned_task(config: DistillationConfig, student_source: str | None = None) -> str:
    """``features`` or ``causal_lm``, before the student exists (to choose the Auto class that loads it): ``task``,
    with ``auto`` read from the student checkpoint's ``config.json`` (``student_source``, default
    ``student_model_name_or_path``); a student built from ``student_config`` names no architecture."""
    source = student_source or config.student_model_name_or_path
    if config.task != "auto" or not source or not (config.ce_weight > 0 or config.logit_kd_weight > 0):
        return config.resolved_task(False)
    try:
        student_config = AutoConfig.from_pretrained(resolve_checkpoint(source),
                                                    trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError):  # load_pretrained says what is wrong with it
        return config.resolved_task(False)
    return config.resolved_task(is_causal_lm(student_config))


def run_task(config: DistillationConfig, student: PreTrainedModel) -> str:
    """``features`` or ``causal_lm``: the run's task, resolved once for the student it trains. The collator built
    for the run carries it (``next_token_labels``: True for ``causal_lm``), and every later step reads it there."""
    return config.resolved_task(is_causal_lm(student))


def teacher_is_causal_lm(config: DistillationConfig) -> bool:
    """A language-model teacher (``AutoModelForCausalLM``) is loaded only for logit KD over the vocabulary."""
    return config.logit_kd_weight > 0 and planned_task(config) == "causal_lm"


def build_teacher(config: DistillationConfig, num_labels: int | None, causal_lm: bool | None = None) -> PreTrainedModel:
    """The teacher from its checkpoint (with ``teacher_model_init_kwargs``) or its config, its weights in
    ``teacher_dtype`` (``auto``: the checkpoint's own; a teacher built from a config: float32); with its
    language-model head when ``causal_lm`` (default: :func:`teacher_is_causal_lm`). Under FSDP2's
    ``cpu_ram_efficient_loading`` only the first process reads or builds its weights
    (:mod:`hf_pcoh.first_process_loading`)."""
    teacher_logits, _ = needs_logits(config)
    dtype = weights_dtype(config.teacher_dtype)
    causal_lm = teacher_is_causal_lm(config) if causal_lm is None else causal_lm
    if config.teacher_model_name_or_path:
        return first_process_or_meta(config, lambda weights: load_pretrained(
            "teacher", config.teacher_model_name_or_path, teacher_logits, config.trust_remote_code, num_labels,
            dtype=dtype, init_kwargs=config.teacher_model_init_kwargs, causal_lm=causal_lm, weights=weights))
    return first_process_or_meta(config, lambda weights: build_from_config(
        config_from_dict(config.teacher_config), teacher_logits, num_labels, dtype=dtype, causal_lm=causal_lm,
        weights=weights))


def build_student(
    config: DistillationConfig, teacher: PreTrainedModel | None, num_labels: int | None, causal_lm: bool | None = None
) -> PreTrainedModel:
    """The student from its checkpoint or its config (overriding the teacher's), with a language-model head when
    ``causal_lm`` (default: :func:`planned_task`), else with a classification head when an objective needs logits;
    read or built on the first process only under FSDP2's ``cpu_ram_efficient_loading``, as the teacher."""
    _, student_logits = needs_logits(config)
    causal_lm = planned_task(config) == "causal_lm" if causal_lm is None else causal_lm
    if config.student_model_name_or_path:
        return first_process_or_meta(config, lambda weights: load_pretrained(
            "student", config.student_model_name_or_path, student_logits, config.trust_remote_code, num_labels,
            init_kwargs=config.model_init_kwargs, causal_lm=causal_lm, weights=weights))
    if teacher is None and "model_type" not in config.student_config:
        raise ValueError(f"student_config={config.student_config} overrides the teacher's config, but no teacher is "
                         "loaded (teacher_embedding_column): give a full config with 'model_type', or "
                         "student_model_name_or_path")
    student_config = config_from_dict(config.student_config, base=teacher.config)
    if not {"dtype", "torch_dtype"} & set(config.student_config):
        # The student's weights train in float32 (the Trainer's --bf16 / --fp16 autocast them): it never takes the
        # teacher's dtype (teacher_dtype, a float16 checkpoint's) with the teacher's config.
        student_config.dtype = torch.get_default_dtype()

    def build(weights: bool) -> PreTrainedModel:
        student = build_from_config(student_config, student_logits, num_labels, causal_lm=causal_lm, weights=weights)
        if config.student_init_from_teacher and weights:
            init_student_from_teacher(student, teacher, config.student_init_layer_map)
        return student

    return first_process_or_meta(config, build)


def build_processors(config: DistillationConfig, teacher: PreTrainedModel | None, student: PreTrainedModel, vision: bool):
    """(teacher processor, student processor): the same object when the student reads the teacher's inputs, or
    when no teacher runs (its embeddings precomputed in ``teacher_embedding_column``)."""
    if teacher is None:
        processor = student_only_processor(config, student, vision)
        return processor, processor
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


def student_only_processor(config: DistillationConfig, student: PreTrainedModel, vision: bool) -> Any:
    """The student's processor in a run without a teacher: its option, or the one saved with the student."""
    source = student_processor_source(config)
    if source is None:
        raise ValueError("a run without a teacher (teacher_embedding_column) needs the student's processor: set "
                         "--student_processor_name_or_path (a tokenizer or image processor folder / Hub id), or give a "
                         "student folder that holds one")
    processor = load_processor(source, vision, config.trust_remote_code, "student_processor_name_or_path")
    if not vision:
        if config.padding_side is not None:
            processor.padding_side = config.padding_side
        check_tokenizer_fits("student", student, processor, config)
    return processor


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


def build_collator(
    config: DistillationConfig, student_processor: Any, teacher_processor: Any, columns: list[str], vision: bool,
    causal_lm: bool = False,
) -> DistillationCollator:
    """The collator of a data set with ``columns``: the input column(s) each model reads, the labels if any; for a
    language-model student (``causal_lm``) the labels are its next tokens, a ``prompt`` column's left out."""
    input_column = choose_input_column(config, columns, vision)
    prompt = causal_lm and input_column == COMPLETION_COLUMN and PROMPT_COLUMN in columns
    return DistillationCollator(
        student_processor=student_processor,
        teacher_processor=teacher_processor,
        input_column=input_column,
        modality="vision" if vision else "text",
        label_column=choose_label_column(config, columns),
        max_length=config.max_length,
        teacher_input_column=None if vision else teacher_input_column(config, columns, input_column),
        teacher_embedding_column=config.teacher_embedding_column,
        next_token_labels=causal_lm,
        prompt_column=PROMPT_COLUMN if prompt else None,
    )


def build_trainer_inputs(
    config: DistillationConfig,
    student: PreTrainedModel | str | None,
    teacher: PreTrainedModel | str | None,
    train_dataset: Dataset,
    processing_class: Any = None,
    collator: DistillationCollator | None = None,
) -> tuple[PreTrainedModel, PreTrainedModel | None, DistillationCollator]:
    """(student, teacher, collator) for :class:`DistillationTrainer`, TRL-style: each model as an object, or a
    local folder / Hub id to load, or (None) built from the config's model options; the collator, when not
    given, reads the data set's text or image column with ``processing_class`` (the student's processor,
    default: the one saved with the student, else the teacher's) and the teacher's own saved processor.
    With ``teacher_embedding_column`` and no teacher given, none is loaded (the teacher returned is None); a teacher
    whose weights were freed after caching its features (``teacher_cache``) is returned as None too: every step reads
    the cached features."""
    teacher_logits, student_logits = needs_logits(config)
    released = teacher is not None and weights_released(teacher)
    if released and cached_feature_column(0) not in column_names(train_dataset):
        raise ValueError("the teacher's weights were freed after caching its features (teacher_cache), but "
                         "train_dataset carries no cached features (teacher_features_0): pass setup.train_dataset, "
                         "or build the setup again to train with the live teacher")
    # The task decides which Auto classes load the models: the student's own when it is given as an object.
    task = (run_task(config, student) if isinstance(student, PreTrainedModel) else
            planned_task(config, student if isinstance(student, str) else None))
    lm_teacher = task == "causal_lm" and config.logit_kd_weight > 0
    if teacher is None and config.teacher_embedding_column:
        pass  # the teacher's embeddings are a column of the data set
    elif teacher is None:
        config.check_models_given(student=False)
        teacher = build_teacher(config, None, causal_lm=lm_teacher)
    elif isinstance(teacher, str):
        teacher_path = teacher
        teacher = first_process_or_meta(config, lambda weights: load_pretrained(
            "teacher", teacher_path, teacher_logits, config.trust_remote_code,
            dtype=weights_dtype(config.teacher_dtype), init_kwargs=config.teacher_model_init_kwargs, causal_lm=lm_teacher,
            weights=weights))
    if student is None:
        config.check_models_given(teacher=False)
        student = build_student(config, teacher, None, causal_lm=task == "causal_lm")
    elif isinstance(student, str):
        student_path = student
        student = first_process_or_meta(config, lambda weights: load_pretrained(
            "student", student_path, student_logits, config.trust_remote_code,
            init_kwargs=config.model_init_kwargs, causal_lm=task == "causal_lm", weights=weights))
    if collator is not None:
        return student, None if released else teacher, collator
    vision = is_vision_config((student if teacher is None else teacher).config)
    teacher_source = None if teacher is None else config.teacher_processor_name_or_path or saved_processor_source(teacher)
    student_source = config.student_processor_name_or_path or saved_processor_source(student)
    teacher_processor = (load_processor(teacher_source, vision, config.trust_remote_code, "teacher_processor_name_or_path")
                         if teacher_source else None)
    if processing_class is None and student_source and student_source != teacher_source:
        processing_class = load_processor(student_source, vision, config.trust_remote_code, "processing_class")
    student_processor = processing_class or teacher_processor
    teacher_processor = teacher_processor or student_processor
    if student_processor is None:
        raise ValueError("no processor for the models: pass processing_class (the student's tokenizer or image "
                         "processor), or set student_processor_name_or_path / teacher_processor_name_or_path")
    if not vision:
        for processor in {id(teacher_processor): teacher_processor, id(student_processor): student_processor}.values():
            if config.padding_side is not None:
                processor.padding_side = config.padding_side
        check_tokenizer_fits("student", student, student_processor, config)
        if teacher is not None:
            check_tokenizer_fits("teacher", teacher, teacher_processor, config)
    collator = build_collator(config, student_processor, teacher_processor, column_names(train_dataset), vision,
                              causal_lm=run_task(config, student) == "causal_lm")
    return student, None if released else teacher, collator


def saved_processor_source(model: PreTrainedModel) -> str | None:
    """Where a model was loaded from, when its processor is there too: its folder, or its Hub id."""
    path = getattr(model, "name_or_path", None)
    return path if path and (has_processor_files(path) or not os.path.isdir(path)) else None


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

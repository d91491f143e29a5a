"""From a :class:`DistillationConfig` to everything a run needs: data, teacher, student, processors, collator.

:func:`build_setup` loads and checks them in order, failing early with a message that names the option
to change; with ``teacher_layers: auto`` it also chooses the teacher layers (:mod:`hf_pcoh.layers`),
and with ``teacher_cache`` it adds the cached teacher features to the training set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, IterableDatasetDict
from transformers import PreTrainedModel, set_seed

from .collator import DistillationCollator, process, tokenize_once
from .config import DistillationConfig
from .data import first_rows, is_streamed, load_splits
from .data.sources import STREAMED_ROWS_CHECKED, column_names, resolved_features
from .features import FeatureExtractor
from .layers import LayerChoice, choose_teacher_layers
from .losses import LOSSES
from .models import (
    build_from_config,
    config_from_dict,
    init_student_from_teacher,
    is_vision_config,
    load_pretrained,
    load_processor,
)
from .precomputed_teacher import check_teacher_embeddings
from .sentence_embedding import resolve_embedding
from .teacher_cache import add_cached_teacher_features, resolve_cache_dir
from .trainer import teacher_extractors

logger = logging.getLogger(__name__)


@dataclass
class DistillationSetup:
    """Everything a :class:`DistillationTrainer` needs, built from a config."""

    config: DistillationConfig
    teacher: PreTrainedModel | None  # None: the teacher's embeddings are a column of the data (teacher_embedding_column)
    student: PreTrainedModel
    collator: DistillationCollator
    train_dataset: Dataset
    eval_dataset: Dataset | None
    modality: str
    extra: dict[str, Any] = field(default_factory=dict)


def build_setup(config: DistillationConfig) -> DistillationSetup:
    """Load data, models and processors as the config says; fail early with a clear message."""
    config.check_models_given()
    set_seed(config.seed)  # models built from configs (and their heads) start from the same weights every run
    splits = encode_string_labels(config, load_config_splits(config))
    num_labels = count_labels(config, splits)
    if config.teacher_embedding_column:  # no teacher to load: the student says which modality
        teacher, student = None, build_student(config, None, num_labels)
        vision = is_vision_config(student.config)
    else:
        teacher, student = build_teacher(config, num_labels), None
        vision = is_vision_config(teacher.config)
    train, evaluation, input_column, label_column = prepare_splits(config, splits, vision)
    if config.teacher_embedding_column:
        evaluated = config.evaluate_after_training or config.eval_strategy != "no"
        check_teacher_embeddings(config.teacher_embedding_column, train, evaluation, config.train_split,
                                 config.eval_split, evaluated)
    if student is None:
        student = build_student(config, teacher, num_labels)
    if is_vision_config(student.config) != vision:
        raise ValueError("teacher and student must both be text models or both be vision models")
    teacher_processor, student_processor = build_processors(config, teacher, student, vision)
    if vision:
        example_image = first_rows(train, 1)[0][input_column]
        if teacher is not None:
            check_image_channels("teacher", teacher, teacher_processor, example_image)
        check_image_channels("student", student, student_processor, example_image)
    collator = DistillationCollator(
        student_processor=student_processor,
        teacher_processor=teacher_processor,
        input_column=input_column,
        modality="vision" if vision else "text",
        label_column=label_column,
        max_length=config.max_length,
        teacher_input_column=None if vision else teacher_input_column(config, list(train.column_names), input_column),
        teacher_embedding_column=config.teacher_embedding_column,
    )
    setup = DistillationSetup(config, teacher, student, collator, train, evaluation, collator.modality)
    check_length_sampling(config, vision)
    if not vision and isinstance(train, Dataset):
        setup.train_dataset = tokenized_training_set(setup)
    if config.teacher_layers_auto:
        choice = choose_layers_by_quality(setup, top_k=len(config.student_layers))
        config.teacher_layers = choice.selected
        setup.extra["layer_choice"] = choice
    if config.teacher_cache:
        setup.train_dataset = with_cached_teacher_features(setup)
    return setup


def embedding_extractors(config: DistillationConfig, teacher: Any = None) -> tuple[FeatureExtractor, FeatureExtractor]:
    """The (student, teacher) embeddings measured after training: the deepest distilled pair, pooled (and
    normalised) as in training. Token-level recipes (pooling 'none') are measured on mean-pooled embeddings
    ('mean' = GAP on maps)."""
    settings = resolve_embedding(config, teacher)
    return settings.embedding_extractors(config.student_layers[-1], config.teacher_layers[-1])


# ---- data -------------------------------------------------------------------------------------------


# Rows of a streamed evaluation split read for evaluation when max_eval_samples does not say.
STREAMED_EVAL_ROWS = 1000


def load_config_splits(config: DistillationConfig) -> DatasetDict | IterableDatasetDict:
    """The splits the config names (``dataset_name``, ``dataset_config_name``, ``dataset_files``, ``streaming``);
    streamed splits with their columns known."""
    splits = load_splits(config.dataset_name, config.dataset_config_name, config.dataset_files, config.streaming)
    if isinstance(splits, IterableDatasetDict):
        splits = IterableDatasetDict({name: resolved_features(split) for name, split in splits.items()})
    return splits


def count_labels(config: DistillationConfig, splits: DatasetDict) -> int | None:
    """The number of classes of the label column, when the data set declares it (a ``ClassLabel``)."""
    label_feature = splits[next(iter(splits))].features.get(config.label_column or "label")
    return getattr(label_feature, "num_classes", None)


def encode_string_labels(config: DistillationConfig, splits: DatasetDict) -> DatasetDict:
    """Class names in the label column (``"cat"``, ``"dog"``) become class ids, the same in every split: a
    ``ClassLabel`` of the sorted names. Rows without a label are refused, naming how many."""
    column = config.label_column or "label"
    first = splits[next(iter(splits))]
    if column not in first.column_names:
        return splits
    if isinstance(splits, IterableDatasetDict):
        if getattr(first.features[column], "dtype", None) in ("string", "large_string"):
            raise ValueError(f"label_column={column!r} of {config.dataset_name} holds class names, which a streamed data "
                             "set cannot map to class ids before reading all of it: drop --streaming, or store class "
                             "ids (a ClassLabel or integers) in the column")
        return splits
    for name, split in splits.items():
        missing = split.data.column(column).null_count
        if missing:
            raise ValueError(f"split {name!r} of {config.dataset_name}: {missing} row(s) have no label (None) in "
                             f"label_column={column!r}: drop them (dataset.filter) or give another label_column")
    feature = first.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        return splits
    names = sorted({value for split in splits.values() for value in split.unique(column)})
    logger.info("label_column %r holds class names: mapped to %d class ids in sorted order (%s)", column, len(names),
                ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
    labels = ClassLabel(names=names)
    return DatasetDict({name: split.cast_column(column, labels) for name, split in splits.items()})


def check_texts(config: DistillationConfig, split_name: str, dataset: Dataset, column: str) -> None:
    """The text column holds strings, none missing, not all blank; else one line naming split, column and fix."""
    values = dataset.data.column(column)  # the whole split, as Arrow: no Python strings are made
    where = f"split {split_name!r} of {config.dataset_name}, text_column={column!r}"
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        raise ValueError(f"{where} holds {values.type}, not text: name the column of raw text with --text_column")
    if values.null_count:
        rows = [index for index, missing in enumerate(pc.is_null(values).to_pylist()) if missing][:5]
        raise ValueError(f"{where}: {values.null_count} row(s) have no text (None), e.g. rows {rows}: drop them "
                         f"first (dataset.filter(lambda row: row[{column!r}] is not None), then save_to_disk)")
    if len(values) and not pc.any(pc.not_equal(pc.utf8_trim_whitespace(values), "")).as_py():
        raise ValueError(f"{where}: every one of its {len(values)} texts is empty or whitespace, so there is nothing "
                         "to distil: check the column and the data files")


def prepare_splits(config: DistillationConfig, splits: DatasetDict, vision: bool) -> tuple[Dataset, Dataset | None, str, str | None]:
    """(train, evaluation or None, input column, label column or None): shuffled and cut as the config says.

    A streamed training split stays streamed (shuffled in a buffer, its first rows checked); a streamed
    evaluation split is read into memory, up to ``max_eval_samples`` rows (default ``STREAMED_EVAL_ROWS``)."""
    train, evaluation = select_splits(config, splits)
    streamed = is_streamed(train)
    if streamed and evaluation is not None:  # evaluation reads its split many times, and needs its length
        evaluation = first_rows(evaluation, config.max_eval_samples or STREAMED_EVAL_ROWS)
    columns = list(train.column_names)
    input_column = choose_input_column(config, columns, vision)
    label_column = choose_label_column(config, columns)
    checked = first_rows(train, STREAMED_ROWS_CHECKED) if streamed else train
    if len(checked) == 0:
        raise ValueError(f"split {config.train_split!r} of {config.dataset_name} is empty")
    if vision and (config.teacher_text_column or config.student_text_column):
        raise ValueError("teacher_text_column / student_text_column name text columns, but these models read images "
                         "(image_column)")
    if not vision:
        for column in dict.fromkeys((input_column, teacher_input_column(config, columns, input_column) or input_column)):
            check_texts(config, config.train_split, checked, column)
            if evaluation is not None:
                check_texts(config, config.eval_split, evaluation, column)
    if streamed:
        train = train.shuffle(seed=config.seed)  # in a buffer of rows, reshuffled every epoch
        if config.max_train_samples is not None:
            train = train.take(config.max_train_samples)
    else:
        train = train.shuffle(seed=config.seed)
        if config.max_train_samples is not None:
            train = train.select(range(min(config.max_train_samples, len(train))))
    if evaluation is not None and config.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=config.seed).select(range(min(config.max_eval_samples, len(evaluation))))
    if vision:
        # Images as numpy arrays: datasets otherwise converts every pixel to a Python int on each read,
        # which costs more than the training step itself on small images.
        if not streamed:
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


def choose_input_column(config: DistillationConfig, columns: list[str], vision: bool, role: str = "student") -> str:
    """The column the ``role`` model reads: its own text column when given (``student_text_column`` /
    ``teacher_text_column``), else ``text_column`` / ``image_column``, else an obvious one."""
    own = None if vision else getattr(config, f"{role}_text_column")
    given = own or (config.image_column if vision else config.text_column)
    option = f"{role}_text_column" if own else ("image_column" if vision else "text_column")
    if given is not None:
        if given not in columns:
            raise ValueError(f"{option}={given!r} is not a column of {config.dataset_name} (columns: {columns})")
        return given
    for candidate in (("image", "img", "pixel_values") if vision else ("text", "sentence", "content")):
        if candidate in columns:
            return candidate
    raise ValueError(f"{config.dataset_name} has no obvious {'image' if vision else 'text'} column (columns: {columns}); "
                     f"set --{option}")


def teacher_input_column(config: DistillationConfig, columns: list[str], student_column: str) -> str | None:
    """The text column the teacher reads when it is not the student's (``teacher_text_column``, or ``text_column``
    when only ``student_text_column`` is given), else None; None too when no teacher runs (precomputed embeddings)."""
    if config.teacher_embedding_column:
        return None
    column = choose_input_column(config, columns, vision=False, role="teacher")
    return None if column == student_column else column


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


def build_student(config: DistillationConfig, teacher: PreTrainedModel | None, num_labels: int | None) -> PreTrainedModel:
    _, student_logits = needs_logits(config)
    if config.student_model_name_or_path:
        return load_pretrained("student", config.student_model_name_or_path, student_logits, config.trust_remote_code, num_labels)
    if teacher is None and "model_type" not in config.student_config:
        raise ValueError(f"student_config={config.student_config} overrides the teacher's config, but no teacher is "
                         "loaded (teacher_embedding_column): give a full config with 'model_type', or "
                         "student_model_name_or_path")
    student = build_from_config(config_from_dict(config.student_config, base=teacher.config), student_logits, num_labels)
    if config.student_init_from_teacher:
        init_student_from_teacher(student, teacher, config.student_init_layer_map)
    return student


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


def build_trainer_inputs(
    config: DistillationConfig,
    student: PreTrainedModel | str | None,
    teacher: PreTrainedModel | str | None,
    train_dataset: Dataset,
    processing_class: Any = None,
    collator: DistillationCollator | None = None,
) -> tuple[PreTrainedModel, PreTrainedModel, DistillationCollator]:
    """(student, teacher, collator) for :class:`DistillationTrainer`, TRL-style: each model as an object, or a
    local folder / Hub id to load, or (None) built from the config's model options; the collator, when not
    given, reads the data set's text or image column with ``processing_class`` (the student's processor,
    default: the one saved with the student, else the teacher's) and the teacher's own saved processor.
    With ``teacher_embedding_column`` and no teacher given, none is loaded (the teacher returned is None)."""
    teacher_logits, student_logits = needs_logits(config)
    if teacher is None and config.teacher_embedding_column:
        pass  # the teacher's embeddings are a column of the data set
    elif teacher is None:
        config.check_models_given(student=False)
        teacher = build_teacher(config, None)
    elif isinstance(teacher, str):
        teacher = load_pretrained("teacher", teacher, teacher_logits, config.trust_remote_code)
    if student is None:
        config.check_models_given(teacher=False)
        student = build_student(config, teacher, None)
    elif isinstance(student, str):
        student = load_pretrained("student", student, student_logits, config.trust_remote_code)
    if collator is not None:
        return student, teacher, collator
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
    columns = column_names(train_dataset)
    input_column = choose_input_column(config, columns, vision)
    collator = DistillationCollator(
        student_processor=student_processor,
        teacher_processor=teacher_processor,
        input_column=input_column,
        modality="vision" if vision else "text",
        label_column=choose_label_column(config, columns),
        max_length=config.max_length,
        teacher_input_column=None if vision else teacher_input_column(config, columns, input_column),
        teacher_embedding_column=config.teacher_embedding_column,
    )
    return student, teacher, collator


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


# ---- optional steps: the automatic layer choice and the teacher-feature cache --------------------------


def choose_layers_by_quality(setup: DistillationSetup, top_k: int) -> LayerChoice:
    """Score every teacher layer by knowledge quality on the training set; the top ``top_k`` are chosen."""
    config = setup.config
    dataset = setup.train_dataset
    if is_streamed(dataset):  # the layers are scored on a sample: the stream's first rows
        dataset = first_rows(dataset, config.layer_selection_samples)
    return choose_teacher_layers(
        setup.teacher, setup.collator.teacher_processor, dataset, setup.collator.teacher_column,
        setup.collator.label_column, setup.modality, resolve_embedding(config, setup.teacher).teacher_pooling, top_k=top_k,
        num_samples=config.layer_selection_samples, max_length=config.max_length, device=config.device,
        seed=config.seed,
    )


# Trainer samplers that group texts by token count (TrainingArguments.train_sampling_strategy).
LENGTH_SAMPLING = ("group_by_length", "batch_rebalance")


def check_length_sampling(config: DistillationConfig, vision: bool) -> None:
    """Samplers by length are opt-in, for text: they change which examples share a batch, which batch-level
    losses (perception coherence, Procrustes, CKA...) compare."""
    strategy = getattr(config, "train_sampling_strategy", "random")
    if strategy not in LENGTH_SAMPLING:
        return
    if vision:
        raise ValueError(f"train_sampling_strategy={strategy!r} groups texts by their token count; images have no "
                         "length: use 'random' (the default)")
    batch_level = [name for name in config.losses if LOSSES[name].batch_level]
    if batch_level:
        logger.warning("train_sampling_strategy=%s: each batch holds texts of similar length, and the batch-level "
                       "loss(es) %s compare only those (the default, 'random', mixes them)", strategy, batch_level)


def tokenized_training_set(setup: DistillationSetup) -> Dataset:
    """The training texts tokenised once (the collator then only pads each batch to its longest text), with
    their token counts when the Trainer's sampler groups by length."""
    config, collator = setup.config, setup.collator
    by_length = getattr(config, "train_sampling_strategy", "random") in LENGTH_SAMPLING
    return tokenize_once(setup.train_dataset, collator.student_processor, collator.teacher_processor,
                         collator.input_column, config.max_length, config.length_column_name if by_length else None,
                         teacher_input_column=collator.teacher_input_column)


def examples_drawn(config: DistillationConfig) -> int | None:
    """Training examples a ``max_steps`` run draws (steps x batch per device x accumulation x processes), or
    None for a run counted in epochs (each row is then drawn about ``num_train_epochs`` times)."""
    if config.max_steps is None or config.max_steps <= 0:
        return None
    return (config.max_steps * config.per_device_train_batch_size * config.gradient_accumulation_steps
            * max(1, config.world_size))


def with_cached_teacher_features(setup: DistillationSetup) -> Dataset:
    """The training set with the teacher's features of every layer pair as columns, read from or written to the cache.

    With several processes the main one computes them while the others wait, then read what it wrote (the
    main process of each node when the nodes do not share storage, as ``save_on_each_node`` says).
    """
    config = setup.config
    extractors = teacher_extractors(config, setup.teacher)
    with_logits = config.logit_kd_weight > 0
    cache_dir = resolve_cache_dir(config.teacher_cache, setup.train_dataset, setup.teacher,
                                  setup.collator.teacher_processor, extractors, setup.collator.teacher_column,
                                  setup.modality, config.max_length, with_logits, examples_drawn(config))
    if cache_dir is None:  # teacher_cache auto, and the teacher stays live
        return setup.train_dataset
    with config.main_process_first(local=config.save_on_each_node, desc="teacher features"):
        return add_cached_teacher_features(
            setup.train_dataset, cache_dir, setup.teacher, setup.collator.teacher_processor,
            extractors, setup.collator.teacher_column, setup.modality, config.max_length,
            with_logits=with_logits, device=config.device,
        )

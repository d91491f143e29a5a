"""The run's data: its splits loaded, labels encoded, texts checked, shuffled and cut, its columns chosen.

Part of :func:`hf_pcoh.setup.build_setup` (which builds a run from its config), failing early with a message
that names the option to change; also the checks that the training set gives at least one step and that a
length-grouped sampler applies, and the training texts tokenised once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, IterableDatasetDict

from .collator import DistillationCollator, tokenize_once
from .config import DistillationConfig
from .data import first_rows, is_streamed, load_splits
from .data.sources import STREAMED_ROWS_CHECKED, resolved_features
from .losses import LOSSES

logger = logging.getLogger(__name__)


# Rows of a streamed evaluation split read for evaluation when max_eval_samples does not say.
STREAMED_EVAL_ROWS = 1000
# The columns taken as the input when no option names one, in this order (a prompt/completion set: the completion,
# which a language-model student reads after its prompt).
TEXT_COLUMNS = ("text", "sentence", "content", "completion")
IMAGE_COLUMNS = ("image", "img", "pixel_values")


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
        if is_text_feature(first.features[column]):
            raise ValueError(f"label_column={column!r} of {config.dataset_name} holds class names, which a streamed data "
                             "set cannot map to class ids before reading all of it: drop --streaming, or store class "
                             "ids (a ClassLabel or integers) in the column")
        return splits
    encoded = labels_as_class_ids(dict(splits), column, lambda name: f"split {name!r} of {config.dataset_name}")
    return DatasetDict(encoded)


def is_text_feature(feature: object) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def labels_as_class_ids(splits: dict[str, Dataset], column: str, where: Callable[[str], str]) -> dict[str, Dataset]:
    """Class names in ``column`` become the same class ids in every split that has it: a ``ClassLabel`` of the
    sorted names of all of them, or of the ``ClassLabel`` a split already declares (a name it lacks is refused).
    Rows without a label are refused, naming how many; ``where(name)`` says which split a message is about."""
    labelled = {name: split for name, split in splits.items() if column in split.column_names}
    for name, split in labelled.items():
        missing = arrow_column(split, column).null_count
        if missing:
            raise ValueError(f"{where(name)}: {missing} row(s) have no label (None) in label_column={column!r}: drop "
                             "them (dataset.filter) or give another label_column")
    named = [name for name, split in labelled.items() if is_text_feature(split.features[column])]
    if not named:
        return splits
    declared = [(name, split.features[column]) for name, split in labelled.items()
                if isinstance(split.features[column], ClassLabel)]
    found = {name: set(pc.unique(arrow_column(labelled[name], column)).to_pylist()) for name in named}
    if declared:
        declared_name, labels = declared[0]
        for name, values in found.items():
            unknown = sorted(values - set(labels.names))
            if unknown:
                raise ValueError(f"{where(name)}: label_column={column!r} holds class names that the ClassLabel of "
                                 f"{where(declared_name)} lacks: {unknown[:5]}; give both the same classes")
    else:
        names = sorted(set().union(*found.values()))
        logger.info("label_column %r holds class names: mapped to %d class ids in sorted order (%s)", column,
                    len(names), ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
        labels = ClassLabel(names=names)
    return {name: split.cast_column(column, labels) if name in named else split for name, split in splits.items()}


def arrow_column(dataset: Dataset, column: str) -> pa.ChunkedArray:
    """``column`` of ``dataset`` as Arrow, its own rows only: a ``select`` or ``filter`` keeps the whole table under
    an index of the rows kept."""
    return dataset.select_columns([column]).with_format("arrow")[:].column(column)


def check_texts(config: DistillationConfig, split_name: str, dataset: Dataset, column: str) -> None:
    """The text column holds strings, none missing, not all blank; else one line naming split, column and fix."""
    check_text_column(f"split {split_name!r} of {config.dataset_name}, text_column={column!r}", dataset, column)


def check_text_column(where: str, dataset: Dataset, column: str) -> None:
    """:func:`check_texts` of one column, ``where`` naming it in the message."""
    values = arrow_column(dataset, column)  # the whole split, as Arrow: no Python strings are made
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
    for candidate in IMAGE_COLUMNS if vision else TEXT_COLUMNS:
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


# ---- training: steps, sampling by length, tokens ----------------------------------------------------


def check_steps_to_train(args: DistillationConfig, rows: int) -> None:
    """Refuse, before anything trains, a training set smaller than one batch (0 steps); say what would work.
    (``max_steps`` 0 and ``num_train_epochs`` 0 are refused by the config.)"""
    processes = max(args.world_size, 1)
    global_batch = args.per_device_train_batch_size * processes
    if args.dataloader_drop_last and rows < global_batch:
        per_process = rows // processes
        smaller = (f"a per_device_train_batch_size of at most {per_process}" if per_process >= 2 else
                   "more training rows")
        raise ValueError(
            f"the training set has {rows} rows, fewer than one batch of {global_batch} (per_device_train_batch_size="
            f"{args.per_device_train_batch_size} x {processes} process(es)), and dataloader_drop_last drops incomplete "
            f"batches: this run would train 0 steps. Use at least {global_batch} rows (max_train_samples) or "
            f"{smaller}"
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


def tokenized_training_set(config: DistillationConfig, collator: DistillationCollator, train_dataset: Dataset) -> Dataset:
    """The training texts tokenised once (the collator then only pads each batch to its longest text), with
    their token counts when the Trainer's sampler groups by length."""
    if collator.prompt_column is not None:  # prompt + completion: tokenised per batch, with the prompt's length
        return train_dataset
    by_length = getattr(config, "train_sampling_strategy", "random") in LENGTH_SAMPLING
    return tokenize_once(train_dataset, collator.student_processor, collator.teacher_processor,
                         collator.input_column, config.max_length, config.length_column_name if by_length else None,
                         teacher_input_column=collator.teacher_input_column)

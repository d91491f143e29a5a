"""What :class:`~hf_pcoh.trainer.DistillationTrainer` is given, made ready before it builds anything: TRL's
arguments resolved (``args=None``, the earlier keyword names, ``peft_config``), the data sets checked and their class
names mapped to class ids as the command line maps them (:func:`hf_pcoh.setup_data.labels_as_class_ids`), and the
models and collator built (:func:`hf_pcoh.setup_models.build_trainer_inputs`).

Every check fails before training, in one line naming the argument or option, what it holds and what would work.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from datasets import ClassLabel, Dataset
from huggingface_hub import is_offline_mode
from transformers import PreTrainedModel

from .collator import DistillationCollator
from .config import DistillationConfig
from .data import is_streamed
from .data.sources import column_names
from .errors import HubOfflineError
from .setup_data import IMAGE_COLUMNS, TEXT_COLUMNS, check_steps_to_train, check_text_column, is_text_feature
from .setup_data import labels_as_class_ids
from .setup_models import build_trainer_inputs

logger = logging.getLogger(__name__)

# The suffix of the output_dir of a trainer built with args=None, after the student's name (TRL: "<model>-SFT").
DEFAULT_OUTPUT_SUFFIX = "-Distill"
# The model classes whose logits are one per class of an example (the head a class objective trains).
CLASSIFIERS = ("ForSequenceClassification", "ForImageClassification")
# Config options that name a column of the training set.
COLUMN_OPTIONS = ("text_column", "image_column", "student_text_column", "teacher_text_column", "label_column",
                  "teacher_embedding_column")


@dataclass
class TrainerInputs:
    """The trainer's arguments, resolved: the config, both models (the teacher None when its embeddings are a
    column of the data), the collator, and the data sets with class ids for class names."""

    args: DistillationConfig
    student: PreTrainedModel
    teacher: PreTrainedModel | None
    collator: DistillationCollator
    train_dataset: Any
    eval_dataset: Any


def one_of(name: str, value: Any, old_name: str, old_value: Any) -> Any:
    """The argument given as ``name`` or under its earlier name ``old_name``; not both."""
    if value is not None and old_value is not None:
        raise ValueError(f"pass {name}= or {old_name}= (its earlier name), not both")
    return value if value is not None else old_value


def model_name(model: PreTrainedModel | str) -> str:
    """The last part of a model's Hub id or folder (``"my/student"`` -> ``"student"``), else its model type."""
    if isinstance(model, str):
        source = model
    else:
        source = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    name = str(source).rstrip("/\\").replace("\\", "/").split("/")[-1]
    return name or getattr(getattr(model, "config", None), "model_type", None) or "student"


def default_args(student: PreTrainedModel | str | None) -> DistillationConfig:
    """The config of a trainer given ``args=None``: the defaults of :class:`DistillationConfig`, written to
    ``<student name>-Distill`` as TRL's trainers name theirs (``<model>-SFT``)."""
    if student is None:
        raise ValueError("args=None: the default DistillationConfig names no model, so pass model= (the student: a "
                         "model object, folder or Hub id), or args=DistillationConfig(...)")
    return DistillationConfig(output_dir=model_name(student) + DEFAULT_OUTPUT_SUFFIX)


def eval_splits(eval_dataset: Any) -> dict[str, Any]:
    """The evaluation sets by the name a message gives them: the Trainer takes one, or a dict of them."""
    if isinstance(eval_dataset, dict):
        return {f"eval_dataset[{name!r}]": dataset for name, dataset in eval_dataset.items()}
    return {} if eval_dataset is None else {"eval_dataset": eval_dataset}


def with_eval_splits(eval_dataset: Any, splits: dict[str, Any]) -> Any:
    """:func:`eval_splits` put back in the shape the caller gave."""
    if isinstance(eval_dataset, dict):
        return {name: splits[f"eval_dataset[{name!r}]"] for name in eval_dataset}
    return splits.get("eval_dataset", eval_dataset)


def check_named_columns(args: DistillationConfig, train_dataset: Any) -> None:
    """Before any model loads: each column an option names is a column of ``train_dataset``, and without one there
    is an obvious input column (``text``, ``image``...)."""
    columns = column_names(train_dataset)
    for option in COLUMN_OPTIONS:
        column = getattr(args, option)
        if column and column not in columns:
            raise ValueError(f"{option}={column!r} is not a column of train_dataset (columns: {columns})")
    named = args.text_column or args.image_column or args.student_text_column
    if not named and not any(column in columns for column in TEXT_COLUMNS + IMAGE_COLUMNS):
        raise ValueError(f"train_dataset has no obvious text or image column (columns: {columns}): name it with "
                         "DistillationConfig(text_column=...) or image_column=")


def encode_labels(column: str | None, train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """Class names in the label column of the training and evaluation sets become the same class ids, as the
    command line maps them (a ``ClassLabel`` of the sorted names of all of them); a stream must hold ids already."""
    splits = {"train_dataset": train_dataset, **eval_splits(eval_dataset)}
    if column is None:
        return train_dataset, eval_dataset
    for name, dataset in splits.items():
        if is_streamed(dataset) and is_text_feature((dataset.features or {}).get(column)):
            raise ValueError(f"{name}: label_column={column!r} holds class names, which a streamed data set cannot map "
                             "to class ids before reading all of it: map them first (dataset.cast_column with a "
                             "ClassLabel), or pass a map-style Dataset")
    in_memory = {name: dataset for name, dataset in splits.items() if isinstance(dataset, Dataset)}
    encoded = {**splits, **labels_as_class_ids(in_memory, column, lambda name: name)}
    return encoded.pop("train_dataset"), with_eval_splits(eval_dataset, encoded)


def check_eval_columns(collator: DistillationCollator, eval_dataset: Any) -> None:
    """Each evaluation set has the columns the collator reads from the training set's."""
    read = {"the student's input": collator.input_column, "the teacher's input": collator.teacher_input_column,
            "label_column": collator.label_column, "the prompt": collator.prompt_column,
            "teacher_embedding_column": collator.teacher_embedding_column}
    for name, dataset in eval_splits(eval_dataset).items():
        columns = column_names(dataset)
        for role, column in read.items():
            if column is not None and column not in columns:
                raise ValueError(f"{name} has no column {column!r} ({role}, read from train_dataset): its columns are "
                                 f"{columns}; give it the training set's columns")


def check_texts_of(collator: DistillationCollator, train_dataset: Any, eval_dataset: Any) -> None:
    """The text columns the models read hold strings, none missing, not all blank (as the command line checks)."""
    if collator.modality != "text":
        return
    for name, dataset in {"train_dataset": train_dataset, **eval_splits(eval_dataset)}.items():
        if isinstance(dataset, Dataset):
            for column in dict.fromkeys((collator.input_column, collator.teacher_column)):
                check_text_column(f"{name}, column {column!r}", dataset, column)


def check_class_head(args: DistillationConfig, student: PreTrainedModel, collator: DistillationCollator,
                     train_dataset: Any) -> None:
    """A class objective's classification head (a ``*ForSequenceClassification`` / ``*ForImageClassification``
    student) has a logit for every class of the training set's labels."""
    feature = (getattr(train_dataset, "features", None) or {}).get(collator.label_column or "")
    heads = getattr(student.config, "num_labels", None)
    classifier = type(student).__name__.endswith(CLASSIFIERS)
    if (collator.next_token_labels or not (args.ce_weight > 0 or args.logit_kd_weight > 0) or not classifier
            or not isinstance(feature, ClassLabel) or heads is None or feature.num_classes <= heads):
        return
    raise ValueError(f"label_column={collator.label_column!r} has {feature.num_classes} classes but the student's "
                     f"classification head has {heads} (num_labels): load it with num_labels={feature.num_classes} "
                     f"(DistillationConfig(model_init_kwargs={{'num_labels': {feature.num_classes}}}))")


def with_peft(student: PreTrainedModel, peft_config: Any) -> PreTrainedModel:
    """The student with peft's adapters of ``peft_config`` (``get_peft_model``), as TRL's trainers wrap theirs:
    only the adapters train, and the student is saved as its adapters."""
    if peft_config is None:
        return student
    from peft import PeftModel, get_peft_model

    if isinstance(student, PeftModel):
        raise ValueError("the student is a PeftModel already (its adapters set up): pass peft_config=None to train "
                         "those, or pass its base model with peft_config")
    return get_peft_model(student, peft_config)


def warn_eval_smaller_than_a_batch(args: DistillationConfig, eval_dataset: Any) -> None:
    """An evaluation set smaller than one evaluation batch gives no eval loss when incomplete batches are dropped."""
    batch = args.per_device_eval_batch_size * max(args.world_size, 1)
    for name, dataset in eval_splits(eval_dataset).items():
        if args.dataloader_drop_last and hasattr(dataset, "__len__") and len(dataset) < batch:
            logger.warning("%s has %d rows, fewer than one evaluation batch of %d (per_device_eval_batch_size, as "
                           "the training batch by default) and dataloader_drop_last drops incomplete batches: it gives "
                           "no eval loss, only the embedding metrics", name, len(dataset), batch)


def resolve_trainer_inputs(
    args: DistillationConfig | None,
    student: PreTrainedModel | str | None,
    teacher: PreTrainedModel | str | None,
    collator: DistillationCollator | None,
    train_dataset: Any,
    eval_dataset: Any = None,
    processing_class: Any = None,
    peft_config: Any = None,
) -> TrainerInputs:
    """The trainer's arguments checked and resolved: ``args`` (default :func:`default_args`), the data sets'
    columns and labels, the models loaded or built and the collator built for the data (when not given), and the
    student wrapped with peft's adapters when ``peft_config`` is given."""
    if args is None:
        args = default_args(student)
    if not isinstance(args, DistillationConfig):
        raise ValueError(f"args must be a DistillationConfig (output_dir, layers, losses...), got {type(args).__name__}")
    if train_dataset is None:
        raise ValueError("train_dataset is required: distillation sizes its losses on two training rows")
    if args.push_to_hub and is_offline_mode():
        # The Trainer would create the Hub repository now and fail with huggingface_hub's raw error.
        raise HubOfflineError("push_to_hub is set but the Hub is offline (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE, or "
                              "train with push_to_hub off and call trainer.push_to_hub() once online")
    if peft_config is not None and importlib.util.find_spec("peft") is None:
        raise ValueError("peft_config needs the peft package: pip install 'hf_pcoh[peft]'")
    if collator is None:  # the caller's own data (a built setup's collator comes with the data it checked)
        check_named_columns(args, train_dataset)
    label_column = collator.label_column if collator is not None else args.label_column or (
        "label" if "label" in column_names(train_dataset) else None)
    train_dataset, eval_dataset = encode_labels(label_column, train_dataset, eval_dataset)
    built = collator is None
    student, teacher, collator = build_trainer_inputs(args, student, teacher, train_dataset, processing_class, collator)
    check_eval_columns(collator, eval_dataset)
    if built:
        check_texts_of(collator, train_dataset, eval_dataset)
    check_class_head(args, student, collator, train_dataset)
    if hasattr(train_dataset, "__len__"):
        check_steps_to_train(args, len(train_dataset))
    warn_eval_smaller_than_a_batch(args, eval_dataset)
    return TrainerInputs(args, with_peft(student, peft_config), teacher, collator, train_dataset, eval_dataset)

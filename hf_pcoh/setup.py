"""From a :class:`DistillationConfig` to everything a run needs: data, teacher, student, processors, collator, and how
features are read from both models.

:func:`build_setup` builds them in order, failing early with a message that names the option to change: the data
(:mod:`hf_pcoh.setup_data`), the models, their processors and the collator (:mod:`hf_pcoh.setup_models`), then the
run's :class:`~hf_pcoh.readout.FeatureReadout` (with ``teacher_layers: auto`` the teacher layers are chosen here,
by knowledge quality) and, with ``teacher_cache``, the cached teacher features (:mod:`hf_pcoh.setup_steps`). The
config is read, never changed. The models and the training set are tagged with the config's names for them
(:mod:`hf_pcoh.run_sources`), which the trainer records and the model card tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from datasets import Dataset
from transformers import PreTrainedModel, set_seed

from .collator import DistillationCollator
from .config import DistillationConfig
from .data import first_rows
from .models import is_vision_config
from .precomputed_teacher import check_teacher_embeddings
from .readout import FeatureReadout, resolve_readout
from .run_sources import config_data_source, config_model_source, mark_source, received_data_source
from .setup_data import (
    check_length_sampling,
    count_labels,
    encode_string_labels,
    load_config_splits,
    prepare_splits,
    tokenized_training_set,
)
from .setup_models import (
    build_collator, build_processors, build_student, build_teacher, check_image_channels, run_task,
)
from .setup_steps import choose_layers_by_quality, with_cached_teacher_features


@dataclass
class RunInputs:
    """What a run reads, before it decides how it reads features: the data, both models, their processors (in the
    collator) and the collator."""

    config: DistillationConfig
    teacher: PreTrainedModel | None  # None: the teacher's embeddings are a column of the data (teacher_embedding_column)
    student: PreTrainedModel
    collator: DistillationCollator
    train_dataset: Dataset
    eval_dataset: Dataset | None
    modality: str


@dataclass
class DistillationSetup(RunInputs):
    """Everything a :class:`~hf_pcoh.trainer.DistillationTrainer` needs, built from a config: its inputs and the
    run's :class:`~hf_pcoh.readout.FeatureReadout` (layers, poolings, extractors; ``teacher_layers: auto`` chosen)."""

    readout: FeatureReadout


def build_setup(config: DistillationConfig) -> DistillationSetup:
    """Load data, models and processors as the config says, resolve how features are read; fail early with a
    clear message."""
    inputs = build_run_inputs(config)
    train = inputs.train_dataset
    data_source = received_data_source(train)  # the config's data set, with its columns before tokenising
    check_length_sampling(config, inputs.modality == "vision")
    if inputs.modality == "text" and isinstance(train, Dataset):
        train = tokenized_training_set(config, inputs.collator, train)
    choose = partial(choose_layers_by_quality, config, inputs.teacher, inputs.collator, train,
                     top_k=len(config.student_layers))
    readout = resolve_readout(config, inputs.teacher, choose_teacher_layers=choose)
    if config.teacher_cache:
        train = with_cached_teacher_features(config, inputs.teacher, inputs.collator, train, readout.teacher_extractors)
    # The trainer names what it is given by these tags (hf_pcoh.run_sources): the config's data, not "in-memory" data.
    return DistillationSetup(config, inputs.teacher, inputs.student, inputs.collator, mark_source(train, data_source),
                             inputs.eval_dataset, inputs.modality, readout)


def build_run_inputs(config: DistillationConfig) -> RunInputs:
    """The data (shuffled and cut, its texts checked), teacher and student (built or loaded), their processors checked
    against them, and the collator; no choice of how features are read yet."""
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
    train, evaluation, input_column, _ = prepare_splits(config, splits, vision)
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
    collator = build_collator(config, student_processor, teacher_processor, list(train.column_names), vision,
                              causal_lm=run_task(config, student) == "causal_lm")
    if teacher is not None:
        mark_source(teacher, config_model_source(config, "teacher"))
    mark_source(student, config_model_source(config, "student"))
    return RunInputs(config, teacher, student, collator, mark_source(train, config_data_source(config, train)),
                     evaluation, collator.modality)

"""Where a run's teacher, student and data came from, as the trainer received them: recorded in
``distillation_config.json`` (:mod:`hf_pcoh.provenance`) and told by the model card.

A model is named by what it was given as: a Hub id or a local folder (the string passed to the trainer, or a model
object's ``name_or_path``), the ``teacher_config`` / ``student_config`` it was built from, or, for an object with
neither, "a model object built from a config". The data is named by the config's ``dataset_name`` only when
:func:`hf_pcoh.setup.build_setup` loaded it from there; any other data set given to the trainer is a local /
in-memory one, told by its rows and columns.

``build_setup`` tags what it builds (:func:`mark_source`), so the objects a setup hands to ``DistillationTrainer``
(the command line's path, or the step-by-step one in Python) are named as the config names them: one path,
:func:`received_sources`, for every way a trainer is called.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import DistillationConfig
from .data import is_streamed
from .data.sources import column_names

# The attribute that build_setup's models and data sets carry: the source the config gave them.
SOURCE_ATTRIBUTE = "hf_pcoh_source"
# The kinds of model source, by what can load the model again.
HUB, LOCAL, CONFIG, OBJECT, PRECOMPUTED = "hub", "local", "config", "object", "precomputed"


@dataclass(frozen=True)
class ModelSource:
    """Where a teacher or student came from: ``kind`` is ``hub`` / ``local`` (``name_or_path`` names it), ``config``
    (built from ``teacher_config`` / ``student_config``; a student ``init`` from ``random`` or the ``teacher``'s
    layers), ``object`` (a model object with no name or path) or ``precomputed`` (no teacher: its embeddings are a
    column of the data)."""

    kind: str
    name_or_path: str | None = None
    init: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @property
    def loadable(self) -> bool:
        """Whether a recipe can build this model again: a Hub id, a local folder that is still there, or a config."""
        if self.kind == LOCAL:
            return bool(self.name_or_path) and os.path.isdir(self.name_or_path)
        return self.kind in (HUB, CONFIG, PRECOMPUTED)


@dataclass(frozen=True)
class DataSource:
    """The training data: ``name`` is the config's ``dataset_name`` when the run loaded it from there, else None (a
    data set object given to the trainer); its rows (None for a stream) and columns."""

    name: str | None
    rows: int | None
    columns: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``wordnet_glosses``, or ``a local/in-memory dataset (64 rows; columns text, label)``."""
        if self.name:
            return self.name
        rows = "streamed" if self.rows is None else f"{self.rows:,} rows"
        return f"a local/in-memory dataset ({rows}; columns {', '.join(self.columns) or 'none'})"


@dataclass(frozen=True)
class RunSources:
    """Where a run's teacher, student and training data came from."""

    teacher: ModelSource
    student: ModelSource
    dataset: DataSource


def mark_source(value: Any, source: ModelSource | DataSource) -> Any:
    """Tag a model or data set with where the config says it came from; returns it."""
    try:
        setattr(value, SOURCE_ATTRIBUTE, source)
    except (AttributeError, TypeError):  # an object that takes no attributes is described as received
        pass
    return value


def path_source(name_or_path: str) -> ModelSource:
    """A string's source: a local folder when one is there (or the path is absolute), else a Hub id."""
    if os.path.isdir(name_or_path) or os.path.isabs(name_or_path) or name_or_path.count("/") != 1:
        return ModelSource(LOCAL, name_or_path)
    return ModelSource(HUB, name_or_path)


def config_model_source(config: DistillationConfig, role: str) -> ModelSource:
    """The ``role`` ("teacher" / "student") model as the config's options build it."""
    name = getattr(config, f"{role}_model_name_or_path")
    if name:
        return path_source(name)
    if role == "teacher" and config.teacher_embedding_column and config.teacher_config is None:
        return ModelSource(PRECOMPUTED)
    if role == "student":
        return ModelSource(CONFIG, init="teacher" if config.student_init_from_teacher else "random")
    return ModelSource(CONFIG)


def config_data_source(config: DistillationConfig, dataset: Any) -> DataSource:
    """The training set loaded from the config's ``dataset_name``."""
    return DataSource(config.dataset_name, *size_and_columns(dataset))


def size_and_columns(dataset: Any) -> tuple[int | None, list[str]]:
    rows = None if is_streamed(dataset) or not hasattr(dataset, "__len__") else len(dataset)
    return rows, [str(column) for column in column_names(dataset) or []]


def received_model_source(given: Any, role: str, config: DistillationConfig) -> ModelSource:
    """The source of the ``model`` / ``teacher_model`` argument: None is built from the config, a string is a folder
    or Hub id, an object is named by its tag (built by ``build_setup``) or its ``name_or_path``."""
    if given is None:
        return config_model_source(config, role)
    if isinstance(given, (str, os.PathLike)):
        return path_source(os.fspath(given))
    tagged = getattr(given, SOURCE_ATTRIBUTE, None)
    if isinstance(tagged, ModelSource):
        return tagged
    name = getattr(given, "name_or_path", None) or getattr(getattr(given, "config", None), "_name_or_path", None)
    return path_source(str(name)) if name else ModelSource(OBJECT)


def received_data_source(dataset: Any) -> DataSource:
    """The source of the ``train_dataset`` argument: its tag (loaded by ``build_setup``), else a data set object."""
    tagged = getattr(dataset, SOURCE_ATTRIBUTE, None)
    if isinstance(tagged, DataSource):
        return tagged
    return DataSource(None, *size_and_columns(dataset))


def received_sources(config: DistillationConfig, student: Any, teacher: Any, train_dataset: Any) -> RunSources:
    """Where the trainer's student, teacher and training data came from, from the arguments as they were given."""
    teacher_source = received_model_source(teacher, "teacher", config)
    if teacher is None and config.teacher_embedding_column:
        teacher_source = ModelSource(PRECOMPUTED, config.teacher_model_name_or_path)
    return RunSources(teacher_source, received_model_source(student, "student", config),
                      received_data_source(train_dataset))


def model_label(model: Any) -> str:
    """A model in one phrase (the teacher-feature cache records it): its Hub id or folder, else its kind."""
    tagged = getattr(model, SOURCE_ATTRIBUTE, None)
    name = tagged.name_or_path if isinstance(tagged, ModelSource) else getattr(model, "name_or_path", None)
    if name:
        return str(name)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"a {model_type} model built from a config" if model_type else "a model object"

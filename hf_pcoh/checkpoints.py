"""Resuming from a checkpoint: checking its files before a run starts, then loading its weights and schedule.

A checkpoint cut short (a full disk, a copy killed half-way) otherwise fails deep inside the Trainer with a
safetensors or zip error, after the models are loaded. :func:`check_checkpoint_files` reads only the files'
structure, not their tensors: a safetensors file must be as long as its header says, a ``torch.save``
archive (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ``scaler.pt``) must have its zip directory
and every member within the file, JSON files must parse.

Then ``DistillationTrainer`` loads the student and the loss heads with :func:`load_distillation_checkpoint` (a
student of another shape is refused naming the config fields that differ, :func:`config_differences`), and a
new ``learning_rate`` is applied to the restored optimizer and schedule (:func:`rescale_learning_rate`).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import struct
import zipfile
from typing import Any

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from .artifacts import HEADS_FILE
from .distillation_model import DistillationModel
from .weights import weight_files

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", HEADS_FILE, "trainer_state.json")
ARCHIVES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_*.pth")


def safetensors_problem(path: str) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (header_length,) = struct.unpack("<Q", prefix)
        if 8 + header_length > size:
            return f"its header claims {header_length} bytes but the file has {size}"
        try:
            header = json.loads(stream.read(header_length))
        except ValueError:
            return "its header is not valid JSON"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{size} bytes where its header describes {expected}"
    return None


def archive_problem(path: str) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` (zip) archive, or None; reads its directory, not its data."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.header_offset + member.compress_size > size:
                    return f"its member {member.filename} runs past the end of the file ({size} bytes)"
    except zipfile.BadZipFile as error:
        return f"not a whole archive ({error})"
    return None


def checkpoint_problems(checkpoint: str) -> list[str]:
    """What is missing or damaged in ``checkpoint`` ("model.safetensors: 1234 bytes where ..."), or []."""
    problems = [f"{name} is missing" for name in REQUIRED_FILES if not os.path.isfile(os.path.join(checkpoint, name))]
    weights = weight_files(checkpoint)
    if not weights:
        problems.append("model.safetensors is missing")
    for path in weights + [os.path.join(checkpoint, HEADS_FILE)]:
        if os.path.isfile(path):
            problem = safetensors_problem(path)
            if problem:
                problems.append(f"{os.path.basename(path)}: {problem}")
    for pattern in ARCHIVES:
        for path in sorted(glob.glob(os.path.join(glob.escape(checkpoint), pattern))):
            problem = archive_problem(path)
            if problem:
                problems.append(f"{os.path.basename(path)}: {problem}")
    for name in ("config.json", "trainer_state.json"):
        path = os.path.join(checkpoint, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as stream:
                    json.load(stream)
            except ValueError as error:
                problems.append(f"{name} is not valid JSON ({error})")
    return problems


def check_checkpoint_files(checkpoint: str) -> None:
    """Raise a ``ValueError`` naming each missing or damaged file of ``checkpoint``, and the other checkpoints."""
    if not os.path.isdir(checkpoint):
        raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a folder: give a checkpoint-N folder of a run")
    problems = checkpoint_problems(checkpoint)
    if not problems:
        return
    parent = os.path.dirname(os.path.abspath(checkpoint))
    others = sorted((path for path in glob.glob(os.path.join(glob.escape(parent), "checkpoint-*"))
                     if os.path.abspath(path) != os.path.abspath(checkpoint) and not checkpoint_problems(path)),
                    key=lambda path: int(path.rsplit("-", 1)[1]) if path.rsplit("-", 1)[1].isdigit() else -1)
    elsewhere = (f"resume from another checkpoint ({', '.join(others)})" if others else
                 "start the run again (--overwrite_output_dir)")
    raise ValueError(
        f"resume_from_checkpoint={checkpoint!r} is damaged or incomplete: {'; '.join(problems)} (cut short by a full "
        f"disk or an interrupted copy?). Nothing was loaded: {elsewhere}"
    )


# ---- loading a checkpoint's weights and schedule -------------------------------------------------------


def earlier_checkpoint_advice(checkpoint: str) -> str:
    """What to resume from when ``checkpoint``'s weights had already diverged: the latest complete checkpoint
    of the same run before it, named, or a fresh start when there is none."""
    step = checkpoint_step(checkpoint)
    parent = os.path.dirname(os.path.abspath(checkpoint))
    earlier = [path for path in glob.glob(os.path.join(glob.escape(parent), "checkpoint-*"))
               if checkpoint_step(path) is not None and step is not None and checkpoint_step(path) < step
               and not checkpoint_problems(path)]
    if not earlier:
        return "no earlier checkpoint of this run is complete: train again from the start with a lower learning rate"
    return f"resume from the earlier checkpoint {max(earlier, key=checkpoint_step)}"


def checkpoint_step(path: str) -> int | None:
    """N of a ``checkpoint-N`` folder, or None."""
    name = os.path.basename(os.path.normpath(path))
    suffix = name.removeprefix("checkpoint-")
    return int(suffix) if suffix != name and suffix.isdigit() else None


def load_distillation_checkpoint(model: DistillationModel, checkpoint_dir: str) -> None:
    """Restore the student's weights and the heads from a directory written by ``DistillationTrainer``."""
    heads_path = os.path.join(checkpoint_dir, HEADS_FILE)
    if os.path.isfile(os.path.join(checkpoint_dir, "adapter_config.json")):
        raise ValueError(f"{checkpoint_dir} holds a peft student's adapters: resuming a peft_config run is not "
                         "supported yet; start a new run (its adapters can be loaded with PeftModel.from_pretrained)")
    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")) or not os.path.isfile(heads_path):
        raise ValueError(
            f"{checkpoint_dir} is not a distillation checkpoint: it needs config.json, model.safetensors and {HEADS_FILE}"
        )
    # from_pretrained applies any key renaming the architecture needs; then copy into the live student.
    try:
        reloaded = type(model.student).from_pretrained(checkpoint_dir, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as error:
        raise ValueError(f"{checkpoint_dir}: the student's weights cannot be read ({error}); resume from another "
                         "checkpoint") from None
    differences = config_differences(reloaded.config, model.student.config)
    student_state = reloaded.state_dict()
    if shapes_of(student_state) != shapes_of(model.student.state_dict()):
        raise ValueError(
            f"{checkpoint_dir} holds a student of another shape than this run builds ({differences or 'other tensors'}"
            "): resume with the student_config / student model of the run that wrote it"
        )
    try:
        heads_state = load_file(heads_path)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{heads_path} cannot be read ({error}); resume from another checkpoint") from None
    live = set(model.state_dict())
    missing = sorted(key for key in live if not key.startswith("student.") and key not in heads_state)
    unexpected = sorted(key for key in heads_state if key not in live or key.startswith("student."))
    if missing or unexpected:
        raise ValueError(
            f"{heads_path} does not match this recipe's losses (missing {missing}, unexpected {unexpected}): resume "
            "with the same losses, layers and models as the run that wrote it"
        )
    load_whole_state(model, {**{f"student.{key}": value for key, value in student_state.items()}, **heads_state})


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Each tensor's whole shape (a sharded DTensor reports the whole tensor's)."""
    return {key: tuple(value.shape) for key, value in state.items()}


def load_whole_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a whole (unsharded) state dict into ``model``, whose parameters may be sharded.

    Under FSDP2 the parameters are DTensors, which ``load_state_dict`` cannot fill from whole tensors: torch's
    distributed state-dict API shards each whole tensor as the module is sharded (every process holds the whole
    state, read from the checkpoint's files). Otherwise a plain, strict ``load_state_dict``.
    """
    if any(hasattr(parameter, "to_local") for parameter in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
    else:
        model.load_state_dict(state, strict=True)


# Config entries that describe the run, not the shape of the weights.
BOOKKEEPING_CONFIG_KEYS = {"transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype",
                           "id2label", "label2id", "output_hidden_states", "use_cache"}


def config_differences(saved: Any, live: Any, limit: int = 5) -> str:
    """``hidden_size 32 in the checkpoint, 16 here; ...``: how a checkpoint's model config differs from this run's."""
    saved_values, live_values = saved.to_dict(), live.to_dict()
    keys = sorted(key for key in set(saved_values) | set(live_values)
                  if key not in BOOKKEEPING_CONFIG_KEYS and saved_values.get(key) != live_values.get(key))
    return "; ".join(f"{key} {saved_values.get(key)!r} in the checkpoint, {live_values.get(key)!r} here" for key in keys[:limit])


def rescale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, learning_rate: float) -> None:
    """Scale a resumed optimizer's learning rates and schedule so that its base rate is ``learning_rate``."""
    schedule = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the torch scheduler
    base_rates = getattr(schedule, "base_lrs", None)
    if not base_rates or not base_rates[0] > 0 or math.isclose(base_rates[0], learning_rate, rel_tol=1e-9):
        return
    ratio = learning_rate / base_rates[0]
    logger.warning("resuming with learning_rate=%g; the checkpoint's schedule used %g: it is rescaled", learning_rate,
                   base_rates[0])
    schedule.base_lrs = [rate * ratio for rate in base_rates]
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(schedule, "_last_lr"):
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]

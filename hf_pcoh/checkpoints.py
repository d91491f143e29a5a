"""Checking a checkpoint before a run resumes from it: every file there and whole.

A checkpoint cut short (a full disk, a copy killed half-way) otherwise fails deep inside the Trainer with a
safetensors or zip error, after the models are loaded. :func:`check_checkpoint_files` reads only the files'
structure, not their tensors: a safetensors file must be as long as its header says, a ``torch.save``
archive (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ``scaler.pt``) must have its zip directory
and every member within the file, JSON files must parse. A student of another shape is caught when the
weights are loaded (:func:`hf_pcoh.trainer.load_distillation_checkpoint`).
"""

from __future__ import annotations

import glob
import json
import os
import struct
import zipfile

from .artifacts import HEADS_FILE
from .weights import weight_files

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

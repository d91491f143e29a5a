"""Reading a distillation run's output directory: its provenance files, the student's files, what is uploaded.

A run's folder holds the student as a plain ``transformers`` model, the projectors
(``distillation_heads.safetensors``), ``distillation_config.json`` (the recipe and what it was run on),
optionally ``eval_results.json`` and PNG plots; Trainer checkpoints, TensorBoard logs and pickles are
never uploaded, nor are symbolic links (a Hub repo holds files, and a link may point outside the run).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ..artifacts import DISTILLATION_CONFIG_FILE, EVAL_RESULTS_FILE, MODEL_CARD_FILE
from ..output_dir import LOCK_FILE

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
CARD_FILE = MODEL_CARD_FILE

# Never uploaded: Trainer checkpoints and TensorBoard logs (the student is saved at the top level),
# pickled files (training_args.bin; weights are safetensors), leftovers of interrupted atomic writes, and the
# run's lock file (it names the machine and command; present while the run publishes at its end).
UPLOAD_IGNORE_PATTERNS = ("checkpoint-*/", "runs/", "*.bin", "*.tmp", LOCK_FILE)

# The entries distillation_config.json must have for a card to be written from it.
DESCRIPTION_KEYS = ("recipe", "teacher", "student", "dataset", "losses", "modality", "task")


def read_run(output_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(distillation_config, eval_results or None)`` of a run's output directory; errors name the file."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir={str(folder)!r} is not a directory; give the output_dir of a distillation run")
    config_path = folder / DISTILLATION_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {folder} is not the output of a finished hf_pcoh distillation run "
            f"(scripts/distill.py writes {DISTILLATION_CONFIG_FILE} beside the student when training ends)"
        )
    description = read_json(config_path)
    for key in DESCRIPTION_KEYS:
        if key not in description:
            raise ValueError(f"{config_path} has no {key!r} entry; it was not written by hf_pcoh "
                             f"(keys: {sorted(description)})")
    results_path = folder / EVAL_RESULTS_FILE
    return description, (read_json(results_path) if results_path.is_file() else None)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error for broken JSON or a non-object."""
    try:
        with path.open(encoding="utf-8") as stream:
            payload = json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(payload).__name__}")
    return payload


def read_model_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The student's ``config.json`` as a dict, or ``{}`` when the folder has none."""
    path = Path(output_dir) / MODEL_CONFIG_FILE
    return read_json(path) if path.is_file() else {}


def check_student_files(output_dir: str | os.PathLike) -> None:
    """Fail, naming the missing file, unless the folder holds a loadable student and its provenance.

    Those files must be regular files: a symbolic link is never uploaded, so a linked ``config.json`` or
    ``model.safetensors`` would give a repo without it (``ValueError`` naming the link).
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir={str(folder)!r} is not a directory; give the output_dir of a distillation run")
    for path in student_file_paths(folder):
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link, and links are never uploaded (the repo would have no "
                             f"{path.name}): replace the link with a copy of the file it points to, then publish again")
    if not (folder / MODEL_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder / MODEL_CONFIG_FILE} is missing: the student's config must be saved with save_pretrained"
        )
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise FileNotFoundError(
            f"{folder / WEIGHTS_FILES[0]} is missing: the student's weights must be saved as safetensors "
            f"({' or '.join(WEIGHTS_FILES)}); *.bin pickles are not uploaded"
        )
    if not (folder / DISTILLATION_CONFIG_FILE).is_file():
        read_run(folder)  # raises, naming the file


def student_file_paths(folder: Path) -> list[Path]:
    """The files a published student needs: its config, its weights (with the shards its index names) and
    ``distillation_config.json``; whether each exists is not checked here."""
    paths = [folder / name for name in (MODEL_CONFIG_FILE, *WEIGHTS_FILES, DISTILLATION_CONFIG_FILE)]
    index = folder / WEIGHTS_FILES[1]
    if index.is_file() and not index.is_symlink():
        weight_map = read_json(index).get("weight_map")
        if isinstance(weight_map, dict):
            paths += [folder / shard for shard in sorted(set(map(str, weight_map.values())))]
    return paths


def folder_contents(output_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(regular files, symbolic links)`` under ``output_dir``: relative POSIX paths, sorted; links not followed."""
    folder = Path(output_dir).expanduser().resolve()
    files: list[str] = []
    links: list[str] = []
    for directory, subdirectories, names in os.walk(folder):  # does not descend into linked folders
        root = Path(directory)
        links += [(root / name).relative_to(folder).as_posix() for name in subdirectories if (root / name).is_symlink()]
        for path in (root / name for name in names):
            if path.is_symlink():
                links.append(path.relative_to(folder).as_posix())
            elif path.is_file():
                files.append(path.relative_to(folder).as_posix())
    return sorted(files), sorted(links)


def uploadable(paths: list[str]) -> list[str]:
    """``paths`` less what is never uploaded, filtered exactly as ``upload_folder`` filters them."""
    return list(filter_repo_objects(paths, ignore_patterns=[*UPLOAD_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))


def link_ignore_patterns(links: list[str]) -> list[str]:
    """``upload_folder`` ignore patterns that match exactly these links (and, for a linked folder, what is in it)."""
    patterns = []
    for link in links:
        escaped = glob.escape(link)  # [, * and ? in a name are literal characters, not wildcards
        patterns += [escaped, f"{escaped}/"]
    return patterns


def files_to_upload(output_dir: str | os.PathLike, with_card: bool = True) -> list[str]:
    """The files ``upload_folder`` sends from ``output_dir``, relative and sorted, filtered as it filters them.

    Symbolic links are left out, with a warning. ``with_card`` adds ``README.md`` when it is not written yet
    (a dry run lists what would be sent).
    """
    files, links = folder_contents(output_dir)
    if links:
        logger.warning("%d symbolic link(s) in %s are not uploaded (a Hub repo holds files; copy the target in "
                       "to publish it): %s", len(links), output_dir, ", ".join(links))
    kept = uploadable(files)
    if with_card and CARD_FILE not in kept:
        kept = sorted([*kept, CARD_FILE])
    return kept

"""The files a distillation run writes into its output directory (read by evaluation, cards and resume), and
the one way they are written: :func:`atomic_file` (also :func:`write_json`, :func:`write_text`).

A run folder may come from elsewhere (a download, a shared disk) and hold symbolic links under the names a run
writes; an existing path is therefore never opened for writing: each file is written into a fresh temporary
file beside it (``tempfile.mkstemp``, which creates it) and moved onto its name (``os.replace`` replaces a link
itself, not what it points to). So a link there is replaced by the file, the file it pointed to is untouched,
and an interrupted write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

DISTILLATION_CONFIG_FILE = "distillation_config.json"  # the recipe and provenance of the run
EVAL_RESULTS_FILE = "eval_results.json"  # student vs teacher on held-out data
EVAL_RESULTS_TABLE_FILE = "eval_results.md"  # the same, as a table (hf-pcoh evaluate)
HEADS_FILE = "distillation_heads.safetensors"  # the losses' learned heads (projectors, CosPress map)
TEACHER_PROCESSOR_DIR = "teacher_processor"  # the teacher's processor, when it differs from the student's
MODEL_CARD_FILE = "README.md"
LAYER_QUALITY_TABLE_FILE = "layer_quality.md"  # knowledge quality per teacher layer (teacher_layers auto)
LAYER_QUALITY_PLOT_FILE = "layer_quality.png"


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux: /proc)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, and only where /proc is missing)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, binary: bool = False) -> Iterator[IO[Any]]:
    """A stream onto a fresh temporary file beside ``path``, moved onto ``path`` when the block ends.

    Never opens ``path`` itself: a symbolic link (or any file) there is replaced, not written through. The file
    gets the permissions a newly created file would (``0o666 & ~umask``, 0644 under umask 022), not mkstemp's
    0600. On an error the temporary file is removed and ``path`` keeps what it held.
    """
    folder, name = os.path.split(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~current_umask())
        text = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(descriptor, "wb" if binary else "w", **text) as stream:
            descriptor = None  # the stream owns it now
            yield stream
        os.replace(temporary, path)
    except BaseException:
        if descriptor is not None:
            os.close(descriptor)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as stream:
        stream.write(text)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as stream:
        json.dump(payload, stream, indent=2, default=str)

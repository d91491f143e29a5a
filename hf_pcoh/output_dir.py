"""A run's output folder: usable, written by one run at a time, and never replaced silently.

:func:`claim_output_dir` is what :func:`hf_pcoh.run_distillation` holds for the whole run:

- ``output_dir`` must be a folder that can be written (created if missing): a file there, or a folder
  that cannot be written, is refused before anything is loaded;
- the run takes an exclusive lock on it (``fcntl.flock`` on ``.hf_pcoh.lock`` inside, which names the
  holder: pid, host, start time, command). A second run into the same folder fails at once, naming the
  first; the kernel drops the lock of a killed process, so a stale lock file never blocks;
- a folder that already holds a run (its student, ``distillation_config.json`` or ``checkpoint-*``) is
  refused unless the run resumes (``resume_from_checkpoint``) or ``overwrite_output_dir`` says to replace
  it; then the previous run's files are removed once the new run's inputs are checked
  (:meth:`OutputDirClaim.clear_previous_run`), so a bad input loses nothing.

With several processes, only the one that saves takes the lock; every process takes the same decision.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from .artifacts import (
    DISTILLATION_CONFIG_FILE,
    EVAL_RESULTS_FILE,
    EVAL_RESULTS_TABLE_FILE,
    HEADS_FILE,
    LAYER_QUALITY_PLOT_FILE,
    LAYER_QUALITY_TABLE_FILE,
    MODEL_CARD_FILE,
    TEACHER_PROCESSOR_DIR,
)
from .distributed import any_process

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = ".hf_pcoh.lock"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-\d+$")
# What a run writes besides its processor files (those are rewritten by every save): removed when a run is replaced.
RUN_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", HEADS_FILE, "training_args.bin",
    "trainer_state.json", "all_results.json", "train_results.json", DISTILLATION_CONFIG_FILE, EVAL_RESULTS_FILE,
    EVAL_RESULTS_TABLE_FILE, LAYER_QUALITY_TABLE_FILE, LAYER_QUALITY_PLOT_FILE,
    # a sentence-transformers student's files (hf_pcoh.sentence_embedding): stale ones would change its embedding
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)
RUN_FOLDERS = ("runs", TEACHER_PROCESSOR_DIR)  # TensorBoard logs; the teacher's processor
SHARD_PATTERN = re.compile(r"^model-\d+-of-\d+\.safetensors$")
MODULE_FOLDER_PATTERN = re.compile(r"^\d+_(Pooling|Dense|Normalize)$")  # sentence-transformers modules
CARD_MARKER = "written by hf_pcoh"  # in the comment at the top of every card hf_pcoh writes


class OutputDirError(ValueError):
    """``output_dir`` cannot be used by this run; the message says why and what would work."""


def checkpoints_in(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``output_dir``, by step."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if CHECKPOINT_PATTERN.match(name)
             and os.path.isdir(os.path.join(output_dir, name))]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


def is_card(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return CARD_MARKER in stream.read(1 << 20)  # after the front matter, which can be long
    except OSError:
        return False


def previous_run(output_dir: str) -> list[str]:
    """The entries of ``output_dir`` that a previous run wrote (checkpoints, student, results, card)."""
    if not os.path.isdir(output_dir):
        return []
    entries = checkpoints_in(output_dir)
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        folder = os.path.isdir(path) and (name in RUN_FOLDERS or MODULE_FOLDER_PATTERN.match(name))
        if name in RUN_FILES or SHARD_PATTERN.match(name) or folder:
            entries.append(name)
        elif name == MODEL_CARD_FILE and is_card(path):
            entries.append(name)
    return entries


def holds_finished_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a run that got to the end (it wrote ``distillation_config.json``)."""
    return os.path.isfile(os.path.join(output_dir, DISTILLATION_CONFIG_FILE))


def check_writable(output_dir: str) -> None:
    """Refuse a path that is a file, lies under a file, or cannot be written; write nothing that stays."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputDirError(f"output_dir={output_dir!r} is a file, not a folder: give the path of a folder (it is "
                             "created if missing)")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputDirError(f"output_dir={output_dir!r} cannot be created: {existing} is a file")
    try:  # os.access says yes to root even where writing fails (read-only mounts, /sys): try it
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputDirError(f"output_dir={output_dir!r} is not writable ({existing}: {error.strerror}): give a "
                             "folder you can write to") from None


@dataclass
class OutputDirClaim:
    """The lock held on ``output_dir`` and what the run found there."""

    output_dir: str
    previous: list[str] = field(default_factory=list)  # what a previous run left, to remove when replacing it
    created: bool = False
    lock_fd: int | None = None

    def clear_previous_run(self) -> None:
        """Remove the previous run's files (``overwrite_output_dir``), once the new run's inputs are checked."""
        if not self.previous:
            return
        logger.warning("replacing the previous run in %s: removing %s", self.output_dir, ", ".join(self.previous))
        for name in self.previous:
            path = os.path.join(self.output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        self.previous = []

    def release(self) -> None:
        lock_path = os.path.join(self.output_dir, LOCK_FILE)
        if self.lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)  # while still locked: a run that opened the old file sees it is gone
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.output_dir)  # only if this run created it and left it empty


def holder_description(lock_path: str) -> str:
    try:
        with open(lock_path, encoding="utf-8") as stream:
            holder = json.load(stream)
        return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                f"{holder.get('command')}")
    except (OSError, ValueError):
        return "a run that is starting"


def lock(claim: OutputDirClaim) -> None:
    """Take the exclusive lock on ``claim.output_dir`` or raise, naming the run that holds it."""
    if fcntl is None:
        return
    lock_path = os.path.join(claim.output_dir, LOCK_FILE)
    while True:
        try:  # O_NOFOLLOW: a link planted under the lock's name is never written through
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as error:
            if not os.path.islink(lock_path):
                raise
            raise OutputDirError(f"{lock_path} is a symbolic link ({error.strerror}), not a run's lock file: remove "
                                 "it and run again") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputDirError(
                f"output_dir={claim.output_dir!r} is in use by another run ({holder_description(lock_path)}): wait "
                "for it to end, or give another --output_dir"
            ) from None
        # The holder may have released and unlinked the file between our open and our flock: retry on the new one.
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}
    os.ftruncate(descriptor, 0)
    os.write(descriptor, json.dumps(holder).encode())
    claim.lock_fd = descriptor


def refusal(output_dir: str, previous: list[str]) -> str:
    """Why a folder that holds a run is not written into, and the three ways on."""
    checkpoints = [name for name in previous if CHECKPOINT_PATTERN.match(name)]
    what = "a finished run" if holds_finished_run(output_dir) else (
        f"an unfinished run ({', '.join(checkpoints)})" if checkpoints else f"a run's files ({', '.join(previous[:4])})")
    resume = (f"resume it with --resume_from_checkpoint {os.path.join(output_dir, checkpoints[-1])}, "
              if checkpoints else "")
    return (f"output_dir={output_dir!r} already holds {what}, which is never replaced silently: {resume}replace it "
            "with --overwrite_output_dir, or give another --output_dir")


@contextlib.contextmanager
def claim_output_dir(output_dir: str, resuming: bool, overwrite: bool, writes: bool = True,
                     device: object = None) -> Iterator[OutputDirClaim]:
    """Hold ``output_dir`` for a run (see the module's docstring); ``writes``: this process saves the run's files."""
    claim = OutputDirClaim(output_dir)
    problem = None
    try:
        if writes:
            try:
                check_writable(output_dir)
                claim.created = not os.path.isdir(output_dir)
                try:
                    os.makedirs(output_dir, exist_ok=True)
                except OSError as error:
                    raise OutputDirError(f"output_dir={output_dir!r} cannot be created ({error.strerror})") from None
                lock(claim)
                claim.previous = previous_run(output_dir)
                if claim.previous and not resuming and not overwrite:
                    raise OutputDirError(refusal(output_dir, claim.previous))
                if resuming:
                    claim.previous = []  # resuming continues this run: nothing of it is removed
            except OutputDirError as error:
                problem = error
        (refused,) = any_process([problem is not None], device)
        if problem is not None:
            raise problem
        if refused:
            raise OutputDirError(f"output_dir={output_dir!r} was refused by the process that saves the run (see its error)")
        yield claim
    finally:
        claim.release()


def running_run(output_dir: str) -> str | None:
    """Who holds ``output_dir`` (another run still writing it), or None; takes no lock that stays."""
    lock_path = os.path.join(output_dir, LOCK_FILE)
    if fcntl is None or os.path.islink(lock_path) or not os.path.isfile(lock_path):
        return None  # a run's lock file is never a link (lock() refuses one)
    with open(lock_path, encoding="utf-8") as stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(stream.read())
                if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                    return None  # this process's own run (publishing at its end)
            except ValueError:
                pass
            return holder_description(lock_path)
        fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
    return None

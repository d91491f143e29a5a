"""Publishing a distilled student: write its model card into the folder, then upload the folder in one commit.

::

    from hf_pcoh.hub import publish

    plan = publish("outputs/minilm-wordnet", "me/minilm-tiny", dry_run=True)
    print(plan.files)        # what would be uploaded
    publish("outputs/minilm-wordnet", "me/minilm-tiny")

Every failure after the checks leaves the folder complete, with its card, and says so in one line that names
its cause (:mod:`hf_pcoh.errors`): offline mode (``HF_HUB_OFFLINE``, :class:`HubOfflineError`), no token
(:class:`MissingTokenError`), no permission (:class:`HubPermissionError`), the network or another refusal. The
upload is a single commit, so the repo never holds part of it. :func:`push_saved_folder` is
``trainer.push_to_hub()``'s upload: the same, for a folder the trainer has just saved and written the card of.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import HfApi, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..errors import (
    HubOfflineError,
    HubPermissionError,
    HubRefusedError,
    HubUnreachableError,
    MissingTokenError,
    PublishError,
)
from ..output_dir import running_run
from ..weights import DEFAULT_MAX_ABS_WEIGHT, saved_weight_problem
from .card import build_model_card, write_model_card
from .run_files import (
    CARD_FILE,
    UPLOAD_IGNORE_PATTERNS,
    check_student_files,
    files_to_upload,
    folder_contents,
    link_ignore_patterns,
    read_run,
)

logger = logging.getLogger(__name__)


__all__ = ["HubOfflineError", "HubPermissionError", "HubRefusedError", "HubUnreachableError", "MissingTokenError",
           "PublishError", "PublishPlan", "publish", "push_saved_folder"]
# What a user does to try again: a command's, or trainer.push_to_hub()'s.
COMMAND_AGAIN = "run the same command again"


@dataclass
class PublishPlan:
    """What :func:`publish` uploads (or, with ``dry_run``, would upload) and what came of it.

    ``files`` are paths relative to ``output_dir``, exactly the files ``upload_folder`` sends (``README.md``
    included); ``card`` is the model card's text.
    """

    output_dir: Path
    repo_id: str
    files: list[str]
    card: str
    commit_message: str
    ignore_patterns: list[str]
    private: bool = False
    dry_run: bool = False
    uploaded: bool = False
    repo_url: str | None = None
    commit_url: str | None = None
    card_path: Path | None = None
    skipped: list[str] = field(default_factory=list)
    again: str = COMMAND_AGAIN


def network_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not be reached", whichever HTTP client huggingface_hub uses."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]  # includes OfflineModeIsEnabled
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        types.extend(getattr(module, name) for name in names if isinstance(getattr(module, name, None), type))
    return tuple(types)


def default_commit_message(description: dict[str, Any]) -> str:
    """``Distil TEACHER into a STUDENT student on DATASET with LOSSES (hf_pcoh VERSION)``."""
    teacher = description["teacher"].get("name_or_path") or "a teacher"
    student = description["student"].get("model_type") or "a"
    dataset = description["dataset"].get("name") or "its data"
    losses = ", ".join(description.get("losses") or ["feature distillation"])
    version = description.get("hf_pcoh_version", __version__)
    return f"Distil {teacher} into a {student} student on {dataset} with {losses} (hf_pcoh {version})"


def publish(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
    license: str = "apache-2.0",
    max_abs_weight: float = DEFAULT_MAX_ABS_WEIGHT,
) -> PublishPlan:
    """Write the model card into ``output_dir`` and upload the folder to ``repo_id`` in one commit.

    Checks the folder first (student ``config.json`` and safetensors weights, ``distillation_config.json``).
    Uploads every file except ``checkpoint-*/``, ``runs/``, ``*.bin`` pickles, ``*.tmp`` leftovers and
    symbolic links.

    Args:
        output_dir: the distillation run's output directory.
        repo_id: ``user/name`` (or ``org/name``) on the Hub; created if missing; a name without its owner is refused.
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hugging Face token; default: ``huggingface_hub.get_token()`` (``HF_TOKEN`` or ``hf auth login``).
        commit_message: default: names the teacher, student, data set, losses and hf_pcoh version.
        dry_run: only build the card and list the files; write and send nothing.
        api: the :class:`huggingface_hub.HfApi` to use (tests pass a stand-in).
        license: the card's license.
        max_abs_weight: a student whose weights are NaN/inf or exceed this in magnitude (a run that diverged) is
            refused (:mod:`hf_pcoh.weights`); the caller's value, never one read from the folder.

    Returns:
        a :class:`PublishPlan` with the files, the card and (after an upload) the commit URL.

    Raises:
        FileNotFoundError / ValueError: a run is still writing the folder (checked first), the folder is not a
            finished run (the message names the file), a student file is a symbolic link, its weights are NaN/inf
            or beyond ``max_abs_weight``, or ``repo_id`` is not a valid ``owner/name`` repo id.
        PublishError (:mod:`hf_pcoh.errors`), in one line, the folder (with its card) ready to upload and nothing
            uploaded: ``HubOfflineError`` (offline mode, ``HF_HUB_OFFLINE=1``), ``MissingTokenError`` (no token),
            ``HubPermissionError`` (the token was refused or may not write there), ``HubUnreachableError`` (a
            network error), ``HubRefusedError`` (any other refusal of the Hub).
    """
    folder = Path(output_dir)
    # First: a folder a run is still writing lacks its files only because the run has not written them yet.
    holder = running_run(str(folder))
    if holder is not None:
        raise ValueError(f"{folder} is still being written by a run ({holder}): publish it once the run has ended")
    check_student_files(folder)
    problem = saved_weight_problem(folder, max_abs_weight)
    if problem is not None:
        raise ValueError(f"{folder} holds a student that is not usable ({problem}): it is not published. Train again "
                         "with a lower learning rate, or pass a larger max_abs_weight if such weights are intended")
    check_repo_id(repo_id)
    description, _ = read_run(folder)
    message = commit_message or default_commit_message(description)
    # Resolved locally (environment, then the token file of `hf auth login`); also kept out of the card.
    token = token or huggingface_hub.get_token()

    if dry_run:
        card = build_model_card(folder, repo_id=repo_id, license=license, secrets=(token,))
        return upload_plan(folder, repo_id, str(card), message, private=private, dry_run=True)

    # The card is written before anything is sent: whatever happens next, the folder is ready to upload.
    card_path = write_model_card(folder, repo_id=repo_id, license=license, secrets=(token,))
    plan = upload_plan(folder, repo_id, card_path.read_text(encoding="utf-8"), message, private=private,
                       card_path=card_path)
    return send(plan, token, api)


def push_saved_folder(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    api: HfApi | None = None,
) -> PublishPlan:
    """``trainer.push_to_hub()``'s upload: ``output_dir`` as the trainer saved it, with the card it has just written
    (``README.md``), sent as :func:`publish` sends a folder (the same files, one commit, the same one-line errors).

    Unlike :func:`publish` it does not check the student's files (a peft student is saved as its adapters) and
    ``repo_id`` may name no owner, as the Trainer's ``hub_model_id`` may (the token's owner is then the owner)."""
    folder = Path(output_dir)
    description, _ = read_run(folder)
    card_path = folder / CARD_FILE
    plan = upload_plan(folder, repo_id, card_path.read_text(encoding="utf-8"),
                       commit_message or default_commit_message(description), private=private, card_path=card_path)
    plan.again = "call trainer.push_to_hub() again"
    return send(plan, token or huggingface_hub.get_token(), api, revision=revision)


def send(plan: PublishPlan, token: str | None, api: HfApi | None, revision: str | None = None) -> PublishPlan:
    """Upload a folder whose card is written. Without a token nothing is called: offline mode is named first (a
    token would not help there), else the missing token. With one, the client itself refuses in offline mode
    (``OfflineModeIsEnabled``, named in :func:`upload`), so that an ``api`` stand-in is still called."""
    if not token and is_offline_mode():
        raise HubOfflineError(offline_message(plan))
    if not token:
        raise MissingTokenError(
            f"No Hugging Face token found, so nothing was sent to {plan.repo_id}. Run `hf auth login` (or set the "
            f"HF_TOKEN environment variable to a token with write access) and {plan.again}. {ready_message(plan)}."
        )
    return upload(plan, token, api if api is not None else HfApi(), revision=revision)


def offline_message(plan: PublishPlan) -> str:
    return (f"Could not reach the Hugging Face Hub to upload to {plan.repo_id}: offline mode is enabled "
            f"(HF_HUB_OFFLINE=1). Nothing was uploaded. {ready_message(plan)}: unset HF_HUB_OFFLINE (and "
            f"TRANSFORMERS_OFFLINE) and {plan.again} once online.")


def check_repo_id(repo_id: str) -> None:
    """Fail with a ``ValueError`` naming ``repo_id`` unless it is a valid Hub repo id."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id={repo_id!r} is not a Hub repo id: use 'user/name' ({error})") from None
    if "/" not in repo_id:  # the Hub would put it under whoever the token belongs to: say whose it is
        raise ValueError(f"repo_id={repo_id!r} names no owner: use 'user/name' or 'org/name' (e.g. 'me/{repo_id}')")


def upload_plan(folder: Path, repo_id: str, card: str, message: str, private: bool, dry_run: bool = False,
                card_path: Path | None = None) -> PublishPlan:
    """The files to send, the patterns that keep everything else out, and what is left out."""
    files = files_to_upload(folder)
    regular_files, links = folder_contents(folder)
    ignore_patterns = [*UPLOAD_IGNORE_PATTERNS, *link_ignore_patterns(links)]
    skipped = [path for path in sorted([*regular_files, *links]) if path not in files]
    return PublishPlan(folder, repo_id, files, card, message, ignore_patterns, private=private, dry_run=dry_run,
                       card_path=card_path, skipped=skipped)


def ready_message(plan: PublishPlan) -> str:
    """What every failed upload leaves behind: a complete folder with its card."""
    return (f"The folder {plan.output_dir} is complete, with its model card {CARD_FILE}, and ready to upload "
            f"({len(plan.files)} files)")


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (a server message's newlines) made one space."""
    return " ".join(str(text).split())


def upload(plan: PublishPlan, token: str, api: HfApi, revision: str | None = None) -> PublishPlan:
    """Create the repo if needed and send the folder in one commit; Hub and network errors become one-line
    PublishErrors naming their cause."""
    repo_id = plan.repo_id
    owner = repo_id.split("/")[0] if "/" in repo_id else "your account"
    try:
        repo_url = api.create_repo(repo_id, private=plan.private, exist_ok=True, token=token)
        repo_id = getattr(repo_url, "repo_id", None) or repo_id  # a name without its owner: the token's
        commit = api.upload_folder(
            folder_path=str(plan.output_dir),
            repo_id=repo_id,
            commit_message=plan.commit_message,
            ignore_patterns=list(plan.ignore_patterns),  # upload_folder appends its defaults to the list it gets
            token=token,
            **({"revision": revision} if revision else {}),
        )
    except OfflineModeIsEnabled as error:
        raise HubOfflineError(offline_message(plan)) from error
    except network_error_types() as error:
        raise HubUnreachableError(
            f"Could not reach the Hugging Face Hub to upload to {repo_id} ({type(error).__name__}: "
            f"{one_line(error)}). Nothing was uploaded: the upload is a single commit, so the repo holds no partial "
            f"upload. {ready_message(plan)}: {plan.again} once online."
        ) from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            cause = ("your token was refused (HTTP 401: invalid or expired)" if status == 401 else
                     f"your token has no write access to {owner!r} (HTTP 403)")
            raise HubPermissionError(
                f"No permission to upload to {repo_id}: {cause}. Check it with `hf auth whoami`, log in with a token "
                f"that can write there (`hf auth login`, or HF_TOKEN) and {plan.again}. Nothing was uploaded. "
                f"{ready_message(plan)}."
            ) from error
        raise HubRefusedError(
            f"The Hugging Face Hub refused the upload to {repo_id} ({one_line(error)}). Check that your token has "
            f"write access to {owner!r} (`hf auth whoami`). Nothing was uploaded. {ready_message(plan)}."
        ) from error
    plan.repo_id = repo_id
    plan.uploaded = True
    plan.repo_url = str(repo_url) if repo_url is not None else None
    plan.commit_url = getattr(commit, "commit_url", None)
    logger.info("uploaded %d files to %s", len(plan.files), plan.repo_url or repo_id)
    return plan

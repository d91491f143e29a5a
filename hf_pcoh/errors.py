"""Errors the library raises for the user to read, and their messages.

- :func:`unknown_name_message`, shared by every registry-like lookup (losses, dissimilarities, data sets, recipes,
  metrics, poolings, config fields): an unknown name is answered with the known ones;
- :class:`PublishError` and its kinds: a student folder that could not be sent to the Hub (``hf-pcoh publish``,
  ``--push_to_hub``, ``trainer.push_to_hub()``), each with a one-line message naming the cause (offline mode, no
  token, no permission, the network) and saying that the folder, with its model card, is complete.
"""

from __future__ import annotations

import difflib


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """An error message for an unknown registry name that lists the known ones and the closest match."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}."


class PublishError(RuntimeError):
    """A publish that cannot go on, with a one-line message for the user (no traceback needed)."""


class MissingTokenError(PublishError):
    """No Hugging Face token: nothing was sent; the folder is ready to upload."""


class HubUnreachableError(PublishError):
    """The Hub could not be reached (a network error): nothing was uploaded."""


class HubOfflineError(HubUnreachableError):
    """Offline mode is on (``HF_HUB_OFFLINE=1``): nothing was sent; the folder is ready to upload."""


class HubRefusedError(PublishError):
    """The Hub answered with an error: nothing was uploaded."""


class HubPermissionError(HubRefusedError):
    """The token was refused (HTTP 401) or may not write to the repo's owner (HTTP 403): nothing was uploaded."""

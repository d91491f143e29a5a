"""Keeping credentials out of a model card: redacting the recipe, and scrubbing the text of known secret values.

Recipe fields named like credentials (``hub_token``...) are replaced by ``<redacted>``; then the card's text is
checked for the values of credential-like environment variables (``HF_TOKEN``...) and of the token in use.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

logger = logging.getLogger(__name__)

CREDENTIAL_WORDS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey", "auth"}
REDACTED = "<redacted>"
# Short values ("1", "true") would only wreck the text; real secrets are long.
MIN_SECRET_LENGTH = 8


def name_words(name: str) -> set[str]:
    """``HF_HUB_TOKEN`` -> ``{"hf", "hub", "token"}``."""
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def redact_recipe(value: Any, key: str = "") -> Any:
    """The recipe with the values of credential-like fields (``hub_token``...) replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {name: redact_recipe(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [redact_recipe(item, key) for item in value]
    if value is not None and (name_words(key) & CREDENTIAL_WORDS or key.lower().endswith("api_key")):
        return REDACTED
    return value


def secret_values(extra: tuple[str | None, ...] = ()) -> list[str]:
    """Values that must never appear in a card: credential-like environment variables and ``extra``, longest first."""
    values = [value for name, value in os.environ.items() if name_words(name) & (CREDENTIAL_WORDS | {"key"})]
    values.extend(value for value in extra if value)
    return sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def redact_text(text: str, extra: tuple[str | None, ...] = ()) -> str:
    """``text`` with every secret value (see :func:`secret_values`) replaced by ``<redacted>``, warning if any was."""
    leaked = [value for value in secret_values(extra) if value in text]
    if leaked:
        logger.warning("a credential-like value appeared in the model card; it was replaced by %s", REDACTED)
    for value in leaked:
        text = text.replace(value, REDACTED)
    return text

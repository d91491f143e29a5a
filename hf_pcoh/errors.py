"""Error messages shared by every registry-like lookup of the library (losses, dissimilarities, data
sets, recipes, metrics, poolings, config fields): an unknown name is answered with the known ones."""

from __future__ import annotations

import difflib


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """An error message for an unknown registry name that lists the known ones and the closest match."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}."

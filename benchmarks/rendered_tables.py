"""Tables rendered from result files into README and docs, between named markers.

A document holds each rendered table between ``<!-- rendered:NAME -->`` and ``<!-- /rendered:NAME -->``; the
report that owns the table replaces what lies between them (:func:`replace_block`), and a test renders the same
table from the committed result files and compares it with the committed block (:func:`read_block`), so a number in
README can never drift from the files it comes from.
"""

from __future__ import annotations

import re


def block_markers(name: str) -> tuple[str, str]:
    """The opening and closing markers of the block ``name``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"block name {name!r}: use letters, digits, '_', '.' or '-'")
    return f"<!-- rendered:{name} -->", f"<!-- /rendered:{name} -->"


def block_span(text: str, name: str) -> tuple[int, int]:
    """Where the content of block ``name`` starts and ends in ``text`` (between its two markers)."""
    opening, closing = block_markers(name)
    start, count = text.find(opening), text.count(opening)
    if count != 1 or text.count(closing) != 1:
        raise ValueError(f"the text has {count} {opening!r} and {text.count(closing)} {closing!r} markers: "
                         "exactly one of each is needed")
    end = text.find(closing)
    if end < start:
        raise ValueError(f"{closing!r} comes before {opening!r}")
    return start + len(opening), end


def has_block(text: str, name: str) -> bool:
    return block_markers(name)[0] in text


def read_block(text: str, name: str) -> str:
    """The table between the markers of ``name``, without the blank lines that frame it."""
    start, end = block_span(text, name)
    return text[start:end].strip("\n")


def replace_block(text: str, name: str, table: str) -> str:
    """``text`` with the block ``name`` holding ``table`` (on its own lines between the markers)."""
    start, end = block_span(text, name)
    return f"{text[:start]}\n{table.strip(chr(10))}\n{text[end:]}"


def render_into_file(path: str, blocks: dict[str, str]) -> list[str]:
    """Replace every block of ``blocks`` that the file at ``path`` has; return the names replaced."""
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    replaced = [name for name in blocks if has_block(text, name)]
    for name in replaced:
        text = replace_block(text, name, blocks[name])
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
    return replaced

"""Tables rendered from result files into README and docs, between named markers.

A document holds each rendered table between ``<!-- rendered:NAME -->`` and ``<!-- /rendered:NAME -->``; the
report that owns the table replaces what lies between them (:func:`replace_block`), and a test renders the same
table from the committed result files and compares it with the committed block (:func:`read_block`), so a number in
README can never drift from the files it comes from.

:func:`committed_blocks` lists every block with the module that renders it; ``python -m benchmarks.rendered_tables``
renders them all again from the committed files (the causal-LM study's through its own report), and
``tests/test_rendered_tables_all.py`` checks them, with the figures that prose quotes from result files.
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


# The documents that hold rendered blocks, relative to the repository root.
DOCUMENTS = ("README.md", "docs/study.md", "docs/benchmarks.md")


def render_into_documents(blocks: dict[str, str], documents: tuple[str, ...] = DOCUMENTS) -> dict[str, list[str]]:
    """Replace the blocks of ``blocks`` in every document of ``documents`` that holds them; the names replaced, by
    document (a document holding none of them is left untouched)."""
    from benchmarks.provenance import REPOSITORY_ROOT

    replaced = {}
    for document in documents:
        path = REPOSITORY_ROOT / document
        if any(has_block(path.read_text(encoding="utf-8"), name) for name in blocks):
            replaced[document] = render_into_file(str(path), blocks)
    return replaced


def committed_blocks() -> dict[str, dict[str, str]]:
    """Every rendered block, rendered from the committed result files, by the module that owns its result file.

    The causal-LM study's blocks (``benchmarks.lm_study``) are listed too; ``tests/test_rendered_tables.py`` checks
    them, ``tests/test_rendered_tables_all.py`` the others.
    """
    # Imported here: the owners import this module to render their blocks.
    from benchmarks import (
        default_run, end_to_end, length_chunks, lm_study, loss_cost, quality, registered_study, study, throughput,
    )
    from benchmarks.provenance import REPOSITORY_ROOT

    return {
        "benchmarks.default_run": default_run.committed_blocks(),
        "benchmarks.loss_cost": loss_cost.committed_blocks(),
        "benchmarks.study": study.committed_blocks(),
        "benchmarks.registered_study": registered_study.committed_blocks(),
        "benchmarks.quality": quality.committed_blocks(),
        "benchmarks.throughput": throughput.committed_blocks(),
        "benchmarks.end_to_end": end_to_end.committed_blocks(),
        "benchmarks.length_chunks": length_chunks.committed_blocks(),
        "benchmarks.lm_study": lm_study.rendered_blocks(str(REPOSITORY_ROOT / "benchmarks" / "results" / "study")),
    }


def block_names(text: str) -> list[str]:
    """The names of the blocks ``text`` opens, in order."""
    return re.findall(r"<!-- rendered:([A-Za-z0-9_.-]+) -->", text)


if __name__ == "__main__":  # python -m benchmarks.rendered_tables: every block again from the committed files
    for owner, owner_blocks in committed_blocks().items():
        if owner == "benchmarks.lm_study":  # its own report renders them: scripts/study.py report --benchmarks lm
            continue
        for document, names in render_into_documents(owner_blocks).items():
            print(f"{owner}: {document}: {', '.join(names)}")

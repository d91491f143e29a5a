"""README and docs/study.md hold tables rendered from the committed result files (benchmarks.rendered_tables): a
committed block that differs from rendering those files again is stale, and fails here. No training: the tables are
read from the JSON files of benchmarks/results/study/lm."""

from __future__ import annotations

import pytest

from benchmarks.lm_study import rendered_blocks
from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.rendered_tables import has_block, read_block, replace_block

RESULTS = str(REPOSITORY_ROOT / "benchmarks" / "results" / "study")


@pytest.mark.parametrize("document", ["README.md", "docs/study.md"])
def test_committed_blocks_equal_the_tables_rendered_from_the_committed_results(document: str) -> None:
    blocks = rendered_blocks(RESULTS)
    text = (REPOSITORY_ROOT / document).read_text(encoding="utf-8")
    present = [name for name in blocks if has_block(text, name)]
    assert "study_lm" in present, f"{document} has no <!-- rendered:study_lm --> block"
    for name in present:
        assert read_block(text, name) == blocks[name].strip("\n"), (
            f"{document}: the block {name!r} differs from the result files; run "
            "`python scripts/study.py report --benchmarks lm`")


def test_the_table_has_the_teacher_and_every_arm() -> None:
    table = rendered_blocks(RESULTS)["study_lm"]
    assert table.splitlines()[2].startswith("| teacher")
    for arm in ("ce", "ce_kd", "ce_kd_procrustes", "ce_kd_gram", "ce_kd_cka", "ce_kd_projected_mse",
                "ce_kd_perception_coherence"):
        assert f"| `{arm}` |" in table


def test_replacing_a_block_keeps_the_text_around_it_and_is_idempotent() -> None:
    text = "before\n<!-- rendered:t -->\nold table\n<!-- /rendered:t -->\nafter\n"
    replaced = replace_block(text, "t", "| new |\n")
    assert replaced == "before\n<!-- rendered:t -->\n| new |\n<!-- /rendered:t -->\nafter\n"
    assert replace_block(replaced, "t", "| new |") == replaced
    assert read_block(replaced, "t") == "| new |"


@pytest.mark.parametrize("text", [
    "no markers at all",
    "<!-- rendered:t -->\nonly the opening marker",
    "<!-- /rendered:t -->\n<!-- rendered:t -->\nclosing first",
    "<!-- rendered:t -->\n<!-- /rendered:t -->\n<!-- rendered:t -->\n<!-- /rendered:t -->",
])
def test_a_missing_misplaced_or_doubled_marker_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rendered:t"):
        replace_block(text, "t", "| table |")

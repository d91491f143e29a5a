"""Every measured table of README and docs is rendered from a result file a script wrote (benchmarks.rendered_tables),
and every figure their prose quotes from such a file is the file's: a committed block or quoted figure that differs
from the committed result files fails here. No training: the tables are read from benchmarks/results.

The causal-LM study's blocks (``study_lm*``, rendered from benchmarks/results/study/lm while that study runs) are
compared by tests/test_rendered_tables.py; here they only count as known blocks.
"""

from __future__ import annotations

import json

from benchmarks import default_run, end_to_end, host_memory, loss_cost, throughput
from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.rendered_tables import DOCUMENTS, block_names, committed_blocks, has_block, read_block

RESULTS = REPOSITORY_ROOT / "benchmarks" / "results"
CHECKED_ELSEWHERE = ("benchmarks.lm_study",)


def document_texts() -> dict[str, str]:
    return {document: (REPOSITORY_ROOT / document).read_text(encoding="utf-8") for document in DOCUMENTS}


def result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def test_every_block_of_readme_and_docs_equals_its_rendering_from_the_committed_results() -> None:
    blocks = committed_blocks()
    texts = document_texts()
    known = {name for owner_blocks in blocks.values() for name in owner_blocks}
    for document, text in texts.items():
        unknown = sorted(set(block_names(text)) - known)
        assert not unknown, f"{document}: blocks {unknown} have no renderer in benchmarks.rendered_tables"
    stale = []
    for owner, owner_blocks in blocks.items():
        if owner in CHECKED_ELSEWHERE:
            continue
        for name, table in owner_blocks.items():
            holders = [document for document, text in texts.items() if has_block(text, name)]
            assert holders, f"{owner} renders {name!r} but no document of {DOCUMENTS} holds its markers"
            stale += [f"{document}: {name} (rendered by {owner})" for document in holders
                      if read_block(texts[document], name) != table.strip("\n")]
    assert not stale, ("blocks that differ from the committed result files: " + "; ".join(stale)
                       + ". Render them again: python -m benchmarks.rendered_tables")


def quoted_figures() -> dict[str, list[str]]:
    """Figures the documents' prose quotes from result files, as the files give them, by document."""
    opt_lm, teacher = result("opt_lm_run.json"), result("opt_wordnet_teacher.json")
    language_model = opt_lm["eval_results"]["language_model"]
    recipe = opt_lm["recipe"]
    steps = recipe["max_train_samples"] // recipe["per_device_train_batch_size"] * recipe["num_train_epochs"]
    readme = [
        *default_run.quoted_figures(result("default_run.json")),
        *host_memory.quoted_figures(result("host_memory.json"), result("host_memory_bfloat16.json")),
        f"{steps} steps, {opt_lm['train_runtime_seconds']:.1f} s of training, {opt_lm['wall_seconds']:.1f} s wall",
        f"on {int(language_model['num_texts'])} held-out glosses the "
        f"{opt_lm['eval_results']['student']['parameters'] / 1e6:.1f}M-parameter student's perplexity is "
        f"{language_model['student_perplexity']:.1f} against the {opt_lm['eval_results']['teacher']['parameters'] / 1e6:.1f}M "
        f"teacher's {language_model['teacher_perplexity']:.1f}, KL(teacher‖student) {language_model['kl_teacher_student']:.3f} "
        f"per token, next-token top-1 agreement {language_model['top1_agreement']:.3f}",
        f"in {100 * language_model['greedy_exact_match']:.1f}% of cases (ROUGE-L {language_model['greedy_rouge_l']:.3f})",
        f"test perplexity {teacher['test_perplexity']:.0f} on {int(teacher['test_texts']):,} held-out glosses against "
        f"{teacher['unigram_test_perplexity']:,.0f} for a unigram model",
        f"({int(teacher['train_steps'])} steps, {teacher['training_seconds']:.0f} s of training",
    ]
    figures = {"README.md": readme, "docs/benchmarks.md": throughput.quoted_figures()}
    for owner in (end_to_end, loss_cost):
        for document, quoted in owner.quoted_figures().items():
            figures.setdefault(document, []).extend(quoted)
    return figures


def test_figures_quoted_in_prose_are_the_result_files() -> None:
    texts = {document: " ".join(text.split()) for document, text in document_texts().items()}  # lines joined
    missing = [f"{document}: {figure!r}" for document, quoted in quoted_figures().items() for figure in quoted
               if figure not in texts[document]]
    assert not missing, "prose that no longer quotes its result file:\n" + "\n".join(missing)

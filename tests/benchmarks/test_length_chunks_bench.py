"""benchmarks.length_chunks: the token counts its table reports, and the table rendered from a hand-made result."""

from __future__ import annotations

import torch

from benchmarks.length_chunks import padded_tokens, table


def test_tokens_computed_whole_and_in_chunks() -> None:
    # lengths 1, 5, 2, 8 in a batch padded to 8: whole 4 x 8; chunks of 2 sorted (1, 2) and (5, 8): 2 x 2 + 2 x 8
    lengths = torch.tensor([1, 5, 2, 8])
    mask = (torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)).long()
    assert padded_tokens(mask, None) == 32
    assert padded_tokens(mask, 2) == 20
    assert padded_tokens(mask, 3) == 3 * 5 + 1 * 8  # a last, shorter chunk counts its own rows
    assert padded_tokens(mask, 4) == 32  # one chunk: the whole batch


def test_the_table_reads_the_result_file() -> None:
    result = {"command": "python scripts/bench_length_chunks.py",
              "options": {"num_hidden_layers": 3, "max_length": 64, "repeats": 2, "threads": 1, "chunk_size": 64},
              "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0"},
              "load_average": {"before": [0.05, 0, 0], "after": [1.01, 0, 0]},
              "rows": [{"batch_size": 1024, "real_tokens": 16000, "padded_tokens_whole": 64512,
                        "padded_tokens_chunked": 17200, "seconds_whole": 50.0, "seconds_chunked": 8.0}]}
    lines = table(result).splitlines()
    assert "load average 0.05 before and 1.01 after (1 min)" in lines[0]
    assert lines[-1] == "| 1,024 | 16,000 | 64,512 | 17,200 | 50.00 s | 8.00 s | 6.2x |"

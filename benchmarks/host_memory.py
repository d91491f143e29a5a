"""Host memory of loading a large teacher under FSDP2: the peak resident memory of every process, written to
``benchmarks/results/host_memory.json``.

A BERT-base-sized teacher (about 110M parameters, 0.44 GB in float32) is built from a config and saved as a checkpoint
first, so that every run reads it from disk as a user's teacher; the student is small and built from a config. The
same short run (a few steps of perception coherence on the shipped WordNet glosses, the same global batch) is made
three ways, each process a fresh one (torch's spawn), on CPU with gloo:

* one process;
* two FSDP2 processes without ``cpu_ram_efficient_loading``: every process loads both models whole, then FSDP2
  shards them;
* two FSDP2 processes with it: only the first process reads them (:mod:`hf_pcoh.first_process_loading`), the other
  builds them on the meta device and receives its shards.

Recorded for each process: its resident memory (``VmRSS``, split into anonymous memory and mapped file pages) after
the imports, once the models are built (before sharding), once the trainer has sharded the teacher, after training,
and its peak (``VmHWM``, or ``getrusage``'s ``ru_maxrss`` where larger); the bytes of the teacher held after sharding; the
machine, versions and commit. FSDP on CPU needs accelerate's switch for gloo (``benchmarks.gpu_check.fsdp_on_cpu``),
as the tests use.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPOSITORY_ROOT, describe_machine

RESULT_FILE = REPOSITORY_ROOT / "benchmarks" / "results" / "host_memory.json"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # its tokenizer (BERT's uncased vocabulary) reads for both models
# BERT-base's shape: 109.5M parameters.
TEACHER = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
           "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}
STUDENT = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}
GLOBAL_BATCH = 8
SCENARIOS = {
    "one_process": {"processes": 1},
    "fsdp2_every_process_loads": {"processes": 2, "cpu_ram_efficient_loading": False},
    "fsdp2_first_process_loads": {"processes": 2, "cpu_ram_efficient_loading": True},
}


def memory_now() -> dict[str, int]:
    """This process's resident memory in bytes: total, anonymous, mapped files, and its peak so far (Linux)."""
    fields = {"VmRSS": "rss", "RssAnon": "anonymous", "RssFile": "file", "VmHWM": "peak"}
    found: dict[str, int] = {}
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in fields:
                found[fields[key]] = int(value.split()[0]) * 1024
    return found


def save_teacher(folder: Path, teacher_config: dict[str, Any] = TEACHER) -> dict[str, Any]:
    """The teacher, randomly initialised from ``teacher_config`` and saved as a safetensors checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    values = dict(teacher_config)
    teacher = AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    teacher.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in teacher.parameters()),
            "checkpoint_bytes": (folder / "model.safetensors").stat().st_size}


def run_fields(output_dir: str, teacher_path: str, processes: int, max_steps: int,
               cpu_ram_efficient_loading: bool | None, teacher_dtype: str = "auto") -> dict[str, Any]:
    fields = dict(
        output_dir=output_dir, teacher_model_name_or_path=teacher_path, teacher_processor_name_or_path=MINILM,
        teacher_dtype=teacher_dtype,
        student_config=STUDENT, dataset_name="wordnet_glosses", max_train_samples=GLOBAL_BATCH * max_steps,
        per_device_train_batch_size=GLOBAL_BATCH // processes, max_steps=max_steps, max_length=32, seed=0,
        losses=["perception_coherence"], save_strategy="no", logging_steps=1, disable_tqdm=True, report_to=[],
        evaluate_after_training=False,
    )
    if cpu_ram_efficient_loading is not None:
        fields.update(fsdp=True, fsdp_config={"version": 2, "cpu_ram_efficient_loading": cpu_ram_efficient_loading})
    return fields


def worker(rank: int, world_size: int, port: int, fields: dict[str, Any], record_file: str) -> None:
    """One process of a run: build, shard, train; its memory at each stage written to ``record_file.<rank>``."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch
    from torch.distributed.tensor import DTensor

    from hf_pcoh.config import DistillationConfig
    from hf_pcoh.pipeline import build_setup
    from hf_pcoh.trainer import DistillationTrainer

    stages = {"imports": memory_now()}
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    switch = None
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), ACCELERATE_USE_CPU="true")
        from benchmarks.gpu_check import fsdp_on_cpu

        switch = fsdp_on_cpu()
        switch.__enter__()
    try:
        start = time.perf_counter()
        config = DistillationConfig(**fields)
        setup = build_setup(config)
        stages["models_built"] = memory_now()
        teacher_on_meta = all(parameter.is_meta for parameter in setup.teacher.parameters())
        trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                      train_dataset=setup.train_dataset, collator=setup.collator)
        stages["trainer_built"] = memory_now()
        teacher_bytes = sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for p in trainer.teacher.parameters())
        trainer.train()
        stages["trained"] = memory_now()
        record = {
            "rank": rank,
            "stages": stages,
            # VmHWM and getrusage's ru_maxrss (Linux: KiB) may differ by a few pages: the larger
            "peak_rss_bytes": max(memory_now()["peak"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "teacher_on_meta_before_sharding": teacher_on_meta,
            "teacher_bytes_held_after_sharding": teacher_bytes,
            "steps": trainer.state.global_step,
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
            "seconds": round(time.perf_counter() - start, 1),
        }
        Path(f"{record_file}.{rank}").write_text(json.dumps(record), encoding="utf-8")
    finally:
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
        if switch is not None:
            switch.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_scenario(name: str, teacher_path: str, folder: Path, max_steps: int, timeout_seconds: float,
                 teacher_dtype: str = "auto") -> dict[str, Any]:
    """Every process's record of one scenario, each process spawned fresh."""
    import torch.multiprocessing as mp

    settings = SCENARIOS[name]
    processes = settings["processes"]
    fields = run_fields(str(folder / name), teacher_path, processes, max_steps, settings.get("cpu_ram_efficient_loading"),
                        teacher_dtype)
    start = time.perf_counter()
    context = mp.start_processes(worker, args=(processes, free_port(), fields, str(folder / f"{name}_rank")),
                                 nprocs=processes, start_method="spawn", join=False)
    while not context.join(timeout=5):
        if time.perf_counter() - start > timeout_seconds:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{name}: the processes did not finish within {timeout_seconds:.0f} s")
    return {"processes": processes, "cpu_ram_efficient_loading": settings.get("cpu_ram_efficient_loading"),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "ranks": [json.loads((folder / f"{name}_rank.{rank}").read_text()) for rank in range(processes)]}


def measure_host_memory(result_file: Path = RESULT_FILE, max_steps: int = 2, timeout_seconds: float = 600.0,
                        teacher_dtype: str = "auto", teacher_config: dict[str, Any] = TEACHER) -> dict[str, Any]:
    """Save the teacher (float32; ``teacher_config``, default :data:`TEACHER`), run every scenario with it in
    ``teacher_dtype`` (``auto``: as saved), write the result file (with machine, versions and commit)."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        teacher = save_teacher(folder / "teacher", teacher_config)
        scenarios = {name: run_scenario(name, str(folder / "teacher"), folder, max_steps, timeout_seconds, teacher_dtype)
                     for name in SCENARIOS}
    result = {
        "machine": describe_machine("cpu"),
        "teacher": {"config": teacher_config, "teacher_dtype": teacher_dtype, **teacher},
        "student_config": STUDENT,
        "run": {"max_steps": max_steps, "global_batch": GLOBAL_BATCH, "losses": ["perception_coherence"],
                "max_length": 32, "backend": "gloo (CPU)"},
        "scenarios": scenarios,
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    from hf_pcoh.artifacts import write_json

    write_json(result_file, result)
    return result


def table(result: dict[str, Any]) -> str:
    """One row per process: resident memory (anonymous part in brackets) once the models are built, once the teacher
    is sharded, and at its peak, in GiB; then each scenario's sum of peaks."""
    gib = 2**30

    def memory(stage: dict[str, int]) -> str:
        return f"{stage['rss'] / gib:.2f} ({stage['anonymous'] / gib:.2f})"

    rows = ["| scenario | process | models on meta before sharding | after imports | models built | teacher sharded | "
            "peak | teacher held after sharding |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, scenario in result["scenarios"].items():
        for record in scenario["ranks"]:
            stages = record["stages"]
            rows.append(f"| {name} | {record['rank']} | {record['teacher_on_meta_before_sharding']} | "
                        f"{memory(stages['imports'])} | {memory(stages['models_built'])} | "
                        f"{memory(stages['trainer_built'])} | {record['peak_rss_bytes'] / gib:.2f} | "
                        f"{record['teacher_bytes_held_after_sharding'] / gib:.2f} |")
        peaks = [record["peak_rss_bytes"] for record in scenario["ranks"]]
        rows.append(f"| {name} | sum | | | | | {sum(peaks) / gib:.2f} | |")
    return "\n".join(rows)


def quoted_figures(as_saved: dict[str, Any], bfloat16: dict[str, Any]) -> list[str]:
    """The figures README quotes from ``host_memory.json`` (teacher as saved, float32) and
    ``host_memory_bfloat16.json``: the other process (rank 1) with every process loading against only the first
    loading, resident once the models are built (bfloat16) and at its peak (both); each must appear in README as
    written here."""
    gib = 2**30

    def other_process(result: dict[str, Any], scenario: str) -> dict[str, Any]:
        return result["scenarios"][scenario]["ranks"][1]

    def built(result: dict[str, Any], scenario: str) -> float:
        return other_process(result, scenario)["stages"]["models_built"]["rss"] / gib

    def peak(result: dict[str, Any], scenario: str) -> float:
        return other_process(result, scenario)["peak_rss_bytes"] / gib

    every, first = "fsdp2_every_process_loads", "fsdp2_first_process_loads"
    return [
        f"{built(bfloat16, every):.2f} -> {built(bfloat16, first):.2f} GiB resident once the models are built",
        f"({peak(bfloat16, first):.2f} vs {peak(bfloat16, every):.2f} GiB; float32 teacher "
        f"{peak(as_saved, first):.2f} vs {peak(as_saved, every):.2f} GiB",
    ]

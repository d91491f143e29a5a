"""The one-GPU check of hf_pcoh (``python scripts/gpu_check.py``): three parts, at most 6 minutes on one H200.

Config-built models and synthetic token ids only (fixed seed): nothing is downloaded and no shipped data is
read. Each part writes ``<output_dir>/<part>.json``: ``machine`` (device name, torch / CUDA / transformers /
accelerate / datasets / hf_pcoh versions, git SHA when the checkout has one), ``settings`` (the shapes it ran
at), its figures, ``table`` (what the script prints) and ``wall_seconds``.

* ``losses``: perception coherence (``soft_rank: pairwise``, the default, and ``soft_rank: sorted``) and
  CosPress on ``[B, 384]`` student / ``[B, 1024]`` teacher features at B = 1024, 4096, 8192, each in float32
  and under bf16 autocast: the loss value, the cosine between the bf16 and the float32 gradient with respect
  to the student features, forward + backward time (CUDA events; the first call warms up and is the time
  reported when it takes over ``repeat_below_seconds``, else the median of ``repeats`` more calls) and the
  peak memory (``torch.cuda.max_memory_allocated``, reset per row). An out-of-memory row is recorded as such.
* ``large_pair``: an OPT-6.7B-shaped teacher (bf16) and an OPT-1.3B-shaped student distilled by
  ``DistillationTrainer`` under FSDP2 in a world of one process (full shard, ``FULL_STATE_DICT``, bf16 mixed
  precision: ``scripts/accelerate/fsdp.yaml`` with one process), 20 steps of 16 sequences of 256 tokens,
  teacher layers 16 and ``last`` paired with student layers 12 and ``last``, last-token pooling, perception
  coherence + CosPress: step time (median after the warm-up steps), tokens/s, peak memory; a checkpoint at
  step 10, then a fresh trainer resumes from it to step 20, and its final weights (student and CosPress's
  map) are compared with the uninterrupted run's (``max_abs_difference``; ``resume_equal``: exactly equal),
  beside how far the weights moved after step 10 (``max_abs_update_after_checkpoint``: the scale a non-zero
  difference, from GPU kernels that are not deterministic, is judged against). Where ``DistillationTrainer``
  cannot load the checkpoint into FSDP2's shards (it could not when this was written: ``load_state_dict``
  copies whole tensors into DTensors), its error is recorded (``library_resume_error``) and the resume is
  checked with the weights loaded shard-aware (:func:`load_whole_checkpoint_into_sharded_model`).
* ``teacher_cache``: the same teacher's cache pass (:func:`hf_pcoh.teacher_cache.add_cached_teacher_features`,
  what ``--teacher_cache DIR`` runs) over 4096 sequences of 256 tokens, both layers: wall time, tokens/s,
  the time in the teacher's forward and in the cache's fingerprint of the weights, peak memory, bytes on disk.

Budget on one H200 (989 dense bf16 TFLOP/s; assumed 400 sustained):

* ``large_pair``: a step is the teacher's forward, 2 x 6.66e9 parameters x 4096 tokens = 5.5e13 FLOPs, plus the
  student's forward + backward, 6 x 1.32e9 x 4096 = 3.2e13: 8.7e13 FLOPs, ~0.2 s; 30 steps (20, then 10
  resumed) ~10 s. The checkpoint dominates: 1.3B fp32 weights + Adam moments = 16 GB gathered to CPU, written
  and read back once (~30-60 s); up to six model builds on the GPU (a resume through DistillationTrainer that
  fails is built before it fails), a few seconds each. Part: ~100-150 s.
* ``teacher_cache``: 4096 x 256 = 1.05e6 tokens x 2 x 6.66e9 = 1.4e16 FLOPs, ~35 s; the fingerprint hashes the
  13.3 GB of bf16 weights (sha256, ~1 GB/s: ~15 s). Part: ~60 s.
* ``losses``: the pairwise soft rank makes B^3 / 2 comparisons (2.7e11 at B = 8192, in 16,384 blocks of 2^24;
  elementwise, memory-bound, ~0.3 ms a block: ~5 s per call, so no repeats there), the sorted rank and CosPress
  O(B^2 log B) / O(B^2 d): under 1 s each. Part: ~40 s; no row starts after ``budget_seconds`` (90 s; the rest
  are recorded as skipped), and rows run B by B, the pairwise rank last at each B.

With start-up (imports, CUDA, NCCL) about 4-5 minutes in all, at most 6. ``CPU_SMOKE`` runs the same code at tiny
shapes on CPU (FSDP2 on a gloo group of one process), so that the whole path is tested here before a GPU runs it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.provenance import describe_machine

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(REPOSITORY_ROOT, "benchmarks", "results", "gpu_check")
PARTS = ("losses", "large_pair", "teacher_cache")
PART_HELP = {
    "losses": "perception coherence (pairwise and sorted soft rank) and CosPress at B = 1024, 4096, 8192, float32 vs "
              "bf16 autocast: value, gradient cosine, forward+backward time, peak memory",
    "large_pair": "OPT-6.7B-shaped teacher (bf16) -> OPT-1.3B-shaped student, DistillationTrainer under FSDP2 "
                  "(one process): step time, tokens/s, peak memory; checkpoint at step 10, resume to 20, weights "
                  "compared with the uninterrupted run",
    "teacher_cache": "the same teacher's cache pass (--teacher_cache) over 4096 sequences of 256 tokens: time, "
                     "tokens/s, peak memory",
}
# OPT's own special ids (<s> 0, <pad> 1, </s> 2, <unk> 3); synthetic tokens are drawn above them.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")


# ---- what each part runs at ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LossesScale:
    batch_sizes: tuple[int, ...] = (1024, 4096, 8192)
    student_dim: int = 384
    teacher_dim: int = 1024
    # (loss name, options), cheapest first: at each B the costly pairwise soft rank runs last, so that a spent
    # budget skips the fewest rows
    variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
        ("cospress", ()),
        ("perception_coherence", (("soft_rank", "sorted"),)),
        ("perception_coherence", (("soft_rank", "pairwise"),)),
    )
    repeats: int = 3  # timed calls after the first, when the first took under repeat_below_seconds
    repeat_below_seconds: float = 1.0
    budget_seconds: float = 90.0  # rows not started by then are recorded as skipped


@dataclass(frozen=True)
class PairScale:
    teacher: dict[str, Any] = field(default_factory=lambda: dict(
        hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32, vocab_size=50272,
        max_position_embeddings=2048, word_embed_proj_dim=4096))  # OPT-6.7B's shape
    student: dict[str, Any] = field(default_factory=lambda: dict(
        hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272,
        max_position_embeddings=2048, word_embed_proj_dim=2048))  # OPT-1.3B's shape
    batch_size: int = 16
    sequence_length: int = 256
    steps: int = 20
    resume_step: int = 10
    warmup_steps: int = 3  # steps left out of the median step time (allocator, kernels, autotuning)
    # CosPress has a learned map, which the resume must restore too. Not Procrustes: at these widths it takes the
    # SVD of a [2048, 4096] matrix per layer pair and step (34 s for one on 2 CPU cores; seconds on a GPU).
    losses: tuple[str, ...] = ("perception_coherence", "cospress")
    pooling: str = "last_token"
    learning_rate: float = 1e-4
    bf16: bool = True

    @property
    def teacher_layers(self) -> list[int | str]:
        return [self.teacher["num_hidden_layers"] // 2, "last"]

    @property
    def student_layers(self) -> list[int | str]:
        return [self.student["num_hidden_layers"] // 2, "last"]


@dataclass(frozen=True)
class CacheScale:
    rows: int = 4096
    sequence_length: int = 256
    batch_size: int = 128


@dataclass(frozen=True)
class CheckScale:
    name: str
    device: str
    losses: LossesScale
    pair: PairScale
    cache: CacheScale
    seed: int = 0


GPU_SCALE = CheckScale("gpu", "cuda", LossesScale(), PairScale(), CacheScale())

TINY_OPT = dict(num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, vocab_size=512, max_position_embeddings=64)
CPU_SMOKE = CheckScale(
    "cpu-smoke", "cpu",
    LossesScale(batch_sizes=(64, 128), repeats=1, budget_seconds=60.0),
    PairScale(teacher=dict(TINY_OPT, hidden_size=32, word_embed_proj_dim=32),
              student=dict(TINY_OPT, hidden_size=16, word_embed_proj_dim=16),
              batch_size=8, sequence_length=16, steps=4, resume_step=2, warmup_steps=1),
    CacheScale(rows=64, sequence_length=16, batch_size=16),
)


# ---- the machine and the files -------------------------------------------------------------------------


def missing_cuda_message() -> str | None:
    """Why this machine cannot run the check at its real scale (no CUDA device), or None when it can."""
    if torch.cuda.is_available():
        return None
    return (f"no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False); scripts/gpu_check.py "
            "needs one GPU (--cpu-smoke runs every part on CPU at tiny shapes)")


def write_part(output_dir: str, part: str, payload: dict[str, Any]) -> str:
    """``payload`` as ``output_dir/<part>.json`` (written whole or not at all); returns the path."""
    from hf_pcoh.artifacts import write_json

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{part}.json")
    write_json(path, payload)
    return path


# ---- measuring on either device ------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, function: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``function()``: CUDA events on a GPU (the device's own clock), else wall time."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = function()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, result
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int | None:
    """``torch.cuda.max_memory_allocated`` since the last reset; None on CPU (no allocator statistics)."""
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def describe_error(error: BaseException) -> str:
    """``ValueError: <the message's first line>`` (at most 500 characters)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:500] if lines else ''}"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def format_bytes(count: float | None) -> str:
    if count is None:
        return "—"
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ---- part 1: the losses --------------------------------------------------------------------------------


def loss_label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {key}={value}" for key, value in options.items())


def loss_rows(scale: LossesScale, device: str, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (B, loss variant, precision), in that order; the bf16 row compares its gradient with the
    float32 one's. Rows not started within ``scale.budget_seconds`` are recorded as skipped."""
    from hf_pcoh.losses import build_loss

    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + scale.budget_seconds
    autocast_device = "cuda" if device.startswith("cuda") else "cpu"
    losses = []
    for name, option_items in scale.variants:
        torch.manual_seed(seed)  # CosPress's map: the same first weights at every B
        losses.append((name, dict(option_items), build_loss(
            name, student_dim=scale.student_dim, teacher_dim=scale.teacher_dim, **dict(option_items)).to(device)))
    for batch_size in scale.batch_sizes:
        for name, options, loss in losses:
            float32_gradient: torch.Tensor | None = None
            float32_value: float | None = None
            for precision in ("float32", "bf16"):
                row: dict[str, Any] = {"loss": name, "options": options, "batch_size": batch_size, "precision": precision}
                rows.append(row)
                if time.monotonic() > deadline:
                    row["skipped"] = f"the part's budget of {scale.budget_seconds:.0f} s was spent"
                    continue
                generator = torch.Generator().manual_seed(seed + batch_size)
                student = torch.randn(batch_size, scale.student_dim, generator=generator).to(device).requires_grad_()
                teacher = torch.randn(batch_size, scale.teacher_dim, generator=generator).to(device)

                def forward_backward() -> torch.Tensor:
                    student.grad = None
                    loss.zero_grad(set_to_none=True)
                    with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        # under autocast, features reach a loss in bf16, as a model's outputs do
                        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                        value = loss(student.to(dtype), teacher.to(dtype))
                    value.backward()
                    return value.detach()

                try:
                    reset_peak_memory(device)
                    first_seconds, value = timed(device, forward_backward)
                    row["peak_bytes"] = peak_memory(device)
                    gradient = student.grad.detach().float().flatten()
                    times = [timed(device, forward_backward)[0] for _ in range(
                        scale.repeats if first_seconds < scale.repeat_below_seconds else 0)]
                except Exception as error:  # noqa: BLE001 - out of memory, or a failure: this row's, not the part's
                    row.update(oom=is_out_of_memory(error), error=describe_error(error))
                if "error" in row:
                    del student, teacher
                    release_memory(device)  # outside the except block: its frames no longer hold the tensors
                    continue
                row.update(oom=False, value=value.float().item(), first_seconds=first_seconds,
                           seconds=statistics.median(times) if times else first_seconds, timed_calls=len(times) or 1)
                if precision == "float32":
                    float32_gradient, float32_value = gradient, row["value"]
                elif float32_gradient is not None:
                    row["grad_cosine_to_float32"] = F.cosine_similarity(gradient, float32_gradient, dim=0).item()
                    row["value_difference_to_float32"] = row["value"] - float32_value
                del student, teacher, gradient
                release_memory(device)
    return rows


def losses_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| loss | B | precision | value | grad cos (bf16 vs fp32) | fwd+bwd | peak memory | note |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        value = f"{row['value']:.6g}" if "value" in row else "—"
        cosine = row.get("grad_cosine_to_float32")
        note = row.get("skipped") or ("out of memory" if row.get("oom") else row.get("error", "").replace("|", "/"))
        lines.append(f"| {loss_label(row['loss'], row['options'])} | {row['batch_size']} | {row['precision']} | {value} | "
                     f"{'' if cosine is None else f'{cosine:.6f}'} | {format_seconds(row.get('seconds'))} | "
                     f"{format_bytes(row.get('peak_bytes'))} | {note} |")
    return "\n".join(lines)


def run_losses(scale: CheckScale) -> dict[str, Any]:
    rows = loss_rows(scale.losses, scale.device, scale.seed)
    return {"settings": asdict(scale.losses), "rows": rows, "table": losses_table(rows)}


# ---- synthetic data, config-built models ---------------------------------------------------------------


def id_tokenizer(vocab_size: int) -> Any:
    """A tokenizer whose words are token ids: ``"17 523 9"`` -> ``[17, 523, 9]`` (no special tokens added), with
    OPT's special tokens at ids 0-3. Built in code: synthetic ids written as text come back exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocabulary.update({str(index): index for index in range(len(SPECIAL_TOKENS), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


def synthetic_token_ids(rows: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """``[rows, length]`` token ids drawn uniformly above the special ids, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIAL_TOKENS), vocab_size, (rows, length), generator=generator)


def synthetic_dataset(token_ids: torch.Tensor, tokenized: bool) -> Any:
    """The ids as a ``text`` column (what the teacher cache tokenises) and, with ``tokenized``, as the columns a
    tokenised-once training set has (``student_tokens_input_ids``, ``student_tokens_attention_mask``)."""
    from datasets import Dataset

    from hf_pcoh.collator import TOKENS_PREFIX

    ids = token_ids.tolist()
    columns: dict[str, Any] = {"text": [" ".join(map(str, row)) for row in ids]}
    if tokenized:
        columns[TOKENS_PREFIX["student"] + "input_ids"] = ids
        columns[TOKENS_PREFIX["student"] + "attention_mask"] = [[1] * len(row) for row in ids]
    return Dataset.from_dict(columns)


def build_opt(fields: dict[str, Any], dtype: torch.dtype, device: str, seed: int) -> Any:
    """An ``OPTModel`` with random weights from ``seed``, made directly on ``device`` in ``dtype`` (a 6.7B model is
    never materialised on the CPU first)."""
    from transformers import AutoModel, OPTConfig

    config = OPTConfig(dropout=0.0, attention_dropout=0.0, **fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype)
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def weights_checksum(model: torch.nn.Module) -> float:
    """Sum of every weight in float64: equal builds give equal sums (a cheap check that two builds agree)."""
    with torch.no_grad():
        return float(sum(parameter.double().sum().item() for parameter in model.parameters()))


# ---- part 2: the large pair under FSDP2 ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fsdp_on_cpu() -> Iterator[None]:
    """accelerate turns FSDP on only for GPU process groups; switch it on for gloo, where torch's FSDP2 runs
    (as tests/test_scale_out.py does for its two CPU processes). Undone when the block ends."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # every later AcceleratorState() copies the distributed type from the process state
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original_init


FSDP_LAUNCH_CONFIG = os.path.join(REPOSITORY_ROOT, "scripts", "accelerate", "fsdp.yaml")
# accelerate launch names the variable of fsdp_transformer_layer_cls_to_wrap differently from the key
LAUNCH_VARIABLE_NAMES = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}


def fsdp_launch_environment(config_file: str = FSDP_LAUNCH_CONFIG) -> dict[str, str]:
    """The variables ``accelerate launch --config_file scripts/accelerate/fsdp.yaml`` gives its processes for FSDP
    and mixed precision (as ``accelerate.utils.launch.prepare_multi_gpu_env`` writes them), from which the
    ``Accelerator`` builds its FSDP plugin: FSDP2, full shard, ``FULL_STATE_DICT``, bf16. One change: no
    ``cpu_ram_efficient_loading``, since the models are built in place on the device and no checkpoint is read."""
    import yaml

    with open(config_file, encoding="utf-8") as stream:
        launch = yaml.safe_load(stream)
    environment = {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": str(launch.get("mixed_precision", "no"))}
    for key, value in launch["fsdp_config"].items():
        name = LAUNCH_VARIABLE_NAMES.get(key, "FSDP_" + key.removeprefix("fsdp_").upper())
        environment[name] = str(value).lower() if isinstance(value, bool) else str(value)
    environment["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    return environment


@contextlib.contextmanager
def world_of_one(device: str, environment: dict[str, str]) -> Iterator[None]:
    """The environment ``accelerate launch --num_processes 1`` gives its process, plus ``environment``: a process
    group of one (NCCL, with gloo for CPU tensors, on a GPU; gloo on CPU, where FSDP is switched on by
    :func:`fsdp_on_cpu`). The group and the variables are taken down when the block ends."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    variables = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                     LOCAL_WORLD_SIZE="1", **environment)
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        with fsdp_on_cpu() if device == "cpu" else contextlib.nullcontext():
            yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def step_clock_and_save_at(device: str, save_step: int) -> Any:
    """A callback that times every update (synchronised), saves a checkpoint at ``save_step`` only, and keeps the
    trainable weights of that step (``weights_at_save_step``; only in a run that reaches it from below)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.step_began = self.last_step_end = 0.0
            self.first_step_began: float | None = None
            self.step_seconds: dict[int, float] = {}
            self.save_seconds: float | None = None
            self.weights_at_save_step: dict[str, torch.Tensor] | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.step_began = time.perf_counter()
            if self.first_step_began is None:
                self.first_step_began = self.step_began

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.last_step_end = time.perf_counter()
            self.step_seconds[state.global_step] = self.last_step_end - self.step_began
            # one checkpoint, at save_step (not the Trainer's final save: 16 GB at the GPU scale)
            control.should_save = state.global_step == save_step
            if control.should_save:
                self.weights_at_save_step = whole_weights(kwargs["model"])
                synchronize(device)
                self.last_step_end = time.perf_counter()  # the save is timed from here
            return control

        def on_save(self, args, state, control, **kwargs):
            self.save_seconds = time.perf_counter() - self.last_step_end

    return StepClock()


def pair_config(scale: PairScale, output_dir: str, device: str, seed: int) -> Any:
    from hf_pcoh.config import DistillationConfig

    return DistillationConfig(
        output_dir=output_dir, overwrite_output_dir=True, seed=seed, data_seed=seed,
        per_device_train_batch_size=scale.batch_size, max_steps=scale.steps, learning_rate=scale.learning_rate,
        max_length=scale.sequence_length, teacher_layers=scale.teacher_layers, student_layers=scale.student_layers,
        pooling=scale.pooling, losses=list(scale.losses), bf16=scale.bf16, use_cpu=device == "cpu",
        save_strategy="steps", save_steps=scale.resume_step,
        logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )


def whole_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter of ``model`` (student and loss heads), whole (gathered from FSDP's shards);
    on the CPU, so that they count in no GPU memory figure."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        return {name: (parameter.full_tensor() if isinstance(parameter, DTensor) else parameter).detach().to(
                    "cpu", copy=True) for name, parameter in model.named_parameters()}


def max_abs_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest ``|a - b|`` over all tensors of two weight sets with the same names, and where it is."""
    if first.keys() != second.keys():
        raise ValueError(f"the two runs have different weights: {sorted(first.keys() ^ second.keys())[:5]}")
    largest, where = 0.0, ""
    for name, tensor in first.items():
        difference = (tensor.float() - second[name].float()).abs().max().item()
        if difference > largest or not where:
            largest, where = difference, name
    return largest, where


def load_whole_checkpoint_into_sharded_model(model: Any, checkpoint_dir: str) -> None:
    """Student and heads of a ``DistillationTrainer`` checkpoint (whole tensors, ``FULL_STATE_DICT``) copied into a
    model whose parameters are FSDP2 shards (DTensors), which ``nn.Module.load_state_dict`` cannot do (it copies
    plain tensors into DTensors: "got mixed torch.Tensor and DTensor")."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from hf_pcoh.artifacts import HEADS_FILE

    student = type(model.student).from_pretrained(checkpoint_dir, use_safetensors=True)
    state = {f"student.{name}": tensor for name, tensor in student.state_dict().items()}
    state.update(load_file(os.path.join(checkpoint_dir, HEADS_FILE)))
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def trainer_class(workaround: bool) -> type:
    """``DistillationTrainer``, or (``workaround``) one whose resume loads the weights into FSDP2 shards."""
    from hf_pcoh.trainer import DistillationTrainer

    if not workaround:
        return DistillationTrainer

    class ShardAwareResumeTrainer(DistillationTrainer):
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            load_whole_checkpoint_into_sharded_model(self.accelerator.unwrap_model(model or self.model),
                                                     resume_from_checkpoint)

    return ShardAwareResumeTrainer


def train_pair(
    scale: CheckScale, output_dir: str, resume_from: str | None, resume_workaround: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """(trainer, clock, figures) of one run of the pair: built, then trained (resumed from ``resume_from``)."""
    from transformers.trainer_callback import PrinterCallback

    from hf_pcoh.collator import DistillationCollator

    pair, device = scale.pair, scale.device
    teacher_dtype = torch.bfloat16 if pair.bf16 else torch.float32
    began = time.perf_counter()
    teacher = build_opt(pair.teacher, teacher_dtype, device, scale.seed + 1)
    student = build_opt(pair.student, torch.float32, device, scale.seed + 2)  # fp32 master weights
    synchronize(device)
    figures: dict[str, Any] = {"build_seconds": time.perf_counter() - began,
                               "teacher_parameters": parameter_count(teacher),
                               "student_parameters": parameter_count(student),
                               "teacher_checksum": weights_checksum(teacher)}
    tokenizer = id_tokenizer(pair.teacher["vocab_size"])
    rows = pair.batch_size * pair.steps  # one epoch: a resume skips into the middle of it
    dataset = synthetic_dataset(
        synthetic_token_ids(rows, pair.sequence_length, pair.teacher["vocab_size"], scale.seed), tokenized=True)
    collator = DistillationCollator(student_processor=tokenizer, teacher_processor=tokenizer, input_column="text",
                                    modality="text", max_length=pair.sequence_length)
    config = pair_config(pair, output_dir, device, scale.seed)
    clock = step_clock_and_save_at(device, pair.resume_step)
    began = time.perf_counter()
    trainer = trainer_class(resume_workaround)(model=student, teacher_model=teacher, args=config,
                                               train_dataset=dataset, data_collator=collator, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # the losses are in the JSON; the console keeps the tables
    figures["trainer_seconds"] = time.perf_counter() - began
    del teacher, student
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    synchronize(device)
    figures["train_seconds"] = time.perf_counter() - began
    # from train() to the first step: wrapping, the optimizer, and on a resume loading the checkpoint
    figures["seconds_to_first_step"] = (clock.first_step_began or began) - began
    return trainer, clock, figures


def logged_losses(trainer: Any) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def run_large_pair(scale: CheckScale, scratch_dir: str) -> dict[str, Any]:
    from torch.distributed.fsdp import FSDPModule

    pair, device = scale.pair, scale.device
    if not 0 < pair.resume_step < pair.steps or pair.warmup_steps >= pair.steps:
        raise ValueError(f"resume_step={pair.resume_step} and warmup_steps={pair.warmup_steps} must lie inside "
                         f"steps={pair.steps}")
    figures: dict[str, Any] = {}
    environment = fsdp_launch_environment()
    with world_of_one(device, environment):
        reset_peak_memory(device)
        trainer, clock, uninterrupted = train_pair(scale, os.path.join(scratch_dir, "uninterrupted"), None)
        figures["uninterrupted"] = uninterrupted
        figures["peak_bytes"] = peak_memory(device)
        figures["fsdp2"] = isinstance(trainer.model_wrapped, FSDPModule)
        figures["teacher_sharded"] = trainer.teacher is not None and isinstance(trainer.teacher, FSDPModule)
        figures["mixed_precision"] = str(trainer.accelerator.mixed_precision)
        timed_steps = [seconds for step, seconds in sorted(clock.step_seconds.items()) if step > pair.warmup_steps]
        step_seconds = statistics.median(timed_steps)
        tokens_per_step = pair.batch_size * pair.sequence_length
        figures.update(step_seconds_median=step_seconds, step_seconds=clock.step_seconds,
                       tokens_per_second=tokens_per_step / step_seconds, checkpoint_save_seconds=clock.save_seconds)
        checkpoint = os.path.join(scratch_dir, "uninterrupted", f"checkpoint-{pair.resume_step}")
        figures["checkpoint_bytes"] = folder_bytes(checkpoint) if os.path.isdir(checkpoint) else None
        final_weights = whole_weights(trainer.accelerator.unwrap_model(trainer.model))
        # how far the weights moved after the checkpoint: the scale a resume difference is judged against
        update, _ = max_abs_difference(final_weights, clock.weights_at_save_step)
        uninterrupted_losses = logged_losses(trainer)
        del trainer, clock
        release_memory(device)

        figures["resume_path"] = "DistillationTrainer"
        resumed_trainer = None
        try:
            resumed_trainer, _, resumed = train_pair(scale, os.path.join(scratch_dir, "resumed"), checkpoint)
        except (ValueError, RuntimeError) as error:
            # hf_pcoh (as of this check) loads a checkpoint into the student with load_state_dict, which FSDP2's
            # shards refuse: the error is recorded, and the resume checked with the weights loaded shard-aware
            figures["library_resume_error"] = describe_error(error)
        if resumed_trainer is None:
            release_memory(device)  # the failed trainer, once the exception (and its frames) are gone
            figures["resume_path"] = "load_whole_checkpoint_into_sharded_model (workaround)"
            resumed_trainer, _, resumed = train_pair(scale, os.path.join(scratch_dir, "resumed_workaround"),
                                                     checkpoint, resume_workaround=True)
        figures["resumed"] = resumed
        resumed_weights = whole_weights(resumed_trainer.accelerator.unwrap_model(resumed_trainer.model))
        # the resumed trainer's history starts with the checkpoint's: the steps after it are its own
        resumed_losses = {step: loss for step, loss in logged_losses(resumed_trainer).items() if step > pair.resume_step}
        figures["resumed_global_step"] = resumed_trainer.state.global_step
        del resumed_trainer
        difference, where = max_abs_difference(final_weights, resumed_weights)
        loss_difference = max(abs(loss - uninterrupted_losses[step]) for step, loss in resumed_losses.items())
        figures.update(
            max_abs_difference=difference, max_abs_difference_at=where, resume_equal=difference == 0.0,
            max_abs_update_after_checkpoint=update, difference_to_update=difference / update if update else None,
            teacher_builds_equal=uninterrupted["teacher_checksum"] == resumed["teacher_checksum"],
            max_loss_difference_after_checkpoint=loss_difference, losses_uninterrupted=uninterrupted_losses,
            losses_resumed=resumed_losses)
        del final_weights, resumed_weights
        release_memory(device)
    settings = asdict(pair)
    settings.update(teacher_layers=pair.teacher_layers, student_layers=pair.student_layers, world_size=1,
                    launch_environment=environment)
    return {"settings": settings, "figures": figures, "table": large_pair_table(pair, figures)}


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def format_count(count: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def large_pair_table(pair: PairScale, figures: dict[str, Any]) -> str:
    uninterrupted, resumed = figures["uninterrupted"], figures["resumed"]
    rows = [
        ("teacher / student parameters", f"{format_count(uninterrupted['teacher_parameters'])} / "
                                         f"{format_count(uninterrupted['student_parameters'])}"),
        ("FSDP2 (student, teacher sharded)", f"{figures['fsdp2']}, {figures['teacher_sharded']}"),
        (f"step time (median of steps {pair.warmup_steps + 1}-{pair.steps})",
         format_seconds(figures["step_seconds_median"])),
        ("tokens/s", f"{figures['tokens_per_second']:.0f}"),
        ("peak memory (uninterrupted run)", format_bytes(figures["peak_bytes"])),
        ("build / train wall (uninterrupted)",
         f"{uninterrupted['build_seconds']:.1f} s / {uninterrupted['train_seconds']:.1f} s"),
        (f"checkpoint at step {pair.resume_step}: save, size", f"{format_seconds(figures['checkpoint_save_seconds'])}, "
                                                               f"{format_bytes(figures['checkpoint_bytes'])}"),
        ("resumed run: train() to its first step", format_seconds(resumed["seconds_to_first_step"])),
        ("resume through DistillationTrainer", figures.get("library_resume_error", "ok").replace("|", "/")),
        ("resume path checked", figures["resume_path"]),
        (f"final weights at step {pair.steps}, resumed vs uninterrupted: max abs difference",
         f"{figures['max_abs_difference']:.3g} (equal: {figures['resume_equal']}; the weights moved up to "
         f"{figures['max_abs_update_after_checkpoint']:.3g} after step {pair.resume_step})"),
        (f"logged losses of steps {pair.resume_step + 1}-{pair.steps}: max abs difference",
         f"{figures['max_loss_difference_after_checkpoint']:.3g}"),
    ]
    return "\n".join(["| large pair | |", "| --- | ---: |"] + [f"| {name} | {value} |" for name, value in rows])


# ---- part 3: the teacher cache -------------------------------------------------------------------------


@contextlib.contextmanager
def timing_calls(module: Any, name: str, device: str, totals: dict[str, float]) -> Iterator[None]:
    """Within the block, ``module.<name>`` adds its (synchronised) seconds to ``totals[name]`` (not timed, and
    left as it is, where the module has no such name)."""
    original = getattr(module, name, None)
    if original is None:
        yield
        return

    def timed_function(*args: Any, **kwargs: Any) -> Any:
        synchronize(device)
        began = time.perf_counter()
        result = original(*args, **kwargs)
        synchronize(device)
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - began
        return result

    setattr(module, name, timed_function)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_teacher_cache(scale: CheckScale, scratch_dir: str) -> dict[str, Any]:
    import hf_pcoh.teacher_cache as teacher_cache
    from hf_pcoh.features import FeatureExtractor

    pair, cache, device = scale.pair, scale.cache, scale.device
    teacher = build_opt(pair.teacher, torch.bfloat16 if pair.bf16 else torch.float32, device, scale.seed + 1)
    tokenizer = id_tokenizer(pair.teacher["vocab_size"])
    dataset = synthetic_dataset(
        synthetic_token_ids(cache.rows, cache.sequence_length, pair.teacher["vocab_size"], scale.seed), tokenized=False)
    extractors = [FeatureExtractor(layer, pair.pooling, "teacher") for layer in pair.teacher_layers]
    cache_dir = os.path.join(scratch_dir, "teacher_cache")
    totals: dict[str, float] = {}
    reset_peak_memory(device)
    began = time.perf_counter()
    with timing_calls(teacher_cache, "run_teacher", device, totals), \
            timing_calls(teacher_cache, "teacher_fingerprint", device, totals):
        cached = teacher_cache.add_cached_teacher_features(
            dataset, cache_dir, teacher, tokenizer, extractors, input_column="text", modality="text",
            max_length=cache.sequence_length, with_logits=False, device=device, batch_size=cache.batch_size)
    synchronize(device)
    seconds = time.perf_counter() - began
    tokens = cache.rows * cache.sequence_length
    first_features = [len(cached[0][f"teacher_features_{index}"]) for index in range(len(extractors))]
    figures = {
        "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
        "teacher_forward_seconds": totals.get("run_teacher"), "fingerprint_seconds": totals.get("teacher_fingerprint"),
        "teacher_forward_tokens_per_second": tokens / totals["run_teacher"] if totals.get("run_teacher") else None,
        "peak_bytes": peak_memory(device), "cache_bytes": folder_bytes(cache_dir), "rows_cached": len(cached),
        "feature_widths": first_features, "teacher_parameters": parameter_count(teacher),
    }
    del teacher, cached
    release_memory(device)
    settings = {**asdict(cache), "teacher": pair.teacher, "teacher_layers": pair.teacher_layers,
                "pooling": pair.pooling, "dtype": "bfloat16" if pair.bf16 else "float32"}
    return {"settings": settings, "figures": figures, "table": teacher_cache_table(figures)}


def teacher_cache_table(figures: dict[str, Any]) -> str:
    rows = [
        ("rows cached (feature widths)", f"{figures['rows_cached']} ({', '.join(map(str, figures['feature_widths']))})"),
        ("wall time", format_seconds(figures["seconds"])),
        ("tokens/s (wall)", f"{figures['tokens_per_second']:.0f}"),
        ("teacher forward: time, tokens/s", f"{format_seconds(figures['teacher_forward_seconds'])}, "
                                            f"{figures['teacher_forward_tokens_per_second'] or 0:.0f}"),
        ("fingerprint of the weights", format_seconds(figures["fingerprint_seconds"])),
        ("peak memory", format_bytes(figures["peak_bytes"])),
        ("on disk", format_bytes(figures["cache_bytes"])),
    ]
    return "\n".join(["| teacher cache | |", "| --- | ---: |"] + [f"| {name} | {value} |" for name, value in rows])


# ---- the whole check -----------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[CheckScale, str], dict[str, Any]]] = {
    "losses": lambda scale, scratch_dir: run_losses(scale),
    "large_pair": run_large_pair,
    "teacher_cache": run_teacher_cache,
}


@dataclass
class PartResult:
    part: str
    path: str
    table: str
    wall_seconds: float
    failed: bool = False


def run_check(
    parts: Sequence[str], scale: CheckScale, output_dir: str, scratch_dir: str | None = None,
    progress: Callable[[PartResult], None] | None = None,
) -> list[PartResult]:
    """Run ``parts`` at ``scale``, each written to ``output_dir/<part>.json`` as soon as it ends; checkpoints and
    the cache go to a temporary folder under ``scratch_dir`` (removed afterwards). A part that fails is written
    with its ``error`` and ``traceback`` instead of figures, and the next part runs."""
    unknown = [part for part in parts if part not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; the parts are {list(PARTS)}")
    machine = describe_machine(scale.device)
    results = []
    for part in parts:
        scratch = tempfile.mkdtemp(prefix=f"gpu_check_{part}_", dir=scratch_dir)
        began = time.perf_counter()
        try:
            payload = RUNNERS[part](scale, scratch)
        except Exception as error:  # noqa: BLE001 - one part failing must not cost the others their figures
            message = describe_error(error)
            payload = {"error": message, "traceback": traceback.format_exc(), "table": f"FAILED: {message}"}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            release_memory(scale.device)
        wall_seconds = time.perf_counter() - began
        path = write_part(output_dir, part, {"part": part, "scale": scale.name, "machine": machine, **payload,
                                             "wall_seconds": wall_seconds})
        result = PartResult(part, path, payload["table"], wall_seconds, failed="error" in payload)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def load_part(output_dir: str, part: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, f"{part}.json"), encoding="utf-8") as stream:
        return json.load(stream)

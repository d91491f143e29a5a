"""scripts/gpu_check.py: the one-GPU check. Without CUDA it says so in one line and exits with status 2; with
--cpu-smoke its whole code path runs here on CPU at tiny shapes and writes the JSON files the GPU run will."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPOSITORY_ROOT, "scripts", "gpu_check.py")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*arguments: str, timeout: float, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *arguments], capture_output=True, text=True, timeout=timeout,
                          cwd=REPOSITORY_ROOT, env={**os.environ, **environment})


def test_help_documents_every_part_and_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for part in gpu_check.PARTS:
        assert f"{part}:" in text, part  # each part with what it measures
    for option in ("--only", "--output_dir", "--scratch_dir", "--cpu-smoke"):
        assert option in text, option
    assert "benchmarks/results/gpu_check/" in text and "6 minutes" in text


def test_without_cuda_it_says_so_in_one_line_and_exits_with_status_2() -> None:
    completed = run_script(timeout=120, CUDA_VISIBLE_DEVICES="")  # no GPU visible, even on a machine with one
    assert completed.returncode == 2
    output = (completed.stdout + completed.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("error: no CUDA GPU here") and "--cpu-smoke" in output[0]


def test_the_fsdp_settings_are_those_of_the_shipped_accelerate_config() -> None:
    environment = gpu_check.fsdp_launch_environment()
    assert environment["ACCELERATE_USE_FSDP"] == "true" and environment["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert environment["FSDP_VERSION"] == "2" and environment["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert environment["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert environment["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # models built in place: nothing to load


def test_synthetic_ids_written_as_text_tokenise_back_to_themselves() -> None:
    ids = gpu_check.synthetic_token_ids(3, 12, vocab_size=50272, seed=0)
    assert ids.min() >= len(gpu_check.SPECIAL_TOKENS)
    assert ids.equal(gpu_check.synthetic_token_ids(3, 12, vocab_size=50272, seed=0))  # fixed by the seed
    texts = list(gpu_check.synthetic_dataset(ids, tokenized=False)["text"])
    tokenizer = gpu_check.id_tokenizer(50272)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    assert encoded["input_ids"].equal(ids) and bool(encoded["attention_mask"].all())
    assert set(encoded) == {"input_ids", "attention_mask"}  # what OPT's forward takes


@pytest.mark.slow  # every part on CPU: two tiny trainers under FSDP2 on gloo, the losses, a cache pass (~40 s)
def test_cpu_smoke_runs_every_part_and_resume_equals_the_uninterrupted_run(tmp_path) -> None:
    completed = run_script("--cpu-smoke", "--output_dir", str(tmp_path / "json"), "--scratch_dir", str(tmp_path),
                           timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    parts = {part: gpu_check.load_part(str(tmp_path / "json"), part) for part in gpu_check.PARTS}
    for part, payload in parts.items():
        assert "error" not in payload, payload.get("traceback")
        assert payload["part"] == part and payload["scale"] == "cpu-smoke" and payload["wall_seconds"] > 0
        machine = payload["machine"]
        assert machine["device"] == "cpu" and machine["gpu"] is None
        assert {"torch", "transformers", "accelerate", "git_sha"} <= machine.keys()
        assert payload["table"] in completed.stdout  # the table printed is the one stored
    assert os.listdir(tmp_path) == ["json"]  # checkpoints and the cache were removed

    rows = parts["losses"]["rows"]
    scale = gpu_check.CPU_SMOKE.losses
    assert len(rows) == len(scale.variants) * len(scale.batch_sizes) * 2
    for row in rows:
        assert not row["oom"] and "skipped" not in row and "error" not in row, row
        assert row["seconds"] > 0 and "peak_bytes" in row and row["value"] == row["value"]  # not NaN
        if row["precision"] == "bf16":  # under autocast the loss still follows the float32 gradient
            assert row["grad_cosine_to_float32"] > 0.99, row
            assert abs(row["value_difference_to_float32"]) < 1e-2 * abs(row["value"]), row

    pair = parts["large_pair"]["figures"]
    assert pair["fsdp2"] and pair["teacher_sharded"] and pair["mixed_precision"] == "bf16"
    assert pair["step_seconds_median"] > 0 and pair["tokens_per_second"] > 0 and "peak_bytes" in pair
    assert pair["resumed_global_step"] == gpu_check.CPU_SMOKE.pair.steps and pair["teacher_builds_equal"]
    # the resumed run ends on the uninterrupted run's weights, which had moved after the checkpoint
    assert pair["resume_equal"] and pair["max_abs_difference"] == 0.0, pair
    assert pair["max_abs_update_after_checkpoint"] > 0 and pair["max_loss_difference_after_checkpoint"] == 0.0

    cache = parts["teacher_cache"]["figures"]
    assert cache["rows_cached"] == gpu_check.CPU_SMOKE.cache.rows
    assert cache["feature_widths"] == [gpu_check.CPU_SMOKE.pair.teacher["hidden_size"]] * 2
    assert cache["tokens_per_second"] > 0 and cache["teacher_forward_seconds"] > 0 and cache["cache_bytes"] > 0

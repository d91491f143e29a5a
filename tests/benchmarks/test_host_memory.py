"""The host-memory benchmark records every process's resident memory in each way of loading, with its provenance."""

from __future__ import annotations

import json

import pytest

from benchmarks.host_memory import SCENARIOS, measure_host_memory, table
from tiny_models import TINY_BERT


@pytest.mark.slow  # five spawned processes with a tiny teacher
def test_the_host_memory_benchmark_records_each_process_and_where_the_weights_were_read(tmp_path, minilm_path) -> None:
    result_file = tmp_path / "host_memory.json"
    measure_host_memory(result_file, max_steps=1, teacher_config=TINY_BERT)
    result = json.loads(result_file.read_text())
    assert set(result["scenarios"]) == set(SCENARIOS)
    for name, scenario in result["scenarios"].items():
        assert len(scenario["ranks"]) == SCENARIOS[name]["processes"]
        for record in scenario["ranks"]:
            stages = record["stages"]
            assert record["steps"] == 1 and stages["imports"]["rss"] > 100 * 2**20
            assert record["peak_rss_bytes"] >= max(stage["rss"] for stage in stages.values())
            # only a process other than the first, in the first-process-loads run, held no weight before sharding
            first_only = name == "fsdp2_first_process_loads" and record["rank"] == 1
            assert record["teacher_on_meta_before_sharding"] == first_only
    assert result["teacher"]["parameters"] > 0 and result["teacher"]["config"] == TINY_BERT
    assert {"torch", "transformers", "accelerate", "hf_pcoh", "git_sha"} <= set(result["machine"])
    assert table(result).count("| sum |") == len(SCENARIOS)

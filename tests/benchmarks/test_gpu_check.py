"""scripts/gpu_check.py: one command on a one-GPU machine; here (no CUDA) it explains itself and stops."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from benchmarks import gpu_check

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts",
                      "gpu_check.py")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_lists_the_checks(capsys) -> None:
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "benchmarks/results/gpu_*.json" in text
    assert all(check in text for check in script.CHECKS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_cuda_it_says_so_and_exits_with_status_1(capsys) -> None:
    assert load_script().main([]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: no CUDA GPU here") and "scripts/gpu_check.py" in error


def test_results_are_written_as_gpu_json_with_the_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "describe_machine", lambda device: f"{device} (test)")
    path = gpu_check.write_result("loss_cost", {"rows": [{"batch_size": 1024}]}, str(tmp_path))
    assert os.path.basename(path) == "gpu_loss_cost.json"
    assert json.loads(open(path, encoding="utf-8").read()) == {"machine": "cuda (test)", "rows": [{"batch_size": 1024}]}

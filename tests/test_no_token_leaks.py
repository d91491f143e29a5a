"""Hub tokens never reach logs, saved configs, checkpoints or the model card."""

from __future__ import annotations

import logging

from hf_pcoh.cli import distill_main

from tiny_models import MINILM, TINY_BERT

FAKE_ENV_TOKEN = "hf_FakeEnvironmentToken1234567890abcdef"
FAKE_CLI_TOKEN = "hf_FakeCommandLineToken0987654321fedcba"


def test_tokens_from_the_environment_and_the_command_line_are_never_written(tmp_path, monkeypatch, capsys, caplog, minilm_path) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    output_dir = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    code = distill_main([
        "opt-wordnet", "--teacher_config", str(TINY_BERT).replace("'", '"'), "--teacher_processor_name_or_path", MINILM,
        "--student_config", '{"num_hidden_layers": 1}', "--student_layers", "last", "--teacher_layers", "last",
        "--losses", "perception_coherence", "--max_train_samples", "32", "--max_eval_samples", "24",
        "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1",
        "--hub_token", FAKE_CLI_TOKEN, "--output_dir", str(output_dir),
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = [path for path in output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written) and any(path.name == "README.md" for path in written)
    for token in (FAKE_ENV_TOKEN, FAKE_CLI_TOKEN):
        assert token not in captured.out + captured.err + caplog.text
        for path in written:
            assert token.encode() not in path.read_bytes(), path

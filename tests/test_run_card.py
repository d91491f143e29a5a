"""The model card and distillation_config.json tell the run as the trainer received it, from Python as from the
command line (issue 23): the data given (a named data set, or a local/in-memory one with its rows and columns), the
teacher and student given (a folder, a config, or a model object with its size), the evaluation (eval_results.json,
else the trainer's last one), and commands to run or measure it again only where they work. And a push that cannot
happen (offline mode, no token, no permission) leaves the folder with its card and fails in one line."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import yaml
from datasets import Dataset
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_pcoh import errors
from hf_pcoh.cli import distill_main, evaluate_main, evaluate_parser, parse_distillation_args
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.models import count_parameters
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT

TINY_STUDENT = {**TINY_BERT, "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}
FAKE_TOKEN = "hf_FakeTokenThatMustNeverLeak0123456789"


def config(output_dir: Path, **fields) -> DistillationConfig:
    """A config naming no model and no data (the trainer is given them), evaluating every 2 of 4 steps."""
    values = dict(output_dir=str(output_dir), losses=["perception_coherence"], max_length=32,
                  per_device_train_batch_size=16, max_steps=4, eval_strategy="steps", eval_steps=2,
                  learning_rate=3e-3, logging_steps=1, save_strategy="no", disable_tqdm=True, report_to="none", seed=0)
    values.update(fields)
    return DistillationConfig(**values)


@pytest.fixture(scope="module")
def glosses() -> tuple[Dataset, Dataset]:
    """WordNet glosses as a user's own in-memory data sets: 64 training rows, 24 evaluation rows."""
    splits = load_splits("wordnet_glosses")
    train, evaluation = splits["train"].shuffle(seed=0).select(range(64)), splits["test"].shuffle(seed=0).select(range(24))
    return tuple(Dataset.from_dict({"text": split["text"], "label": split["label"]}) for split in (train, evaluation))


def tiny_models() -> tuple[AutoModel, AutoModel]:
    """(teacher, student) built from configs: objects with no name or path."""
    return tuple(AutoModel.from_config(AutoConfig.for_model(**fields)) for fields in (TINY_BERT, TINY_STUDENT))


def code_block(text: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)\n```", text, flags=re.S)
    assert match, f"no ```{language} block in the card"
    return match.group(1)


def last_evaluation(trainer: DistillationTrainer) -> dict[str, float]:
    return [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]


def assert_shows_the_trainers_evaluation(card: str, trainer: DistillationTrainer) -> None:
    evaluation = last_evaluation(trainer)
    assert f"its last evaluation (step {evaluation['step']})" in card and "not evaluated" not in card
    assert f"| Teacher-neighbour recall@10 | {evaluation['eval_teacher_neighbour_recall@10']:.4f} |" in card
    assert f"| Dissimilarity Spearman | {evaluation['eval_dissimilarity_spearman']:.4f} |" in card
    assert f"| `eval_loss` | {evaluation['eval_loss']:.4f} |" in card


def trained(trainer: DistillationTrainer) -> str:
    """Train, save, write the card; the card's text."""
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    return (Path(trainer.args.output_dir) / "README.md").read_text(encoding="utf-8")


def test_a_python_run_with_model_objects_and_in_memory_data(tmp_path, minilm_path, glosses) -> None:
    train, evaluation = glosses
    teacher, student = tiny_models()
    sizes = {"teacher": count_parameters(teacher), "student": count_parameters(student)}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path / "out"),
                                  train_dataset=train, eval_dataset=evaluation,
                                  processing_class=AutoTokenizer.from_pretrained(minilm_path))
    card = trained(trainer)
    # the data given, not the config's default data set
    data = "a local/in-memory dataset (64 rows; columns text, label)"
    assert f"on\n**{data}**" in card and f"Data: **{data}**, 64 training samples and 24 held-out" in card
    assert "wordnet" not in card.lower()
    # the models as given: objects with no name or path, with their sizes
    for role in ("teacher", "student"):
        assert f"a bert model object built from a config (no name or path; {sizes[role]:,} parameters)" in card
    assert "randomly initialised" not in card and "built from `student_config`" not in card
    assert_shows_the_trainers_evaluation(card, trainer)
    # no command can rebuild or measure it: a Python snippet and an honest note instead
    assert "hf-pcoh distill recipe.yaml" not in card and "No command can run it again: the teacher was a model object" in card
    snippet = code_block(card, "python")
    ast.parse(snippet)
    assert "model=student," in snippet and "teacher_model=teacher," in snippet and data in snippet
    assert "`hf-pcoh evaluate` loads the teacher and the data by name, and here the teacher was a model object" in card
    description = json.loads((tmp_path / "out" / "distillation_config.json").read_text())
    assert description["teacher"]["source"] == description["student"]["source"] == "object"
    assert description["dataset"]["name"] is None and "dataset_name" not in description["recipe"]
    assert description["training_evaluation"]["metrics"]["teacher_neighbour_recall@10"] == pytest.approx(
        last_evaluation(trainer)["eval_teacher_neighbour_recall@10"])


@pytest.fixture
def model_dirs(tmp_path, minilm_path) -> dict[str, str]:
    """A tiny teacher and a tiny student saved to folders, each with MiniLM's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    folders = {}
    for role, model in zip(("teacher", "student"), tiny_models()):
        folders[role] = str(tmp_path / role)
        model.save_pretrained(folders[role])
        tokenizer.save_pretrained(folders[role])
    return folders


def test_a_python_run_with_model_folders(tmp_path, model_dirs, glosses, capsys) -> None:
    train, evaluation = glosses
    output_dir = tmp_path / "out"
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                                  args=config(output_dir), train_dataset=train, eval_dataset=evaluation)
    card = trained(trainer)
    assert f"| Model | `{model_dirs['teacher']}` | initialised from `{model_dirs['student']}` |" in card
    assert "a local/in-memory dataset (64 rows; columns text, label)" in card and "wordnet" not in card.lower()
    assert_shows_the_trainers_evaluation(card, trainer)
    # the recipe names the folders the trainer was given; the data cannot be named, so Python runs it again
    recipe = yaml.safe_load(code_block(card, "yaml"))
    assert recipe["teacher_model_name_or_path"] == model_dirs["teacher"]
    assert recipe["student_model_name_or_path"] == model_dirs["student"] and "dataset_name" not in recipe
    assert "hf-pcoh distill recipe.yaml" not in card and "No command can run it again: the data was a local" in card
    snippet = code_block(card, "python")
    ast.parse(snippet)
    for role, keyword in (("student", "model"), ("teacher", "teacher_model")):
        assert f"    {keyword}={model_dirs[role]!r}," in snippet and Path(model_dirs[role]).is_dir()
    rebuilt = DistillationConfig(**recipe)  # the snippet's config
    assert (rebuilt.teacher_model_name_or_path, rebuilt.losses) == (model_dirs["teacher"], ["perception_coherence"])
    # hf-pcoh evaluate says in one line why it cannot measure this folder, rather than measuring other data
    assert evaluate_main([str(output_dir)]) == 2
    assert "local/in-memory dataset" in capsys.readouterr().err


def test_a_command_line_run_names_its_data_and_models_and_prints_commands_that_work(tiny_finished_run) -> None:
    card = (tiny_finished_run / "README.md").read_text(encoding="utf-8")
    results = json.loads((tiny_finished_run / "eval_results.json").read_text())
    description = json.loads((tiny_finished_run / "distillation_config.json").read_text())
    assert "**wordnet_glosses**" in card and description["dataset"]["source"] == "config"
    assert "the bert teacher built from `teacher_config`" in card
    assert "built from `student_config`, randomly initialised" in card
    recall = results["student"]["teacher_neighbour_recall@10"]
    assert re.search(rf"\| Teacher-neighbour recall@10 \| {recall:.4f} \|", card)
    # "run it again": the recipe block through the command line's own parser
    assert "run `hf-pcoh distill recipe.yaml`" in card
    recipe_file = tiny_finished_run.parent / "recipe.yaml"
    recipe_file.write_text(code_block(card, "yaml"), encoding="utf-8")
    rebuilt = parse_distillation_args([str(recipe_file), "--report_to", "none"])
    assert json.loads(json.dumps(rebuilt.distillation_fields(), default=str)) == description["recipe"]


def test_the_measure_command_of_a_card_parses_and_names_the_run(tiny_finished_run, tmp_path) -> None:
    """A run not measured after training: the card shows the trainer's evaluation, and its `hf-pcoh evaluate`
    command parses and names a folder that holds the run."""
    run = Path(shutil.copytree(tiny_finished_run, tmp_path / "run"))
    (run / "eval_results.json").unlink()
    description = json.loads((run / "distillation_config.json").read_text())
    description["training_evaluation"] = {"step": 2, "epoch": 1.0, "metrics": {"teacher_neighbour_recall@10": 0.25}}
    (run / "distillation_config.json").write_text(json.dumps(description), encoding="utf-8")
    from hf_pcoh import hub

    card = str(hub.build_model_card(run))
    assert "| Teacher-neighbour recall@10 | 0.2500 |" in card
    (command,) = re.findall(r"To measure it beside its teacher, run `([^`]+)`", card)
    arguments = shlex.split(command)
    assert arguments[:2] == ["hf-pcoh", "evaluate"]
    parsed = evaluate_parser().parse_args(arguments[2:])
    assert Path(parsed.output_dir) == run and (run / "distillation_config.json").is_file()


# ---- push_to_hub: the card first, then one line naming the cause ------------------------------------------------


def remove_tokens(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(folder / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(folder / "hf_home" / "stored_tokens"))


def forbidden(*args, **kwargs):
    raise AssertionError("no Hub call may be made")


def assert_one_line_with_the_folder_complete(error: Exception, output_dir: Path, *causes: str) -> None:
    message = str(error)
    assert "\n" not in message and FAKE_TOKEN not in message, message
    assert all(cause in message for cause in causes), message
    assert "is complete, with its model card README.md" in message
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    assert "hf_pcoh.hub.build_model_card" in card and "me/tiny-student" in card


def test_push_to_hub_writes_the_card_then_fails_in_one_line_naming_the_cause(tmp_path, model_dirs, glosses,
                                                                             monkeypatch) -> None:
    train, _ = glosses
    output_dir = tmp_path / "tiny-student"
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"], train_dataset=train,
                                  args=config(output_dir, max_steps=1, eval_strategy="no",
                                              hub_model_id="me/tiny-student"))
    trainer.train()
    remove_tokens(monkeypatch, tmp_path)

    # offline (HF_HUB_OFFLINE=1), no token: offline mode is the cause named, and nothing is called
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "create_repo", forbidden)
    with pytest.raises(errors.HubOfflineError) as raised:
        trainer.push_to_hub()
    assert_one_line_with_the_folder_complete(raised.value, output_dir, "offline mode is enabled (HF_HUB_OFFLINE=1)",
                                             "call trainer.push_to_hub() again")
    (output_dir / "README.md").unlink()

    # offline with a token: huggingface_hub's own refusal (OfflineModeIsEnabled) becomes the same one line
    monkeypatch.undo()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(errors.HubOfflineError) as raised:
        trainer.push_to_hub()
    assert_one_line_with_the_folder_complete(raised.value, output_dir, "offline mode is enabled (HF_HUB_OFFLINE=1)")

    # online, no token
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    remove_tokens(monkeypatch, tmp_path)
    monkeypatch.setattr(HfApi, "create_repo", forbidden)
    with pytest.raises(errors.MissingTokenError) as raised:
        trainer.push_to_hub()
    assert_one_line_with_the_folder_complete(raised.value, output_dir, "No Hugging Face token found", "hf auth login")

    # online, a token that may not write there (the Hub's 403, a message over several lines)
    def refuse(self, repo_id, **kwargs):
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden: You don't have the rights to create a model under this namespace\n"
                             "Cannot access content at: https://huggingface.co/api/repos/create.", response=response)

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(errors.HubPermissionError) as raised:
        trainer.push_to_hub()
    assert_one_line_with_the_folder_complete(raised.value, output_dir, "No permission to upload to me/tiny-student",
                                             "no write access to 'me' (HTTP 403)")
    assert isinstance(raised.value, errors.PublishError)

    # and when the Hub takes it: one commit of the folder, the card's repo id in it
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: uploads.append(kwargs) or SimpleNamespace(
        commit_url="https://huggingface.co/me/tiny-student/commit/1"))
    plan = trainer.push_to_hub()
    assert plan.uploaded and plan.commit_url.endswith("/commit/1") and len(uploads) == 1
    assert "training_args.bin" not in plan.files and "README.md" in plan.files


def test_the_command_lines_push_blames_offline_mode_not_the_missing_token(tmp_path, minilm_path, monkeypatch,
                                                                         capsys) -> None:
    remove_tokens(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "run"
    code = distill_main(["--teacher_config", json.dumps(TINY_BERT), "--teacher_processor_name_or_path", MINILM,
                         "--student_config", '{"num_hidden_layers": 1}', "--max_train_samples", "16",
                         "--max_eval_samples", "16", "--max_steps", "1", "--per_device_train_batch_size", "8",
                         "--losses", "perception_coherence", "--max_length", "32", "--disable_tqdm", "true",
                         "--report_to", "none", "--output_dir", str(output_dir), "--push_to_hub",
                         "--hub_model_id", "me/tiny-student"])
    stderr = capsys.readouterr().err
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in stderr
    assert "offline mode is enabled (HF_HUB_OFFLINE=1)" in line and "token" not in line
    assert "me/tiny-student" in (output_dir / "README.md").read_text(encoding="utf-8")


def test_push_to_hub_in_the_config_while_offline_is_refused_in_one_line_before_any_hub_call(tmp_path, model_dirs,
                                                                                           glosses, monkeypatch) -> None:
    """The Trainer would create the repository when built and fail with huggingface_hub's raw error."""
    train, _ = glosses
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "create_repo", forbidden)
    with pytest.raises(errors.HubOfflineError, match=r"push_to_hub is set but the Hub is offline") as raised:
        DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"], train_dataset=train,
                            args=config(tmp_path / "out", max_steps=1, eval_strategy="no", push_to_hub=True,
                                        hub_model_id="me/tiny-student"))
    assert "\n" not in str(raised.value)

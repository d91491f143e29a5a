"""Publishing a distilled student: the model card's content and metadata, and the upload through a fake HfApi.

Only the network boundary is replaced: a stand-in HfApi records ``create_repo`` / ``upload_folder`` calls
(checked against the real methods' signatures) or raises the errors the real client raises offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from PIL import Image
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer, ViTConfig, ViTImageProcessor, ViTModel

from hf_pcoh import citations, hub
from hf_pcoh.config import DistillationConfig
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.losses import LOSSES, PerceptionCoherenceLoss, ProjectedMSELoss

REPO_ID = "me/tiny-student"
TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
TEACHER_PARAMETERS = 22_713_216
FAKE_TOKEN = "hf_FakeTokenThatMustNeverLeak0123456789"
STUDENT_METRICS = {
    "knn_accuracy@1": 0.41234567,
    "knn_accuracy@10": 0.4567,
    "linear_probe_accuracy": 0.5012,
    "map_at_r": 0.2109,
    "recall_at_10": 0.6,
    "teacher_neighbour_recall@10": 0.3321,
    "dissimilarity_spearman": 0.7142,
    "perception_coherence": 0.8123,
    "embeddings_per_second": 900.0,
}
TEACHER_METRICS = {"knn_accuracy@1": 0.45, "knn_accuracy@10": 0.53, "linear_probe_accuracy": 0.55, "map_at_r": 0.25,
                   "recall_at_10": 0.66, "parameters": TEACHER_PARAMETERS, "embeddings_per_second": 150.0}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "student", "teacher",
         "distilled", "from", "its", "plain", "embeddings", "transformers"]
RUN_FILES = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "distillation_config.json", "eval_results.json", "distillation_heads.safetensors", "loss_curve.png",
             "trainer_state.json"}


# ---- a distilled-student directory, as the trainer writes it ----------------------------------------


def recipe(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Every recipe field, from a real DistillationConfig, as the pipeline serialises it."""
    values = dict(output_dir=str(output_dir), teacher_model_name_or_path=TEACHER, student_config={"num_hidden_layers": 2},
                  dataset_name="wordnet_glosses", student_layers=["2"], teacher_layers=["-1"], pooling="mean",
                  losses=["perception_coherence", "projected_mse"], loss_weights=[1.0, 0.5],
                  loss_kwargs={"perception_coherence": {"temperature": 0.1}}, max_length=32, report_to="none")
    values.update(overrides)
    config = DistillationConfig(**values)
    return json.loads(json.dumps(config.distillation_fields(), default=str))


def write_text_run(folder: Path, layer: int | str = 2, pooling: str = "mean", evaluated: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    student = BertModel(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=100))
    student.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB), encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    (folder / "vocab.txt").unlink()
    save_file({"pair0_projected_mse.projector.weight": torch.randn(384, 32)}, folder / hub.HEADS_FILE)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(folder / "loss_curve.png")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}), encoding="utf-8")
    parameters = sum(parameter.numel() for parameter in student.parameters())
    description = {
        "hf_pcoh_version": "0.1.0",
        "recipe": recipe(folder, student_layers=[str(layer)], pooling=pooling),
        "teacher": {"name_or_path": TEACHER, "model_type": "bert", "parameters": TEACHER_PARAMETERS},
        "student": {"model_type": "bert", "parameters": parameters},
        "dataset": {"name": "wordnet_glosses", "train_samples": 3000, "eval_samples": 1000, "text_column": "text",
                    "label_column": "label"},
        "terms": [{"student_layer": layer, "teacher_layer": -1, "loss": "perception_coherence", "weight": 1.0},
                  {"student_layer": layer, "teacher_layer": -1, "loss": "projected_mse", "weight": 0.5}],
        "losses": ["perception_coherence", "projected_mse"],
        "embedding": {"student_layer": layer, "teacher_layer": -1, "pooling": pooling, "teacher_pooling": pooling},
        "modality": "text",
        "task": "feature-extraction",
    }
    (folder / hub.DISTILLATION_CONFIG_FILE).write_text(json.dumps(description, indent=2), encoding="utf-8")
    if evaluated:
        results = {"dataset": "wordnet_glosses", "split": "eval", "num_samples": 1000,
                   "student": {**STUDENT_METRICS, "parameters": parameters}, "teacher": TEACHER_METRICS,
                   "ratios": {"parameters": parameters / TEACHER_PARAMETERS, "speed_up": 6.0}}
        (folder / hub.EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def text_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_run(tmp_path_factory.mktemp("template") / "tiny-student")


@pytest.fixture
def run_dir(text_run_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(text_run_template, tmp_path / "tiny-student"))


def snapshot(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class FakeHfApi:
    """The network boundary: records calls (bound to the real HfApi signatures) or raises ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def record(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = inspect.signature(getattr(HfApi, method)).bind(None, *args, **kwargs)  # fails on a wrong call
        arguments = dict(bound.arguments)
        arguments.pop("self")
        self.calls.append((method, arguments))
        if self.error is not None:
            raise self.error
        return arguments

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        arguments = self.record("create_repo", *args, **kwargs)
        return f"https://huggingface.co/{arguments['repo_id']}"

    def upload_folder(self, *args: Any, **kwargs: Any) -> Any:
        arguments = self.record("upload_folder", *args, **kwargs)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{arguments['repo_id']}/commit/abc"})()


def remove_tokens(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """No token anywhere huggingface_hub looks: environment, token file (HF_HOME in ``folder``), OIDC."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(folder / "hf_home"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(folder / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(folder / "hf_home" / "stored_tokens"))
    assert hub.get_token() is None


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Online (the tests run with HF_HUB_OFFLINE=1: huggingface_hub's own flag set back) and no token anywhere."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    remove_tokens(monkeypatch, tmp_path)


def publish_script() -> Any:
    path = Path(__file__).resolve().parents[1] / "scripts" / "publish.py"
    spec = importlib.util.spec_from_file_location("publish_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_block(text: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)\n```", text, flags=re.S)
    assert match, f"no ```{language} block in the card"
    return match.group(1)


# ---- the card -------------------------------------------------------------------------------------


def test_card_carries_teacher_recipe_results_plots_usage_and_citations(run_dir: Path) -> None:
    text = str(hub.build_model_card(run_dir, repo_id=REPO_ID))
    assert f"[{TEACHER}](https://huggingface.co/{TEACHER})" in text
    assert f"{TEACHER_PARAMETERS:,}" in text
    description = json.loads((run_dir / hub.DISTILLATION_CONFIG_FILE).read_text())
    assert description["student"]["parameters"] == 37_856
    assert "37,856 parameters, 0.0017x the teacher's (600.0x smaller)" in text
    assert "6.00x the teacher's embeddings per second" in text
    for loss in ("perception_coherence", "projected_mse"):
        assert f"`{loss}`" in text
    bibtex = code_block(text, "bibtex")
    for citation in (PerceptionCoherenceLoss.citation, ProjectedMSELoss.citation, hub.HF_PCOH_CITATION):
        assert citation.strip() in bibtex
    # student vs teacher, with the student's share of the teacher's figure
    assert "| 10-NN accuracy | 0.4567 | 0.5300 | 0.86x |" in text
    assert "| Perception coherence | 0.8123 | — | — |" in text
    assert "![loss curve](loss_curve.png)" in text
    usage = code_block(text, "python")
    assert f'model_id = "{REPO_ID}"' in usage and "AutoTokenizer.from_pretrained" in usage
    assert "outputs.hidden_states[2]" in usage and 'inputs["attention_mask"]' in usage
    assert "hf_pcoh" not in usage  # plain transformers
    assert yaml_recipe(text)["loss_kwargs"] == {"perception_coherence": {"temperature": 0.1}}


def bibtex_entries(text: str) -> list[str]:
    """The top-level ``@type{key, ...}`` entries of ``text``, each with its braces balanced; fails on stray text."""
    entries, depth, start = [], 0, None
    for index, character in enumerate(text):
        if depth == 0 and start is None:
            if character == "@":
                start = index
            else:
                assert character.isspace(), f"text outside an entry at {index}: {text[index:index + 40]!r}"
        elif character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            assert depth >= 0, f"unbalanced braces in {text[start:index + 1]!r}"
            if depth == 0:
                entries.append(text[start:index + 1])
                start = None
    assert depth == 0 and start is None, f"an entry is not closed: {text[start:]!r}"
    return entries


def citation_constants() -> dict[str, str]:
    return {name: value for name, value in vars(citations).items()
            if name.isupper() and isinstance(value, str) and value.lstrip().startswith("@")}


def test_every_citation_is_one_bibtex_entry_with_a_unique_key() -> None:
    constants = citation_constants()
    assert {"PERCEPTION_COHERENCE", "COSPRESS", "PROCRUSTES_GRAM", "CKA", "FITNETS", "RKD", "HINTON_KD",
            "KNOWLEDGE_QUALITY", "SENTENCE_TRANSFORMERS_DISTILLATION", "KNN_ACCURACY", "LINEAR_PROBE", "RETRIEVAL",
            "NEIGHBOUR_RECALL", "RSA", "HF_PCOH"} <= set(constants)
    keys = {}
    for name, entry in constants.items():
        (parsed,) = bibtex_entries(entry)
        match = re.fullmatch(r"@(article|inproceedings|software)\{([A-Za-z0-9_]+),\n(.*)\}", parsed, flags=re.S)
        assert match, f"{name} is not an @type{{key, fields}} entry"
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?$", match.group(3), flags=re.M))
        assert {"title", "year"} <= set(fields) and ("author" in fields or name == "HF_PCOH"), (name, fields)
        assert match.group(2) not in keys, f"{name} and {keys.get(match.group(2))} share the key {match.group(2)}"
        keys[match.group(2)] = name
        assert citations.citation_key(entry) == match.group(2)
    # the perception-coherence paper, as published (TMLR 2026; arXiv 2505.06595)
    assert "Nguyen, Hai-Vy and Gamboa, Fabrice and Zhang, Sixin and Chhaibi, Reda and Gratton, Serge and " \
           "Giaccone, Thierry" in citations.PERCEPTION_COHERENCE


def test_losses_and_metrics_cite_from_the_one_module() -> None:
    known = set(citation_constants().values())
    for name, loss_class in LOSSES.items():
        assert not loss_class.citation or loss_class.citation in known, f"{name} has its own copy of a citation"
    assert citations.metric_citation("knn_accuracy@10") == citations.KNN_ACCURACY
    assert citations.metric_citation("map_at_r") == citations.metric_citation("recall_at_10") == citations.RETRIEVAL
    assert citations.metric_citation("perception_coherence") == citations.PERCEPTION_COHERENCE
    assert citations.metric_citation("embeddings_per_second") is None


def test_card_of_a_perception_coherence_run_cites_the_paper_once(run_dir: Path) -> None:
    """The loss and the metric both cite perception coherence: the card lists the paper once, as published."""
    bibtex = code_block(str(hub.build_model_card(run_dir, repo_id=REPO_ID)), "bibtex")
    entries = bibtex_entries(bibtex)
    keys = [citations.citation_key(entry) for entry in entries]
    assert len(keys) == len(set(keys))
    assert bibtex.count("2505.06595") == 1 and bibtex.count("Gamboa") == 1
    assert citations.PERCEPTION_COHERENCE in entries
    for metric_paper in (citations.KNN_ACCURACY, citations.LINEAR_PROBE, citations.RETRIEVAL,
                         citations.NEIGHBOUR_RECALL, citations.RSA):
        assert metric_paper in entries
    assert entries[-1] == citations.HF_PCOH


def yaml_recipe(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(code_block(text, "yaml"))


def test_card_metadata_and_model_index_round_trip(run_dir: Path) -> None:
    path = hub.write_model_card(run_dir, repo_id=REPO_ID)
    assert path == run_dir / "README.md"
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".README*"))
    card = ModelCard.load(path)
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "feature-extraction"
    assert data.base_model == TEACHER
    assert data.datasets is None  # a built-in offline set is no Hub data set id
    assert data.tags == ["distillation", "hf_pcoh", "knowledge-distillation", "perception_coherence", "projected_mse"]
    expected = {name: value for name, value in STUDENT_METRICS.items() if name != "embeddings_per_second"}
    model_name, parsed = model_index_to_eval_results(data.to_dict()["model-index"])
    assert model_name == "tiny-student"
    for results in (parsed, data.eval_results):
        assert {result.metric_type: result.metric_value for result in results} == expected
        assert {(result.task_type, result.dataset_type, result.dataset_name, result.dataset_split) for result in results} \
            == {("feature-extraction", "wordnet_glosses", "wordnet_glosses", "eval")}
        assert {result.metric_name for result in results} >= {"10-NN accuracy", "Perception coherence"}


def test_card_without_eval_results_still_renders(run_dir: Path) -> None:
    (run_dir / hub.EVAL_RESULTS_FILE).unlink()
    card = hub.build_model_card(run_dir, repo_id=REPO_ID)
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "was not evaluated" in str(card) and "Speed-up" not in str(card)


@pytest.mark.parametrize("layer, pooling", [(2, "mean"), ("last", "cls"), (1, "last_token"), ("pooler", "cls")])
def test_usage_snippet_reproduces_the_measured_embedding(tmp_path: Path, layer: int | str, pooling: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The card's code, run as a user would (plain transformers), gives the embedding hf_pcoh measured."""
    folder = write_text_run(tmp_path / "run", layer=layer, pooling=pooling, evaluated=False)
    usage = code_block(str(hub.build_model_card(folder, repo_id=REPO_ID)), "python")
    namespace: dict[str, Any] = {}
    exec(usage.replace(f'"{REPO_ID}"', repr(str(folder))), namespace)  # noqa: S102 - the card's own snippet
    model, inputs = namespace["model"], namespace["inputs"]
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    expected = FeatureExtractor(layer, pooling)(outputs, inputs["attention_mask"]).values
    assert namespace["embeddings"].shape == (2, 32)
    torch.testing.assert_close(namespace["embeddings"], expected)


def test_vision_card_uses_the_image_processor_and_its_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "vit-student"
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    ViTImageProcessor(do_resize=False, image_mean=[0.3], image_std=[0.4]).save_pretrained(folder)
    (folder / hub.DISTILLATION_CONFIG_FILE).write_text(json.dumps({
        "hf_pcoh_version": "0.1.0",
        "recipe": {"teacher_model_name_or_path": "/models/fashion-cnn", "student_config": {"model_type": "vit"},
                   "dataset_name": "fashion_mnist", "student_layers": ["last"], "teacher_layers": ["last"],
                   "pooling": "gap", "losses": ["perception_coherence"]},
        "teacher": {"name_or_path": "/models/fashion-cnn", "model_type": "resnet", "parameters": 100_000},
        "student": {"model_type": "vit", "parameters": 25_000},
        "dataset": {"name": "fashion_mnist", "train_samples": 60000, "eval_samples": 10000, "image_column": "image",
                    "label_column": "label"},
        "terms": [{"student_layer": "last", "teacher_layer": "last", "loss": "perception_coherence", "weight": 1.0}],
        "losses": ["perception_coherence"], "modality": "vision", "task": "image-feature-extraction",
    }), encoding="utf-8")
    card = hub.build_model_card(folder, repo_id="me/vit-student")
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.base_model is None  # a local teacher is no Hub id
    assert "`/models/fashion-cnn`" in str(card)
    usage = code_block(str(card), "python")
    assert "AutoImageProcessor" in usage and "AutoTokenizer" not in usage
    monkeypatch.chdir(tmp_path)
    Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy(), mode="L").save(tmp_path / "my_image.png")
    namespace: dict[str, Any] = {}
    exec(usage.replace('"me/vit-student"', repr(str(folder))), namespace)  # noqa: S102
    with torch.no_grad():
        outputs = namespace["model"](**namespace["inputs"], output_hidden_states=True)
    torch.testing.assert_close(namespace["embeddings"], FeatureExtractor("last", "gap")(outputs).values)


LM_TEACHER = "outputs/opt-wordnet-teacher"
LANGUAGE_MODEL_METRICS = {"teacher_perplexity": 630.12, "student_perplexity": 585.03, "kl_teacher_student": 0.4123,
                          "top1_agreement": 0.7241, "greedy_exact_match": 0.25, "greedy_rouge_l": 0.6879,
                          "num_texts": 500.0, "num_next_token_positions": 7321.0}


def write_language_model_run(folder: Path, tokenizer_path: str, evaluated: bool = True, **recipe_fields: Any) -> Path:
    """A tiny OPT student distilled as a language model (task causal_lm: next-token CE, token KD at temperature 2,
    Procrustes on the last layer's tokens), as the pipeline leaves it: the student, its tokenizer, the provenance and
    an evaluation with a ``language_model`` section."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tiny_models import TINY_OPT

    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_OPT))
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)
    parameters = sum(parameter.numel() for parameter in student.parameters())
    fields = dict(teacher_model_name_or_path=LM_TEACHER, student_config={"model_type": "opt"}, task="causal_lm",
                  ce_weight=1.0, logit_kd_weight=1.0, logit_kd_temperature=2.0, student_layers=["last"],
                  teacher_layers=["last"], pooling="none", losses=["procrustes"], loss_weights=[1.0],
                  loss_kwargs=None, max_length=64)
    fields.update(recipe_fields)
    (folder / hub.DISTILLATION_CONFIG_FILE).write_text(json.dumps({
        "hf_pcoh_version": "0.1.0",
        "recipe": recipe(folder, **fields),
        "teacher": {"name_or_path": LM_TEACHER, "model_type": "opt", "parameters": 11_000_000},
        "student": {"model_type": "opt", "parameters": parameters},
        "dataset": {"name": "wordnet_glosses", "train_samples": 8000, "eval_samples": 500, "text_column": "text",
                    "label_column": None},
        "terms": [{"student_layer": "last", "teacher_layer": "last", "loss": "procrustes", "weight": 1.0}],
        "losses": ["procrustes"],
        "embedding": {"student_layer": "last", "teacher_layer": "last", "pooling": "mean", "teacher_pooling": "mean"},
        "modality": "text",
        "task": "feature-extraction",
    }), encoding="utf-8")
    if evaluated:
        (folder / hub.EVAL_RESULTS_FILE).write_text(json.dumps({
            "dataset": "wordnet_glosses", "split": "eval", "num_samples": 500,
            "student": {"teacher_neighbour_recall@10": 0.41, "dissimilarity_spearman": 0.62, "parameters": parameters},
            "teacher": {"parameters": 11_000_000},
            "language_model": LANGUAGE_MODEL_METRICS,
        }), encoding="utf-8")
    return folder


def test_a_language_model_student_is_published_for_text_generation(tmp_path: Path, minilm_path: str) -> None:
    """A causal-LM student's card: pipeline_tag text-generation, the language-model metrics in the model-index (task
    text-generation) beside the embedding ones, the token objectives in the terms table, the papers of its losses and
    metrics cited, and a usage snippet that, run against the saved folder, generates text."""
    folder = write_language_model_run(tmp_path / "opt-student", minilm_path)
    path = hub.write_model_card(folder, repo_id="me/opt-student")
    card = ModelCard.load(path)
    text = str(card)
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    _, parsed = model_index_to_eval_results(card.data.to_dict()["model-index"])
    generation = {result.metric_type: result.metric_value for result in parsed if result.task_type == "text-generation"}
    assert generation == {name: value for name, value in LANGUAGE_MODEL_METRICS.items() if not name.startswith("num_")}
    assert {(result.dataset_name, result.dataset_split) for result in parsed} == {("wordnet_glosses", "eval")}
    features = {result.metric_type for result in parsed if result.task_type == "feature-extraction"}
    assert features == {"teacher_neighbour_recall@10", "dissimilarity_spearman"}
    assert "| Perplexity (lower is better) | 585.03 | 630.12 | 0.93x |" in text
    assert "| Top-1 next-token agreement | 0.7241 | — | — |" in text
    assert "| Greedy continuation: ROUGE-L | 0.6879 |" in text
    assert "| `logits` | `logits` | `token_kd` (forward_kl, temperature 2.0) | 1.0 |" in text
    assert "| `logits` | `—` | `next_token_cross_entropy` (the next token) | 1.0 |" in text
    assert "AutoModelForCausalLM.from_pretrained" in text and "- **Task:** `text-generation`" in text

    entries = bibtex_entries(code_block(text, "bibtex"))
    keys = [citations.citation_key(entry) for entry in entries]
    assert len(keys) == len(set(keys))
    for paper in (citations.GKD, citations.HINTON_KD, citations.PROCRUSTES_GRAM, citations.ROUGE_L, citations.HF_PCOH):
        assert paper in entries
    bibtex = "\n".join(entries)
    assert "2306.13649" in bibtex and "2509.25253" in bibtex and "1503.02531" in bibtex

    usage = code_block(text, "python")
    assert 'pipeline("text-generation", model="me/opt-student")' in usage and "hf_pcoh" not in usage
    assert "ends every text with [SEP]" in usage  # the MiniLM tokenizer's [CLS] ... [SEP]: no [SEP] ends the prompt
    namespace: dict[str, Any] = {}
    exec(usage.replace('"me/opt-student"', repr(str(folder))), namespace)  # noqa: S102 - the card's own snippet
    generator = namespace["generator"]
    assert type(generator.model).__name__ == "OPTForCausalLM"
    assert generator.tokenizer.convert_ids_to_tokens(namespace["prompt_ids"]) == \
        ["[CLS]", "a", "student", "di", "##sti", "##lled", "from", "its", "teacher"]
    assert namespace["outputs"][0]["generated_text"].strip()  # a continuation was generated
    # the second python block: the hidden-state embedding the embedding metrics were measured on
    embedding_usage = re.findall(r"```python\n(.*?)\n```", text, flags=re.S)[1]
    assert "AutoModel.from_pretrained" in embedding_usage and "outputs.last_hidden_state" in embedding_usage


def test_the_text_generation_snippet_of_a_tokenizer_without_an_end_token_runs(tmp_path: Path, minilm_path: str) -> None:
    """A tokenizer that appends nothing (as GPT-2's): the plain pipeline call, prompt first in the generated text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from tiny_models import TINY_OPT

    folder = write_language_model_run(tmp_path / "opt-student", minilm_path, evaluated=False)
    torch.manual_seed(0)  # a student of the word-level vocabulary below: every id it generates is a word
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY_OPT, "vocab_size": len(VOCAB), "bos_token_id": 2,
                                                              "eos_token_id": 3})).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    word_level = Tokenizer(models.WordLevel({word: index for index, word in enumerate(VOCAB)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="[SEP]").save_pretrained(folder)
    usage = code_block(str(hub.build_model_card(folder, repo_id="me/opt-student")), "python")
    assert "add_special_tokens" not in usage
    namespace: dict[str, Any] = {}
    exec(usage.replace('"me/opt-student"', repr(str(folder))), namespace)  # noqa: S102 - the card's own snippet
    generated = namespace["outputs"][0]["generated_text"]
    assert generated.startswith("A student distilled from its teacher") and len(generated) > 36


def test_an_encoder_student_keeps_its_task_and_a_causal_lm_is_recognised_from_its_recipe(
        run_dir: Path, tmp_path: Path, minilm_path: str) -> None:
    """Only a language-model run is published for text generation: the encoder's card is unchanged; a causal-LM
    run not yet evaluated, or with ``task: auto`` resolved from its saved architecture, still is one."""
    encoder = hub.build_model_card(run_dir, repo_id=REPO_ID)
    assert encoder.data.pipeline_tag == "feature-extraction" and "text-generation" not in str(encoder)
    assert "pipeline(" not in str(encoder)
    for name, fields in (("unevaluated", {}), ("auto", {"task": "auto"})):
        folder = write_language_model_run(tmp_path / name, minilm_path, evaluated=False, **fields)
        card = hub.build_model_card(folder)
        assert card.data.pipeline_tag == "text-generation" and card.data.eval_results is None, name
        assert 'pipeline("text-generation"' in code_block(str(card), "python")
    features = write_language_model_run(tmp_path / "features", minilm_path, evaluated=False, task="features",
                                        ce_weight=0.0, logit_kd_weight=0.0)
    assert hub.build_model_card(features).data.pipeline_tag == "feature-extraction"


def test_recipe_in_the_card_reruns_the_same_distillation(run_dir: Path, tmp_path: Path) -> None:
    from hf_pcoh.cli import parse_distillation_args

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(code_block(str(hub.build_model_card(run_dir)), "yaml"), encoding="utf-8")
    config = parse_distillation_args([str(recipe_file), "--report_to", "none"])
    recorded = json.loads((run_dir / hub.DISTILLATION_CONFIG_FILE).read_text())["recipe"]
    assert json.loads(json.dumps(config.distillation_fields(), default=str)) == recorded


def test_model_card_template_ships_with_the_package() -> None:
    assert hub.template_path().is_file()
    assert hub.template_path().parent.name == "model_cards"


# ---- publishing -----------------------------------------------------------------------------------


def add_training_leftovers(folder: Path) -> None:
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"old weights")
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "runs" / "Jan01").mkdir(parents=True)
    (folder / "runs" / "Jan01" / "events.out.tfevents.1").write_bytes(b"tensorboard")
    (folder / "training_args.bin").write_bytes(b"a pickle")


def test_publish_uploads_exactly_the_student_files_in_one_commit(run_dir: Path) -> None:
    add_training_leftovers(run_dir)
    api = FakeHfApi()
    plan = hub.publish(run_dir, REPO_ID, private=True, token=FAKE_TOKEN, api=api)
    assert [method for method, _ in api.calls] == ["create_repo", "upload_folder"]
    create, upload = api.calls[0][1], api.calls[1][1]
    assert create == {"repo_id": REPO_ID, "private": True, "exist_ok": True, "token": FAKE_TOKEN}
    assert upload["folder_path"] == str(run_dir) and upload["repo_id"] == REPO_ID and upload["token"] == FAKE_TOKEN
    assert upload["commit_message"] == (f"Distil {TEACHER} into a bert student on wordnet_glosses with "
                                        "perception_coherence, projected_mse (hf_pcoh 0.1.0)")
    # what upload_folder sends: the folder's files through its own filter, with its default patterns added
    on_disk = sorted(path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file())
    sent = set(filter_repo_objects(on_disk, ignore_patterns=[*upload["ignore_patterns"], *DEFAULT_IGNORE_PATTERNS]))
    assert sent == RUN_FILES == set(plan.files)
    assert plan.uploaded and plan.commit_url == f"https://huggingface.co/{REPO_ID}/commit/abc"
    assert "perception_coherence" in (run_dir / "README.md").read_text()


def test_symbolic_links_in_the_student_folder_are_not_uploaded(run_dir: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "outside"
    (outside / "plots").mkdir(parents=True)
    (outside / "secret_weights.safetensors").write_bytes(b"not the student's")
    Image.new("RGB", (4, 4)).save(outside / "plots" / "linked.png")
    (run_dir / "extra.safetensors").symlink_to(outside / "secret_weights.safetensors")
    (run_dir / "linked_plots").symlink_to(outside / "plots", target_is_directory=True)
    (run_dir / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    links = {"extra.safetensors", "linked_plots", "dangling.json"}
    with caplog.at_level("WARNING", logger="hf_pcoh.hub"):
        assert set(hub.files_to_upload(run_dir)) == RUN_FILES
    assert "symbolic link" in caplog.text and all(link in caplog.text for link in links)
    api = FakeHfApi()
    plan = hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=api)
    assert set(plan.files) == RUN_FILES and links <= set(plan.skipped)
    assert "linked.png" not in plan.card
    # what upload_folder itself would send (it follows links to files): the links are ignored
    upload = api.calls[1][1]
    on_disk = sorted(path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file())
    assert "extra.safetensors" in on_disk
    sent = set(filter_repo_objects(on_disk, ignore_patterns=[*upload["ignore_patterns"], *DEFAULT_IGNORE_PATTERNS]))
    assert sent == RUN_FILES


def test_dry_run_lists_the_files_and_card_and_sends_nothing(run_dir: Path, no_token: None,
                                                            capsys: pytest.CaptureFixture) -> None:
    add_training_leftovers(run_dir)
    before = snapshot(run_dir)
    api = FakeHfApi()
    plan = hub.publish(run_dir, REPO_ID, dry_run=True, api=api)
    assert api.calls == [] and not plan.uploaded
    assert set(plan.files) == RUN_FILES
    assert {"training_args.bin", "checkpoint-10/optimizer.pt", "runs/Jan01/events.out.tfevents.1"} <= set(plan.skipped)
    assert snapshot(run_dir) == before  # a dry run writes nothing, not even README.md
    assert publish_script().main([str(run_dir), "--repo_id", REPO_ID, "--dry_run"]) == 0
    printed = capsys.readouterr().out
    listing, _, printed_card = printed.partition("----- README.md -----")
    listed = re.findall(r"^  (\S+)$", listing, flags=re.M)
    assert listed == plan.files
    assert plan.card.strip() == printed_card.strip() and snapshot(run_dir) == before


def test_missing_token_fails_before_any_call_with_the_folder_ready(run_dir: Path, no_token: None,
                                                                   capsys: pytest.CaptureFixture) -> None:
    before = snapshot(run_dir)
    api = FakeHfApi()
    with pytest.raises(hub.MissingTokenError) as raised:
        hub.publish(run_dir, REPO_ID, api=api)
    message = str(raised.value)
    assert "`hf auth login`" in message and "HF_TOKEN" in message and "ready to upload" in message
    assert api.calls == []
    after = snapshot(run_dir)
    assert set(after) - set(before) == {"README.md"}
    assert {name: after[name] for name in before} == before
    assert publish_script().main([str(run_dir), "--repo_id", REPO_ID]) == 1
    stderr = capsys.readouterr().err
    assert "hf auth login" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("error", [
    OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled."),
    pytest.param("httpx2", id="httpx2-connect-error"),
    pytest.param("requests", id="requests-connection-error"),
])
def test_offline_fails_with_a_clear_message_and_a_complete_folder(run_dir: Path, error: Any) -> None:
    if error == "httpx2":
        httpx2 = pytest.importorskip("httpx2")
        error = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    elif error == "requests":
        requests = pytest.importorskip("requests")
        error = requests.ConnectionError("Max retries exceeded with url: /api/repos/create")
    before = snapshot(run_dir)
    with pytest.raises(hub.HubUnreachableError) as raised:
        hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi(error))
    message = str(raised.value)
    assert "Could not reach the Hugging Face Hub" in message and "Nothing was uploaded" in message
    assert "ready to upload" in message and FAKE_TOKEN not in message
    after = snapshot(run_dir)
    assert set(after) - set(before) == {"README.md"} and {name: after[name] for name in before} == before
    card = ModelCard.load(run_dir / "README.md")
    assert card.data.base_model == TEACHER  # the card on disk is whole


def test_script_offline_with_the_real_client_exits_nonzero_without_traceback(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the real HfApi refuses before sending anything
    assert publish_script().main([str(run_dir), "--repo_id", REPO_ID]) == 1
    stderr = capsys.readouterr().err
    assert "Could not reach the Hugging Face Hub" in stderr and "offline mode is enabled" in stderr
    assert "Traceback" not in stderr and FAKE_TOKEN not in stderr


def test_a_token_in_the_environment_or_recipe_never_reaches_the_card(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-another-secret-value")
    description = json.loads((run_dir / hub.DISTILLATION_CONFIG_FILE).read_text())
    description["recipe"]["hub_token"] = FAKE_TOKEN
    description["recipe"]["run_name"] = f"run-{FAKE_TOKEN}-sk-another-secret-value"
    (run_dir / hub.DISTILLATION_CONFIG_FILE).write_text(json.dumps(description), encoding="utf-8")
    api = FakeHfApi()
    plan = hub.publish(run_dir, REPO_ID, api=api)  # token from the environment, through huggingface_hub
    assert api.calls[0][1]["token"] == FAKE_TOKEN
    card = (run_dir / "README.md").read_text()
    assert FAKE_TOKEN not in card and "sk-another-secret-value" not in card and FAKE_TOKEN not in plan.card
    assert yaml_recipe(card)["hub_token"] == hub.REDACTED
    assert FAKE_TOKEN not in api.calls[1][1]["commit_message"]


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "distillation_config.json"])
def test_an_incomplete_folder_is_refused_naming_the_missing_file(run_dir: Path, missing: str) -> None:
    (run_dir / missing).unlink()
    before = snapshot(run_dir)
    api = FakeHfApi()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=api)
    assert api.calls == [] and snapshot(run_dir) == before


def test_bad_repo_id_is_refused_before_anything(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="repo_id='not a/repo id'"):
        hub.publish(run_dir, "not a/repo id", token=FAKE_TOKEN, api=FakeHfApi())
    assert not (run_dir / "README.md").exists()


def test_hub_ids_become_metadata_and_local_paths_do_not(run_dir: Path, tmp_path: Path) -> None:
    assert hub.looks_like_hub_id(TEACHER) and hub.looks_like_hub_id("me/glosses")
    for not_an_id in ("config", "/models/teacher", "./outputs/teacher", str(run_dir), "a/b/c", "bad id/x", None):
        assert not hub.looks_like_hub_id(not_an_id)
    description = json.loads((run_dir / hub.DISTILLATION_CONFIG_FILE).read_text())
    description["dataset"]["name"] = "me/glosses"
    description["teacher"]["name_or_path"] = str(tmp_path)  # a local teacher folder
    (run_dir / hub.DISTILLATION_CONFIG_FILE).write_text(json.dumps(description), encoding="utf-8")
    card = hub.build_model_card(run_dir, repo_id=REPO_ID)
    assert card.data.datasets == ["me/glosses"] and card.data.base_model is None
    assert f"`{tmp_path}`" in str(card)


@pytest.mark.parametrize("bad_value, message", [(float("nan"), r"\S+ holds NaN/inf values"),
                                                 (5e4, r"max \|w\| = 5e\+04 in \S+ exceeds max_abs_weight=10000")])
def test_a_student_with_diverged_weights_is_never_published(run_dir: Path, bad_value: float, message: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(run_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = bad_value
    save_file(weights, run_dir / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(run_dir)
    api = FakeHfApi()
    with pytest.raises(ValueError, match=f"model.safetensors: {message}"):
        hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=api)
    assert api.calls == [] and snapshot(run_dir) == before
    if bad_value == 5e4:  # the bound is the caller's to raise
        assert hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi(), max_abs_weight=1e5).uploaded


@pytest.mark.slow  # a real teacher or a second process: seconds
def test_a_folder_that_a_run_is_still_writing_is_not_published(run_dir: Path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hf_pcoh.output_dir import claim_output_dir\n"
                               "with claim_output_dir(sys.argv[1], resuming=True, overwrite=False):\n"
                               "    print('holding', flush=True); time.sleep(600)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        api = FakeHfApi()
        with pytest.raises(ValueError, match=f"is still being written by a run \\(pid {holder.pid} on "):
            hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=api)
        assert api.calls == []
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the killed run's lock file stays behind: it blocks nothing and is never uploaded
    assert (run_dir / ".hf_pcoh.lock").is_file()
    plan = hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi())
    assert plan.uploaded and ".hf_pcoh.lock" not in plan.files and ".hf_pcoh.lock" in plan.skipped

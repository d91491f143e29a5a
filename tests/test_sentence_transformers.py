"""sentence-transformers in and out: a sentence-transformers teacher's own embedding is distilled by default,
the student is saved as a sentence-transformers model, and hf_pcoh's losses train inside SentenceTransformerTrainer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_pcoh.config import DistillationConfig
from hf_pcoh.evaluation import embed
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.losses import LOSSES
from hf_pcoh.recipes import read_recipe
from hf_pcoh.readout import resolve_readout
from hf_pcoh.sentence_embedding import read_sentence_pipeline
from hf_pcoh.sentence_transformers import SENTENCE_TRANSFORMERS_LOSSES, FeatureDistillationLoss
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = [
    "a small dog runs across the park",
    "the theory of the strong interaction between quarks and gluons",
    "x",
    "a large building where aircraft are housed and repaired, with doors wide enough for the wings",
]


def teacher_config(teacher: str, output_dir: str, **fields) -> DistillationConfig:
    defaults = dict(output_dir=output_dir, teacher_model_name_or_path=teacher, student_config={"num_hidden_layers": 1},
                    dataset_name="wordnet_glosses", max_train_samples=32, max_eval_samples=32, max_length=128,
                    per_device_train_batch_size=16, max_steps=1, save_strategy="no", disable_tqdm=True,
                    report_to="none", evaluate_after_training=False, seed=0)
    defaults.update(fields)
    return DistillationConfig(**defaults)


def teacher_features(config: DistillationConfig, texts: list[str]) -> np.ndarray:
    """The teacher's features as training computes them: collator -> teacher_forward."""
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    batch = setup.collator([{"text": text, "label": 0} for text in texts])
    features, _ = trainer.teacher_forward(batch, device=torch.device("cpu"))
    return features[-1].values.float().numpy()


def tiny_sentence_transformer(folder, minilm_path: str, pooling_mode: str = "cls") -> str:
    """A random tiny BERT with MiniLM's tokenizer, saved by sentence-transformers as Transformer -> Pooling ->
    Dense(32 -> 16, tanh) -> Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(0)
    bert_dir, model_dir = os.path.join(folder, "bert"), os.path.join(folder, "sentence-transformer")
    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(bert_dir)
    dense = Dense(32, 16)
    torch.nn.init.normal_(dense.linear.weight, std=0.5)  # far from the identity, so a missed Dense shows
    modules = [Transformer(bert_dir, max_seq_length=64), Pooling(32, pooling_mode=pooling_mode), dense, Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(model_dir)
    return model_dir


# ---- in: the teacher's own sentence embedding ---------------------------------------------------------


def test_minilm_teacher_features_default_to_its_sentence_embedding(tmp_path, minilm_path) -> None:
    """pooling left unset: the teacher's features are exactly what SentenceTransformer.encode returns."""
    from sentence_transformers import SentenceTransformer

    config = teacher_config(MINILM, str(tmp_path))
    assert config.pooling == "auto"
    ours = teacher_features(config, TEXTS)
    expected = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # the embedding measured after training is the same one
    setup_teacher = AutoModel.from_pretrained(minilm_path)
    teacher_extractor = resolve_readout(config).teacher_embedding
    measured = embed(setup_teacher, AutoTokenizer.from_pretrained(minilm_path), TEXTS, teacher_extractor, "text").values
    np.testing.assert_allclose(measured, expected, atol=1e-5)


def test_explicit_mean_pooling_keeps_the_raw_unnormalised_features(tmp_path, minilm_path) -> None:
    """pooling: mean (named, not auto): the teacher features are the raw mean of the last layer, not normalised."""
    config = teacher_config(MINILM, str(tmp_path), pooling="mean")
    assert resolve_readout(config).teacher_extractors == (FeatureExtractor("last", "mean", "teacher"),)
    ours = teacher_features(config, TEXTS)
    teacher, tokenizer = AutoModel.from_pretrained(minilm_path).eval(), AutoTokenizer.from_pretrained(minilm_path)
    inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = teacher(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    raw_mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(ours, raw_mean, atol=1e-6)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)


@pytest.mark.slow  # the real MiniLM teacher, one training step
def test_the_default_recipes_student_has_the_teachers_pooling_and_normalize(tmp_path, minilm_path) -> None:
    """minilm-wordnet takes the teacher's own pipeline: its student, loaded with SentenceTransformer, pools and
    normalises as the teacher does (unit vectors), so it is a drop-in replacement."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from hf_pcoh.cli import distill_main

    assert read_recipe("minilm-wordnet")["pooling"] == "auto"
    output_dir = tmp_path / "student"
    assert distill_main(["minilm-wordnet", "--max_steps", "1", "--max_train_samples", "64", "--max_eval_samples", "32",
                         "--teacher_cache", "none", "--evaluate_after_training", "false", "--save_strategy", "no",
                         "--disable_tqdm", "true", "--output_dir", str(output_dir)]) == 0
    student = SentenceTransformer(str(output_dir), device="cpu")
    teacher = SentenceTransformer(minilm_path, device="cpu")
    kinds = [type(module) for module in student]
    assert Pooling in kinds and Normalize in kinds, kinds
    assert student[1].get_config_dict()["pooling_mode"] == teacher[1].get_config_dict()["pooling_mode"] == "mean"
    np.testing.assert_allclose(np.linalg.norm(student.encode(TEXTS), axis=1), 1.0, atol=1e-5)


def test_explicit_settings_win_over_the_teacher_pipeline(tmp_path, minilm_path) -> None:
    settings = resolve_readout(teacher_config(MINILM, str(tmp_path), pooling="cls"))
    assert (settings.student_pooling, settings.teacher_pooling, settings.normalize) == ("cls", "cls", False)
    settings = resolve_readout(teacher_config(MINILM, str(tmp_path), teacher_pooling="max"))
    assert (settings.student_pooling, settings.teacher_pooling, settings.normalize) == ("mean", "max", False)
    settings = resolve_readout(teacher_config(MINILM, str(tmp_path), normalize=False))
    assert (settings.teacher_pooling, settings.normalize, settings.follows_teacher_pipeline) == ("mean", False, True)
    settings = resolve_readout(teacher_config(MINILM, str(tmp_path), pooling="mean", normalize=True))
    assert settings.normalize and not settings.follows_teacher_pipeline
    # a teacher that is not a sentence-transformers model: auto is mean, as before
    settings = resolve_readout(teacher_config(None, str(tmp_path), teacher_config=TINY_BERT,
                                                teacher_processor_name_or_path=MINILM))
    assert (settings.student_pooling, settings.teacher_pooling, settings.normalize) == ("mean", "mean", False)


@pytest.mark.parametrize("pooling_mode, pooling", [("cls", "cls"), ("mean", "mean"), ("max", "max"),
                                                   ("lasttoken", "last_token")])
def test_pooling_dense_and_normalize_of_a_sentence_transformers_teacher_are_reproduced(
    pooling_mode, pooling, tmp_path, minilm_path
) -> None:
    """A teacher saved by sentence-transformers 6 with each pooling mode, a Dense layer and Normalize."""
    from sentence_transformers import SentenceTransformer

    teacher_dir = tiny_sentence_transformer(tmp_path, minilm_path, pooling_mode=pooling_mode)
    pipeline = read_sentence_pipeline(teacher_dir)
    assert (pipeline.pooling, pipeline.dense_layers, pipeline.normalize, pipeline.unsupported) == (pooling, 1, True, None)
    config = teacher_config(teacher_dir, str(tmp_path / "run"), max_length=64)
    ours = teacher_features(config, TEXTS)
    expected = SentenceTransformer(teacher_dir, device="cpu").encode(TEXTS)
    assert ours.shape == expected.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_auto_pooling_refuses_a_pipeline_it_cannot_reproduce(tmp_path, minilm_path) -> None:
    teacher_dir = tiny_sentence_transformer(tmp_path, minilm_path, pooling_mode="weightedmean")
    with pytest.raises(ValueError, match="pooling=auto.*weightedmean.*set --pooling"):
        resolve_readout(teacher_config(teacher_dir, str(tmp_path / "run")))
    # an explicit pooling distils a pooling of its raw layers instead
    assert resolve_readout(teacher_config(teacher_dir, str(tmp_path / "run"), pooling="mean")).teacher_pooling == "mean"


# ---- out: the student is a sentence-transformers model too ---------------------------------------------


def code_block(text: str, language: str = "python") -> str:
    import re

    match = re.search(rf"```{language}\n(.*?)\n```", text, flags=re.S)
    assert match, f"no ```{language} block in the card"
    return match.group(1)


def test_student_of_a_sentence_transformers_teacher_is_saved_as_one(tmp_path, minilm_path) -> None:
    """SentenceTransformer(output_dir).encode gives the embeddings the run's evaluation measured, and the card
    says so; AutoModel still loads the bare student."""
    from sentence_transformers import SentenceTransformer

    from hf_pcoh.evaluation import teacher_neighbour_recall
    from hf_pcoh.pipeline import run_distillation

    teacher_dir = tiny_sentence_transformer(tmp_path, minilm_path, pooling_mode="cls")  # cls -> Dense -> Normalize
    output_dir = tmp_path / "run"
    config = teacher_config(teacher_dir, str(output_dir), max_length=48, max_train_samples=64, max_steps=2,
                            evaluate_after_training=True)
    run_distillation(config)
    modules = json.loads((output_dir / "modules.json").read_text())
    assert [module["path"] for module in modules] == ["", "1_Pooling", "2_Normalize"]
    assert json.loads((output_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert json.loads((output_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    description = json.loads((output_dir / "distillation_config.json").read_text())
    assert description["embedding"]["pooling"] == "cls" and description["embedding"]["normalize"] is True

    setup = build_setup(config)  # the same held-out rows the evaluation embedded
    texts = setup.eval_dataset["text"]
    student = SentenceTransformer(str(output_dir), device="cpu")
    encoded = student.encode(texts)
    reloaded = AutoModel.from_pretrained(output_dir)  # plain transformers still loads it
    student_extractor = setup.readout.student_embedding
    measured = embed(reloaded, setup.collator.student_processor, texts, student_extractor, "text", max_length=48).values
    np.testing.assert_allclose(encoded, measured, atol=1e-5)
    teacher_encoded = SentenceTransformer(teacher_dir, device="cpu").encode(texts)
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert teacher_neighbour_recall(encoded, teacher_encoded, 10, "cosine") == pytest.approx(
        results["student"]["teacher_neighbour_recall@10"], abs=1e-9)

    card = (output_dir / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "pipeline_tag: sentence-similarity" in card
    usage = code_block(card)
    assert "SentenceTransformer(" in usage
    namespace: dict = {}
    exec(usage.replace('"<user>/run"', repr(str(output_dir))), namespace)  # noqa: S102 - the card's own snippet
    assert namespace["embeddings"].shape == (2, 32)
    # the plain-transformers snippet normalises too
    plain = card.split("The same embedding with plain `transformers`:")[1]
    assert "torch.nn.functional.normalize" in code_block(plain)


def test_student_of_a_plain_teacher_is_not_a_sentence_transformers_model(tmp_path, minilm_path) -> None:
    from hf_pcoh.pipeline import run_distillation

    config = teacher_config(None, str(tmp_path), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
                            max_length=32, max_train_samples=32, max_steps=1)
    run_distillation(config)
    assert not (tmp_path / "modules.json").exists()
    assert "library_name: transformers" in (tmp_path / "README.md").read_text()


# ---- hf_pcoh's losses inside sentence-transformers ------------------------------------------------------


def tiny_student(folder, minilm_path: str):
    """A random 2-layer, 32-d BERT with MiniLM's tokenizer, as a SentenceTransformer with mean pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return SentenceTransformer(modules=[Transformer(str(folder), max_seq_length=32), Pooling(32, "mean")], device="cpu")


@pytest.mark.parametrize("name", list(SENTENCE_TRANSFORMERS_LOSSES))
def test_each_loss_follows_the_sentence_transformers_loss_contract(name, tmp_path, minilm_path) -> None:
    student = tiny_student(tmp_path, minilm_path)
    loss = SENTENCE_TRANSFORMERS_LOSSES[name](student, teacher_dim=24)
    features = student.tokenize(TEXTS * 2)
    labels = torch.randn(len(TEXTS) * 2, 24)
    value = loss([features], labels)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert loss.get_config_dict() == {"teacher_dim": 24, **loss.loss.get_config_dict()}  # every option, for the card
    assert loss.citation == LOSSES[name].citation and loss.citation.lstrip().startswith("@")
    json.dumps(loss.get_config_dict())  # the model card serialises it
    with pytest.raises(ValueError, match="teacher_dim=16"):
        loss([student.tokenize(TEXTS * 2)], torch.randn(len(TEXTS) * 2, 16))


def test_the_sentence_transformers_losses_are_made_from_the_registry(tmp_path, minilm_path) -> None:
    """One class per registered feature loss, named after hf_pcoh's, importable from the module; any registered
    loss also runs through the generic wrapper by name; logit losses are refused, naming the feature losses."""
    import hf_pcoh.sentence_transformers as hf_pcoh_st

    feature_losses = [name for name, loss_class in LOSSES.items() if loss_class.input_kind == "features"]
    assert list(SENTENCE_TRANSFORMERS_LOSSES) == feature_losses
    for name in feature_losses:
        made = getattr(hf_pcoh_st, LOSSES[name].__name__)
        assert made is SENTENCE_TRANSFORMERS_LOSSES[name] and made.__name__ == LOSSES[name].__name__
        assert issubclass(made, FeatureDistillationLoss) and made.__module__ == "hf_pcoh.sentence_transformers"
    assert "PerceptionCoherenceLoss" in hf_pcoh_st.__all__ and "LogitKDLoss" not in hf_pcoh_st.__all__
    student = tiny_student(tmp_path, minilm_path)
    generic = FeatureDistillationLoss(student, teacher_dim=24, loss_name="gram")
    assert type(generic.loss) is LOSSES["gram"] and generic.citation == LOSSES["gram"].citation
    with pytest.raises(ValueError, match="loss 'logit_kd' compares logits, not sentence embeddings; use one of"):
        FeatureDistillationLoss(student, loss_name="logit_kd")
    with pytest.raises(ValueError, match="unknown loss 'gramm'. Did you mean 'gram'"):
        FeatureDistillationLoss(student, loss_name="gramm")


@pytest.mark.slow  # a real teacher or a second process: seconds
def test_sentence_transformers_trainer_learns_with_perception_coherence(tmp_path, minilm_path) -> None:
    """SentenceTransformerTrainer trains a tiny student on real WordNet glosses, labelled by the real MiniLM
    teacher, with hf_pcoh's perception coherence: the loss falls and the student agrees more with the teacher."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from hf_pcoh.data import load_splits
    from hf_pcoh.evaluation import teacher_neighbour_recall
    from hf_pcoh.sentence_transformers import PerceptionCoherenceLoss, add_teacher_embeddings

    splits = load_splits("wordnet_glosses")
    train_texts = splits["train"].shuffle(seed=0).select(range(128))["text"]
    held_out = splits["test"].shuffle(seed=0).select(range(100))["text"]
    teacher = SentenceTransformer(minilm_path, device="cpu")
    train = add_teacher_embeddings(Dataset.from_dict({"text": train_texts}), teacher, "text")
    teacher_held_out = teacher.encode(held_out)
    student = tiny_student(tmp_path / "student", minilm_path)

    def agreement() -> tuple[float, float]:
        """Teacher-neighbour recall@10 on the training glosses and on held-out ones."""
        return (teacher_neighbour_recall(student.encode(train_texts), np.asarray(train["label"]), 10, "cosine"),
                teacher_neighbour_recall(student.encode(held_out), teacher_held_out, 10, "cosine"))

    before = agreement()

    loss = PerceptionCoherenceLoss(student, teacher_dim=384, temperature=0.1)
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_train_epochs=6, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = SentenceTransformerTrainer(model=student, args=arguments, train_dataset=train, loss=loss)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    after = agreement()
    assert after[0] > before[0] + 0.05 and after[1] > before[1], (before, after)

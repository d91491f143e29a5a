"""The distillation a user would otherwise pick for text: sentence-transformers' own recipe.

sentence-transformers distils a teacher by regressing the student's sentence embedding onto the
teacher's pre-computed embeddings with ``losses.MSELoss`` in a ``SentenceTransformerTrainer``
(Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
Distillation", EMNLP 2020; the library's "Model Distillation" example). :func:`train_sentence_transformers_peer`
runs exactly that on a ``transformers`` student (wrapped as ``Transformer`` + mean ``Pooling``), with
the training options of a :class:`~hf_pcoh.config.DistillationConfig`, so the benchmark can put it
beside hf_pcoh's losses with the same student, data, steps and seed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import PreTrainedModel, TrainingArguments


logger = logging.getLogger(__name__)

# The TrainingArguments fields copied from the distillation run, so both train the same way.
SHARED_TRAINING_FIELDS = (
    "learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "data_seed", "bf16", "fp16", "dataloader_drop_last",
    "logging_steps", "disable_tqdm", "use_cpu", "report_to",
)


@dataclass
class PeerResult:
    """The trained student (a plain ``transformers`` model) and the Trainer's metrics."""

    student: PreTrainedModel
    train_metrics: dict[str, float]


def train_sentence_transformers_peer(
    student: PreTrainedModel,
    tokenizer: Any,
    texts: list[str],
    teacher_embeddings: np.ndarray,
    args: TrainingArguments,
    output_dir: str,
    max_length: int = 128,
) -> PeerResult:
    """Distil with ``SentenceTransformerTrainer`` and ``losses.MSELoss`` on pre-computed teacher embeddings.

    The student is saved with its tokenizer to ``output_dir/initial_student`` and reloaded as a
    ``SentenceTransformer`` of ``models.Transformer`` + ``models.Pooling("mean")``; the training set has
    the columns ``text`` and ``label`` (the teacher embedding of the text), as the library's
    distillation example builds it. When the widths differ, ``MSELoss(projection_dim=d_t)`` learns the
    linear map the library offers for that case.

    Args:
        student: the initial student (not modified).
        tokenizer: its tokenizer.
        texts: the ``N`` training texts.
        teacher_embeddings: ``[N, d_t]`` teacher embeddings of ``texts``.
        args: the training options; the fields of ``SHARED_TRAINING_FIELDS`` are copied.
        output_dir: where the initial student and the Trainer's files go.
        max_length: tokens kept per text.

    Returns:
        The trained student (the ``SentenceTransformer``'s underlying ``transformers`` model) and the
        Trainer's ``train`` metrics (``train_runtime``, ``train_samples_per_second``, ``train_loss``...).
    """
    try:
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.sentence_transformer import losses, modules
    except ImportError as error:
        raise ImportError(
            f"the sentence-transformers peer needs `pip install sentence-transformers>=6.2` ({error})"
        ) from None

    if len(texts) != len(teacher_embeddings):
        raise ValueError(f"texts has {len(texts)} rows but teacher_embeddings has {len(teacher_embeddings)}: "
                         "give one teacher embedding per text")
    initial_dir = os.path.join(output_dir, "initial_student")
    student.save_pretrained(initial_dir)
    tokenizer.save_pretrained(initial_dir)
    transformer = modules.Transformer(initial_dir, max_seq_length=max_length)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling], device=str(args.device))
    student_dim, teacher_dim = transformer.get_embedding_dimension(), int(teacher_embeddings.shape[1])
    loss = losses.MSELoss(model, projection_dim=teacher_dim if teacher_dim != student_dim else None)
    targets = np.asarray(teacher_embeddings, dtype=np.float32).tolist()  # [N, d_t]
    train_dataset = Dataset.from_dict({"text": list(texts), "label": targets})
    options = {name: getattr(args, name) for name in SHARED_TRAINING_FIELDS if hasattr(args, name)}
    options.update(output_dir=output_dir, save_strategy="no")
    training_args = SentenceTransformerTrainingArguments(**options)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss)
    train_output = trainer.train()
    logger.info("sentence-transformers MSE distillation: %s", train_output.metrics)
    return PeerResult(student=transformer.auto_model, train_metrics=dict(train_output.metrics))

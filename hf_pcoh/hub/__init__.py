"""Publish a distilled student: a model card with the run's provenance and results, then one upload.

One job per module:

- :mod:`.run_files`: read the run's output directory (``distillation_config.json``, ``eval_results.json``), check
  that it holds a loadable student, list what is uploaded;
- :mod:`.card`: build the model card (``model_cards/distilled_student.md`` through
  :class:`huggingface_hub.ModelCardData`, with a ``model-index`` the Hub renders) and write it as ``README.md``;
- :mod:`.run_origin`: the card's account of where the teacher, student and data came from (as the trainer received
  them), the commands that run or measure the run again when they can work, and the trainer's logged evaluation;
- :mod:`.card_text`: how the card writes names (Hub ids) and numbers;
- :mod:`.usage`: the card's snippets (plain ``transformers``, and sentence-transformers for a student saved as
  one) that compute the embedding the card measured, and text generation for a language-model student;
- :mod:`.language_model`: what a language-model student's card adds (``text-generation``, its token objectives and
  metrics);
- :mod:`.redaction`: keep credentials out of the card;
- :mod:`.upload`: :func:`publish`, which writes the card and uploads the folder in a single commit (and
  :func:`push_saved_folder`, ``trainer.push_to_hub()``'s upload); each failure is one line naming its cause
  (:class:`hf_pcoh.errors.PublishError`: offline mode, no token, no permission, the network)::

    from hf_pcoh.hub import publish

    plan = publish("outputs/minilm-wordnet", "me/minilm-tiny", dry_run=True)
    print(plan.files)        # what would be uploaded
    publish("outputs/minilm-wordnet", "me/minilm-tiny")
"""

from huggingface_hub import get_token

from ..artifacts import DISTILLATION_CONFIG_FILE, EVAL_RESULTS_FILE, HEADS_FILE, MODEL_CARD_FILE
from ..citations import HF_PCOH as HF_PCOH_CITATION
from .card import (
    DEFAULT_TAGS,
    NOT_EVAL_METRICS,
    TEMPLATE_NAME,
    build_model_card,
    card_citations,
    eval_results_for_card,
    layer_selection_context,
    loss_citations,
    results_rows,
    template_path,
    write_model_card,
)
from .card_text import (
    HUB_ID_PATTERN,
    METRIC_NAMES,
    format_count,
    format_metric,
    format_ratio,
    is_number,
    looks_like_hub_id,
    metric_display_name,
    ordered_metrics,
)
from .redaction import CREDENTIAL_WORDS, REDACTED, redact_recipe, secret_values
from .run_files import (
    CARD_FILE,
    MODEL_CONFIG_FILE,
    UPLOAD_IGNORE_PATTERNS,
    WEIGHTS_FILES,
    check_student_files,
    files_to_upload,
    read_json,
    read_run,
)
from .run_origin import measure_context, rerun_context, student_summary, teacher_summary, training_results_context
from .upload import (
    HubOfflineError,
    HubPermissionError,
    HubRefusedError,
    HubUnreachableError,
    MissingTokenError,
    PublishError,
    PublishPlan,
    default_commit_message,
    network_error_types,
    publish,
    push_saved_folder,
)
from .usage import (
    embedding_normalized,
    embedding_spec,
    sentence_transformers_snippet,
    text_generation_snippet,
    usage_snippet,
)

__all__ = [
    "CARD_FILE",
    "CREDENTIAL_WORDS",
    "DEFAULT_TAGS",
    "DISTILLATION_CONFIG_FILE",
    "EVAL_RESULTS_FILE",
    "HEADS_FILE",
    "HF_PCOH_CITATION",
    "HUB_ID_PATTERN",
    "METRIC_NAMES",
    "MODEL_CARD_FILE",
    "MODEL_CONFIG_FILE",
    "NOT_EVAL_METRICS",
    "REDACTED",
    "TEMPLATE_NAME",
    "UPLOAD_IGNORE_PATTERNS",
    "WEIGHTS_FILES",
    "HubOfflineError",
    "HubPermissionError",
    "HubRefusedError",
    "HubUnreachableError",
    "MissingTokenError",
    "PublishError",
    "PublishPlan",
    "build_model_card",
    "card_citations",
    "check_student_files",
    "default_commit_message",
    "embedding_normalized",
    "embedding_spec",
    "eval_results_for_card",
    "files_to_upload",
    "format_count",
    "format_metric",
    "format_ratio",
    "get_token",
    "is_number",
    "layer_selection_context",
    "looks_like_hub_id",
    "loss_citations",
    "measure_context",
    "metric_display_name",
    "network_error_types",
    "ordered_metrics",
    "publish",
    "push_saved_folder",
    "read_json",
    "read_run",
    "redact_recipe",
    "rerun_context",
    "results_rows",
    "secret_values",
    "student_summary",
    "teacher_summary",
    "template_path",
    "sentence_transformers_snippet",
    "text_generation_snippet",
    "training_results_context",
    "usage_snippet",
    "write_model_card",
]

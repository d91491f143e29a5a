"""The model card's usage snippets: code that computes the embedding the card measured, without hf_pcoh.

:func:`usage_snippet` reproduces :class:`hf_pcoh.features.FeatureExtractor` (a layer, a pooling, the
normalisation) with plain ``transformers``; :func:`sentence_transformers_snippet` loads a student saved as a
sentence-transformers model, whose ``modules.json`` does the same; :func:`text_generation_snippet` runs a
language-model student (``task: causal_lm``) in transformers' ``text-generation`` pipeline.
"""

from __future__ import annotations

import re
from typing import Any


def embedding_spec(description: dict[str, Any]) -> tuple[int | str, str]:
    """(student layer, pooling) of the embedding the run was measured on.

    ``distillation_config.json``'s ``embedding`` entry when present; else, as the pipeline measures it,
    the deepest distilled student layer, with token-level pooling (``none``) read as ``mean``.
    """
    embedding = description.get("embedding") or {}
    recipe = description["recipe"]
    layer = embedding.get("student_layer")
    if layer is None:
        layers = recipe.get("student_layers") or ["last"]
        layer = layers[-1]
    pooling = embedding.get("pooling") or recipe.get("pooling") or "mean"
    if pooling == "none":
        pooling = "mean"
    if isinstance(layer, str) and re.fullmatch(r"-?\d+", layer.strip()):
        layer = int(layer)
    return layer, pooling


def embedding_normalized(description: dict[str, Any]) -> bool:
    """True when the run L2-normalised its embeddings (``normalize``, or a sentence-transformers teacher's Normalize)."""
    return bool((description.get("embedding") or {}).get("normalize"))


def sentence_transformers_snippet(model_id: str) -> str:
    """Python that loads the student with sentence-transformers (its ``modules.json``) and embeds two sentences."""
    return "\n".join([
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{model_id}")',
        'sentences = ["A student distilled from its teacher.", "Embeddings from sentence-transformers."]',
        "embeddings = model.encode(sentences)",
        "print(embeddings.shape)  # [2, dim]",
        "print(model.similarity(embeddings, embeddings))",
    ])


def text_generation_snippet(model_id: str, closing_token: str | None = None,
                            prompt: str = "A student distilled from its teacher") -> str:
    """Python that loads a language-model student with transformers' ``text-generation`` pipeline and continues a
    prompt greedily. A tokenizer that ends every text with a ``closing_token`` (BERT's ``[SEP]``) would end the
    prompt with what the student learned as the end of a text: the snippet then leaves it off."""
    lines = ["from transformers import pipeline", "", f'generator = pipeline("text-generation", model="{model_id}")']
    if closing_token is None:
        return "\n".join([
            *lines,
            f'outputs = generator("{prompt}", max_new_tokens=20, do_sample=False)',
            'print(outputs[0]["generated_text"])  # the prompt, then the student\'s continuation',
        ])
    return "\n".join([
        *lines,
        f'prompt = "{prompt}"',
        f"# The tokenizer ends every text with {closing_token}, which the student learned as the end: leave it off.",
        'prompt_ids = generator.tokenizer(prompt)["input_ids"][:-1]',
        "outputs = generator(generator.tokenizer.decode(prompt_ids), add_special_tokens=False, max_new_tokens=20,",
        "                    do_sample=False, return_full_text=False)",
        'print(prompt, "->", outputs[0]["generated_text"])  # the student\'s continuation',
    ])


def usage_snippet(model_id: str, modality: str, layer: int | str, pooling: str, max_length: int = 128,
                  num_channels: int | None = None, normalize: bool = False) -> str:
    """Python that loads the student with plain ``transformers`` and computes the embedding the card measured."""
    vision = modality == "vision"
    if vision:
        lines = image_loading_lines(model_id, num_channels)
    else:
        lines = text_loading_lines(model_id, max_length)
    lines += ["with torch.no_grad():", "    outputs = model(**inputs, output_hidden_states=True)"]
    if layer == "pooler":
        lines.append("embeddings = outputs.pooler_output.flatten(1)  # the model's pooler")
        return "\n".join(lines)
    if layer == "last":
        lines.append("hidden = outputs.last_hidden_state")
    else:
        lines.append(f"hidden = outputs.hidden_states[{layer}]  # 0 = embeddings, 1.. = the layers' outputs")
    lines += pooling_lines(pooling, vision)
    if normalize:
        lines.append("embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)  # unit length, as measured")
    lines.append("print(embeddings.shape)  # [batch, dim]")
    return "\n".join(lines)


def image_loading_lines(model_id: str, num_channels: int | None) -> list[str]:
    """Load the image processor and the model; one image as the batch (grey-scale for one-channel students)."""
    mode = "L" if num_channels == 1 else "RGB"
    return [
        "import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModel",
        "",
        f'model_id = "{model_id}"',
        "processor = AutoImageProcessor.from_pretrained(model_id)",
        "model = AutoModel.from_pretrained(model_id).eval()",
        "",
        f'images = [Image.open("my_image.png").convert("{mode}")]',
        'inputs = processor(images=images, return_tensors="pt")',
    ]


def text_loading_lines(model_id: str, max_length: int) -> list[str]:
    """Load the tokenizer and the model; two sentences as the batch, truncated as in training."""
    return [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model_id = "{model_id}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        "model = AutoModel.from_pretrained(model_id).eval()",
        "",
        'sentences = ["A student distilled from its teacher.", "Embeddings from plain transformers."]',
        f'inputs = tokenizer(sentences, padding=True, truncation=True, max_length={max_length}, return_tensors="pt")',
    ]


def pooling_lines(pooling: str, vision: bool) -> list[str]:
    """``hidden`` -> ``embeddings`` [batch, dim], pooled as :class:`hf_pcoh.features.FeatureExtractor` pools."""
    if pooling == "cls":
        return [f"embeddings = hidden[:, 0]  # the {'class' if vision else '[CLS]'} token"]
    if vision:  # gap / mean (last_token has no meaning without padding: the last token)
        if pooling == "last_token":
            return ["embeddings = hidden[:, -1]  # the last token"]
        return [
            "# global average pooling: over H, W of [B, C, H, W] maps, or over the tokens of [B, T, d]",
            "embeddings = hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)",
        ]
    if pooling == "max":
        return [
            "# the largest value of each dimension over the non-padding tokens",
            'padding = inputs["attention_mask"].unsqueeze(-1) == 0',
            "embeddings = hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).max(dim=1).values",
        ]
    if pooling == "last_token":
        return [
            "# the last non-padding token, whichever side the tokenizer pads",
            'mask = inputs["attention_mask"]',
            "last = (torch.arange(mask.shape[1]) * mask).argmax(dim=1)",
            "embeddings = hidden[torch.arange(hidden.shape[0]), last]",
        ]
    return [  # mean / gap: mean over the non-padding tokens
        "# mean over the non-padding tokens",
        'mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
        "embeddings = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)",
    ]

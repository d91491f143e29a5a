"""The BibTeX entry of every paper hf_pcoh implements or measures with, and of hf_pcoh itself.

A loss carries its paper's entry as its ``citation`` class attribute (one file per loss); this module reads
them from the registry (:func:`loss_citation`) and holds the entries of everything else: the layer
selection, the evaluation metrics and the library. The model card and the metrics cite from here, so a
paper is cited the same way everywhere and a card lists it once::

    from hf_pcoh.citations import loss_citation, metric_citation

    loss_citation("perception_coherence")  # the entry of Nguyen et al. (2026)
    metric_citation("knn_accuracy@10")  # the entry of Wu et al. (2018)

Author lists and venues were checked against the papers' arXiv, OpenReview or publisher pages.
"""

from __future__ import annotations

import re

from .losses import LOSSES, get_loss_class
from .version import __version__

# ---- the losses: read from their classes --------------------------------------------------------------


def loss_citation(name: str) -> str:
    """The BibTeX entry of the paper behind the registered loss ``name`` (its class's ``citation``)."""
    return get_loss_class(name).citation


def loss_citations() -> dict[str, str]:
    """``{loss name: BibTeX entry}`` for every registered loss that cites a paper, in registry order."""
    return {name: loss_class.citation for name, loss_class in LOSSES.items() if loss_class.citation}


# The built-in losses' entries under their former names (kept importable; a new loss needs no name here).
PERCEPTION_COHERENCE = loss_citation("perception_coherence")
COSPRESS = loss_citation("cospress")
PROCRUSTES_GRAM = loss_citation("procrustes")  # Procrustes and Gram losses: one paper
CKA = loss_citation("cka")
FITNETS = loss_citation("projected_mse")
RKD = loss_citation("rkd_distance")
HINTON_KD = loss_citation("logit_kd")
GKD = loss_citation("token_kd")  # the generalised JSD of logit KD over a vocabulary (token_kd)

# ---- choosing teacher layers, and the sentence-transformers peer -------------------------------------

KNOWLEDGE_QUALITY = """@inproceedings{cooper2025logit,
  title     = {Logit-Based Losses Limit the Effectiveness of Feature Knowledge Distillation},
  author    = {Cooper, Nicholas and Chen, Lijun and Dwivedy, Sailesh and Gurari, Danna},
  booktitle = {NeurIPS Workshop on Symmetry and Geometry in Neural Representations (NeurReps)},
  year      = {2025},
  note      = {arXiv:2511.14981}
}"""

SENTENCE_TRANSFORMERS_DISTILLATION = """@inproceedings{reimers2020multilingual,
  title     = {Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
  author    = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {EMNLP},
  year      = {2020}
}"""

# ---- the evaluation metrics -------------------------------------------------------------------------

KNN_ACCURACY = """@inproceedings{wu2018unsupervised,
  title     = {Unsupervised Feature Learning via Non-Parametric Instance Discrimination},
  author    = {Wu, Zhirong and Xiong, Yuanjun and Yu, Stella X. and Lin, Dahua},
  booktitle = {CVPR},
  year      = {2018}
}"""

LINEAR_PROBE = """@article{alain2016understanding,
  title   = {Understanding intermediate layers using linear classifier probes},
  author  = {Alain, Guillaume and Bengio, Yoshua},
  journal = {arXiv preprint arXiv:1610.01644},
  year    = {2016}
}"""

RETRIEVAL = """@inproceedings{musgrave2020metric,
  title     = {A Metric Learning Reality Check},
  author    = {Musgrave, Kevin and Belongie, Serge and Lim, Ser-Nam},
  booktitle = {ECCV},
  year      = {2020}
}"""

NEIGHBOUR_RECALL = """@article{lee2009quality,
  title   = {Quality assessment of dimensionality reduction: Rank-based criteria},
  author  = {Lee, John A. and Verleysen, Michel},
  journal = {Neurocomputing},
  volume  = {72},
  number  = {7--9},
  pages   = {1431--1443},
  year    = {2009}
}"""

RSA = """@article{kriegeskorte2008representational,
  title   = {Representational similarity analysis -- connecting the branches of systems neuroscience},
  author  = {Kriegeskorte, Nikolaus and Mur, Marieke and Bandettini, Peter},
  journal = {Frontiers in Systems Neuroscience},
  volume  = {2},
  pages   = {4},
  year    = {2008}
}"""

ROUGE_L = """@inproceedings{lin2004rouge,
  title     = {{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author    = {Lin, Chin-Yew},
  booktitle = {Text Summarization Branches Out},
  pages     = {74--81},
  publisher = {Association for Computational Linguistics},
  address   = {Barcelona, Spain},
  year      = {2004},
  url       = {https://aclanthology.org/W04-1013}
}"""

# ---- the library ------------------------------------------------------------------------------------

HF_PCOH = f"""@software{{hf_pcoh,
  title   = {{hf_pcoh: feature distillation for transformers models}},
  note    = {{Python library, version {__version__}}},
  year    = {{2026}}
}}"""

# The paper behind each family of evaluation metrics (the keys are the metric names without their ``@k``).
METRIC_CITATIONS: dict[str, str] = {
    "knn_accuracy": KNN_ACCURACY,
    "linear_probe_accuracy": LINEAR_PROBE,
    "retrieval": RETRIEVAL,
    "teacher_neighbour_recall": NEIGHBOUR_RECALL,
    "dissimilarity_spearman": RSA,
    "perception_coherence": PERCEPTION_COHERENCE,
    "greedy_rouge_l": ROUGE_L,  # a language-model student's greedy continuations against its teacher's
}

RETRIEVAL_METRIC_PATTERN = re.compile(r"map_at_r|recall_at_\d+")
BIBTEX_KEY_PATTERN = re.compile(r"@\w+\{([^,\s]+),")


def metric_citation(metric: str) -> str | None:
    """The entry of the paper behind a reported metric (``knn_accuracy@10``, ``map_at_r``...); None for size, speed."""
    family = metric.split("@")[0]
    if RETRIEVAL_METRIC_PATTERN.fullmatch(family):
        family = "retrieval"
    return METRIC_CITATIONS.get(family)


def citation_key(entry: str) -> str:
    """``nguyen2026perception`` for ``@article{nguyen2026perception, ...``; the stripped entry if it has no key."""
    match = BIBTEX_KEY_PATTERN.search(entry)
    return match.group(1) if match else entry.strip()

"""The BibTeX entry of every paper hf_pcoh implements or measures with, and of hf_pcoh itself: one constant each.

The losses (their ``citation``), the evaluation metrics, the layer selection and the model card import their
entries from here, so a paper is cited the same way everywhere and a card lists it once::

    from hf_pcoh.citations import PERCEPTION_COHERENCE, metric_citation

    metric_citation("knn_accuracy@10")  # the entry of Wu et al. (2018)

Author lists and venues were checked against the papers' arXiv, OpenReview or publisher pages.
"""

from __future__ import annotations

import re

from . import __version__

# ---- the losses -------------------------------------------------------------------------------------

PERCEPTION_COHERENCE = """@article{nguyen2026perception,
  title   = {Feature Representation Transferring to Lightweight Models via Perception Coherence},
  author  = {Nguyen, Hai-Vy and Gamboa, Fabrice and Zhang, Sixin and Chhaibi, Reda and Gratton, Serge and Giaccone, Thierry},
  journal = {Transactions on Machine Learning Research},
  year    = {2026},
  note    = {arXiv:2505.06595}
}"""

COSPRESS = """@article{mannix2025cospress,
  title   = {Preserving Angles Improves Feature Distillation},
  author  = {Mannix, Evelyn J. and Hodgkinson, Liam and Bondell, Howard},
  journal = {Transactions on Machine Learning Research},
  year    = {2025},
  note    = {arXiv:2411.15239}
}"""

# Procrustes distance and the Frobenius norm of the feature Gram matrix, both from this paper.
PROCRUSTES_GRAM = """@article{bhattarai2025geometry,
  title   = {Knowledge distillation through geometry-aware representational alignment},
  author  = {Bhattarai, Prajjwal and Amjad, Mohammad and Zhylko, Dmytro and Alhanai, Tuka},
  journal = {arXiv preprint arXiv:2509.25253},
  year    = {2025}
}"""

CKA = """@inproceedings{kornblith2019similarity,
  title     = {Similarity of Neural Network Representations Revisited},
  author    = {Kornblith, Simon and Norouzi, Mohammad and Lee, Honglak and Hinton, Geoffrey},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning},
  pages     = {3519--3529},
  year      = {2019},
  note      = {arXiv:1905.00414}
}"""

FITNETS = """@inproceedings{romero2015fitnets,
  title     = {FitNets: Hints for Thin Deep Nets},
  author    = {Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and Gatta, Carlo and Bengio, Yoshua},
  booktitle = {International Conference on Learning Representations},
  year      = {2015},
  note      = {arXiv:1412.6550}
}"""

RKD = """@inproceedings{park2019relational,
  title     = {Relational Knowledge Distillation},
  author    = {Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  pages     = {3967--3976},
  year      = {2019},
  note      = {arXiv:1904.05068}
}"""

HINTON_KD = """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}"""

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

"""The linear probe: how linearly separable the classes are in frozen embeddings (no geometry option)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .validation import ArrayLike, LabelsLike, check_positive_int, labelled_splits

logger = logging.getLogger(__name__)


def linear_probe_accuracy(
    train_embeddings: ArrayLike,
    train_labels: LabelsLike,
    test_embeddings: ArrayLike,
    test_labels: LabelsLike,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on the frozen training embeddings.

    Features are standardised with the training mean and standard deviation, then a multinomial
    logistic regression ``p(y = c | x) = softmax(W z + b)_c``, ``z = (x - mu) / sigma``, is fitted with
    L2 penalty (scikit-learn defaults, C = 1, L-BFGS); the score is the fraction of test points whose
    arg-max class is right. Linear probes as in Alain & Bengio, "Understanding intermediate layers
    using linear classifier probes", arXiv:1610.01644, 2016. Invariant to affine rescaling of each
    feature. A probe that does not converge in ``max_iter`` steps is logged as a warning.

    Args:
        train_embeddings: ``[N, d]`` points the probe is fitted on; ``train_labels`` must hold >= 2 classes.
        train_labels: ``[N]`` their labels.
        test_embeddings: ``[M, d]`` points it is scored on.
        test_labels: ``[M]`` their labels.
        max_iter: L-BFGS iterations.
        seed: ``random_state`` of the solver.

    Example:
        >>> linear_probe_accuracy([[-2.0], [-1.0], [1.0], [2.0]], [0, 0, 1, 1], [[-3.0], [3.0]], [0, 1])
        1.0
    """
    train, train_y, test, test_y = labelled_splits(train_embeddings, train_labels, test_embeddings, test_labels)
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(
            f"train_labels holds {len(classes)} class ({classes.tolist()}); a linear probe needs at least 2 classes "
            "in the training split"
        )
    check_positive_int("max_iter", max_iter, 1, ", e.g. 1000")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(train, train_y)
    if any(issubclass(warning.category, ConvergenceWarning) for warning in caught):
        logger.warning("the linear probe did not converge in max_iter=%d iterations; its accuracy may be low. "
                       "Pass a larger max_iter.", max_iter)
    return float(np.mean(probe.predict(test) == test_y))

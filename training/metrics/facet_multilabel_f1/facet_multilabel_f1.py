"""Per-label F1 and mean F1 of multi-label predictions (action units, 4DME emotions): an offline `evaluate` module."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score


class FacetMultilabelF1(evaluate.Metric):
    """F1 of each label column and their mean, for multi-hot predictions and references of shape (N, L).
    `num_labels` is accepted for symmetry with the single-label modules (it must match L when given)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Per-label and mean F1 of multi-label predictions.",
            citation="",
            inputs_description="predictions, references: multi-hot lists of 0/1 of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Sequence(datasets.Value("int64"))}
            ),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if num_labels is not None and predictions.shape[1] != num_labels:
            raise ValueError(f"predictions have {predictions.shape[1]} labels; num_labels={num_labels}.")
        per_label = f1_score(references, predictions, average=None, zero_division=0)
        return {"per_label_f1": per_label.tolist(), "mean_f1": float(per_label.mean())}

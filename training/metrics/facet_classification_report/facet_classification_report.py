"""Macro F1, per-class recall and the confusion matrix of expression predictions: an offline `evaluate` module."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, recall_score


class FacetClassificationReport(evaluate.Metric):
    """Macro F1, per-class recall and the confusion matrix (rows: true class, columns: predicted class) over
    `num_labels` classes (default: the largest id seen plus one), so classes absent from a split still get a row."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Macro F1, per-class recall and confusion matrix of single-label predictions.",
            citation="",
            inputs_description="predictions, references: class ids (int); num_labels: number of classes.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if num_labels is None:
            num_labels = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
        labels = list(range(num_labels))
        return {
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
            "per_class_recall": recall_score(references, predictions, labels=labels, average=None, zero_division=0).tolist(),
            "confusion_matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
        }

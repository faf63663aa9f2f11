"""Accuracy of expression predictions: an offline `evaluate` module, loaded by path (no Hub access needed)."""

import datasets
import evaluate
import numpy as np


class FacetAccuracy(evaluate.Metric):
    """Fraction of predictions equal to the references. `num_labels` is accepted (and unused) so the module combines
    with `facet_classification_report` under `evaluate.combine`."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy of single-label expression predictions.",
            citation="",
            inputs_description="predictions, references: class ids (int).",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}

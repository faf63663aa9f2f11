"""Evaluation: metrics through the offline `evaluate` modules in training/metrics/, confusion-matrix figures, and
running a trained FACET-VLM over a split."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


METRICS_DIR = Path(__file__).resolve().parent / "metrics"


@lru_cache(maxsize=None)
def _metric_suite(multi_label: bool):
    import evaluate  # slow to import (about 6 s); only needed here

    if multi_label:
        return evaluate.load(str(METRICS_DIR / "facet_multilabel_f1"))
    return evaluate.combine(
        [str(METRICS_DIR / "facet_accuracy"), str(METRICS_DIR / "facet_classification_report")]
    )


def compute_metrics(predictions, references, label_names) -> dict:
    """Accuracy, macro F1, per-class recall and the confusion matrix (single-label ids), or per-label and mean F1
    (multi-hot arrays), with the label names."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    multi_label = references.ndim == 2
    results = _metric_suite(multi_label).compute(
        predictions=predictions.tolist(), references=references.tolist(), num_labels=len(label_names)
    )
    results["labels"] = list(label_names)
    results["num_samples"] = int(len(references))
    return results


def save_confusion_matrix(matrix, label_names, path, title: str = "FACET-VLM confusion matrix") -> Path:
    """Write the confusion matrix (rows: true, columns: predicted) as a PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(1.1 * len(label_names) + 2, 1.1 * len(label_names) + 1.5))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    axis.set_yticks(range(len(label_names)), label_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@torch.no_grad()
def predict(model, split, class_inputs: dict, batch_size: int = 64, device=None) -> np.ndarray:
    """Logits (N, C) of `model` over every sample of an [`ExpressionSplit`] against the tokenised class prompts."""
    model.eval()
    device = device or next(model.parameters()).device
    class_inputs = {key: value.to(device) for key, value in class_inputs.items()}
    text_embeds = model.facet.get_text_features(class_inputs["input_ids"], class_inputs.get("attention_mask"))
    logits = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(range(start, min(start + batch_size, len(split))), device=device)
        batch.pop("labels", None)
        logits.append(model(**batch, text_embeds=text_embeds).logits.float().cpu())
    return torch.cat(logits).numpy() if logits else np.zeros((0, len(class_inputs["input_ids"])))


def decide(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Class ids (argmax) or multi-hot decisions (sigmoid > 0.5) from logits."""
    if multi_label:
        return (logits > 0).astype(np.int64)
    return logits.argmax(axis=-1)


def vote_by_group(logits: np.ndarray, labels: np.ndarray, groups: list) -> tuple:
    """Mean logits and the label of each group (in order of first appearance): the windows of one sequence vote."""
    order = {}
    index = np.array([order.setdefault(group, len(order)) for group in groups])
    voted = np.zeros((len(order), logits.shape[1]), dtype=np.float64)
    np.add.at(voted, index, logits)
    voted /= np.bincount(index, minlength=len(order))[:, None]
    first = np.unique(index, return_index=True)[1]
    return voted, labels[first]


def decisions(logits: np.ndarray, labels: np.ndarray, split) -> tuple:
    """`(predictions, references)` over an [`ExpressionSplit`]: one per sample, or, for sliding windows
    (`split.groups`), one per sequence from the mean logits of its windows."""
    if split.groups is not None:
        logits, labels = vote_by_group(logits, labels, split.groups)
    return decide(logits, split.multi_label), labels


def write_metrics(metrics: dict, output_dir, name: str = "metrics.json") -> Path:
    """Write metrics JSON (and the confusion-matrix PNG next to it for single-label results)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "confusion_matrix" in metrics:
        png = save_confusion_matrix(metrics["confusion_matrix"], metrics["labels"], output_dir / "confusion_matrix.png")
        metrics = {**metrics, "confusion_matrix_png": str(png)}
    path = output_dir / name
    path.write_text(json.dumps(metrics, indent=2))
    return path


def split_predictions(model, processor, split, label_names, device=None) -> tuple:
    """`(predictions, references)` of `model` on `split` (an [`ExpressionSplit`] labelled by `label_names`),
    prompting with every template of `label_names`."""
    prompts = processor(labels=label_names, return_tensors="pt")
    logits = predict(model, split, {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]},
                     device=device)  # fmt: skip
    return decisions(logits, split.labels.numpy(), split)


def evaluate_split(model, processor, split, label_names=None, device=None) -> dict:
    """Metrics of `model` on `split`, prompting with `label_names` (default: the split's own label names)."""
    label_names = split.label_names if label_names is None else label_names
    return compute_metrics(*split_predictions(model, processor, split, label_names, device), label_names)


def load_trained(model_dir) -> tuple:
    """The saved FACET-VLM at `model_dir` (on the GPU when there is one: predict() runs where the model is) and its
    processor."""
    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor

    model = FacetVLMForExpressionRecognition.from_pretrained(model_dir)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, FacetVLMProcessor.from_pretrained(model_dir)


def evaluate_checkpoint(model_dir, cfg, output_dir, split: str = "test") -> dict:
    """Evaluate a saved FACET-VLM on `split` ("test", "train" or "all") of the benchmark that `cfg` (a
    [`TrainConfig`]: dataset, data_dir, protocol, fold) describes, with the model's own label names as prompts
    (matched by name; classes the model does not know are left out). Writes metrics.json and confusion_matrix.png."""
    from .data import load_splits

    model, processor = load_trained(model_dir)
    splits = load_splits(cfg, processor.image_processor)
    parts = [splits["train"], splits["test"]] if split == "all" else [splits[split]]
    label_names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    results = [split_predictions(model, processor, part.relabelled(label_names), label_names) for part in parts]
    predictions = np.concatenate([p for p, _ in results])
    references = np.concatenate([r for _, r in results])
    metrics = compute_metrics(predictions, references, label_names)
    metrics.update(model=str(model_dir), dataset=cfg.dataset, protocol=cfg.protocol, fold=cfg.fold, split=split)
    write_metrics(metrics, output_dir)
    return metrics

"""The two baselines outside FACET-VLM that the accuracy study compares it with, trained on the same rendered splits.

* Frontal depth map + logistic regression (scikit-learn): the depth channel of the view nearest to frontal,
  average-pooled, standardised; the inverse regularisation C is chosen by a subject-grouped cross-validation inside
  the training split (the test subjects never choose it).
* MVCNN: one small CNN shared by every view (all rendered channels), its per-view logits averaged over the views,
  trained from scratch with cross-entropy (torch).

Both take [`training.data.ExpressionSplit`]s of static scans and return the metrics of
`training.evaluate_model.compute_metrics` (accuracy, macro F1, confusion matrix) plus their own settings.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from modeling_facet.rendering import CHANNEL_WIDTHS
from training.evaluate_model import compute_metrics


LOGISTIC_REGRESSION_CS = (1e-3, 1e-2, 1e-1, 1.0)


def _check_static_single_label(split, name: str) -> None:
    if split.multi_label:
        raise ValueError(f"{name} is a single-label baseline; the split has multi-hot labels.")
    if split.pixel_values.dim() != 5:
        raise ValueError(
            f"{name} takes static scans (N, V, C, H, W); got pixel_values of shape {tuple(split.pixel_values.shape)}."
        )


def frontal_depth_maps(split, views, channels, pool: int = 2) -> np.ndarray:
    """(N, H/pool * W/pool) depth maps of the view nearest to frontal (smallest |yaw| + |pitch|), average-pooled.

    `views` and `channels` are the settings the split was rendered with (a model config's `views` and `channels`).
    """
    channels = list(channels)
    if "depth" not in channels:
        raise ValueError(f"The split has no depth channel (rendered channels: {channels}).")
    view = int(np.argmin([abs(yaw) + abs(pitch) for yaw, pitch in views]))
    channel = sum(CHANNEL_WIDTHS[name] for name in channels[: channels.index("depth")])
    depth = split.pixel_values[:, view, channel : channel + 1].float()
    if pool > 1:
        depth = nn.functional.avg_pool2d(depth, pool)
    return depth.flatten(1).numpy()


def depth_logistic_regression(train, test, views, channels, pool: int = 2, cs=LOGISTIC_REGRESSION_CS) -> dict:
    """Fit logistic regression on frontal depth maps of `train` (C picked by subject-grouped CV) and score `test`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for split in (train, test):
        _check_static_single_label(split, "depth_logistic_regression")
    subjects = sorted(set(train.subjects))
    if len(subjects) < 2:
        raise ValueError(f"Choosing C needs at least 2 training subjects; the split has {len(subjects)}.")
    start = time.perf_counter()
    x_train, x_test = frontal_depth_maps(train, views, channels, pool), frontal_depth_maps(test, views, channels, pool)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        {"logisticregression__C": list(cs)},
        cv=GroupKFold(n_splits=min(3, len(subjects))),
    )
    search.fit(x_train, train.labels.numpy(), groups=np.asarray(train.subjects))
    metrics = compute_metrics(search.predict(x_test), test.labels.numpy(), train.label_names)
    metrics.update(
        chosen_C=float(search.best_params_["logisticregression__C"]), features=int(x_train.shape[1]), pool=pool,
        train_samples=len(train), test_samples=len(test), train_seconds=time.perf_counter() - start,
    )  # fmt: skip
    return metrics


class MultiviewCNN(nn.Module):
    """MVCNN-style baseline: a small CNN (four conv-BN-ReLU-maxpool blocks, global average pooling, a linear head)
    shared by every view; the per-view logits are averaged over the views."""

    def __init__(self, in_channels: int, num_classes: int, widths=(16, 32, 64, 64)):
        super().__init__()
        layers, previous = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(previous, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) views -> (B, num_classes) logits, the mean of the views' logits."""
        batch, views = pixel_values.shape[:2]
        logits = self.head(self.features(pixel_values.flatten(0, 1)))
        return logits.view(batch, views, -1).mean(dim=1)


def train_mvcnn(train, test, epochs: int, batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0) -> dict:
    """Train [`MultiviewCNN`] on `train` with cross-entropy (AdamW, cosine schedule) and score `test`."""
    for split in (train, test):
        _check_static_single_label(split, "train_mvcnn")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    torch.manual_seed(seed)
    model = MultiviewCNN(train.pixel_values.shape[2], len(train.label_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(train), batch_size):
            batch = train.batch(order[first : first + batch_size].tolist())
            loss = nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([
            model(test.batch(range(first, min(first + batch_size, len(test))))["pixel_values"]).argmax(dim=-1)
            for first in range(0, len(test), batch_size)
        ])  # fmt: skip
    metrics = compute_metrics(predictions.numpy(), test.labels.numpy(), train.label_names)
    metrics.update(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, views=int(train.pixel_values.shape[1]),
        parameters=sum(p.numel() for p in model.parameters()), train_samples=len(train), test_samples=len(test),
        train_seconds=train_seconds,
    )  # fmt: skip
    return metrics

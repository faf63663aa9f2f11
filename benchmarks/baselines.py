"""The baselines outside FACET-VLM that the accuracy study compares it with, trained on the same rendered splits.

* Frontal depth map + logistic regression (scikit-learn): the depth channel of the view nearest to frontal,
  average-pooled, standardised; the inverse regularisation C is chosen by a subject-grouped cross-validation inside
  the training split (the test subjects never choose it).
* MVCNN: one small CNN shared by every view (all rendered channels), its per-view logits averaged over the views,
  trained from scratch with cross-entropy (torch).
* Depth CNN: the same kind of CNN with three blocks on one 64x64 frontal depth map, its features pooled to 4x4 cells
  (where on the face matters), trained with its own recipe ([`DEPTH_CNN_RECIPE`]): on scans of real people's face
  shapes it reached 75 % where FACET-VLM's first default recipe reached 69 % (issue 13).

All take [`training.data.ExpressionSplit`]s of static scans and return the metrics of
`training.evaluate_model.compute_metrics` (accuracy, macro F1, confusion matrix) plus their own settings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modeling_facet.render_settings import channel_offset
from training.evaluate_model import compute_metrics


LOGISTIC_REGRESSION_CS = (1e-3, 1e-2, 1e-1, 1.0)
MVCNN_WIDTHS = (16, 32, 64, 64)


@dataclass(frozen=True)
class DepthCNNRecipe:
    """The depth CNN's own training recipe, independent of FACET-VLM's learning rate and step budget (with those,
    6e-4 and 8 epochs, it underfit in the 60-subject study: 28 % test, 37 % train). Epochs and learning rate were
    checked on 12 subjects held out of fold 0's training subjects (their intensities 3-4), never on a test fold."""

    size: int = 64  # the frontal depth map's side in pixels, as the real-face-geometry baseline of issue 13
    widths: tuple = (16, 32, 64)  # three conv blocks, as that baseline
    pooled_size: int = 4  # features pooled to 4x4 cells: where on the face a shape lies matters
    epochs: int = 40  # validation: 20 epochs 27 %, 40 epochs 41 %, 80 epochs 42 % (at twice the time)
    batch_size: int = 32  # as every row of the study
    learning_rate: float = 2e-3  # AdamW, cosine to zero; validation at 40 epochs: 1e-3 34 %, 2e-3 41 %
    weight_decay: float = 0.05  # as the MVCNN baseline
    max_shift: int = 2  # training images move up to 2 pixels each way: cheap robustness to registration (not tuned)


DEPTH_CNN_RECIPE = DepthCNNRecipe()


def _check_static_single_label(split, name: str) -> None:
    if split.multi_label:
        raise ValueError(f"{name} is a single-label baseline; the split has multi-hot labels.")
    if split.pixel_values.dim() != 5:
        raise ValueError(
            f"{name} takes static scans (N, V, C, H, W); got pixel_values of shape {tuple(split.pixel_values.shape)}."
        )


def _frontal_depth(split, views, channels) -> torch.Tensor:
    """(N, 1, H, W) depth channel of the view nearest to frontal (smallest |yaw| + |pitch|)."""
    channels = list(channels)
    if "depth" not in channels:
        raise ValueError(f"The split has no depth channel (rendered channels: {channels}).")
    view = int(np.argmin([abs(yaw) + abs(pitch) for yaw, pitch in views]))
    channel = channel_offset(channels, "depth")
    return split.pixel_values[:, view, channel : channel + 1].float()


def frontal_depth_maps(split, views, channels, pool: int = 2) -> np.ndarray:
    """(N, H/pool * W/pool) depth maps of the view nearest to frontal (smallest |yaw| + |pitch|), average-pooled.

    `views` and `channels` are the settings the split was rendered with (a model config's `views` and `channels`).
    """
    depth = _frontal_depth(split, views, channels)
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
        train_accuracy=float(search.score(x_train, train.labels.numpy())),
        train_samples=len(train), test_samples=len(test), train_seconds=time.perf_counter() - start,
    )  # fmt: skip
    return metrics


class MultiviewCNN(nn.Module):
    """MVCNN-style baseline: a small CNN (conv-BN-ReLU-maxpool blocks, average pooling to `pooled_size` squared
    cells, a linear head) shared by every view; the per-view logits are averaged over the views."""

    def __init__(self, in_channels: int, num_classes: int, widths=MVCNN_WIDTHS, pooled_size: int = 1):
        super().__init__()
        layers, previous = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pooled_size), nn.Flatten())
        self.head = nn.Linear(previous * pooled_size**2, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) views -> (B, num_classes) logits, the mean of the views' logits."""
        batch, views = pixel_values.shape[:2]
        logits = self.head(self.features(pixel_values.flatten(0, 1)))
        return logits.view(batch, views, -1).mean(dim=1)


def random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """`pixels` (..., H, W) with every image moved by its own random whole-pixel offset in [-max_shift, max_shift]
    along each axis, the edge pixels repeated into the gap; `pixels` itself when `max_shift` is 0."""
    if max_shift == 0:
        return pixels
    images = pixels.flatten(0, -3)
    height, width = images.shape[-2:]
    padded = nn.functional.pad(images[:, None], (max_shift,) * 4, mode="replicate")[:, 0]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)]).view_as(pixels)


def train_mvcnn(train, test, epochs: int, batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                widths=MVCNN_WIDTHS, pooled_size: int = 1, weight_decay: float = 0.05,
                max_shift: int = 0) -> dict:  # fmt: skip
    """Train [`MultiviewCNN`] on `train` with cross-entropy (AdamW, cosine schedule; each training image moved by
    up to `max_shift` pixels, see [`random_shift`]) and score `test` (and, as `train_accuracy`, `train` itself)."""
    for split in (train, test):
        _check_static_single_label(split, "train_mvcnn")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    torch.manual_seed(seed)
    model = MultiviewCNN(train.pixel_values.shape[2], len(train.label_names), widths, pooled_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(train), batch_size):
            batch = train.batch(order[first : first + batch_size].tolist())
            pixels = random_shift(batch["pixel_values"], max_shift, generator)
            loss = nn.functional.cross_entropy(model(pixels), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics = compute_metrics(_predict(model, test, batch_size), test.labels.numpy(), train.label_names)
    metrics.update(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, views=int(train.pixel_values.shape[1]),
        parameters=sum(p.numel() for p in model.parameters()), train_samples=len(train), test_samples=len(test),
        train_seconds=train_seconds,
        train_accuracy=float((_predict(model, train, batch_size) == train.labels.numpy()).mean()),
    )  # fmt: skip
    return metrics


@torch.no_grad()
def _predict(model, split, batch_size: int) -> np.ndarray:
    return torch.cat([
        model(split.batch(range(first, min(first + batch_size, len(split))))["pixel_values"]).argmax(dim=-1)
        for first in range(0, len(split), batch_size)
    ]).numpy()  # fmt: skip


def frontal_depth_split(split, views, channels, size: int = DEPTH_CNN_RECIPE.size):
    """`split` reduced to one view of one channel: the frontal depth map, resized to `size` x `size`."""
    depth = nn.functional.interpolate(_frontal_depth(split, views, channels), size=(size, size), mode="area")
    return dataclasses.replace(split, pixel_values=depth.unsqueeze(1).half())


def train_depth_cnn(train, test, views, channels, recipe: DepthCNNRecipe = DEPTH_CNN_RECIPE, seed: int = 0) -> dict:
    """The strongest simple baseline: a 3-block CNN on one frontal depth map (no other view or channel), its features
    pooled to cells, trained with `recipe`; the metrics record the recipe."""
    for split in (train, test):
        _check_static_single_label(split, "train_depth_cnn")
    train, test = (frontal_depth_split(split, views, channels, recipe.size) for split in (train, test))
    metrics = train_mvcnn(train, test, recipe.epochs, recipe.batch_size, recipe.learning_rate, seed, recipe.widths,
                          recipe.pooled_size, recipe.weight_decay, recipe.max_shift)  # fmt: skip
    metrics.update(input=f"frontal depth map, {recipe.size}x{recipe.size}", recipe=dataclasses.asdict(recipe))
    return metrics

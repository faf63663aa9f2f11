"""Benchmark data for training and evaluation: the `datasets` builders' rendered `views` configs as in-memory splits.

`load_splits(cfg, image_processor)` prepares the builder of `cfg.dataset` with the image processor's view settings
(rendering once, then reusing the Arrow cache), keeps the protocol fold's train and test subjects apart, and returns
[`ExpressionSplit`]s whose labels index a contiguous label set (the classes present in the training split).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from datasets_scripts.registry import DATASETS, DatasetSpec
from modeling_facet.rasterization import to_device


PIXEL_CHUNK_BYTES = 2**27  # float32 pixels turned into float16 at a time (128 MiB: 242 scans of the small preset)


def multi_label_names(name: str) -> list[str]:
    """Label names of a multi-hot label column (AUs as "AU12", 4DME's five emotions)."""
    return DATASETS[name].multi_label_names()


def is_multi_label(name: str) -> bool:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name].multi_label


@dataclass
class ExpressionSplit:
    """Rendered samples of one split, in memory (pixels as float16 to halve the footprint)."""

    pixel_values: torch.Tensor  # (N, V, C, H, W) or (N, T, V, C, H, W)
    labels: torch.Tensor  # (N,) class ids or (N, L) multi-hot
    label_names: list
    frame_mask: torch.Tensor | None = None  # (N, T) for sequences
    subjects: list = field(default_factory=list)
    metadata: list = field(default_factory=list)
    intensities: np.ndarray | None = None
    groups: list | None = None  # sliding windows: the sequence each window was cut from (its windows vote)

    @property
    def multi_label(self) -> bool:
        return self.labels.dim() == 2

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ExpressionSplit":
        indices = list(indices)
        index = torch.as_tensor(indices, dtype=torch.long)
        return ExpressionSplit(
            pixel_values=self.pixel_values[index], labels=self.labels[index], label_names=self.label_names,
            frame_mask=None if self.frame_mask is None else self.frame_mask[index],
            subjects=[self.subjects[i] for i in indices], metadata=[self.metadata[i] for i in indices],
            intensities=None if self.intensities is None else self.intensities[indices],
            groups=None if self.groups is None else [self.groups[i] for i in indices],
        )  # fmt: skip

    def concatenated(self, other: "ExpressionSplit") -> "ExpressionSplit":
        """This split's samples followed by `other`'s (static scans with the same label names)."""
        if other.label_names != self.label_names or self.frame_mask is not None or other.frame_mask is not None:
            raise ValueError("Only static-scan splits with the same label names concatenate.")
        intensities = (None if self.intensities is None or other.intensities is None
                       else np.concatenate([self.intensities, other.intensities]))  # fmt: skip
        return ExpressionSplit(torch.cat([self.pixel_values, other.pixel_values]), torch.cat([self.labels, other.labels]),
                               self.label_names, None, self.subjects + other.subjects, self.metadata + other.metadata,
                               intensities)  # fmt: skip

    def relabelled(self, label_names) -> "ExpressionSplit":
        """The samples whose class is in `label_names` (matched by name), with labels indexing `label_names`."""
        if self.multi_label:
            if list(label_names) != list(self.label_names):
                raise ValueError(f"Multi-label names differ: {self.label_names} vs {list(label_names)}.")
            return self
        position = {name: i for i, name in enumerate(label_names)}
        keep = [i for i, label in enumerate(self.labels.tolist()) if self.label_names[label] in position]
        subset = self.subset(keep)
        subset.labels = torch.tensor([position[self.label_names[label]] for label in subset.labels.tolist()])
        subset.label_names = list(label_names)
        return subset

    def to(self, device) -> "ExpressionSplit":
        """The split with its tensors on `device` (itself when they are there already): training holds its split
        on the GPU, so that a batch is gathered there without a copy from the host."""
        if self.pixel_values.device == torch.device(device):
            return self
        moved = {name: None if value is None else to_device(value, device)
                 for name, value in (("pixel_values", self.pixel_values), ("labels", self.labels),
                                     ("frame_mask", self.frame_mask))}  # fmt: skip
        return dataclasses.replace(self, **moved)

    def batch(self, indices, device=None) -> dict:
        """Model inputs for `indices`: float32 pixel_values, labels and (sequences) frame_mask, gathered on the
        split's device and then moved to `device`."""
        index = to_device(list(indices), self.pixel_values.device, torch.long)
        batch = {"pixel_values": self.pixel_values[index].float(), "labels": self.labels[index]}
        if self.frame_mask is not None:
            batch["frame_mask"] = self.frame_mask[index]
        return {key: to_device(value, device) for key, value in batch.items()} if device is not None else batch


def _builder(name: str, data_dir, image_processor, cfg, fold, protocol):
    spec = DATASETS[name]
    settings = dict(render_settings=image_processor.render_settings(), window_length=cfg.window_length,
                    window_stride=cfg.window_stride)  # fmt: skip
    if name.startswith("synthetic") and data_dir is None:
        settings.update(num_subjects=cfg.synthetic_subjects, data_seed=cfg.data_seed)
    return spec.builder_class()(
        config_name=spec.config_name, data_dir=data_dir, cache_dir=cfg.cache_dir, protocol=protocol, fold=fold,
        num_folds=cfg.num_folds, seed=cfg.data_seed, **settings,
    )  # fmt: skip


def _prepared(builder, cfg, show_progress: bool):
    import datasets

    if not show_progress:
        datasets.disable_progress_bars()
    try:
        builder.download_and_prepare(num_proc=cfg.num_proc if cfg.num_proc > 1 else None)
    finally:
        if not show_progress:
            datasets.enable_progress_bars()
    return builder.as_dataset()


def _float16_pixels(dataset) -> torch.Tensor:
    """The dataset's float32 `pixel_values` as one float16 tensor, converted `PIXEL_CHUNK_BYTES` at a time: at once,
    a float32 copy of the whole split would sit beside the result (three times the result's memory)."""
    rows = dataset.select_columns(["pixel_values"]).with_format("numpy")
    shape = dataset.features["pixel_values"].shape  # fixed per dataset (Array4D or Array5D)
    chunk_rows = max(1, PIXEL_CHUNK_BYTES // (4 * math.prod(shape)))
    pixels = torch.empty((len(rows), *shape) if len(rows) else (0,), dtype=torch.float16)  # empty: as numpy gives it
    for start in range(0, len(rows), chunk_rows):
        pixels[start:start + chunk_rows] = torch.from_numpy(
            np.asarray(rows[start:start + chunk_rows]["pixel_values"], dtype=np.float16))
    return pixels


def _to_split(dataset, spec: DatasetSpec, label_names: list, class_ids: list | None) -> ExpressionSplit:
    """`class_ids[i]` is the dataset's class id of label i (single-label); other classes are dropped."""
    columns = dataset.column_names
    raw_labels = np.asarray(dataset[spec.label_field][:])
    keep = np.ones(len(raw_labels), dtype=bool)
    if class_ids is not None:
        lookup = {class_id: position for position, class_id in enumerate(class_ids)}
        keep = np.array([label in lookup for label in raw_labels], dtype=bool)
        labels = torch.tensor([lookup[label] for label in raw_labels[keep]], dtype=torch.long)
    else:
        labels = torch.as_tensor(raw_labels, dtype=torch.float32)
    rows = np.flatnonzero(keep).tolist()
    dataset = dataset.select(rows)
    pixels = _float16_pixels(dataset)
    frame_mask = torch.as_tensor(np.asarray(dataset["frame_mask"][:]), dtype=torch.bool) if "frame_mask" in columns else None
    metadata = [{key: dataset[key][i] for key in ("gender", "age", "race") if key in columns} for i in range(len(rows))]
    intensities = np.asarray(dataset["intensity"][:]) if "intensity" in columns else None
    groups = None
    windowed = "window_start" in columns and any(start > 0 for start in dataset["window_start"][:])
    if windowed and "frame_paths" in columns:  # a sequence's frames share a folder
        groups = [os.path.dirname(paths[0]) for paths in dataset["frame_paths"][:]]
    return ExpressionSplit(pixels, labels, list(label_names), frame_mask, list(dataset["subject"][:]), metadata,
                           intensities, groups)  # fmt: skip


def _with_intensities(split: ExpressionSplit, intensities) -> ExpressionSplit:
    if intensities is None or split.intensities is None:
        return split
    return split.subset(np.flatnonzero(np.isin(split.intensities, list(intensities))).tolist())


def hold_out_subjects(split: ExpressionSplit, count: int, seed: int, where: str) -> tuple:
    """(the rest, the samples of `count` people of `split` drawn with `seed`): a validation split carved from the
    training people, so that choosing the epoch never looks at the test fold."""
    people = sorted(set(split.subjects))
    if count >= len(people):
        raise ValueError(f"validation_subjects={count} leaves no training subject: the training split of {where} "
                         f"has {len(people)} subjects.")  # fmt: skip
    held_out = set(np.random.default_rng([seed, count]).choice(people, size=count, replace=False).tolist())
    inside = [subject in held_out for subject in split.subjects]
    return (split.subset([i for i, held in enumerate(inside) if not held]),
            split.subset([i for i, held in enumerate(inside) if held]))


def load_splits(cfg, image_processor, show_progress: bool = True) -> dict:
    """Train and test [`ExpressionSplit`]s of the protocol fold (plus "validation" people held out of the training
    side with `cfg.validation_subjects`, and "eval" for a cross-dataset run), rendered with
    `image_processor`'s settings. Single-label classes are those present in the training split, in dataset order."""
    spec = DATASETS[cfg.dataset]
    dataset = _prepared(_builder(cfg.dataset, cfg.data_dir, image_processor, cfg, cfg.fold, cfg.protocol), cfg, show_progress)
    if "test" not in dataset:
        raise ValueError(f"{cfg.dataset}: protocol {cfg.protocol!r} fold {cfg.fold} gave no test split.")
    if spec.multi_label:
        label_names, class_ids = multi_label_names(cfg.dataset), None
    else:
        names = dataset["train"].features[spec.label_field].names
        class_ids = sorted(set(np.asarray(dataset["train"][spec.label_field][:]).tolist()) - {-1})
        label_names = [names[i] for i in class_ids]
    train = _to_split(dataset["train"], spec, label_names, class_ids)
    splits = {"test": _with_intensities(_to_split(dataset["test"], spec, label_names, class_ids), cfg.test_intensities)}
    if cfg.validation_subjects:
        train, validation = hold_out_subjects(train, cfg.validation_subjects, cfg.data_seed,
                                              f"{cfg.dataset} fold {cfg.fold}")  # fmt: skip
        splits["validation"] = _with_intensities(validation, cfg.test_intensities)  # scored as the test split is
    splits["train"] = _with_intensities(train, cfg.train_intensities)
    if cfg.eval_dataset:
        splits["eval"] = load_cross_dataset_split(cfg, image_processor, label_names, show_progress)
    return splits


def load_cross_dataset_split(cfg, image_processor, label_names, show_progress: bool = True) -> ExpressionSplit:
    """Every example of `cfg.eval_dataset` whose class is in the training label space (matched by name)."""
    spec = DATASETS[cfg.eval_dataset]
    if spec.multi_label:
        raise ValueError(f"Cross-dataset evaluation needs a class-label dataset; {cfg.eval_dataset} is multi-label.")
    builder = _builder(cfg.eval_dataset, cfg.eval_data_dir, image_processor, cfg, None, cfg.eval_protocol)
    dataset = _prepared(builder, cfg, show_progress)["train"]
    names = dataset.features[spec.label_field].names
    shared = [name for name in label_names if name in names]
    if not shared:
        raise ValueError(f"{cfg.eval_dataset} shares no class with the training labels {label_names}.")
    split = _to_split(dataset, spec, shared, [names.index(name) for name in shared])
    return _with_intensities(split, cfg.test_intensities)

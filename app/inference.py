"""Predictions and pictures for the app: one zero-shot pipeline call per input (with its latency), a per-frame
timeline for 4D sequences, and the rendered views exactly as the model receives them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from modeling_facet.render_settings import CHANNEL_WIDTHS

from .inputs import FaceInput


VIEW_DISPLAY_SIZE = 160


@dataclass
class Timeline:
    """Per-frame zero-shot scores of the frames the model samples from a sequence: `scores[t][j]` is the score of
    `labels[j]` in frame `frames[t]` (its index in the sequence)."""

    frames: list
    labels: list
    scores: list
    latency_ms: float

    def predicted(self) -> list:
        """The best label of every frame."""
        return [self.labels[int(np.argmax(row))] for row in self.scores]


@dataclass
class Prediction:
    """The pipeline's answer for one input: ranked `labels` ([{"label", "score"}]), the model's `views` (yaw,
    pitch), the CVSA `view_weights` (frames x views), the temporal `frame_weights`, the wall time of the call, and
    for a sequence the per-frame `timeline`."""

    labels: list
    views: list
    view_weights: list
    frame_weights: list
    latency_ms: float
    timeline: Optional[Timeline] = None


def sampled_frames(pipe, sequence) -> list:
    """Indices of the frames of `sequence` that the model's image processor keeps (the frames it classifies)."""
    return [int(index) for index in pipe.processor.image_processor.sample_frames(len(sequence))]


def _milliseconds_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def predict(pipe, face: FaceInput, labels: list, template: Optional[str] = None) -> Prediction:
    """Classify `face` among `labels` (with `template` as the prompt template, or the model's own templates); a
    sequence is also classified frame by frame, over the frames the model samples, in one batch."""
    options = {"candidate_labels": labels}
    if template:
        options["hypothesis_template"] = template
    start = time.perf_counter()
    result = pipe(face.item, return_view_weights=True, **options)
    latency_ms = _milliseconds_since(start)
    timeline = None
    if face.is_sequence:
        frames = sampled_frames(pipe, face.item)
        start = time.perf_counter()
        per_frame = pipe([face.item.load(index) for index in frames], batch_size=len(frames), **options)
        by_label = [{item["label"]: item["score"] for item in ranked} for ranked in per_frame]
        scores = [[frame_scores[label] for label in labels] for frame_scores in by_label]
        timeline = Timeline(frames=frames, labels=list(labels), scores=scores, latency_ms=_milliseconds_since(start))
    return Prediction(
        labels=result["labels"], views=result["views"], view_weights=result["view_weights"],
        frame_weights=result["frame_weights"], latency_ms=latency_ms, timeline=timeline,
    )  # fmt: skip


def _to_picture(channels: np.ndarray, size: int) -> np.ndarray:
    """(1 or 3, H, W) values in [0, 1] as a grey (size, size) or RGB (size, size, 3) uint8 picture, enlarged with
    the pixels kept sharp."""
    pixels = (np.clip(channels, 0.0, 1.0) * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels[0] if len(pixels) == 1 else np.moveaxis(pixels, 0, -1))
    return np.asarray(picture.resize((size, size), Image.NEAREST))


def view_pictures(renderer, scan, size: int = VIEW_DISPLAY_SIZE) -> list:
    """The rendered views of `scan` as the model sees them: for each view, a list of (channel name, picture), one
    picture per channel group of the renderer (shaded and depth in grey, normals and texture in colour)."""
    images = renderer.render(scan)  # (V, C, H, W) in [0, 1]
    bounds = np.cumsum([0] + [CHANNEL_WIDTHS[name] for name in renderer.channels])
    groups = list(zip(renderer.channels, bounds[:-1], bounds[1:]))
    return [[(name, _to_picture(view[start:end], size)) for name, start, end in groups] for view in images]

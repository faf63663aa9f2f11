"""BU-4DFE (Binghamton 3D dynamic facial expressions) as a ``datasets`` builder.

Expected layout::

    <data_dir>/F001/Angry/000.wrl 000.jpg 001.wrl ...     # folders Angry Disgust Fear Happy Sad Surprise
    <data_dir>/BU4DFE_BND_V1.1/F001/Angry/000.bnd ...     # the landmark release, optional (or landmark_dir=...)

Folders that are not subject ids (``BU_WrlViewer_V2``, the landmark release, ...) are ignored. Frames are every
digit-named ``.wrl`` of a sequence folder, in numeric order; their number is never assumed (69-142 in the
real data).

Configs: ``sequences`` (frame paths, labels, metadata, landmark paths) and ``views`` (plus rendered
``pixel_values`` (T, V, C, H, W) with ``T = num_frames`` and ``frame_mask``). ``window_length`` and
``window_stride`` cut each sequence into sliding windows, one example each (``window_start`` says where).

Columns: ``subject`` (``F001``), ``gender`` (from the id letter), ``race``/``age`` (None), ``expression``
(ClassLabel anger, disgust, fear, happiness, sadness, surprise), ``frame_paths``, ``landmark_paths`` (the
frame's ``.bnd`` or None), ``fold``, ``window_start``.

Protocols: ``"standard"``: 60 subjects drawn with ``seed`` (all when fewer), 10 subject-independent folds;
``"all"``: every subject, 10 folds. BU-4DFE ids (``F001``) name other people than BP4D's: never pool the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import datasets

from .common import (
    EMOTIONS,
    GENDERS,
    FacetBuilder,
    FacetBuilderConfig,
    LabelError,
    MissingDataError,
    numbered_frames,
    subfolders,
    subject_features,
    subject_folders,
)
from .bu_codes import BU4DFE_FOLDERS, EXPRESSION_CODES
from .bu_codes import BU4DFE_LANDMARK_DIR as LANDMARK_RELEASE
from .protocols import benchmark_folds, bu4dfe_folds


FOLDER_EXPRESSIONS = {folder: EXPRESSION_CODES[code] for code, folder in BU4DFE_FOLDERS.items()}
SUBJECT_PATTERN = r"[FM]\d{3}"
PROTOCOLS = {"standard": bu4dfe_folds, "all": benchmark_folds}


@dataclass
class BU4DFEConfig(FacetBuilderConfig):
    """:class:`FacetBuilderConfig` at sequence level, plus ``landmark_dir``: the ``BU4DFE_BND_V1.1`` release folder
    (default ``<data_dir>/BU4DFE_BND_V1.1`` when it exists; a folder outside data_dir is left out of the cache's
    data fingerprint, which covers data_dir only)."""

    level: str = "sequence"
    landmark_dir: Optional[str] = None


def _landmark_paths(folder: Optional[str], frame_paths: list) -> list:
    """The ``.bnd`` of each frame in ``folder`` (same stem as the ``.wrl``), None where there is none."""
    present = set(os.listdir(folder)) if folder is not None and os.path.isdir(folder) else set()
    names = [os.path.splitext(os.path.basename(path))[0] + ".bnd" for path in frame_paths]
    return [os.path.join(folder, name) if name in present else None for name in names]


def index_sequences(root: str, landmark_dir: Optional[str] = None) -> list:
    """One example dict per expression sequence of a BU-4DFE tree (also the synthetic generator's trees).

    Raises:
        MissingDataError: no subject folders, a subject without expression folders, or a sequence without frames.
        LabelError: a folder inside a subject folder that is not one of the six expressions.
    """
    if landmark_dir is None and os.path.isdir(os.path.join(root, LANDMARK_RELEASE)):
        landmark_dir = os.path.join(root, LANDMARK_RELEASE)
    if landmark_dir is not None and not os.path.isdir(landmark_dir):
        raise MissingDataError(f"landmark_dir {landmark_dir} does not exist")
    examples, empty = [], []
    for subject in subject_folders(root, SUBJECT_PATTERN, "F001 or M001"):
        folder = os.path.join(root, subject)
        for name in subfolders(folder, f"expression folders ({', '.join(FOLDER_EXPRESSIONS)})"):
            sequence = os.path.join(folder, name)
            if name not in FOLDER_EXPRESSIONS:
                expected = ", ".join(FOLDER_EXPRESSIONS)
                raise LabelError(f"{sequence}: unknown expression folder {name!r}; expected {expected}")
            frame_paths = [path for _, path in numbered_frames(sequence, (".wrl",))]
            if not frame_paths:
                empty.append(sequence)
                continue
            landmarks = None if landmark_dir is None else os.path.join(landmark_dir, subject, name)
            examples.append({
                "subject": subject, "gender": GENDERS[subject[0]], "race": None, "age": None,
                "expression": FOLDER_EXPRESSIONS[name], "frame_paths": frame_paths,
                "landmark_paths": _landmark_paths(landmarks, frame_paths),
            })  # fmt: skip
    if empty:
        raise MissingDataError(f"{len(empty)} sequence folder(s) hold no NNN.wrl frames: {', '.join(empty)}")
    return examples


def protocol_examples(examples: list, protocol: str, num_folds: int, seed: int) -> tuple:
    """``(examples, folds)`` of a BU-4DFE protocol: all sequences, subjects chosen and folded by the protocol."""
    return examples, PROTOCOLS[protocol]([e["subject"] for e in examples], num_folds, seed)


def sequence_features() -> dict:
    """Columns of a BU-4DFE-layout sequence (shared with the synthetic builder)."""
    return {
        **subject_features(),
        "expression": datasets.ClassLabel(names=list(EMOTIONS)),
        "frame_paths": datasets.List(datasets.Value("string")),
        "landmark_paths": datasets.List(datasets.Value("string")),
    }


class BU4DFE(FacetBuilder):
    """BU-4DFE dynamic 3D facial expressions (101 subjects, 6 expression sequences each)."""

    DATASET = "BU-4DFE"
    LEVELS = ("sequence",)
    PROTOCOLS = tuple(PROTOCOLS)
    FRAME_FIELDS = ("frame_paths", "landmark_paths")
    BUILDER_CONFIG_CLASS = BU4DFEConfig
    BUILDER_CONFIGS = [
        BU4DFEConfig(name="sequences", description="Frame paths, labels, metadata and landmark paths."),
        BU4DFEConfig(name="views", render=True, description="As sequences, plus rendered multiview pixel_values."),
    ]
    DEFAULT_CONFIG_NAME = "sequences"

    def _example_features(self) -> dict:
        return sequence_features()

    def _index(self, root: str) -> list:
        return index_sequences(root, self.config.landmark_dir)

    def _folds(self, examples: list) -> tuple:
        return protocol_examples(examples, self.config.protocol, self.config.num_folds, self.config.seed)

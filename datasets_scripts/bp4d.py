"""BP4D-Spontaneous as a ``datasets`` builder for AU detection (12 AUs) and cross-dataset expression tests.

Expected layout::

    <data_dir>/Sequences(2D+3D)/<Subj>/<Task>/0000.obj ...   # F001..F023, M001..M018; T1..T8; 3 or 4 digit names
    <data_dir>/AUCoding/AU_OCC/<Subj>_<Task>.csv              # required for every sequence
    <data_dir>/3DFeatures/<Subj>/<Task>/0000.tbnd ...         # 83 tracked landmarks, optional

AU occurrence: the CSV header is ``0,1,...,99``; column 0 is the 1-based video frame and column k is AU k,
with 0 absent, 1 present and 9 unknown; rows need not start at frame 1; CRLF and LF are both read. Mesh frame N
is AU frame N + 1. Targets are the 12 AUs of :data:`BP4D_AUS`: ``aus`` is 1 where an AU is present and 0
otherwise, and ``au_mask`` is 0 where the code is 9 (unknown), so a masked loss ignores those entries (the 12 AUs
carry no 9 in the real data). Coded frames whose mesh file is missing are counted in a warning.

Configs: ``frames`` (one example per mesh frame that has AU codes: ``scan_path``, ``frame``, ``aus``,
``au_mask``, ``landmark_path``, ``landmarks``), ``sequences`` (one per subject and task, over its AU-coded frames:
``frame_paths``, ``frame_numbers`` and per-frame ``aus``, ``au_mask``, ``landmark_paths``; optional windows),
``views`` (frames with rendered ``pixel_values``) and ``sequence_views`` (sequences with rendered
``pixel_values`` and ``frame_mask``). Every example has ``task`` and ``expression``: the task's target emotion
for cross-dataset tests (T1 happiness, T2 sadness, T3 surprise, T5 fear, T7 anger, T8 disgust) and -1 for T4 and
T6.

Protocol ``"standard"``: the fixed 3-fold subject split of ME-GraphAU (:func:`protocols.bp4d_folds`): fold 0 tests
on part 3, fold 1 on part 2, fold 2 on part 1 (ME-GraphAU's folds 1, 2, 3). BP4D ids (``F001``) name other people
than BU-4DFE's: never pool the two.
"""

from __future__ import annotations

import logging
import os

import datasets
import numpy as np

from modeling_facet.prompts import BP4D_ACTION_UNITS, BP4D_AUS

from .common import (
    EMOTIONS,
    GENDERS,
    FacetBuilder,
    FacetBuilderConfig,
    LabelError,
    MissingDataError,
    numbered_frames,
    points_feature,
    subfolders,
    subject_features,
    subject_folders,
)
from .protocols import BP4D_PARTS, bp4d_folds


logger = logging.getLogger(__name__)

# Target emotion of each task (the BP4D-Spontaneous paper's task list) for cross-dataset expression tests; -1 (no label) for T4 and T6.
TASK_EXPRESSIONS = {
    "T1": "happiness", "T2": "sadness", "T3": "surprise", "T4": -1, "T5": "fear", "T6": -1, "T7": "anger", "T8": "disgust",
}  # fmt: skip
SEQUENCES_DIR = "Sequences(2D+3D)"
AU_OCC_DIR = os.path.join("AUCoding", "AU_OCC")
LANDMARKS_DIR = "3DFeatures"
SUBJECT_PATTERN = r"[FM]\d{3}"
AU_CODES = (0, 1, 9)
# The per-frame list columns of a sequence example, cut alike by windows and unzipped into frame examples.
SEQUENCE_FRAME_FIELDS = ("frame_paths", "frame_numbers", "aus", "au_mask", "landmark_paths")
_HEADER = [str(column) for column in range(100)]


def read_au_occurrence(path: str) -> tuple:
    """``(AU frame numbers (N,), codes (N, 12) of BP4D_AUS in {0, 1, 9})`` from an ``AU_OCC`` CSV.

    Raises:
        LabelError: naming the file, for a header other than ``0..99``, a malformed row, a code outside {0, 1, 9}
            or a repeated frame.
    """
    with open(path, "rb") as handle:
        lines = [line for line in handle.read().decode("ascii", errors="replace").splitlines() if line.strip()]
    if not lines or lines[0].strip().split(",") != _HEADER:
        raise LabelError(f"{path}: the header must be 0,1,...,99 (column 0 the frame, column k AU k)")
    rows = [line.strip().split(",") for line in lines[1:]]
    short = next((i for i, row in enumerate(rows) if len(row) != len(_HEADER)), None)
    if short is not None:
        raise LabelError(f"{path}: line {short + 2} has {len(rows[short])} fields, expected {len(_HEADER)}")
    if not rows:
        raise LabelError(f"{path}: no coded frames")
    try:
        table = np.array(rows, dtype=np.int64)
    except ValueError as error:
        raise LabelError(f"{path}: every field must be an integer ({error})") from None
    codes = table[:, list(BP4D_AUS)]
    bad = np.argwhere(~np.isin(codes, AU_CODES))
    if len(bad):
        row, column = bad[0]
        raise LabelError(f"{path}: line {row + 2} codes AU{BP4D_AUS[column]} as {codes[row, column]}; expected 0, 1 or 9")
    frames = table[:, 0]
    if len(np.unique(frames)) != len(frames):
        raise LabelError(f"{path}: a frame number is listed twice")
    return frames, codes


def _task_example(subject: str, task: str, folder: str, au_path: str, landmark_folder: str) -> dict:
    """The AU-coded frames of one subject and task as a sequence example (per-frame lists)."""
    meshes = dict(numbered_frames(folder, (".obj",)))
    if not meshes:
        raise MissingDataError(f"sequence folder {folder} holds no NNNN.obj frames")
    au_frames, codes = read_au_occurrence(au_path)
    mesh_frames = au_frames - 1
    has_mesh = np.isin(mesh_frames, list(meshes))
    if not has_mesh.any():
        raise MissingDataError(
            f"none of the AU-coded frames of {au_path} (meshes {mesh_frames.min()}..{mesh_frames.max()}) is in {folder}"
        )
    if not has_mesh.all():
        logger.warning(f"{au_path}: {int((~has_mesh).sum())} AU-coded frame(s) have no mesh in {folder}; they are left out")
    landmarks = dict(numbered_frames(landmark_folder, (".tbnd",))) if os.path.isdir(landmark_folder) else {}
    numbers = mesh_frames[has_mesh].tolist()
    return {
        "subject": subject, "gender": GENDERS[subject[0]], "race": None, "age": None, "task": task,
        "expression": TASK_EXPRESSIONS[task], "frame_paths": [meshes[n] for n in numbers], "frame_numbers": numbers,
        "aus": (codes[has_mesh] == 1).astype(np.int8).tolist(), "au_mask": (codes[has_mesh] != 9).astype(np.int8).tolist(),
        "landmark_paths": [landmarks.get(n) for n in numbers],
    }  # fmt: skip


def index_sequences(root: str) -> list:
    """One sequence example per subject and task of a BP4D tree, over the frames that have AU codes.

    Raises:
        MissingDataError: no ``Sequences(2D+3D)`` or ``AUCoding/AU_OCC`` folder, no subject folders, a subject
            without task folders, a task without frames or without its AU_OCC CSV.
        LabelError: an unknown task folder or a malformed AU CSV.
    """
    sequences_root, au_root = os.path.join(root, SEQUENCES_DIR), os.path.join(root, AU_OCC_DIR)
    for folder in (sequences_root, au_root):
        if not os.path.isdir(folder):
            raise MissingDataError(f"{folder} does not exist (data_dir must be the BP4D-Spontaneous root)")
    examples, missing = [], []
    for subject in subject_folders(sequences_root, SUBJECT_PATTERN, "F001 or M001"):
        folder = os.path.join(sequences_root, subject)
        for task in subfolders(folder, "task folders (T1..T8)"):
            if task not in TASK_EXPRESSIONS:
                expected = ", ".join(TASK_EXPRESSIONS)
                raise LabelError(f"{os.path.join(folder, task)}: unknown task folder; expected {expected}")
            au_path = os.path.join(au_root, f"{subject}_{task}.csv")
            if not os.path.isfile(au_path):
                missing.append(au_path)
                continue
            landmark_folder = os.path.join(root, LANDMARKS_DIR, subject, task)
            examples.append(_task_example(subject, task, os.path.join(folder, task), au_path, landmark_folder))
    if missing:
        raise MissingDataError(f"{len(missing)} sequence(s) lack their AU occurrence file: {', '.join(missing)}")
    return examples


def frame_examples(sequences: list) -> list:
    """One example per AU-coded mesh frame of the sequence examples."""
    frames = []
    for sequence in sequences:
        shared = {name: sequence[name] for name in ("subject", "gender", "race", "age", "task", "expression")}
        for path, number, aus, mask, landmark in zip(*(sequence[name] for name in SEQUENCE_FRAME_FIELDS)):
            frame = {"scan_path": path, "frame": number, "aus": aus, "au_mask": mask, "landmark_path": landmark}
            frames.append({**shared, **frame})
    return frames


class BP4D(FacetBuilder):
    """BP4D-Spontaneous (41 subjects x 8 tasks): 4D spontaneous expressions with FACS AU occurrence codes."""

    DATASET = "BP4D-Spontaneous"
    LEVELS = ("scan", "sequence")
    FRAME_FIELDS = SEQUENCE_FRAME_FIELDS
    LABEL_NAMES = {"aus": BP4D_ACTION_UNITS}
    BUILDER_CONFIGS = [
        FacetBuilderConfig(name=name, level=level, render=render, num_folds=len(BP4D_PARTS), description=description)
        for name, level, render, description in (
            ("frames", "scan", False, "AU-coded mesh frames with AU labels."),
            ("sequences", "sequence", False, "The AU-coded segment of each task."),
            ("views", "scan", True, "Frames with rendered pixel_values."),
            ("sequence_views", "sequence", True, "Sequences with rendered pixel_values."),
        )
    ]
    DEFAULT_CONFIG_NAME = "frames"

    def _check_config(self):
        super()._check_config()
        if self.config.num_folds != len(BP4D_PARTS):
            raise ValueError(f"the BP4D protocol has {len(BP4D_PARTS)} fixed folds; got num_folds={self.config.num_folds}")

    def _example_features(self) -> dict:
        labels = datasets.List(datasets.Value("int8"), length=len(BP4D_AUS))
        features = {
            **subject_features(),
            "task": datasets.Value("string"),
            "expression": datasets.ClassLabel(names=list(EMOTIONS)),
        }
        if self._is_sequence():
            return {
                **features,
                "frame_paths": datasets.List(datasets.Value("string")),
                "frame_numbers": datasets.List(datasets.Value("int32")),
                "aus": datasets.List(labels),
                "au_mask": datasets.List(labels),
                "landmark_paths": datasets.List(datasets.Value("string")),
            }
        return {
            **features,
            "scan_path": datasets.Value("string"),
            "frame": datasets.Value("int32"),
            "aus": labels,
            "au_mask": labels,
            "landmark_path": datasets.Value("string"),
            "landmarks": points_feature(),
        }

    def _index(self, root: str) -> list:
        sequences = index_sequences(root)
        return sequences if self._is_sequence() else frame_examples(sequences)

    def _folds(self, examples: list) -> tuple:
        try:
            return examples, bp4d_folds(example["subject"] for example in examples)
        except ValueError as error:
            raise LabelError(str(error)) from None

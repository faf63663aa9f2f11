"""4DME (4D spontaneous micro-expressions, Li et al., IEEE TAC 2022) as a ``datasets`` builder.

The owners' on-disk layout is not public, so this builder reads the following layout, into which
a licensed copy must be arranged::

    <data_dir>/labels.csv                      # one row per clip, comma-separated, header row required
    <data_dir>/<subject>/<clip_id>/000.obj     # the clip's frames: digit-named scan files (.obj, .wrl, .ply, ...),
    <data_dir>/<subject>/<clip_id>/001.obj     # read in numeric order

``labels.csv`` columns (others are ignored): ``clip_id``, ``subject`` (the folder name), ``onset``, ``apex``,
``offset`` (frame numbers within the clip; empty or -1 when unknown), ``aus`` (action units joined by ``+``, e.g.
``AU4+AU7`` or ``4+L12``; an optional ``L``/``R``/``B`` side prefix and letter suffix are dropped; may be empty)
and ``emotions`` (one or more of Positive, Negative, Surprise, Repression, Others joined by ``+``, any case).
Every labelled clip folder must exist and hold frames; clip folders without a row are reported in a warning.

Configs: ``sequences`` (frame paths and labels) and ``views`` (plus rendered ``pixel_values`` (T, V, C, H, W)
and ``frame_mask``); ``window_length`` / ``window_stride`` cut clips into windows.

Columns: ``subject``, ``gender``/``race``/``age`` (None), ``clip_id``, ``onset``, ``apex``, ``offset``, ``aus``
(list of AU numbers), ``emotions`` (multi-hot over :data:`EMOTIONS_4DME`), ``frame_paths``, ``fold``,
``window_start``.

Protocols: ``"loso"`` (default; leave one subject out, fold i tests the i-th subject in sorted order) and
``"standard"`` (``num_folds`` seeded subject-independent folds).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re

import datasets

from modeling_facet.mesh_io import SCAN_EXTENSIONS
from modeling_facet.prompts import MICRO_EXPRESSIONS as EMOTIONS_4DME

from .common import FacetBuilder, FacetBuilderConfig, LabelError, MissingDataError, numbered_frames, subject_features
from .protocols import leave_one_subject_out, subject_folds


logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("clip_id", "subject", "onset", "apex", "offset", "aus", "emotions")
_AU = re.compile(r"(?:AU)?[LRB]?(\d+)[A-Z]*", re.IGNORECASE)


def _frame_index(value: str, where: str) -> int:
    value = value.strip()
    if not value:
        return -1
    if not re.fullmatch(r"-?\d+", value):
        raise LabelError(f"{where}: frame number {value!r} is not an integer")
    return int(value)


def _parse_row(row: dict, where: str) -> dict:
    """The label columns of one ``labels.csv`` row; ``where`` (file and line) names it in errors."""
    aus = []
    for token in filter(None, (token.strip() for token in row["aus"].split("+"))):
        match = _AU.fullmatch(token)
        if match is None:
            raise LabelError(f"{where}: unknown action unit {token!r} (expected e.g. AU4, 4 or L12)")
        aus.append(int(match.group(1)))
    names = [token.strip().lower() for token in row["emotions"].split("+") if token.strip()]
    unknown = [name for name in names if name not in EMOTIONS_4DME]
    if unknown or not names:
        raise LabelError(f"{where}: emotions {row['emotions']!r} must be one or more of {', '.join(EMOTIONS_4DME)}")
    return {
        "clip_id": row["clip_id"].strip(), "subject": row["subject"].strip(),
        **{name: _frame_index(row[name], where) for name in ("onset", "apex", "offset")},
        "aus": aus, "emotions": [int(emotion in names) for emotion in EMOTIONS_4DME],
    }  # fmt: skip


def read_labels(path: str) -> list:
    """The rows of a 4DME ``labels.csv`` as label dicts; raises LabelError naming the file and line."""
    with open(path, "rb") as handle:
        reader = csv.DictReader(io.StringIO(handle.read().decode("utf-8-sig")))
        absent = [column for column in LABEL_COLUMNS if column not in (reader.fieldnames or [])]
        if absent:
            raise LabelError(f"{path}: missing column(s) {', '.join(absent)}; expected {', '.join(LABEL_COLUMNS)}")
        rows = [_parse_row(row, f"{path} line {reader.line_num}") for row in reader]
    seen = set()
    for row in rows:
        if row["clip_id"] in seen:
            raise LabelError(f"{path}: clip {row['clip_id']!r} is listed twice")
        seen.add(row["clip_id"])
    return rows


def index_clips(root: str) -> list:
    """One example dict per labelled clip.

    Raises:
        MissingDataError: no ``labels.csv``, or a labelled clip whose folder is missing or holds no frames.
        LabelError: a malformed ``labels.csv``.
    """
    labels_path = os.path.join(root, LABELS_FILE)
    if not os.path.isfile(labels_path):
        raise MissingDataError(f"{labels_path} does not exist (see the datasets_scripts.fourdme docstring for the layout)")
    examples, missing = [], []
    for row in read_labels(labels_path):
        folder = os.path.join(root, row["subject"], row["clip_id"])
        frames = numbered_frames(folder, SCAN_EXTENSIONS) if os.path.isdir(folder) else []
        if not frames:
            missing.append(folder)
            continue
        examples.append({**row, "gender": None, "race": None, "age": None, "frame_paths": [path for _, path in frames]})
    if missing:
        raise MissingDataError(f"{len(missing)} labelled clip(s) have no folder of numbered frames: {', '.join(missing)}")
    if not examples:
        raise MissingDataError(f"{labels_path} lists no clips")
    labelled = {(e["subject"], e["clip_id"]) for e in examples}
    unlabelled = [
        os.path.join(root, subject, clip)
        for subject in sorted({e["subject"] for e in examples})
        for clip in sorted(os.listdir(os.path.join(root, subject)))
        if os.path.isdir(os.path.join(root, subject, clip)) and (subject, clip) not in labelled
    ]
    if unlabelled:
        logger.warning(
            f"4DME: {len(unlabelled)} clip folder(s) have no row in {labels_path} and are left out: "
            + ", ".join(unlabelled)
        )
    return examples


class FourDME(FacetBuilder):
    """4DME micro- and macro-expression clips with multi-label emotions and action units."""

    DATASET = "4DME"
    LEVELS = ("sequence",)
    PROTOCOLS = ("loso", "standard")
    LABEL_NAMES = {"emotions": EMOTIONS_4DME}
    BUILDER_CONFIGS = [
        FacetBuilderConfig(name="sequences", level="sequence", protocol="loso", description="Clip frames and labels."),
        FacetBuilderConfig(
            name="views", level="sequence", render=True, protocol="loso",
            description="As sequences, plus rendered multiview pixel_values.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "sequences"

    def _example_features(self) -> dict:
        return {
            **subject_features(),
            "clip_id": datasets.Value("string"),
            **{name: datasets.Value("int32") for name in ("onset", "apex", "offset")},
            "aus": datasets.List(datasets.Value("int32")),
            "emotions": datasets.List(datasets.Value("int8"), length=len(EMOTIONS_4DME)),
            "frame_paths": datasets.List(datasets.Value("string")),
        }

    def _index(self, root: str) -> list:
        return index_clips(root)

    def _folds(self, examples: list) -> tuple:
        subjects = [example["subject"] for example in examples]
        if self.config.protocol == "loso":
            return examples, leave_one_subject_out(subjects)
        return examples, subject_folds(subjects, self.config.num_folds, self.config.seed)

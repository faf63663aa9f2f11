"""SyntheticFaces: the procedural FACS faces of :mod:`datasets_scripts.synthetic_faces` as a ``datasets`` builder.

The data is a BU-3DFE-layout tree (configs ``scans`` and ``views``) or a BU-4DFE-layout tree (``sequences`` and
``sequence_views``) with the sidecar ``synthetic_labels.csv``, parsed by the BU-3DFE / BU-4DFE code. With
``data_dir`` the builder reads a tree written by ``write_bu3dfe_tree`` / ``write_bu4dfe_tree``; without it, it
writes one itself, with ``num_subjects`` subjects from ``data_seed``, under ``<cache_dir>/downloads/synthetic_faces``
(reused by later builders with the same settings).

Columns: those of :class:`~datasets_scripts.bu3dfe.BU3DFE` (scans) or :class:`~datasets_scripts.bu4dfe.BU4DFE`
(sequences), with ``gender``, ``race`` and ``age`` from the sidecar, plus:

* scans: ``au_intensities`` (the generator's activation of each AU in :data:`AU_NAMES` order) and ``aus``
  (multi-hot: 1 where the activation is above 0);
* sequences: per-frame ``au_intensities`` (T x AUs) and ``intensity_curve`` (the expression's time course).

Protocols are BU-3DFE's (``standard``, ``all``, ``all7``) for scans and BU-4DFE's (``standard``, ``all``) for
sequences; ``seed`` seeds the folds, ``data_seed`` the faces.
"""

from __future__ import annotations

import csv
import os
import shutil
import uuid
from dataclasses import dataclass

import datasets

from . import bu3dfe, bu4dfe
from .common import GENDERS, FacetBuilder, FacetBuilderConfig, LabelError, MissingDataError
from .synthetic_faces import (
    AU_NAMES, EXPRESSIONS, GENERATOR_VERSION, LABELS_FILENAME, SyntheticConfig, write_bu3dfe_tree, write_bu4dfe_tree,
)  # fmt: skip


@dataclass
class SyntheticFacesConfig(FacetBuilderConfig):
    """:class:`FacetBuilderConfig` plus the generated data's ``num_subjects`` and ``data_seed`` (used without data_dir)."""

    num_subjects: int = 10
    data_seed: int = 0

    def content_settings(self) -> dict:
        """As :class:`FacetBuilderConfig`'s, plus the generator's version (the faces a generated tree holds)."""
        return {**super().content_settings(), "generator_version": GENERATOR_VERSION}


def read_sidecar(root: str) -> dict:
    """Rows of ``synthetic_labels.csv`` keyed by their ``file`` column (a path relative to ``root``, ``/``-separated)."""
    path = os.path.join(root, LABELS_FILENAME)
    if not os.path.isfile(path):
        raise MissingDataError(f"{path} does not exist (trees from write_bu3dfe_tree / write_bu4dfe_tree have one)")
    with open(path, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def _sidecar_row(labels: dict, root: str, path: str, example: dict) -> dict:
    """The sidecar row of ``path``, checked against the subject and expression parsed from the tree."""
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    row = labels.get(relative)
    if row is None:
        raise LabelError(f"{os.path.join(root, LABELS_FILENAME)} has no row for {relative}")
    if row["subject"] != example["subject"] or EXPRESSIONS.get(row["expression"]) != example["expression"]:
        raise LabelError(
            f"{os.path.join(root, LABELS_FILENAME)}: {relative} is labelled {row['subject']} {row['expression']}, "
            f"but its path says {example['subject']} {example['expression']}"
        )
    return row


def _subject_metadata(row: dict) -> dict:
    return {"gender": GENDERS[row["gender"]], "race": bu3dfe.RACE_CODES[row["race"]], "age": row["age"]}


def _activations(row: dict) -> list:
    return [float(row[name]) for name in AU_NAMES]


class SyntheticFaces(FacetBuilder):
    """Procedural 3D/4D faces with known FACS action units: the embedded default data of FACET-VLM."""

    DATASET = "SyntheticFaces"
    LEVELS = ("scan", "sequence")
    DATA_SOURCE = (
        "Write the tree with datasets_scripts.synthetic_faces.write_bu3dfe_tree (scans, views) or write_bu4dfe_tree "
        "(sequences, sequence_views), or leave data_dir out to have the builder generate one."
    )
    PROTOCOLS = tuple(bu3dfe.PROTOCOLS)
    FRAME_FIELDS = ("frame_paths", "landmark_paths", "au_intensities", "intensity_curve")
    LABEL_NAMES = {"aus": AU_NAMES}
    BUILDER_CONFIG_CLASS = SyntheticFacesConfig
    BUILDER_CONFIGS = [
        SyntheticFacesConfig(name="scans", description="BU-3DFE-layout scans with labels and AU activations."),
        SyntheticFacesConfig(name="views", render=True, description="As scans, plus rendered multiview pixel_values."),
        SyntheticFacesConfig(name="sequences", level="sequence", description="BU-4DFE-layout sequences with AU curves."),
        SyntheticFacesConfig(
            name="sequence_views", level="sequence", render=True,
            description="As sequences, plus rendered multiview pixel_values.",
        ),
    ]  # fmt: skip
    DEFAULT_CONFIG_NAME = "scans"

    def _check_config(self):
        super()._check_config()
        if self._is_sequence() and self.config.protocol not in bu4dfe.PROTOCOLS:
            allowed = tuple(bu4dfe.PROTOCOLS)
            raise ValueError(f"sequence configs take the protocols {allowed}, got {self.config.protocol!r}")
        if self.config.num_subjects < 1:
            raise ValueError(f"num_subjects must be >= 1, got {self.config.num_subjects}")

    def _example_features(self) -> dict:
        activations = datasets.List(datasets.Value("float32"), length=len(AU_NAMES))
        if self._is_sequence():
            return {
                **bu4dfe.sequence_features(),
                "au_intensities": datasets.List(activations),
                "intensity_curve": datasets.List(datasets.Value("float32")),
            }
        return {
            **bu3dfe.model_features(),
            "aus": datasets.List(datasets.Value("int8"), length=len(AU_NAMES)),
            "au_intensities": activations,
        }

    def _data_root(self, data_dir):
        if data_dir is not None:
            return super()._data_root(data_dir)
        config = self.config
        layout = "bu4dfe" if self._is_sequence() else "bu3dfe"
        root = os.path.join(
            self._cache_downloaded_dir, "synthetic_faces",
            f"{layout}-{config.num_subjects}-seed{config.data_seed}-v{GENERATOR_VERSION}",
        )
        if not os.path.isdir(root):
            partial = f"{root}.incomplete-{uuid.uuid4().hex}"
            writer = write_bu4dfe_tree if self._is_sequence() else write_bu3dfe_tree
            try:
                writer(partial, config.num_subjects, SyntheticConfig(seed=config.data_seed))
                os.replace(partial, root)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return root

    def _index(self, root: str) -> list:
        labels = read_sidecar(root)
        if self._is_sequence():
            return [self._sequence_labels(example, labels, root) for example in bu4dfe.index_sequences(root)]
        return [self._model_labels(example, labels, root) for example in bu3dfe.index_models(root)]

    @staticmethod
    def _model_labels(example: dict, labels: dict, root: str) -> dict:
        row = _sidecar_row(labels, root, example["scan_path"], example)
        activations = _activations(row)
        aus = [int(value > 0) for value in activations]
        return {**example, **_subject_metadata(row), "au_intensities": activations, "aus": aus}

    @staticmethod
    def _sequence_labels(example: dict, labels: dict, root: str) -> dict:
        rows = [_sidecar_row(labels, root, path, example) for path in example["frame_paths"]]
        return {
            **example, **_subject_metadata(rows[0]), "au_intensities": [_activations(row) for row in rows],
            "intensity_curve": [float(row["intensity"]) for row in rows],
        }  # fmt: skip

    def _folds(self, examples: list) -> tuple:
        protocol = bu4dfe.protocol_examples if self._is_sequence() else bu3dfe.protocol_examples
        return protocol(examples, self.config.protocol, self.config.num_folds, self.config.seed)

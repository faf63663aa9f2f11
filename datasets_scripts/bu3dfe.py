"""BU-3DFE (Binghamton University 3D Facial Expression database, static) as a ``datasets`` builder.

Expected layout: ``<data_dir>/F0001/F0001_AN01WH_F3D.wrl`` with the sibling ``_F3D.bnd``
(83 landmarks, optional), ``_F3D.bmp``, ``_F2D.bmp``, ``_RAW.wrl`` and ``_RAW.pse``. One example per ``_F3D.wrl``
model; the other files are ignored, but a model that has some of its files and no ``_F3D.wrl`` is an error.

Configs: ``scans`` (paths, labels, metadata, landmarks) and ``views`` (plus rendered ``pixel_values``).

Columns: ``subject`` (``F0001``), ``gender`` (``female``/``male``, from the id letter), ``race`` (from the name,
e.g. ``White``; checked to be constant per subject), ``age`` (None: not in the names), ``expression``
(ClassLabel: anger, disgust, fear, happiness, sadness, surprise, neutral), ``intensity`` (1-4, 0 for neutral),
``scan_path``, ``landmark_path`` (the ``_F3D.bnd`` or None), ``landmarks`` ([x, y, z] in mm, empty without .bnd),
``fold``.

Protocols (``protocol=``): ``"standard"``: 60 subjects drawn with ``seed`` (all when fewer), the 6 expressions at
intensities 3 and 4, 10 subject-independent folds; ``"all"``: every subject, 6 expressions, all intensities;
``"all7"``: every subject and model, neutral included.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import datasets

from .common import (
    EMOTIONS,
    EMOTIONS_WITH_NEUTRAL,
    GENDERS,
    FacetBuilder,
    FacetBuilderConfig,
    LabelError,
    MissingDataError,
    points_feature,
    subject_features,
    subject_folders,
)
from .bu_codes import EXPRESSION_CODES, RACE_CODES
from .protocols import benchmark_folds, bu3dfe_folds


SUBJECT_PATTERN = r"[FM]\d{4}"
# Any per-model file: (model stem, subject, expression, intensity, race, kind). The codes are checked afterwards,
# so that an unknown code is reported instead of ignored.
_MODEL_FILE = re.compile(r"(([FM]\d{4})_([A-Z]{2})(\d{2})([A-Z]{2}))_((?:F3D|F2D|RAW)\.[A-Za-z]+)")
# protocol -> (expressions, intensities, fold function)
PROTOCOLS = {
    "standard": (EMOTIONS, (3, 4), bu3dfe_folds),
    "all": (EMOTIONS, (1, 2, 3, 4), benchmark_folds),
    "all7": (EMOTIONS_WITH_NEUTRAL, (0, 1, 2, 3, 4), benchmark_folds),
}


def _parse_model_file(path: str, folder_subject: str) -> tuple:
    """``(model stem, expression, intensity, race code, kind)`` of a per-model file; raises on unknown codes."""
    stem, subject, code, intensity, race, kind = _MODEL_FILE.fullmatch(os.path.basename(path)).groups()
    if subject != folder_subject:
        raise LabelError(f"{path}: the file names subject {subject} but lies in the folder of {folder_subject}")
    if code not in EXPRESSION_CODES:
        raise LabelError(f"{path}: unknown expression code {code!r}; expected one of {', '.join(EXPRESSION_CODES)}")
    if race not in RACE_CODES:
        raise LabelError(f"{path}: unknown race code {race!r}; expected one of {', '.join(RACE_CODES)}")
    intensity = int(intensity)
    if (code == "NE") != (intensity == 0) or intensity > 4:
        raise LabelError(f"{path}: intensity {intensity:02d} is invalid for {code} (neutral is 00, the others 01-04)")
    return stem, EXPRESSION_CODES[code], intensity, race, kind


def _check_race(subject: str, races: dict) -> None:
    """``races`` maps race code -> a file naming it; a subject must have one race code in all its names."""
    if len(races) > 1:
        found = "; ".join(f"{code} in {path}" for code, path in sorted(races.items()))
        raise LabelError(f"subject {subject} has inconsistent race codes: {found}")


def index_models(root: str) -> list:
    """One example dict per ``_F3D.wrl`` model of a BU-3DFE tree (also the synthetic generator's trees).

    Raises:
        MissingDataError: no subject folders, an empty subject folder, or a model without its ``_F3D.wrl``.
        LabelError: an unknown expression, intensity or race code, or a race that changes within a subject.
    """
    examples, incomplete = [], []
    for subject in subject_folders(root, SUBJECT_PATTERN, "F0001 or M0001"):
        folder = os.path.join(root, subject)
        models, kinds, races = {}, defaultdict(set), {}
        for name in sorted(os.listdir(folder)):
            if _MODEL_FILE.fullmatch(name):
                path = os.path.join(folder, name)
                stem, expression, intensity, race, kind = _parse_model_file(path, subject)
                models[stem] = (expression, intensity, race)
                kinds[stem].add(kind)
                races.setdefault(race, path)
        if not models:
            raise MissingDataError(f"subject folder {folder} holds no BU-3DFE model files (like {subject}_AN01WH_F3D.wrl)")
        _check_race(subject, races)
        for stem, (expression, intensity, race) in sorted(models.items()):
            prefix = os.path.join(folder, stem)
            if "F3D.wrl" not in kinds[stem]:
                incomplete.append(f"{prefix}_F3D.wrl (present: {', '.join(sorted(kinds[stem]))})")
                continue
            examples.append({
                "subject": subject, "gender": GENDERS[subject[0]], "race": RACE_CODES[race], "age": None,
                "expression": expression, "intensity": intensity, "scan_path": f"{prefix}_F3D.wrl",
                "landmark_path": f"{prefix}_F3D.bnd" if "F3D.bnd" in kinds[stem] else None,
            })  # fmt: skip
    if incomplete:
        raise MissingDataError(f"{len(incomplete)} model(s) lack their mesh: {'; '.join(incomplete)}")
    return examples


def protocol_examples(examples: list, protocol: str, num_folds: int, seed: int) -> tuple:
    """``(examples, folds)`` of a BU-3DFE protocol: its expressions and intensities, and its subject folds."""
    expressions, intensities, make_folds = PROTOCOLS[protocol]
    kept = [e for e in examples if e["expression"] in expressions and e["intensity"] in intensities]
    if not kept:
        raise MissingDataError(
            f"no model matches the {protocol!r} protocol (expressions {expressions}, intensities {intensities})"
        )
    return kept, make_folds([e["subject"] for e in kept], num_folds, seed)


def model_features() -> dict:
    """Columns of a BU-3DFE-layout model (shared with the synthetic builder)."""
    return {
        **subject_features(),
        "expression": datasets.ClassLabel(names=list(EMOTIONS_WITH_NEUTRAL)),
        "intensity": datasets.Value("int8"),
        "scan_path": datasets.Value("string"),
        "landmark_path": datasets.Value("string"),
        "landmarks": points_feature(),
    }


class BU3DFE(FacetBuilder):
    """BU-3DFE static 3D facial expressions (100 subjects, 6 expressions x 4 intensities + neutral)."""

    DATASET = "BU-3DFE"
    PROTOCOLS = tuple(PROTOCOLS)
    BUILDER_CONFIGS = [
        FacetBuilderConfig(name="scans", description="Model paths, labels, metadata and landmarks."),
        FacetBuilderConfig(name="views", render=True, description="As scans, plus rendered multiview pixel_values."),
    ]
    DEFAULT_CONFIG_NAME = "scans"

    def _example_features(self) -> dict:
        return model_features()

    def _index(self, root: str) -> list:
        return index_models(root)

    def _folds(self, examples: list) -> tuple:
        return protocol_examples(examples, self.config.protocol, self.config.num_folds, self.config.seed)

"""The Bosphorus 3D face database as a ``datasets`` builder.

Expected layout: ``<data_dir>/bs000/bs000_E_ANGER_0.bnt`` with the siblings ``.lm3``
(3D landmarks, optional), ``.lm2`` and ``.png``; stems are ``<subject>_<class>_<code>_<sample>``. One example per
``.bnt`` scan; ``IGN`` scans are skipped; a stem that has sibling files but no ``.bnt`` is an error.

Configs: ``scans`` (paths, labels, metadata, landmarks) and ``views`` (plus rendered ``pixel_values``).

Columns: ``subject`` (``bs000``), ``gender``/``race``/``age`` (None: not in the names), ``scan_class`` (``N``,
``E``, ``LFAU``, ``UFAU``, ``CAU``, ``YR``, ``PR``, ``CR``, ``O``), ``code`` (open string, e.g. ``12L``),
``sample``, ``expression`` (ClassLabel anger .. surprise, neutral; -1 for scans that are neither an ``E_``
emotion nor ``N_N``), ``aus`` (action units of ``LFAU``/``UFAU``/``CAU`` scans, parsed from the code: ``12L`` ->
[12], ``A22A25`` -> [22, 25], ``A26A12lw`` -> [26, 12]; empty otherwise), ``pose`` (the code of ``YR``/``PR``/``CR``
scans, e.g. ``R10``), ``occlusion`` (the code of ``O`` scans, e.g. ``EYE``), ``scan_path``, ``texture_path``
(the ``.png`` or None), ``landmark_path`` and ``landmarks`` (``.lm3`` points in mm) with ``landmark_names``.

Protocols: ``"standard"``: the subjects that have all six ``E_`` emotions, their ``E_`` scans (6 classes),
10 subject-independent seeded folds; ``"all"``: every scan of every subject, 10 folds.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import datasets

from .common import (
    EMOTIONS,
    EMOTIONS_WITH_NEUTRAL,
    FacetBuilder,
    FacetBuilderConfig,
    LabelError,
    MissingDataError,
    points_feature,
    subject_features,
    subject_folders,
)
from .protocols import benchmark_folds, bosphorus_folds


EMOTION_CODES = dict(zip(("ANGER", "DISGUST", "FEAR", "HAPPY", "SADNESS", "SURPRISE"), EMOTIONS))
AU_CLASSES = ("LFAU", "UFAU", "CAU")
POSE_CLASSES = ("YR", "PR", "CR")
SCAN_CLASSES = ("N", "E", *AU_CLASSES, *POSE_CLASSES, "O")
SUBJECT_PATTERN = r"bs\d{3}"
SIBLING_EXTENSIONS = (".bnt", ".lm3", ".lm2", ".png")
_STEM = re.compile(r"(bs\d{3})_([A-Z]+)_([A-Za-z0-9]+)_(\d+)")
_SINGLE_AU = re.compile(r"(\d+)[A-Za-z]*")  # 12, 12L, 12LW
_COMBINED_AUS = re.compile(r"(?:A\d+[B-Za-z]*)+")  # A22A25, A26A12lw


def parse_aus(scan_class: str, code: str) -> list:
    """Action units of an AU scan's code (``12L`` -> [12], ``A26A12lw`` -> [26, 12]); ValueError when malformed."""
    if scan_class == "CAU":
        if not _COMBINED_AUS.fullmatch(code):
            raise ValueError(f"combined-AU code {code!r} is not a run of 'A<number>[suffix]'")
        return [int(number) for number in re.findall(r"A(\d+)", code)]
    match = _SINGLE_AU.fullmatch(code)
    if match is None:
        raise ValueError(f"AU code {code!r} is not '<number>[suffix]'")
    return [int(match.group(1))]


def _labels(path: str, scan_class: str, code: str) -> dict:
    """The label columns of one scan, from its class and code; raises naming the file on unknown values."""
    labels = {"scan_class": scan_class, "code": code, "expression": -1, "aus": [], "pose": None, "occlusion": None}
    if scan_class not in SCAN_CLASSES:
        raise LabelError(f"{path}: unknown scan class {scan_class!r}; expected one of {', '.join(SCAN_CLASSES)} or IGN")
    if scan_class == "N":
        if code != "N":
            raise LabelError(f"{path}: a neutral scan must have code N, got {code!r}")
        labels["expression"] = "neutral"
    elif scan_class == "E":
        if code not in EMOTION_CODES:
            raise LabelError(f"{path}: unknown emotion code {code!r}; expected one of {', '.join(EMOTION_CODES)}")
        labels["expression"] = EMOTION_CODES[code]
    elif scan_class in AU_CLASSES:
        try:
            labels["aus"] = parse_aus(scan_class, code)
        except ValueError as error:
            raise LabelError(f"{path}: {error}") from None
    elif scan_class in POSE_CLASSES:
        labels["pose"] = code
    else:
        labels["occlusion"] = code
    return labels


def index_scans(root: str) -> list:
    """One example dict per ``.bnt`` scan of a Bosphorus tree (``IGN`` scans left out).

    Raises:
        MissingDataError: no subject folders, an empty subject folder, or a stem with sibling files but no ``.bnt``.
        LabelError: a file name that does not follow the grammar, an unknown class or emotion, a malformed AU code.
    """
    examples, incomplete = [], []
    for subject in subject_folders(root, SUBJECT_PATTERN, "bs000"):
        folder = os.path.join(root, subject)
        stems = defaultdict(set)
        for name in sorted(os.listdir(folder)):
            stem, extension = os.path.splitext(name)
            if extension.lower() in SIBLING_EXTENSIONS and stem.split("_")[1:2] != ["IGN"]:
                stems[stem].add(extension.lower())
        if not stems:
            raise MissingDataError(f"subject folder {folder} holds no Bosphorus scans (like {subject}_N_N_0.bnt)")
        for stem, extensions in sorted(stems.items()):
            prefix = os.path.join(folder, stem)
            match = _STEM.fullmatch(stem)
            if match is None or match.group(1) != subject:
                raise LabelError(f"{prefix}{min(extensions)}: the name is not {subject}_<class>_<code>_<sample>")
            if ".bnt" not in extensions:
                incomplete.append(f"{prefix}.bnt (present: {', '.join(sorted(extensions))})")
                continue
            _, scan_class, code, sample = match.groups()
            examples.append({
                "subject": subject, "gender": None, "race": None, "age": None,
                **_labels(prefix + ".bnt", scan_class, code), "sample": int(sample), "scan_path": prefix + ".bnt",
                "texture_path": prefix + ".png" if ".png" in extensions else None,
                "landmark_path": prefix + ".lm3" if ".lm3" in extensions else None,
            })  # fmt: skip
    if incomplete:
        raise MissingDataError(f"{len(incomplete)} scan(s) lack their range file: {'; '.join(incomplete)}")
    return examples


def protocol_examples(examples: list, protocol: str, num_folds: int, seed: int) -> tuple:
    """``(examples, folds)`` of a Bosphorus protocol (see the module docstring)."""
    if protocol == "all":
        return examples, benchmark_folds([e["subject"] for e in examples], num_folds, seed)
    emotions = defaultdict(set)
    for example in examples:
        if example["scan_class"] == "E":
            emotions[example["subject"]].add(example["expression"])
    complete = {subject for subject, found in emotions.items() if found == set(EMOTIONS)}
    if not complete:
        raise MissingDataError("no subject has all six E_ emotion scans, which the standard protocol needs")
    kept = [e for e in examples if e["scan_class"] == "E" and e["subject"] in complete]
    return kept, bosphorus_folds(sorted(complete), num_folds, seed)


class Bosphorus(FacetBuilder):
    """Bosphorus 3D faces (105 subjects): emotions, action units, head poses and occlusions."""

    DATASET = "Bosphorus"
    PROTOCOLS = ("standard", "all")
    BUILDER_CONFIGS = [
        FacetBuilderConfig(name="scans", description="Scan paths, labels, metadata and landmarks."),
        FacetBuilderConfig(name="views", render=True, description="As scans, plus rendered multiview pixel_values."),
    ]
    DEFAULT_CONFIG_NAME = "scans"

    def _example_features(self) -> dict:
        return {
            **subject_features(),
            "scan_class": datasets.Value("string"),
            "code": datasets.Value("string"),
            "sample": datasets.Value("int32"),
            "expression": datasets.ClassLabel(names=list(EMOTIONS_WITH_NEUTRAL)),
            "aus": datasets.List(datasets.Value("int32")),
            "pose": datasets.Value("string"),
            "occlusion": datasets.Value("string"),
            "scan_path": datasets.Value("string"),
            "texture_path": datasets.Value("string"),
            "landmark_path": datasets.Value("string"),
            "landmarks": points_feature(),
            "landmark_names": datasets.List(datasets.Value("string")),
        }

    def _index(self, root: str) -> list:
        return index_scans(root)

    def _folds(self, examples: list) -> tuple:
        return protocol_examples(examples, self.config.protocol, self.config.num_folds, self.config.seed)

"""Subject-independent evaluation protocols of the 3D/4D facial-expression benchmarks.

A protocol is a list of folds; a fold is the tuple of subjects tested on in that round, and the model trains on the
subjects of the other folds. Every generator here is deterministic for a given seed and never puts one subject in
two folds, and :func:`assert_subject_independent` checks a train/test pair.

Subject ids are only unique inside one dataset: BU-4DFE and BP4D both use ``F001``-style ids for different people,
so folds must be built per dataset and never over the union of two datasets' ids.

| benchmark | function | subjects | folds |
|---|---|---|---|
| BU-3DFE | :func:`bu3dfe_folds` | 60 drawn with the seed (all when fewer) | 10 |
| Bosphorus | :func:`bosphorus_folds` | every subject given (those with all six ``E_`` scans) | 10 |
| BU-4DFE | :func:`bu4dfe_folds` | 60 drawn with the seed (all when fewer) | 10 |
| BP4D | :func:`bp4d_folds` | the fixed 3 parts of ME-GraphAU | 3 |
| any | :func:`leave_one_subject_out` | every subject | one per subject |
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


STANDARD_NUM_FOLDS = 10
STANDARD_NUM_SUBJECTS = 60

# The fixed subject parts of the BP4D 12-AU protocol (github.com/CVI-SZU/ME-GraphAU).
BP4D_PARTS = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
# ME-GraphAU's fold 1 tests on part 3, fold 2 on part 2 and fold 3 on part 1; fold i here is its fold i + 1.
BP4D_TEST_PARTS = (2, 1, 0)


class SubjectLeakageError(ValueError):
    """A subject appears on both sides of a train/test split, or in two folds."""


def _unique_subjects(subjects: Iterable[str]) -> list:
    unique = sorted({str(subject) for subject in subjects})
    if not unique:
        raise ValueError("no subjects given")
    return unique


def assert_subject_independent(train_subjects: Iterable[str], test_subjects: Iterable[str]) -> None:
    """Raise :class:`SubjectLeakageError` naming the subjects that are both in training and in test."""
    shared = sorted(set(map(str, train_subjects)) & set(map(str, test_subjects)))
    if shared:
        raise SubjectLeakageError(f"{len(shared)} subject(s) are in both training and test: {', '.join(shared)}")


def benchmark_folds(subjects: Iterable[str], num_folds: int = STANDARD_NUM_FOLDS, seed: int = 0,
                    num_subjects: Optional[int] = None) -> list:
    """Seeded subject-independent k-fold protocol: a list of ``num_folds`` sorted tuples of test subjects.

    The distinct subjects are shuffled with ``seed``; the first ``num_subjects`` of them are kept (all of them when
    ``num_subjects`` is None or more than there are) and dealt round-robin to the folds, so fold sizes differ by at
    most one.
    """
    unique = _unique_subjects(subjects)
    if num_subjects is not None and num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    chosen = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))[:num_subjects]]
    if not 2 <= num_folds <= len(chosen):
        raise ValueError(
            f"num_folds must be between 2 and the number of subjects ({len(chosen)}), got {num_folds}; pass fewer folds"
        )
    return [tuple(sorted(chosen[fold::num_folds])) for fold in range(num_folds)]


def subject_folds(subjects: Iterable[str], num_folds: int = STANDARD_NUM_FOLDS, seed: int = 0) -> list:
    """Seeded k-fold split of all the given subjects: ``num_folds`` sorted tuples of test subjects."""
    return benchmark_folds(subjects, num_folds, seed)


def leave_one_subject_out(subjects: Iterable[str]) -> list:
    """One fold per subject, in sorted order."""
    return [(subject,) for subject in _unique_subjects(subjects)]


def bu3dfe_folds(subjects: Iterable[str], num_folds: int = STANDARD_NUM_FOLDS, seed: int = 0) -> list:
    """BU-3DFE standard protocol: 60 subjects drawn with ``seed`` (all when fewer), 10 folds of 6 subjects."""
    return benchmark_folds(subjects, num_folds, seed, STANDARD_NUM_SUBJECTS)


def bosphorus_folds(subjects: Iterable[str], num_folds: int = STANDARD_NUM_FOLDS, seed: int = 0) -> list:
    """Bosphorus protocol over the given subjects (those that have all six ``E_`` scans), 10 seeded folds."""
    return benchmark_folds(subjects, num_folds, seed)


def bu4dfe_folds(subjects: Iterable[str], num_folds: int = STANDARD_NUM_FOLDS, seed: int = 0) -> list:
    """BU-4DFE protocol: 60 subjects drawn with ``seed`` (all when fewer), 10 subject-independent folds."""
    return benchmark_folds(subjects, num_folds, seed, STANDARD_NUM_SUBJECTS)


def bp4d_folds(subjects: Optional[Iterable[str]] = None) -> list:
    """The fixed 3-fold BP4D protocol: fold 0 tests on part 3, fold 1 on part 2, fold 2 on part 1.

    With ``subjects``, each fold keeps only those subjects (a partial copy of the data); a subject outside the 41
    of BP4D-Spontaneous raises a ``ValueError``.
    """
    folds = [BP4D_PARTS[part] for part in BP4D_TEST_PARTS]
    if subjects is None:
        return folds
    wanted = set(_unique_subjects(subjects))
    unknown = sorted(wanted - {subject for part in BP4D_PARTS for subject in part})
    if unknown:
        raise ValueError(
            f"subjects {', '.join(unknown)} are not among the 41 BP4D-Spontaneous subjects of the fixed 3-fold protocol"
        )
    return [tuple(sorted(wanted.intersection(fold))) for fold in folds]


def fold_of_subject(folds: list) -> dict:
    """Map each subject to the index of the fold that tests on it; raises if a subject is in two folds."""
    owner = {}
    for index, fold in enumerate(folds):
        for subject in fold:
            if subject in owner:
                raise SubjectLeakageError(f"subject {subject} is in folds {owner[subject]} and {index}")
            owner[subject] = index
    return owner


def train_test_subjects(folds: list, fold: int) -> tuple:
    """``(train subjects, test subjects)`` of round ``fold``: test on that fold, train on all the others."""
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold must be in 0..{len(folds) - 1}, got {fold}")
    test = tuple(folds[fold])
    train = tuple(subject for index, other in enumerate(folds) if index != fold for subject in other)
    assert_subject_independent(train, test)
    return train, test

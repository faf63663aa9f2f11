"""Tests of the subject-independent evaluation protocols in ``datasets_scripts.protocols``."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets_scripts.protocols import (
    BP4D_PARTS,
    SubjectLeakageError,
    assert_subject_independent,
    benchmark_folds,
    bosphorus_folds,
    bp4d_folds,
    bu3dfe_folds,
    bu4dfe_folds,
    fold_of_subject,
    leave_one_subject_out,
    subject_folds,
    train_test_subjects,
)


BU3DFE_SUBJECTS = [f"F{i:04d}" for i in range(1, 57)] + [f"M{i:04d}" for i in range(1, 45)]
BU4DFE_SUBJECTS = [f"F{i:03d}" for i in range(1, 59)] + [f"M{i:03d}" for i in range(1, 44)]
BOSPHORUS_SUBJECTS = [f"bs{i:03d}" for i in range(65)]
BP4D_SUBJECTS = [subject for part in BP4D_PARTS for subject in part]


def check_protocol(folds, subjects=None):
    """Every round of ``folds`` is subject independent, the folds are disjoint and (optionally) cover ``subjects``."""
    owner = fold_of_subject(folds)
    if subjects is not None:
        assert set(owner) == set(subjects)
    for fold in range(len(folds)):
        train, test = train_test_subjects(folds, fold)
        assert set(test) == set(folds[fold])
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(owner)


@settings(max_examples=40, deadline=None)
@given(
    subjects=st.sets(st.from_regex(r"[FM]\d{3}", fullmatch=True), min_size=2, max_size=40),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
)
def test_subject_folds_partition_subjects_without_leakage(subjects, data, seed):
    num_folds = data.draw(st.integers(2, len(subjects)))
    folds = subject_folds(sorted(subjects) * 2, num_folds, seed)  # repeated ids (one per example) count once
    assert len(folds) == num_folds
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    check_protocol(folds, subjects)
    assert folds == subject_folds(sorted(subjects, reverse=True), num_folds, seed)


def test_seed_changes_the_assignment():
    assert subject_folds(BU3DFE_SUBJECTS, 10, seed=0) != subject_folds(BU3DFE_SUBJECTS, 10, seed=1)


def test_bu3dfe_standard_protocol_draws_60_subjects_in_10_folds_of_6():
    folds = bu3dfe_folds(BU3DFE_SUBJECTS, seed=3)
    assert [len(fold) for fold in folds] == [6] * 10
    check_protocol(folds)
    chosen = set(fold_of_subject(folds))
    assert len(chosen) == 60 and chosen < set(BU3DFE_SUBJECTS)
    assert chosen != set(fold_of_subject(bu3dfe_folds(BU3DFE_SUBJECTS, seed=4)))


def test_bu3dfe_standard_protocol_keeps_all_subjects_when_fewer_than_60():
    check_protocol(bu3dfe_folds(BU3DFE_SUBJECTS[:12]), BU3DFE_SUBJECTS[:12])


def test_bosphorus_protocol_uses_every_subject_given():
    folds = bosphorus_folds(BOSPHORUS_SUBJECTS, seed=0)
    assert sorted(len(fold) for fold in folds) == [6] * 5 + [7] * 5
    check_protocol(folds, BOSPHORUS_SUBJECTS)


def test_bu4dfe_protocol_draws_60_of_101_subjects():
    folds = bu4dfe_folds(BU4DFE_SUBJECTS, seed=0)
    check_protocol(folds)
    assert len(fold_of_subject(folds)) == 60


def test_bp4d_fixed_folds_follow_me_graphau():
    folds = bp4d_folds()
    assert folds == [BP4D_PARTS[2], BP4D_PARTS[1], BP4D_PARTS[0]]
    check_protocol(folds, BP4D_SUBJECTS)
    assert len(BP4D_SUBJECTS) == 41
    train, test = train_test_subjects(folds, 0)
    assert set(test) == set(BP4D_PARTS[2]) and set(train) == set(BP4D_PARTS[0] + BP4D_PARTS[1])


def test_bp4d_folds_restrict_to_the_subjects_present_and_reject_others():
    assert bp4d_folds(["F001", "M011", "F007"]) == [("F007",), ("M011",), ("F001",)]
    with pytest.raises(ValueError, match="F099"):
        bp4d_folds(["F001", "F099"])


def test_leave_one_subject_out():
    folds = leave_one_subject_out(["b", "a", "c", "a"])
    assert folds == [("a",), ("b",), ("c",)]
    check_protocol(folds)


def test_assert_subject_independent_names_the_shared_subjects():
    assert_subject_independent(["F001", "F002"], ["M001"])
    with pytest.raises(SubjectLeakageError, match="F002, M001"):
        assert_subject_independent(["F001", "F002", "M001"], ["M001", "F002"])


def test_fold_of_subject_rejects_a_subject_in_two_folds():
    with pytest.raises(SubjectLeakageError, match="F001 is in folds 0 and 1"):
        fold_of_subject([("F001", "F002"), ("F001",)])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: benchmark_folds([], 2), "no subjects"),
        (lambda: benchmark_folds(["a", "b"], 3), "between 2 and the number of subjects"),
        (lambda: benchmark_folds(["a", "b"], 1), "between 2"),
        (lambda: benchmark_folds(["a", "b"], 2, num_subjects=0), "num_subjects"),
        (lambda: train_test_subjects([("a",), ("b",)], 2), "fold must be in 0..1"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()

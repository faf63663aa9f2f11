import csv
import os
import re
from dataclasses import replace

import numpy as np
import pytest

from datasets_scripts.synthetic_faces import (
    AU_LIST,
    AU_NAMES,
    BU4DFE_FOLDERS,
    BU4DFE_LANDMARK_DIR,
    EMOTION_CODES,
    EXPRESSIONS,
    LABELS_FILENAME,
    LANDMARK_GROUPS,
    PROTOTYPES,
    SyntheticConfig,
    SyntheticFaceGenerator,
    identity_subspace_fraction,
    write_bu3dfe_tree,
    write_bu4dfe_tree,
)
from modeling_facet.mesh_io import load_landmarks, load_scan


BU3DFE_NAME = re.compile(r"^([FM]\d{4})_(AN|DI|FE|HA|SA|SU|NE)(0[0-4])(WH|BL|AE|AM|IN|LA)_(F3D)\.(wrl|bnd)$")
# Coarse meshes keep the tests fast; everything else is the default (hard) benchmark.
SMALL = SyntheticConfig(grid_spacing_mm=(4.0, 4.5))


def scan_arrays(scan, info):
    return [scan.vertices, scan.faces, scan.landmarks, scan.landmark_indices, info["aus"]]


def assert_same_scans(first, second):
    for a, b in zip(scan_arrays(*first), scan_arrays(*second)):
        np.testing.assert_array_equal(a, b)


def test_public_tables_are_consistent():
    assert AU_NAMES == tuple(f"AU{n}" for n in AU_LIST) and len(AU_LIST) == 18
    assert list(EXPRESSIONS) == ["AN", "DI", "FE", "HA", "SA", "SU", "NE"] and EXPRESSIONS["HA"] == "happiness"
    assert set(PROTOTYPES) == set(EMOTION_CODES) == set(BU4DFE_FOLDERS)
    assert sorted(i for group in LANDMARK_GROUPS.values() for i in group) == list(range(83))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"spike_prob": 1.5}, "spike_prob"),
        ({"intensity_scales": (0.5, 0.4, 0.7, 1.0)}, "intensity_scales"),
        ({"crop_scale": (0.9, 1.2)}, "crop_scale"),
        ({"hole_radius_mm": (5.0, 1.0)}, "hole_radius_mm"),
        ({"sequence_frames": (1, 4)}, "sequence_frames"),
        ({"pose_sigma_deg": (1.0, 2.0)}, "pose_sigma_deg"),
        ({"holes_per_scan": -1.0}, "holes_per_scan"),
        ({"shape_family": "d"}, "shape_family"),
        ({"coactivation_prob": 2.0}, "coactivation_prob"),
        ({"asymmetry_sigma": -0.1}, "asymmetry_sigma"),
        ({"au_field_variation": -0.1}, "au_field_variation"),
        ({"intensity_floor": (0.0, 0.7), "intensity_ceiling": (0.6, 1.0)}, "intensity_floor"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**overrides)


def test_bad_requests_are_refused():
    generator = SyntheticFaceGenerator(SMALL)
    with pytest.raises(ValueError, match="unknown expression 'XX'"):
        generator.scan(0, "XX", 1)
    with pytest.raises(ValueError, match="neutral takes 0"):
        generator.scan(0, "NE", 2)
    with pytest.raises(ValueError, match="neutral takes 0"):
        generator.scan(0, "HA", 0)
    with pytest.raises(ValueError, match="six emotions"):
        generator.sequence(0, "NE")
    with pytest.raises(ValueError, match="at least 2 frames"):
        generator.sequence(0, "HA", num_frames=1)
    with pytest.raises(ValueError, match="subject index"):
        generator.subject(-1)


@pytest.mark.parametrize("family", ["a", "b", "c", "a+b"])
def test_same_seed_same_scans_in_any_order_and_other_seed_differs(family):
    config = replace(SMALL, shape_family=family)
    alone = SyntheticFaceGenerator(config).scan(7, "SU", 3)
    crowded = SyntheticFaceGenerator(config)
    for subject in range(9):
        crowded.scan(subject, "HA", 2)
    assert_same_scans(alone, crowded.scan(7, "SU", 3))
    assert SyntheticFaceGenerator(SMALL).subject(7) == crowded.subject(7)
    other = SyntheticFaceGenerator(replace(config, seed=1)).scan(7, "SU", 3)
    assert other[0].vertices.shape != alone[0].vertices.shape or not np.allclose(other[0].vertices, alone[0].vertices)
    frames, info = SyntheticFaceGenerator(config).sequence(3, "AN", num_frames=4)
    again, info_again = SyntheticFaceGenerator(config).sequence(3, "AN", num_frames=4)
    np.testing.assert_array_equal(info["aus"], info_again["aus"])
    np.testing.assert_array_equal(frames[-1].vertices, again[-1].vertices)


def test_subject_ids_count_each_gender_and_metadata_is_plausible():
    generator = SyntheticFaceGenerator(SMALL)
    subjects = [generator.subject(i) for i in range(30)]
    for gender in "FM":
        ids = [s["bu3dfe_id"] for s in subjects if s["gender"] == gender]
        assert ids == [f"{gender}{k:04d}" for k in range(1, len(ids) + 1)]
    assert {s["gender"] for s in subjects} == {"F", "M"}
    assert all(s["bu4dfe_id"] == s["bu3dfe_id"][0] + s["bu3dfe_id"][2:] for s in subjects)
    assert all(s["race"] in ("WH", "BL", "AE", "AM", "IN", "LA") and 18 <= s["age"] <= 70 for s in subjects)


def test_each_expression_is_driven_by_its_prototype():
    generator = SyntheticFaceGenerator(SMALL)
    for subject in range(4):
        assert not generator.scan(subject, "NE", 0)[1]["aus"].any()
        for code in EMOTION_CODES:
            core, optional = PROTOTYPES[code]
            aus = generator.scan(subject, code, 4)[1]["aus"]
            assert all(aus[AU_LIST.index(au)] > 0 for au in core)
            assert AU_LIST[int(np.argmax(aus))] in {**core, **optional}


def test_without_style_variation_only_prototype_aus_are_active():
    plain = replace(SMALL, optional_au_drop_prob=0.0, extra_au_prob=0.0, secondary_prob=0.0, coactivation_prob=0.0)
    for code in EMOTION_CODES:
        aus = SyntheticFaceGenerator(plain).scan(2, code, 3)[1]["aus"]
        active = {AU_LIST[i] for i in np.flatnonzero(aus)}
        assert active == set(PROTOTYPES[code][0]) | set(PROTOTYPES[code][1])


def test_activations_grow_with_intensity():
    generator = SyntheticFaceGenerator(SMALL)
    for code in EMOTION_CODES:
        aus = np.stack([generator.scan(1, code, level)[1]["aus"] for level in range(1, 5)])
        assert np.all(np.diff(np.linalg.norm(aus, axis=1)) > 0)
        assert np.all(np.diff(aus, axis=0) >= 0)


def test_sequence_rises_to_an_apex_and_returns_near_neutral():
    generator = SyntheticFaceGenerator(SMALL)
    frames, info = generator.sequence(0, "SU")
    low, high = SMALL.sequence_frames
    assert low <= len(frames) <= high and info["aus"].shape == (len(frames), len(AU_NAMES))
    curve, strength = info["intensity_curve"], np.linalg.norm(info["aus"], axis=1)
    assert info["apex_frame"] == int(np.argmax(strength)) == int(np.argmax(curve))
    assert curve.max() >= 0.75 and curve[0] <= 0.1 * curve.max() and curve[-1] <= 0.1 * curve.max()
    assert info["landmark_indices"].shape == (len(frames), 83)
    assert len({len(frame.vertices) for frame in frames}) == 1  # crop and holes are fixed over a sequence
    assert len(generator.sequence(0, "SU", num_frames=5)[0]) == 5


def test_scans_are_valid_meshes_with_landmarks_on_vertices():
    generator = SyntheticFaceGenerator(SMALL)
    for code, level in [("NE", 0), ("SU", 4), ("FE", 1)]:
        scan, info = generator.scan(3, code, level)
        assert np.isfinite(scan.vertices).all() and scan.vertices.dtype == np.float32
        assert scan.faces.min() >= 0 and scan.faces.max() < len(scan.vertices)
        assert np.unique(scan.faces).size == len(scan.vertices)  # every vertex is used
        np.testing.assert_array_equal(scan.landmarks, scan.vertices[info["landmark_indices"]])
        np.testing.assert_array_equal(scan.landmark_indices, info["landmark_indices"])
    default_size = len(SyntheticFaceGenerator(SyntheticConfig()).scan(0, "NE", 0)[0].vertices)
    assert 2500 <= default_size <= 6000


@pytest.mark.parametrize("family", ["a", "b", "c"])
def test_unposed_face_is_frontal_with_the_nose_tip_in_front(family):
    generator = SyntheticFaceGenerator(replace(SMALL.clean(), shape_family=family))
    scan, info = generator.scan(5, "NE", 0)
    assert int(np.argmax(scan.vertices[:, 2])) == info["nose_tip_index"]
    tip = scan.vertices[info["nose_tip_index"]]
    for axis, (low, high) in enumerate(SMALL.scanner_offset_mm):
        assert low <= tip[axis] <= high  # the scanner origin is not at the nose tip
    landmarks = scan.landmarks
    centre = {name: landmarks[list(rows)].mean(axis=0) for name, rows in LANDMARK_GROUPS.items()}
    assert centre["eye_x_negative"][0] < tip[0] < centre["eye_x_positive"][0]
    assert centre["brow_x_negative"][0] < tip[0] < centre["brow_x_positive"][0]
    heights = [centre[name][1] for name in ("contour", "mouth", "eye_x_negative", "brow_x_negative")]
    assert heights[0] < heights[1] < tip[1] < heights[2] < heights[3]


def test_holes_and_crop_remove_vertices():
    clean = SyntheticFaceGenerator(SMALL.clean()).scan(4, "HA", 2)[0]
    holey = SyntheticFaceGenerator(replace(SMALL.clean(), holes_per_scan=8.0)).scan(4, "HA", 2)[0]
    cropped = SyntheticFaceGenerator(replace(SMALL.clean(), crop_scale=(0.7, 0.7))).scan(4, "HA", 2)[0]
    assert len(holey.vertices) < len(clean.vertices) and len(cropped.vertices) < 0.8 * len(clean.vertices)


def test_low_intensity_is_subtle_and_subjects_differ():
    generator = SyntheticFaceGenerator(replace(SMALL.clean(), intensity_jitter=0.0, intensity_floor=(0.0, 0.0)))
    neutral = generator.scan(2, "NE", 0)[0].vertices
    for code in EMOTION_CODES:
        subtle = np.linalg.norm(generator.scan(2, code, 1)[0].vertices - neutral, axis=1).mean()
        strong = np.linalg.norm(generator.scan(2, code, 4)[0].vertices - neutral, axis=1).mean()
        assert subtle < 0.25 * strong
    first, second = generator.scan(2, "HA", 4), generator.scan(6, "HA", 4)
    assert not np.allclose(first[1]["aus"], second[1]["aus"])
    assert first[0].vertices.shape != second[0].vertices.shape or not np.allclose(first[0].vertices, second[0].vertices)


def test_default_scans_carry_pose_noise_and_identity_variation():
    clean = SyntheticFaceGenerator(SMALL.clean())
    noisy = SyntheticFaceGenerator(SMALL)
    poses = np.array([noisy.scan(subject, "AN", 3)[1]["pose_deg"] for subject in range(8)])
    assert np.abs(poses).max() > 2.0 and not clean.scan(0, "AN", 3)[1]["pose_deg"].any()
    widths = [np.ptp(clean.scan(subject, "NE", 0)[0].vertices[:, 0]) for subject in range(8)]
    assert np.ptp(widths) > 5.0


def read_labels(root):
    with open(os.path.join(root, LABELS_FILENAME), newline="") as handle:
        return list(csv.DictReader(handle))


def test_bu3dfe_tree_layout_labels_and_round_trip(tmp_path):
    root = tmp_path / "BU_3DFE"
    summary = write_bu3dfe_tree(root, 2, SMALL, progress=False)
    assert summary["models"] == 50 and len(summary["subjects"]) == 2
    generator = SyntheticFaceGenerator(SMALL)
    labels = {row["file"]: row for row in read_labels(root)}
    assert len(labels) == 50
    for subject in range(2):
        meta = generator.subject(subject)
        names = sorted(os.listdir(root / meta["bu3dfe_id"]))
        matches = [BU3DFE_NAME.match(name) for name in names]
        assert all(matches) and len(names) == 50
        assert {m.group(4) for m in matches} == {meta["race"]} and {m.group(1) for m in matches} == {meta["bu3dfe_id"]}
        codes = {(m.group(2), int(m.group(3))) for m in matches}
        assert codes == {("NE", 0)} | {(code, level) for code in EMOTION_CODES for level in range(1, 5)}
        for code, level in [("NE", 0), ("DI", 3)]:
            stem = f"{meta['bu3dfe_id']}_{code}{level:02d}{meta['race']}_F3D"
            scan, info = generator.scan(subject, code, level)
            read = load_scan(root / meta["bu3dfe_id"] / f"{stem}.wrl")
            np.testing.assert_allclose(read.vertices, scan.vertices, rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(read.faces, scan.faces)
            _, points, indices = load_landmarks(root / meta["bu3dfe_id"] / f"{stem}.bnd")
            np.testing.assert_array_equal(indices, info["landmark_indices"])
            np.testing.assert_allclose(points, scan.landmarks, atol=1e-5)
            row = labels[f"{meta['bu3dfe_id']}/{stem}.wrl"]
            assert (row["subject"], row["expression"], int(row["intensity"])) == (meta["bu3dfe_id"], code, level)
            assert (row["gender"], row["race"], int(row["age"])) == (meta["gender"], meta["race"], meta["age"])
            np.testing.assert_allclose([float(row[name]) for name in AU_NAMES], info["aus"], atol=1e-4)


def test_worker_processes_write_the_same_tree(tmp_path):
    write_bu3dfe_tree(tmp_path / "one", 2, SMALL, num_workers=1, progress=False)
    write_bu3dfe_tree(tmp_path / "two", 2, SMALL, num_workers=2, progress=False)
    assert read_labels(tmp_path / "one") == read_labels(tmp_path / "two")
    name = read_labels(tmp_path / "one")[-1]["file"]
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_bu4dfe_tree_layout_landmark_release_and_labels(tmp_path):
    config = replace(SMALL, sequence_frames=(3, 4))
    summary = write_bu4dfe_tree(tmp_path, 2, config, progress=False)
    assert summary["sequences"] == 12
    generator = SyntheticFaceGenerator(config)
    rows = read_labels(tmp_path)
    assert len(rows) == summary["frames"]
    for subject in range(2):
        meta = generator.subject(subject)
        assert sorted(os.listdir(tmp_path / meta["bu4dfe_id"])) == sorted(BU4DFE_FOLDERS.values())
        for code, folder in BU4DFE_FOLDERS.items():
            frames, info = generator.sequence(subject, code)
            names = sorted(os.listdir(tmp_path / meta["bu4dfe_id"] / folder))
            assert names == [f"{t:03d}.wrl" for t in range(len(frames))]
            landmark_folder = tmp_path / BU4DFE_LANDMARK_DIR / meta["bu4dfe_id"] / folder
            assert sorted(os.listdir(landmark_folder)) == [f"{t:03d}.bnd" for t in range(len(frames))]
            last = len(frames) - 1
            read = load_scan(tmp_path / meta["bu4dfe_id"] / folder / f"{last:03d}.wrl")
            np.testing.assert_allclose(read.vertices, frames[last].vertices, rtol=1e-5, atol=1e-4)
            _, points, indices = load_landmarks(landmark_folder / f"{last:03d}.bnd")
            np.testing.assert_array_equal(indices, info["landmark_indices"][last])
            lines = (landmark_folder / f"{last:03d}.bnd").read_text().splitlines()
            row_values = (int(indices[0]), *frames[last].landmarks[0].tolist())
            styles = [style for style in ("%.9g", "%.6f") if lines[0] == ("%d" + f" {style}" * 3) % row_values]
            assert len(lines) == 83 and len(styles) == 1
            frame_rows = [row for row in rows if row["file"].startswith(f"{meta['bu4dfe_id']}/{folder}/")]
            assert [int(row["frame"]) for row in frame_rows] == list(range(len(frames)))
            curve = [float(row["intensity"]) for row in frame_rows]
            np.testing.assert_allclose(curve, info["intensity_curve"], atol=1e-4)
            activations = [[float(row[name]) for name in AU_NAMES] for row in frame_rows]
            np.testing.assert_allclose(activations, info["aus"], atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Variation like real people's: identity that confounds expression, person-specific intensities, asymmetric and
# co-activated AUs, overlapping prototypes, and a second shape family.


def expression_displacement(generator, subject, code, level=4):
    """Per-vertex displacement of a clean scan from the subject's neutral scan (same vertices when clean)."""
    return generator.scan(subject, code, level)[0].vertices - generator.scan(subject, "NE", 0)[0].vertices


def test_au_field_variation_gives_each_person_their_own_expression_fields():
    base = replace(SMALL.clean(), intensity_jitter=0.0, resting_expression_sigma=0.0)  # the same vertices kept
    assert SyntheticConfig().au_field_variation == 0.0, "the default generator keeps one template of each AU field"
    template, varied = SyntheticFaceGenerator(base), SyntheticFaceGenerator(replace(base, au_field_variation=0.3))
    for subject in range(4):
        np.testing.assert_array_equal(*(g.scan(subject, "HA", 4)[1]["aus"] for g in (template, varied)))  # same labels
        for code in ("HA", "AN"):
            plain, own = (expression_displacement(g, subject, code).ravel() for g in (template, varied))
            cosine = plain @ own / np.linalg.norm(plain) / np.linalg.norm(own)
            assert 0.3 < cosine < 0.97, (subject, code, cosine)  # the same expression, deforming the face its own way
    again = SyntheticFaceGenerator(replace(base, au_field_variation=0.3))
    assert_same_scans(again.scan(2, "SU", 3), varied.scan(2, "SU", 3))


def test_identity_subspace_fraction_reaches_the_real_face_band_only_with_resting_expressions():
    quick = {"held_out": 10, "grid_points": 12}
    default = identity_subspace_fraction(SyntheticConfig(), **quick)
    assert set(default["expressions"]) == set(EMOTION_CODES) and set(default["aus"]) == set(AU_NAMES)
    assert 0.85 <= default["mean"] <= 0.95  # 0.88-0.92 in a real face model
    assert all(0.7 <= share <= 1.0 for share in default["expressions"].values())
    plain = identity_subspace_fraction(SyntheticConfig(resting_expression_sigma=0.0), **quick)
    assert plain["mean"] < default["mean"] - 0.1


def test_shape_family_changes_the_identity_basis_and_the_mesh():
    from datasets_scripts.synthetic_faces import _identity_samples, _principal_components

    def neutrals(family, subjects):
        return _identity_samples(SyntheticConfig(shape_family=family), subjects, grid_points=12)[0]

    def captured(components, samples):  # share of the samples' variation about their mean inside the span
        centred = samples - samples.mean(axis=0)
        return ((centred @ components.T) ** 2).sum() / (centred**2).sum()

    basis_a = _principal_components(neutrals("a", range(60)))
    same = captured(basis_a, neutrals("a", range(60, 120)))
    for family in "bc":
        assert captured(basis_a, neutrals(family, range(60, 120))) < same - 0.04, family
    basis_mixed = _principal_components(neutrals("a+b", range(60)))
    assert captured(basis_mixed, neutrals("c", range(60, 120))) < captured(basis_mixed, neutrals("a+b", range(60, 120)))
    meshes = {f: SyntheticFaceGenerator(replace(SMALL.clean(), shape_family=f)).scan(0, "NE", 0)[0] for f in "abc"}
    for first, second in ("ab", "ac", "bc"):
        size = min(len(meshes[first].faces), len(meshes[second].faces))
        assert not np.array_equal(meshes[first].faces[:size], meshes[second].faces[:size]), (first, second)
    assert SyntheticConfig().shape_family == "a+b", "by default the generator mixes two families"
    drawn = {SyntheticFaceGenerator(SMALL)._identity(index).shape.family for index in range(20)}
    assert drawn == {"a", "b"}
    for family, unseen in (("a+b", "c"), ("a", "b"), ("b", "a"), ("c", "a+b")):
        target = SyntheticConfig(shape_family=family).transfer_target()
        assert target.shape_family == unseen and target.grid_spacing_mm[1] < SyntheticConfig().grid_spacing_mm[0]


def test_aus_act_asymmetrically_per_subject():
    def left_right_ratios(config):
        generator = SyntheticFaceGenerator(replace(SMALL.clean(), intensity_jitter=0.0, **config))
        ratios = []
        for subject in range(6):
            tip_x = generator.scan(subject, "NE", 0)[0].vertices[generator.scan(subject, "NE", 0)[1]["nose_tip_index"], 0]
            scan = generator.scan(subject, "NE", 0)[0]
            moved = np.linalg.norm(expression_displacement(generator, subject, "HA"), axis=1)
            ratios.append(moved[scan.vertices[:, 0] > tip_x].sum() / moved[scan.vertices[:, 0] < tip_x].sum())
        return np.abs(np.log(ratios))

    assert left_right_ratios({"asymmetry_sigma": 0.0}).max() < 0.15
    assert left_right_ratios({}).max() > 0.2


def test_intensity_range_is_person_specific():
    config = replace(SMALL, intensity_jitter=0.0, expressivity_sigma=0.0, au_gain_sigma=0.0, optional_au_drop_prob=0.0,
                     extra_au_prob=0.0, secondary_prob=0.0, coactivation_prob=0.0)
    apex = [np.linalg.norm(SyntheticFaceGenerator(config).scan(s, "HA", 4)[1]["aus"]) for s in range(12)]
    assert np.ptp(apex) / np.mean(apex) > 0.2  # the ceiling differs between people
    fixed = replace(config, intensity_floor=(0.0, 0.0), intensity_ceiling=(1.0, 1.0))
    apex_fixed = [np.linalg.norm(SyntheticFaceGenerator(fixed).scan(s, "HA", 4)[1]["aus"]) for s in range(12)]
    np.testing.assert_allclose(apex_fixed, apex_fixed[0])


def test_coactivation_pulls_in_partner_aus():
    bare = replace(SMALL, optional_au_drop_prob=1.0, extra_au_prob=0.0, secondary_prob=0.0)
    gained = 0
    for code in EMOTION_CODES:
        core = set(PROTOTYPES[code][0])
        alone = SyntheticFaceGenerator(replace(bare, coactivation_prob=0.0)).scan(1, code, 3)[1]["aus"]
        paired = SyntheticFaceGenerator(replace(bare, coactivation_prob=1.0)).scan(1, code, 3)[1]["aus"]
        assert {AU_LIST[i] for i in np.flatnonzero(alone)} == core
        assert {AU_LIST[i] for i in np.flatnonzero(paired)} >= core
        gained += len({AU_LIST[i] for i in np.flatnonzero(paired)} - core)
    assert gained >= 4  # AU12 pulls in AU6, AU9 AU10, AU26 AU25, AU1 AU2, AU4 AU7...


def test_anger_fear_and_sadness_prototypes_overlap():
    def vector(code):
        core, optional = PROTOTYPES[code]
        return np.array([{**core, **optional}.get(au, 0.0) for au in AU_LIST])

    def cosine(first, second):
        return vector(first) @ vector(second) / np.linalg.norm(vector(first)) / np.linalg.norm(vector(second))

    assert all(4 in PROTOTYPES[code][0] for code in ("AN", "FE", "SA"))
    assert min(cosine("AN", "FE"), cosine("AN", "SA"), cosine("FE", "SA")) > 0.3
    assert cosine("HA", "SA") < 0.25

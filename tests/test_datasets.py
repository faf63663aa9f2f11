"""Tests of the benchmark builders in ``datasets_scripts`` against tiny trees written in each dataset's real layout."""

import csv
import json
import logging
import os
import shutil
from collections import Counter

import datasets
import numpy as np
import pytest
from PIL import Image

from datasets_scripts import common
from datasets_scripts.bosphorus import Bosphorus, parse_aus
from datasets_scripts.bp4d import BP4D, BP4D_AUS, read_au_occurrence
from datasets_scripts.bu3dfe import BU3DFE
from datasets_scripts.bu4dfe import BU4DFE
from datasets_scripts.common import LabelError, MissingDataError
from datasets_scripts.fourdme import EMOTIONS_4DME, FourDME
from datasets_scripts.protocols import BP4D_PARTS, bu3dfe_folds
from datasets_scripts.synthetic import SyntheticFaces
from datasets_scripts.synthetic_faces import AU_NAMES, SyntheticConfig, SyntheticFaceGenerator, write_bu4dfe_tree
from datasets_scripts.scan_writers import write_bnd, write_bnt, write_lm3, write_wrl
from modeling_facet.mesh_io import ScanFormatError


EMOTIONS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
LANDMARK_INDICES = np.array([0, 5, 10])


@pytest.fixture(autouse=True)
def quiet_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def tiny_face(offset=0.0):
    """A 4x4-vertex height-field bump (mm, +z towards the viewer): 16 vertices, 18 triangles."""
    x, y = np.meshgrid(np.linspace(-40, 40, 4), np.linspace(-50, 50, 4))
    z = 30 * np.exp(-(x**2 + y**2) / 800) + offset
    cells = (np.arange(3)[:, None] * 4 + np.arange(3)).ravel()
    lower, upper = np.column_stack([cells, cells + 1, cells + 5]), np.column_stack([cells, cells + 5, cells + 4])
    faces = np.concatenate([lower, upper])
    return np.column_stack([x.ravel(), y.ravel(), z.ravel()]), faces


def prepare(builder_class, data_dir, cache_dir, config_name, **kwargs):
    builder = builder_class(
        config_name=config_name, data_dir=None if data_dir is None else str(data_dir), cache_dir=str(cache_dir), **kwargs
    )
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def rows_by(dataset, *columns):
    return {tuple(row[column] for column in columns): row for row in dataset.to_list()}


# ------------------------------------------------------------------------------------------------------ BU-3DFE

BU3DFE_RACES = {"F0001": "WH", "M0002": "AE", "F0003": "BL"}
ALL_MODELS = [("NE", 0)] + [(code, level) for code in ("AN", "DI", "FE", "HA", "SA", "SU") for level in range(1, 5)]


def write_bu3dfe(root, races=BU3DFE_RACES, models=ALL_MODELS):
    """A BU-3DFE tree (bu3dfe.py's layout): per model the _F3D.wrl (template writer), its _F3D.bnd and a _RAW.pse; plus a stray file."""
    vertices, faces = tiny_face()
    for subject, race in races.items():
        folder = root / subject
        folder.mkdir(parents=True)
        (folder / "Thumbs.db").write_bytes(b"\0")
        for code, level in models:
            stem = f"{subject}_{code}{level:02d}{race}"
            write_wrl(folder / f"{stem}_F3D.wrl", vertices + level, faces, texture_url=f"{stem}_F3D.bmp")
            write_bnd(folder / f"{stem}_F3D.bnd", LANDMARK_INDICES, (vertices + level)[LANDMARK_INDICES])
            (folder / f"{stem}_RAW.pse").write_text("0 1.000000 2.000000 3.000000\n")
    return root


def test_bu3dfe_scans_parse_labels_metadata_and_landmarks(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE")
    builder, splits = prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=3)
    dataset = splits["train"]
    assert list(splits) == ["train"] and len(dataset) == 3 * 25
    assert dataset.features["expression"].names == EMOTIONS + ["neutral"]
    rows = rows_by(dataset, "subject", "expression", "intensity")
    angry = rows[("F0001", 0, 3)]
    assert angry["scan_path"] == str(root / "F0001" / "F0001_AN03WH_F3D.wrl")
    assert angry["landmark_path"] == str(root / "F0001" / "F0001_AN03WH_F3D.bnd")
    assert (angry["gender"], angry["race"], angry["age"]) == ("female", "White", None)
    np.testing.assert_allclose(angry["landmarks"], (tiny_face()[0] + 3)[LANDMARK_INDICES], atol=1e-4)
    assert rows[("M0002", 6, 0)]["race"] == "East Asian" and rows[("M0002", 6, 0)]["gender"] == "male"
    assert rows[("F0003", 5, 4)]["race"] == "Black"
    folds = {row["subject"]: row["fold"] for row in dataset.to_list()}
    assert sorted(folds.values()) == [0, 1, 2]


def test_bu3dfe_protocols_and_subject_independent_folds(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE")
    _, standard = prepare(BU3DFE, root, tmp_path / "cache", "scans", num_folds=3)
    rows = standard["train"].to_list()
    assert len(rows) == 3 * 12
    assert {row["intensity"] for row in rows} == {3, 4} and {row["expression"] for row in rows} == set(range(6))
    _, everything = prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all", num_folds=3)
    assert len(everything["train"]) == 3 * 24
    _, split = prepare(BU3DFE, root, tmp_path / "cache", "scans", num_folds=3, fold=1, seed=7)
    train, test = ({row["subject"] for row in split[name].to_list()} for name in ("train", "test"))
    assert test == set(bu3dfe_folds(list(BU3DFE_RACES), 3, seed=7)[1])
    assert train == set(BU3DFE_RACES) - test
    assert {row["fold"] for row in split["test"].to_list()} == {1}


def test_bu3dfe_standard_protocol_draws_60_of_more_subjects(tmp_path):
    races = {f"{'FM'[i % 2]}{i:04d}": "WH" for i in range(1, 62)}
    root = write_bu3dfe(tmp_path / "BU_3DFE", races=races, models=[("NE", 0), ("AN", 3)])
    _, splits = prepare(BU3DFE, root, tmp_path / "cache", "scans", seed=5)
    rows = splits["train"].to_list()
    assert len(rows) == 60 and {row["expression"] for row in rows} == {0}
    assert {row["subject"] for row in rows} == {s for fold in bu3dfe_folds(list(races), 10, seed=5) for s in fold}
    assert sorted(Counter(row["fold"] for row in rows).values()) == [6] * 10


def test_bu3dfe_inconsistent_race_names_the_files(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH"}, models=[("NE", 0), ("AN", 3)])
    os.rename(root / "F0001" / "F0001_AN03WH_F3D.wrl", root / "F0001" / "F0001_AN03LA_F3D.wrl")
    with pytest.raises(LabelError, match=r"F0001 has inconsistent race codes: LA in .*F0001_AN03LA_F3D.wrl; WH in"):
        prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2)


@pytest.mark.parametrize(
    "name, message",
    [("F0001_XX01WH_F3D.wrl", "unknown expression code 'XX'"), ("F0001_HA00WH_F3D.wrl", "intensity 00 is invalid for HA"),
     ("F0001_HA01ZZ_F3D.wrl", "unknown race code 'ZZ'"), ("M0009_HA01WH_F3D.wrl", "names subject M0009")],
)  # fmt: skip
def test_bu3dfe_bad_codes_name_the_file(tmp_path, name, message):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "WH"}, models=[("NE", 0)])
    shutil.copy(root / "F0001" / "F0001_NE00WH_F3D.wrl", root / "F0001" / name)
    with pytest.raises(LabelError, match=f"{name}: .*{message}"):
        prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2)


def test_bu3dfe_model_without_its_wrl_is_reported(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "WH"}, models=[("NE", 0), ("HA", 4)])
    os.remove(root / "M0002" / "M0002_HA04WH_F3D.wrl")
    message = r"M0002_HA04WH_F3D.wrl \(present: F3D.bnd, RAW.pse\).*under their license"
    with pytest.raises(MissingDataError, match=message):
        prepare(BU3DFE, root, tmp_path / "cache", "scans", num_folds=2)


def test_missing_data_dir_and_wrong_root(tmp_path):
    with pytest.raises(MissingDataError, match="BU-3DFE: no data_dir was given.*obtained from its owners"):
        prepare(BU3DFE, None, tmp_path / "cache", "scans")
    with pytest.raises(MissingDataError, match="does not exist"):
        prepare(BU4DFE, tmp_path / "nowhere", tmp_path / "cache", "sequences")
    root = write_bu3dfe(tmp_path / "release" / "BU_3DFE", races={"F0001": "WH"}, models=[("NE", 0)])
    with pytest.raises(MissingDataError, match=f"no subject folders named like F0001.*{root}.*pass it as data_dir"):
        prepare(BU3DFE, tmp_path / "release", tmp_path / "cache", "scans")
    with pytest.raises(MissingDataError, match="Sequences\\(2D\\+3D\\) does not exist"):
        prepare(BP4D, tmp_path / "release", tmp_path / "cache", "frames")


def test_bad_config_values_raise(tmp_path):
    with pytest.raises(ValueError, match="protocol must be one of"):
        BU3DFE(config_name="scans", cache_dir=str(tmp_path), protocol="paper")
    with pytest.raises(ValueError, match="3 fixed folds"):
        BP4D(config_name="frames", cache_dir=str(tmp_path), num_folds=10)
    with pytest.raises(ValueError, match="window_length and window_stride"):
        BU4DFE(config_name="sequences", cache_dir=str(tmp_path), window_length=0)
    with pytest.raises(ValueError, match="BU-3DFE level must be one of"):
        BU3DFE(config_name="scans", cache_dir=str(tmp_path), level="sequence")
    with pytest.raises(ValueError, match="Unknown render channel 'colour'"):
        BU3DFE(config_name="views", cache_dir=str(tmp_path), channels=["colour"])


# ------------------------------------------------------------------------------------------------------ views

SMALL_MODELS = [("NE", 0), ("AN", 3), ("HA", 4)]


@pytest.fixture
def render_calls(monkeypatch):
    """Counts the image processor's render calls made in this process."""
    calls = []
    original = common.FacetMeshImageProcessor.__call__

    def counting(self, scans, *args, **kwargs):
        calls.append(len(scans))
        return original(self, scans, *args, **kwargs)

    monkeypatch.setattr(common.FacetMeshImageProcessor, "__call__", counting)
    return calls


def test_views_shapes_cache_reuse_and_rerender_on_view_change(tmp_path, render_calls):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    settings = dict(protocol="all7", num_folds=2, views=[[0, 0], [30, 0]], image_size=16, channels=["shaded", "depth"])
    builder, splits = prepare(BU3DFE, root, tmp_path / "cache", "views", **settings)
    dataset = splits["train"].with_format("numpy")
    assert dataset.features["pixel_values"].shape == (2, 2, 16, 16)
    assert dataset["pixel_values"][:].shape == (6, 2, 2, 16, 16)
    assert np.ptp(dataset["pixel_values"][:]) > 0 and sum(render_calls) == 6
    render_calls.clear()
    again, splits = prepare(BU3DFE, root, tmp_path / "cache", "views", **settings)
    assert render_calls == [] and again.cache_dir == builder.cache_dir
    np.testing.assert_array_equal(splits["train"].with_format("numpy")["pixel_values"][:], dataset["pixel_values"][:])
    changed, splits = prepare(BU3DFE, root, tmp_path / "cache", "views", **{**settings, "image_size": 24})
    assert sum(render_calls) == 6 and changed.cache_dir != builder.cache_dir
    assert splits["train"].features["pixel_values"].shape == (2, 2, 24, 24)


def test_edited_data_tree_is_not_served_from_a_stale_cache(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    first, _ = prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2)
    shutil.copy(root / "F0001" / "F0001_AN03WH_F3D.wrl", root / "F0001" / "F0001_SU02WH_F3D.wrl")
    second, splits = prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2)
    assert second.cache_dir != first.cache_dir and len(splits["train"]) == 7


def corrupt(path):
    with open(path, "w") as handle:
        handle.write("#VRML V2.0 utf8\nGroup { }\n")


def test_corrupt_scan_stops_views_or_is_skipped_and_reported(tmp_path, caplog):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    bad = root / "M0002" / "M0002_HA04AE_F3D.wrl"
    corrupt(bad)
    settings = dict(protocol="all7", num_folds=2, views=[[0, 0]], image_size=16)
    with pytest.raises(ScanFormatError, match="M0002_HA04AE_F3D.wrl"):
        prepare(BU3DFE, root, tmp_path / "cache", "views", **settings)
    with caplog.at_level(logging.WARNING, logger="datasets_scripts.common"):
        builder, splits = prepare(BU3DFE, root, tmp_path / "cache", "views", skip_bad_files=True, **settings)
    assert len(splits["train"]) == 5 and str(bad) not in splits["train"]["scan_path"][:]
    assert [entry["path"] for entry in builder.bad_files] == [str(bad)]
    with open(builder.bad_files_report) as handle:
        assert json.load(handle) == builder.bad_files
    assert f"skipped 1 unreadable file(s) (skip_bad_files=True): {bad}" in caplog.text


def test_corrupt_landmark_file_is_reported_in_the_scans_config(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    (root / "F0001" / "F0001_NE00WH_F3D.bnd").write_text("0 1.0 2.0\n")
    with pytest.raises(ScanFormatError, match="F0001_NE00WH_F3D.bnd: landmark line 1 has 3 fields"):
        prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2)
    builder, splits = prepare(BU3DFE, root, tmp_path / "cache", "scans", protocol="all7", num_folds=2,
                              skip_bad_files=True)  # fmt: skip
    assert len(splits["train"]) == 5 and len(builder.bad_files) == 1


@pytest.mark.timeout(240)
def test_views_with_two_processes_match_one_process_and_report_bad_files(tmp_path):
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    settings = dict(config_name="views", data_dir=str(root), protocol="all7", num_folds=2, views=[[0, 0]], image_size=16)
    single = BU3DFE(cache_dir=str(tmp_path / "one"), **settings)
    single.download_and_prepare()
    double = BU3DFE(cache_dir=str(tmp_path / "two"), **settings)
    double.download_and_prepare(num_proc=2)
    one, two = (builder.as_dataset()["train"].with_format("numpy") for builder in (single, double))
    assert list(two["scan_path"][:]) == list(one["scan_path"][:])
    np.testing.assert_allclose(two["pixel_values"][:], one["pixel_values"][:], atol=1e-6)
    corrupt(root / "F0001" / "F0001_NE00WH_F3D.wrl")
    with pytest.raises(ScanFormatError, match="F0001_NE00WH_F3D.wrl"):
        BU3DFE(cache_dir=str(tmp_path / "three"), **settings).download_and_prepare(num_proc=2)
    skipping = BU3DFE(cache_dir=str(tmp_path / "three"), skip_bad_files=True, **settings)
    skipping.download_and_prepare(num_proc=2)
    assert len(skipping.as_dataset()["train"]) == 5 and len(skipping.bad_files) == 1


@pytest.mark.timeout(240)
def test_opengl_views_with_two_processes_after_rendering_in_this_process(tmp_path):
    """Forked workers of a process that already drew with EGL would hang; the pyrender backend spawns them."""
    root = write_bu3dfe(tmp_path / "BU_3DFE", races={"F0001": "WH", "M0002": "AE"}, models=SMALL_MODELS)
    settings = dict(config_name="views", data_dir=str(root), protocol="all7", num_folds=2, views=[[0, 0]],
                    image_size=16, backend="pyrender")  # fmt: skip
    single = BU3DFE(cache_dir=str(tmp_path / "one"), **settings)
    single.download_and_prepare()
    double = BU3DFE(cache_dir=str(tmp_path / "two"), **settings)
    double.download_and_prepare(num_proc=2)
    one, two = (builder.as_dataset()["train"].with_format("numpy")["pixel_values"][:] for builder in (single, double))
    assert one.shape == (6, 1, 5, 16, 16) and np.ptp(one) > 0
    np.testing.assert_allclose(two, one, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ Bosphorus

LM3_NAMES = ["Outer left eyebrow", "Nose tip", "Chin middle"]
EMOTION_STEMS = [f"E_{code}_0" for code in ("ANGER", "DISGUST", "FEAR", "HAPPY", "SADNESS", "SURPRISE")]
FULL_SESSION = ["N_N_0", "N_N_1", *EMOTION_STEMS, "LFAU_12L_0", "UFAU_2_0", "CAU_A26A12lw_0", "YR_R10_0", "PR_SU_0",
                "CR_RU_0", "O_EYE_0"]  # fmt: skip


def write_bosphorus_scan(folder, stem, nrows=6, ncols=5):
    """The bnt_grid fixture of test_mesh_io.py on a small grid (border invalid), with its .lm3 and 6x-size PNG."""
    r, c = np.mgrid[0:nrows, 0:ncols]
    x, y = np.round(-16 + 8.0 * c, 3), np.round(-20 + 8.0 * r, 3)
    z = np.round(25 * np.exp(-(x**2 + y**2) / 300), 3)
    valid = np.zeros((nrows, ncols), bool)
    valid[1:-1, 1:-1] = True
    x, y, z = (np.where(valid, plane, -1e9) for plane in (x, y, z))
    u, v = np.round((6 * c + 1) / (6 * ncols), 6), np.round((6 * nrows - 1 - 6 * r) / (6 * nrows), 6)
    write_bnt(folder / f"{stem}.bnt", nrows, ncols, -1e9, f"{stem}.png", x, y, z, u, v)
    points = np.column_stack([x[valid], y[valid], z[valid]])[[0, 4, -1]]
    write_lm3(folder / f"{stem}.lm3", LM3_NAMES, points)
    Image.new("RGB", (6 * ncols, 6 * nrows)).save(folder / f"{stem}.png")
    return points


def write_bosphorus(root):
    sessions = {"bs000": FULL_SESSION, "bs001": FULL_SESSION, "bs002": ["N_N_0", "E_ANGER_0", "E_HAPPY_0"]}
    for subject, stems in sessions.items():
        folder = root / subject
        folder.mkdir(parents=True)
        for stem in stems:
            write_bosphorus_scan(folder, f"{subject}_{stem}")
        (folder / f"{subject}_IGN_0.bnt").write_bytes(b"ignored")
    return root


def test_bosphorus_scans_parse_classes_codes_aus_and_landmarks(tmp_path):
    root = write_bosphorus(tmp_path / "BosphorusDB")
    _, splits = prepare(Bosphorus, root, tmp_path / "cache", "scans", protocol="all", num_folds=3)
    rows = {os.path.basename(row["scan_path"]): row for row in splits["train"].to_list()}
    assert len(rows) == 2 * 15 + 3 and not any("IGN" in name for name in rows)
    cau = rows["bs000_CAU_A26A12lw_0.bnt"]
    assert (cau["scan_class"], cau["code"], cau["aus"], cau["expression"]) == ("CAU", "A26A12lw", [26, 12], -1)
    assert rows["bs001_LFAU_12L_0.bnt"]["aus"] == [12] and rows["bs001_UFAU_2_0.bnt"]["aus"] == [2]
    assert rows["bs000_YR_R10_0.bnt"]["pose"] == "R10" and rows["bs000_CR_RU_0.bnt"]["pose"] == "RU"
    assert rows["bs000_O_EYE_0.bnt"]["occlusion"] == "EYE" and rows["bs000_O_EYE_0.bnt"]["pose"] is None
    assert rows["bs002_E_HAPPY_0.bnt"]["expression"] == EMOTIONS.index("happiness")
    neutral = rows["bs000_N_N_1.bnt"]
    assert (neutral["expression"], neutral["sample"], neutral["aus"]) == (6, 1, [])
    assert neutral["texture_path"] == str(root / "bs000" / "bs000_N_N_1.png")
    assert neutral["landmark_names"] == LM3_NAMES
    np.testing.assert_allclose(neutral["landmarks"], write_bosphorus_scan(tmp_path, "probe"), atol=1e-3)


def test_bosphorus_standard_protocol_keeps_subjects_with_all_six_emotions(tmp_path):
    root = write_bosphorus(tmp_path / "BosphorusDB")
    _, splits = prepare(Bosphorus, root, tmp_path / "cache", "scans", num_folds=2, fold=0)
    rows = splits["train"].to_list() + splits["test"].to_list()
    assert len(rows) == 12 and {row["scan_class"] for row in rows} == {"E"}
    assert {row["subject"] for row in rows} == {"bs000", "bs001"}
    assert not {row["subject"] for row in splits["train"]} & {row["subject"] for row in splits["test"]}


@pytest.mark.parametrize(
    "scan_class, code, aus",
    [("LFAU", "12", [12]), ("LFAU", "12L", [12]), ("LFAU", "12LW", [12]), ("UFAU", "43", [43]),
     ("CAU", "A22A25", [22, 25]), ("CAU", "A26A12lw", [26, 12])],
)  # fmt: skip
def test_parse_aus(scan_class, code, aus):
    assert parse_aus(scan_class, code) == aus


@pytest.mark.parametrize("scan_class, code", [("CAU", "22A25"), ("CAU", "A"), ("LFAU", "L12"), ("UFAU", "AU")])
def test_parse_aus_rejects_malformed_codes(scan_class, code):
    with pytest.raises(ValueError, match=code):
        parse_aus(scan_class, code)


@pytest.mark.parametrize(
    "stem, error, message",
    [("bs000_E_JOY_0", LabelError, "unknown emotion code 'JOY'"), ("bs000_Q_X_0", LabelError, "unknown scan class 'Q'"),
     ("bs000_CAU_12_0", LabelError, "combined-AU code '12'"), ("bs000_N_N", LabelError, "is not bs000_<class>")],
)  # fmt: skip
def test_bosphorus_bad_names_name_the_file(tmp_path, stem, error, message):
    root = write_bosphorus(tmp_path / "BosphorusDB")
    write_bosphorus_scan(root / "bs000", stem)
    with pytest.raises(error, match=f"{stem}.*{message}"):
        prepare(Bosphorus, root, tmp_path / "cache", "scans", num_folds=2)


def test_bosphorus_scan_without_range_file_is_reported(tmp_path):
    root = write_bosphorus(tmp_path / "BosphorusDB")
    os.remove(root / "bs001" / "bs001_E_FEAR_0.bnt")
    with pytest.raises(MissingDataError, match=r"bs001_E_FEAR_0.bnt \(present: .lm3, .png\)"):
        prepare(Bosphorus, root, tmp_path / "cache", "scans", num_folds=2)


def test_bosphorus_views_render_bnt_scans(tmp_path):
    root = write_bosphorus(tmp_path / "BosphorusDB")
    _, splits = prepare(Bosphorus, root, tmp_path / "cache", "views", num_folds=2, views=[[0, 0]], image_size=16)
    pixels = splits["train"].with_format("numpy")["pixel_values"][:]
    assert pixels.shape == (12, 1, 5, 16, 16) and np.ptp(pixels) > 0


# ------------------------------------------------------------------------------------------------------ BU-4DFE

BU4DFE_FRAMES = {
    ("F001", "Angry"): 3, ("F001", "Happy"): 5, ("M002", "Angry"): 4, ("M002", "Sad"): 2, ("F003", "Surprise"): 3,
}  # fmt: skip
FOLDER_EMOTIONS = {"Angry": "anger", "Happy": "happiness", "Sad": "sadness", "Surprise": "surprise"}


def write_bu4dfe(root, frames=BU4DFE_FRAMES):
    """A BU-4DFE tree (bu4dfe.py's layout: NNN.wrl + NNN.jpg, the viewer folder) and a partial BU4DFE_BND_V1.1 release."""
    vertices, faces = tiny_face()
    uv = vertices[:, :2] / 100 + 0.5
    for (subject, expression), count in frames.items():
        folder = root / subject / expression
        folder.mkdir(parents=True)
        for index in range(count):
            name = f"{index:03d}"
            write_wrl(folder / f"{name}.wrl", vertices + index, faces, uv=uv, texture_url=f"{name}.jpg", flavor="bu4dfe")
            (folder / f"{index:03d}.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "BU_WrlViewer_V2").mkdir()
    (root / "BU_WrlViewer_V2" / "viewer.exe").write_bytes(b"MZ")
    landmarks = root / "BU4DFE_BND_V1.1" / "F001" / "Happy"
    landmarks.mkdir(parents=True)
    for index in (0, 1, 3, 4):  # frame 002 has no landmark file
        points = vertices[LANDMARK_INDICES] + index
        write_bnd(landmarks / f"{index:03d}.bnd", LANDMARK_INDICES, points, number_format="%.9g")
    return root


def test_bu4dfe_sequences_enumerate_frames_and_landmarks(tmp_path):
    root = write_bu4dfe(tmp_path / "BU4DFE")
    _, splits = prepare(BU4DFE, root, tmp_path / "cache", "sequences", protocol="all", num_folds=3)
    rows = rows_by(splits["train"], "subject", "expression")
    assert len(rows) == 5 and splits["train"].features["expression"].names == EMOTIONS
    for (subject, folder), count in BU4DFE_FRAMES.items():
        row = rows[(subject, EMOTIONS.index(FOLDER_EMOTIONS[folder]))]
        assert row["frame_paths"] == [str(root / subject / folder / f"{i:03d}.wrl") for i in range(count)]
        assert row["gender"] == {"F": "female", "M": "male"}[subject[0]] and row["window_start"] == 0
    happy = rows[("F001", EMOTIONS.index("happiness"))]["landmark_paths"]
    release = root / "BU4DFE_BND_V1.1" / "F001" / "Happy"
    assert happy == [str(release / f"00{i}.bnd") if i != 2 else None for i in range(5)]
    assert rows[("M002", 0)]["landmark_paths"] == [None] * 4


def test_bu4dfe_sliding_windows(tmp_path):
    root = write_bu4dfe(tmp_path / "BU4DFE")
    _, splits = prepare(BU4DFE, root, tmp_path / "cache", "sequences", protocol="all", num_folds=3, window_length=3)
    rows = splits["train"].to_list()
    assert len(rows) == 1 + 3 + 2 + 1 + 1  # 3, 5, 4, 2 (shorter than the window: kept whole) and 3 frames
    happy = [row for row in rows if row["subject"] == "F001" and row["expression"] == EMOTIONS.index("happiness")]
    assert [row["window_start"] for row in happy] == [0, 1, 2]
    assert [os.path.basename(path) for path in happy[1]["frame_paths"]] == ["001.wrl", "002.wrl", "003.wrl"]
    assert happy[1]["landmark_paths"][1] is None and happy[1]["landmark_paths"][2].endswith("003.bnd")
    assert [len(row["frame_paths"]) for row in rows if row["subject"] == "M002" and row["expression"] == 4] == [2]
    _, strided = prepare(BU4DFE, root, tmp_path / "cache", "sequences", protocol="all", num_folds=3, window_length=2,
                         window_stride=2)  # fmt: skip
    assert len(strided["train"]) == 1 + 2 + 2 + 1 + 1


def test_bu4dfe_views_pad_short_sequences_to_num_frames(tmp_path):
    root = write_bu4dfe(tmp_path / "BU4DFE")
    settings = dict(protocol="all", num_folds=3, views=[[0, 0]], image_size=16, channels=["depth"], num_frames=4)
    _, splits = prepare(BU4DFE, root, tmp_path / "cache", "views", **settings)
    dataset = splits["train"].with_format("numpy")
    assert dataset.features["pixel_values"].shape == (4, 1, 1, 16, 16)
    rows = {len(row["frame_paths"]): index for index, row in enumerate(splits["train"].to_list())}
    short, long = dataset[rows[2]], dataset[rows[5]]
    assert short["frame_mask"].tolist() == [True, True, False, False] and long["frame_mask"].tolist() == [True] * 4
    assert np.all(short["pixel_values"][2:] == 0) and np.ptp(short["pixel_values"][:2]) > 0


def test_bu4dfe_unknown_or_empty_expression_folders(tmp_path):
    root = write_bu4dfe(tmp_path / "BU4DFE")
    (root / "F003" / "Neutral").mkdir()
    with pytest.raises(LabelError, match="F003/Neutral: unknown expression folder 'Neutral'"):
        prepare(BU4DFE, root, tmp_path / "cache", "sequences", num_folds=3)
    (root / "F003" / "Neutral").rmdir()
    for path in (root / "M002" / "Sad").iterdir():
        path.unlink()
    with pytest.raises(MissingDataError, match="M002/Sad"):
        prepare(BU4DFE, root, tmp_path / "cache", "sequences", num_folds=3)


# ------------------------------------------------------------------------------------------------------ BP4D

# (subject, task) -> (frame name format, mesh frames, first AU frame, AU rows, line ending)
BP4D_SEQUENCES = {
    ("F001", "T1"): ("{:04d}", 5, 2, 6, "\r\n"),  # AU frames 2..7 = meshes 1..6: meshes 5 and 6 are missing
    ("F001", "T4"): ("{:03d}", 3, 1, 3, "\n"),  # 3-digit frame names
    ("M011", "T2"): ("{:04d}", 4, 2, 3, "\n"),
    ("F007", "T8"): ("{:04d}", 3, 1, 3, "\n"),
}
CODED_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)


def write_au_csv(path, first_frame, num_rows, newline):
    """An AU_OCC file (bp4d.py's format): header 0..99, frame column, 9 in never-coded columns; AU1 on, AU2 unknown in row 2, AU12 on in row 3."""
    table = np.full((num_rows, 100), 9, dtype=int)
    table[:, 0] = np.arange(first_frame, first_frame + num_rows)
    table[:, list(CODED_AUS)] = 0
    table[:, 1] = 1
    table[1, 2] = 9
    table[2, 12] = 1
    lines = [",".join(map(str, range(100)))] + [",".join(map(str, row)) for row in table]
    path.write_bytes((newline.join(lines) + newline).encode())


def write_obj(path, vertices, faces):
    lines = ["mtllib frame.mtl"] + ["v %g %g %g" % tuple(v) for v in vertices] + ["vt 0.5 0.5"] * len(vertices)
    lines += ["f %d %d %d" % tuple(f + 1) for f in faces]
    path.write_text("\n".join(lines) + "\n")


def write_bp4d(root, sequences=BP4D_SEQUENCES):
    vertices, faces = tiny_face()
    occurrence = root / "AUCoding" / "AU_OCC"
    occurrence.mkdir(parents=True)
    for (subject, task), (name, count, first, rows, newline) in sequences.items():
        folder = root / "Sequences(2D+3D)" / subject / task
        folder.mkdir(parents=True)
        for index in range(count):
            write_obj(folder / (name.format(index) + ".obj"), vertices + index, faces)
        write_au_csv(occurrence / f"{subject}_{task}.csv", first, rows, newline)
    tracked = root / "3DFeatures" / "F001" / "T1"
    tracked.mkdir(parents=True)
    for index in (1, 2):
        points = "".join(f"{k} {k + 0.5} {index}\n" for k in range(83))
        (tracked / f"{index:04d}.tbnd").write_text("1.5 -2 0.25\n" + points)
    return root


def test_read_au_occurrence_handles_offsets_unknowns_and_crlf(tmp_path):
    write_au_csv(tmp_path / "F001_T1.csv", 2440, 3, "\r\n")
    frames, codes = read_au_occurrence(str(tmp_path / "F001_T1.csv"))
    assert frames.tolist() == [2440, 2441, 2442] and codes.shape == (3, 12)
    assert codes[:, BP4D_AUS.index(1)].tolist() == [1, 1, 1] and codes[1, BP4D_AUS.index(2)] == 9
    assert codes[2, BP4D_AUS.index(12)] == 1 and codes[0, BP4D_AUS.index(24)] == 0


@pytest.mark.parametrize(
    "edit, message",
    [(lambda text: text.replace("0,1,2,3", "frame,1,2,3", 1), "header must be 0,1,...,99"),
     (lambda text: text.rstrip("\n") + ",0\n", "line 4 has 101 fields"),
     (lambda text: text.replace("\n2,1,0", "\n2,1,5", 1), "line 2 codes AU2 as 5"),
     (lambda text: text.replace("\n3,", "\nx,", 1), "must be an integer")],
)  # fmt: skip
def test_read_au_occurrence_rejects_malformed_files(tmp_path, edit, message):
    path = tmp_path / "F001_T1.csv"
    write_au_csv(path, 2, 3, "\n")
    path.write_text(edit(path.read_text()))
    with pytest.raises(LabelError, match=f"F001_T1.csv: .*{message}"):
        read_au_occurrence(str(path))


def test_bp4d_frames_align_meshes_with_au_codes(tmp_path, caplog):
    root = write_bp4d(tmp_path / "BP4D")
    with caplog.at_level(logging.WARNING, logger="datasets_scripts.bp4d"):
        _, splits = prepare(BP4D, root, tmp_path / "cache", "frames")
    assert "F001_T1.csv: 2 AU-coded frame(s) have no mesh" in caplog.text
    rows = rows_by(splits["train"], "subject", "task", "frame")
    assert sorted(rows) == sorted(
        [("F001", "T1", n) for n in (1, 2, 3, 4)] + [("F001", "T4", n) for n in (0, 1, 2)]
        + [("M011", "T2", n) for n in (1, 2, 3)] + [("F007", "T8", n) for n in (0, 1, 2)]
    )  # fmt: skip
    second = rows[("F001", "T1", 2)]  # AU frame 3: AU2 coded 9
    assert second["scan_path"] == str(root / "Sequences(2D+3D)" / "F001" / "T1" / "0002.obj")
    assert second["aus"][BP4D_AUS.index(1)] == 1 and second["au_mask"][BP4D_AUS.index(1)] == 1
    assert second["aus"][BP4D_AUS.index(2)] == 0 and second["au_mask"][BP4D_AUS.index(2)] == 0
    assert rows[("F001", "T1", 3)]["aus"][BP4D_AUS.index(12)] == 1 and sum(rows[("F001", "T1", 1)]["aus"]) == 1
    assert rows[("F001", "T4", 2)]["scan_path"].endswith("T4/002.obj")
    assert second["expression"] == EMOTIONS.index("happiness") and rows[("F001", "T4", 0)]["expression"] == -1
    assert rows[("F007", "T8", 0)]["expression"] == EMOTIONS.index("disgust")
    assert second["landmark_path"].endswith("3DFeatures/F001/T1/0002.tbnd") and len(second["landmarks"]) == 83
    assert second["landmarks"][5] == [5.0, 5.5, 2.0] and rows[("F001", "T1", 3)]["landmarks"] == []


def test_bp4d_sequences_windows_and_fixed_folds(tmp_path):
    root = write_bp4d(tmp_path / "BP4D")
    _, splits = prepare(BP4D, root, tmp_path / "cache", "sequences", fold=0)
    assert {row["subject"] for row in splits["test"]} == {"F007"} and "F007" in BP4D_PARTS[2]
    assert {row["subject"] for row in splits["train"]} == {"F001", "M011"}
    rows = rows_by(splits["train"], "subject", "task")
    sequence = rows[("F001", "T1")]
    assert sequence["frame_numbers"] == [1, 2, 3, 4] and len(sequence["aus"]) == 4 and len(sequence["aus"][0]) == 12
    assert sequence["au_mask"][1][BP4D_AUS.index(2)] == 0 and sequence["landmark_paths"][2] is None
    _, windows = prepare(BP4D, root, tmp_path / "cache", "sequences", window_length=2)
    rows = windows["train"].to_list()
    assert len(rows) == 3 + 2 + 2 + 2
    first = [row for row in rows if (row["subject"], row["task"]) == ("F001", "T1")]
    assert [row["frame_numbers"] for row in first] == [[1, 2], [2, 3], [3, 4]]
    assert first[1]["aus"] == sequence["aus"][1:3] and {row["fold"] for row in rows} == {0, 1, 2}


def test_bp4d_missing_au_file_unknown_task_and_unknown_subject(tmp_path):
    root = write_bp4d(tmp_path / "BP4D")
    (root / "AUCoding" / "AU_OCC" / "F007_T8.csv").unlink()
    with pytest.raises(MissingDataError, match="1 sequence.*lack their AU occurrence file: .*F007_T8.csv.*license"):
        prepare(BP4D, root, tmp_path / "cache", "frames")
    write_au_csv(root / "AUCoding" / "AU_OCC" / "F007_T8.csv", 1, 3, "\n")
    (root / "Sequences(2D+3D)" / "F001" / "T9").mkdir()
    with pytest.raises(LabelError, match="T9: unknown task folder"):
        prepare(BP4D, root, tmp_path / "cache", "frames")
    (root / "Sequences(2D+3D)" / "F001" / "T9").rmdir()
    write_au_csv(root / "AUCoding" / "AU_OCC" / "F007_T8.csv", 100, 3, "\n")
    with pytest.raises(MissingDataError, match=r"none of the AU-coded frames of .*F007_T8.csv \(meshes 99..101\)"):
        prepare(BP4D, root, tmp_path / "cache", "frames")
    write_au_csv(root / "AUCoding" / "AU_OCC" / "F007_T8.csv", 1, 3, "\n")
    shutil.copytree(root / "Sequences(2D+3D)" / "F007", root / "Sequences(2D+3D)" / "F099")
    shutil.copy(root / "AUCoding" / "AU_OCC" / "F007_T8.csv", root / "AUCoding" / "AU_OCC" / "F099_T8.csv")
    with pytest.raises(LabelError, match="F099 are not among the 41 BP4D-Spontaneous subjects"):
        prepare(BP4D, root, tmp_path / "cache", "frames")


def test_bp4d_views_render_obj_frames(tmp_path):
    root = write_bp4d(tmp_path / "BP4D", sequences={("F001", "T1"): ("{:04d}", 3, 1, 3, "\n")})
    _, splits = prepare(BP4D, root, tmp_path / "cache", "views", views=[[0, 0]], image_size=16, channels=["depth"])
    assert splits["train"].with_format("numpy")["pixel_values"][:].shape == (3, 1, 1, 16, 16)


# ------------------------------------------------------------------------------------------------------ 4DME

FOURDME_LABELS = [
    ["clip_id", "subject", "onset", "apex", "offset", "aus", "emotions", "notes"],
    ["s01_c1", "S01", "1", "3", "5", "AU4+AU7", "Negative", ""],
    ["s01_c2", "S01", "0", "2", "", "L12", "Positive+Surprise", "macro"],
    ["s02_c1", "S02", "2", "4", "6", "", "others", ""],
    ["s03_c1", "S03", "0", "1", "2", "4+5", "Repression", ""],
]


def write_fourdme(root, labels=FOURDME_LABELS):
    vertices, faces = tiny_face()
    for row in labels[1:]:
        folder = root / row[1] / row[0]
        folder.mkdir(parents=True)
        for index in range(3):
            write_obj(folder / f"{index:03d}.obj", vertices + index, faces)
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(labels)
    return root


def test_fourdme_clips_multilabel_emotions_and_loso(tmp_path):
    root = write_fourdme(tmp_path / "4DME")
    _, splits = prepare(FourDME, root, tmp_path / "cache", "sequences", fold=1)
    assert {row["subject"] for row in splits["test"]} == {"S02"}
    rows = {row["clip_id"]: row for row in splits["train"].to_list() + splits["test"].to_list()}
    assert rows["s01_c1"]["emotions"] == [0, 1, 0, 0, 0] and rows["s01_c1"]["aus"] == [4, 7]
    assert rows["s01_c2"]["emotions"] == [1, 0, 1, 0, 0] and rows["s01_c2"]["aus"] == [12]
    assert (rows["s01_c2"]["onset"], rows["s01_c2"]["apex"], rows["s01_c2"]["offset"]) == (0, 2, -1)
    assert rows["s02_c1"]["emotions"][EMOTIONS_4DME.index("others")] == 1 and rows["s02_c1"]["aus"] == []
    assert rows["s03_c1"]["frame_paths"] == [str(root / "S03" / "s03_c1" / f"{i:03d}.obj") for i in range(3)]


def test_fourdme_bad_labels_and_missing_clips(tmp_path):
    bad = [row[:] for row in FOURDME_LABELS]
    bad[3][6] = "Joy"
    root = write_fourdme(tmp_path / "bad", bad)
    with pytest.raises(LabelError, match="labels.csv line 4: emotions 'Joy'"):
        prepare(FourDME, root, tmp_path / "cache", "sequences")
    root = write_fourdme(tmp_path / "missing")
    shutil.rmtree(root / "S02" / "s02_c1")
    with pytest.raises(MissingDataError, match="S02/s02_c1"):
        prepare(FourDME, root, tmp_path / "cache", "sequences")
    (root / "labels.csv").unlink()
    with pytest.raises(MissingDataError, match="labels.csv does not exist"):
        prepare(FourDME, root, tmp_path / "cache", "sequences")


# ------------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_builder_generates_its_own_tree_and_reuses_it(tmp_path, monkeypatch):
    _, splits = prepare(SyntheticFaces, None, tmp_path / "cache", "scans", num_subjects=2, protocol="all7", num_folds=2)
    rows = splits["train"].to_list()
    assert len(rows) == 2 * 25
    tree = os.path.dirname(os.path.dirname(rows[0]["scan_path"]))
    assert tree.startswith(str(tmp_path / "cache"))
    with open(os.path.join(tree, "synthetic_labels.csv")) as handle:
        labels = {row["file"]: row for row in csv.DictReader(handle)}
    meta = SyntheticFaceGenerator(SyntheticConfig(seed=0)).subject(0)
    for row in rows:
        label = labels[os.path.relpath(row["scan_path"], tree)]
        np.testing.assert_allclose(row["au_intensities"], [float(label[name]) for name in AU_NAMES], atol=1e-6)
        assert row["aus"] == [int(float(label[name]) > 0) for name in AU_NAMES]
        assert row["age"] == label["age"] and len(row["landmarks"]) == 83
    first = next(row for row in rows if row["subject"] == meta["bu3dfe_id"])
    assert first["gender"] == {"F": "female", "M": "male"}[meta["gender"]] and first["age"] == str(meta["age"])
    assert all(sum(row["aus"]) == 0 for row in rows if row["expression"] == 6)
    monkeypatch.setattr("datasets_scripts.synthetic.write_bu3dfe_tree", lambda *args, **kw: pytest.fail("regenerated"))
    _, again = prepare(SyntheticFaces, None, tmp_path / "cache", "views", num_subjects=2, num_folds=2, fold=0,
                       views=[[0, 0]], image_size=16)  # fmt: skip
    assert len(again["train"]) + len(again["test"]) == 2 * 12
    assert again["test"].with_format("numpy")["pixel_values"][:].shape == (12, 1, 5, 16, 16)


def test_another_generator_version_never_reuses_a_generated_tree_or_its_cache(tmp_path, monkeypatch):
    from datasets_scripts import synthetic

    def generated(**settings):
        builder = SyntheticFaces(config_name="scans", cache_dir=str(tmp_path), num_subjects=2, **settings)
        return builder.cache_dir, builder._data_root(None)

    monkeypatch.setattr(synthetic, "write_bu3dfe_tree", lambda root, *args: os.makedirs(root))
    before = generated()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    after = generated()
    assert after[0] != before[0], "the Arrow cache"
    assert after[1] != before[1] and os.path.isdir(after[1]), "the generated tree"


def test_synthetic_sequences_from_a_written_tree(tmp_path):
    root = tmp_path / "synthetic4d"
    write_bu4dfe_tree(root, 2, SyntheticConfig(sequence_frames=(3, 4)), progress=False)
    _, splits = prepare(SyntheticFaces, root, tmp_path / "cache", "sequences", num_folds=2)
    rows = splits["train"].to_list()
    assert len(rows) == 2 * 6 and {len(row["frame_paths"]) for row in rows} <= {3, 4}
    with open(root / "synthetic_labels.csv") as handle:
        labels = {row["file"]: row for row in csv.DictReader(handle)}
    for row in rows:
        frames = [labels[os.path.relpath(path, root)] for path in row["frame_paths"]]
        np.testing.assert_allclose(row["intensity_curve"], [float(frame["intensity"]) for frame in frames], atol=1e-6)
        activations = [[float(frame[name]) for name in AU_NAMES] for frame in frames]
        np.testing.assert_allclose(row["au_intensities"], activations, atol=1e-6)
        assert all(path is not None for path in row["landmark_paths"])
    _, views = prepare(SyntheticFaces, root, tmp_path / "cache", "sequence_views", num_folds=2, window_length=2,
                       window_stride=2, num_frames=2, views=[[0, 0]], image_size=16, channels=["depth"])  # fmt: skip
    pixels = views["train"].with_format("numpy")
    assert pixels["pixel_values"][:].shape == (len(views["train"]), 2, 1, 1, 16, 16) and len(views["train"]) >= 12


def test_synthetic_tree_without_sidecar_says_how_to_make_one(tmp_path):
    root = write_bu3dfe(tmp_path / "synthetic", races={"F0001": "WH"}, models=[("NE", 0)])
    with pytest.raises(MissingDataError, match="synthetic_labels.csv does not exist.*write_bu3dfe_tree"):
        prepare(SyntheticFaces, root, tmp_path / "cache", "scans", num_folds=2)
    with pytest.raises(ValueError, match="sequence configs take the protocols"):
        SyntheticFaces(config_name="sequences", cache_dir=str(tmp_path), protocol="all7")


def test_an_image_processors_render_settings_travel_whole_into_the_renders_and_the_cache_key(tmp_path):
    from modeling_facet import FacetMeshImageProcessor

    processor = FacetMeshImageProcessor(views=[[0, 0]], image_size=16, face_size=0.5, image_mean=0.3, image_std=0.2,
                                        num_frames=3, frame_sampling="window", window_stride=2)  # fmt: skip
    settings = processor.render_settings()

    def builder(config_name, **changes):
        return SyntheticFaces(config_name=config_name, cache_dir=str(tmp_path), render_settings={**settings, **changes})

    for config_name in ("views", "sequence_views"):
        assert builder(config_name)._image_processor().render_settings() == settings
        for name, value in [("image_mean", 0.0), ("face_size", 0.6), ("channels", ["depth"])]:
            assert builder(config_name, **{name: value}).cache_dir != builder(config_name).cache_dir, name
    # Frame sampling decides the pixels of sequences only, so it splits only their cache.
    assert builder("sequence_views", window_stride=1).cache_dir != builder("sequence_views").cache_dir
    assert builder("views", window_stride=1).cache_dir == builder("views").cache_dir


def test_each_label_vocabulary_has_one_home():
    from datasets_scripts import bosphorus, bp4d, bu3dfe, bu4dfe, bu_codes, fourdme, synthetic_faces
    from modeling_facet import FacetVLMConfig, prompts

    assert prompts.EXPRESSIONS == prompts.EMOTIONS + ("neutral",) and common.EMOTIONS is prompts.EMOTIONS
    assert tuple(FacetVLMConfig().id2label.values()) == prompts.EMOTIONS
    assert bu3dfe.EXPRESSION_CODES is synthetic_faces.EXPRESSIONS is bu_codes.EXPRESSION_CODES
    assert bu3dfe.RACE_CODES is bu_codes.RACE_CODES and synthetic_faces.RACES == tuple(bu_codes.RACE_CODES)
    assert synthetic_faces.BU4DFE_FOLDERS is bu_codes.BU4DFE_FOLDERS
    assert synthetic_faces.BU4DFE_LANDMARK_DIR is bu4dfe.LANDMARK_RELEASE
    assert set(bosphorus.EMOTION_CODES.values()) == set(bu4dfe.FOLDER_EXPRESSIONS.values()) == set(prompts.EMOTIONS)
    assert fourdme.EMOTIONS_4DME is prompts.MICRO_EXPRESSIONS
    assert prompts.BP4D_ACTION_UNITS == tuple(f"AU{number}" for number in bp4d.BP4D_AUS)
    assert bp4d.BP4D_AUS is prompts.BP4D_AUS


def test_one_registry_feeds_the_builders_info_training_and_publishing(tmp_path):
    from datasets_scripts.registry import BENCHMARKS, DATASETS, benchmark_of
    from training import data, dataset_repo, publish

    assert data.DATASETS is DATASETS and publish.benchmark_of is benchmark_of is dataset_repo.benchmark_of
    info = BU3DFE(config_name="scans", cache_dir=str(tmp_path)).info
    assert info.citation == BENCHMARKS["bu3dfe"].citation and info.homepage == BENCHMARKS["bu3dfe"].homepage
    assert info.license == "other"
    assert benchmark_of("synthetic_aus") is benchmark_of("synthetic4d") is BENCHMARKS["synthetic"]
    assert DATASETS["bp4d"].builder_class() is BP4D and DATASETS["bp4d"].benchmark is BENCHMARKS["bp4d"]
    assert data.multi_label_names("bp4d") == [f"AU{number}" for number in BP4D_AUS]
    assert data.multi_label_names("synthetic_aus") == list(AU_NAMES)
    assert data.multi_label_names("fourdme") == list(EMOTIONS_4DME)
    with pytest.raises(ValueError, match="Unknown dataset 'bu3d'"):
        benchmark_of("bu3d")

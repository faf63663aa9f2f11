"""Tests of the scan and landmark readers/writers in ``modeling_facet.mesh_io`` (fixtures are written to tmp_path)."""

import json
import os
import struct

import numpy as np
import pytest
import trimesh

from datasets_scripts.scan_writers import write_bnd, write_bnt, write_lm2, write_lm3, write_wrl
from modeling_facet.mesh_io import (
    FaceScan,
    FaceSequence,
    ScanFormatError,
    attach_landmarks,
    describe_scan,
    load_head_pose,
    load_landmarks,
    load_scan,
    load_sequence,
    read_bnt_grid,
)


ZMIN = -1e9
LM_NAMES = ["Outer left eyebrow", "Nose tip", "Chin middle"]


# ------------------------------------------------------------------------------------------------- fixture builders


def bnt_grid(nrows=12, ncols=10, z_only_invalid=(5, 4), border=True):
    """A Bosphorus-like grid: x = x0 + 0.76c, y = y0 + 0.76r (row 0 at the bottom), a bump for z, exact u/v."""
    r, c = np.mgrid[0:nrows, 0:ncols]
    x = np.round(-3.8 + 0.76 * c, 3)
    y = np.round(-4.56 + 0.76 * r, 3)
    z = np.round(20 * np.exp(-(x**2 + y**2) / 20), 3)
    u = np.round((6 * c + 1) / (6 * ncols), 6)
    v = np.round((6 * nrows - 1 - 6 * r) / (6 * nrows), 6)
    valid = np.ones((nrows, ncols), bool)
    if border:
        valid[[0, -1], :] = valid[:, [0, -1]] = False
        x, y, z = (np.where(valid, plane, ZMIN) for plane in (x, y, z))
    if z_only_invalid is not None:
        z[z_only_invalid] = ZMIN
        valid[z_only_invalid] = False
    return dict(nrows=nrows, ncols=ncols, zmin=ZMIN, imfile="bs000_N_N_0.png", x=x, y=y, z=z, u=u, v=v), valid


def write_fixture_files(folder) -> dict:
    """One small valid file per supported format; returns {extension: path}."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0.5, 0.25]], float)
    polygons = [[0, 1, 2, 3], [1, 4, 2]]
    paths = {".wrl": os.path.join(folder, "F0001_NE00WH_F3D.wrl"), ".bnt": os.path.join(folder, "bs000_N_N_0.bnt")}
    write_wrl(paths[".wrl"], vertices, polygons, uv=np.random.default_rng(0).random((6, 2)),
              uv_faces=[[0, 1, 2, 3], [5, 4, 2]], texture_url="F0001_NE00WH_F3D.bmp")
    grid, _ = bnt_grid(nrows=5, ncols=4, z_only_invalid=None)
    write_bnt(paths[".bnt"], **grid)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3], [1, 4, 2]], process=False)
    for ext in (".obj", ".ply", ".off", ".stl", ".glb"):
        paths[ext] = os.path.join(folder, "mesh" + ext)
        mesh.export(paths[ext])
    points = vertices[:3]
    paths[".bnd"] = os.path.join(folder, "F0001_NE00WH_F3D.bnd")
    write_bnd(paths[".bnd"], [0, 1, 2], points)
    paths[".lm3"] = os.path.join(folder, "bs000_N_N_0.lm3")
    write_lm3(paths[".lm3"], LM_NAMES, points)
    paths[".lm2"] = os.path.join(folder, "bs000_N_N_0.lm2")
    write_lm2(paths[".lm2"], LM_NAMES, points[:, :2] * 100)
    paths[".tbnd"] = os.path.join(folder, "0000.tbnd")
    write_text(paths[".tbnd"], tbnd_text(with_index=False))
    return paths


def write_text(path, text: str, newline="\n"):
    with open(path, "w", newline="") as handle:
        handle.write(text.replace("\n", newline))
    return str(path)


def tbnd_text(with_index: bool, separator=" ") -> str:
    points = np.arange(83 * 3, dtype=float).reshape(83, 3) / 8
    points[10] = 0  # an untracked point
    rows = [(f"{i + 1}{separator}" if with_index else "") + separator.join(f"{v:g}" for v in p) for i, p in enumerate(points)]
    return "\n".join(["-2.5 10 0.75", *rows]) + "\n"


def raises_scan_error(path, problem: str, call, *args, **kwargs) -> ScanFormatError:
    """Assert ``call`` raises ScanFormatError naming ``path`` with ``problem`` in its message."""
    with pytest.raises(ScanFormatError) as info:
        call(*args, **kwargs)
    assert str(path) in str(info.value)
    assert problem in info.value.problem
    return info.value


# ------------------------------------------------------------------------------------------------- VRML


HAND_WRITTEN_BU3DFE = """#VRML V2.0 utf8
#Tricorder Technology plc - 2000
DEF Tricorder_object Transform {
        children [
                Shape {
                        appearance Appearance {
                                texture ImageTexture {
                                        url "face#1_F3D.bmp"   # a '#' inside a string is not a comment
                                        repeatS FALSE
                                }
                        }
                        geometry IndexedFaceSet {
                                ccw TRUE
                                coord DEF pts Coordinate {
                                        point [
                                                0 0 0,
                                                1 0 0,   # trailing comment
                                                1 1 0,
                                                0 1 0,
                                                2 0 0,
                                                2 1 0,
                                                1.5 2 -1e-1
                                        ]
                                }
                                coordIndex [
                                        0 1 2 3 -1,
                                        1 4 5 6 2 -1,
                                        3 2 6 -1
                                ]
                                texCoord TextureCoordinate {
                                        point [
                                                0.1 0.1, 0.5 0.1, 0.5 0.5, 0.1 0.5,
                                                0.9 0.1, 0.9 0.5, 0.7 0.9, 0.45 0.55
                                        ]
                                }
                                texCoordIndex [
                                        0 1 2 3 -1,
                                        1 4 5 6 7 -1,
                                        3 2 6 -1
                                ]
                        }
                }
        ]
}
"""


def test_hand_written_bu3dfe_wrl_quads_pentagon_and_more_uvs_than_vertices(tmp_path):
    path = write_text(tmp_path / "F0001_AN01WH_F3D.wrl", HAND_WRITTEN_BU3DFE)
    scan = load_scan(path)
    assert scan.vertices.shape == (7, 3) and scan.vertices.dtype == np.float32
    np.testing.assert_allclose(scan.vertices[6], [1.5, 2, -0.1])
    np.testing.assert_array_equal(scan.faces, [[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 6], [1, 6, 2], [3, 2, 6]])
    assert scan.uv.shape == (8, 2)
    np.testing.assert_array_equal(scan.uv_faces, [[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 6], [1, 6, 7], [3, 2, 6]])
    assert scan.texture_path == os.path.join(str(tmp_path), "face#1_F3D.bmp")
    assert scan.metadata == {"polygons": 3, "format": "wrl"}
    assert scan.source_path == path


BU3DFE_TEMPLATE_FIXTURE = """#VRML V2.0 utf8
#Tricorder Technology plc - 2000
DEF Tricorder_object Transform {
        children [
                Shape {
                        appearance Appearance {
                                texture ImageTexture {
                                        url "F0001_AN01WH_F3D.bmp"
                                        repeatS FALSE
                                        repeatT FALSE
                                }
                        }
                        geometry IndexedFaceSet {
                                ccw TRUE
                                solid FALSE
                                convex TRUE
                                creaseAngle 1.57
                                coord Coordinate {
                                        point [
                                                -1 -2 0,
                                                3 -2 0.5,
                                                3 2 1,
                                                -1 2 0.25
                                        ]
                                }
                                coordIndex [
                                        0 1 2 -1,
                                        0 2 3 -1,
                                        0 1 2 3 -1
                                ]
                                texCoord TextureCoordinate {
                                        point [
                                                0.1 0.2,
                                                0.9 0.2,
                                                0.9 0.8,
                                                0.1 0.8,
                                                0.5 0.123457
                                        ]
                                }
                                texCoordIndex [
                                        0 1 2 -1,
                                        0 2 3 -1,
                                        4 1 2 3 -1
                                ]
                        }
                }
        ]
}
DEF Tricorder_Camera_Front Viewpoint {
        position 1 0 3
        orientation 0 0 0 3.14159
        fieldOfView 0.5
        description "Tricorder Front"
}
DEF Tricorder_Camera_Back Viewpoint {
        position 1 0 -2
        orientation 0 1 0 3.14159
        fieldOfView 0.5
        description "Tricorder Back"
}
DEF Tricorder_Camera_Left Viewpoint {
        position -9 0 0.5
        orientation 0 1 0 -1.5708
        fieldOfView 0.5
        description "Tricorder Left"
}
DEF Tricorder_Camera_Right Viewpoint {
        position 11 0 0.5
        orientation 0 1 0 1.5708
        fieldOfView 0.5
        description "Tricorder Right"
}
DEF Tricorder_Camera_Top Viewpoint {
        position 1 10 0.5
        orientation 1 0 0 -1.5708
        fieldOfView 0.5
        description "Tricorder Top"
}
DEF Tricorder_Camera_Bottom Viewpoint {
        position 1 -10 0.5
        orientation 1 0 0 1.5708
        fieldOfView 0.5
        description "Tricorder Bottom"
}
"""


def test_write_wrl_bu3dfe_follows_the_template_byte_for_byte_and_reads_back(tmp_path):
    vertices = np.array([[-1, -2, 0], [3, -2, 0.5], [3, 2, 1], [-1, 2, 0.25]])
    faces = [[0, 1, 2], [0, 2, 3], [0, 1, 2, 3]]
    uv = np.array([[0.1, 0.2], [0.9, 0.2], [0.9, 0.8], [0.1, 0.8], [0.5, 0.1234567]])
    uv_faces = [[0, 1, 2], [0, 2, 3], [4, 1, 2, 3]]
    path = tmp_path / "F0001_AN01WH_F3D.wrl"
    write_wrl(path, vertices, faces, uv=uv, uv_faces=uv_faces, texture_url="F0001_AN01WH_F3D.bmp")
    assert path.read_bytes() == BU3DFE_TEMPLATE_FIXTURE.encode("ascii")
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(scan.uv_faces, [[0, 1, 2], [0, 2, 3], [4, 1, 2], [4, 2, 3]])
    np.testing.assert_allclose(scan.vertices, vertices)


def test_write_wrl_takes_an_array_of_triangles(tmp_path):
    vertices = np.random.default_rng(1).normal(size=(6, 3))
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    write_wrl(tmp_path / "a.wrl", vertices, faces)
    scan = load_scan(tmp_path / "a.wrl")
    np.testing.assert_array_equal(scan.faces, faces)
    np.testing.assert_allclose(scan.vertices, vertices, rtol=1e-5, atol=1e-5)  # %g keeps 6 significant digits
    assert scan.uv is None and scan.texture_path is None
    with pytest.raises(ValueError, match="faces must be"):
        write_wrl(tmp_path / "b.wrl", vertices, [])


HAND_WRITTEN_BU4DFE = """#VRML V2.0 utf8
Group {
 children [
  Shape {
   appearance Appearance { texture ImageTexture { url [ "000.jpg" ] } }
   geometry IndexedFaceSet {
    coord Coordinate {
     point [
      -25.5 10 3,
      -20 10 3,
      -20 15 3.5,
      -25.5 15 2
     ]
    }
    coordIndex [
     0, 1, 2, -1,
     0, 2, 3, -1,
    ]
    texCoord TextureCoordinate {
     point [
      0.1 0.2,
      0.3 0.2,
      0.3 0.4,
      0.1 0.4
     ]
    }
   }
  }
 ]
}
"""


def test_hand_written_bu4dfe_wrl_group_commas_and_per_vertex_uv(tmp_path):
    path = write_text(tmp_path / "000.wrl", HAND_WRITTEN_BU4DFE)
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.faces, [[0, 1, 2], [0, 2, 3]])
    assert scan.uv.shape == (4, 2) and scan.uv_faces is None
    assert scan.texture_path == os.path.join(str(tmp_path), "000.jpg")


def test_write_wrl_bu4dfe_flavor(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    uv = vertices[:, :2] * 0.5
    path = tmp_path / "001.wrl"
    write_wrl(path, vertices, [[0, 1, 2, 3]], uv=uv, texture_url="001.jpg", flavor="bu4dfe")
    text = path.read_text()
    assert text.startswith("#VRML V2.0 utf8\nGroup {\n") and "Transform" not in text
    assert "texCoordIndex" not in text and "Viewpoint" not in text
    assert " " * 40 + "0, 1, 2, 3, -1,\n" in text
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(scan.uv, uv)
    assert scan.uv_faces is None
    with pytest.raises(ValueError, match="uv_faces"):
        write_wrl(path, vertices, [[0, 1, 2, 3]], uv=uv, uv_faces=[[0, 1, 2, 3]], flavor="bu4dfe")
    with pytest.raises(ValueError, match="flavor"):
        write_wrl(path, vertices, [[0, 1, 2]], flavor="vrml1")


def test_wrl_with_several_shapes_is_merged(tmp_path):
    shape = HAND_WRITTEN_BU4DFE[HAND_WRITTEN_BU4DFE.index("  Shape {") : HAND_WRITTEN_BU4DFE.rindex(" ]")]
    text = HAND_WRITTEN_BU4DFE.replace(shape, shape + shape)
    scan = load_scan(write_text(tmp_path / "two.wrl", text))
    assert scan.vertices.shape == (8, 3)
    np.testing.assert_array_equal(scan.faces, [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    np.testing.assert_array_equal(scan.uv_faces, scan.faces)
    assert scan.metadata["polygons"] == 4


# ------------------------------------------------------------------------------------------------- Bosphorus .bnt


def test_bnt_drops_invalid_points_and_keeps_grid_order(tmp_path):
    grid, valid = bnt_grid()
    path = tmp_path / "bs000_N_N_0.bnt"
    write_bnt(path, **grid)
    assert path.stat().st_size == 18 + len("bs000_N_N_0.png") + 8 * 5 * 12 * 10
    scan = load_scan(path)
    assert len(scan.vertices) == 10 * 8 - 1 == valid.sum()
    # 9x7 interior quads give 126 triangles; the 4 quads around the z-only invalid point keep 1 triangle each.
    assert len(scan.faces) == 126 - 4
    grid_index = scan.metadata["grid_index"]
    assert valid.ravel()[grid_index].all()
    assert valid.ravel()[grid_index[scan.faces]].all()  # no triangle uses an invalid point
    rows = grid_index // 10
    np.testing.assert_allclose(scan.vertices[:, 1], np.round(-4.56 + 0.76 * rows, 3), atol=1e-5)  # y grows with row
    assert np.all(np.diff(scan.vertices[:, 1]) >= 0)
    corners = scan.vertices[scan.faces]
    normals_z = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[:, 2]
    assert (normals_z > 0).all()  # counter-clockwise seen from the viewer (+z)
    np.testing.assert_allclose(scan.uv, np.stack([grid["u"].ravel(), grid["v"].ravel()], 1)[grid_index], atol=1e-7)
    assert scan.texture_path == os.path.join(str(tmp_path), "bs000_N_N_0.png")
    assert (scan.metadata["nrows"], scan.metadata["ncols"], scan.metadata["zmin"]) == (12, 10, ZMIN)


def test_bnt_header_bytes_are_the_documented_layout(tmp_path):
    grid, _ = bnt_grid(nrows=3, ncols=2, z_only_invalid=None, border=False)
    path = tmp_path / "bs001_E_HAPPY_0.bnt"
    write_bnt(path, **grid)
    data = path.read_bytes()
    name = b"bs000_N_N_0.png"
    assert data[:14] == b"\x03\x00\x02\x00" + struct.pack("<d", ZMIN) + bytes([len(name), 0])
    assert data[14 : 14 + len(name)] == name
    assert data[14 + len(name) : 18 + len(name)] == (30).to_bytes(4, "little")
    assert data[18 + len(name) :] == np.concatenate([grid[k].ravel() for k in "xyzuv"]).astype("<f8").tobytes()


def test_bnt_round_trip_is_byte_identical(tmp_path):
    grid, _ = bnt_grid()
    first, second = tmp_path / "first.bnt", tmp_path / "second.bnt"
    write_bnt(first, **grid)
    read = read_bnt_grid(first)
    assert read["x"].shape == (12, 10) and read["imfile"] == grid["imfile"]
    write_bnt(second, **read)
    assert second.read_bytes() == first.read_bytes()


# ------------------------------------------------------------------------------------------------- landmarks


LM3_TEXT = """# 3D Landmark File

3 landmarks:
Outer left eyebrow
-45.123 30.5 10
Nose tip
0.001 -2 49.25
Chin middle
1 -80 12.5
"""
LM3_STAR_TEXT = LM3_TEXT.replace("\n\n3 landmarks:", "\n*\nscanned 2008\noperator: A\n\n3 landmarks:")  # Savran's info block
LM2_TEXT = """# 2D Landmark File

3 landmarks

Labels:
Outer left eyebrow
Nose tip
Chin middle

2D Image coordinates:
120.5 300
558 649.167
560 1200
"""
LM_POINTS = [[-45.123, 30.5, 10], [0.001, -2, 49.25], [1, -80, 12.5]]


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
@pytest.mark.parametrize("text", [LM3_TEXT, LM3_STAR_TEXT], ids=["plain", "star-header"])
def test_lm3_hand_written(tmp_path, newline, text):
    names, points, vertex_indices = load_landmarks(write_text(tmp_path / "a.lm3", text, newline))
    assert names == LM_NAMES and vertex_indices is None
    np.testing.assert_allclose(points, LM_POINTS, rtol=1e-6)


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_lm2_hand_written_gives_2d_points(tmp_path, newline):
    names, points, vertex_indices = load_landmarks(write_text(tmp_path / "a.lm2", LM2_TEXT, newline))
    assert names == LM_NAMES and vertex_indices is None
    np.testing.assert_allclose(points, [[120.5, 300], [558, 649.167], [560, 1200]], rtol=1e-6)


def test_lm3_and_lm2_writers_match_the_real_layout(tmp_path):
    write_lm3(tmp_path / "a.lm3", LM_NAMES, LM_POINTS)
    assert (tmp_path / "a.lm3").read_bytes() == LM3_TEXT.replace("\n", "\r\n").encode()
    write_lm2(tmp_path / "a.lm2", LM_NAMES, [[120.5, 300], [558, 649.167], [560, 1200]], newline="\n")
    assert (tmp_path / "a.lm2").read_text() == LM2_TEXT
    assert len(LM3_TEXT.splitlines()) == 3 + 2 * 3 and len(LM2_TEXT.splitlines()) == 7 + 2 * 3


BND_POINTS = np.array([[-31.402517, -4.50638, 0.000006], [-17.20431, 12.5, -3.25]])


@pytest.mark.parametrize(
    "text",
    [
        "12 -31.402517 -4.50638 6e-006\n4097 -17.20431 12.5 -3.25\n",  # %.9g with an MSVC exponent
        "12 -31.402517 -4.506380 0.000006\n4097 -17.204310 12.500000 -3.250000\n",  # %.6f
        "12\t\t-31.402517 -4.50638 6e-06\r\n\r\n4097  -17.20431\t12.5 -3.25",  # tabs, CRLF, blank line, no final newline
    ],
    ids=["%.9g", "%.6f", "whitespace"],
)
def test_bnd_number_styles(tmp_path, text):
    names, points, vertex_indices = load_landmarks(write_text(tmp_path / "000.bnd", text))
    assert names is None and vertex_indices.dtype == np.int64
    np.testing.assert_array_equal(vertex_indices, [12, 4097])
    np.testing.assert_allclose(points, BND_POINTS, rtol=1e-6)


@pytest.mark.parametrize("number_format", ["%.6f", "%.9g"])
def test_write_bnd_round_trip(tmp_path, number_format):
    write_bnd(tmp_path / "a.bnd", [12, 4097], BND_POINTS, number_format=number_format)
    first = (tmp_path / "a.bnd").read_text().splitlines()[0]
    assert first == ("12 -31.402517 -4.506380 0.000006" if number_format == "%.6f" else "12 -31.402517 -4.50638 6e-06")
    _, points, vertex_indices = load_landmarks(tmp_path / "a.bnd")
    np.testing.assert_array_equal(vertex_indices, [12, 4097])
    np.testing.assert_allclose(points, BND_POINTS, rtol=1e-6)


@pytest.mark.parametrize("with_index,separator", [(False, " "), (True, " "), (True, ", ")])
def test_tbnd_takes_the_last_three_numbers(tmp_path, with_index, separator):
    path = write_text(tmp_path / "0000.tbnd", tbnd_text(with_index, separator))
    names, points, vertex_indices = load_landmarks(path)
    assert names is None and vertex_indices is None and points.shape == (83, 3)
    expected = np.arange(83 * 3).reshape(83, 3) / 8
    expected[10] = 0
    np.testing.assert_allclose(points, expected)
    np.testing.assert_allclose(load_head_pose(path), [-2.5, 10, 0.75])


def test_sibling_landmarks_are_attached(tmp_path):
    paths = write_fixture_files(tmp_path)
    scan = load_scan(paths[".wrl"], landmarks=True)
    np.testing.assert_array_equal(scan.landmark_indices, [0, 1, 2])
    np.testing.assert_allclose(scan.landmarks, scan.vertices[scan.landmark_indices])
    grid, _ = bnt_grid()
    write_bnt(paths[".bnt"], **grid)
    scan = load_scan(paths[".bnt"])
    assert scan.landmarks is None
    chosen = scan.vertices[[0, 30, 60]]
    write_lm3(paths[".lm3"], LM_NAMES, chosen)
    attach_landmarks(scan)
    assert scan.landmark_names == LM_NAMES
    np.testing.assert_array_equal(scan.landmarks, chosen)  # lm3 points lie exactly on .bnt vertices
    scan = load_scan(paths[".obj"], landmarks=paths[".tbnd"])
    assert scan.landmarks.shape == (83, 3)
    np.testing.assert_allclose(scan.metadata["head_pose"], [-2.5, 10, 0.75])
    raises_scan_error(paths[".lm2"], "2D landmarks", attach_landmarks, scan, paths[".lm2"])
    raises_scan_error(paths[".obj"], "no landmark file", attach_landmarks, scan)


def test_bnd_index_beyond_the_vertex_count_is_refused(tmp_path):
    paths = write_fixture_files(tmp_path)
    write_bnd(paths[".bnd"], [0, 5], np.zeros((2, 3)))  # the wrl fixture has 5 vertices
    error = raises_scan_error(paths[".bnd"], "landmark vertex index 5 out of range", load_scan, paths[".wrl"], landmarks=True)
    assert paths[".wrl"] in error.problem


@pytest.mark.parametrize(
    "name,text,problem",
    [
        ("a.lm3", "# 3D Landmark File\n\n3 landmarks:\nNose tip\n1 2 3\n", "announces 3 landmarks"),
        ("a.lm3", "# 3D Landmark File\n\nNose tip\n1 2 3\n", "'<N> landmarks'"),
        ("a.lm3", "# 3D Landmark File\n\n1 landmarks:\nNose tip\n1 2\n", "has 2 fields"),
        ("a.lm3", "# 3D Landmark File\n\n0 landmarks:\n", "no landmarks"),
        ("a.lm3", "# 3D Landmark File\n\n1 landmarks:\nNose tip\n1 nan 3\n", "NaN"),
        ("a.lm2", "# 2D Landmark File\n\n1 landmarks\n\nNose tip\n\n1 2\n", "Labels:"),
        ("a.bnd", "", "no landmarks"),
        ("a.bnd", "1 2 3\n", "has 3 fields"),
        ("a.bnd", "-1 2 3 4\n", "non-negative integers"),
        ("a.bnd", "1.5 2 3 4\n", "non-negative integers"),
        ("a.bnd", "1 2 x 4\n", "not a number"),
        ("a.tbnd", "0 0 0\n1 2 3\n", "expected a head-pose line and 83"),
        ("a.tbnd", "0 0\n" + "1 2 3\n" * 83, "numbers line 1 has 2 fields"),
        ("a.tbnd", "0 0 0\n" + "1, 2, 3e39\n" * 83, "beyond the float32 range"),
    ],
)
def test_bad_landmark_files(tmp_path, name, text, problem):
    path = write_text(tmp_path / name, text)
    raises_scan_error(path, problem, load_landmarks, path)


def test_landmark_file_undecodable_missing_or_unsupported(tmp_path):
    path = tmp_path / "a.lm3"
    path.write_bytes(b"# 3D Landmark File\n\n1 landmarks:\n\xff\xfe\n1 2 3\n")
    raises_scan_error(path, "undecodable bytes", load_landmarks, path)
    raises_scan_error(tmp_path / "b.lm3", "does not exist", load_landmarks, tmp_path / "b.lm3")
    raises_scan_error(tmp_path / "b.pts", "unsupported extension", load_landmarks, tmp_path / "b.pts")


# ------------------------------------------------------------------------------------------------- bad scans


def bnt_bytes(**overrides) -> bytes:
    grid, _ = bnt_grid(nrows=4, ncols=3, z_only_invalid=None, border=False)
    grid.update(overrides)
    name = grid["imfile"].encode()
    data = np.concatenate([np.ravel(grid[k]) for k in "xyzuv"]).astype("<f8")
    return struct.pack("<HHdH", grid["nrows"], grid["ncols"], grid["zmin"], len(name)) + name + struct.pack("<I", data.size) + data.tobytes()


def test_bad_bnt_files(tmp_path):
    good = bnt_bytes()
    cases = {
        "truncated": (good[:-5], "truncated"),
        "header_truncated": (good[:10], "truncated"),
        "name_truncated": (good[:20], "truncated"),
        "padded": (good + b"\0\0\0", "trailing bytes"),
        "n_mismatch": (good[:29] + struct.pack("<I", 59) + good[33:], "expected 5*4*3 = 60"),
        "huge_header": (struct.pack("<HH", 60000, 60000) + good[4:], "more than max_points"),
        "all_invalid": (bnt_bytes(x=np.full(12, ZMIN)), "no valid point"),
        "single_row": (bnt_bytes(nrows=1, ncols=12), "no faces"),
        "nan": (bnt_bytes(z=np.full(12, np.nan)), "NaN"),
        "bad_name": (good.replace(b"N_0.png", b"N_\xff.png"), "undecodable bytes"),
    }
    assert good[14 + 15 : 18 + 15] == struct.pack("<I", 60)
    for stem, (data, problem) in cases.items():
        path = tmp_path / f"{stem}.bnt"
        path.write_bytes(data)
        raises_scan_error(path, problem, load_scan, path)
    path = tmp_path / "limit.bnt"
    path.write_bytes(good)
    raises_scan_error(path, "announces 4x3 = 12 points, more than max_points=11", load_scan, path, max_points=11)


def test_huge_bnt_header_is_refused_before_allocating(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.bnt"
    path.write_bytes(struct.pack("<HHdH", 60000, 60000, ZMIN, 5) + b"a.png" + struct.pack("<I", 0xFFFFFFFF) + b"\0" * 64)
    tracemalloc.start()
    try:
        raises_scan_error(path, "expected 5*60000*60000", load_scan, path, max_points=10**12)  # N is a uint32
        raises_scan_error(path, "more than max_points", load_scan, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


WRL_HEAD = "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {\n"


@pytest.mark.parametrize(
    "body,problem",
    [
        ("coordIndex [ 0 1 2 -1 ] } }", "no readable 'coord Coordinate { point [...] }'"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } } }", "no readable 'coordIndex [...]'"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 3 -1 ] } }", "vertex index out of range"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 -2 -1 ] } }", "negative index"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 ] } coordIndex [ 0 1 2 -1 ] } }", "not a multiple of 3"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] "
         "texCoord TextureCoordinate { point [ 0 0, 1 0, 0 1 ] } texCoordIndex [ 0 1 3 -1 ] } }", "texcoord index out of range"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] "
         "texCoord TextureCoordinate { point [ 0 0, 1 0 ] } } }", "texcoord index out of range"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] "
         "texCoord TextureCoordinate { point [ 0 0, 1 0, 0 1 ] } texCoordIndex [ 0 1 2 2 -1 ] } }", "do not match"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 -1 2 -1 ] } }", "no faces"),
        ("coord Coordinate { point [ ] } coordIndex [ ] } }", "no vertices"),
        ("coord Coordinate { point [ 0 0 0, nan 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] } }", "NaN"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2.5 -1 ] } }", "coordIndex: a token is not a number"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 x ] } coordIndex [ 0 1 2 -1 ] } }", "coordinates: a token is not a number"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 1e39 ] } coordIndex [ 0 1 2 -1 ] } }", "beyond the float32"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ", "no readable 'coord Coordinate"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] "
         "texCoord TextureCoordinate { point [ 0 0, 1 0", "no readable 'texCoord TextureCoordinate"),
        ("coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 -1 ] "
         "texCoord TextureCoordinate { point [ 0 0, 1 0, 0 1 ] } texCoordIndex [ 0 1", "no readable 'texCoordIndex"),
    ],
)
def test_bad_wrl_files(tmp_path, body, problem):
    path = write_text(tmp_path / "bad.wrl", WRL_HEAD + body + "\n")
    raises_scan_error(path, problem, load_scan, path)


def test_other_bad_scans(tmp_path):
    raises_scan_error(tmp_path / "nothing.wrl", "does not exist", load_scan, tmp_path / "nothing.wrl")
    raises_scan_error(tmp_path / "face.xyz", "unsupported extension", load_scan, tmp_path / "face.xyz")
    raises_scan_error(tmp_path / "FACE", "unsupported extension", load_scan, tmp_path / "FACE")
    path = write_text(tmp_path / "empty.wrl", "#VRML V2.0 utf8\nGroup { }\n")
    raises_scan_error(path, "no IndexedFaceSet", load_scan, path)
    path = tmp_path / "latin1.wrl"
    path.write_bytes(WRL_HEAD.encode() + b"# caf\xe9\n")
    raises_scan_error(path, "undecodable bytes", load_scan, path)
    path = write_text(tmp_path / "big.wrl", WRL_HEAD + "coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 ] } }")
    raises_scan_error(path, "3 vertices is more than max_points=2", load_scan, path, max_points=2)
    path = write_text(tmp_path / "bad.obj", "v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    raises_scan_error(path, "cannot be parsed (IndexError", load_scan, path)  # trimesh fails on the face
    path = write_text(tmp_path / "nan.obj", "v 0 0 0\nv 1 nan 0\nv 0 1 0\nf 1 2 3\n")
    raises_scan_error(path, "NaN", load_scan, path)
    path = write_text(tmp_path / "points.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                      "property float y\nproperty float z\nend_header\n0 0 0\n")
    raises_scan_error(path, "empty mesh", load_scan, path)


# ------------------------------------------------------------------------------------------------- trimesh formats


def test_obj_face_forms(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 1 0\nvn 0 0 1\n" \
           "f 1 2 3\nf 1/1 3/3 4/4\nf 2//1 5//1 3//1\nf 1/1/1 2/2/1 5/5/1 3/3/1\n"
    scan = load_scan(write_text(tmp_path / "0000.OBJ", text))
    assert scan.metadata["format"] == "obj"
    assert len(scan.faces) == 3 + 2  # the quad is triangulated
    np.testing.assert_allclose(np.sort(scan.vertices[scan.faces[0]], axis=0), [[0, 0, 0], [1, 0, 0], [1, 1, 0]])


def test_trimesh_formats(tmp_path):
    paths = write_fixture_files(tmp_path)
    for ext in (".obj", ".ply", ".off", ".stl", ".glb"):
        scan = load_scan(paths[ext])
        assert scan.metadata["format"] == ext[1:]
        assert len(scan.faces) == 3
        assert len(scan.vertices) == (9 if ext == ".stl" else 5)  # STL stores every triangle corner
        np.testing.assert_allclose(scan.vertices.max(axis=0), [2, 1, 0.25])


def test_obj_texture_from_mtl(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "0000.jpg")
    write_text(tmp_path / "0000.mtl", "newmtl m0\nmap_Kd 0000.jpg\n")
    text = "mtllib 0000.mtl\nusemtl m0\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"
    scan = load_scan(write_text(tmp_path / "0000.obj", text))
    assert scan.texture_path == os.path.join(str(tmp_path), "0000.jpg")
    np.testing.assert_allclose(scan.uv, [[0, 0], [1, 0], [0, 1]])


# ------------------------------------------------------------------------------------------------- sequences


def test_load_sequence_natural_order_and_laziness(tmp_path):
    paths = write_fixture_files(tmp_path / "fixtures")
    folder = tmp_path / "F001" / "Angry"
    folder.mkdir(parents=True)
    names = ["0", "1", "02", "3", "004", "5", "6", "07", "8", "9", "10"]
    for number, name in enumerate(names):
        vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]) + number
        write_wrl(folder / f"{name}.wrl", vertices, [[0, 1, 2]], flavor="bu4dfe")
        (folder / f"{name}.jpg").write_bytes(b"")
    (folder / "5.wrl").write_text("garbage")  # only reading that frame fails
    sequence = load_sequence(folder)
    assert [os.path.basename(p) for p in sequence.frame_paths] == [f"{n}.wrl" for n in names]
    assert len(sequence) == 11 and all(isinstance(frame, str) for frame in sequence.frames)
    assert sequence[10].vertices[0, 0] == 10 and sequence.load(2).vertices[0, 0] == 2
    raises_scan_error(folder / "5.wrl", "no IndexedFaceSet", sequence.load, 5)
    window = sequence[6:9]
    assert isinstance(window, FaceSequence) and [scan.vertices[0, 0] for scan in window] == [6, 7, 8]
    assert len(load_sequence(folder, pattern="1*.wrl")) == 2
    scans = [load_scan(paths[".wrl"]), load_scan(paths[".obj"])]
    direct = FaceSequence(scans)
    assert len(direct) == 2 and direct[1] is scans[1] and list(direct) == scans


def test_load_sequence_errors(tmp_path):
    raises_scan_error(tmp_path / "missing", "does not exist", load_sequence, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "000.jpg").write_bytes(b"")
    raises_scan_error(tmp_path / "empty", "no frame files", load_sequence, tmp_path / "empty")


# ------------------------------------------------------------------------------------------------- summary


def test_describe_scan_is_json_ready(tmp_path):
    paths = write_fixture_files(tmp_path)
    summary = describe_scan(load_scan(paths[".bnt"], landmarks=True))
    assert json.loads(json.dumps(summary)) == summary
    assert summary["format"] == "bnt" and summary["vertices"] == 3 * 2 and summary["faces"] == 4
    assert summary["landmarks"] == 3 and summary["texcoords"] == 6
    assert summary["metadata"] == {"nrows": 5, "ncols": 4, "zmin": ZMIN}
    assert summary["bbox_min"][:2] == [-3.04, -3.8] and summary["bbox_max"][:2] == [-2.28, -2.28]
    assert summary["texture_path"].endswith("bs000_N_N_0.png")
    scan = FaceScan(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]))
    assert describe_scan(scan)["format"] is None

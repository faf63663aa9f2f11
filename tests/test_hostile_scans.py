"""Scan files built to exhaust a reader or to leak files (issue 16): too many or overlapping triangles, index lists
that would inflate memory, PLY/OFF files shorter than their headers declare, texture names that point outside the
scan's folder, texture decompression bombs, and dangling symlinks in a dataset folder."""

import logging
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from datasets_scripts.common import tree_fingerprint
from datasets_scripts.scan_writers import write_bnt, write_wrl
from modeling_facet import mesh_io
from modeling_facet.mesh_io import ScanFormatError, load_scan
from modeling_facet.rendering import _load_texture
from tests.test_pipeline import face_mesh


def wrl_text(vertices, index_text: str, url: str | None = None) -> str:
    points = ", ".join(" ".join(f"{value:g}" for value in vertex) for vertex in np.asarray(vertices).tolist())
    texture = f'appearance Appearance {{ texture ImageTexture {{ url "{url}" }} }}\n' if url else ""
    return (f"#VRML V2.0 utf8\nShape {{ {texture}geometry IndexedFaceSet {{\ncoord Coordinate {{ point [ {points} ] }}\n"
            f"coordIndex [ {index_text} ]\n}} }}\n")  # fmt: skip


SQUARE = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, 0.2]]) * 80


# ------------------------------------------------------------------------------------------- faces (item 2)


def test_more_triangles_than_max_faces_are_refused_before_triangulating(tmp_path, monkeypatch):
    path = tmp_path / "many.wrl"
    path.write_text(wrl_text(SQUARE, "0 1 4 -1 " * 30))
    assert len(load_scan(path).faces) == 30
    with pytest.raises(ScanFormatError, match=r"many.wrl: 30 triangles is more than max_faces=20"):
        load_scan(path, max_faces=20)
    monkeypatch.setattr(mesh_io, "_fan_corners", None)  # the count is checked before the triangles are built
    with pytest.raises(ScanFormatError, match="more than max_faces=20"):
        load_scan(path, max_faces=20)


def test_a_ply_declaring_more_faces_than_max_faces_is_refused_before_trimesh_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "face.ply"
    face_mesh().export(path, file_type="ply")
    monkeypatch.setattr("trimesh.load", None)
    with pytest.raises(ScanFormatError, match=r"face.ply: the header declares 242 faces, more than max_faces=100"):
        load_scan(path, max_faces=100)


def test_triangles_that_cover_the_face_many_times_over_are_refused(tmp_path):
    """5 vertices and triangles over the whole square: every one costs a full-screen rasterization."""
    path = tmp_path / "layers.wrl"
    path.write_text(wrl_text(SQUARE, "0 1 2 -1 0 2 3 -1 " * 200))
    with pytest.raises(ScanFormatError, match=r"layers.wrl: the triangles cover the scan's outline 200 times over"):
        load_scan(path)
    path.write_text(wrl_text(SQUARE, "0 1 4 -1 1 2 4 -1 2 3 4 -1 3 0 4 -1"))
    assert len(load_scan(path).faces) == 4  # one layer: a surface


def test_index_lists_are_parsed_without_an_object_per_number():
    text = " ".join(["12345 678 9 -1"] * 50_000)  # 0.75 MB, 200,000 numbers
    tracemalloc.start()
    try:
        values = mesh_io._ints(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert values.tolist()[:4] == [12345, 678, 9, -1] and len(values) == 200_000
    assert peak < 4 * len(text)  # the int64 result is 2.1x the text; a list of str tokens alone is over 10x


@pytest.mark.parametrize("text", ["0 1 - 2", "0 1 2-3", "0 1 2.5", "0 x 1", "1 99999999999999999999", "0 1 ２"])
def test_index_lists_stay_strict(text):
    with pytest.raises((ValueError, OverflowError)):
        mesh_io._ints(text)


# ----------------------------------------------------------------------------------- truncated files (item 6)


@pytest.mark.parametrize("file_type", ["ply", "off"])
def test_a_ply_or_off_shorter_than_its_header_declares_is_refused(tmp_path, file_type):
    path = tmp_path / f"face.{file_type}"
    face_mesh().export(path, file_type=file_type, **({"encoding": "ascii"} if file_type == "ply" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(ScanFormatError, match=rf"face.{file_type}: truncated: the header declares 242 faces, "
                                              r"the file holds \d+"):  # fmt: skip
        load_scan(path)
    path.write_bytes(data)
    assert len(load_scan(path).faces) == 242


# -------------------------------------------------------------------------------------- texture paths (item 7)


@pytest.mark.parametrize("url", ["/etc/hosts.png", "../outside.png", "maps/../../outside.png"])
def test_a_wrl_texture_outside_the_scans_folder_is_refused(tmp_path, url):
    path = tmp_path / "scans" / "face.wrl"
    path.parent.mkdir()
    path.write_text(wrl_text(SQUARE, "0 1 4 -1 1 2 4 -1", url=url))
    with pytest.raises(ScanFormatError, match=rf"face.wrl: texture '{url}' lies outside the scan's folder"):
        load_scan(path)


def test_textures_inside_the_scans_folder_are_kept(tmp_path):
    path = tmp_path / "face.wrl"
    path.write_text(wrl_text(SQUARE, "0 1 4 -1", url="maps/face.bmp"))
    assert load_scan(path).texture_path == os.path.join(str(tmp_path), "maps/face.bmp")


def test_a_bnt_image_name_outside_the_scans_folder_is_refused(tmp_path):
    path = tmp_path / "bs000_N_N_0.bnt"
    x, y = np.meshgrid(np.arange(4.0), np.arange(3.0))
    write_bnt(path, 3, 4, -1e9, "../../secret.png", x, y, x + y, x / 4, y / 3)
    with pytest.raises(ScanFormatError, match=r"texture '../../secret.png' lies outside the scan's folder"):
        load_scan(path)


def test_an_obj_material_texture_outside_the_folder_is_never_read(tmp_path):
    """trimesh (5.x) already confines material assets to the scan's folder; load_scan checks the name it keeps too."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    folder = tmp_path / "scan"
    folder.mkdir()
    (folder / "face.mtl").write_text("newmtl skin\nmap_Kd ../outside.png\n")
    (folder / "face.obj").write_text("mtllib face.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                     "usemtl skin\nf 1/1 2/2 3/3\n")  # fmt: skip
    assert load_scan(folder / "face.obj").texture_path is None


# ------------------------------------------------------------------------------ texture bombs (item 8)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring `width` x `height` RGB pixels, with a tiny (truncated) pixel stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_texture_decompression_bomb_is_an_unreadable_texture(tmp_path, caplog):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(20_000, 10_000))  # 24 bytes of header for 200 M pixels
    with caplog.at_level(logging.WARNING, logger="modeling_facet.rendering"):
        assert _load_texture(str(path)) is None
    assert str(path) in caplog.text and "200000000 pixels" in caplog.text  # PIL's DecompressionBombError


def test_a_texture_over_max_texture_pixels_is_not_decoded(tmp_path, caplog):
    """Below its bomb limits (89 M pixels to warn, twice that to refuse) PIL decodes what the header declares."""
    path = tmp_path / "large.png"
    path.write_bytes(png_declaring(10_000, 8_000))
    with caplog.at_level(logging.WARNING, logger="modeling_facet.rendering"):
        assert _load_texture(str(path)) is None
    assert str(path) in caplog.text and "80,000,000 pixels, more than 64,000,000" in caplog.text


def test_a_textured_scan_with_a_bomb_texture_renders_its_shaded_values(tmp_path):
    from modeling_facet.rendering import MultiviewRenderer

    mesh = face_mesh()
    (tmp_path / "bomb.png").write_bytes(png_declaring(20_000, 10_000))
    uv = (mesh.vertices[:, :2] - mesh.vertices[:, :2].min(0)) / np.ptp(mesh.vertices[:, :2], axis=0)
    write_wrl(tmp_path / "face.wrl", mesh.vertices, mesh.faces, uv=uv, texture_url="bomb.png", flavor="bu4dfe")
    images = MultiviewRenderer(views=[(0, 0)], image_size=16, channels=["shaded", "texture"]).render(
        load_scan(tmp_path / "face.wrl")
    )
    assert images.shape == (1, 4, 16, 16) and np.isfinite(images).all()


# ------------------------------------------------------------------------------ dangling symlinks (item 11)


def test_a_dangling_symlink_does_not_stop_the_fingerprint(tmp_path):
    (tmp_path / "F0001").mkdir()
    (tmp_path / "F0001" / "a.wrl").write_text("x")
    before = tree_fingerprint(str(tmp_path))
    os.symlink(tmp_path / "missing.wrl", tmp_path / "F0001" / "b.wrl")
    assert tree_fingerprint(str(tmp_path)) != before

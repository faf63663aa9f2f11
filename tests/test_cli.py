"""`facet-vlm inspect` and `facet-vlm render` as a user reads them."""

import numpy as np
from PIL import Image

from datasets_scripts.scan_writers import write_wrl
from tests.test_pipeline import face_mesh
from training.cli import main


def test_inspect_prints_no_python_none(tmp_path, capsys):
    mesh = face_mesh(size=8)
    write_wrl(tmp_path / "face.wrl", mesh.vertices, mesh.faces)
    main(["inspect", str(tmp_path / "face.wrl")])
    printed = capsys.readouterr().out
    assert "None" not in printed and "texcoords: -" in printed


def test_render_labels_its_rows_and_columns(tmp_path, capsys):
    mesh = face_mesh(size=8)
    write_wrl(tmp_path / "face.wrl", mesh.vertices, mesh.faces)
    output = tmp_path / "views.png"
    main(["render", str(tmp_path / "face.wrl"), "--size", "48", "--output", str(output), "--views", "0,0", "20,0"])
    printed = capsys.readouterr().out
    assert "2 views (rows) x 5 image channels (columns: shaded, depth, normals x/y/z)" in printed
    grid = np.asarray(Image.open(output))
    assert grid.shape[0] > 2 * 48 and grid.shape[1] > 5 * 48  # room for the labels
    assert grid[: grid.shape[0] - 2 * 48].any() and grid[:, : grid.shape[1] - 5 * 48].any()  # the labels are drawn

"""The numba.cuda rasterizer (modeling_facet/rasterization.py): checked on the CPU under numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, which must be set before numba is imported, so in a subprocess) against the compiled CPU
rasterizer on tiny scenes, and on a GPU where there is one."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_facet import rasterization
from modeling_facet.rendering import MultiviewRenderer


REPO = Path(__file__).resolve().parents[1]


def tiny_scenes():
    """A few small scans: a face-like height field, a sphere and a textured slanted plane (a texture file of its
    own; only numpy, PIL and trimesh, which a GPU machine has)."""
    import tempfile

    import trimesh
    from PIL import Image

    from benchmarks.bench_rendering import face_like_scan
    from modeling_facet.mesh_io import FaceScan

    texture = Path(tempfile.mkdtemp()) / "texture.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None], (8, 1, 3))).save(texture)
    x, y = np.meshgrid(np.linspace(-40, 40, 4), np.linspace(-40, 40, 4))
    corner = (np.arange(3)[:, None] * 4 + np.arange(3)).ravel()
    faces = np.concatenate([np.stack([corner, corner + 1, corner + 5], 1), np.stack([corner, corner + 5, corner + 4], 1)])
    plane = FaceScan(vertices=np.stack([x, y, 10 + 0.2 * x], -1).reshape(-1, 3).astype(np.float32), faces=faces,
                     uv=np.stack([x, y], -1).reshape(-1, 2).astype(np.float32) / 80 + 0.5, texture_path=str(texture))
    return [face_like_scan(rows=7, cols=8), trimesh.creation.icosphere(subdivisions=1, radius=40.0), plane]


def hand_made_case():
    """Three triangles in two 8 px images: one covering a half-square, a degenerate one, a nearer smaller copy."""
    corners = np.array([[0, 0], [6, 0], [0, 6], [1, 1], [2, 2], [3, 3], [0, 0], [3, 0], [0, 3]], np.float32)
    depth = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5], np.float32)
    vertices = np.column_stack([(corners[:, 0] + 0.5) * 2 / 8 - 1, 1 - (corners[:, 1] + 0.5) * 2 / 8, depth])
    faces = torch.arange(9).view(3, 3)
    column = torch.from_numpy(corners[:, 0])[faces.T]
    return torch.from_numpy(vertices), faces, torch.tensor([1, 0, 1]), 2, 8, column[None].repeat(2, 1, 1)


def check_kernel_matches_compiled(device: str = "cpu") -> None:
    """The CUDA kernel's fragments and renders against the compiled rasterizer's (run under the simulator on the
    CPU, or on a GPU)."""
    vertices, faces, face_image, num_images, size, corners = hand_made_case()
    expected = rasterization.rasterize(vertices, faces, face_image, num_images, size, corners, method="compiled")
    moved = [value.to(device) for value in (vertices, faces, face_image)]
    found = rasterization.rasterize(*moved, num_images, size, corners.to(device), method="cuda")
    for want, got in zip(expected, found):
        assert got.device.type == torch.device(device).type
        np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), atol=1e-5)

    settings = dict(views=((0, 0), (20, 0), (-10, 15)), image_size=12, channels=("texture", "depth", "normals"))
    scenes = tiny_scenes()
    compiled = MultiviewRenderer(rasterizer="compiled", **settings).render_batch(scenes)
    kernel = MultiviewRenderer(rasterizer="cuda", device=device, **settings).render_batch(scenes)
    np.testing.assert_array_equal(compiled[:, :, 3] > 0, kernel[:, :, 3] > 0)
    np.testing.assert_allclose(kernel, compiled, atol=1e-4)
    print("cuda kernel matches the compiled rasterizer")


def test_cuda_kernel_matches_compiled_under_the_simulator():
    pytest.importorskip("numba", reason="the kernels and the compiled rasterizer need numba")
    environment = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(REPO)}
    code = "from tests.test_cuda_rasterizer import check_kernel_matches_compiled; check_kernel_matches_compiled()"
    result = subprocess.run([sys.executable, "-c", code], env=environment, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matches" in result.stdout


def test_cuda_rasterizer_needs_a_gpu_or_the_simulator():
    with pytest.raises(ValueError, match="rasterizer='cuda'"):
        rasterization.resolve_method("cuda", "cpu")
    assert rasterization.resolve_method("auto", "cpu") == ("compiled" if rasterization.numba else "vectorized")
    assert rasterization.resolve_method("auto", "meta") == "vectorized"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_matches_compiled_on_the_gpu():
    pytest.importorskip("numba.cuda", reason="the kernel needs numba; rasterizer='auto' falls back to 'vectorized'")
    assert rasterization.resolve_method("auto", "cuda") == "cuda"
    check_kernel_matches_compiled("cuda")


def test_auto_falls_back_to_the_vectorised_rasterizer_when_the_kernels_fail(monkeypatch, caplog):
    pytest.importorskip("numba.cuda")
    from modeling_facet import rasterization_cuda

    def broken(*arguments):
        raise RuntimeError("libNVVM cannot be found")

    monkeypatch.setattr(rasterization, "resolve_method", lambda method, device: "cuda" if method == "auto" else method)
    monkeypatch.setattr(rasterization_cuda, "rasterize_cuda", broken)
    monkeypatch.setattr(rasterization, "_CUDA_PROBLEM", [])
    case = hand_made_case()
    fallback = rasterization.rasterize(*case, method="auto")
    for want, got in zip(rasterization.rasterize(*case, method="vectorized"), fallback):
        torch.testing.assert_close(got, want)
    assert "libNVVM" in caplog.text and "libNVVM" in rasterization._CUDA_PROBLEM[0]
    with pytest.raises(RuntimeError, match="libNVVM"):
        rasterization.rasterize(*case, method="cuda")


def scans_for_normalisation(tmp_path):
    """Scans that take every branch of the normalisation: height fields (depth axis z), a face looking along +x
    (turned onto z), a nose-tip landmark, non-finite and unused vertices, a flat-ish scan (no decisive depth axis)
    and scans of different sizes in one batch. (Not a sphere: its most frontal points tie, and NumPy's partition
    and torch's sort break ties differently.)"""
    from benchmarks.bench_rendering import face_like_scan
    from modeling_facet.mesh_io import FaceScan

    face, small = face_like_scan(rows=12, cols=13), face_like_scan(rows=6, cols=7, seed=3)
    sideways = FaceScan(vertices=face.vertices[:, [2, 1, 0]] * [1, 1, -1], faces=face.faces[:, ::-1])
    marked = FaceScan(vertices=face.vertices, faces=face.faces, landmarks=face.vertices[40:41] + 1.0,
                      landmark_names=["Nose tip"])  # fmt: skip
    holes = face.vertices.copy()
    holes[5] = np.nan
    broken = FaceScan(vertices=np.concatenate([holes, [[1e3, 1e3, 1e3]]]), faces=face.faces)
    squashed = FaceScan(vertices=face.vertices * [0.4, 1.0, 1.0], faces=face.faces)  # x and z extents alike
    return [face, sideways, marked, broken, squashed, small]


def test_batched_normalisation_matches_the_per_scan_one(tmp_path):
    from modeling_facet.rendering import DEFAULT_FACE_SIZE, _prepare, prepare_batch

    scans = scans_for_normalisation(tmp_path)
    batched = prepare_batch(scans, DEFAULT_FACE_SIZE, False, torch.device("cpu"))
    for scan, mesh in zip(scans, batched):
        expected = _prepare(scan, DEFAULT_FACE_SIZE, False)
        np.testing.assert_array_equal(np.asarray(mesh.faces), expected.faces)
        np.testing.assert_allclose(mesh.vertices.numpy(), expected.vertices, atol=1e-5)

"""Tests of the canonical normalisation and the multiview renderer (torch backend with each rasterizer, pyrender)."""

import os
import pickle

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from benchmarks.bench_rendering import face_like_scan
from modeling_facet import rasterization, rendering
from modeling_facet.mesh_io import FaceScan, ScanFormatError
from modeling_facet.rendering import (
    AMBIENT,
    DEFAULT_FACE_SIZE,
    DEPTH_FAR,
    DEPTH_NEAR,
    LIGHT_DIRECTION,
    MultiviewRenderer,
    channel_count,
    normalize_scan,
)


SHADED, DEPTH = 0, 1  # channel positions for the default ("shaded", "depth", "normals")


def depth_value(z):
    return (z - DEPTH_FAR) / (DEPTH_NEAR - DEPTH_FAR)


def pixel_centres(size):
    """Canonical (x, y) of every pixel centre, each (size, size): row 0 is the top (+y)."""
    coordinates = (np.arange(size) + 0.5) * 2.0 / size - 1.0
    return np.meshgrid(coordinates, -coordinates)


def plane_scan(z=12.0, size=40.0, steps=9):
    x, y = np.meshgrid(np.linspace(-size, size, steps), np.linspace(-size, size, steps))
    vertices = np.stack([x, y, np.full_like(x, z)], -1).reshape(-1, 3)
    corner = (np.arange(steps - 1)[:, None] * steps + np.arange(steps - 1)).ravel()
    lower = np.stack([corner, corner + 1, corner + steps + 1], 1)
    faces = np.concatenate([lower, np.stack([corner, corner + steps + 1, corner + steps], 1)])
    uv = (vertices[:, :2] + size) / (2 * size)
    return FaceScan(
        vertices=vertices.astype(np.float32),
        faces=faces,
        uv=uv.astype(np.float32),
        landmarks=np.array([[0.0, 0.0, z]], np.float32),
        landmark_names=["Nose tip"],
        source_path="plane.obj",
    )


@pytest.fixture(scope="module")
def face():
    return face_like_scan(rows=24, cols=25)


@pytest.fixture(params=["compiled", "vectorized"])
def rasterizer(request):
    """The torch backend's CPU-runnable rasterizers: compiled (the CPU default) and vectorised (on GPUs without
    numba.cuda; tested here on the CPU). The CUDA kernels: tests/test_cuda_rasterizer.py."""
    return request.param


@pytest.fixture(scope="module")
def opengl_available():
    try:
        MultiviewRenderer(views=((0, 0),), image_size=16, backend="pyrender").render(plane_scan())
    except RuntimeError as error:
        pytest.skip(f"pyrender backend unavailable (EGL could not be initialised): {error}")


def test_channel_count_and_order(face):
    assert channel_count(("shaded", "depth", "normals", "texture")) == 8
    with pytest.raises(ValueError, match="Unknown render channel"):
        channel_count(["colour"])
    both = MultiviewRenderer(image_size=32, channels=("shaded", "depth", "normals")).render(face)
    reordered = MultiviewRenderer(image_size=32, channels=("normals", "depth")).render(face)
    assert both.shape == (3, 5, 32, 32) and both.dtype == np.float32
    assert reordered.shape == (3, 4, 32, 32)
    np.testing.assert_array_equal(reordered[:, :3], both[:, 2:])
    np.testing.assert_array_equal(reordered[:, 3], both[:, DEPTH])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"channels": ("shaded", "albedo")}, "Unknown render channel"),
        ({"channels": ()}, "non-empty"),
        ({"backend": "opengl"}, "Unknown render backend"),
        ({"views": ()}, "at least one"),
        ({"views": ((0, 0), (20,))}, "pairs"),
        ({"views": ((float("nan"), 0),)}, "finite"),
        ({"image_size": 4}, "at least 8"),
        ({"face_size": 0}, "positive"),
        ({"backend": "pyrender", "device": "cuda"}, "backend='torch'"),
        ({"rasterizer": "scanline"}, "Unknown rasterizer"),
        ({"rasterizer": "compiled", "device": "meta"}, "runs on the CPU"),
    ],
)
def test_bad_settings_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        MultiviewRenderer(**arguments)


def test_plane_has_constant_depth_normals_and_shading(rasterizer):
    size = 32
    images = MultiviewRenderer(views=((0, 0),), image_size=size, rasterizer=rasterizer).render(plane_scan())[0]
    mask = images[DEPTH] > 0
    assert 0.2 < mask.mean() < 0.5
    # The plane is its own nose tip, so it lies at canonical z = 0 and faces the camera.
    np.testing.assert_allclose(images[DEPTH][mask], depth_value(0.0), atol=1e-5)
    np.testing.assert_allclose(images[SHADED][mask], AMBIENT + (1 - AMBIENT) * LIGHT_DIRECTION[2], atol=1e-5)
    np.testing.assert_allclose(images[2:, mask].T, np.broadcast_to([0.5, 0.5, 1.0], (mask.sum(), 3)), atol=1e-5)
    assert not images[:, ~mask].any()


@pytest.mark.parametrize("views", [((0, 0),), ((0, 0), (30, 20))])
def test_large_triangles_fill_their_footprint(monkeypatch, views, rasterizer):
    size = 48
    quad = FaceScan(
        vertices=np.array([[-30, -20, 0], [30, -20, 0], [30, 20, 0], [-30, 20, 0]], np.float32),
        faces=np.array([[0, 1, 2], [0, 2, 3]]),
        landmarks=np.zeros((1, 3), np.float32),
        landmark_names=["nose tip"],
    )
    renderer = MultiviewRenderer(views=views, image_size=size, rasterizer=rasterizer)
    images = renderer.render(quad)
    vertices, _ = normalize_scan(quad)
    x, y = pixel_centres(size)
    low, high = vertices.min(0), vertices.max(0)
    inside = (x > low[0] + 1e-3) & (x < high[0] - 1e-3) & (y > low[1] + 1e-3) & (y < high[1] - 1e-3)
    outside = (x < low[0] - 1e-3) | (x > high[0] + 1e-3) | (y < low[1] - 1e-3) | (y > high[1] + 1e-3)
    assert inside.sum() > size * size / 8
    np.testing.assert_allclose(images[0, DEPTH][inside], depth_value(0.0), atol=1e-5)
    assert not images[0][:, outside].any()
    monkeypatch.setattr(rasterization, "_MAX_SAMPLES_PER_CHUNK", 100)  # vectorised: many chunks per window group
    np.testing.assert_array_equal(renderer.render(quad), images)


def test_sphere_depth_profile_and_outward_normals(rasterizer):
    size = 64
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=50.0)
    images = MultiviewRenderer(views=((0, 0),), image_size=size, rasterizer=rasterizer).render(sphere)[0]
    vertices, _ = normalize_scan(sphere)
    centre = vertices.mean(0)
    radius = np.linalg.norm(vertices - centre, axis=1).mean()
    x, y = pixel_centres(size)
    planar = np.hypot(x - centre[0], y - centre[1])
    inner, outer = planar < 0.9 * radius, planar > 1.03 * radius
    assert (images[DEPTH][inner] > 0).all() and not images[:, outer].any()
    cap = np.sqrt(np.clip(radius**2 - planar**2, 0, None))
    np.testing.assert_allclose(images[DEPTH][inner], depth_value(centre[2] + cap)[inner], atol=5e-3)
    assert images[DEPTH][size // 2, size // 2] > images[DEPTH][inner].mean()
    outward = np.stack([x - centre[0], y - centre[1], cap]) / radius
    normals = images[2:] * 2 - 1
    assert ((normals * outward).sum(0)[inner] > 0.98).all()
    assert images[SHADED].min() >= 0 and images[SHADED].max() <= 1


def nose_position(images):
    """(row, column) of the nearest pixel of a depth image."""
    return np.unravel_index(np.argmax(images[DEPTH]), images[DEPTH].shape)


def test_view_angles_move_the_nose(face, rasterizer):
    size = 64
    renderer = MultiviewRenderer(views=((0, 0), (20, 0), (-20, 0), (0, 20)), image_size=size, rasterizer=rasterizer)
    views = renderer.render(face)
    frontal, right, left, up = (nose_position(view) for view in views)
    assert abs(frontal[1] - size / 2) <= 2 and abs(frontal[0] - size / 2) <= 3
    assert right[1] > size / 2 + 3 and left[1] < size / 2 - 3
    assert up[0] < frontal[0] - 3


@pytest.mark.parametrize("pixels_per_pass", [1 << 18, 1])  # vectorised on the CPU: the batch in one pass; per scan
def test_render_batch_equals_stacked_renders(face, monkeypatch, pixels_per_pass, rasterizer):
    monkeypatch.setattr(rendering, "_CPU_PIXELS_PER_PASS", pixels_per_pass)
    renderer = MultiviewRenderer(image_size=32, rasterizer=rasterizer)
    other = face_like_scan(rows=18, cols=15, seed=3)
    batch = renderer.render_batch([face, other, face])
    assert batch.shape == (3, 3, 5, 32, 32)
    singles = [renderer.render(face), renderer.render(other), renderer.render(face)]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-6)
    assert renderer.render_batch([]).shape == (0, 3, 5, 32, 32)


def test_translated_and_scaled_scan_renders_the_same(face):
    renderer = MultiviewRenderer(image_size=48)
    moved = FaceScan(vertices=face.vertices * 1.3 + np.array([100.0, -50.0, 30.0], np.float32), faces=face.faces)
    original, transformed = renderer.render(face), renderer.render(moved)
    assert np.mean(np.abs(original - transformed)) < 1e-4
    assert np.mean(np.isclose(original, transformed, atol=1e-3)) > 0.999


def test_accepts_trimesh_and_vertex_face_pairs(face):
    renderer = MultiviewRenderer(image_size=32)
    expected = renderer.render(face)
    np.testing.assert_array_equal(renderer.render((face.vertices, face.faces)), expected)
    np.testing.assert_array_equal(renderer.render(trimesh.Trimesh(face.vertices, face.faces, process=False)), expected)
    with pytest.raises(TypeError, match="Cannot render a str"):
        renderer.render("scan.wrl")


def test_geometric_nose_tip_goes_to_the_origin(face):
    vertices, faces = normalize_scan(face)
    assert vertices.dtype == np.float32 and faces.shape == face.faces.shape
    tip = vertices[np.argmax(face.vertices[:, 2])]
    assert np.linalg.norm(tip) < 0.03
    radial = np.linalg.norm(vertices[:, :2] - np.median(vertices[:, :2], axis=0), axis=1)
    assert np.percentile(radial, 90) == pytest.approx(DEFAULT_FACE_SIZE, rel=1e-4)


@pytest.mark.parametrize("name", ["Nose tip", "NOSE_TIP", "nosetip"])
def test_nose_tip_landmark_is_used(face, name):
    landmark_vertex = 100
    scan = FaceScan(
        vertices=face.vertices,
        faces=face.faces,
        landmarks=face.vertices[[5, landmark_vertex]],
        landmark_names=["Outer left eyebrow", name],
    )
    vertices, _ = normalize_scan(scan)
    np.testing.assert_allclose(vertices[landmark_vertex], 0.0, atol=1e-6)


def test_scan_facing_another_axis_is_turned_to_face_the_camera(face):
    turn = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])[:3, :3]  # the nose now points along -y
    turned = FaceScan(vertices=(face.vertices @ turn.T).astype(np.float32), faces=face.faces)
    vertices, _ = normalize_scan(turned)
    tip = np.argmax(face.vertices[:, 2])
    assert np.linalg.norm(vertices[tip]) < 0.05
    assert vertices[tip, 2] >= np.percentile(vertices[:, 2], 99)
    assert np.ptp(vertices[:, 2]) < 0.8 * np.ptp(vertices[:, 1])


def test_nan_vertices_are_dropped(face):
    vertices = np.concatenate([face.vertices, [[np.nan, 0, 0], [0, np.inf, 0]]]).astype(np.float32)
    broken = np.array([[0, len(face.vertices), 1], [len(face.vertices) + 1, 2, 3]])
    scan = FaceScan(vertices=vertices, faces=np.concatenate([face.faces, broken]), source_path="holes.wrl")
    cleaned, faces = normalize_scan(scan)
    assert len(cleaned) == len(face.vertices) and len(faces) == len(face.faces) and np.isfinite(cleaned).all()
    renderer = MultiviewRenderer(image_size=32)
    np.testing.assert_array_equal(renderer.render(scan), renderer.render(face))


@pytest.mark.parametrize(
    "vertices, faces, problem",
    [
        (np.full((3, 3), np.nan), np.array([[0, 1, 2]]), "no face is left"),
        (np.zeros((0, 3)), np.zeros((0, 3), np.int64), "empty mesh"),
        (np.zeros((3, 3)), np.array([[0, 1, 3]]), "face indices"),
        (np.zeros((3, 2)), np.array([[0, 1, 2]]), "shape"),
    ],
)
def test_bad_meshes_raise_scan_format_error_naming_the_file(vertices, faces, problem):
    scan = FaceScan(vertices=vertices, faces=faces, source_path="subject/F0001_NE00WH_F3D.wrl")
    with pytest.raises(ScanFormatError, match=problem) as raised:
        MultiviewRenderer(image_size=16).render(scan)
    assert "F0001_NE00WH_F3D.wrl" in str(raised.value)


def write_texture(tmp_path, width=5):
    """A texture whose left half is red and right half blue, of odd width to exercise row alignment."""
    texture = np.zeros((4, width, 3), np.uint8)
    texture[:, : width // 2] = (255, 0, 0)
    texture[:, width // 2 + 1 :] = (0, 0, 255)
    texture[:, width // 2] = (128, 0, 128)
    path = tmp_path / "texture.png"
    Image.fromarray(texture).save(path)
    return str(path)


def textured_plane(tmp_path, per_corner=False):
    scan = plane_scan()
    scan.texture_path = write_texture(tmp_path)
    if per_corner:
        scan.uv_faces = scan.faces.copy()
    return scan


@pytest.mark.parametrize("per_corner", [False, True])
def test_texture_channel_samples_the_image(tmp_path, per_corner, rasterizer):
    size = 32
    renderer = MultiviewRenderer(views=((0, 0),), image_size=size, channels=("texture", "depth"), rasterizer=rasterizer)
    images = renderer.render(textured_plane(tmp_path, per_corner))[0]
    mask = images[3] > 0
    left, right = mask.copy(), mask.copy()
    left[:, size // 2 - 4 :] = False
    right[:, : size // 2 + 4] = False
    np.testing.assert_allclose(images[:3, left].T, np.broadcast_to([1.0, 0.0, 0.0], (left.sum(), 3)), atol=1e-6)
    np.testing.assert_allclose(images[:3, right].T, np.broadcast_to([0.0, 0.0, 1.0], (right.sum(), 3)), atol=1e-6)


def test_batches_mix_textured_and_untextured_scans(tmp_path, face, rasterizer):
    renderer = MultiviewRenderer(image_size=32, channels=("texture", "depth"), rasterizer=rasterizer)
    scans = [face, textured_plane(tmp_path, per_corner=True), textured_plane(tmp_path)]
    expected = np.stack([renderer.render(scan) for scan in scans])
    np.testing.assert_allclose(renderer.render_batch(scans), expected, atol=1e-6)


def test_texture_falls_back_to_shading(tmp_path, caplog, face):
    renderer = MultiviewRenderer(image_size=32, channels=("texture", "shaded"))
    images = renderer.render(face)
    np.testing.assert_array_equal(images[:, :3], np.repeat(images[:, 3:], 3, axis=1))
    missing = plane_scan()
    missing.texture_path = str(tmp_path / "absent.jpg")
    images = renderer.render(missing)
    np.testing.assert_array_equal(images[:, :3], np.repeat(images[:, 3:], 3, axis=1))
    assert "absent.jpg" in caplog.text


def silhouettes_differ_only_at_edges(mask, other):
    """True when pixels in exactly one mask all lie within one pixel of ``mask``'s silhouette."""
    ring = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    return not ((mask != other) & ~ring).any()


def test_rasterizers_agree(face, tmp_path):
    # Coverage is tested at the same pixel centres with the same tolerance; where two triangles share an edge through
    # a pixel centre either may draw it, but these meshes' attributes are continuous across their edges.
    settings = dict(
        views=((0, 0), (20, 0), (-20, 0), (10, 15)), image_size=96, channels=("texture", "depth", "normals")
    )
    scans = [face, textured_plane(tmp_path, per_corner=True), trimesh.creation.icosphere(subdivisions=2, radius=40.0)]
    compiled = MultiviewRenderer(rasterizer="compiled", **settings).render_batch(scans)
    vectorized = MultiviewRenderer(rasterizer="vectorized", **settings).render_batch(scans)
    np.testing.assert_array_equal(compiled[:, :, 3] > 0, vectorized[:, :, 3] > 0)
    np.testing.assert_allclose(compiled, vectorized, atol=1e-4)


def test_rasterize_covers_the_pixel_centres_inside_and_interpolates_linearly(rasterizer):
    size = 8
    # One triangle in image 1 with corners at pixel centres (0, 0), (6, 0), (0, 6) (x right, y down, in pixels), a
    # degenerate one in image 0 and, after them, a nearer copy of the first one's top-left half in image 1.
    corners = np.array([[0, 0], [6, 0], [0, 6], [1, 1], [2, 2], [3, 3], [0, 0], [3, 0], [0, 3]], np.float32)
    depth = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5], np.float32)
    vertices = np.column_stack([(corners[:, 0] + 0.5) * 2 / size - 1, 1 - (corners[:, 1] + 0.5) * 2 / size, depth])
    faces = torch.arange(9).view(3, 3)
    column = torch.from_numpy(corners[:, 0])[faces.T]  # (3 corners, 3 triangles): each corner's pixel column
    pixel, face, values = rasterization.rasterize(
        torch.from_numpy(vertices), faces, torch.tensor([1, 0, 1]), 2, size, column[None], method=rasterizer
    )
    assert (pixel[1:] > pixel[:-1]).all()  # in pixel order
    values = values[0]
    x, y = (pixel % size).numpy(), (pixel // size % size).numpy()
    assert (pixel // (size * size) == 1).all()
    expected = sorted(row * size + col for row in range(size) for col in range(size) if row + col <= 6)
    np.testing.assert_array_equal((pixel - size * size).numpy(), expected)
    np.testing.assert_array_equal(face.numpy(), np.where(x + y <= 3, 2, 0))  # the nearer triangle wins
    np.testing.assert_allclose(values.numpy(), x, atol=1e-5)


def test_auto_rasterizer_is_compiled_on_the_cpu_unless_numba_is_missing(monkeypatch):
    assert rasterization.resolve_method("auto", "cpu") == "compiled"
    on_gpus = "cuda" if rasterization.cuda_kernels_available() else "vectorized"  # numba.cuda: driver and device
    assert rasterization.resolve_method("auto", "cuda") == on_gpus
    monkeypatch.setattr(rasterization, "numba", None)
    assert rasterization.resolve_method("auto", "cuda") == "vectorized"  # as for a remote-code user without numba
    assert rasterization.resolve_method("auto", "cpu") == "vectorized"
    with pytest.raises(ImportError, match="needs numba"):
        MultiviewRenderer(rasterizer="compiled")
    images = MultiviewRenderer(image_size=16).render(plane_scan())
    assert images.shape == (3, 5, 16, 16) and images.any()


@pytest.mark.usefixtures("opengl_available")
def test_backends_agree(face):
    settings = dict(views=((0, 0), (20, 0), (-20, 0), (10, 15)), image_size=96)
    torch_images = MultiviewRenderer(backend="torch", **settings).render(face)
    opengl = MultiviewRenderer(backend="pyrender", **settings)
    opengl_images = opengl.render(face)
    np.testing.assert_array_equal(opengl.render(face), opengl_images)  # the renderer is reused across calls
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(opengl)).render(face), opengl_images)
    MultiviewRenderer(image_size=32, backend="pyrender").render(face)  # renderers of other sizes share the context
    np.testing.assert_array_equal(opengl.render(face), opengl_images)
    for view in range(4):
        for channel in (SHADED, DEPTH):
            assert np.abs(torch_images[view, channel] - opengl_images[view, channel]).mean() < 0.02
        mask, other = torch_images[view, DEPTH] > 0, opengl_images[view, DEPTH] > 0
        assert silhouettes_differ_only_at_edges(mask, other)
        assert np.abs(torch_images[view, 2:] - opengl_images[view, 2:]).mean() < 0.02


@pytest.mark.usefixtures("opengl_available")
def test_backends_agree_on_textures(tmp_path):
    scan = textured_plane(tmp_path, per_corner=True)
    settings = dict(views=((0, 0), (20, 10)), image_size=32, channels=("texture",))
    torch_images = MultiviewRenderer(backend="torch", **settings).render(scan)
    opengl_images = MultiviewRenderer(backend="pyrender", **settings).render(scan)
    assert np.abs(torch_images - opengl_images).mean() < 0.02


def test_pyrender_backend_explains_missing_egl(monkeypatch):
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    pyrender = pytest.importorskip("pyrender")

    def no_display(*args, **kwargs):
        raise OSError("eglGetDisplay failed")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", no_display)
    monkeypatch.setattr("modeling_facet.rendering._SHARED_OPENGL_VIEWS", None)
    with pytest.raises(RuntimeError, match="libegl1 libegl-mesa0 libgl1-mesa-dri.*backend='torch'"):
        MultiviewRenderer(image_size=16, backend="pyrender").render(plane_scan())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(face):
    cpu = MultiviewRenderer(image_size=64, device="cpu").render_batch([face, plane_scan()])  # a GPU is the default
    cuda = MultiviewRenderer(image_size=64, device="cuda").render_batch([face, plane_scan()])
    assert np.abs(cpu - cuda).mean() < 1e-4

"""Multiview rendering of face scans: normalisation to a canonical frame, then orthographic views of it.

Canonical frame (:func:`normalize_scan`): millimetre scans from any dataset are cleaned of non-finite vertices,
centred on the nose tip (+y up, +z towards the viewer) and scaled so that the robust face radius (90th percentile
xy distance of the vertices from their median) equals ``face_size`` (default 0.65). The orthographic camera looks
down -z and sees the square x, y in [-1, 1], so the face fits with a margin in every view.

A view ``(yaw, pitch)`` in degrees turns the head about a pivot ``face_size`` behind the nose tip (roughly the
head centre): yaw +θ turns it about +y with the right-hand rule, so the nose moves to the right of the image;
pitch +θ nods it so the nose moves up. Pitch is applied first, then yaw.

Channels (background is 0 in every channel):

- ``shaded``: Lambertian shading ``AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT_DIRECTION)`` in [0, 1], with one
  directional light slightly above-left of the camera; normals are flipped to face the camera, so the result does
  not depend on the mesh's triangle winding.
- ``depth``: ``(z - DEPTH_FAR) / (DEPTH_NEAR - DEPTH_FAR)`` clipped to [0, 1], where z is the camera-frame depth in
  canonical units, so larger is nearer; the fixed range [DEPTH_FAR, DEPTH_NEAR] = [-1.25, 0.25] holds a whole face
  in views up to about 30 degrees (the nose tip of a frontal view sits at 0.83).
- ``normals``: camera-frame unit normals mapped to [0, 1] per component by ``(n + 1) / 2``.
- ``texture``: RGB in [0, 1] sampled bilinearly from the scan's texture image when it has ``uv`` and a readable
  ``texture_path``; otherwise the shaded value replicated to 3 channels (a missing texture file is logged).

Backends: ``"torch"`` (a z-buffer rasterizer batched over views and scans: compiled by numba on the CPU,
numba.cuda kernels on a GPU, else vectorised torch operations; see :mod:`.rasterization`) and ``"pyrender"``
(OpenGL through EGL). They share the projection and the channel formulas; on the same scan their depth, shaded and
normals outputs agree within a mean absolute difference below 0.02, and their foreground masks differ only within
one pixel of the silhouette (at 224 px at least 98% of the union of the masks agrees): OpenGL samples coverage with
4x multisampling, the torch rasterizer at pixel centres.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .mesh_io import FaceScan, ScanFormatError
from .rasterization import rasterize, resolve_method, take, to_device, zeros
from .render_settings import CHANNEL_WIDTHS, DEFAULT_CHANNELS, DEFAULT_FACE_SIZE, DEFAULT_VIEWS, channel_count
from .render_settings import check_channel as _check_channel


logger = logging.getLogger(__name__)

BACKENDS = ("torch", "pyrender")
_DEFAULT_IMAGE_SIZE = 224
DEPTH_NEAR = 0.25
DEPTH_FAR = -1.25
AMBIENT = 0.15
LIGHT_DIRECTION = tuple(float(c) for c in np.array([-0.3, 0.4, 1.0]) / np.linalg.norm([-0.3, 0.4, 1.0]))

_NOSE_TIP_NAME = re.compile(r"nose[\W_]*tip|pronasale", re.IGNORECASE)
_CPU_PIXELS_PER_PASS = 1 << 18


def _as_face_scan(scan) -> FaceScan:
    """Accepts a FaceScan, anything with ``vertices`` and ``faces`` (a trimesh.Trimesh) or a (vertices, faces) pair."""
    if isinstance(scan, FaceScan):
        return scan
    if isinstance(scan, (tuple, list)) and len(scan) == 2:
        return FaceScan(vertices=np.asarray(scan[0]), faces=np.asarray(scan[1]))
    if hasattr(scan, "vertices") and hasattr(scan, "faces"):
        metadata = getattr(scan, "metadata", None) or {}
        return FaceScan(
            vertices=np.asarray(scan.vertices), faces=np.asarray(scan.faces), source_path=metadata.get("file_path")
        )
    raise TypeError(
        f"Cannot render a {type(scan).__name__}: expected a FaceScan, a trimesh.Trimesh or a (vertices, faces) pair"
    )


def _clean(scan: FaceScan, source: str):
    """Drops non-finite vertices, the faces using them and unused vertices: returns (vertices, faces, kept faces)."""
    vertices = np.asarray(scan.vertices, dtype=np.float64)
    faces = np.asarray(scan.faces)
    if vertices.size == 0 or faces.size == 0:
        raise ScanFormatError(source, "empty mesh: no vertices or no faces")
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ScanFormatError(source, f"vertices must have shape (N, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ScanFormatError(source, f"faces must be integer triangles (M, 3), got {faces.dtype} {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        found = f"[{faces.min()}, {faces.max()}]"
        raise ScanFormatError(source, f"face indices must lie in [0, {len(vertices)}), got {found}")
    finite = np.isfinite(vertices).all(axis=1)
    kept_faces = finite[faces].all(axis=1) if not finite.all() else np.ones(len(faces), dtype=bool)
    faces = faces[kept_faces] if not kept_faces.all() else faces
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if not used.any():
        raise ScanFormatError(source, "empty mesh: no face is left after removing NaN/inf vertices")
    if used.all():  # the common case: nothing to drop or renumber
        return vertices, faces.astype(np.int64), kept_faces
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[faces].astype(np.int64), kept_faces


def _landmark_nose_tip(scan: FaceScan) -> Optional[np.ndarray]:
    if scan.landmarks is None or not scan.landmark_names:
        return None
    for name, point in zip(scan.landmark_names, np.asarray(scan.landmarks, dtype=np.float64)):
        if _NOSE_TIP_NAME.search(str(name)) and np.isfinite(point).all():
            return point
    return None


def _facing_axis(vertices: np.ndarray):
    """Unit axis the face looks along (towards the viewer) and whether the scan must be turned onto +z.

    The smallest-variance principal axis of a face height field is its depth axis. The input convention (+z
    towards the viewer) decides its sign, and the scan is left unrotated, unless that axis is decisive and more
    than 45 degrees off z: then the sign is the one under which the centre of the face (the nose) protrudes.
    """
    centred = vertices - vertices.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    axis = eigenvectors[:, 0]
    if eigenvalues[0] >= 0.5 * eigenvalues[1]:
        return np.array([0.0, 0.0, 1.0]), False
    if abs(axis[2]) >= math.cos(math.radians(45.0)):
        return axis * np.sign(axis[2]), False
    depth = centred @ axis
    radial = np.linalg.norm(centred - depth[:, None] * axis, axis=1)
    central = radial <= np.percentile(radial, 30)
    if depth[central].mean() < depth[~central].mean():
        axis = -axis
    return axis, True


def _frontal_nose_tip(vertices: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Median of the most frontal points (along ``axis``) within half the robust radius of the face's centre line."""
    depth = vertices @ axis
    planar = vertices - depth[:, None] * axis
    radial = np.linalg.norm(planar - np.median(planar, axis=0), axis=1)
    candidates = np.flatnonzero(radial <= 0.5 * np.percentile(radial, 90))
    if len(candidates) == 0:
        candidates = np.arange(len(vertices))
    top_k = min(len(candidates), max(5, len(candidates) // 100))
    frontal = candidates[np.argpartition(-depth[candidates], top_k - 1)[:top_k]]
    return np.median(vertices[frontal], axis=0)


def _rotation_onto_z(axis: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit vector ``axis`` (not parallel to -z) onto +z."""
    cross = np.cross(axis, [0.0, 0.0, 1.0])
    skew = np.array([[0.0, -cross[2], cross[1]], [cross[2], 0.0, -cross[0]], [-cross[1], cross[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + axis[2])


def _normalize(scan: FaceScan, face_size: float):
    """Canonical (vertices float32, faces int64) plus the mask of the input faces that were kept."""
    source = scan.source_path or "<in-memory scan>"
    vertices, faces, kept_faces = _clean(scan, source)
    axis, turn = _facing_axis(vertices)
    nose_tip = _landmark_nose_tip(scan)
    if nose_tip is None:
        nose_tip = _frontal_nose_tip(vertices, axis)
    vertices = vertices - nose_tip
    if turn:
        vertices = vertices @ _rotation_onto_z(axis).T
    planar = vertices[:, :2]
    radius = np.percentile(np.linalg.norm(planar - np.median(planar, axis=0), axis=1), 90)
    if not radius > 0:
        raise ScanFormatError(source, "degenerate mesh: the vertices have no extent in the image plane")
    return (vertices * (face_size / radius)).astype(np.float32), faces, kept_faces


def normalize_scan(scan, face_size: float = DEFAULT_FACE_SIZE):
    """Moves a scan into the canonical render frame: returns (vertices (N, 3) float32, faces (M, 3) int64).

    Non-finite vertices, the faces that use them and unused vertices are dropped; the nose tip (a landmark named
    like "Nose tip" when the scan has one, else the robust most frontal point near the face's centre line) goes to
    the origin; the 90th percentile xy distance from the median vertex becomes ``face_size``. A scan whose depth
    axis is clearly not z is first turned so that its face looks along +z.

    Raises:
        ScanFormatError: naming ``scan.source_path`` when no face is left or the mesh is malformed.
    """
    vertices, faces, _ = _normalize(_as_face_scan(scan), face_size)
    return vertices, faces


MAX_TEXTURE_PIXELS = 64_000_000  # 8000 x 8000; the benchmarks' textures have at most 1.6 M pixels


def _load_texture(path) -> Optional[np.ndarray]:
    """The texture image as (H, W, 3) uint8, or None (logged) when it cannot be read or its header declares more
    than MAX_TEXTURE_PIXELS (a decompression bomb: checked before decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_TEXTURE_PIXELS:
                raise ValueError(f"{image.width * image.height:,} pixels, more than {MAX_TEXTURE_PIXELS:,}")
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        logger.warning("Texture %s is unreadable (%s); rendering the shaded value instead", path, error)
        return None


@dataclass
class _PreparedMesh:
    """A normalised mesh for a backend; ``corner_uv`` (M, 3, 2) and ``texture`` are set together or not at all."""

    vertices: np.ndarray
    faces: np.ndarray
    corner_uv: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None


def _prepare(scan, face_size: float, with_texture: bool) -> _PreparedMesh:
    scan = _as_face_scan(scan)
    vertices, faces, kept_faces = _normalize(scan, face_size)
    return _textured(scan, vertices, faces, kept_faces, with_texture)


def _textured(scan: FaceScan, vertices, faces, kept_faces, with_texture: bool) -> _PreparedMesh:
    """The prepared mesh, with the per-corner uv and texture image of ``scan`` when asked for and readable."""
    if not (with_texture and scan.uv is not None and scan.texture_path):
        return _PreparedMesh(vertices, faces)
    source = scan.source_path or "<in-memory scan>"
    uv = np.asarray(scan.uv, dtype=np.float32)
    corners = np.asarray(scan.faces if scan.uv_faces is None else scan.uv_faces)
    if corners.shape != np.shape(scan.faces) or uv.ndim != 2 or uv.shape[1] != 2:
        problem = f"uv {uv.shape} / uv_faces {corners.shape} do not match faces {np.shape(scan.faces)}"
        raise ScanFormatError(source, problem)
    if corners.min() < 0 or corners.max() >= len(uv):
        raise ScanFormatError(source, f"uv indices must lie in [0, {len(uv)})")
    texture = _load_texture(scan.texture_path)
    if texture is None:
        return _PreparedMesh(vertices, faces)
    return _PreparedMesh(vertices, faces, uv[corners[kept_faces]], texture)


def prepare_batch(scans, face_size: float, with_texture: bool, device) -> list:
    """:func:`_prepare` of many scans, with the normalisation batched in torch on ``device`` (the renderer's GPU
    path): the checks and the nose-tip landmark lookup stay per scan on the host, the principal axes, percentiles,
    medians and the most frontal points run over all scans at once (float64, padded with NaN); vertices come back
    as float32 tensors on ``device``. Same results as the per-scan NumPy normalisation, up to rounding
    (tests/test_cuda_rasterizer.py).
    """
    scans = [_as_face_scan(scan) for scan in scans]
    sources = [scan.source_path or "<in-memory scan>" for scan in scans]
    cleaned = [_clean(scan, source) for scan, source in zip(scans, sources)]
    noses = [_landmark_nose_tip(scan) for scan in scans]
    counts = [len(vertices) for vertices, _, _ in cleaned]
    flat, start = [], 0
    # Groups of at most _NORMALIZE_ELEMENTS padded vertices (torch's quantile takes at most 16 M elements).
    while start < len(scans):
        stop = start + 1
        while stop < len(scans) and (stop + 1 - start) * max(counts[start : stop + 1]) <= _NORMALIZE_ELEMENTS:
            stop += 1
        flat.extend(_normalize_batch([v for v, _, _ in cleaned[start:stop]], noses[start:stop], face_size, device,
                                     sources[start:stop]))  # fmt: skip
        start = stop
    return [_textured(scan, vertices, faces, kept, with_texture)
            for scan, vertices, (_, faces, kept) in zip(scans, flat, cleaned)]  # fmt: skip


_NORMALIZE_ELEMENTS = 1 << 22


def _nanmedian(values: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """np.median over the non-NaN values (the mean of the two middle ones for an even count, unlike torch's)."""
    return torch.nanquantile(values, 0.5, dim=dim, keepdim=keepdim)


def _normalize_batch(vertex_arrays, nose_tips, face_size: float, device, sources) -> list:
    """:func:`_normalize`'s steps after the cleaning, for (N_i, 3) float64 arrays at once: a list of float32 tensors."""
    counts = [len(vertices) for vertices in vertex_arrays]
    rows = to_device(np.repeat(np.arange(len(counts)), counts), device)
    columns = to_device(np.concatenate([np.arange(count) for count in counts]), device)
    padded = torch.full((len(counts), max(counts), 3), float("nan"), dtype=torch.float64, device=device)
    padded[rows, columns] = to_device(np.concatenate(vertex_arrays), device, torch.float64)
    valid = ~padded[..., 0].isnan()

    # _facing_axis: the smallest principal axis, unless the scan is flat-ish (z) or its sign is decided by z.
    centred = padded - padded.nanmean(dim=1, keepdim=True)
    filled = centred.nan_to_num(0.0)
    eigenvalues, eigenvectors = torch.linalg.eigh(filled.transpose(1, 2) @ filled)
    axis = eigenvectors[..., 0]
    flat = eigenvalues[:, 0] >= 0.5 * eigenvalues[:, 1]
    towards_z = axis[:, 2].abs() >= math.cos(math.radians(45.0))
    depth = (centred * axis[:, None]).sum(-1)
    radial = torch.linalg.vector_norm(centred - depth[..., None] * axis[:, None], dim=-1)
    central = radial <= torch.nanquantile(radial, 0.3, dim=1, keepdim=True)
    outer = valid & ~central
    central_mean = (depth.nan_to_num(0.0) * central).sum(1) / central.sum(1).clamp(min=1)
    outer_mean = (depth.nan_to_num(0.0) * outer).sum(1) / outer.sum(1).clamp(min=1)
    turned_axis = torch.where((central_mean < outer_mean)[:, None], -axis, axis)
    z_axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device).expand_as(axis)
    axis = torch.where(flat[:, None], z_axis, torch.where(towards_z[:, None], axis * axis[:, 2:].sign(), turned_axis))
    turn = ~flat & ~towards_z

    # _frontal_nose_tip, where no landmark names the nose tip.
    depth = (padded * axis[:, None]).sum(-1)
    planar = padded - depth[..., None] * axis[:, None]
    radial = torch.linalg.vector_norm(planar - _nanmedian(planar, 1, keepdim=True), dim=-1)
    candidates = radial <= 0.5 * torch.nanquantile(radial, 0.9, dim=1, keepdim=True)
    candidates = torch.where(candidates.any(1, keepdim=True), candidates, valid)
    count = candidates.sum(1, keepdim=True)
    top_k = torch.minimum(count, (count // 100).clamp(min=5))
    order = torch.where(candidates, depth, -torch.inf).argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=device).expand_as(order))
    frontal = _nanmedian(torch.where((candidates & (rank < top_k))[..., None], padded, torch.nan), 1)
    landmarks = [np.full(3, np.nan) if nose is None else nose for nose in nose_tips]
    landmark = to_device(np.stack(landmarks), device, torch.float64)
    nose = torch.where(landmark.isnan().any(1, keepdim=True), frontal, landmark)

    vertices = padded - nose[:, None]
    cross = torch.linalg.cross(axis, z_axis, dim=1)
    skew = torch.zeros(len(counts), 3, 3, dtype=torch.float64, device=device)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -cross[:, 2], cross[:, 1], -cross[:, 0]
    skew = skew - skew.transpose(1, 2)
    rotation = torch.eye(3, dtype=torch.float64, device=device) + skew + skew @ skew / (1.0 + axis[:, 2, None, None])
    vertices = torch.where(turn[:, None, None], vertices @ rotation.transpose(1, 2), vertices)
    planar = vertices[..., :2]
    radius = torch.nanquantile(
        torch.linalg.vector_norm(planar - _nanmedian(planar, 1, keepdim=True), dim=-1), 0.9, dim=1
    )  # fmt: skip
    degenerate = ~(radius > 0)
    if degenerate.any():  # the one read back to the host
        source = sources[int(degenerate.nonzero()[0, 0])]
        raise ScanFormatError(source, "degenerate mesh: the vertices have no extent in the image plane")
    scaled = (vertices * (face_size / radius)[:, None, None]).to(torch.float32)[rows, columns]
    return list(scaled.split(counts))


def _view_rotations(views) -> np.ndarray:
    """(V, 3, 3) head rotations: pitch (about -x, so the nose moves to +y) first, then yaw (about +y, nose to +x)."""
    rotations = []
    for yaw, pitch in views:
        cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
        yaw_matrix = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        pitch_matrix = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
        rotations.append(yaw_matrix @ pitch_matrix)
    return np.stack(rotations)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (N, 3)."""
    corners = take(vertices, faces)
    face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)
    normals = torch.zeros_like(vertices)
    for corner in range(3):
        normals.index_add_(0, faces[:, corner], face_normals)
    return torch.nn.functional.normalize(normals, dim=1)


def shade(unit_normals: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The ``shaded`` channel of camera-frame unit normals whose (x, y, z) lie along ``dim`` (which is removed)."""
    light = torch.tensor(LIGHT_DIRECTION, dtype=unit_normals.dtype, device=unit_normals.device)
    return AMBIENT + (1.0 - AMBIENT) * torch.tensordot(light, unit_normals, dims=([0], [dim])).clamp(min=0.0)


def _compose_channels(channels, pixel, depth_z, normals, rgb, has_rgb, num_images: int, size: int) -> torch.Tensor:
    """Turns per-pixel fragments into (num_images, C, size, size) channel images; shared by both backends.

    ``pixel`` (F,) indexes the flattened (num_images, size, size) grid; ``depth_z`` (F,) is the camera-frame z,
    ``normals`` (3, F) the interpolated (unnormalised) camera-frame normals, ``rgb`` (3, F) the texture colour where
    ``has_rgb`` (F,) is set.
    """
    # Unit normals turned towards the camera, so that shading does not depend on the triangles' winding. Few,
    # fused operations: each one on this many pixels wakes torch's threads, which is slow under a PASSIVE wait policy.
    unit = normals * torch.copysign(torch.rsqrt((normals * normals).sum(0).clamp_(min=1e-24)), normals[2])
    shaded = shade(unit)
    columns = {
        "shaded": lambda: [shaded],
        "depth": lambda: [((depth_z - DEPTH_FAR) / (DEPTH_NEAR - DEPTH_FAR)).clamp(0.0, 1.0)],
        "normals": lambda: [(unit + 1.0) / 2.0],
        "texture": lambda: [torch.where(has_rgb, rgb, shaded)],
    }
    pixels_per_image = size * size
    num_channels = channel_count(channels)
    shape = (num_images, num_channels, size, size)
    images = zeros(shape, unit.dtype, unit.device)
    flat = images.view(-1)
    first_channel = pixel + (pixel // pixels_per_image) * ((num_channels - 1) * pixels_per_image)
    channel_offsets = torch.arange(num_channels, device=pixel.device)[:, None] * pixels_per_image
    values = torch.cat([column.view(-1, len(pixel)) for name in channels for column in columns[name]()])
    flat.scatter_(0, (first_channel + channel_offsets).view(-1), values.view(-1))
    return images


def _default_device(backend: str, rasterizer: str) -> torch.device:
    """A GPU for the torch backend when torch sees one and no CPU rasterizer is named; the CPU otherwise, and in a
    forked process whose parent used CUDA (a dataset preparation worker), where CUDA cannot start again."""
    gpu = backend == "torch" and rasterizer in ("auto", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu and not torch.cuda._is_in_bad_fork() else "cpu")


@contextlib.contextmanager
def _torch_threads(count: Optional[int]):
    """torch's intra-op threads set to ``count`` inside the block (unchanged for None), restored after it."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MultiviewRenderer:
    """Renders face scans as V orthographic views with stacked channels, as float32 arrays (V, C, H, W).

    Args:
        views: (yaw, pitch) pairs in degrees; yaw +θ moves the nose to the image's right, pitch +θ moves it up.
        image_size: side of the square images in pixels (at least 8).
        channels: names from :data:`CHANNEL_WIDTHS`, stacked in this order.
        backend: ``"torch"`` (z-buffer rasterizer, CPU or CUDA, batched over views and scans) or ``"pyrender"``
            (OpenGL through EGL; needs libegl1 libegl-mesa0 libgl1-mesa-dri and PYOPENGL_PLATFORM=egl).
        device: torch device of the torch backend; by default a GPU when torch sees one (and this process is not a
            fork of one that used CUDA), unless a CPU rasterizer is named; the pyrender backend runs on the CPU side.
        rasterizer: the torch backend's rasterizer (:mod:`.rasterization`): ``"auto"`` (compiled on the CPU when
            numba is installed, the numba.cuda kernels on a GPU where numba.cuda works, else vectorised),
            ``"compiled"``, ``"cuda"`` or ``"vectorized"``.
        face_size: robust face radius in the canonical frame, where the image spans [-1, 1].
        num_threads: torch threads of the torch backend on the CPU while it renders (restored afterwards), or None
            for the process's setting. One by default: the compiled rasterizer is single-threaded, more threads gain
            little on the remaining tensor operations, and on a busy machine waiting threads make them ten times slower
            and more (benchmarks/bench_rendering.py measures both, idle and beside competing processes).

    Both backends agree on the same scan within a mean absolute difference below 0.02 in every channel, and their
    foreground masks differ only within one pixel of the silhouette (at 224 px, at least 98% of the masks' union).
    """

    def __init__(
        self,
        views=DEFAULT_VIEWS,
        image_size: int = _DEFAULT_IMAGE_SIZE,
        channels=DEFAULT_CHANNELS,
        backend: str = "torch",
        device=None,
        face_size: float = DEFAULT_FACE_SIZE,
        rasterizer: str = "auto",
        num_threads: Optional[int] = 1,
    ):
        try:
            self.views = tuple((float(yaw), float(pitch)) for yaw, pitch in views)
        except (TypeError, ValueError) as error:
            raise ValueError(f"views must be (yaw, pitch) pairs in degrees, got {views!r}") from error
        if not self.views:
            raise ValueError("views must name at least one (yaw, pitch) pair")
        if not all(math.isfinite(angle) for view in self.views for angle in view):
            raise ValueError(f"view angles must be finite, got {self.views}")
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(f"image_size must be an integer of at least 8, got {image_size}")
        self.channels = tuple(_check_channel(name) for name in channels)
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be a non-empty list of distinct names, got {channels}")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown render backend {backend!r}; choose from {BACKENDS}")
        if not face_size > 0:
            raise ValueError(f"face_size must be positive, got {face_size}")
        self.device = torch.device(device if device is not None else _default_device(backend, rasterizer))
        if backend == "pyrender" and self.device.type != "cpu":
            raise ValueError(f"device={device} applies to backend='torch'; the pyrender backend renders with OpenGL")
        resolve_method(rasterizer, self.device)  # fails early on an unknown or unavailable rasterizer
        self.rasterizer = rasterizer
        self.num_threads = num_threads
        self.image_size = int(image_size)
        self.backend = backend
        self.face_size = float(face_size)
        self.num_channels = channel_count(self.channels)
        self._rotations = _view_rotations(self.views)
        self._pivot = np.array([0.0, 0.0, -self.face_size])

    def render(self, scan) -> np.ndarray:
        """Renders one FaceScan, trimesh.Trimesh or (vertices, faces) pair as (V, C, H, W) float32."""
        return self.render_batch([scan])[0]

    def render_batch(self, scans) -> np.ndarray:
        """Renders a list of scans as (B, V, C, H, W) float32; the torch backend draws many scans per pass (on a GPU,
        normalising them in one batch too)."""
        scans = list(scans)
        if not scans:
            return np.zeros((0, len(self.views), self.num_channels, self.image_size, self.image_size), np.float32)
        if self.backend == "torch" and (self.device.type != "cpu" or self.rasterizer == "cuda"):  # the GPU path
            meshes = prepare_batch(scans, self.face_size, "texture" in self.channels, self.device)
        else:
            meshes = [_prepare(scan, self.face_size, "texture" in self.channels) for scan in scans]
        if self.backend == "pyrender":
            images = self._images(self._pyrender_fragments(meshes), len(meshes))
        else:
            # The whole batch is one pass, except for the vectorised rasterizer on the CPU: there a pass per few
            # scans is faster, because a large batch's z-buffer and sort outgrow the caches (8 scans of 3 views at
            # 224 px cost 1.3x the CPU time per scan of single-scan passes). The compiled rasterizer draws 8 such
            # scans 1.1-1.2x faster in one pass than in eight.
            per_scan = len(self.views) * self.image_size**2
            split = self.device.type == "cpu" and resolve_method(self.rasterizer, self.device) == "vectorized"
            step = max(1, _CPU_PIXELS_PER_PASS // per_scan) if split else len(meshes)
            passes = [meshes[start : start + step] for start in range(0, len(meshes), step)]
            with _torch_threads(self.num_threads if self.device.type == "cpu" else None):
                parts = [self._images(self._torch_fragments(part), len(part)) for part in passes]
            images = parts[0] if len(parts) == 1 else torch.cat(parts)
        return images.reshape(len(meshes), len(self.views), *images.shape[1:]).cpu().numpy()

    def _images(self, fragments, num_scans: int) -> torch.Tensor:
        num_images = num_scans * len(self.views)
        return _compose_channels(self.channels, *fragments, num_images=num_images, size=self.image_size)

    def _torch_fragments(self, meshes):
        device, num_views = self.device, len(self.views)
        # Host data goes to a GPU without waiting for it (rasterization.to_device), and the vertices of a batch
        # normalised there (prepare_batch) are already on it.
        vertex_offsets = np.cumsum([0] + [len(mesh.vertices) for mesh in meshes])
        face_counts = [len(mesh.faces) for mesh in meshes]
        vertices = to_device(torch.cat([torch.as_tensor(mesh.vertices) for mesh in meshes]), device)
        faces = to_device(np.concatenate([mesh.faces + start for mesh, start in zip(meshes, vertex_offsets)]), device)
        face_scan = torch.repeat_interleave(
            torch.arange(len(meshes), device=device), to_device(face_counts, device), output_size=sum(face_counts)
        )  # fmt: skip
        rotations = to_device(self._rotations, device, vertices.dtype)
        pivot = to_device(self._pivot, device, vertices.dtype)
        view_vertices = (torch.einsum("vij,nj->vni", rotations, vertices - pivot) + pivot).reshape(-1, 3)
        view_normals = torch.einsum("vij,nj->vni", rotations, _vertex_normals(vertices, faces)).reshape(-1, 3)
        view_range = torch.arange(num_views, device=device)
        view_faces = (faces[None] + view_range[:, None, None] * len(vertices)).reshape(-1, 3)
        face_image = (face_scan[None] * num_views + view_range[:, None]).reshape(-1)
        attributes = torch.cat([view_vertices[:, 2:], view_normals], dim=1).T.contiguous()  # (z, normal) x vertices
        corner_values = take(attributes, view_faces.T, dim=-1)
        textured = [index for index, mesh in enumerate(meshes) if mesh.texture is not None]
        if textured:
            corner_uv = torch.zeros(2, 3, len(faces), dtype=corner_values.dtype, device=device)
            face_offsets = np.cumsum([0] + [len(mesh.faces) for mesh in meshes])
            for index in textured:
                start, stop = int(face_offsets[index]), int(face_offsets[index + 1])
                corner_uv[:, :, start:stop] = torch.from_numpy(meshes[index].corner_uv).to(device).permute(2, 1, 0)
            corner_values = torch.cat([corner_values, corner_uv.repeat(1, 1, num_views)], dim=0)
        num_images = len(meshes) * num_views
        pixel, face, values = rasterize(
            view_vertices, view_faces, face_image, num_images, self.image_size, corner_values, self.rasterizer
        )
        depth_z, normals = values[0], values[1:4]
        rgb = torch.zeros_like(normals)
        has_rgb = torch.zeros(len(pixel), dtype=torch.bool, device=device)
        pixel_scan = take(face_scan, face % len(faces)) if textured else None  # which scan drew each pixel
        for index in textured:
            selected = torch.nonzero(pixel_scan == index).squeeze(1)
            texture = torch.as_tensor(np.array(meshes[index].texture), device=device)
            rgb[:, selected] = _sample_texture(texture, values[4:6, selected])
            has_rgb[selected] = True
        return pixel, depth_z, normals, rgb, has_rgb

    def _pyrender_fragments(self, meshes):
        opengl = _shared_opengl_views()
        pixels, depths, normals, colours, has_colours = [], [], [], [], []
        poses = np.tile(np.eye(4), (len(self.views), 1, 1))
        poses[:, :3, :3] = self._rotations
        poses[:, :3, 3] = self._pivot - self._rotations @ self._pivot
        pixels_per_image = self.image_size * self.image_size
        for index, mesh in enumerate(meshes):
            vertex_normals = _vertex_normals(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces)).numpy()
            views = opengl.render(mesh, vertex_normals, poses, self.image_size)
            for view, (normal_rgba, depth, texture_rgba) in enumerate(views):
                coverage = normal_rgba[..., 3].astype(np.float32)
                mask = (coverage >= 128) & (depth > 0)
                pixels.append((index * len(self.views) + view) * pixels_per_image + np.flatnonzero(mask))
                depths.append(_CAMERA_Z - _orthographic_distance(depth[mask]))
                # Multisampling blends silhouette pixels with the transparent background: divide by the coverage.
                object_normals = normal_rgba[mask, :3] / coverage[mask, None] * 2.0 - 1.0
                normals.append(object_normals @ self._rotations[view].T)
                if texture_rgba is None:
                    has_colours.append(np.zeros(len(object_normals), dtype=bool))
                    colours.append(np.zeros_like(object_normals))
                else:
                    texture_coverage = texture_rgba[mask, 3].astype(np.float32)
                    has_colours.append(texture_coverage > 0)
                    colours.append(texture_rgba[mask, :3] / np.maximum(texture_coverage, 1.0)[:, None])
        return (
            torch.from_numpy(np.concatenate(pixels)),
            torch.from_numpy(np.concatenate(depths).astype(np.float32)),
            torch.from_numpy(np.concatenate(normals).astype(np.float32).T),
            torch.from_numpy(np.concatenate(colours).astype(np.float32).T),
            torch.from_numpy(np.concatenate(has_colours)),
        )


def _sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear (H, W, 3) uint8 texture lookup at (2, P) uv (origin bottom-left, clamped to the edge) as (3, P)."""
    image = texture.permute(2, 0, 1)[None].float() / 255.0
    grid = torch.stack((uv[0] * 2.0 - 1.0, 1.0 - uv[1] * 2.0), dim=-1)[None, None].to(image.dtype)
    sampled = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, 0]


# The pyrender camera sits on +z looking down -z; its clip range [_CAMERA_Z - _CAMERA_ZFAR, _CAMERA_Z - _CAMERA_ZNEAR]
# = [-10, 10] in canonical units holds any normalised face.
_CAMERA_Z = 11.0
_CAMERA_ZNEAR = 1.0
_CAMERA_ZFAR = 21.0


def _orthographic_distance(depth: np.ndarray) -> np.ndarray:
    """Undoes pyrender's perspective depth linearisation, which it applies to orthographic cameras as well."""
    return _CAMERA_ZNEAR + _CAMERA_ZFAR - _CAMERA_ZNEAR * _CAMERA_ZFAR / depth


_SHARED_OPENGL_VIEWS = None


def _shared_opengl_views() -> "_OpenGLViews":
    """The process's one pyrender renderer, created on first use and kept until exit.

    Deleting a pyrender OffscreenRenderer terminates the EGL display, which breaks every other renderer of the
    process, so all MultiviewRenderers share this one (like any OpenGL context, from one thread at a time).
    """
    global _SHARED_OPENGL_VIEWS
    if _SHARED_OPENGL_VIEWS is None:
        _SHARED_OPENGL_VIEWS = _OpenGLViews()
    return _SHARED_OPENGL_VIEWS


class _OpenGLViews:
    """A pyrender scene, orthographic camera and OffscreenRenderer, created once and reused for every scan."""

    def __init__(self):
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        try:
            import pyrender

            self.renderer = pyrender.OffscreenRenderer(_DEFAULT_IMAGE_SIZE, _DEFAULT_IMAGE_SIZE)
        except Exception as error:
            raise RuntimeError(
                f"OpenGL (EGL) could not be initialised for backend='pyrender' ({type(error).__name__}: {error}). "
                "Install libegl1 libegl-mesa0 libgl1-mesa-dri and set PYOPENGL_PLATFORM=egl before anything imports "
                "OpenGL, or use backend='torch'."
            ) from error
        self.pyrender = pyrender
        self.scene = pyrender.Scene(bg_color=np.zeros(4))
        camera_pose = np.eye(4)
        camera_pose[2, 3] = _CAMERA_Z
        camera = pyrender.OrthographicCamera(xmag=1.0, ymag=1.0, znear=_CAMERA_ZNEAR, zfar=_CAMERA_ZFAR)
        self.scene.add(camera, pose=camera_pose)
        flags = pyrender.RenderFlags
        self.flags = flags.FLAT | flags.RGBA | flags.SKIP_CULL_FACES

    def render(self, mesh: _PreparedMesh, vertex_normals: np.ndarray, poses: np.ndarray, size: int):
        """Per view: (normal colours RGBA uint8, pyrender depth, texture RGBA uint8 or None), all (size, size, ...)."""
        pyrender = self.pyrender
        self.renderer.viewport_width = self.renderer.viewport_height = size
        material = pyrender.MetallicRoughnessMaterial(baseColorFactor=np.ones(4), doubleSided=True)
        colours = np.concatenate([(vertex_normals + 1.0) / 2.0, np.ones((len(vertex_normals), 1))], axis=1)
        primitive = pyrender.Primitive(positions=mesh.vertices, color_0=colours, indices=mesh.faces, material=material)
        nodes = [self.scene.add(pyrender.Mesh([primitive]))]
        if mesh.texture is not None:
            nodes.append(self.scene.add(self._textured_mesh(mesh)))
        try:
            outputs = []
            for pose in poses:
                for node in nodes:
                    self.scene.set_pose(node, pose)
                outputs.append(self._render_passes(nodes))
            return outputs
        finally:
            for node in nodes:
                self.scene.remove_node(node)

    def _render_passes(self, nodes):
        for node in nodes:
            node.mesh.is_visible = node is nodes[0]
        normal_rgba, depth = self.renderer.render(self.scene, flags=self.flags)
        if len(nodes) == 1:
            return normal_rgba, depth, None
        for node in nodes:
            node.mesh.is_visible = node is nodes[1]
        texture_rgba, _ = self.renderer.render(self.scene, flags=self.flags)
        return normal_rgba, depth, texture_rgba

    def _textured_mesh(self, mesh: _PreparedMesh):
        pyrender = self.pyrender
        linear, clamp = pyrender.constants.GLTF.LINEAR, pyrender.constants.GLTF.CLAMP_TO_EDGE
        sampler = pyrender.Sampler(magFilter=linear, minFilter=linear, wrapS=clamp, wrapT=clamp)
        # RGBA rows are 4-byte aligned, which OpenGL's default unpack alignment needs for odd texture widths.
        rgba = np.concatenate([mesh.texture, np.full(mesh.texture.shape[:2] + (1,), 255, np.uint8)], axis=2)
        texture = pyrender.Texture(source=rgba, source_channels="RGBA", sampler=sampler)
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=np.ones(4), baseColorTexture=texture, doubleSided=True
        )
        corners = len(mesh.faces) * 3
        primitive = pyrender.Primitive(
            positions=mesh.vertices[mesh.faces].reshape(corners, 3),
            texcoord_0=mesh.corner_uv.reshape(corners, 2),
            indices=np.arange(corners).reshape(-1, 3),
            material=material,
        )
        return pyrender.Mesh([primitive])

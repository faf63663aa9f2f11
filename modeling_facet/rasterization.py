"""Z-buffer rasterization of many orthographic images at once, for the renderer's ``"torch"`` backend.

Three implementations with the same inputs and outputs (:func:`rasterize` picks one):

- ``"compiled"``: one pass over the triangles and one over the covered pixels, compiled by numba on first use
  (about 3 s, then cached on disk). The fastest on the CPU; it needs numba, which the package installs.
- ``"cuda"``: the same two passes as numba.cuda kernels on a GPU, one thread per triangle (an atomic max of packed
  (depth, triangle) keys keeps the nearest one per pixel) and one per covered pixel; they share the compiled
  rasterizer's per-triangle arithmetic. Compiled for the GPU on first use.
- ``"vectorized"``: torch operations only, without a Python loop over triangles, so it runs on any device (on a
  GPU where numba.cuda is unavailable, and on the CPU where numba is missing, as for Hub remote-code users).

All test pixel centres against each triangle with the same barycentric tolerance and keep the nearest triangle per
pixel; their coverage and interpolated values agree except where a pixel centre lies on an edge shared by two
triangles (rounding decides which one draws it). Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the
``"cuda"`` kernels also run, slowly, on CPU tensors: tests/test_cuda_rasterizer.py checks them that way.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch


try:
    import numba
except ImportError:  # the vectorised rasterizer is used instead
    numba = None


logger = logging.getLogger(__name__)

RASTERIZERS = ("auto", "compiled", "vectorized", "cuda")
# Candidate window sides (pixels) that the vectorised rasterizer rounds triangles' bounding-box widths and heights up to.
_WINDOW_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_MAX_SAMPLES_PER_CHUNK = 1 << 21
_BARYCENTRIC_TOLERANCE = 1e-5


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    face_image: torch.Tensor,
    num_images: int,
    size: int,
    corner_attributes: torch.Tensor,
    method: str = "auto",
):
    """Z-buffer rasterization of many orthographic images at once: the nearest triangle at every pixel centre.

    Args:
        vertices: (P, 3) float camera-frame positions; x, y in [-1, 1] cover the image, larger z is nearer.
        faces: (T, 3) long vertex indices.
        face_image: (T,) long index of the image each triangle is drawn into.
        num_images: number of images; size: their side in pixels.
        corner_attributes: (A, 3, T) float values at each triangle's corners, interpolated linearly over it.
        method: ``"compiled"``, ``"cuda"``, ``"vectorized"`` or ``"auto"`` (compiled on the CPU when numba is
            installed, the CUDA kernels on a GPU when numba.cuda works there, vectorised otherwise).

    Returns:
        (pixel, face, values): for every covered pixel centre, its index into the flattened
        (num_images, size, size) grid, the nearest triangle there and the (A, F) interpolated attributes, in
        increasing pixel order (every method).
    """
    resolved = resolve_method(method, vertices.device)
    if resolved == "cuda":
        try:
            from .rasterization_cuda import rasterize_cuda

            return rasterize_cuda(vertices, faces, face_image, num_images, size, corner_attributes)
        except Exception as error:  # numba.cuda without a usable driver or NVVM: only "auto" falls back
            if method != "auto":
                raise
            _CUDA_PROBLEM.append(f"{type(error).__name__}: {error}")
            logger.warning("The CUDA rasterizer failed (%s); using rasterizer='vectorized'", _CUDA_PROBLEM[0])
            resolved = "vectorized"
    if resolved == "vectorized":
        return _rasterize_vectorized(vertices, faces, face_image, num_images, size, corner_attributes)
    arrays = (tensor.contiguous().numpy() for tensor in (vertices, faces, face_image))
    corners = corner_attributes.to(vertices.dtype).contiguous().numpy()
    pixel, face, values = _rasterize_compiled(*arrays, num_images, size, corners, _BARYCENTRIC_TOLERANCE)
    return torch.from_numpy(pixel), torch.from_numpy(face), torch.from_numpy(values)


def resolve_method(method: str, device) -> str:
    """The rasterizer that ``method`` names on ``device``: ``"compiled"``, ``"cuda"`` or ``"vectorized"``.

    Raises:
        ValueError: for an unknown method, ``"compiled"`` on a device other than the CPU, or ``"cuda"`` on a device
            other than a GPU (the CPU is allowed under numba's CUDA simulator).
        ImportError: for ``"compiled"`` or ``"cuda"`` when numba (numba.cuda) is not available.
    """
    if method not in RASTERIZERS:
        raise ValueError(f"Unknown rasterizer {method!r}; choose from {RASTERIZERS}")
    kind = torch.device(device).type
    if method == "auto":
        if kind == "cpu":
            return "compiled" if numba is not None else "vectorized"
        return "cuda" if kind == "cuda" and cuda_kernels_available() else "vectorized"
    if method == "compiled" and kind != "cpu":
        raise ValueError(f"The compiled rasterizer runs on the CPU; use rasterizer='vectorized' on {device}")
    if method == "cuda" and not (kind == "cuda" or (kind == "cpu" and _cuda_simulator())):
        raise ValueError(f"rasterizer='cuda' runs on a CUDA device (or under NUMBA_ENABLE_CUDASIM=1), not on {device}")
    if method != "vectorized" and numba is None:
        raise ImportError(f"rasterizer={method!r} needs numba (pip install numba); or use rasterizer='vectorized'")
    if method == "cuda" and not cuda_kernels_available():
        raise ImportError(f"rasterizer='cuda' needs a working numba.cuda: {_cuda_problem()}")
    return method


_CUDA_PROBLEM = []  # why the CUDA kernels cannot run in this process, once known


def _cuda_simulator() -> bool:
    return numba is not None and bool(numba.config.ENABLE_CUDASIM)


def _cuda_problem():
    """None when numba.cuda can launch kernels here, else why not."""
    if _CUDA_PROBLEM:
        return _CUDA_PROBLEM[0]
    if numba is None:
        return "numba is not installed"
    try:
        from numba import cuda

        if not cuda.is_available():
            return "numba.cuda finds no CUDA driver or device"
    except Exception as error:  # an import or driver error: the vectorised rasterizer still runs
        return f"{type(error).__name__}: {error}"
    return None


def cuda_kernels_available() -> bool:
    """Whether ``rasterizer="cuda"`` can run here (a GPU with a driver numba.cuda can use, or its simulator)."""
    if numba is None:
        return False
    if not _CUDA_PROBLEM and (problem := _cuda_problem()) is not None:
        _CUDA_PROBLEM.append(problem)
    return not _CUDA_PROBLEM


def _compile(function):
    """``function`` compiled by numba (cached on disk, releasing the GIL); unchanged, and unused, without numba."""
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_compile
def _screen_triangle(screen_x, screen_y, faces, triangle):
    """A triangle's corners in pixels, (x0, x1, x2) and (y0, y1, y2), and the planes (constant, per column, per row)
    of its first two barycentric weights over the pixel grid, which are meaningless for a degenerate triangle."""
    a, b, c = faces[triangle, 0], faces[triangle, 1], faces[triangle, 2]
    x0, y0, x1, y1, x2, y2 = screen_x[a], screen_y[a], screen_x[b], screen_y[b], screen_x[c], screen_y[c]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)  # signed, doubled
    scale = 1.0 / area if area != 0.0 else 0.0
    first = ((x1 * y2 - x2 * y1) * scale, (y1 - y2) * scale, (x2 - x1) * scale)
    second = ((x2 * y0 - x0 * y2) * scale, (y2 - y0) * scale, (x0 - x2) * scale)
    return (x0, x1, x2), (y0, y1, y2), area, first, second


@_compile
def _weights(first, second, column, row):
    """The three barycentric weights at pixel centre (column, row) from the planes of :func:`_screen_triangle`."""
    w0 = first[0] + first[1] * column + first[2] * row
    w1 = second[0] + second[1] * column + second[2] * row
    return w0, w1, 1.0 - w0 - w1


@_compile
def _pixel_bounds(corners_x, corners_y, area, size):
    """The first and last pixel column and row (left, right, top, bottom) of a triangle's bounding box in the image;
    an empty range (left > right) for a degenerate triangle, one with a non-finite corner or one outside the image."""
    if not (math.isfinite(area) and abs(area) > 1e-12):
        return 0, -1, 0, -1
    # Clamped before rounding, so that far-away corners stay within the integers' range; int() because math.ceil
    # gives a float on CUDA devices.
    left = max(int(math.ceil(max(min(corners_x[0], corners_x[1], corners_x[2]), -1.0))), 0)
    right = min(int(math.floor(min(max(corners_x[0], corners_x[1], corners_x[2]), size))), size - 1)
    top = max(int(math.ceil(max(min(corners_y[0], corners_y[1], corners_y[2]), -1.0))), 0)
    bottom = min(int(math.floor(min(max(corners_y[0], corners_y[1], corners_y[2]), size))), size - 1)
    return left, right, top, bottom


@_compile
def _rasterize_compiled(vertices, faces, face_image, num_images, size, corner_attributes, tolerance):
    """:func:`rasterize` on numpy arrays, in float64: a z-buffer pass over the triangles' bounding boxes, then a pass
    over the pixels that interpolates the attributes of each covered pixel's nearest triangle."""
    screen_x = (vertices[:, 0].astype(np.float64) + 1.0) * (size / 2.0) - 0.5
    screen_y = (1.0 - vertices[:, 1].astype(np.float64)) * (size / 2.0) - 0.5
    pixels_per_image = size * size
    depth = np.full(num_images * pixels_per_image, -np.inf, np.float32)
    nearest = np.full(num_images * pixels_per_image, -1, np.int32)
    covered = 0
    for triangle in range(faces.shape[0]):
        corners_x, corners_y, area, first, second = _screen_triangle(screen_x, screen_y, faces, triangle)
        left, right, top, bottom = _pixel_bounds(corners_x, corners_y, area, size)
        z0, z1, z2 = vertices[faces[triangle, 0], 2], vertices[faces[triangle, 1], 2], vertices[faces[triangle, 2], 2]
        image_start = face_image[triangle] * pixels_per_image
        for row in range(top, bottom + 1):
            for column in range(left, right + 1):
                w0, w1, w2 = _weights(first, second, column, row)
                if w0 < -tolerance or w1 < -tolerance or w2 < -tolerance:
                    continue
                z = w0 * z0 + w1 * z1 + w2 * z2
                pixel = image_start + row * size + column
                if z > depth[pixel]:
                    if nearest[pixel] < 0:
                        covered += 1
                    depth[pixel] = z
                    nearest[pixel] = triangle
    pixels = np.empty(covered, np.int64)
    triangles = np.empty(covered, np.int64)
    values = np.empty((corner_attributes.shape[0], covered), corner_attributes.dtype)
    fragment = 0
    for pixel in range(nearest.shape[0]):
        triangle = nearest[pixel]
        if triangle < 0:
            continue
        _, _, _, first, second = _screen_triangle(screen_x, screen_y, faces, triangle)
        w0, w1, w2 = _weights(first, second, pixel % size, (pixel % pixels_per_image) // size)
        for attribute in range(corner_attributes.shape[0]):
            values[attribute, fragment] = (
                w0 * corner_attributes[attribute, 0, triangle]
                + w1 * corner_attributes[attribute, 1, triangle]
                + w2 * corner_attributes[attribute, 2, triangle]
            )
        pixels[fragment], triangles[fragment] = pixel, triangle
        fragment += 1
    return pixels, triangles, values


def zeros(shape, dtype, device) -> torch.Tensor:
    """Zeros; on the CPU from numpy's calloc, so pages that are never written are never touched."""
    if torch.device(device).type == "cpu":
        return torch.from_numpy(np.zeros(shape, np.dtype(str(dtype).removeprefix("torch."))))
    return torch.zeros(shape, dtype=dtype, device=device)


def to_device(array, device, dtype=None) -> torch.Tensor:
    """A host array or tensor on ``device``; to a GPU through pinned memory without blocking, so that the copy does
    not wait for the work already queued there (a copy from pageable memory does: a host synchronisation)."""
    tensor = torch.as_tensor(array, dtype=dtype)
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def take(values: torch.Tensor, index: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``values`` indexed along its first (``dim=0``) or last dimension by a long ``index`` of any shape.

    Goes through index_select on at most two dimensions, several times faster on the CPU than advanced indexing or
    index_select along the last dimension of a 3-D tensor.
    """
    flat_index = index.reshape(-1)
    if dim == 0:
        return values.index_select(0, flat_index).view(*index.shape, *values.shape[1:])
    if dim not in (-1, values.dim() - 1):
        raise ValueError(f"take indexes the first or the last dimension, not {dim}")
    taken = values.reshape(-1, values.shape[-1]).index_select(1, flat_index)
    return taken.view(*values.shape[:-1], *index.shape)


def _doubled_area(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed doubled areas (T,) of triangles with corner coordinates x, y (3, T)."""
    return (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])


def _triangle_planes(tri_x, tri_y, tri_z, origin_x, origin_y) -> torch.Tensor:
    """(4, 3, T) planes over each triangle's pixel window: value = p[:, 0] + p[:, 1] * x' + p[:, 2] * y' for the
    quantised depth (row 0) and the three barycentric weights (rows 1-3; inside the triangle all are >= 0).

    Corner values come as (3, T) rows, and so do the planes' coefficients: rows of triangles keep every operation on
    long contiguous vectors. x' = x - origin_x and y' = y - origin_y count pixels from the window's corner, which
    keeps the float32 evaluation accurate to about 1e-6 anywhere in a large image. Triangles must not be degenerate.
    """
    x = tri_x - origin_x.to(tri_x.dtype)
    y = tri_y - origin_y.to(tri_y.dtype)
    x_next, y_next = x[[1, 2, 0]], y[[1, 2, 0]]
    x_prev, y_prev = x[[2, 0, 1]], y[[2, 0, 1]]
    area = _doubled_area(x, y)
    planes = torch.empty(4, 3, x.shape[1], dtype=x.dtype, device=x.device)
    planes[1:, 0] = (x_next * y_prev - x_prev * y_next) / area
    planes[1:, 1] = (y_next - y_prev) / area
    planes[1:, 2] = (x_prev - x_next) / area
    planes[0] = tri_z[0] * planes[1] + tri_z[1] * planes[2] + tri_z[2] * planes[3]
    return planes


@functools.lru_cache(maxsize=256)
def _window_samples(window: tuple, size: int, dtype, device) -> tuple:
    """For a window of (columns, rows) pixels: each sample's pixel offset in the image and its (1, x', y') (3, n)."""
    columns, rows = window
    offsets = torch.arange(columns * rows, device=device)
    samples = torch.stack([torch.ones_like(offsets), offsets % columns, offsets // columns]).to(dtype)
    return (offsets // columns) * size + offsets % columns, samples


def _draw_windows(keys, planes, pixel_base, first_triangle: int, window: tuple, size: int):
    """Scatter-max the packed (depth, triangle) keys of every pixel centre that the triangles cover into ``keys``.

    ``planes`` (4, 3, n) hold each triangle's quantised-depth and barycentric planes over its window of
    (columns, rows) pixels, whose top-left pixel is ``pixel_base``; triangles are numbered from ``first_triangle``.
    """
    window_size = window[0] * window[1]
    offset_pixel, samples = _window_samples(window, size, planes.dtype, keys.device)
    chunk = max(1, _MAX_SAMPLES_PER_CHUNK // window_size)
    for start in range(0, planes.shape[2], chunk):
        values = samples.T @ planes[:, :, start : start + chunk]  # (4, window_size, n)
        outside = torch.minimum(torch.minimum(values[1], values[2]), values[3]) < -_BARYCENTRIC_TOLERANCE
        count = values.shape[2]
        triangle = torch.arange(start + first_triangle, start + first_triangle + count, device=keys.device)
        key = values[0].long().bitwise_left_shift_(32).add_(triangle).masked_fill_(outside, 0)
        pixel = pixel_base[start : start + chunk] + offset_pixel[:, None]
        keys.scatter_reduce_(0, pixel.view(-1), key.view(-1), reduce="amax")


def _rasterize_vectorized(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    face_image: torch.Tensor,
    num_images: int,
    size: int,
    corner_attributes: torch.Tensor,
):
    """Without a Python loop over triangles: triangles are grouped by bounding-box shape; each group tests a fixed
    window of candidate pixel centres per triangle (large triangles in chunks), and one scatter-max over packed
    (depth, triangle) keys keeps the nearest triangle per pixel. Attributes are interpolated through per-triangle
    planes (value = a + b x + c y), so each covered pixel gathers one row of its triangle instead of three corners
    and their barycentric weights.
    """
    device, dtype = vertices.device, vertices.dtype
    corner_index = faces.T  # (3, T): per-triangle values are kept as rows of triangles throughout
    tri_x = take((vertices[:, 0] + 1.0) * (size / 2.0) - 0.5, corner_index)
    tri_y = take((1.0 - vertices[:, 1]) * (size / 2.0) - 0.5, corner_index)
    x_low = tri_x.amin(0).ceil().clamp(min=0).long()
    y_low = tri_y.amin(0).ceil().clamp(min=0).long()
    width = tri_x.amax(0).floor().clamp(max=size - 1).long() - x_low + 1
    height = tri_y.amax(0).floor().clamp(max=size - 1).long() - y_low + 1
    area = _doubled_area(tri_x, tri_y)
    sides = [side for side in _WINDOW_SIDES if side < size] + [size]
    side_tensor = torch.tensor(sides, device=device)
    column_class, row_class = torch.bucketize(width, side_tensor), torch.bucketize(height, side_tensor)
    # Triangles that cover no pixel centre (common in dense scans) or have no area are dropped before any more work;
    # the others are sorted by window shape.
    group = torch.where(
        (width > 0) & (height > 0) & (area.abs() > 1e-12), column_class * len(sides) + row_class, len(sides) ** 2
    )
    counts = torch.bincount(group, minlength=len(sides) ** 2 + 1).tolist()
    order = torch.argsort(group, stable=True)[: len(group) - counts[-1]]
    tri_x, tri_y = take(tri_x, order, dim=-1), take(tri_y, order, dim=-1)
    x_low, y_low = take(x_low, order), take(y_low, order)
    # Windows never cross the image's right or bottom edge: near it they start further left / up.
    origin_x = torch.minimum(x_low, size - take(side_tensor, take(column_class, order)))
    origin_y = torch.minimum(y_low, size - take(side_tensor, take(row_class, order)))
    # Keys pack the depth, quantised to 31 bits (with headroom for the barycentric tolerance, so always positive),
    # above the triangle index: one scatter-max keeps the nearest triangle per pixel and remembers which one it was.
    z = vertices[:, 2]
    depth_scale = 2.0**29 / (z.max() - z.min()).clamp(min=1e-12)
    tri_z = (take(z, take(corner_index, order, dim=-1)) - z.min()) * depth_scale + 2.0**29
    planes = _triangle_planes(tri_x, tri_y, tri_z, origin_x, origin_y)
    pixel_base = (take(face_image, order) * size + origin_y) * size + origin_x
    keys = zeros((num_images * size * size,), torch.int64, device)

    bounds = np.cumsum([0] + counts[:-1])
    for group_index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        if stop > start:
            window = (sides[group_index // len(sides)], sides[group_index % len(sides)])
            _draw_windows(keys, planes[:, :, start:stop], pixel_base[start:stop], int(start), window, size)

    pixel = torch.nonzero(keys).squeeze(1)
    triangle = take(keys, pixel) & (2**32 - 1)
    offset = pixel - take(pixel_base, triangle)
    # (3 coefficients, A, T) planes of the attributes: the corners' values weighted by the barycentric planes.
    corners = take(corner_attributes.to(dtype), order, dim=-1)
    attribute_planes = sum(planes[1 + corner, :, None] * corners[:, corner] for corner in range(3))
    coefficients = take(attribute_planes, triangle, dim=-1)
    x, y = (offset % size).to(dtype), (offset // size).to(dtype)
    values = coefficients[0] + coefficients[1] * x + coefficients[2] * y
    return pixel, take(order, triangle), values

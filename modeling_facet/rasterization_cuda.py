"""The ``"cuda"`` rasterizer of :mod:`.rasterization` as numba.cuda kernels: the compiled CPU rasterizer's two passes,
one GPU thread per triangle, then one per covered pixel. Imported only when that rasterizer runs.

Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the kernels run, slowly, on CPU tensors; the simulator swaps
this module's global ``cuda`` for its own, which is why the kernels live in a module of their own.
"""

from __future__ import annotations

import functools

import torch
from numba import cuda

from .rasterization import _BARYCENTRIC_TOLERANCE, _pixel_bounds, _screen_triangle, _weights, take, zeros


@functools.lru_cache(maxsize=None)
def _kernels():
    """The z-buffer kernel (a thread per triangle) and the interpolation kernel (a thread per covered pixel), built
    from the compiled rasterizer's per-triangle functions; compiled for the GPU at their first launch."""

    def on_device(function):
        return cuda.jit(device=True)(getattr(function, "py_func", function))

    screen_triangle, weights, pixel_bounds = map(on_device, (_screen_triangle, _weights, _pixel_bounds))

    @cuda.jit
    def draw(screen_x, screen_y, depth, faces, face_image, size, depth_frame, tolerance, keys):
        # keys: (quantised depth << 32) + (2**32 - 1 - triangle), so the atomic max keeps the nearest triangle and,
        # at equal depth, the first one, as the compiled rasterizer does.
        triangle = cuda.grid(1)
        if triangle >= faces.shape[0]:
            return
        corners_x, corners_y, area, first, second = screen_triangle(screen_x, screen_y, faces, triangle)
        left, right, top, bottom = pixel_bounds(corners_x, corners_y, area, size)
        z0, z1, z2 = depth[faces[triangle, 0]], depth[faces[triangle, 1]], depth[faces[triangle, 2]]
        image_start = face_image[triangle] * size * size
        low = 4294967295 - triangle
        for row in range(top, bottom + 1):
            for column in range(left, right + 1):
                w0, w1, w2 = weights(first, second, column, row)
                if w0 < -tolerance or w1 < -tolerance or w2 < -tolerance:
                    continue
                z = w0 * z0 + w1 * z1 + w2 * z2
                key = (int((z - depth_frame[0]) * depth_frame[1] + 536870912.0) << 32) + low
                cuda.atomic.max(keys, image_start + row * size + column, key)

    @cuda.jit
    def interpolate(screen_x, screen_y, faces, pixels, triangles, size, corner_attributes, values):
        fragment = cuda.grid(1)
        if fragment >= pixels.shape[0]:
            return
        pixel, triangle = pixels[fragment], triangles[fragment]
        _, _, _, first, second = screen_triangle(screen_x, screen_y, faces, triangle)
        w0, w1, w2 = weights(first, second, pixel % size, (pixel % (size * size)) // size)
        for attribute in range(corner_attributes.shape[0]):
            values[attribute, fragment] = (
                w0 * corner_attributes[attribute, 0, triangle]
                + w1 * corner_attributes[attribute, 1, triangle]
                + w2 * corner_attributes[attribute, 2, triangle]
            )

    return draw, interpolate


def _launch(kernel, count: int, device, *arguments):
    """Runs ``kernel`` on ``count`` threads, on torch's current stream (so it is ordered with torch's work on the
    tensors, without a synchronisation); tensors are passed without copies (numpy arrays under the simulator)."""
    if count == 0:
        return
    threads = 128
    blocks = (count + threads - 1) // threads
    if device.type != "cuda":  # the simulator, on CPU tensors
        kernel[blocks, threads](*(a.numpy() if isinstance(a, torch.Tensor) else a for a in arguments))
        return
    stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
    arrays = (cuda.as_cuda_array(a, sync=False) if isinstance(a, torch.Tensor) else a for a in arguments)
    kernel[blocks, threads, stream](*arrays)


def rasterize_cuda(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    face_image: torch.Tensor,
    num_images: int,
    size: int,
    corner_attributes: torch.Tensor,
):
    """:func:`rasterize` with the numba.cuda kernels: screen coordinates in float64 as the compiled rasterizer has
    them, depth quantised to 29 bits over the batch's depth range (computed on the device: no synchronisation
    before the launch); one synchronisation to count the covered pixels."""
    draw, interpolate = _kernels()
    device, dtype = vertices.device, vertices.dtype
    faces, face_image = faces.contiguous(), face_image.contiguous()
    screen_x = ((vertices[:, 0].double() + 1.0) * (size / 2.0) - 0.5).contiguous()
    screen_y = ((1.0 - vertices[:, 1].double()) * (size / 2.0) - 0.5).contiguous()
    depth = vertices[:, 2].contiguous()
    z = depth.double()
    low = z.min() if len(z) else z.new_zeros(())
    depth_frame = torch.stack([low, 2.0**29 / ((z.max() if len(z) else low) - low).clamp(min=1e-12)])
    keys = zeros((num_images * size * size,), torch.int64, device)
    draw_arguments = (screen_x, screen_y, depth, faces, face_image, size, depth_frame, _BARYCENTRIC_TOLERANCE, keys)
    _launch(draw, len(faces), device, *draw_arguments)
    pixel = torch.nonzero(keys).squeeze(1)
    triangle = 4294967295 - (take(keys, pixel) & 4294967295)
    corners = corner_attributes.to(dtype).contiguous()
    values = torch.empty((corners.shape[0], len(pixel)), dtype=dtype, device=device)
    _launch(interpolate, len(pixel), device, screen_x, screen_y, faces, pixel, triangle, size, corners, values)
    return pixel, triangle, values

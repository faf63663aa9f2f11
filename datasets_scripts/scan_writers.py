"""Writers of the benchmarks' scan and landmark files, byte for byte as their owners' releases lay them out: the
synthetic data (:mod:`.synthetic_faces`), the benchmarks and the tests write with them; the readers are in
:mod:`modeling_facet.mesh_io`, which ships with a model, these do not.
"""

from __future__ import annotations

import itertools

import numpy as np

from modeling_facet.mesh_io import _BNT_COUNT, _BNT_HEADER  # the .bnt header layout the reader checks


_INDENT = " " * 8
_WRL_FLAVORS = ("bu3dfe", "bu4dfe")
# (name, axis, direction, orientation) of the 6 Viewpoints closing a BU-3DFE file.
_BU3DFE_VIEWPOINTS = (
    ("Front", 2, 1, "0 0 0 3.14159"),
    ("Back", 2, -1, "0 1 0 3.14159"),
    ("Left", 0, -1, "0 1 0 -1.5708"),
    ("Right", 0, 1, "0 1 0 1.5708"),
    ("Top", 1, 1, "1 0 0 -1.5708"),
    ("Bottom", 1, -1, "1 0 0 1.5708"),
)


def _as_polygons(faces) -> tuple:
    """``(sizes, flat indices)`` of faces given as an (M, k) array or a list of polygons of mixed arity."""
    if not isinstance(faces, np.ndarray):
        try:
            faces = np.asarray(faces, dtype=np.int64)
        except ValueError:  # ragged: polygons of mixed arity
            sizes = np.fromiter(map(len, faces), dtype=np.int64, count=len(faces))
            return sizes, np.fromiter(itertools.chain.from_iterable(faces), dtype=np.int64, count=int(sizes.sum()))
    if faces.ndim != 2 or faces.size == 0:
        raise ValueError(f"faces must be a non-empty (M, k) array or list of polygons, got shape {faces.shape}")
    return np.full(len(faces), faces.shape[1]), faces.astype(np.int64).ravel()


def _list_lines(line_formats: list, values: np.ndarray, trailing_comma: bool) -> str:
    """Fill one format per line with ``values`` in a single ``%`` and join the lines with VRML list commas."""
    body = ",\n".join(line_formats) % tuple(values.ravel().tolist())
    return body + ("," if trailing_comma else "") + "\n"


def _wrl_point_node(node: str, points: np.ndarray, depth: int) -> str:
    indent = _INDENT * depth
    line = indent + _INDENT * 2 + " ".join(["%g"] * points.shape[1])
    return (
        f"{indent}{node} {{\n{indent}{_INDENT}point [\n"
        + _list_lines([line] * len(points), points, trailing_comma=False)
        + f"{indent}{_INDENT}]\n{indent}}}\n"
    )


def _wrl_index_node(node: str, sizes: np.ndarray, flat: np.ndarray, depth: int, separator: str, trailing: bool) -> str:
    indent = _INDENT * depth
    line_format = {k: indent + _INDENT + separator.join(["%d"] * k + ["-1"]) for k in np.unique(sizes).tolist()}
    lines = [line_format[k] for k in sizes.tolist()]
    return f"{indent}{node} [\n" + _list_lines(lines, flat, trailing) + f"{indent}]\n"


def _wrl_viewpoints(vertices: np.ndarray) -> str:
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    centre, extent = (low + high) / 2, high - low
    blocks = []
    for name, axis, direction, orientation in _BU3DFE_VIEWPOINTS:
        position = centre.copy()
        position[axis] += direction * 2.5 * extent[axis]
        blocks.append(
            f"DEF Tricorder_Camera_{name} Viewpoint {{\n"
            f"{_INDENT}position %g %g %g\n" % tuple(position.tolist())
            + f"{_INDENT}orientation {orientation}\n{_INDENT}fieldOfView 0.5\n"
            f'{_INDENT}description "Tricorder {name}"\n}}\n'
        )
    return "".join(blocks)


def write_wrl(path, vertices, faces, uv=None, uv_faces=None, texture_url=None, flavor="bu3dfe") -> None:
    """Write a VRML 2.0 face mesh.

    ``flavor="bu3dfe"`` follows the BU-3DFE ``_F3D.wrl`` template byte for byte (Transform, 8-space indents,
    ``%g``, commas on all list items but the last, ``texCoordIndex`` when ``uv_faces`` is given, the 6 Viewpoints
    from the bounding box; ``tests/test_mesh_io.py`` holds the template). ``flavor="bu4dfe"`` writes a ``Group``, comma-separated indices
    (``a, b, c, -1,``) and per-vertex texture coordinates without ``texCoordIndex``.

    Args:
        vertices: (N, 3) positions.
        faces: (M, k) vertex indices, or a list of polygons of mixed arity.
        uv: optional (K, 2) texture coordinates.
        uv_faces: optional indices into ``uv`` with the same polygon layout as ``faces`` (``bu3dfe`` only).
        texture_url: optional texture file name for the ``ImageTexture`` url.
        flavor: ``"bu3dfe"`` or ``"bu4dfe"``.
    """
    if flavor not in _WRL_FLAVORS:
        raise ValueError(f"flavor must be one of {_WRL_FLAVORS}, got {flavor!r}")
    bu3dfe = flavor == "bu3dfe"
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    sizes, flat = _as_polygons(faces)
    if uv_faces is not None and not bu3dfe:
        raise ValueError("the bu4dfe flavor stores one texture coordinate per vertex; uv_faces must be None")
    separator = " " if bu3dfe else ", "
    out = ["#VRML V2.0 utf8\n"]
    out.append("#Tricorder Technology plc - 2000\nDEF Tricorder_object Transform {\n" if bu3dfe else "Group {\n")
    out.append(f"{_INDENT}children [\n{_INDENT * 2}Shape {{\n")
    if texture_url is not None:
        texture_fields = [f'url "{texture_url}"'] + (["repeatS FALSE", "repeatT FALSE"] if bu3dfe else [])
        out.append(f"{_INDENT * 3}appearance Appearance {{\n{_INDENT * 4}texture ImageTexture {{\n")
        out.extend(f"{_INDENT * 5}{line}\n" for line in texture_fields)
        out.append(f"{_INDENT * 4}}}\n{_INDENT * 3}}}\n")
    out.append(f"{_INDENT * 3}geometry IndexedFaceSet {{\n")
    if bu3dfe:
        out.extend(f"{_INDENT * 4}{line}\n" for line in ("ccw TRUE", "solid FALSE", "convex TRUE", "creaseAngle 1.57"))
    out.append(_wrl_point_node("coord Coordinate", vertices, 4))
    out.append(_wrl_index_node("coordIndex", sizes, flat, 4, separator, trailing=not bu3dfe))
    if uv is not None:
        out.append(_wrl_point_node("texCoord TextureCoordinate", np.asarray(uv, dtype=np.float64).reshape(-1, 2), 4))
    if uv_faces is not None:
        uv_sizes, uv_flat = _as_polygons(uv_faces)
        if not np.array_equal(uv_sizes, sizes):
            raise ValueError("uv_faces must have the same polygon sizes as faces")
        out.append(_wrl_index_node("texCoordIndex", uv_sizes, uv_flat, 4, separator, trailing=False))
    out.append(f"{_INDENT * 3}}}\n{_INDENT * 2}}}\n{_INDENT}]\n}}\n")
    if bu3dfe:
        out.append(_wrl_viewpoints(vertices))
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write("".join(out))


def write_bnt(path, nrows, ncols, zmin, imfile, x, y, z, u, v) -> None:
    """Write a Bosphorus ``.bnt`` file: the header ``nrows ncols zmin len(imfile)`` (uint16, uint16, float64,
    uint16, little-endian), ``imfile``, the value count (uint32), then the x, y, z, u, v planes as float64."""
    name = imfile.encode("ascii")
    data = np.concatenate([np.asarray(plane, "<f8").ravel() for plane in (x, y, z, u, v)])
    if data.size != 5 * nrows * ncols:
        raise ValueError(f"x, y, z, u, v must each hold nrows*ncols = {nrows * ncols} values")
    with open(path, "wb") as handle:
        handle.write(_BNT_HEADER.pack(nrows, ncols, zmin, len(name)))
        handle.write(name)
        handle.write(_BNT_COUNT.pack(data.size))
        handle.write(data.tobytes())


def write_bnd(path, vertex_indices, points, number_format="%.6f") -> None:
    """Write ``idx x y z`` lines (single spaces, LF) as BU-3DFE / BU-4DFE ``.bnd`` files; numbers use ``number_format``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rows = np.column_stack([np.asarray(vertex_indices, dtype=np.float64).ravel(), points])
    line = " ".join(["%d"] + [number_format] * 3) + "\n"
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write((line * len(rows)) % tuple(rows.ravel().tolist()))


def _write_lines(path, lines: list, newline: str) -> None:
    with open(path, "w", encoding="ascii", newline="") as handle:
        handle.write(newline.join(lines) + newline)


def write_lm3(path, names, points, newline="\r\n") -> None:
    """Write a Bosphorus ``.lm3`` file: title, blank line, ``N landmarks:``, then label and ``%g`` lines in turn."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    coordinates = ["%g %g %g" % tuple(point) for point in points.tolist()]
    pairs = [line for pair in zip(names, coordinates) for line in pair]
    _write_lines(path, ["# 3D Landmark File", "", f"{len(points)} landmarks:", *pairs], newline)


def write_lm2(path, names, points2d, newline="\r\n") -> None:
    """Write a Bosphorus ``.lm2`` file: the labels first, then ``%g`` pixel ``col row`` lines."""
    points2d = np.asarray(points2d, dtype=np.float64).reshape(-1, 2)
    coordinates = ["%g %g" % tuple(point) for point in points2d.tolist()]
    header = ["# 2D Landmark File", "", f"{len(points2d)} landmarks", "", "Labels:"]
    _write_lines(path, [*header, *names, "", "2D Image coordinates:", *coordinates], newline)

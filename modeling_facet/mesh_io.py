"""Reading and writing 3D face scans and landmarks in the formats the benchmarks ship.

Every reader returns a :class:`FaceScan` (or landmarks) and raises :class:`ScanFormatError`, which names the
file and what is wrong, for any malformed input. The writers reproduce the real files byte for byte where the
format is pinned down (``.bnt``, BU-3DFE ``_F3D.wrl``) and are used for fixtures and synthetic data.
"""

from __future__ import annotations

import glob
import os
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import numpy as np


DEFAULT_MAX_POINTS = 5_000_000
DEFAULT_MAX_FACES = 2 * DEFAULT_MAX_POINTS  # a surface has about two triangles per vertex
# How many times over the triangles may cover the largest side of the scan's bounding box: about 1.5 for a face, pi
# for a closed head; every further layer costs the renderer a whole screen of pixels.
MAX_SURFACE_LAYERS = 50
TRIMESH_EXTENSIONS = (".obj", ".ply", ".off", ".stl", ".glb")
SCAN_EXTENSIONS = (".wrl", ".bnt") + TRIMESH_EXTENSIONS
LANDMARK_EXTENSIONS = (".bnd", ".lm3", ".lm2", ".tbnd")
# Landmark files that carry 3D points and can sit next to a scan with the same stem, in lookup order.
SIBLING_LANDMARK_EXTENSIONS = (".bnd", ".lm3", ".tbnd")
TBND_POINTS = 83

PathLike = Union[str, os.PathLike]


class ScanFormatError(ValueError):
    """A scan or landmark file is malformed; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class FaceScan:
    """A triangulated face surface in millimetres (+y up, +z towards the viewer).

    Attributes:
        vertices: (N, 3) float32 positions.
        faces: (M, 3) int64 vertex indices; polygons are fan-triangulated.
        uv: optional (K, 2) float32 texture coordinates (VRML convention, origin bottom-left).
        uv_faces: optional (M, 3) int64 indices into ``uv`` per triangle corner; ``None`` when ``uv`` is per vertex.
        texture_path: optional path of the texture image the file names (it may not exist on disk).
        landmarks: optional (L, 3) float32 landmark positions.
        landmark_names: optional list of L landmark labels (Bosphorus) or ``None`` (index-based schemes).
        landmark_indices: optional (L,) int64 vertex index of each landmark (``.bnd`` files).
        source_path: the file the scan was read from, if any.
        metadata: free-form extra information (format, grid size, head pose, ...).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: Optional[np.ndarray] = None
    uv_faces: Optional[np.ndarray] = None
    texture_path: Optional[str] = None
    landmarks: Optional[np.ndarray] = None
    landmark_names: Optional[list] = None
    landmark_indices: Optional[np.ndarray] = None
    source_path: Optional[str] = None
    metadata: dict = field(default_factory=dict)


@dataclass
class FaceSequence:
    """A 4D scan: frames in temporal (file-name) order.

    ``frames`` holds :class:`FaceScan` objects or paths. A frame given as a path is read when it is accessed
    (``sequence[i]``, ``sequence.load(i)`` or iteration) and is not cached, so long sequences never sit in memory
    all at once. Slicing (``sequence[a:b]``) returns a shorter sequence without reading anything.
    """

    frames: list
    frame_paths: Optional[list] = None
    source_path: Optional[str] = None
    max_points: int = DEFAULT_MAX_POINTS

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        if isinstance(index, slice):
            paths = None if self.frame_paths is None else self.frame_paths[index]
            return FaceSequence(self.frames[index], paths, self.source_path, self.max_points)
        return self.load(index)

    def __iter__(self):
        return (self.load(i) for i in range(len(self.frames)))

    def load(self, index: int) -> FaceScan:
        """Return frame ``index`` as a :class:`FaceScan`, reading it from disk if it is a path."""
        frame = self.frames[index]
        return frame if isinstance(frame, FaceScan) else load_scan(frame, max_points=self.max_points)


class Landmarks(NamedTuple):
    """Landmarks read from a file: ``(names, points, vertex_indices)``; unpacks like a 3-tuple."""

    names: Optional[list]
    points: np.ndarray
    vertex_indices: Optional[np.ndarray]


@contextmanager
def _errors_name(path):
    """Turn any failure while parsing ``path`` into a :class:`ScanFormatError` that names the file."""
    try:
        yield
    except ScanFormatError:
        raise
    except UnicodeDecodeError as error:
        raise ScanFormatError(path, f"undecodable bytes ({error.reason} at byte {error.start})") from error
    except Exception as error:  # any lower-level parser failure is a malformed file
        raise ScanFormatError(path, f"cannot be parsed ({type(error).__name__}: {error})") from error


def _existing_file(path: PathLike, extensions) -> tuple:
    """Return ``(path as str, lower-case extension)``, refusing unsupported extensions and missing files."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise ScanFormatError(path, f"unsupported extension {ext or '(none)'!r}; expected one of {', '.join(extensions)}")
    if not os.path.isfile(path):
        raise ScanFormatError(path, "file does not exist")
    return path, ext


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8-sig")


def _finite_float32(values, path: str, what: str) -> np.ndarray:
    """Cast to float32, refusing NaN, infinity and values beyond the float32 range."""
    with np.errstate(over="ignore"):
        values = np.asarray(values).astype(np.float32)
    if not np.isfinite(values).all():
        raise ScanFormatError(path, f"{what} contain NaN, infinity or values beyond the float32 range")
    return values


def _parsed(parse, text, path: str, what: str) -> np.ndarray:
    """Run a vectorised number parser; a token that is not a number is reported with ``what`` it was in."""
    try:
        return parse(text)
    except (ValueError, OverflowError) as error:
        raise ScanFormatError(path, f"{what}: a token is not a number ({error})") from error


def _surface_layers(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Total triangle area over the area of the largest side of the bounding box (0 for a mesh without extent)."""
    extent = np.sort(np.ptp(vertices, axis=0).astype(np.float64))
    outline = extent[2] * extent[1]
    area, chunk = 0.0, 1 << 16  # float64 corners of 65,536 triangles (a few MB) at a time
    for start in range(0, len(faces), chunk):
        a, b, c = (vertices[faces[start : start + chunk, k]].astype(np.float64) for k in range(3))
        area += 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    return area / outline if outline > 0 else 0.0


def _check_scan(scan: FaceScan, path: str, max_points: int, max_faces: int = DEFAULT_MAX_FACES) -> FaceScan:
    """Validate shapes, the vertex and face budgets, index ranges and the surface's layering of a freshly read scan."""
    vertices, faces = scan.vertices, scan.faces
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ScanFormatError(path, "empty mesh: no vertices")
    if len(vertices) > max_points:
        raise ScanFormatError(path, f"{len(vertices)} vertices is more than max_points={max_points}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ScanFormatError(path, "empty mesh: no faces")
    if len(faces) > max_faces:
        raise ScanFormatError(path, f"{len(faces)} triangles is more than max_faces={max_faces}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ScanFormatError(path, f"vertex index out of range (indices {faces.min()}..{faces.max()}, {len(vertices)} vertices)")
    layers = _surface_layers(vertices, faces)
    if layers > MAX_SURFACE_LAYERS:
        raise ScanFormatError(path, f"the triangles cover the scan's outline {layers:,.0f} times over (more than "
                              f"{MAX_SURFACE_LAYERS}): not a surface scan, and every layer costs a full rendering")  # fmt: skip
    if scan.uv is not None:
        corners = faces if scan.uv_faces is None else scan.uv_faces
        if corners.min() < 0 or corners.max() >= len(scan.uv):
            raise ScanFormatError(
                path, f"texcoord index out of range (indices {corners.min()}..{corners.max()}, {len(scan.uv)} texcoords)"
            )
    scan.source_path = path
    return scan


def load_scan(
    path: PathLike,
    max_points: int = DEFAULT_MAX_POINTS,
    landmarks: Union[bool, PathLike] = False,
    max_faces: int = DEFAULT_MAX_FACES,
) -> FaceScan:
    """Read a face scan, choosing the reader from the extension (``.wrl``, ``.bnt``, ``.obj``, ``.ply``, ...).

    Args:
        path: the scan file.
        max_points: refuse files that hold (or announce) more vertices than this.
        landmarks: ``True`` attaches the sibling landmark file with the same stem (``.bnd``, ``.lm3`` or ``.tbnd``)
            when there is one; a path attaches that file; ``False`` reads no landmarks.
        max_faces: refuse files that hold (or announce) more triangles than this.

    Raises:
        ScanFormatError: the file is missing, has an unsupported extension or is malformed, its texture lies outside
            its folder, or its triangles cover its outline more than ``MAX_SURFACE_LAYERS`` times over.
    """
    path, ext = _existing_file(path, SCAN_EXTENSIONS)
    with _errors_name(path):
        if ext == ".wrl":
            scan = _read_wrl(path, max_points, max_faces)
        elif ext == ".bnt":
            scan = _read_bnt(path, max_points)
        else:
            scan = _read_with_trimesh(path, ext, max_points, max_faces)
        scan = _check_scan(scan, path, max_points, max_faces)
    if landmarks is True:
        sibling = find_landmark_file(path)
        if sibling is not None:
            attach_landmarks(scan, sibling)
    elif landmarks is not False:
        attach_landmarks(scan, landmarks)
    return scan


def _texture_path(path: str, name: str) -> str:
    """The texture ``name`` that the scan ``path`` refers to, which must lie inside the scan's folder: an uploaded
    scan must not make the app read (and show) other files of its machine."""
    folder = os.path.dirname(path)
    texture = os.path.join(folder, name)
    root = os.path.abspath(folder)
    if os.path.commonpath([root, os.path.abspath(texture)]) != root:
        raise ScanFormatError(path, f"texture {name!r} lies outside the scan's folder {root}; only textures inside it are read")
    return texture


# ------------------------------------------------------------------------------------------------- VRML 2.0


_DEF_NAME = r"(?:DEF\s+[^\s{]+\s+)?"
_WRL_URL = re.compile(r'url\s*\[?\s*"([^"]*)"')
_WRL_SHAPE = re.compile(r"IndexedFaceSet\b")
# A quoted string (kept) or a comment (dropped); neither spans lines.
_WRL_STRING_OR_COMMENT = re.compile(r'"[^"\n]*"|#[^\n]*')


def _strip_wrl_comments(text: str) -> str:
    """Drop ``#`` comments outside quoted strings; only the lines from the first to the last ``#`` are scanned."""
    first = text.find("#")
    if first == -1:
        return text
    start = text.rfind("\n", 0, first) + 1
    end = text.find("\n", text.rfind("#"))
    end = len(text) if end == -1 else end
    kept = _WRL_STRING_OR_COMMENT.sub(lambda match: match.group() if match.group()[0] == '"' else "", text[start:end])
    return text[:start] + kept + text[end:]


def _floats(block: str) -> np.ndarray:
    """Parse a VRML float list (commas are whitespace) in one vectorised call."""
    block = block.replace(",", " ").strip()  # np.fromstring reads a blank string as [-1.0]
    return np.fromstring(block, dtype=np.float64, sep=" ") if block else np.zeros(0)


# What np.fromstring would misread in an integer list (a stray "-" as 0), each with how to name it; the regular
# expressions scan the text without a Python object per number.
_INT_LIST_PROBLEMS = (
    (re.compile(r"[^0-9\s,-]", re.ASCII), "a character that is not part of an integer"),
    (re.compile(r"-(?![0-9])|(?<=[0-9-])-", re.ASCII), "a '-' that does not start a number"),
    (re.compile(r"[0-9]{19}", re.ASCII), "an integer beyond the int64 range"),
)


def _ints(block: str) -> np.ndarray:
    """Parse a VRML integer list (commas are whitespace) strictly, in one vectorised call."""
    for pattern, problem in _INT_LIST_PROBLEMS:
        match = pattern.search(block)
        if match is not None:
            raise ValueError(f"{problem}: {block[max(0, match.start() - 12) : match.end() + 12]!r}")
    block = block.replace(",", " ")
    return np.zeros(0, np.int64) if block.isspace() or not block else np.fromstring(block, dtype=np.int64, sep=" ")


def _polygon_fans(indices: np.ndarray) -> tuple:
    """``(starts, triangles)`` of a ``-1``-terminated polygon index list: the position in ``indices`` where each
    polygon starts and the number of triangles its fan has."""
    ends = np.flatnonzero(indices == -1)
    starts = np.concatenate(([0], ends + 1))[:-1]
    return starts, np.maximum(ends - starts - 2, 0)


def _fan_corners(starts: np.ndarray, triangles_per_polygon: np.ndarray) -> np.ndarray:
    """The (T, 3) positions in the index list of each fan triangle's corners (so the same positions pick the
    matching texcoord corners), from :func:`_polygon_fans`."""
    polygon = np.repeat(np.arange(len(starts)), triangles_per_polygon)
    first_triangle = np.cumsum(triangles_per_polygon) - triangles_per_polygon
    step = np.arange(len(polygon)) - first_triangle[polygon] + 1
    start = starts[polygon]
    return np.stack([start, start + step, start + step + 1], axis=1)


def _polygon_indices(block: str, what: str, path: str) -> np.ndarray:
    """Parse a coordIndex-like list and make sure it ends with ``-1``."""
    indices = _parsed(_ints, block, path, what)
    if indices.size and indices.min() < -1:
        raise ScanFormatError(path, f"{what} holds a negative index other than -1")
    if indices.size and indices[-1] != -1:
        indices = np.append(indices, -1)
    return indices


# IndexedFaceSet fields: (pattern up to the list's "[", keyword whose presence makes the field present, syntax).
_WRL_FIELDS = {
    "coord": (re.compile(r"coord\s+" + _DEF_NAME + r"Coordinate\s*\{\s*point\s*\["), "Coordinate", "coord Coordinate { point [...] }"),
    "coordIndex": (re.compile(r"coordIndex\s*\["), "coordIndex", "coordIndex [...]"),
    "texCoord": (
        re.compile(r"texCoord\s+" + _DEF_NAME + r"TextureCoordinate\s*\{\s*point\s*\["),
        "TextureCoordinate",
        "texCoord TextureCoordinate { point [...] }",
    ),
    "texCoordIndex": (re.compile(r"texCoordIndex\s*\["), "texCoordIndex", "texCoordIndex [...]"),
}


def _wrl_list(field_name: str, part: str, path: str, required: bool) -> Optional[str]:
    """The bracketed list of an IndexedFaceSet field, or ``None`` when an optional field is absent.

    A field whose keyword appears but whose list cannot be delimited (truncated, unbalanced brackets) is an error,
    never silently treated as absent.
    """
    opening, keyword, syntax = _WRL_FIELDS[field_name]
    match = opening.search(part)
    if match is None and not required and keyword not in part:
        return None
    close = -1 if match is None else part.find("]", match.end())  # str.find: no regex backtracking on big lists
    if close == -1 or part.find("[", match.end(), close) != -1:
        raise ScanFormatError(path, f"IndexedFaceSet has no readable '{syntax}'")
    return part[match.end() : close]


def _read_wrl_shape(part: str, path: str, max_points: int, max_faces: int) -> FaceScan:
    """Read one IndexedFaceSet (the text from its keyword up to the next one)."""
    points = _parsed(_floats, _wrl_list("coord", part, path, True), path, "coordinates")
    if points.size % 3:
        raise ScanFormatError(path, f"coordinate list holds {points.size} numbers, not a multiple of 3")
    if points.size // 3 > max_points:
        raise ScanFormatError(path, f"{points.size // 3} vertices is more than max_points={max_points}")
    indices = _polygon_indices(_wrl_list("coordIndex", part, path, True), "coordIndex", path)
    starts, fans = _polygon_fans(indices)
    if fans.sum() > max_faces:
        raise ScanFormatError(path, f"{fans.sum()} triangles is more than max_faces={max_faces}")
    corners = _fan_corners(starts, fans)
    vertices = _finite_float32(points.reshape(-1, 3), path, "vertex coordinates")
    scan = FaceScan(vertices, indices[corners], metadata={"polygons": len(starts)})
    texcoords = _wrl_list("texCoord", part, path, False)
    if texcoords is None:
        return scan
    uv = _parsed(_floats, texcoords, path, "texture coordinates")
    if uv.size % 2:
        raise ScanFormatError(path, f"texture coordinate list holds {uv.size} numbers, not a multiple of 2")
    scan.uv = _finite_float32(uv.reshape(-1, 2), path, "texture coordinates")
    texcoord_index = _wrl_list("texCoordIndex", part, path, False)
    if texcoord_index is not None:
        uv_indices = _polygon_indices(texcoord_index, "texCoordIndex", path)
        if uv_indices.shape != indices.shape or not np.array_equal(uv_indices == -1, indices == -1):
            raise ScanFormatError(path, "texCoordIndex polygons do not match coordIndex polygons")
        scan.uv_faces = uv_indices[corners]
    return scan


def _merge_shapes(shapes: list) -> FaceScan:
    """Concatenate several IndexedFaceSets into one mesh (texcoords kept only when every shape has them)."""
    vertex_offsets = np.cumsum([0] + [len(s.vertices) for s in shapes[:-1]])
    merged = FaceScan(
        np.concatenate([s.vertices for s in shapes]),
        np.concatenate([s.faces + offset for s, offset in zip(shapes, vertex_offsets)]),
        metadata={"polygons": sum(s.metadata["polygons"] for s in shapes)},
    )
    if all(s.uv is not None for s in shapes):
        uv_offsets = np.cumsum([0] + [len(s.uv) for s in shapes[:-1]])
        merged.uv = np.concatenate([s.uv for s in shapes])
        merged.uv_faces = np.concatenate(
            [(s.faces if s.uv_faces is None else s.uv_faces) + offset for s, offset in zip(shapes, uv_offsets)]
        )
    return merged


def _read_wrl(path: str, max_points: int, max_faces: int = DEFAULT_MAX_FACES) -> FaceScan:
    """VRML 2.0 ``IndexedFaceSet`` meshes (BU-3DFE ``_F3D.wrl``, BU-4DFE ``NNN.wrl``), polygons fan-triangulated."""
    text = _strip_wrl_comments(_read_text(path))
    url = _WRL_URL.search(text)
    texture = "" if url is None else url.group(1)
    parts = _WRL_SHAPE.split(text)[1:]
    del text, url  # the shapes' parts are a copy of the text: keep one copy in memory, not two
    if not parts:
        raise ScanFormatError(path, "no IndexedFaceSet node, so no coordinates")
    shapes = [_read_wrl_shape(part, path, max_points, max_faces) for part in parts]
    scan = shapes[0] if len(shapes) == 1 else _merge_shapes(shapes)
    if texture:
        scan.texture_path = _texture_path(path, texture)
    scan.metadata["format"] = "wrl"
    return scan


# ------------------------------------------------------------------------------------------------- Bosphorus


_BNT_HEADER = struct.Struct("<HHdH")
_BNT_COUNT = struct.Struct("<I")


def _grid_triangles(valid: np.ndarray) -> np.ndarray:
    """Counter-clockwise (seen from +z) triangles over the valid points of a row-major grid whose row 0 is the bottom.

    A quad with 4 valid corners gives 2 triangles, one with exactly 3 gives the triangle of those 3.
    """
    nrows, ncols = valid.shape
    index = np.arange(nrows * ncols).reshape(nrows, ncols)
    # Quad corners counter-clockwise: a=(r,c), b=(r,c+1), c=(r+1,c+1), d=(r+1,c).
    corners = [index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]]
    ok = [valid[:-1, :-1], valid[:-1, 1:], valid[1:, 1:], valid[1:, :-1]]
    a, b, c, d = (corner.ravel() for corner in corners)
    va, vb, vc, vd = (flag.ravel() for flag in ok)
    candidates = [
        ((a, b, c), va & vb & vc),  # half of a full quad, or the quad without d
        ((a, c, d), va & vc & vd),  # other half of a full quad, or the quad without b
        ((b, c, d), vb & vc & vd & ~va),  # the quad without a
        ((a, b, d), va & vb & vd & ~vc),  # the quad without c
    ]
    return np.concatenate([np.stack([corner[keep] for corner in triangle], axis=1) for triangle, keep in candidates])


def read_bnt_grid(path: PathLike, max_points: int = DEFAULT_MAX_POINTS) -> dict:
    """Read the raw grid of a Bosphorus ``.bnt`` file (``_BNT_HEADER``, the image file name, ``_BNT_COUNT``, then
    the x, y, z, u, v planes), checking its size before allocating.

    Returns ``dict(nrows, ncols, zmin, imfile, x, y, z, u, v)`` with float64 (nrows, ncols) planes, row 0 at the
    bottom of the face; ``write_bnt(other, **grid)`` (datasets_scripts/scan_writers.py) rewrites the file byte for
    byte.
    """
    path, _ = _existing_file(path, (".bnt",))
    with _errors_name(path), open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < _BNT_HEADER.size:
            raise ScanFormatError(path, f"truncated: {size} bytes is shorter than the {_BNT_HEADER.size}-byte header")
        nrows, ncols, zmin, name_length = _BNT_HEADER.unpack(handle.read(_BNT_HEADER.size))
        data_offset = _BNT_HEADER.size + name_length + _BNT_COUNT.size
        if size < data_offset:
            raise ScanFormatError(path, f"truncated: {size} bytes ends inside the header")
        imfile = handle.read(name_length).decode("ascii")
        (count,) = _BNT_COUNT.unpack(handle.read(_BNT_COUNT.size))
        n_points = nrows * ncols
        if n_points > max_points:
            raise ScanFormatError(path, f"header announces {nrows}x{ncols} = {n_points} points, more than max_points={max_points}")
        if count != 5 * n_points:
            raise ScanFormatError(path, f"header announces N={count} values, expected 5*{nrows}*{ncols} = {5 * n_points}")
        expected = data_offset + 8 * count
        if size != expected:
            problem = "truncated" if size < expected else "trailing bytes"
            raise ScanFormatError(path, f"{problem}: {size} bytes, the header announces {expected}")
        x, y, z, u, v = np.frombuffer(handle.read(8 * count), "<f8").reshape(5, nrows, ncols)
    return dict(nrows=nrows, ncols=ncols, zmin=zmin, imfile=imfile, x=x, y=y, z=z, u=u, v=v)


def _read_bnt(path: str, max_points: int) -> FaceScan:
    """Bosphorus ``.bnt`` as a mesh over its valid points (a point is invalid when any of x, y, z equals zmin)."""
    grid = read_bnt_grid(path, max_points)
    x, y, z, u, v, zmin = (grid[key] for key in ("x", "y", "z", "u", "v", "zmin"))
    valid = (x != zmin) & (y != zmin) & (z != zmin)
    if not valid.any():
        raise ScanFormatError(path, "no valid point (every point equals zmin)")
    new_index = np.cumsum(valid.ravel()) - 1
    return FaceScan(
        vertices=_finite_float32(np.stack([x[valid], y[valid], z[valid]], axis=1), path, "vertex coordinates"),
        faces=new_index[_grid_triangles(valid)],
        uv=_finite_float32(np.stack([u[valid], v[valid]], axis=1), path, "texture coordinates"),
        texture_path=_texture_path(path, grid["imfile"]) if grid["imfile"] else None,
        metadata={
            "format": "bnt",
            "nrows": grid["nrows"],
            "ncols": grid["ncols"],
            "zmin": zmin,
            "grid_index": np.flatnonzero(valid),  # row-major grid position of each vertex
        },
    )


# ------------------------------------------------------------------------------------------------- trimesh


_PLY_ELEMENT = re.compile(rb"^element[ \t]+(\S+)[ \t]+(\d+)\s*$", re.MULTILINE)
_HEADER_BYTES = 1 << 16


def _declared_counts(path: str, ext: str) -> tuple:
    """``(vertices, faces)`` that a PLY or OFF header declares; ``(None, None)`` for other formats and for headers
    that cannot be read (trimesh then reports the file)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    if ext == ".ply" and head.startswith(b"ply") and (end := head.find(b"end_header")) != -1:
        counts = {match.group(1): int(match.group(2)) for match in _PLY_ELEMENT.finditer(head[:end])}
        return counts.get(b"vertex"), counts.get(b"face")
    if ext == ".off":
        tokens = re.sub(rb"#[^\n]*", b"", head).split()[:3]
        if len(tokens) == 3 and tokens[0].endswith(b"OFF") and tokens[1].isdigit() and tokens[2].isdigit():
            return int(tokens[1]), int(tokens[2])
    return None, None


def _read_with_trimesh(path: str, ext: str, max_points: int = DEFAULT_MAX_POINTS, max_faces: int = DEFAULT_MAX_FACES) -> FaceScan:
    """``.obj``, ``.ply``, ``.off``, ``.stl`` and ``.glb`` through trimesh, without merging or reordering vertices;
    PLY and OFF files are checked against the counts their headers declare (before and after reading)."""
    import trimesh

    declared_vertices, declared_faces = _declared_counts(path, ext)
    for declared, limit, what in ((declared_vertices, max_points, "vertices"), (declared_faces, max_faces, "faces")):
        if declared is not None and declared > limit:
            name = "max_points" if what == "vertices" else "max_faces"
            raise ScanFormatError(path, f"the header declares {declared} {what}, more than {name}={limit}")
    mesh = trimesh.load(path, force="mesh", process=False)
    vertices = _finite_float32(mesh.vertices, path, "vertex coordinates")
    scan = FaceScan(vertices, np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3), metadata={"format": ext[1:]})
    # Polygons become several triangles, so a complete file holds at least the declared number of faces (a file
    # without faces, such as a point cloud, is reported as an empty mesh instead).
    for declared, found, what in ((declared_vertices, len(vertices), "vertices"), (declared_faces, len(scan.faces), "faces")):
        if declared is not None and found < declared and len(scan.faces):
            raise ScanFormatError(path, f"truncated: the header declares {declared} {what}, the file holds {found}")
    uv = getattr(mesh.visual, "uv", None)
    if uv is not None and len(uv) == len(vertices):
        scan.uv = _finite_float32(uv, path, "texture coordinates")
    image = getattr(getattr(mesh.visual, "material", None), "image", None)
    texture = getattr(image, "info", {}).get("file_path") if image is not None else None
    if texture:
        scan.texture_path = _texture_path(path, texture)
    return scan


# ------------------------------------------------------------------------------------------------- landmarks


_LM_COUNT = re.compile(r"(\d+)\s+landmarks:?", re.IGNORECASE)


def _rows(lines: list, width: int, path: str, what: str) -> np.ndarray:
    """Parse lines of exactly ``width`` whitespace-separated numbers into a (K, width) float64 array."""
    rows = [line.split() for line in lines]
    bad = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if bad is not None:
        raise ScanFormatError(path, f"{what} line {bad + 1} has {len(rows[bad])} fields, expected {width}")
    return _parsed(lambda table: np.array(table, dtype=np.float64), rows, path, what).reshape(len(rows), width)


def _coordinate_rows(lines: list, width: int, path: str, what: str = "coordinates") -> np.ndarray:
    """:func:`_rows` as finite float32 coordinates."""
    return _finite_float32(_rows(lines, width, path, what), path, what)


def _nonblank(lines: list) -> list:
    return [line.strip() for line in lines if line.strip()]


def _bosphorus_landmark_body(text: str, path: str) -> tuple:
    """Skip the ``#`` title and the optional ``*`` info block; return (announced count, non-blank lines after it)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].strip() == "*":  # Savran's variant: info lines up to an empty line
        while i < len(lines) and lines[i].strip():
            i += 1
    body = _nonblank(lines[i:])
    count = _LM_COUNT.fullmatch(body[0]) if body else None
    if count is None:
        raise ScanFormatError(path, "missing the '<N> landmarks' line")
    n = int(count.group(1))
    if n == 0:
        raise ScanFormatError(path, "the file lists no landmarks")
    return n, body[1:]


def _read_lm3(text: str, path: str) -> Landmarks:
    n, body = _bosphorus_landmark_body(text, path)
    if len(body) != 2 * n:
        raise ScanFormatError(path, f"announces {n} landmarks but has {len(body)} label/coordinate lines, expected {2 * n}")
    return Landmarks(body[0::2], _coordinate_rows(body[1::2], 3, path), None)


def _read_lm2(text: str, path: str) -> Landmarks:
    n, body = _bosphorus_landmark_body(text, path)
    if len(body) != 2 * n + 2 or body[0].lower() != "labels:" or not body[n + 1].lower().startswith("2d image coordinates"):
        raise ScanFormatError(path, f"expected 'Labels:', {n} labels, '2D Image coordinates:' and {n} coordinate lines")
    return Landmarks(body[1 : n + 1], _coordinate_rows(body[n + 2 :], 2, path), None)


def _read_bnd(text: str, path: str) -> Landmarks:
    lines = _nonblank(text.splitlines())
    if not lines:
        raise ScanFormatError(path, "the file lists no landmarks")
    values = _rows(lines, 4, path, "landmark")
    indices = values[:, 0]
    if (indices < 0).any() or (indices != np.floor(indices)).any() or (indices >= 2**62).any():
        raise ScanFormatError(path, "vertex indices must be non-negative integers")
    return Landmarks(None, _finite_float32(values[:, 1:], path, "coordinates"), indices.astype(np.int64))


def _read_tbnd(text: str, path: str) -> tuple:
    """Return ``(head pose (3,), points (83, 3))``: the last 3 numbers of the first line and of each point line."""
    lines = [re.findall(r"[^\s,]+", line) for line in _nonblank(text.splitlines())]
    if len(lines) != TBND_POINTS + 1:
        raise ScanFormatError(path, f"expected a head-pose line and {TBND_POINTS} point lines, found {len(lines)} lines")
    values = _coordinate_rows([" ".join(fields[-3:]) for fields in lines], 3, path, "numbers")
    return values[0], values[1:]


_LANDMARK_READERS = {
    ".bnd": _read_bnd,
    ".lm3": _read_lm3,
    ".lm2": _read_lm2,
    ".tbnd": lambda text, path: Landmarks(None, _read_tbnd(text, path)[1], None),
}


def load_landmarks(path: PathLike) -> Landmarks:
    """Read a landmark file: ``.bnd`` (``idx x y z``), ``.lm3``, ``.lm2`` (Bosphorus) or ``.tbnd`` (BP4D).

    Returns ``(names, points, vertex_indices)``. ``names`` are the labels of ``.lm3``/``.lm2`` files and ``None``
    otherwise; ``points`` is (K, 3) float32, except for ``.lm2`` where it is (K, 2) pixel ``(col, row)``
    coordinates in the sibling PNG; ``vertex_indices`` is (K,) int64 for ``.bnd`` and ``None`` otherwise. For
    ``.tbnd`` the 83 points are returned as in the file (untracked points stay ``0 0 0``); its head pose is read by
    :func:`load_head_pose`.
    """
    path, ext = _existing_file(path, LANDMARK_EXTENSIONS)
    with _errors_name(path):
        return _LANDMARK_READERS[ext](_read_text(path), path)


def load_head_pose(path: PathLike) -> np.ndarray:
    """Head pose ``(pitch, yaw, roll)`` in degrees from the first line of a BP4D ``.tbnd`` file, as (3,) float32."""
    path, _ = _existing_file(path, (".tbnd",))
    with _errors_name(path):
        return _read_tbnd(_read_text(path), path)[0]


def find_landmark_file(scan_path: PathLike) -> Optional[str]:
    """The landmark file next to a scan with the same stem (``_F3D.bnd``, ``.lm3``, ``.tbnd``), or ``None``."""
    stem = os.path.splitext(os.fspath(scan_path))[0]
    return next((stem + ext for ext in SIBLING_LANDMARK_EXTENSIONS if os.path.isfile(stem + ext)), None)


def attach_landmarks(scan: FaceScan, path: Optional[PathLike] = None) -> FaceScan:
    """Read 3D landmarks into ``scan`` (in place, also returned); by default from the sibling landmark file.

    ``.bnd`` vertex indices are checked against the scan's vertex count, and a ``.tbnd`` head pose goes to
    ``scan.metadata["head_pose"]``.
    """
    if path is None:
        path = find_landmark_file(scan.source_path) if scan.source_path else None
        if path is None:
            raise ScanFormatError(scan.source_path or "<scan>", "no landmark file with the same stem (.bnd, .lm3, .tbnd)")
    names, points, vertex_indices = load_landmarks(path)
    if points.shape[1] != 3:
        raise ScanFormatError(path, "2D landmarks cannot be attached to a 3D scan")
    if vertex_indices is not None and vertex_indices.max() >= len(scan.vertices):
        raise ScanFormatError(
            path, f"landmark vertex index {vertex_indices.max()} out of range for the {len(scan.vertices)} vertices of {scan.source_path}"
        )
    if os.fspath(path).lower().endswith(".tbnd"):
        scan.metadata["head_pose"] = load_head_pose(path)
    scan.landmarks, scan.landmark_names, scan.landmark_indices = points, names, vertex_indices
    return scan


# ------------------------------------------------------------------------------------------------- sequences


def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as integers (``2.wrl`` before ``10.wrl``)."""
    return [int(token) if i % 2 else token for i, token in enumerate(re.split(r"(\d+)", name))]


def load_sequence(folder: PathLike, pattern: Optional[str] = None, max_points: int = DEFAULT_MAX_POINTS) -> FaceSequence:
    """List the frames of a 4D scan folder in natural file-name order (``000.wrl``, ``0000.obj``, ...).

    Args:
        folder: the sequence folder (BU-4DFE ``F001/Angry``, BP4D ``F001/T1``).
        pattern: glob of the frame files inside ``folder``; by default every file with a scan extension.
        max_points: passed to :func:`load_scan` when a frame is read.

    Frames are read lazily (see :class:`FaceSequence`).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ScanFormatError(folder, "sequence folder does not exist")
    if pattern is None:
        names = [name for name in os.listdir(folder) if os.path.splitext(name)[1].lower() in SCAN_EXTENSIONS]
    else:
        names = [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder), pattern))]
    paths = [os.path.join(folder, name) for name in sorted(names, key=_natural_key)]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        wanted = pattern or " ".join("*" + ext for ext in SCAN_EXTENSIONS)
        raise ScanFormatError(folder, f"sequence folder holds no frame files ({wanted})")
    return FaceSequence(list(paths), list(paths), folder, max_points)


# ------------------------------------------------------------------------------------------------- summary


def describe_scan(scan: FaceScan) -> dict:
    """A JSON-ready summary of a scan (format, counts, bounding box, landmarks, texture) for ``facet-vlm inspect``."""
    vertices = scan.vertices.astype(np.float64)
    scalars = {
        key: value.item() if isinstance(value, np.generic) else value
        for key, value in scan.metadata.items()
        if key != "format" and isinstance(value, (int, float, str, np.generic))
    }
    return {
        "path": scan.source_path,
        "format": scan.metadata.get("format"),
        "vertices": int(len(scan.vertices)),
        "faces": int(len(scan.faces)),
        "texcoords": None if scan.uv is None else int(len(scan.uv)),
        "bbox_min": np.round(vertices.min(axis=0), 6).tolist(),
        "bbox_max": np.round(vertices.max(axis=0), 6).tolist(),
        "landmarks": 0 if scan.landmarks is None else int(len(scan.landmarks)),
        "landmark_names": scan.landmark_names,
        "texture_path": scan.texture_path,
        "metadata": scalars,
    }

"""Scan parsing speed: ``load_scan`` on a BU-3DFE-size ``.wrl`` and a Bosphorus-size ``.bnt`` against plain readers.

The ``.wrl`` reference is a naive regex + per-number ``float()`` reader like the public BU-3DFE readers; the
``.bnt`` reference is a plain numpy reader of the layout ``write_bnt`` documents (it only reads the planes,
``load_scan`` also triangulates the valid grid). Usage: ``python -m benchmarks.bench_parsing --output FILE.json [--quick]``.
"""

import os
import platform
import re
import struct
import tempfile

import numpy as np

from benchmarks.common import benchmark_main, cpu_model, median_ms
from datasets_scripts.scan_writers import write_bnt, write_wrl
from modeling_facet.mesh_io import load_scan


def bu3dfe_mesh(rows: int = 90, cols: int = 89, quads: int = 250, extra_uvs: int = 290) -> dict:
    """A BU-3DFE-size mesh: a bumpy grid of triangles and some quads, with more UVs than vertices (a seam)."""
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:rows, 0:cols]
    x, y = c * 1.65 - 65.9, r * 2.06 - 119.2
    z = 5.1 - 0.01 * ((x - 8) ** 2 + (y + 26) ** 2) / 10 + rng.normal(0, 0.05, x.shape)
    vertices = np.round(np.stack([x, y, z], axis=-1).reshape(-1, 3), 4)
    index = np.arange(rows * cols).reshape(rows, cols)
    quad = np.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]], axis=-1).reshape(-1, 4)
    kept, split = quad[:quads], quad[quads:]
    polygons = kept.tolist() + np.concatenate([split[:, [0, 1, 2]], split[:, [0, 2, 3]]]).tolist()
    uv = np.concatenate([vertices[:, :2], vertices[:extra_uvs, :2] + 0.5])
    uv = (uv - uv.min(0)) / np.ptp(uv, axis=0) * 0.8 + 0.08
    uv_polygons = [list(p) for p in polygons]
    for polygon in uv_polygons[:extra_uvs]:  # the seam: these corners use their own UV copies
        polygon[0] = rows * cols + polygon[0] % extra_uvs
    return dict(vertices=vertices, faces=polygons, uv=uv, uv_faces=uv_polygons, texture_url="F0001_AN01WH_F3D.bmp")


def make_bosphorus_bnt(path: str, nrows: int = 220, ncols: int = 200, zmin: float = -1e9) -> dict:
    """Write a Bosphorus-size ``.bnt``: a bump inside an ellipse, invalid (zmin) points outside it."""
    r, c = np.mgrid[0:nrows, 0:ncols]
    x, y = -80 + 0.76 * c, -100 + 0.76 * r
    inside = ((r - nrows / 2) / (0.515 * nrows)) ** 2 + ((c - ncols / 2) / (0.515 * ncols)) ** 2 < 1
    z = np.round(40 * np.exp(-((x + 4) ** 2 + (y - 16) ** 2) / 3000), 3)
    x, y, z = (np.where(inside, plane, zmin) for plane in (np.round(x, 3), np.round(y, 3), z))
    u = np.round((6 * c + 1) / (6 * ncols), 6)
    v = np.round((6 * nrows - 1 - 6 * r) / (6 * nrows), 6)
    write_bnt(path, nrows, ncols, zmin, "bs000_N_N_0.png", x, y, z, u, v)
    return {"grid": [nrows, ncols], "invalid_points": int((~inside).sum())}


def naive_wrl_reader(path: str) -> tuple:
    """Public-reader style: regex out each block, then ``float()``/``int()`` every token line by line."""
    with open(path) as handle:
        text = handle.read()

    def block(pattern: str) -> list:
        lines = re.search(pattern, text, re.S).group(1).splitlines()
        return [line.replace(",", " ").split() for line in lines if line.strip()]

    vertices = np.array([[float(t) for t in line] for line in block(r"Coordinate.+?\{.+?point.+?\[(.+?)\]")])
    uv = np.array([[float(t) for t in line] for line in block(r"TextureCoordinate.+?\{.+?point.+?\[(.+?)\]")])

    def fans(pattern: str) -> np.ndarray:
        polygons = [[int(t) for t in line][:-1] for line in block(pattern)]
        return np.array([(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)])

    return vertices, fans(r"coordIndex\s*\[(.+?)\]"), uv, fans(r"texCoordIndex\s*\[(.+?)\]")


def reference_bnt_reader(path: str) -> dict:
    """A plain numpy reader of the ``.bnt`` layout (datasets_scripts/scan_writers.py: ``write_bnt``)."""
    with open(path, "rb") as handle:
        data = handle.read()
    nrows, ncols = struct.unpack_from("<HH", data, 0)
    (zmin,) = struct.unpack_from("<d", data, 4)
    (length,) = struct.unpack_from("<H", data, 12)
    imfile = data[14 : 14 + length].decode("ascii")
    (count,) = struct.unpack_from("<I", data, 14 + length)
    x, y, z, u, v = np.frombuffer(data, "<f8", count, 18 + length).reshape(5, nrows * ncols)
    valid = (x != zmin) & (y != zmin) & (z != zmin)
    return dict(nrows=nrows, ncols=ncols, zmin=zmin, imfile=imfile, x=x, y=y, z=z, u=u, v=v, valid=valid)


def run(quick: bool = False) -> dict:
    """Time the readers and return the results as a JSON-ready dict."""
    repeats = 5 if quick else 30
    with tempfile.TemporaryDirectory() as folder:
        wrl_path = os.path.join(folder, "F0001_AN01WH_F3D.wrl")
        bnt_path = os.path.join(folder, "bs000_N_N_0.bnt")
        mesh = bu3dfe_mesh()
        write_ms = median_ms(lambda: write_wrl(wrl_path, **mesh), max(1, repeats // 5))
        bnt_info = make_bosphorus_bnt(bnt_path)
        wrl_scan, bnt_scan = load_scan(wrl_path), load_scan(bnt_path)
        reference_vertices, reference_faces, _, _ = naive_wrl_reader(wrl_path)
        if not (np.array_equal(reference_faces, wrl_scan.faces) and np.allclose(reference_vertices, wrl_scan.vertices)):
            raise RuntimeError("load_scan and the naive reader disagree on the benchmark .wrl")
        wrl_ms = median_ms(lambda: load_scan(wrl_path), repeats)
        wrl_reference_ms = median_ms(lambda: naive_wrl_reader(wrl_path), repeats)
        bnt_ms = median_ms(lambda: load_scan(bnt_path), repeats)
        bnt_reference_ms = median_ms(lambda: reference_bnt_reader(bnt_path), repeats)
        return {
            "benchmark": "parsing",
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "quick": quick,
            "repeats": repeats,
            "wrl": {
                "vertices": len(mesh["vertices"]),
                "polygons": len(mesh["faces"]),
                "quads": sum(len(polygon) == 4 for polygon in mesh["faces"]),
                "texcoords": len(mesh["uv"]),
                "file_bytes": os.path.getsize(wrl_path),
                "triangles": int(len(wrl_scan.faces)),
                "load_scan_ms": round(wrl_ms, 3),
                "naive_reader_ms": round(wrl_reference_ms, 3),
                "speedup_vs_naive": round(wrl_reference_ms / wrl_ms, 2),
                "write_wrl_ms": round(write_ms, 3),
            },
            "bnt": {
                **bnt_info,
                "file_bytes": os.path.getsize(bnt_path),
                "vertices": int(len(bnt_scan.vertices)),
                "triangles": int(len(bnt_scan.faces)),
                "load_scan_ms": round(bnt_ms, 3),
                "reference_reader_ms": round(bnt_reference_ms, 3),
                "load_scan_over_reference": round(bnt_ms / bnt_reference_ms, 2),
            },
        }


def main() -> None:
    benchmark_main(run, __doc__)


if __name__ == "__main__":
    main()

"""Resource limits on hostile input: the time and peak memory the app and the parser spend before they answer.

Usage: python -m benchmarks.bench_limits --output FILE.json [--quick]

Cases (issue 16, items 1 and 2), each in a fresh (spawned) process whose peak resident memory (`ru_maxrss`) is
reported as the increase over the process after its imports:

* zip bomb: a .zip upload (`app/inputs.py` `load_upload`) whose one frame entry declares 1 KB and inflates to
  hundreds of MB of zeros;
* many entries: a .zip of empty frame entries (also counting the frame files it extracts, which stay in a temporary
  folder while the app holds the upload);
* full-screen triangles: a .wrl of 5 vertices and many triangles each covering the whole face, read with `load_scan`
  and rendered with the default `MultiviewRenderer` (what the app does under its prediction lock);
* parse memory: `load_scan` of a large, valid .wrl (peak memory over the file size).

The outcome of each case is "accepted" or the error it raised.
"""

from __future__ import annotations

import os
import resource
import struct
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_main, load_average


UPLOAD_LIMIT_BYTES = 100 * 1024 * 1024  # the app's default upload limit (app/settings.py)


def _max_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def write_zip_bomb(path: Path, inflated_mb: int, declared_bytes: int = 1024) -> int:
    """A zip of one frame entry of `inflated_mb` MB of zeros whose headers declare `declared_bytes`; its size."""
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("frames/000.wrl", "w") as entry:
        for _ in range(inflated_mb):
            entry.write(chunk)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 22, declared_bytes)  # local file header: uncompressed size
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared_bytes)  # central directory: uncompressed size
    path.write_bytes(bytes(data))
    return len(data)


def write_many_entries(path: Path, entries: int) -> int:
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(entries):
            archive.writestr(f"{index:06d}.wrl", b"")
    return path.stat().st_size


def _wrl(vertices: np.ndarray, index_text: str) -> str:
    points = ",\n".join(" ".join(f"{value:g}" for value in vertex) for vertex in vertices.tolist())
    return ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {\ncoord Coordinate { point [\n" + points
            + "\n] }\ncoordIndex [\n" + index_text + "]\n} }\n")  # fmt: skip


def write_full_screen_triangles(path: Path, triangles: int) -> int:
    """5 vertices (a square's corners and its raised centre) and `triangles` triangles over the whole square."""
    vertices = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, 0.2]], dtype=float) * 80
    path.write_text(_wrl(vertices, "0 1 2 -1 0 2 3 -1\n" * (triangles // 2)))
    return path.stat().st_size


def write_large_wrl(path: Path, side: int) -> int:
    """A valid `side` x `side` grid surface of triangles."""
    r, c = np.mgrid[0:side, 0:side]
    vertices = np.stack([c * 0.5, r * 0.5, np.sin(r / 7.0) * np.cos(c / 9.0) * 5], axis=-1).reshape(-1, 3)
    index = np.arange(side * side).reshape(side, side)
    a, b, d, e = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel()
    triangles = np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)])
    lines = "\n".join(f"{i} {j} {k} -1," for i, j, k in triangles.tolist())
    path.write_text(_wrl(np.round(vertices, 3), lines + "\n"))
    return path.stat().st_size


def measure(case: str, path: str) -> dict:
    """Run one case on `path` in this (fresh) process: wall seconds, peak RSS increase, outcome."""
    from app.inputs import load_upload
    from modeling_facet.mesh_io import load_scan
    from modeling_facet.rendering import MultiviewRenderer

    renderer = MultiviewRenderer()
    rss_after_imports = _max_rss_mb()
    start, extracted = time.perf_counter(), None
    try:
        if case in ("zip_bomb", "many_entries"):
            face = load_upload(os.path.basename(path), Path(path).read_bytes(), UPLOAD_LIMIT_BYTES)
            extracted = 0 if face.folder is None else len(os.listdir(face.folder.name))
        elif case == "full_screen_triangles":
            renderer.render(load_scan(path))
        else:
            load_scan(path)
        outcome = "accepted"
    except Exception as error:  # the point of the case: which error, how fast, at what memory
        outcome = f"{type(error).__name__}: {error}"[:300]
    result = {"wall_s": round(time.perf_counter() - start, 3), "peak_rss_increase_mb": round(_max_rss_mb() - rss_after_imports, 1),
              "outcome": outcome}  # fmt: skip
    if case == "many_entries":
        result["files_extracted"] = extracted
    return result


def _fresh(case: str, path: Path) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, case, str(path)).result()


def run(quick: bool = False) -> dict:
    """Every case's wall time, peak memory and outcome."""
    sizes = dict(bomb_mb=64 if quick else 1024, entries=10_000 if quick else 100_000,
                 triangles=20_000 if quick else 160_000, grid=300 if quick else 700)  # fmt: skip
    results = {"benchmark": "limits", "quick": quick, "load_average_before": load_average(),
               "upload_limit_mb": UPLOAD_LIMIT_BYTES / 2**20, "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="facet-bench-limits-") as work:
        work = Path(work)
        files = {
            "zip_bomb": (work / "bomb.zip", lambda p: write_zip_bomb(p, sizes["bomb_mb"]),
                         {"inflated_mb": sizes["bomb_mb"], "declared_bytes": 1024}),
            "many_entries": (work / "entries.zip", lambda p: write_many_entries(p, sizes["entries"]),
                             {"entries": sizes["entries"]}),
            "full_screen_triangles": (work / "triangles.wrl", lambda p: write_full_screen_triangles(p, sizes["triangles"]),
                                      {"vertices": 5, "triangles": sizes["triangles"]}),
            "parse_memory": (work / "large.wrl", lambda p: write_large_wrl(p, sizes["grid"]),
                             {"vertices": sizes["grid"] ** 2, "triangles": 2 * (sizes["grid"] - 1) ** 2}),
        }  # fmt: skip
        for case, (path, write, described) in files.items():
            file_mb = write(path) / 2**20
            measured = _fresh(case, path)
            results["cases"][case] = {**described, "file_mb": round(file_mb, 2), **measured,
                                      "peak_over_file_size": round(measured["peak_rss_increase_mb"] / file_mb, 1)}  # fmt: skip
            path.unlink()
    return results


if __name__ == "__main__":
    benchmark_main(run, __doc__)

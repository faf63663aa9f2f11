"""An interactive 3D view of a scan that works offline: a self-contained HTML page (no library, no network) drawing
the mesh on a canvas with flat shading; drag to turn it, scroll to zoom, double-click to reset."""

from __future__ import annotations

import base64
import json

import numpy as np

from modeling_facet.rendering import normalize_scan


MAX_VIEWER_FACES = 12_000
_CELL_GROWTH = 1.25


def _cluster_vertices(vertices: np.ndarray, faces: np.ndarray, cell: float) -> tuple:
    """Vertex clustering on a grid of side `cell`: each occupied cell becomes one vertex (the mean of its members);
    triangles that collapse or repeat are dropped."""
    _, cluster = np.unique(np.floor(vertices / cell).astype(np.int64), axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    counts = np.bincount(cluster)
    merged = np.stack([np.bincount(cluster, weights=vertices[:, axis]) for axis in range(3)], axis=1) / counts[:, None]
    triangles = cluster[faces]
    a, b, c = triangles.T
    triangles = triangles[(a != b) & (b != c) & (a != c)]
    _, first = np.unique(np.sort(triangles, axis=1), axis=0, return_index=True)
    return merged, triangles[np.sort(first)]


def viewer_mesh(scan, max_faces: int = MAX_VIEWER_FACES) -> tuple:
    """The scan in the model's canonical frame (nose tip at the origin, looking along +z, face radius about 0.65),
    simplified by vertex clustering to at most `max_faces` triangles: (vertices (N, 3) float32, faces (M, 3) int32)."""
    vertices, faces = normalize_scan(scan)
    vertices = vertices.astype(np.float64)
    if len(faces) > max_faces:
        edges = vertices[faces[:, [1, 2, 0]]] - vertices[faces]
        cell = float(np.median(np.linalg.norm(edges, axis=-1))) * np.sqrt(len(faces) / max_faces)
        while True:
            merged, kept = _cluster_vertices(vertices, faces, cell)
            if len(kept) <= max_faces:
                break
            cell *= _CELL_GROWTH
        vertices, faces = merged, kept
    return vertices.astype(np.float32), faces.astype(np.int32)


def _base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>
html, body { margin: 0; height: 100%; background: #0e1117; overflow: hidden; font-family: sans-serif; }
canvas { width: 100%; height: 100%; display: block; cursor: grab; touch-action: none; }
#hint { position: absolute; left: 8px; bottom: 6px; color: #9aa0a6; font-size: 12px; pointer-events: none; }
</style></head><body>
<canvas id="mesh" aria-label="interactive 3D view of the scan"></canvas>
<div id="hint">drag to turn &middot; scroll to zoom &middot; double-click to reset</div>
<script>
const MESH = __MESH__;
function decode(text, Type) {
  const bytes = Uint8Array.from(atob(text), c => c.charCodeAt(0));
  return new Type(bytes.buffer);
}
const V = decode(MESH.vertices, Float32Array), F = decode(MESH.faces, Int32Array);
const nV = V.length / 3, nF = F.length / 3;
// Face normals in the model frame (the renderer's convention: +z towards the viewer).
const N = new Float32Array(nF * 3);
for (let f = 0; f < nF; f++) {
  const a = 3 * F[3 * f], b = 3 * F[3 * f + 1], c = 3 * F[3 * f + 2];
  const ux = V[b] - V[a], uy = V[b + 1] - V[a + 1], uz = V[b + 2] - V[a + 2];
  const vx = V[c] - V[a], vy = V[c + 1] - V[a + 1], vz = V[c + 2] - V[a + 2];
  const nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
  const len = Math.hypot(nx, ny, nz) || 1;
  N[3 * f] = nx / len; N[3 * f + 1] = ny / len; N[3 * f + 2] = nz / len;
}
const canvas = document.getElementById("mesh"), ctx = canvas.getContext("2d");
const P = new Float32Array(nV * 3), depth = new Float32Array(nF), order = new Uint32Array(nF);
const LIGHT = [-0.3, 0.4, 1.0].map(x => x / Math.hypot(-0.3, 0.4, 1.0));
const state = { yaw: 0, pitch: 0, zoom: 1 };
function draw() {
  const w = canvas.clientWidth, h = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const cy = Math.cos(state.yaw), sy = Math.sin(state.yaw), cp = Math.cos(state.pitch), sp = Math.sin(state.pitch);
  // Rotation: yaw about y, then pitch about x.
  const R = [cy, 0, sy, sp * sy, cp, -sp * cy, -cp * sy, sp, cp * cy];
  const scale = 0.45 * Math.min(canvas.width, canvas.height) * state.zoom;
  const ox = canvas.width / 2, oy = canvas.height / 2;
  for (let i = 0; i < nV; i++) {
    const x = V[3 * i], y = V[3 * i + 1], z = V[3 * i + 2] + 0.3;
    P[3 * i] = ox + scale * (R[0] * x + R[1] * y + R[2] * z);
    P[3 * i + 1] = oy - scale * (R[3] * x + R[4] * y + R[5] * z);
    P[3 * i + 2] = R[6] * x + R[7] * y + R[8] * z;
  }
  for (let f = 0; f < nF; f++) {
    depth[f] = P[3 * F[3 * f] + 2] + P[3 * F[3 * f + 1] + 2] + P[3 * F[3 * f + 2] + 2];
    order[f] = f;
  }
  order.sort((a, b) => depth[a] - depth[b]);  // painter's algorithm: far triangles first
  ctx.fillStyle = "#0e1117"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 0.6;
  for (let k = 0; k < nF; k++) {
    const f = order[k], a = 3 * F[3 * f], b = 3 * F[3 * f + 1], c = 3 * F[3 * f + 2];
    const nx = N[3 * f], ny = N[3 * f + 1], nz = N[3 * f + 2];
    const lz = R[6] * nx + R[7] * ny + R[8] * nz;
    const lx = R[0] * nx + R[1] * ny + R[2] * nz, ly = R[3] * nx + R[4] * ny + R[5] * nz;
    const sign = lz < 0 ? -1 : 1;  // light both sides, whatever the triangles' winding
    const lambert = Math.max(0, sign * (lx * LIGHT[0] + ly * LIGHT[1] + lz * LIGHT[2]));
    const shade = Math.round(255 * (0.15 + 0.85 * lambert));
    const colour = `rgb(${Math.round(shade * 0.93)},${Math.round(shade * 0.82)},${Math.round(shade * 0.74)})`;
    ctx.fillStyle = colour; ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.moveTo(P[a], P[a + 1]); ctx.lineTo(P[b], P[b + 1]); ctx.lineTo(P[c], P[c + 1]);
    ctx.closePath(); ctx.fill(); ctx.stroke();
  }
}
let pending = false, last = null;
function redraw() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } }
canvas.addEventListener("pointerdown", e => { last = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener("pointerup", () => { last = null; });
canvas.addEventListener("pointermove", e => {
  if (!last) return;
  state.yaw += (e.clientX - last[0]) * 0.01;
  state.pitch = Math.max(-1.5, Math.min(1.5, state.pitch + (e.clientY - last[1]) * 0.01));
  last = [e.clientX, e.clientY]; redraw();
});
canvas.addEventListener("wheel", e => {
  e.preventDefault(); state.zoom = Math.max(0.3, Math.min(5, state.zoom * Math.exp(-e.deltaY * 0.001))); redraw();
}, { passive: false });
canvas.addEventListener("dblclick", () => { state.yaw = 0; state.pitch = 0; state.zoom = 1; redraw(); });
window.addEventListener("resize", redraw);
draw();
</script></body></html>
"""


def viewer_html(scan, max_faces: int = MAX_VIEWER_FACES) -> str:
    """The self-contained HTML page of the interactive view of `scan` (for `st.iframe`)."""
    vertices, faces = viewer_mesh(scan, max_faces)
    mesh = {"vertices": _base64(vertices.astype("<f4")), "faces": _base64(faces.astype("<i4"))}
    return _PAGE.replace("__MESH__", json.dumps(mesh))

"""Reading and writing 3D face scans and landmarks in the formats the benchmarks ship.

Every reader returns a :class:`FaceScan` (or landmarks) and raises :class:`ScanFormatError`, which names the
file and what is wrong, for any malformed input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


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
        source_path: the file the scan was read from, if any.
        metadata: free-form extra information (format, grid size, ...).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: Optional[np.ndarray] = None
    uv_faces: Optional[np.ndarray] = None
    texture_path: Optional[str] = None
    landmarks: Optional[np.ndarray] = None
    landmark_names: Optional[list] = None
    source_path: Optional[str] = None
    metadata: dict = field(default_factory=dict)


@dataclass
class FaceSequence:
    """A 4D scan: frames in temporal (file-name) order; frames are loaded lazily from ``frame_paths`` when given."""

    frames: list
    frame_paths: Optional[list] = None
    source_path: Optional[str] = None

    def __len__(self) -> int:
        return len(self.frames)

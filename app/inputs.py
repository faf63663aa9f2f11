"""What the app classifies: uploaded scan files, uploaded 4D sequences (a .zip of frame files) and generated sample
faces, each as a FaceScan or FaceSequence; every bad upload raises an UploadError naming the file and the problem."""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Optional, Union

from datasets_scripts.synthetic_faces import EMOTION_CODES, EXPRESSIONS, SyntheticConfig, SyntheticFaceGenerator
from modeling_facet.mesh_io import SCAN_EXTENSIONS, FaceScan, FaceSequence, ScanFormatError, load_scan


SEQUENCE_EXTENSION = ".zip"
UPLOAD_EXTENSIONS = SCAN_EXTENSIONS + (SEQUENCE_EXTENSION,)
SAMPLE_SEED = 7
SAMPLE_SEQUENCE_FRAMES = 12
_MEGABYTE = 1024 * 1024


class UploadError(ValueError):
    """An uploaded file cannot be classified; the message names the file and the problem."""

    def __init__(self, name: str, problem: str):
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


@dataclass
class FaceInput:
    """One thing to classify: a static `scan` (FaceScan) or a 4D `sequence` (FaceSequence), a name to show, and the
    true expression where it is known (generated samples). A sequence read from an upload keeps its frame files in
    `folder`, a temporary directory removed with this object."""

    name: str
    item: Union[FaceScan, FaceSequence]
    true_label: Optional[str] = None
    folder: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)
    frame_names: dict = field(default_factory=dict, repr=False)  # frame file path -> "upload.zip/member"

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.item, FaceSequence)

    def display_name(self, path: str) -> str:
        """The name a user knows for a frame file of this input (its zip member) or for the input itself."""
        return self.frame_names.get(path, self.name)


def _megabytes(size: int) -> str:
    return f"{size / _MEGABYTE:.2f} MB"


def _natural_key(name: str) -> list:
    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", name)]


def _load_scan_bytes(name: str, data: bytes, folder: str) -> FaceScan:
    """Parses the bytes of the scan file `name` through a file with the same extension in `folder`; errors and the
    scan's `source_path` name the upload, not that file."""
    path = os.path.join(folder, "upload" + os.path.splitext(name)[1].lower())
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        scan = load_scan(path)
    except ScanFormatError as error:
        raise UploadError(name, error.problem) from error
    finally:
        os.remove(path)
    scan.source_path = name
    return scan


def _sequence_from_zip(name: str, data: bytes, max_bytes: int) -> FaceInput:
    """Writes the frame files of a zip (any folder depth, natural name order) into a temporary directory and
    returns a lazily read FaceSequence of them."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise UploadError(name, f"not a valid zip archive ({error})") from error
    with archive:
        members = [info for info in archive.infolist()
                   if not info.is_dir() and os.path.splitext(info.filename)[1].lower() in SCAN_EXTENSIONS]  # fmt: skip
        if not members:
            raise UploadError(name, f"the archive holds no frame files ({', '.join(SCAN_EXTENSIONS)})")
        expanded = sum(info.file_size for info in members)
        if expanded > max_bytes:
            raise UploadError(
                name, f"its frames expand to {_megabytes(expanded)}, over the {_megabytes(max_bytes)} upload limit"
            )
        members.sort(key=lambda info: _natural_key(info.filename))
        folder = tempfile.TemporaryDirectory(prefix="facet-app-sequence-")
        paths, frame_names = [], {}
        try:
            for index, info in enumerate(members):
                path = os.path.join(folder.name, f"{index:06d}{os.path.splitext(info.filename)[1].lower()}")
                with archive.open(info) as source, open(path, "wb") as target:
                    target.write(source.read())
                paths.append(path)
                frame_names[path] = f"{name}/{info.filename}"
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            folder.cleanup()
            raise UploadError(name, f"cannot be extracted ({type(error).__name__}: {error})") from error
    sequence = FaceSequence(paths, list(paths), source_path=name)
    return FaceInput(name=name, item=sequence, folder=folder, frame_names=frame_names)


def load_upload(name: str, data: bytes, max_bytes: int) -> FaceInput:
    """Reads an uploaded scan file (.wrl, .bnt, .obj, .ply, .off, .stl, .glb) or a .zip of frame files (a 4D
    sequence).

    Raises:
        UploadError: the extension is not supported, the file (or the zip's content) is larger than `max_bytes`,
            or it cannot be parsed; the message names the file and the problem.
    """
    extension = os.path.splitext(name)[1].lower()
    if extension not in UPLOAD_EXTENSIONS:
        raise UploadError(
            name, f"unsupported file type {extension or '(no extension)'!r}; upload a scan "
            f"({', '.join(SCAN_EXTENSIONS)}) or a {SEQUENCE_EXTENSION} of frame files (a 4D sequence)",
        )  # fmt: skip
    if len(data) > max_bytes:
        raise UploadError(name, f"the file is {_megabytes(len(data))}, over the {_megabytes(max_bytes)} upload limit")
    if not data:
        raise UploadError(name, "the file is empty")
    if extension == SEQUENCE_EXTENSION:
        return _sequence_from_zip(name, data, max_bytes)
    with tempfile.TemporaryDirectory(prefix="facet-app-scan-") as folder:
        return FaceInput(name=name, item=_load_scan_bytes(name, data, folder))


def sample_faces() -> list:
    """Generated sample faces to try the app without a file: one synthetic subject per expression at the highest
    intensity (BU-3DFE style), and one 4D sequence (BU-4DFE style), each with its true expression."""
    generator = SyntheticFaceGenerator(SyntheticConfig(seed=SAMPLE_SEED))
    samples = []
    for subject, code in enumerate(EMOTION_CODES):
        scan, info = generator.scan(subject, code, 4)
        label = EXPRESSIONS[code]
        samples.append(FaceInput(name=f"subject {info['subject']}, {label} (intensity 4)", item=scan, true_label=label))
    frames, info = generator.sequence(len(EMOTION_CODES), "SU", num_frames=SAMPLE_SEQUENCE_FRAMES)
    label = EXPRESSIONS[info["expression"]]
    name = f"4D sequence: subject {info['subject']}, {label} ({len(frames)} frames)"
    samples.append(FaceInput(name=name, item=FaceSequence(frames), true_label=label))
    return samples

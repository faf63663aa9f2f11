"""What the app classifies: uploaded scan files, uploaded 4D sequences (a .zip of frame files) and generated sample
faces, each as a FaceScan or FaceSequence; every bad upload raises an UploadError naming the file and the problem."""

from __future__ import annotations

import io
import lzma
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Optional, Union

from datasets_scripts.synthetic_faces import EMOTION_CODES, EXPRESSIONS, SyntheticConfig, SyntheticFaceGenerator
from modeling_facet.mesh_io import SCAN_EXTENSIONS, FaceScan, FaceSequence, ScanFormatError, load_scan


SEQUENCE_EXTENSION = ".zip"
UPLOAD_EXTENSIONS = SCAN_EXTENSIONS + (SEQUENCE_EXTENSION,)
SAMPLE_SEED = 7
SAMPLE_SEQUENCE_FRAMES = 12
_MEGABYTE = 1024 * 1024
MAX_ARCHIVE_ENTRIES = 10_000  # BP4D's longest sequences have a few thousand frames
EXTRACT_CHUNK_BYTES = _MEGABYTE
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# What reading a damaged entry raises: bad headers or CRC, bz2 (OSError), deflate, LZMA, a truncated stream.
_EXTRACT_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, NotImplementedError)


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


def _check_entry_count(name: str, data: bytes) -> None:
    """Refuses an archive of more than MAX_ARCHIVE_ENTRIES entries before zipfile reads its central directory: every
    central directory record starts with its signature, so counting the signatures bounds the entries (zip64 too)."""
    entries = data.count(b"PK\x01\x02")
    if entries > MAX_ARCHIVE_ENTRIES:
        raise UploadError(name, f"the archive holds {entries:,} entries, more than the {MAX_ARCHIVE_ENTRIES:,} accepted")


def _frame_members(name: str, archive: zipfile.ZipFile, max_bytes: int) -> list:
    """The frame entries of `archive` in natural name order, refusing frames whose declared sizes exceed `max_bytes`
    and encrypted or unsupported entries before anything is extracted."""
    members = [info for info in archive.infolist()
               if not info.is_dir() and os.path.splitext(info.filename)[1].lower() in SCAN_EXTENSIONS]  # fmt: skip
    if not members:
        raise UploadError(name, f"the archive holds no frame files ({', '.join(SCAN_EXTENSIONS)})")
    expanded = sum(info.file_size for info in members)
    if expanded > max_bytes:
        raise UploadError(name, f"its frames expand to {_megabytes(expanded)}, over the {_megabytes(max_bytes)} upload limit")
    for info in members:
        if info.flag_bits & 0x1:
            raise UploadError(name, f"entry {info.filename} is encrypted; upload an unencrypted archive")
        if info.compress_type not in _ZIP_METHODS:
            raise UploadError(name, f"entry {info.filename} uses unsupported compression method {info.compress_type}; "
                              "use deflate (the default of zip tools)")  # fmt: skip
    return sorted(members, key=lambda info: _natural_key(info.filename))


def _extract(name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, budget: int) -> int:
    """Copies entry `info` to `path` in chunks, stopping once more than `budget` bytes came out whatever its header
    declares (a zip bomb); returns the bytes written."""
    written = 0
    with archive.open(info) as source, open(path, "wb") as target:
        while chunk := source.read(EXTRACT_CHUNK_BYTES):
            written += len(chunk)
            if written > budget:
                raise UploadError(name, f"entry {info.filename} expands beyond the upload limit (its header declares "
                                  f"{_megabytes(info.file_size)})")  # fmt: skip
            target.write(chunk)
    return written


def _sequence_from_zip(name: str, data: bytes, max_bytes: int) -> FaceInput:
    """Writes the frame files of a zip (any folder depth, natural name order) into a temporary directory and
    returns a lazily read FaceSequence of them; at most `max_bytes` are extracted in all."""
    _check_entry_count(name, data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        raise UploadError(name, f"not a valid zip archive ({error})") from error
    with archive:
        members = _frame_members(name, archive, max_bytes)
        folder = tempfile.TemporaryDirectory(prefix="facet-app-sequence-")
        paths, frame_names, budget = [], {}, max_bytes
        try:
            for index, info in enumerate(members):
                path = os.path.join(folder.name, f"{index:06d}{os.path.splitext(info.filename)[1].lower()}")
                try:
                    budget -= _extract(name, archive, info, path, budget)
                except _EXTRACT_ERRORS as error:
                    raise UploadError(name, f"entry {info.filename} cannot be extracted ({type(error).__name__}: "
                                      f"{error})") from error  # fmt: skip
                paths.append(path)
                frame_names[path] = f"{name}/{info.filename}"
        except UploadError:
            folder.cleanup()
            raise
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

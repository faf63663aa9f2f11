"""Property tests: whatever bytes a scan or landmark file holds, the readers either succeed or raise ScanFormatError.

Inputs are random bytes, randomly mutated fixtures of every format (byte flips, truncation, insertion, deletion;
each reader also gets the other formats' bytes) and token soups that reach deep into the text parsers.
"""

import os
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_facet.mesh_io import LANDMARK_EXTENSIONS, SCAN_EXTENSIONS, ScanFormatError, load_landmarks, load_scan

from .test_mesh_io import write_fixture_files


EXTENSIONS = SCAN_EXTENSIONS + LANDMARK_EXTENSIONS
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True)  # the same examples on every run
WRL_TOKENS = [
    "#VRML V2.0 utf8\n", "IndexedFaceSet", "coord", "Coordinate", "DEF", "texCoord", "TextureCoordinate", "point",
    "coordIndex", "texCoordIndex", "url", '"t.bmp"', '"', "#", "{", "}", "[", "]", ",", "\n", "-1", "-2", "0", "1",
    "2", "3", "2.5", "1e3", "nan", "-", "99999999999999999999",
]
LANDMARK_TOKENS = [
    "# 3D Landmark File", "# 2D Landmark File", "*", "", "2 landmarks:", "1 landmarks", "0 landmarks:", "Labels:",
    "2D Image coordinates:", "Nose tip", "1 2 3", "4 5", "6", "7 8 9 10", "-1 2 3 4", "nan 1 2", "1e400 1 1", ",",
]


@pytest.fixture(scope="module")
def fixture_bytes(tmp_path_factory):
    """{extension: bytes} of one valid file per format."""
    paths = write_fixture_files(tmp_path_factory.mktemp("fixtures"))
    return {ext: open(path, "rb").read() for ext, path in paths.items()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_accepting_only_scan_errors(folder, ext: str, data: bytes) -> None:
    """Write ``data`` as a file with extension ``ext`` and read it; any exception but ScanFormatError fails."""
    path = os.path.join(str(folder), "fuzz" + ext)
    with open(path, "wb") as handle:
        handle.write(data)
    reader = load_scan if ext in SCAN_EXTENSIONS else load_landmarks
    try:
        reader(path)
    except ScanFormatError as error:
        assert error.path == path


@st.composite
def mutations(draw, own: bytes, every: list) -> bytes:
    """A fixture (its own format half of the time) after 1-4 random flips, truncations, insertions or deletions."""
    data = bytearray(draw(st.one_of(st.just(own), st.sampled_from(every))))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, len(data)))
        if operation == "flip" and data:
            data[min(position, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_mutated_fixtures_raise_only_scan_errors(fixture_bytes, scratch, ext):
    every = [fixture_bytes[key] for key in sorted(fixture_bytes)]

    @FUZZ
    @given(mutations(fixture_bytes[ext], every))
    def check(data):
        read_accepting_only_scan_errors(scratch, ext, data)

    check()


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_random_bytes_raise_only_scan_errors(scratch, ext):
    @settings(FUZZ, max_examples=15)
    @given(st.binary(max_size=4096))
    def check(data):
        read_accepting_only_scan_errors(scratch, ext, data)

    check()


@FUZZ
@given(st.lists(st.sampled_from(WRL_TOKENS), max_size=80))
def test_wrl_token_soup_raises_only_scan_errors(scratch, tokens):
    read_accepting_only_scan_errors(scratch, ".wrl", " ".join(tokens).encode())


@FUZZ
@given(st.sampled_from([".lm3", ".lm2", ".bnd", ".tbnd"]), st.lists(st.sampled_from(LANDMARK_TOKENS), max_size=30))
def test_landmark_token_soup_raises_only_scan_errors(scratch, ext, lines):
    read_accepting_only_scan_errors(scratch, ext, "\r\n".join(lines).encode())


@FUZZ
@given(
    nrows=st.integers(0, 65535),
    ncols=st.integers(0, 65535),
    count=st.integers(0, 2**32 - 1),
    name=st.binary(max_size=40),
    payload=st.integers(0, 512),
)
def test_bnt_headers_never_allocate_what_they_announce(scratch, nrows, ncols, count, name, payload):
    data = struct.pack("<HHdH", nrows, ncols, -1e9, len(name)) + name + struct.pack("<I", count) + bytes(payload)
    tracemalloc.start()
    try:
        read_accepting_only_scan_errors(scratch, ".bnt", data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000

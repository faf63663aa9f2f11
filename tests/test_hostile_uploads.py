"""The app against hostile uploads and input (issue 16): zip bombs, archives of very many entries, broken or
unsupported zip entries, model folders outside the app's working directory and huge label lists. Each case must end
in a message naming the upload and the problem, never a stack trace or an unbounded amount of work."""

import io
import lzma
import struct
import zipfile

import pytest

from app import inputs
from app.inputs import UploadError, load_upload
from tests.test_app import mesh_bytes


def zip_of(entries: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patched(data: bytes, local_offset: int, central_offset: int, fmt: str, value) -> bytes:
    """`data` with a field of the first entry's local header and of its central directory record set to `value`."""
    data = bytearray(data)
    struct.pack_into(fmt, data, local_offset, value)
    struct.pack_into(fmt, data, data.find(b"PK\x01\x02") + central_offset, value)
    return bytes(data)


def under_declared_bomb(inflated: int, declared: int = 1024) -> bytes:
    """One frame entry of `inflated` zero bytes whose headers declare `declared` bytes."""
    return patched(zip_of({"000.wrl": bytes(inflated)}), 22, 24, "<I", declared)


def test_zip_entries_are_read_in_bounded_chunks_whatever_their_headers_say(monkeypatch):
    requested = []
    original = zipfile.ZipExtFile.read

    def recording_read(self, n=-1):
        requested.append(n)
        return original(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", recording_read)
    with pytest.raises(UploadError, match="bomb.zip: "):
        load_upload("bomb.zip", under_declared_bomb(4 * 1024 * 1024), 2 * 1024 * 1024)
    assert requested and all(0 < n <= inputs.EXTRACT_CHUNK_BYTES for n in requested)


def test_an_archive_of_too_many_entries_is_refused_before_it_is_read(monkeypatch):
    """Reading the central directory of 100,000 entries alone took 2.5 s and +67 MB."""
    monkeypatch.setattr(inputs, "MAX_ARCHIVE_ENTRIES", 5)
    data = zip_of({f"{index:03d}.wrl": b"" for index in range(6)})
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZipFile", None)
        with pytest.raises(UploadError, match=r"many.zip: the archive holds 6 entries, more than the 5 accepted"):
            load_upload("many.zip", data, 10**6)
    sequence = load_upload("five.zip", zip_of({f"{index:03d}.ply": mesh_bytes("ply") for index in range(5)}), 10**6)
    assert len(sequence.item) == 5


def _encrypted() -> bytes:
    return patched(zip_of({"000.ply": mesh_bytes("ply")}, zipfile.ZIP_STORED), 6, 8, "<H", 0x1)


def _corrupt(compression) -> bytes:
    """A compressed frame entry whose compressed bytes are garbled after the first few."""
    data = bytearray(zip_of({"000.ply": mesh_bytes("ply") * 4}, compression))
    name_length, extra_length = struct.unpack_from("<HH", data, 26)
    start = 30 + name_length + extra_length
    data[start + 8 : start + 200] = bytes(range(192))
    return bytes(data)


def _unsupported_method() -> bytes:
    return patched(zip_of({"000.ply": mesh_bytes("ply")}, zipfile.ZIP_STORED), 8, 10, "<H", 99)


@pytest.mark.parametrize(
    "make, problem",
    [
        (_encrypted, "is encrypted"),
        (lambda: _corrupt(zipfile.ZIP_DEFLATED), "cannot be extracted"),
        (lambda: _corrupt(zipfile.ZIP_LZMA), "cannot be extracted"),
        (_unsupported_method, "unsupported compression method 99"),
    ],
    ids=["encrypted", "corrupt-deflate", "corrupt-lzma", "unsupported-method"],
)
def test_broken_zip_entries_give_an_upload_error(make, problem):
    with pytest.raises(UploadError) as raised:
        load_upload("frames.zip", make(), 10**6)
    assert raised.value.name == "frames.zip" and problem in raised.value.problem
    assert "000.ply" in raised.value.problem


def test_lzma_errors_are_what_a_corrupt_lzma_entry_raises():
    """The corrupt LZMA case above really exercises an LZMA decoder error (not a CRC check)."""
    archive = zipfile.ZipFile(io.BytesIO(_corrupt(zipfile.ZIP_LZMA)))
    with pytest.raises((lzma.LZMAError, EOFError, zipfile.BadZipFile)):
        archive.read("000.ply")


# ------------------------------------------------------------------------------------------- the page (items 12, 13)


def app_on(model_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app.settings import APP_SCRIPT
    from tests.test_app import TIMEOUT_S

    monkeypatch.setenv("FACET_APP_MODEL", str(model_dir))
    monkeypatch.delenv("FACET_APP_MAX_UPLOAD_MB", raising=False)
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S).run()


def test_the_app_offers_training_only_under_its_working_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    outside = app_on(tmp_path / "elsewhere" / "model", monkeypatch)
    assert not outside.exception and not outside.button
    assert f"trains only into folders under its working directory {work}" in outside.info[0].value
    assert "facet-vlm demo --output" in outside.info[0].value
    escaping = app_on(work / ".." / "elsewhere" / "model", monkeypatch)
    assert not escaping.button
    inside = app_on(work / "outputs" / "demo" / "model", monkeypatch)
    assert not inside.exception and str(work / "outputs" / "demo") in inside.button[0].label


def test_the_app_caps_the_number_of_candidate_labels(monkeypatch, tmp_path):
    from app.settings import MAX_CANDIDATE_LABELS
    from tests.test_pipeline import save_tiny_model

    save_tiny_model(tmp_path)
    app = app_on(tmp_path, monkeypatch)
    too_many = ", ".join(f"label{index}" for index in range(MAX_CANDIDATE_LABELS + 1))
    app.text_input(key="labels").set_value(too_many).run()
    assert not app.exception
    assert f"{MAX_CANDIDATE_LABELS + 1} candidate labels: the app scores at most {MAX_CANDIDATE_LABELS}" in app.sidebar.error[0].value
    app.radio(key="source").set_value("Generated sample face").run()
    assert not app.metric  # nothing was classified
    app.text_input(key="labels").set_value(", ".join(f"label{index}" for index in range(MAX_CANDIDATE_LABELS))).run()
    assert not app.exception and not app.error and app.metric

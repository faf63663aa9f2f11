"""The hostile-input benchmark's files really are what it says, its cases end as the hardening intends, and its
report rows read its JSON. Nothing is timed here; `python -m benchmarks.bench_limits` measures."""

import zipfile

from benchmarks import bench_limits, report
from modeling_facet.mesh_io import load_scan


def test_the_zip_bomb_declares_1_kb_and_inflates_to_what_was_asked(tmp_path):
    path = tmp_path / "bomb.zip"
    size = bench_limits.write_zip_bomb(path, inflated_mb=2)
    with zipfile.ZipFile(path) as archive:
        (info,) = archive.infolist()
        assert info.file_size == 1024 and size < 64 * 1024
        with archive.open(info) as entry:
            entry._left = 2**31  # ignore the declared size, as a careless reader would
            assert len(entry.read()) == 2 * 1024 * 1024


def test_the_generated_scans(tmp_path):
    bench_limits.write_large_wrl(tmp_path / "large.wrl", side=20)
    assert len(load_scan(tmp_path / "large.wrl").faces) == 2 * 19 * 19
    bench_limits.write_full_screen_triangles(tmp_path / "layers.wrl", triangles=200)
    assert "100 times over" in str(_error(lambda: load_scan(tmp_path / "layers.wrl")))


def _error(call):
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("no error")


def test_every_hostile_case_is_refused_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr("app.inputs.MAX_ARCHIVE_ENTRIES", 10)
    files = {"zip_bomb": lambda p: bench_limits.write_zip_bomb(p, 4),
             "many_entries": lambda p: bench_limits.write_many_entries(p, 11),
             "full_screen_triangles": lambda p: bench_limits.write_full_screen_triangles(p, 200)}  # fmt: skip
    for case, write in files.items():
        path = tmp_path / f"{case}.{'wrl' if 'triangles' in case else 'zip'}"
        write(path)
        result = bench_limits.measure(case, str(path))
        assert result["outcome"] != "accepted", (case, result)


def test_report_rows_of_the_limits_json():
    case = {"wall_s": 0.05, "peak_rss_increase_mb": 3.2, "file_mb": 1.0, "peak_over_file_size": 3.2, "outcome": "UploadError: x"}
    results = {"quick": False, "cases": {
        "zip_bomb": {**case, "inflated_mb": 1024}, "many_entries": {**case, "entries": 100_000},
        "full_screen_triangles": {**case, "triangles": 160_000},
        "parse_memory": {**case, "outcome": "accepted", "vertices": 490_000, "triangles": 977_202},
    }}  # fmt: skip
    rows = report.SPEED_ROWS["limits"](results)
    assert rows[0] == ("zip upload, one entry declaring 1 KB that inflates to 1,024 MB",
                       "refused in 0.05 s, peak RSS +3.20 MB", "file 1.00 MB", "3.2x the file size")  # fmt: skip
    assert rows[3][1].startswith("accepted in")

"""Every `facet-vlm` error is one line naming the input and the problem, with a non-zero exit, never a traceback
(issue 16, item 10)."""

import json
import sys

import pytest

from datasets_scripts.scan_writers import write_wrl
from tests.test_pipeline import face_mesh, save_tiny_model
from training.cli import main
from training.demo import DEMO_CONFIG
from training.config import TrainConfig


def one_line_error(capsys, argv, code=2) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("facet-vlm")]  # not progress bars
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"facet-vlm {argv[0]}: ")
    return lines[0]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "face.wrl"
    mesh = face_mesh(size=8)
    write_wrl(path, mesh.vertices, mesh.faces)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "model"
    save_tiny_model(folder)
    return str(folder)


def test_render_refuses_an_unknown_image_type_before_rendering(scan, tmp_path, capsys, monkeypatch):
    from modeling_facet.rendering import MultiviewRenderer

    monkeypatch.setattr(MultiviewRenderer, "render", None)  # rendering would fail the test
    line = one_line_error(capsys, ["render", scan, "--output", str(tmp_path / "o.xyz")])
    assert "o.xyz: unsupported image type '.xyz'" in line and ".png" in line
    line = one_line_error(capsys, ["render", scan, "--output", str(tmp_path / "missing" / "views.png")])
    assert f"{tmp_path / 'missing'}: no such folder" in line


def test_predict_names_a_model_folder_that_does_not_exist(scan, tmp_path, capsys):
    missing = tmp_path / "runs" / "demo" / "model"
    line = one_line_error(capsys, ["predict", str(missing), scan])
    assert f"{missing}: no such model folder" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: not a model folder (no config.json)" in one_line_error(capsys, ["predict", str(empty), scan])


def test_predict_names_an_unreadable_scan(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.wrl"
    broken.write_text("#VRML V2.0 utf8\n")
    assert f"{broken}: no IndexedFaceSet node" in one_line_error(capsys, ["predict", model_dir, str(broken)])


def test_publish_into_a_non_empty_folder_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "x").write_text("x")
    line = one_line_error(capsys, ["publish", model_dir, "--repo-id", "you/facet", "--dry-run", "--output",
                                   str(tmp_path / "repo")])  # fmt: skip
    assert f"{tmp_path / 'repo'} is not an empty folder" in line


def test_publish_without_a_network_is_one_line(model_dir, capsys, monkeypatch):
    import httpx2
    from huggingface_hub import HfApi

    def unreachable(*args, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    line = one_line_error(capsys, ["publish", model_dir, "--repo-id", "you/facet"], code=1)
    assert "cannot reach the Hugging Face Hub (ConnectError: [Errno -3] Temporary failure in name resolution)" in line


def test_the_readme_training_example_refuses_the_main_jobs_folder(tmp_path, capsys):
    """`facet-vlm train --config training/configs/demo.yaml --epochs 1` into a folder of the main job's run."""
    demo = TrainConfig.from_yaml(DEMO_CONFIG, output=str(tmp_path / "demo"), epochs=12)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "train_config.json").write_text(json.dumps(vars(demo)))
    line = one_line_error(capsys, ["train", "--config", str(DEMO_CONFIG), "--epochs", "1", "--output",
                                   str(tmp_path / "demo")])  # fmt: skip
    assert f"{tmp_path / 'demo'}: holds a different training run: epochs (12 there, 1 now)" in line
    assert "--overwrite-output" in line


def test_a_broken_yaml_setting_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("epochz: 3\n")
    assert "unknown training settings ['epochz']" in one_line_error(capsys, ["train", "--config", str(config)])


def test_unexpected_errors_keep_their_traceback(scan, monkeypatch):
    """Only the errors of bad input, files and the network become one line; a bug still shows where it is."""
    import training.cli

    monkeypatch.setattr(training.cli, "_inspect", lambda args: 1 / 0)
    monkeypatch.setattr(sys, "argv", ["facet-vlm"])
    with pytest.raises(ZeroDivisionError):
        main(["inspect", scan])


def test_the_demo_can_replace_a_run_with_other_settings():
    """The demo's folder refuses a run with other settings as `train` does; its message names --overwrite-output."""
    from training.cli import parse_args
    from training.demo import demo_config

    assert parse_args(["demo", "--overwrite-output"]).overwrite_output is True
    assert demo_config("outputs/x", overwrite_output=True).overwrite_output is True
    assert demo_config("outputs/x").overwrite_output is False

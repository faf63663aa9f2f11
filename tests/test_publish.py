"""Publishing: the model card, and the real huggingface_hub client pushing models and datasets to the fake Hub of
tests/fake_hub.py (HF_ENDPOINT set in a subprocess before the HF libraries import), then loading the pushed model
with `from_pretrained(repo_id, trust_remote_code=True)` in a process without the package.

This covers our upload and download calls and the repository layout; it does not cover the real Hub's metadata
validation, authentication, or large-file storage (LFS / xet).
"""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

from modeling_facet.pipeline_facet import load_pipeline
from tests.fake_hub import FakeHub
from tests.test_pipeline import LABELS, face_mesh, save_tiny_model
from training.cli import main
from training.dataset_repo import build_dataset_repo
from training.publish import check_repo_id, model_card, publish_model, read_training_results


REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_fake_token"
METRICS = {
    "accuracy": 0.8125, "macro_f1": 0.7931, "per_class_recall": [0.9, 0.8, 0.7, 0.9, 0.8, 0.775],
    "labels": ["anger", "disgust", "fear", "happiness", "sadness", "surprise"], "num_samples": 48,
    "dataset": "synthetic", "protocol": "all", "fold": 0, "seed": 42, "train_samples": 192, "test_samples": 48,
    "replayed_per_epoch": 192, "frozen_vision_blocks": 5, "cross_dataset": {"accuracy": 0.41, "macro_f1": 0.37},
}  # fmt: skip
TRAIN_CONFIG = {"dataset": "synthetic", "protocol": "all", "num_folds": 5, "fold": 0, "seed": 42, "preset": "tiny",
                "epochs": 3, "test_intensities": [3, 4], "eval_dataset": "bu3dfe", "eval_protocol": "all",
                "mirror_scans": 0.5, "scans_per_person": 4}  # fmt: skip
CV = {"folds": [{"fold": 0, "accuracy": 0.8125, "macro_f1": 0.79}, {"fold": 1, "accuracy": 0.75, "macro_f1": 0.74}],
      "accuracy_mean": 0.78, "accuracy_std": 0.03}  # fmt: skip


@pytest.fixture(scope="module")
def hub():
    with FakeHub(max_lifetime=600) as server:
        yield server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A folder as `facet-vlm train` writes it: model/, metrics.json, train_config.json (and a CV summary)."""
    run = tmp_path_factory.mktemp("run")
    save_tiny_model(run / "model")
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / "train_config.json").write_text(json.dumps(TRAIN_CONFIG))
    (run / "cv_metrics.json").write_text(json.dumps(CV))
    face_mesh().export(run / "face.ply")
    return run


def run_python(args, hub, tmp_path, cwd=REPO_ROOT, pythonpath=str(REPO_ROOT)):
    """Run python with the HF libraries pointed at the fake Hub (set before they are imported)."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": pythonpath}  # fmt: skip
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_model_card_holds_the_results_and_every_switch(run_dir):
    model = load_pipeline(str(run_dir / "model")).model
    card = model_card(model, "someuser/facet-tiny", read_training_results(run_dir / "model"), num_templates=10)
    parsed = ModelCard(str(card))  # what the Hub and huggingface_hub read back
    results = {(result.dataset_type, result.dataset_name, result.metric_type, result.metric_value)
               for result in parsed.data.eval_results}  # fmt: skip
    assert ("synthetic", "SyntheticFaces, all protocol, fold 0", "accuracy", 0.8125) in results
    assert ("synthetic", "SyntheticFaces, all protocol, fold 0", "f1", 0.7931) in results
    assert ("synthetic", "SyntheticFaces, all protocol, cross-validation", "accuracy", 0.78) in results
    assert ("bu3dfe", "BU-3DFE, all protocol (cross-dataset, trained on SyntheticFaces)", "accuracy", 0.41) in results
    fold = next(result for result in parsed.data.eval_results if result.dataset_args)
    assert fold.dataset_args == {"fold": 0, "num_folds": 5, "seed": 42} and fold.dataset_split == "test"
    assert parsed.data.pipeline_tag == "zero-shot-image-classification" and "custom_code" in parsed.data.tags
    text = parsed.text
    assert "5 subject-independent folds (fold seed 42); all 2 folds were trained and tested" in text
    for row in ("| Training samples | 192 |", "| Synthetic scans replayed per epoch | 192 |",
                "| Vision blocks kept at their starting weights | 5 |",
                "| Chance of a training scan being mirrored | 0.5 |",
                "| Scans of one person in a row in the training order | 4 |"):
        assert row in text, row
    for switch in ("views", "channels", "shared_vision_tower", "use_view_embeddings", "cvsa", "fusion_layers", "mtgf",
                   "temporal", "logit_scale_max", "problem_type", "loss_weight_ce", "loss_weight_itc",
                   "loss_weight_cons", "consistency_kl", "loss_weight_gf", "gf_reduction", "margin_init"):  # fmt: skip
        assert f"`{switch}`" in text, switch
    assert "alpha = sigmoid(alpha_raw)" in text and "procedurally generated faces" in text
    for citation in ("arXiv:2504.19739", "2507.01673", "Neurocomputing", "{657}", "yin2006bu3dfe"):
        assert citation in text
    bare = ModelCard(str(model_card(model, "someuser/facet-tiny")))
    assert bare.data.eval_results is None and "No training results were supplied" in bare.text


def test_bad_repo_ids_and_output_folders(run_dir, tmp_path):
    for repo_id in ("facet-tiny", "a/b/c", "user/../x", ""):
        with pytest.raises(ValueError, match="user/name"):
            check_repo_id(repo_id)
    (tmp_path / "kept.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        publish_model(run_dir / "model", "someuser/x", dry_run=True, output=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_training_results(run_dir / "model", run_dir / "nope.json")


def test_push_private_revision_then_load_in_a_process_without_the_package(hub, run_dir, tmp_path):
    repo_id = "someuser/facet-tiny"
    out = run_python(["-m", "training.cli", "publish", str(run_dir / "model"), "--repo-id", repo_id, "--private",
                      "--revision", "v1", "--commit-message", "First FACET-VLM release"], hub, tmp_path)  # fmt: skip
    assert f"{hub.url}/{repo_id}/commit/" in out
    create = next(entry for entry in hub.requests if entry["path"] == "/api/repos/create")
    assert create["json"]["visibility"] == "private" and create["authorization"] == f"Bearer {TOKEN}"
    assert any(entry["path"] == f"/api/models/{repo_id}/branch/v1" for entry in hub.requests)
    commit = next(entry["commit"] for entry in hub.requests if "commit" in entry)
    assert commit["revision"] == "v1" and commit["summary"] == "First FACET-VLM release"
    assert hub.repo(repo_id).private and hub.files(repo_id, revision="main") == {}
    files = hub.files(repo_id, revision="v1")
    assert {"README.md", "config.json", "model.safetensors", "pipeline_facet.py", "modeling_facet.py",
            "processor_config.json", "tokenizer.json"} <= set(files)  # fmt: skip
    card = ModelCard(files["README.md"].decode())
    assert {result.metric_value for result in card.data.eval_results} >= {0.8125, 0.7931}

    local = load_pipeline(str(run_dir / "model"))
    scan = str(run_dir / "face.ply")
    inputs = local.processor(scans=scan, labels=LABELS, return_tensors="pt")
    with torch.no_grad():
        expected_logits = local.model(**inputs).logits
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["modeling_facet"] = None  # the package must not be importable here
        import torch
        from transformers import AutoModelForZeroShotImageClassification, AutoProcessor, pipeline
        model = AutoModelForZeroShotImageClassification.from_pretrained({repo_id!r}, revision="v1",
                                                                        trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoProcessor.from_pretrained({repo_id!r}, revision="v1", trust_remote_code=True)
        assert type(processor).__name__ == "FacetVLMProcessor", type(processor)
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        classifier = pipeline(model={repo_id!r}, revision="v1", trust_remote_code=True)
        print("RESULT" + json.dumps(classifier({scan!r}, candidate_labels={LABELS!r})))
        """
    )
    out = run_python(["-c", script], hub, tmp_path, cwd=tmp_path, pythonpath="")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected_logits, rtol=0, atol=0)
    remote = json.loads(out.split("RESULT", 1)[1])
    assert remote == local(scan, candidate_labels=LABELS)


def test_dry_run_writes_the_folder_and_contacts_nothing(hub, run_dir, tmp_path, monkeypatch, capsys):
    # Any Hub call of this process would now reach the fake Hub and be logged.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    before = len(hub.requests)
    output = tmp_path / "repo"
    main(["publish", str(run_dir / "model"), "--repo-id", "someuser/dry", "--dry-run", "--output", str(output)])
    assert len(hub.requests) == before and "nothing was pushed" in capsys.readouterr().out
    assert {"README.md", "config.json", "model.safetensors", "pipeline_facet.py"} <= set(os.listdir(output))
    assert ModelCard.load(output / "README.md").data.model_name == "dry"


def test_synthetic_dataset_push_lists_parquet_files(hub, tmp_path, monkeypatch):
    repo_id = "someuser/synthetic-faces"
    run_python(["-m", "training.cli", "publish-dataset", "synthetic", "--repo-id", repo_id, "--num-subjects", "2",
                "--image-size", "16", "--cache-dir", str(tmp_path / "cache")], hub, tmp_path)  # fmt: skip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # this test session is offline
    listed = HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(repo_id, repo_type="dataset")
    assert {"scans/train-00000-of-00001.parquet", "views/train-00000-of-00001.parquet", "README.md",
            "code/datasets_scripts/synthetic.py", "code/datasets_scripts/common.py"} <= set(listed)  # fmt: skip
    files = hub.files(repo_id, repo_type="dataset")
    views = pq.read_table(io.BytesIO(files["views/train-00000-of-00001.parquet"]))
    scans = pq.read_table(io.BytesIO(files["scans/train-00000-of-00001.parquet"]))
    assert views.num_rows == scans.num_rows == 50  # 2 subjects x (6 expressions x 4 intensities + neutral)
    assert np.asarray(views.column("pixel_values")[0].as_py()).shape == (3, 5, 16, 16)
    assert np.asarray(scans.column("vertices")[0].as_py()).shape[1] == 3
    assert all(not path.startswith("/") for path in scans.column("scan_path").to_pylist())
    header = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert {config["config_name"] for config in header["configs"]} == {"scans", "views"}
    assert header["license"] == "apache-2.0"


def test_licensed_dataset_repo_has_card_and_code_only(tmp_path):
    folder = build_dataset_repo("bp4d", tmp_path / "bp4d", "someuser/bp4d")
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    assert files == ["README.md", "code/datasets_scripts/__init__.py", "code/datasets_scripts/bp4d.py",
                     "code/datasets_scripts/common.py", "code/datasets_scripts/protocols.py",
                     "code/datasets_scripts/registry.py"]  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "This repository holds no data" in card and "How to obtain it" in card and "zhang2014bp4d" in card
    assert 'BP4D(config_name="views", data_dir="/path/to/BP4D-Spontaneous", fold=0)' in card
    with pytest.raises(ValueError, match="licensed data"):
        build_dataset_repo("bu3dfe", tmp_path / "bu3dfe", "someuser/bu3dfe", num_subjects=3)

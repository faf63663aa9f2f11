"""The zero-shot facial expression pipeline: every input kind, labels and templates, batching, 4D sequences, view
weights, the prompt cache, errors, the `facet-vlm predict` command and loading as remote code in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import trimesh
from transformers import pipeline

from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMProcessor
from datasets_scripts.scan_writers import write_wrl
from modeling_facet.mesh_io import FaceScan, FaceSequence, ScanFormatError
from modeling_facet.pipeline_facet import TASK, ZeroShotFacialExpressionClassificationPipeline, load_pipeline, save_for_hub
from training.cli import main


LABELS = ["joy", "astonished", "contempt"]
FRAMES = 3


def face_mesh(brow: float = 1.0, size: int = 12) -> trimesh.Trimesh:
    """A small face-like height field (a nose bump and a brow ridge of height `brow`), vertices rounded to 0.01 mm so
    that every file format stores them exactly."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    z = 0.6 * np.exp(-4 * (x**2 + y**2)) + 0.2 * brow * np.exp(-20 * (y - 0.5) ** 2)
    vertices = np.round(np.stack([60 * x, 70 * y, 40 * z], axis=-1).reshape(-1, 3), 2)
    index = np.arange(size * size).reshape(size, size)
    corners = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    faces = np.concatenate([np.stack(corners[:3], -1), np.stack([corners[0], corners[2], corners[3]], -1)]).reshape(-1, 3)
    return trimesh.Trimesh(vertices, faces, process=False)


def save_tiny_model(folder, **overrides):
    """A tiny FACET-VLM and its processor (built first: it writes the token ids into the config), saved to `folder`."""
    config = FacetVLMConfig.from_preset("tiny", **overrides)
    processor = FacetVLMProcessor.from_model_config(config)
    torch.manual_seed(0)
    model = FacetVLMForExpressionRecognition(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def scores(result) -> dict:
    return {item["label"]: item["score"] for item in result}


def assert_same_scores(first, second, atol=1e-5):
    assert [item["label"] for item in first] == [item["label"] for item in second]
    np.testing.assert_allclose([item["score"] for item in first], [item["score"] for item in second], atol=atol)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(model_dir):
    return pipeline(TASK, model=str(model_dir))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One face in .ply, .obj and BU-3DFE .wrl, and a folder of three frame files (a 4D sequence)."""
    folder = tmp_path_factory.mktemp("scans")
    mesh = face_mesh()
    paths = {"ply": folder / "face.ply", "obj": folder / "face.obj", "wrl": folder / "face_F3D.wrl"}
    mesh.export(paths["ply"])
    mesh.export(paths["obj"])
    write_wrl(paths["wrl"], mesh.vertices, mesh.faces)
    frames = folder / "sequence"
    frames.mkdir()
    for index in range(FRAMES):
        face_mesh(brow=1.0 + index).export(frames / f"{index:03d}.obj")
    paths["frames"] = frames
    return {name: str(path) for name, path in paths.items()}


def as_input(kind: str, files: dict):
    mesh = face_mesh()
    if kind in ("ply", "obj", "wrl"):
        return files[kind]
    if kind == "face_scan":
        return FaceScan(vertices=mesh.vertices.astype(np.float32), faces=mesh.faces)
    if kind == "mapping":
        return {"vertices": mesh.vertices, "faces": mesh.faces}
    return mesh


@pytest.mark.parametrize("kind", ["ply", "obj", "wrl", "face_scan", "trimesh", "mapping"])
def test_every_static_input_kind(pipe, files, kind):
    result = pipe(as_input(kind, files), candidate_labels=LABELS)
    assert sorted(item["label"] for item in result) == sorted(LABELS)
    ranked = [item["score"] for item in result]
    assert ranked == sorted(ranked, reverse=True) and sum(ranked) == pytest.approx(1.0, abs=1e-6)
    # The same geometry gives the same scores whatever the container.
    assert_same_scores(result, pipe(face_mesh(), candidate_labels=LABELS), atol=1e-4)


def test_scores_are_the_models_softmax_and_sigmoid(pipe, files):
    processor, model = pipe.processor, pipe.model
    with torch.no_grad():
        logits = model(**processor(scans=files["wrl"], labels=LABELS, return_tensors="pt")).logits[0]
    for multi_label, expected in ((False, logits.softmax(-1)), (True, logits.sigmoid())):
        result = scores(pipe(files["wrl"], candidate_labels=LABELS, multi_label=multi_label))
        np.testing.assert_allclose([result[label] for label in LABELS], expected.numpy(), atol=1e-5)
    assert sum(result.values()) != pytest.approx(1.0)  # sigmoid scores are independent


def test_synonyms_and_unseen_words_are_labels(pipe, files):
    listed = pipe(files["ply"], candidate_labels=LABELS)
    assert_same_scores(listed, pipe(files["ply"], candidate_labels=" joy, astonished ,contempt"), atol=0)
    default = pipe(files["ply"])
    assert [item["label"] for item in default] != [] and {item["label"] for item in default} == set(
        pipe.model.config.id2label.values()
    )
    # Words outside the vocabulary are prompts of their own, not mapped to a training class.
    joy, happiness = pipe.prompt_embeddings(["joy"]), pipe.prompt_embeddings(["happiness"])
    assert not torch.allclose(joy, happiness)


def test_templates(pipe, files):
    single = pipe(files["ply"], candidate_labels=LABELS, hypothesis_template="a {} face")
    assert_same_scores(single, pipe(files["ply"], candidate_labels=LABELS, templates=["a {} face"]), atol=0)
    default = scores(pipe(files["ply"], candidate_labels=LABELS))
    assert any(abs(default[label] - scores(single)[label]) > 1e-6 for label in LABELS)


def test_batches_match_single_calls(pipe, files):
    mixed = [face_mesh(), files["frames"], files["wrl"]]  # static and 4D inputs in one batch
    one_by_one = pipe(mixed, candidate_labels=LABELS, batch_size=1)
    batched = pipe(mixed, candidate_labels=LABELS, batch_size=3)
    assert len(batched) == 3
    for single, together, item in zip(one_by_one, batched, mixed):
        assert_same_scores(single, together)
        assert_same_scores(single, pipe(item, candidate_labels=LABELS))
    static = [face_mesh(brow) for brow in (0.5, 1.0, 2.0)]
    for single, together in zip(pipe(static, batch_size=1), pipe(static, batch_size=2)):  # uneven last batch
        assert_same_scores(single, together)
    assert pipe([]) == []


def test_4d_sequences_and_view_weights(pipe, files):
    folder = pipe(files["frames"], candidate_labels=LABELS, return_view_weights=True)
    frames = [FaceScan(vertices=face_mesh(1.0 + i).vertices, faces=face_mesh().faces) for i in range(FRAMES)]
    in_memory = pipe(FaceSequence(frames), candidate_labels=LABELS, return_view_weights=True)
    assert_same_scores(folder["labels"], in_memory["labels"], atol=1e-4)
    assert_same_scores(folder["labels"], pipe(files["frames"], candidate_labels=LABELS))
    weights = np.array(folder["view_weights"])
    assert weights.shape == (FRAMES, 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert len(folder["frame_weights"]) == FRAMES and sum(folder["frame_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert folder["views"] == pipe.model.config.views


def test_static_view_weights_and_top_k(pipe, files):
    full = pipe(files["ply"], candidate_labels=LABELS)
    detailed = pipe(files["ply"], candidate_labels=LABELS, return_view_weights=True)
    assert set(detailed) == {"labels", "views", "view_weights", "frame_weights"}
    assert_same_scores(detailed["labels"], full, atol=0)
    assert len(detailed["view_weights"]) == 1 and sum(detailed["view_weights"][0]) == pytest.approx(1.0, abs=1e-5)
    assert detailed["frame_weights"] == [1.0]
    assert pipe(files["ply"], candidate_labels=LABELS, top_k=2) == full[:2]
    assert pipe(files["ply"], candidate_labels=LABELS, top_k=10) == full


def test_multi_label_model_defaults_to_sigmoid_and_action_unit_prompts(tmp_path, files):
    model, processor = save_tiny_model(tmp_path, problem_type="multi_label_classification",
                                       id2label={0: "AU1", 1: "AU12"})  # fmt: skip
    pipe = pipeline(TASK, model=str(tmp_path))
    result = pipe(files["ply"])
    assert {item["label"] for item in result} == {"AU1", "AU12"}
    with torch.no_grad():
        logits = model(**processor(scans=files["ply"], labels=["AU1", "AU12"], return_tensors="pt")).logits[0]
    np.testing.assert_allclose([scores(result)[label] for label in ("AU1", "AU12")], logits.sigmoid(), atol=1e-5)
    assert "action unit" in " ".join(processor.action_unit_templates)  # the prompts the default labels used


def test_prompt_embeddings_are_cached(pipe, files, monkeypatch):
    calls = []
    text_features = pipe.model.facet.get_text_features

    def counting(*args, **kwargs):
        calls.append(1)
        return text_features(*args, **kwargs)

    monkeypatch.setattr(pipe.model.facet, "get_text_features", counting)
    pipe.clear_prompt_cache()
    first = pipe([files["ply"], files["obj"]], candidate_labels=LABELS)
    second = pipe(files["ply"], candidate_labels=LABELS)
    assert len(calls) == 1 and first[0] == second
    pipe(files["ply"], candidate_labels=LABELS[:2])
    pipe(files["ply"], candidate_labels=LABELS, hypothesis_template="a {} person")
    assert len(calls) == 3


@pytest.mark.parametrize(
    "call, error, message",
    [
        (dict(candidate_labels=[]), ValueError, "empty"),
        (dict(candidate_labels="joy,,sad"), ValueError, r"candidate_labels\[1\]"),
        (dict(candidate_labels=["joy", " "]), ValueError, "non-empty"),
        (dict(candidate_labels=["joy", 3]), ValueError, r"candidate_labels\[1\]"),
        (dict(candidate_labels=["joy", "sad", "joy"]), ValueError, "repeats 'joy'"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(hypothesis_template="a {} face", templates=["a {} person"]), ValueError, "either"),
        (dict(hypothesis_template="a face"), ValueError, "exactly one"),
    ],
)
def test_bad_arguments(pipe, files, call, error, message):
    with pytest.raises(error, match=message):
        pipe(files["ply"], **call)


def test_bad_inputs_name_the_input(pipe, tmp_path):
    broken = tmp_path / "broken_F3D.wrl"
    broken.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 1 2")
    with pytest.raises(ScanFormatError, match="broken_F3D.wrl"):
        pipe(str(broken), candidate_labels=LABELS)
    with pytest.raises(ScanFormatError, match="missing.ply"):
        pipe(str(tmp_path / "missing.ply"), candidate_labels=LABELS)
    with pytest.raises(ValueError, match="int at position 1 of the batch"):
        pipe([face_mesh(), 42], candidate_labels=LABELS)
    with pytest.raises(ValueError, match="Unsupported pipeline input ndarray"):
        pipe(np.zeros((4, 3)), candidate_labels=LABELS)


def test_no_labels_anywhere_is_an_error(tmp_path, files):
    model, processor = save_tiny_model(tmp_path, num_labels=2)  # id2label is LABEL_0, LABEL_1: no class names
    pipe = ZeroShotFacialExpressionClassificationPipeline(model=model, processor=processor, task=TASK)
    with pytest.raises(ValueError, match="No candidate_labels"):
        pipe(files["ply"])
    assert len(pipe(files["ply"], candidate_labels="smiling, frowning")) == 2


def test_predict_command(model_dir, pipe, files, capsys):
    main(["predict", str(model_dir), files["ply"], "--labels", "joy,astonished,contempt", "--json"])
    assert json.loads(capsys.readouterr().out) == pipe(files["ply"], candidate_labels=LABELS)
    main(["predict", str(model_dir), files["ply"], files["frames"], "--json", "--view-weights", "--top-k", "2",
          "--batch-size", "2"])  # fmt: skip
    by_file = json.loads(capsys.readouterr().out)
    assert set(by_file) == {files["ply"], files["frames"]}
    assert np.array(by_file[files["frames"]]["view_weights"]).shape == (FRAMES, 3)
    main(["predict", str(model_dir), files["frames"], "--labels", "joy,contempt", "--view-weights", "--multi-label"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{files['frames']}: ") and len(lines) == 1 + FRAMES
    assert "frame 2 (weight" in lines[-1] and "(20, 0)" in lines[-1]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_dir), files["ply"], "--labels", "joy,,sad"])
    assert exit_info.value.code == 2 and "candidate_labels[1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_dir), files["ply"] + ".missing.wrl"])
    assert exit_info.value.code == 2 and ".missing.wrl" in capsys.readouterr().err


def test_remote_code_pipeline_in_a_process_without_the_package(tmp_path, pipe, files):
    hub = tmp_path / "hub"
    save_for_hub(pipe.model, pipe.processor, hub)
    assert not hasattr(pipe.model.config, "custom_pipelines")  # the caller's model config is left as it was
    saved = set(os.listdir(hub))
    assert {"pipeline_facet.py", "modeling_facet.py", "processor_config.json", "tokenizer.json", "model.safetensors"} <= saved
    custom = json.loads((hub / "config.json").read_text())["custom_pipelines"][TASK]
    assert custom["impl"] == "pipeline_facet.ZeroShotFacialExpressionClassificationPipeline"
    # With the package, the folder loads with its code (no remote code) and gives the same scores.
    local = load_pipeline(str(hub))
    assert isinstance(local, ZeroShotFacialExpressionClassificationPipeline)
    assert_same_scores(local(files["ply"], candidate_labels=LABELS), pipe(files["ply"], candidate_labels=LABELS), atol=0)

    expected = [pipe(files["ply"], candidate_labels=LABELS), pipe(files["frames"], return_view_weights=True)]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["modeling_facet"] = None  # the package must not be importable here
        from transformers import pipeline
        pipe = pipeline(model={str(hub)!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        assert type(pipe.processor).__name__ == "FacetVLMProcessor", type(pipe.processor)
        outputs = [pipe({files["ply"]!r}, candidate_labels={LABELS!r}),
                   pipe({files["frames"]!r}, return_view_weights=True)]
        print("RESULT" + json.dumps(outputs))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    static, sequence = json.loads(result.stdout.split("RESULT", 1)[1])
    assert_same_scores(static, expected[0])
    assert_same_scores(sequence["labels"], expected[1]["labels"])
    np.testing.assert_allclose(sequence["view_weights"], expected[1]["view_weights"], atol=1e-5)

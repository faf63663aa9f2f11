"""The Streamlit app, run headless with `streamlit.testing.v1.AppTest` on a tiny model: uploads of every kind, label
and template edits, bad uploads, 4D timelines, generated samples, the no-model state and its training button, and
the helpers behind them (settings, uploads, the 3D viewer mesh, the pictures of the views, the training job)."""

import base64
import io
import json
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import training_job
from app.inference import view_pictures
from app.inputs import UploadError, load_upload
from app.mesh_viewer import viewer_html, viewer_mesh
from app.settings import APP_SCRIPT, AppSettings, streamlit_command
from datasets_scripts.scan_writers import write_wrl
from modeling_facet.pipeline_facet import load_pipeline
from tests.test_pipeline import face_mesh, save_tiny_model
from training.cli import main


DEFAULT_LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]  # the tiny preset's classes
TIMEOUT_S = 120  # the first run of a fresh process imports torch and transformers


def mesh_bytes(file_type: str, **shape) -> bytes:
    buffer = io.BytesIO()
    face_mesh(**shape).export(buffer, file_type=file_type)
    return buffer.getvalue()


def frames_zip(count: int = 4, broken_frame: int | None = None) -> bytes:
    """A 4D sequence as users zip it: frame files in a sub-folder (BU-4DFE style F001/Happy/000.ply ...)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("F001/Happy/", "")
        for index in range(count):
            data = b"ply\nformat ascii 1.0\nbroken" if index == broken_frame else mesh_bytes("ply", brow=1.0 + index)
            archive.writestr(f"F001/Happy/{index:03d}.ply", data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    save_tiny_model(folder)
    return str(folder)


@pytest.fixture(scope="module")
def wrl_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("wrl") / "F0001_HA04WH_F3D.wrl"
    mesh = face_mesh()
    write_wrl(path, mesh.vertices, mesh.faces)
    return path.read_bytes()


@pytest.fixture
def app(model_dir, monkeypatch):
    """The app on the tiny model, after its first run."""
    monkeypatch.setenv("FACET_APP_MODEL", model_dir)
    monkeypatch.delenv("FACET_APP_MAX_UPLOAD_MB", raising=False)
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S).run()


def upload(app, name: str, data: bytes) -> AppTest:
    return app.file_uploader[0].set_value((name, data, "application/octet-stream")).run()


def metrics(app) -> dict:
    return {metric.label: metric.value for metric in app.metric}


def scores_table(app) -> dict:
    table = app.dataframe[0].value
    return dict(zip(table["expression"], table["probability"]))


def iframe_html(app) -> str:
    frames = [element for element in app.main if getattr(element, "type", None) == "iframe"]
    assert len(frames) == 1
    return frames[0].proto.srcdoc


def assert_works(app) -> None:
    """No exception and no error message on the page."""
    assert not app.exception, [exception.value for exception in app.exception]
    assert not app.error, [error.value for error in app.error]


def test_page_names_the_model_and_asks_for_a_scan(app, model_dir):
    assert_works(app)
    assert model_dir in app.markdown[0].value and "clip_vision_model" in app.markdown[0].value
    assert "Upload a scan" in app.info[0].value
    assert app.text_input(key="labels").value == ", ".join(DEFAULT_LABELS)


@pytest.mark.parametrize("name", ["face.ply", "F0001_HA04WH_F3D.wrl"])
def test_an_uploaded_scan_is_classified(app, model_dir, wrl_bytes, tmp_path, name):
    data = mesh_bytes("ply") if name.endswith(".ply") else wrl_bytes
    upload(app, name, data)
    assert_works(app)
    shown = metrics(app)
    assert shown["Latency"].endswith(" ms") and float(shown["Latency"].split()[0]) > 0
    # The table holds the pipeline's own scores of the file, best first.
    (tmp_path / name).write_bytes(data)
    expected = load_pipeline(model_dir)(str(tmp_path / name), candidate_labels=DEFAULT_LABELS)
    table = app.dataframe[0].value
    assert list(table["expression"]) == [item["label"] for item in expected]
    np.testing.assert_allclose(table["probability"], [item["score"] for item in expected], atol=1e-5)
    assert shown["Prediction"] == expected[0]["label"]
    # Three views side by side, each with its channels, and their CVSA weights; the interactive 3D view.
    assert len(app.image) == 3 and [image.proto.imgs[0].caption for image in app.image] == ["shaded"] * 3
    captions = [caption.value for caption in app.caption]
    views = [caption.split(" — ")[0] for caption in captions]
    assert views == [f"view yaw {yaw}°, pitch 0°" for yaw in (0, 20, -20)]
    weights = [float(caption.split("CVSA weight ")[1]) for caption in captions]
    assert sum(weights) == pytest.approx(1.0, abs=2e-3)
    assert '<canvas id="mesh"' in iframe_html(app)


def test_editing_labels_and_template_updates_the_scores(app):
    upload(app, "face.ply", mesh_bytes("ply"))
    app.text_input(key="labels").set_value("joy, contempt, astonished").run()
    assert_works(app)
    default_template = scores_table(app)
    assert sorted(default_template) == ["astonished", "contempt", "joy"]
    app.text_input(key="template").set_value("a scan of a {} person").run()
    assert_works(app)
    custom_template = scores_table(app)
    assert sorted(custom_template) == sorted(default_template)
    assert any(abs(custom_template[label] - default_template[label]) > 1e-6 for label in default_template)
    assert sum(custom_template.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "key, text, problem",
    [
        ("labels", "joy, joy", "repeats 'joy'"),
        ("labels", " , ", "must be a non-empty string"),
        ("template", "a face", "{}"),
    ],
)
def test_bad_labels_or_template_give_a_message(app, key, text, problem):
    upload(app, "face.ply", mesh_bytes("ply"))
    app.text_input(key=key).set_value(text).run()
    assert not app.exception
    assert len(app.sidebar.error) == 1 and problem in app.sidebar.error[0].value
    assert not app.dataframe  # no stale scores under a broken label set
    app.text_input(key=key).set_value("joy, anger" if key == "labels" else "").run()
    assert_works(app)
    assert app.dataframe


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("notes.txt", b"not a scan", "unsupported file type '.txt'"),
        ("face.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2", "cannot be parsed"),
        ("face.obj", b"", "the file is empty"),
        ("frames.zip", b"PK not really a zip", "not a valid zip archive"),
        ("frames.zip", frames_zip(count=0), "holds no frame files"),
        ("frames.zip", frames_zip(broken_frame=2), "frames.zip/F001/Happy/002.ply"),
    ],
)
def test_a_bad_upload_shows_an_error_and_the_app_keeps_working(app, name, data, problem):
    upload(app, name, data)
    assert not app.exception
    assert len(app.error) == 1
    message = app.error[0].value
    assert name in message and problem in message and "Traceback" not in message
    upload(app, "face.ply", mesh_bytes("ply"))
    assert_works(app)
    assert metrics(app)["Prediction"] in DEFAULT_LABELS


def test_an_upload_over_the_limit_is_refused(model_dir, monkeypatch):
    monkeypatch.setenv("FACET_APP_MODEL", model_dir)
    monkeypatch.setenv("FACET_APP_MAX_UPLOAD_MB", "0.01")
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S).run()
    large = mesh_bytes("ply", size=40)
    assert len(large) > 0.01 * 1024 * 1024
    upload(app, "large.ply", large)
    assert not app.exception and not app.dataframe
    assert "large.ply" in app.error[0].value and "over the 0.01 MB upload limit" in app.error[0].value
    upload(app, "small.ply", mesh_bytes("ply", size=8))
    assert_works(app)


def test_a_4d_zip_gives_a_per_frame_timeline(app):
    upload(app, "sequence.zip", frames_zip(count=4))
    assert_works(app)
    assert "Per-frame timeline" in [subheader.value for subheader in app.subheader]
    timeline = app.dataframe[1].value
    assert list(timeline["frame"]) == [0, 1, 2, 3]  # 4 frames: the processor keeps all of them
    assert set(timeline["predicted"]) <= set(DEFAULT_LABELS)
    assert sum(timeline["temporal weight"]) == pytest.approx(1.0, abs=1e-4)
    assert "3D scan, frame 2" in [subheader.value for subheader in app.subheader]
    app.select_slider(key="frame").set_value(0).run()
    assert_works(app)
    assert "3D scan, frame 0" in [subheader.value for subheader in app.subheader]


def test_generated_sample_faces(app):
    app.radio(key="source").set_value("Generated sample face").run()
    assert_works(app)
    sample_names = app.selectbox(key="sample").options
    assert len(sample_names) == 7 and "happiness" in sample_names[3] and "4D sequence" in sample_names[-1]
    assert metrics(app)["True label"] == "anger"
    app.selectbox(key="sample").set_value(6).run()
    assert_works(app)
    assert metrics(app)["True label"] == "surprise" and len(app.dataframe[1].value) == 8  # 12 frames, 8 sampled


def fake_demo_command(trained_model, exit_code=0):
    """A stand-in for `facet-vlm demo` that reports progress with tqdm as the real job does, then copies a trained
    model into OUTPUT/model (or fails); the real job takes minutes."""

    def command(output, num_subjects):
        script = textwrap.dedent(f"""
            import shutil, sys
            from tqdm import tqdm
            for _ in tqdm(range(4), desc="training", mininterval=0):
                pass
            print("training on {num_subjects} subjects")
            if {exit_code}:
                print("RuntimeError: out of memory", file=sys.stderr)
                sys.exit({exit_code})
            shutil.copytree({str(trained_model)!r}, {str(output / "model")!r})
        """)
        return [sys.executable, "-c", script]

    return command


def test_without_a_model_the_page_says_so_and_trains_one(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the app trains only under its working directory
    missing = tmp_path / "run" / "model"
    monkeypatch.setenv("FACET_APP_MODEL", str(missing))
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S).run()
    assert not app.exception and not app.file_uploader  # nothing to classify with
    assert f"No trained model in `{missing}`" in app.warning[0].value
    assert str(tmp_path / "run") in app.button[0].label
    monkeypatch.setattr(training_job, "demo_command", fake_demo_command(model_dir, exit_code=1))
    app.button[0].click().run()
    assert not app.exception and "failed" in app.error[0].value and "out of memory" in app.code[0].value
    monkeypatch.setattr(training_job, "demo_command", fake_demo_command(model_dir))
    app.number_input[0].set_value(20)
    app.button[0].click().run()
    assert_works(app)
    assert f"20 synthetic subjects: saved to `{missing}`" in app.success[0].value
    assert f"**Model:** `{missing}`" in app.markdown[0].value
    upload(app, "face.ply", mesh_bytes("ply"))
    assert_works(app)


def test_training_job_reports_tqdm_progress(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(training_job, "demo_command", fake_demo_command(model_dir))
    reports = list(training_job.run_training(tmp_path, 10))
    fractions = [report.fraction for report in reports]
    assert fractions == sorted(fractions) and sorted(set(fractions)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {report.stage for report in reports} == {"training"}
    assert (tmp_path / "model" / "config.json").is_file()
    assert training_job.parse_progress("Generating train split:  45%|####5     | 45/100 [00:01<00:01]").stage == (
        "Generating train split"
    )
    assert training_job.parse_progress("Epoch 3 loss 0.5") is None
    assert training_job.training_output(tmp_path / "model") == tmp_path.resolve()
    assert training_job.training_output(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()


def test_settings_from_arguments_and_environment():
    environment = {"FACET_APP_MODEL": "from/env", "FACET_APP_MAX_UPLOAD_MB": "5"}
    assert AppSettings.from_args([], {}) == AppSettings("outputs/demo/model", 100.0)
    assert AppSettings.from_args(["-q", "tests"], environment) == AppSettings("from/env", 5.0)
    assert AppSettings.from_args(["--model", "m", "--max-upload-mb", "2.5"], environment) == AppSettings("m", 2.5)
    for arguments, variables in ((["--max-upload-mb", "0"], {}), ([], {"FACET_APP_MAX_UPLOAD_MB": "lots"})):
        with pytest.raises(ValueError, match="upload limit must be a"):
            AppSettings.from_args(arguments, variables)


def test_facet_vlm_app_runs_streamlit(monkeypatch):
    from app.__main__ import main as app_main

    started = []
    monkeypatch.setattr("os.execv", lambda path, argv: started.append(argv))
    arguments = ["--model", "some/model", "--port", "8765", "--max-upload-mb", "300"]
    main(["app", *arguments])  # facet-vlm app starts `python -m app` with the arguments unparsed
    assert started.pop() == [sys.executable, "-m", "app", *arguments]
    app_main(arguments)
    assert started == [streamlit_command("some/model", 8765, 300.0)]
    command = started[0]
    assert command[1:5] == ["-m", "streamlit", "run", str(APP_SCRIPT)]
    options = dict(zip(command[5:command.index("--"):2], command[6:command.index("--"):2]))
    assert options["--server.port"] == "8765" and options["--server.address"] == "127.0.0.1"
    assert options["--server.headless"] == "true" and options["--browser.gatherUsageStats"] == "false"
    assert options["--server.maxUploadSize"] == "300"  # Streamlit never refuses what the app accepts
    assert command[command.index("--") + 1 :] == ["--model", "some/model", "--max-upload-mb", "300.0"]
    with pytest.raises(SystemExit):
        app_main(["--max-upload-mb", "-1"])


def test_load_upload_reads_scans_and_sequences(wrl_bytes):
    scan = load_upload("F0001_HA04WH_F3D.wrl", wrl_bytes, 10**6)
    assert not scan.is_sequence and scan.item.source_path == "F0001_HA04WH_F3D.wrl"
    np.testing.assert_allclose(scan.item.vertices, face_mesh().vertices, atol=1e-4)
    sequence = load_upload("seq.zip", frames_zip(count=3), 10**6)
    assert sequence.is_sequence and len(sequence.item) == 3
    assert [sequence.display_name(path) for path in sequence.item.frame_paths] == [
        f"seq.zip/F001/Happy/{index:03d}.ply" for index in range(3)
    ]
    np.testing.assert_allclose(sequence.item.load(2).vertices, face_mesh(brow=3.0).vertices, atol=1e-4)
    archive = frames_zip(count=3)  # compressed: smaller than its frames
    with pytest.raises(UploadError, match=r"seq.zip: its frames expand to .* over the .* upload limit"):
        load_upload("seq.zip", archive, len(archive))


def test_viewer_mesh_is_canonical_and_simplified():
    dense = face_mesh(size=80)  # 12,482 triangles
    vertices, faces = viewer_mesh(dense, max_faces=2_000)
    assert 500 < len(faces) <= 2_000 and faces.min() >= 0 and faces.max() < len(vertices)
    assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2]))
    # The nose tip goes to the origin and the face looks along +z, as in the renderer's frame.
    assert np.abs(vertices[np.argmax(vertices[:, 2])]).max() < 0.1 and vertices[:, 2].max() < 0.1
    small = face_mesh()
    vertices, faces = viewer_mesh(small)
    assert len(faces) == len(small.faces)  # below the limit: untouched
    mesh = json.loads(viewer_html(small).split("const MESH = ")[1].split(";\n")[0])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(mesh["faces"]), "<i4").reshape(-1, 3), faces)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(mesh["vertices"]), "<f4").reshape(-1, 3), vertices)


def test_view_pictures_are_the_models_pixels(model_dir):
    processor = load_pipeline(model_dir).processor.image_processor
    scan = face_mesh()
    pictures = view_pictures(processor.renderer, scan, size=processor.image_size)
    pixels = processor(scan, return_tensors="np")["pixel_values"][0] * processor.image_std + processor.image_mean
    assert [[name for name, _ in view] for view in pictures] == [["shaded", "depth", "normals"]] * 3
    for view, (shaded, depth, normals) in zip(pixels, pictures):
        expected = np.round(view * 255)
        np.testing.assert_allclose(shaded[1], expected[0], atol=1)
        np.testing.assert_allclose(depth[1], expected[1], atol=1)
        np.testing.assert_allclose(np.moveaxis(normals[1], -1, 0), expected[2:5], atol=1)



@pytest.mark.parametrize("record, shown", [({"accuracy": 0.925}, "Held-out accuracy of its training run: 92.5%"),
                                           ({"loss": 0.1}, "holds no held-out accuracy")])  # fmt: skip
def test_page_reports_the_training_runs_accuracy_when_there_is_one(tmp_path, monkeypatch, record, shown):
    save_tiny_model(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    monkeypatch.setenv("FACET_APP_MODEL", str(tmp_path))
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S).run()
    assert_works(page)
    assert shown in page.markdown[0].value

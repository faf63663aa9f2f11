"""FACET-VLM in the browser: upload a 3D scan or a 4D sequence (or pick a generated face), see the views the model
renders, an interactive 3D view, the zero-shot expression scores for any labels and prompt template, the CVSA view
weights, a per-frame timeline for 4D input and the latency of every prediction.

Run: `facet-vlm app --model DIR [--port N] [--max-upload-mb MB]`, or
`streamlit run app/streamlit_app.py -- --model DIR` (defaults: the main job's model, outputs/demo/model; the
environment variables FACET_APP_MODEL and FACET_APP_MAX_UPLOAD_MB set the same).

The page is meant for the loopback interface or a trusted network: anyone who reaches it can load a model from any
folder of the server (its model box) and use its CPU. `facet-vlm app` binds 127.0.0.1; the training it offers writes
only under its working directory, and uploads, scans and label lists are bounded (app/inputs.py, app/settings.py).
"""

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see training/__init__.py

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402


_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:  # `streamlit run app/streamlit_app.py` from a checkout that is not pip-installed
    sys.path.insert(0, _REPO_ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import training_job  # noqa: E402
from app.inference import predict, view_pictures  # noqa: E402
from app.inputs import UPLOAD_EXTENSIONS, UploadError, load_upload, sample_faces  # noqa: E402
from app.mesh_viewer import viewer_html  # noqa: E402
from app.settings import AppSettings, check_label_count  # noqa: E402
from modeling_facet.mesh_io import ScanFormatError  # noqa: E402
from modeling_facet.pipeline_facet import load_pipeline, parse_candidate_labels  # noqa: E402
from modeling_facet.prompts import EXPRESSIONS, check_templates  # noqa: E402


LOGGER = logging.getLogger("facet_vlm.app")
UPLOAD, SAMPLE = "Upload a scan or 4D sequence", "Generated sample face"
VIEWER_HEIGHT = 460
CHART_HEIGHT = 220


# ------------------------------------------------------------------------------------------------ cached resources


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def cached_pipeline(model_dir: str, version: int):
    """The zero-shot pipeline of `model_dir`, loaded once per saved version (`version`: its config's mtime)."""
    return load_pipeline(model_dir)


@st.cache_resource(show_spinner="Generating sample faces...")
def cached_samples() -> list:
    return sample_faces()


@st.cache_resource(show_spinner="Reading the upload...", max_entries=8)
def cached_upload(name: str, digest: str, max_bytes: int, _data: bytes):
    return load_upload(name, _data, max_bytes)


@st.cache_resource
def prediction_lock() -> threading.Lock:
    """One prediction at a time across sessions: the pipeline's prompt cache is not thread-safe, and concurrent
    calls would only share the same cores."""
    return threading.Lock()


@st.cache_data(show_spinner="Classifying...", max_entries=64)
def cached_prediction(model_key: str, input_key: str, labels: tuple, template: str, _pipe, _face):
    with prediction_lock():
        return predict(_pipe, _face, list(labels), template or None)


@st.cache_data(show_spinner="Rendering the views...", max_entries=32)
def cached_views(model_key: str, input_key: str, frame: int, _renderer, _scan) -> list:
    return view_pictures(_renderer, _scan)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_viewer(input_key: str, frame: int, _scan) -> str:
    return viewer_html(_scan)


# ------------------------------------------------------------------------------------------------ model


def model_version(model_dir: str):
    """The modification time of the folder's config.json, or None when there is no saved model there."""
    config = Path(model_dir, "config.json")
    return config.stat().st_mtime_ns if config.is_file() else None


def describe_model(model_dir: str, pipe) -> str:
    config = pipe.model.config
    channels = ", ".join(config.channels)
    text = (f"**Model:** `{model_dir}` — {config.vision_config.model_type} vision tower, "
            f"{config.text_config.model_type} text tower, {len(config.views)} views at {config.image_size} px "
            f"({channels}).")  # fmt: skip
    metrics = training_job.training_output(model_dir) / "metrics.json"
    if metrics.is_file():
        accuracy = held_out_accuracy(metrics)
        if accuracy is None:
            text += f" `{metrics}` holds no held-out accuracy (not a FACET-VLM training run's metrics)."
        else:
            text += f" Held-out accuracy of its training run: {accuracy:.1%} (`{metrics}`)."
    return text


def held_out_accuracy(metrics: Path) -> float | None:
    """The `accuracy` a training run wrote to `metrics`, or None when the file is not such a record."""
    try:
        return float(json.loads(metrics.read_text())["accuracy"])
    except (ValueError, KeyError, TypeError):
        return None


def train_demo_model(output: Path, num_subjects: int) -> None:
    """Runs the main job's training into `output` with a progress bar; on success the page reloads with the new
    model."""
    bar = st.progress(0.0, text="Starting the training job...")
    try:
        for progress in training_job.run_training(output, num_subjects):
            bar.progress(progress.fraction, text=f"{progress.stage}: {progress.fraction:.0%}")
    except (training_job.TrainingFailed, OSError) as error:
        st.error(f"Training into {output} failed.")
        st.code(str(error))
        return
    trained = output / training_job.MODEL_SUBFOLDER
    st.session_state["notice"] = f"Trained the demo model on {num_subjects} synthetic subjects: saved to `{trained}`."
    st.session_state["next_model_dir"] = str(trained)
    st.rerun()


def offer_training(model_dir: str) -> None:
    try:
        output = training_job.confined_output(model_dir)
    except ValueError as error:
        st.info(str(error))
        return
    subjects = st.number_input("Synthetic subjects to train on", min_value=10, max_value=1000, value=100, step=10,
                               help="The main job uses 100; fewer train faster and less accurately.")  # fmt: skip
    if st.button(f"Train the demo model (facet-vlm demo --output {output})", type="primary"):
        train_demo_model(output, int(subjects))


def load_model(model_dir: str):
    """The pipeline of the chosen folder, or None after saying why there is none (and offering to train one)."""
    version = model_version(model_dir)
    if version is None:
        st.warning(f"No trained model in `{model_dir}` (it has no config.json). Train the main job's model here, "
                   "or choose a folder with a model in the sidebar (`facet-vlm app --model DIR`).")  # fmt: skip
        offer_training(model_dir)
        return None
    try:
        pipe = cached_pipeline(model_dir, version)
    except Exception as error:  # a broken or foreign checkpoint: say what failed instead of a stack trace
        LOGGER.exception("cannot load the model in %s", model_dir)
        st.error(f"Cannot load the model in `{model_dir}`: {type(error).__name__}: {error}")
        offer_training(model_dir)
        return None
    st.markdown(describe_model(model_dir, pipe))
    return pipe


# ------------------------------------------------------------------------------------------------ controls


def model_labels(pipe) -> list:
    try:
        return pipe.default_labels()
    except ValueError:  # the model names no classes: offer the six basic expressions
        return [label for label in EXPRESSIONS if label != "neutral"]


def prompt_controls(pipe):
    """The candidate labels and the prompt template from the sidebar, or (None, None) after an error message."""
    sidebar = st.sidebar
    sidebar.subheader("Zero-shot prompts")
    text = sidebar.text_input("Candidate labels (comma-separated)", value=", ".join(model_labels(pipe)), key="labels",
                              help="Any words: the model scores each label's prompt against the face.")  # fmt: skip
    templates = pipe.processor.templates
    template = sidebar.text_input(
        "Prompt template", value="", key="template", placeholder=templates[0],
        help=f"One {{}} where the label goes. Empty: the model's {len(templates)} templates, averaged: "
        + "; ".join(templates),
    )  # fmt: skip
    try:
        labels = check_label_count(parse_candidate_labels(text))
        if template.strip():
            check_templates(template.strip())
    except ValueError as error:
        sidebar.error(str(error))
        return None, None
    return labels, template.strip()


def choose_input(settings: AppSettings):
    """The uploaded or sample face and a key identifying it, or (None, None) with a message."""
    source = st.radio("Input", [UPLOAD, SAMPLE], horizontal=True, key="source")
    if source == SAMPLE:
        samples = cached_samples()
        index = st.selectbox("Sample face", range(len(samples)), format_func=lambda i: samples[i].name, key="sample")
        return samples[index], f"sample:{index}"
    upload = st.file_uploader(
        f"A scan ({', '.join(UPLOAD_EXTENSIONS[:-1])}) or a .zip of frame files (a 4D sequence), "
        f"at most {settings.max_upload_mb:g} MB", key="upload",
    )  # fmt: skip
    if upload is None:
        st.info("Upload a scan or a 4D sequence, or choose a generated sample face.")
        return None, None
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        return cached_upload(upload.name, digest, settings.max_upload_bytes, data), f"upload:{digest}"
    except UploadError as error:
        st.error(f"Cannot use **{error.name}**: {error.problem}")
        return None, None


# ------------------------------------------------------------------------------------------------ results


def show_metrics(prediction, face) -> None:
    best = prediction.labels[0]
    columns = st.columns(4)
    columns[0].metric("Prediction", best["label"])
    columns[1].metric("Score", f"{best['score']:.3f}")
    columns[2].metric("Latency", f"{prediction.latency_ms:.0f} ms",
                      help="Wall time of the pipeline call: rendering the views, the model, the scores (label prompts "
                      "are embedded once per label set and template).")  # fmt: skip
    if face.true_label:
        columns[3].metric("True label", face.true_label)


def show_probabilities(prediction) -> None:
    scores = pd.DataFrame(prediction.labels).rename(columns={"label": "expression", "score": "probability"})
    st.subheader("Expression probabilities")
    st.bar_chart(scores, x="expression", y="probability", horizontal=True, sort="-probability", height=CHART_HEIGHT)
    st.dataframe(scores, hide_index=True)


def show_views(prediction, pictures, frame_position: int) -> None:
    weights = prediction.view_weights[frame_position]
    st.subheader("Rendered views, as the model sees them")
    for column, (yaw, pitch), weight, channels in zip(st.columns(len(pictures)), prediction.views, weights, pictures):
        column.image([picture for _, picture in channels], caption=[name for name, _ in channels], output_format="PNG")
        column.caption(f"view yaw {yaw:g}°, pitch {pitch:g}° — CVSA weight {weight:.3f}")
    st.subheader("CVSA view weights")
    names = [f"yaw {yaw:g}°, pitch {pitch:g}°" for yaw, pitch in prediction.views]
    if len(prediction.view_weights) == 1:
        st.bar_chart(pd.DataFrame({"view": names, "weight": weights}), x="view", y="weight", sort=False,
                     horizontal=True, height=CHART_HEIGHT)  # fmt: skip
    else:
        st.caption("Per sampled frame of the sequence.")
        weights_per_frame = pd.DataFrame(prediction.view_weights, columns=names).rename_axis("sampled frame")
        st.line_chart(weights_per_frame, height=CHART_HEIGHT)


def show_timeline(prediction) -> None:
    timeline = prediction.timeline
    st.subheader("Per-frame timeline")
    st.caption(f"Each of the {len(timeline.frames)} frames the model samples, classified on its own "
               f"({timeline.latency_ms:.0f} ms for all of them, one batch); the sequence's prediction above pools "
               "them with the temporal weights.")  # fmt: skip
    scores = pd.DataFrame(timeline.scores, columns=timeline.labels, index=pd.Index(timeline.frames, name="frame"))
    st.line_chart(scores)
    table = pd.DataFrame({"frame": timeline.frames, "predicted": timeline.predicted(),
                          "score": [max(row) for row in timeline.scores],
                          "temporal weight": prediction.frame_weights})  # fmt: skip
    st.dataframe(table, hide_index=True)


def show_prediction(pipe, model_key: str, face, input_key: str, labels: list, template: str) -> None:
    try:
        prediction = cached_prediction(model_key, input_key, tuple(labels), template, _pipe=pipe, _face=face)
        show_metrics(prediction, face)
        scores_column, viewer_column = st.columns([3, 2], gap="large")
        with scores_column:
            show_probabilities(prediction)
        frame, frame_position, scan = 0, 0, face.item
        if prediction.timeline is not None:
            show_timeline(prediction)
            frames = prediction.timeline.frames
            frame = st.select_slider("Frame shown in 3D and in the views", options=frames,
                                     value=frames[len(frames) // 2], key="frame")  # fmt: skip
            frame_position, scan = frames.index(frame), face.item.load(frame)
        with viewer_column:
            st.subheader("3D scan" if prediction.timeline is None else f"3D scan, frame {frame}")
            st.iframe(cached_viewer(input_key, frame, _scan=scan), height=VIEWER_HEIGHT)
        renderer = pipe.processor.image_processor.renderer
        pictures = cached_views(model_key, input_key, frame, _renderer=renderer, _scan=scan)
        show_views(prediction, pictures, frame_position)
    except ScanFormatError as error:
        st.error(f"Cannot use **{face.display_name(error.path)}**: {error.problem}")
    except Exception as error:  # the page stays usable and says what failed; the traceback goes to the server log
        LOGGER.exception("prediction failed for %s", face.name)
        st.error(f"Prediction failed for **{face.name}**: {type(error).__name__}: {error}")


def main() -> None:
    st.set_page_config(page_title="FACET-VLM", layout="wide")
    st.title("FACET-VLM: 3D/4D facial expression recognition")
    try:
        settings = AppSettings.from_args()
    except ValueError as error:
        st.error(str(error))
        return
    if "next_model_dir" in st.session_state:  # a training run just finished: switch to its model
        st.session_state["model_dir"] = st.session_state.pop("next_model_dir")
    st.session_state.setdefault("model_dir", settings.model_dir)
    model_dir = st.sidebar.text_input("Model folder", key="model_dir").strip()
    if "notice" in st.session_state:
        st.success(st.session_state.pop("notice"))
    pipe = load_model(model_dir)
    if pipe is None:
        return
    labels, template = prompt_controls(pipe)
    face, input_key = choose_input(settings)
    if face is None or labels is None:
        return
    show_prediction(pipe, f"{model_dir}@{model_version(model_dir)}", face, input_key, labels, template)


main()

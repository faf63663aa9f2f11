"""Publishing to the Hugging Face Hub: `facet-vlm publish` (a trained model) and `facet-vlm publish-dataset`.

A model repository holds config.json (with `auto_map` and `custom_pipelines`), the safetensors weights, the
processor and tokenizer files, the remote code (model, processor, renderer, prompts, pipeline) and README.md: the
model card rendered from the top-level `model_card.md` template with the training results (model-index metadata
included). A benchmark's dataset repository is built by training/dataset_repo.py and pushed the same way.

`--dry-run` only writes the repository folder; otherwise it is pushed with `huggingface_hub` (`create_repo`, then
`create_branch` for a revision other than main, then `upload_folder`), using the token of `HF_TOKEN` or
`huggingface-cli login`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from datasets_scripts.registry import benchmark_of


def find_model_card_template(source_root=Path(__file__).resolve().parent.parent, prefix=sys.prefix) -> Path:
    """`model_card.md` at the top of the source tree, else where a wheel install puts it (`PREFIX/share/facet-vlm`,
    setup.py's data_files); the source-tree path when neither exists (then [`model_card`] says it is missing)."""
    candidates = (Path(source_root) / "model_card.md", Path(prefix) / "share" / "facet-vlm" / "model_card.md")
    return next((path for path in candidates if path.is_file()), candidates[0])


MODEL_CARD_TEMPLATE = find_model_card_template()
PIPELINE_TAG = "zero-shot-image-classification"
TASK_NAME = "3D/4D facial expression recognition"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_repo_id(repo_id: str) -> str:
    """Returns `repo_id` if it has the form "namespace/name"; raises ValueError otherwise."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ValueError(f"repo_id must look like 'user/name' (letters, digits, '-', '_', '.'); got {repo_id!r}.")
    return repo_id


# ---------------------------------------------------------------------------------------------------- results


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_training_results(model_dir, metrics=None) -> dict | None:
    """The results of the run that produced `model_dir`: its metrics.json (by default next to the model folder,
    where `facet-vlm train` writes it), with train_config.json beside it and cv_metrics.json (cross-validation)
    beside it or one folder up. None when there are no metrics."""
    if metrics is not None:
        metrics = Path(metrics)
        if not metrics.is_file():
            raise FileNotFoundError(f"Metrics file {metrics} does not exist.")
    else:
        metrics = Path(model_dir).resolve().parent / "metrics.json"
        if not metrics.is_file():
            return None
    folder = metrics.parent
    return {
        "metrics": _read_json(metrics),
        "train_config": _read_json(folder / "train_config.json") or {},
        "cv": _read_json(folder / "cv_metrics.json") or _read_json(folder.parent / "cv_metrics.json"),
    }


def _headline_metrics(metrics: dict) -> list:
    """(metric type, display name, value, metric args) of the single-label or multi-label metrics present."""
    candidates = (
        ("accuracy", "accuracy", "Accuracy", None),
        ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
        ("mean_f1", "f1", "Mean F1 over labels", {"average": "macro"}),
    )
    return [(kind, name, round(float(metrics[key]), 4), args)
            for key, kind, name, args in candidates if metrics.get(key) is not None]  # fmt: skip


def _fold_scheme(settings: dict, fold, cv: dict | None) -> str:
    num_folds, seed = settings.get("num_folds"), settings.get("seed")
    scheme = f"{num_folds} subject-independent folds" if num_folds else "subject-independent folds"
    scheme += f" (fold seed {seed})" if seed is not None else ""
    scheme += f"; all {len(cv['folds'])} folds were trained and tested" if cv else f"; tested on fold {fold}"
    if settings.get("test_intensities"):
        scheme += f", test intensities {', '.join(map(str, settings['test_intensities']))}"
    return scheme


def _evaluation(results: dict) -> tuple:
    """(EvalResults for the model-index, result rows for the card, detail tables, training summary)."""
    metrics, settings, cv = results["metrics"], results["train_config"], results["cv"]
    dataset = metrics.get("dataset") or settings.get("dataset")
    if dataset is None:
        raise ValueError("The metrics (and train_config.json beside them) name no dataset: add a 'dataset' field.")
    benchmark = benchmark_of(dataset)
    protocol = metrics.get("protocol") or settings.get("protocol")
    fold = metrics.get("fold", settings.get("fold"))
    scheme = _fold_scheme(settings, fold, cv)
    task = dict(task_type=PIPELINE_TAG, task_name=TASK_NAME)
    evals, rows = [], []

    def add(bench, dataset_name, split, config, args, entries):
        for kind, name, value, metric_args in entries:
            evals.append(EvalResult(**task, dataset_type=bench.key, dataset_name=dataset_name, dataset_split=split,
                                    dataset_config=config, dataset_args=args, metric_type=kind, metric_name=name,
                                    metric_value=value, metric_args=metric_args))  # fmt: skip
            rows.append({"dataset_name": dataset_name, "split": split, "metric_name": name, "value": value})

    # The model-index groups results by (dataset type, config, split), so the config names the fold scheme.
    fold_args = {"fold": fold, "num_folds": settings.get("num_folds"), "seed": settings.get("seed")}
    add(benchmark, f"{benchmark.name}, {protocol} protocol, fold {fold}", "test", f"{protocol}, fold {fold}",
        fold_args, _headline_metrics(metrics))
    if cv and cv.get("accuracy_mean") is not None:
        folds = len(cv["folds"])
        name = f"Accuracy (mean over {folds} folds, std {cv['accuracy_std']:.4f})"
        add(benchmark, f"{benchmark.name}, {protocol} protocol, cross-validation", "test",
            f"{protocol}, {folds}-fold cross-validation", {"num_folds": folds, "seed": settings.get("seed")},
            [("accuracy", name, round(float(cv["accuracy_mean"]), 4), None)])
    cross = metrics.get("cross_dataset")
    if cross:
        other = benchmark_of(settings.get("eval_dataset") or cross.get("dataset"))
        eval_protocol = settings.get("eval_protocol", "all")
        add(other, f"{other.name}, {eval_protocol} protocol (cross-dataset, trained on {benchmark.name})", "all",
            eval_protocol, None, _headline_metrics(cross))

    tables = []
    for key, title, column in (("per_class_recall", "Per-class recall on the test fold", "recall"),
                               ("per_label_f1", "Per-label F1 on the test fold", "F1")):  # fmt: skip
        if metrics.get(key):
            rows_of = [[label, f"{value:.4f}"] for label, value in zip(metrics["labels"], metrics[key])]
            tables.append({"title": title, "header": ["label", column], "rows": rows_of})
    if cv:
        columns = [key for key in ("accuracy", "macro_f1", "mean_f1") if key in cv["folds"][0]]
        tables.append({"title": "Cross-validation folds", "header": ["fold", *columns],
                       "rows": [[str(item["fold"]), *(f"{item[key]:.4f}" for key in columns)] for item in cv["folds"]]})  # fmt: skip
    listed = (("preset", "Preset"), ("epochs", "Epochs"), ("batch_size", "Batch size"), ("learning_rate", "Learning rate"),
              ("train_intensities", "Training intensities"), ("augment_views", "Mixed view augmentation"),
              ("mirror_scans", "Chance of a training scan being mirrored"),
              ("scans_per_person", "Scans of one person in a row in the training order"),
              ("augment_prompts", "Augmented prompts"))  # fmt: skip
    training_settings = [(name, settings[key]) for key, name in listed if settings.get(key) is not None]
    from_metrics = (("train_samples", "Training samples"), ("replayed_per_epoch", "Synthetic scans replayed per epoch"),
                    ("frozen_vision_blocks", "Vision blocks kept at their starting weights"),
                    ("test_samples", "Test samples"))
    for key, name in from_metrics:
        if metrics.get(key) is not None:
            training_settings.append((name, metrics[key]))
    training = {
        "dataset_name": benchmark.name, "protocol": protocol, "fold_scheme": scheme, "settings": training_settings,
        "synthetic": benchmark.key == "synthetic", "benchmarks": [benchmark] + ([other] if cross else []),
    }  # fmt: skip
    return evals, rows, tables, training


# ---------------------------------------------------------------------------------------------------- model card


def _tower_name(config) -> str:
    """"`convnext` (stage depths [1, 1, 3, 1], width 256)" or "`bert` (6 layers, width 384)"."""
    sizes, depths = getattr(config, "hidden_sizes", None), getattr(config, "depths", None)
    width = sizes[-1] if sizes else config.hidden_size
    depth = f"stage depths {list(depths)}" if depths else f"{config.num_hidden_layers} layers"
    return f"`{config.model_type}` ({depth}, width {width})"


def model_card(model, repo_id: str, results: dict | None = None, num_templates: int | None = None,
               template=MODEL_CARD_TEMPLATE) -> ModelCard:  # fmt: skip
    """The model card of `model` for `repo_id`: `model_card.md` rendered with the model's configuration (every
    method switch) and, when given, the training results of [`read_training_results`] (also as model-index
    metadata: dataset, protocol, fold scheme and metric values)."""
    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"Model card template {template} not found (it ships at the top of the FACET-VLM source tree).")
    check_repo_id(repo_id)
    config = model.config
    model_name = repo_id.split("/")[1]
    labels = [config.id2label[key] for key in sorted(config.id2label, key=int)]
    evals, rows, tables, training = _evaluation(results) if results else (None, [], [], None)
    benchmarks = training["benchmarks"] if training else []
    data = ModelCardData(
        language="en", license="apache-2.0", library_name="transformers", pipeline_tag=PIPELINE_TAG,
        tags=["3d", "4d", "facial-expression-recognition", "vision-language", "multiview", "custom_code", "facet-vlm"],
        datasets=sorted({benchmark.key for benchmark in benchmarks}) or None, metrics=sorted({e.metric_type for e in evals or []}) or None,
        model_name=model_name, eval_results=evals or None,
    )  # fmt: skip
    details = {
        "vision_tower": _tower_name(config.vision_config), "text_tower": _tower_name(config.text_config),
        "parameters": f"{model.num_parameters() / 1e6:.1f} M", "num_templates": num_templates or "the processor's",
    }  # fmt: skip
    content = jinja2.Template(template.read_text(encoding="utf-8"), undefined=jinja2.StrictUndefined).render(
        card_data=data.to_yaml(), model_name=model_name, repo_id=repo_id, config=config.to_dict(), labels=labels,
        details=details, training=training, results=rows, detail_tables=tables,
        dataset_citations=[benchmark.citation for benchmark in benchmarks if benchmark.citation],
    )  # fmt: skip
    return ModelCard(content)


# ---------------------------------------------------------------------------------------------------- pushing


def _fresh_folder(output) -> Path:
    """`output` (created, and required to be empty) or a new temporary folder."""
    if output is None:
        return Path(tempfile.mkdtemp(prefix="facet-vlm-publish-"))
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} is not an empty folder: publish writes a fresh repository folder there; "
                              "remove it or pass another --output.")  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    return output


def push_folder(folder, repo_id: str, repo_type: str = "model", private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token=None):  # fmt: skip
    """Create the repository (kept as it is if it exists: `private` only applies to a new one), create `revision` as
    a branch when it is not main, and upload `folder` in one commit. Returns the `CommitInfo`."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), revision=revision,
        commit_message=commit_message or f"Upload with facet-vlm publish ({repo_type})",
    )  # fmt: skip


def build_and_push(build, repo_id, repo_type, private, revision, dry_run, output, commit_message, token) -> dict:
    """Run `build(folder)` on a fresh folder (`output` or a temporary one), then push it unless `dry_run`; returns
    the report [`print_report`] prints. A temporary folder is removed after a push."""
    check_repo_id(repo_id)
    folder = _fresh_folder(output)
    try:
        build(folder)
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        report = {"repo_id": repo_id, "repo_type": repo_type, "files": files, "pushed": not dry_run}
        if dry_run:
            return {**report, "folder": str(folder)}
        commit = push_folder(folder, repo_id, repo_type, private, revision, commit_message, token)
        return {**report, "revision": revision or "main", "private": private, "commit_url": commit.commit_url}
    finally:
        if output is None and not dry_run:
            shutil.rmtree(folder, ignore_errors=True)


def build_model_repo(model_dir, folder, repo_id: str, metrics=None) -> Path:
    """Write the Hub repository of the FACET-VLM model in `model_dir` into `folder` (see the module docstring)."""
    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor
    from modeling_facet.pipeline_facet import save_for_hub

    model = FacetVLMForExpressionRecognition.from_pretrained(model_dir)
    processor = FacetVLMProcessor.from_pretrained(model_dir)
    save_for_hub(model, processor, folder)
    results = read_training_results(model_dir, metrics)
    model_card(model, repo_id, results, num_templates=len(processor.templates)).save(Path(folder) / "README.md")
    return Path(folder)


def publish_model(model_dir, repo_id: str, *, private: bool = False, revision: str | None = None,
                  dry_run: bool = False, output=None, metrics=None, commit_message: str | None = None,
                  token=None) -> dict:  # fmt: skip
    """Build the model's Hub repository folder ([`build_model_repo`]) and, unless `dry_run`, push it. Returns the
    files, and the commit URL (pushed) or the folder (dry run; a temporary one unless `output` is given)."""
    return build_and_push(lambda folder: build_model_repo(model_dir, folder, repo_id, metrics), repo_id, "model",
                          private, revision, dry_run, output, commit_message, token)  # fmt: skip


def print_report(report: dict) -> None:
    """Print what `publish_model` / `dataset_repo.publish_dataset_card` did."""
    where = f"{report['repo_type']} repository {report['repo_id']}"
    if report["pushed"]:
        visibility = "private" if report["private"] else "public unless it already existed"
        print(f"Pushed {len(report['files'])} files to the {where} (revision {report['revision']}, {visibility}): "
              f"{report['commit_url']}")  # fmt: skip
    else:
        print(f"Dry run: wrote the {where} into {report['folder']} ({len(report['files'])} files); nothing was pushed.")
    for path in report["files"]:
        print(f"  {path}")


__all__ = [
    "build_and_push",
    "build_model_repo",
    "model_card",
    "publish_model",
    "push_folder",
    "read_training_results",
]

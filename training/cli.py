"""The `facet-vlm` command line: demo, train, pretrain, evaluate, predict, render, inspect, app, publish, bench.

An error of the input, of files or of the network ends the command with one line on stderr naming the input and the
problem, and a non-zero exit (2; 1 when the Hub cannot be reached); FACET_VLM_TRACEBACK=1 shows the traceback
instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


# Commands that start another program of the package, passing their arguments through unparsed: the command line
# (part of training) imports neither the app nor the benchmarks, which sit above it.
PROGRAMS = {"app": "app", "bench": "benchmarks"}


def _inspect(args):
    from modeling_facet.mesh_io import describe_scan, load_scan

    summary = describe_scan(load_scan(args.file, landmarks=True))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>12}: {'-' if value is None else value}")


# Column labels of each render channel's image channels in `facet-vlm render`'s grid.
_IMAGE_CHANNEL_LABELS = {"shaded": ("shaded",), "depth": ("depth",), "normals": ("n.x", "n.y", "n.z"),
                         "texture": ("tex.R", "tex.G", "tex.B")}  # fmt: skip


def _render(args):
    import numpy as np
    from PIL import Image, ImageDraw

    from modeling_facet.mesh_io import load_scan
    from modeling_facet.rendering import MultiviewRenderer

    _check_image_output(args.output)
    views = [tuple(float(v) for v in view.split(",")) for view in args.views]
    renderer = MultiviewRenderer(views=views, image_size=args.size, channels=args.channels, backend=args.backend)
    images = renderer.render(load_scan(args.file, landmarks=True))  # (V, C, H, W) in [0, 1]
    rows = [np.concatenate(list(view), axis=1) for view in images]  # each channel side by side, one row per view
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    top, left, size = 16, 96, args.size  # a label row above the columns and a label column left of the rows
    picture = Image.new("L", (left + grid.shape[1], top + grid.shape[0]))
    picture.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(picture)
    columns = [label for name in args.channels for label in _IMAGE_CHANNEL_LABELS[name]]
    for column, label in enumerate(columns):
        draw.text((left + column * size + 2, 2), label, fill=255)
    for row, (yaw, pitch) in enumerate(views):
        draw.text((2, top + row * size + size // 2 - 5), f"yaw {yaw:g} pitch {pitch:g}", fill=255)
    picture.save(args.output)
    names = [name if len(_IMAGE_CHANNEL_LABELS[name]) == 1 else
             f"{name} " + "/".join(label.split(".")[1] for label in _IMAGE_CHANNEL_LABELS[name]) for name in args.channels]
    print(f"Wrote {args.output}: {len(views)} views (rows) x {len(columns)} image channels (columns: {', '.join(names)}).")


def _check_image_output(path: str) -> None:
    """Refuses, before any rendering, an output whose folder is missing or whose extension PIL cannot write."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder for --output {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        raise ValueError(f"{path}: unsupported image type {extension or '(none)'!r}; use .png, .jpg or .tif")


def _train(args):
    from training.train import config_from_args, cross_validate, train

    cfg = config_from_args(args)
    results = cross_validate(cfg) if cfg.cv else train(cfg)
    print(json.dumps({k: v for k, v in results.items() if k != "confusion_matrix"}, indent=2))


def _pretrain(args):
    from training.config import TrainConfig
    from training.pretraining import synthetic_pretrained
    from training.train import train

    cfg = TrainConfig(preset=args.preset, model_overrides=args.model_overrides,
                      pretraining_subjects=args.pretraining_subjects)  # fmt: skip
    print(synthetic_pretrained(cfg, pretrain=train))


def _evaluate(args):
    from training.evaluate_model import evaluate_checkpoint
    from training.config import TrainConfig

    cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, protocol=args.protocol, fold=args.fold,
                      num_folds=args.num_folds, data_seed=args.seed, synthetic_subjects=args.synthetic_subjects,
                      test_intensities=args.test_intensities, cache_dir=args.cache_dir)  # fmt: skip
    metrics = evaluate_checkpoint(args.model, cfg, args.output, split=args.split)
    print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2))


def _demo(args):
    from training.demo import run_demo

    run_demo(args.output, num_subjects=args.subjects, epochs=args.epochs, cache_dir=args.cache_dir,
             keep_cache=args.keep_cache, overwrite_output=args.overwrite_output)  # fmt: skip


def _label_list(text):
    from modeling_facet.pipeline_facet import parse_candidate_labels

    try:
        return parse_candidate_labels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _model_source(model: str) -> str:
    """`model` when it is a saved model folder or can only be a Hub repo id; a missing or empty folder raises an error
    saying so (transformers would call it an invalid repo id)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise FileNotFoundError(f"{model}: not a model folder (no config.json)")
        return model
    if os.path.exists(model):
        raise NotADirectoryError(f"{model}: a file, not a model folder")
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise FileNotFoundError(f"{model}: no such model folder (nor a Hub repo id)") from None
    if os.path.isdir(os.path.dirname(model)):
        raise FileNotFoundError(f"{model}: no such model folder")
    return model


def _predict(args):
    from modeling_facet.pipeline_facet import load_pipeline

    options = dict(candidate_labels=args.labels, top_k=args.top_k, multi_label=args.multi_label,
                   return_view_weights=args.view_weights or None, hypothesis_template=args.hypothesis_template)
    pipe = load_pipeline(_model_source(args.model))
    results = pipe(list(args.files), batch_size=args.batch_size,
                   **{key: value for key, value in options.items() if value is not None})  # fmt: skip
    if args.json:
        print(json.dumps(results[0] if len(args.files) == 1 else dict(zip(args.files, results)), indent=2))
        return
    for path, result in zip(args.files, results):
        ranked = result["labels"] if args.view_weights else result
        print(f"{path}: " + ", ".join(f"{item['label']} {item['score']:.3f}" for item in ranked))
        if args.view_weights:
            views = [f"({yaw:g}, {pitch:g})" for yaw, pitch in result["views"]]
            for frame, (weights, frame_weight) in enumerate(zip(result["view_weights"], result["frame_weights"])):
                shares = " | ".join(f"{view} {weight:.3f}" for view, weight in zip(views, weights))
                print(f"  frame {frame} (weight {frame_weight:.3f}) views: {shares}")


def _start_program(args):
    """`facet-vlm app ARGS` runs `python -m app ARGS`, `facet-vlm bench ARGS` `python -m benchmarks ARGS`, in this
    process's place."""
    command = [sys.executable, "-m", PROGRAMS[args.command], *args.arguments]
    os.execv(command[0], command)


def _publish_model(args):
    from training.publish import print_report, publish_model

    print_report(publish_model(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                               dry_run=args.dry_run, output=args.output, metrics=args.metrics,
                               commit_message=args.commit_message))  # fmt: skip


def _publish_dataset(args):
    from training.dataset_repo import publish_dataset_card
    from training.publish import print_report

    synthetic = {key: value for key, value in dict(num_subjects=args.num_subjects, num_folds=args.num_folds,
                 data_seed=args.data_seed, image_size=args.image_size, cache_dir=args.cache_dir).items()
                 if value is not None}  # fmt: skip
    print_report(publish_dataset_card(args.name, args.repo_id, private=args.private, revision=args.revision,
                                      dry_run=args.dry_run, output=args.output, commit_message=args.commit_message,
                                      **synthetic))  # fmt: skip


def _add_push_arguments(parser):
    parser.add_argument("--repo-id", required=True, help="user/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created from main if missing)")
    parser.add_argument("--dry-run", action="store_true", help="only write the repository folder; push nothing")
    parser.add_argument("--output", help="empty folder for the repository files (default: a temporary folder)")
    parser.add_argument("--commit-message")


def build_parser() -> argparse.ArgumentParser:
    from training.config import add_arguments

    parser = argparse.ArgumentParser(prog="facet-vlm", description="FACET-VLM: 3D/4D facial expression recognition.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="Train and evaluate on the synthetic benchmark, then classify a scan.")
    demo.add_argument("--output", default="outputs/demo")
    demo.add_argument("--subjects", type=int, default=100, help="synthetic subjects to generate")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo recipe's)")
    demo.add_argument("--cache-dir", help="data cache, kept (default: OUTPUT/cache, about 2.9 GB, removed at the end)")
    demo.add_argument("--keep-cache", action="store_true", help="keep OUTPUT/cache for another run")
    demo.add_argument("--overwrite-output", action="store_true", help="replace a run with other settings in OUTPUT")
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="Train FACET-VLM (Accelerate); see training/train.py.")
    add_arguments(train)
    train.set_defaults(handler=_train)

    pretrain = commands.add_parser("pretrain", help="Build (once) the synthetic-pretrained model that benchmark runs "
                                   "start from, and print its folder; see training/pretraining.py.")  # fmt: skip
    pretrain.add_argument("--preset", default="small")
    pretrain.add_argument("--model-overrides", type=json.loads, default={}, help="JSON, as for train")
    pretrain.add_argument("--pretraining-subjects", type=int, help="synthetic people to pretrain on, as for train "
                          "(default: PRETRAINING_SUBJECTS in training/pretraining.py)")  # fmt: skip
    pretrain.set_defaults(handler=_pretrain)

    evaluate = commands.add_parser("evaluate", help="Evaluate a trained model on a benchmark split.")
    evaluate.add_argument("model")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--protocol", default="standard")
    evaluate.add_argument("--fold", type=int, default=0)
    evaluate.add_argument("--num-folds", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=42, help="fold seed (and synthetic data seed)")
    evaluate.add_argument("--synthetic-subjects", type=int, default=100)
    evaluate.add_argument("--test-intensities", type=json.loads, default=None, help="JSON list, e.g. [3, 4]")
    evaluate.add_argument("--split", default="test", choices=["test", "train", "all"])
    evaluate.add_argument("--cache-dir")
    evaluate.add_argument("--output", default="outputs/evaluation")
    evaluate.set_defaults(handler=_evaluate)

    render = commands.add_parser("render", help="Render a scan's views to a PNG grid (rows: views, columns: channels).")
    render.add_argument("file")
    render.add_argument("--output", default="views.png")
    render.add_argument("--views", nargs="+", default=["0,0", "20,0", "-20,0"], help="yaw,pitch in degrees")
    render.add_argument("--size", type=int, default=224)
    render.add_argument("--channels", nargs="+", default=["shaded", "depth", "normals"])
    render.add_argument("--backend", default="torch", choices=["torch", "pyrender"])
    render.set_defaults(handler=_render)

    inspect = commands.add_parser("inspect", help="Summarise a scan file: format, size, bounding box, landmarks.")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)

    predict = commands.add_parser("predict", help="Zero-shot expression scores of scans or sequences (the pipeline).")
    predict.add_argument("model", help="a FACET-VLM folder or Hub repo id")
    predict.add_argument("files", nargs="+", help="scan files or frame folders (4D)")
    predict.add_argument("--labels", type=_label_list, help="comma-separated labels (default: the model's classes)")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--multi-label", action=argparse.BooleanOptionalAction, default=None,
                         help="independent sigmoid scores (default: the model's problem type)")
    predict.add_argument("--view-weights", action="store_true", help="also print the CVSA view and frame weights")
    predict.add_argument("--hypothesis-template", help='prompt template with one {}, e.g. "a {} face"')
    predict.add_argument("--batch-size", type=int, default=1)
    predict.set_defaults(handler=_predict)

    for name, help in (("app", "Serve the Streamlit app (interactive inference) on 127.0.0.1 (python -m app)."),
                       ("bench", "Run the speed benchmarks and the accuracy study (python -m benchmarks).")):
        program = commands.add_parser(name, help=f"{help} `facet-vlm {name} --help` lists its options.", add_help=False)
        program.set_defaults(handler=_start_program)

    publish = commands.add_parser("publish", help="Push a trained model, its code and model card to the Hub.")
    publish.add_argument("model_dir")
    publish.add_argument("--metrics", help="metrics.json of the run (default: next to MODEL_DIR)")
    _add_push_arguments(publish)
    publish.set_defaults(handler=_publish_model)

    publish_dataset = commands.add_parser(
        "publish-dataset", help="Push a benchmark's card and builder code (and the synthetic data) to the Hub."
    )
    publish_dataset.add_argument("name", help="bu3dfe, bosphorus, bu4dfe, bp4d, fourdme or synthetic")
    publish_dataset.add_argument("--num-subjects", type=int, help="synthetic: subjects to generate (default 10)")
    publish_dataset.add_argument("--num-folds", type=int, help="synthetic: subject-independent folds")
    publish_dataset.add_argument("--data-seed", type=int, help="synthetic: generator seed")
    publish_dataset.add_argument("--image-size", type=int, help="synthetic: side of the rendered views")
    publish_dataset.add_argument("--cache-dir", help="synthetic: builder cache folder")
    _add_push_arguments(publish_dataset)
    publish_dataset.set_defaults(handler=_publish_dataset)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; the arguments of `app` and `bench` stay unparsed in `arguments`, for their program."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PROGRAMS:
        args.arguments = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv=None):
    # Idle OpenMP threads spin by default; on a 2-core machine whose other core is busy (rendering, another job)
    # that spinning made training steps 3-9x slower here. It only takes effect before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse_args(argv)
    from training.cpu_threads import use_idle_cores

    use_idle_cores()  # as many torch threads as the machine has idle cores
    try:
        args.handler(args)
    except Exception as error:
        message, code = _user_error(error)
        if message is None or os.environ.get("FACET_VLM_TRACEBACK"):
            raise
        print(f"facet-vlm {args.command}: {message}", file=sys.stderr)
        raise SystemExit(code) from error


def _network_errors() -> tuple:
    """Connection errors, including those of the HTTP clients huggingface_hub may use, where they are loaded."""
    classes = [ConnectionError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        if module in sys.modules:
            classes.append(getattr(sys.modules[module], name))
    return tuple(classes)


def _user_error(error: Exception) -> tuple:
    """`(one-line message, exit code)` for an error of the input, files or network (the typed errors of the package
    are ValueErrors, OSErrors or FloatingPointErrors that name their file), or `(None, None)` for a bug."""
    text = " ".join(str(error).split())
    if isinstance(error, _network_errors()):
        return f"cannot reach the Hugging Face Hub ({type(error).__name__}: {text})", 1
    if isinstance(error, (ValueError, OSError, FloatingPointError)):
        return text, 2
    return None, None


if __name__ == "__main__":
    main()

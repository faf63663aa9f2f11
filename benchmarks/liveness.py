"""Component liveness report: what each part of a trained FACET-VLM does to what it computes and predicts.

A part of the method is working when it measurably changes the model's output. For a run folder written by
`facet-vlm train` or `facet-vlm demo` (its `model/`, `train_config.json` and `epochs.jsonl`), on the run's test split:

* CVSA: the view weights a_v (mean and spread across samples), and how they respond to the views: each view in turn
  is blanked (set to the background value), and the weight it then gets is reported next to its usual weight.
* MTGF: the predictions and the accuracy when MTGF's text keys are replaced (the logits keep the real prompts) by
  random unit vectors or by their mean, and when MTGF is skipped (h = norm(f)); the fraction of predictions that
  change and the mean cosine between the fused embeddings.
* The scalars: the logit scale, the L_gf margin and the pooling temperatures per epoch (from `epochs.jsonl`).
* The loss terms: the gradient norm of each weighted term over the trainable parameters, relative to L_ce's, on a
  few training batches.

    python -m benchmarks.liveness --run outputs/demo     # writes benchmarks/results/liveness.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import load_average, write_json


RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOSS_TERMS = ("ce", "itc", "cons", "gf")


def load_run(run_dir):
    """(model, processor, TrainConfig, splits) of a training run folder."""
    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor
    from training.config import TrainConfig
    from training.data import load_splits

    run_dir = Path(run_dir)
    settings = run_dir / "train_config.json"
    if not settings.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder: it has no train_config.json.")
    cfg = TrainConfig(**json.loads(settings.read_text()))
    model = FacetVLMForExpressionRecognition.from_pretrained(run_dir / "model").eval()
    processor = FacetVLMProcessor.from_pretrained(run_dir / "model")
    return model, processor, cfg, load_splits(cfg, processor.image_processor, show_progress=False)


@torch.no_grad()
def _outputs(model, split, class_inputs: dict, batch_size: int = 64) -> dict:
    """Logits, fused embeddings and view weights of `model` over `split` (eval mode)."""
    model.eval()
    parts = {"logits": [], "face_embeds": [], "view_weights": []}
    for start in range(0, len(split), batch_size):
        batch = split.batch(range(start, min(start + batch_size, len(split))))
        batch.pop("labels")
        out = model(**batch, **class_inputs)
        for name in parts:
            parts[name].append(getattr(out, name))
    return {name: torch.cat(values) for name, values in parts.items()}


def _class_inputs(processor, split) -> dict:
    prompts = processor(labels=split.label_names, return_tensors="pt")
    return {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]}


def view_weight_report(model, split, class_inputs: dict, background: float) -> dict:
    """Mean and spread of the CVSA weights per view, and each view's weight when that view alone is blanked."""
    out = _outputs(model, split, class_inputs)
    weights = out["view_weights"][:, 0]  # (N, V): static scans, one frame
    report = {"views": model.config.views, "mean": weights.mean(0).tolist(), "std_across_samples": weights.std(0).tolist(),
              "mean_abs_deviation_from_uniform": float((weights - 1 / weights.shape[1]).abs().mean()),
              "blanked": []}  # fmt: skip
    for view in range(weights.shape[1]):
        pixels = split.pixel_values.clone()
        pixels[:, view] = background
        blanked = _outputs(model, _with_pixels(split, pixels), class_inputs)["view_weights"][:, 0]
        report["blanked"].append({"view": view, "weight_usual": float(weights[:, view].mean()),
                                  "weight_when_blanked": float(blanked[:, view].mean())})  # fmt: skip
    return report


def _with_pixels(split, pixels):
    return dataclasses.replace(split, pixel_values=pixels)


def mtgf_report(model, split, class_inputs: dict, seed: int = 0) -> dict | None:
    """How predictions, accuracy and h change when MTGF's text keys are random or averaged, or MTGF is skipped."""
    mtgf = model.base_model.mtgf
    if mtgf is None:
        return None
    labels = split.labels.numpy()
    real = _outputs(model, split, class_inputs)
    predictions = real["logits"].argmax(-1).numpy()
    dim = real["face_embeds"].shape[-1]
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(split.label_names)
    random_keys = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1)
    # Pre-hooks replace the text keys (the logits keep the real prompts); the forward hook returns f itself.
    replacements = {
        "random_text_keys": ("pre", lambda module, args: (*args[:3], random_keys)),
        "mean_text_key": ("pre", lambda module, args: (*args[:3], args[3].mean(0, keepdim=True))),
        "skipped": ("post", lambda module, args, output: args[2]),
    }
    report = {"accuracy": float((predictions == labels).mean())}
    for name, (kind, hook) in replacements.items():
        handle = mtgf.register_forward_pre_hook(hook) if kind == "pre" else mtgf.register_forward_hook(hook)
        try:
            changed = _outputs(model, split, class_inputs)
        finally:
            handle.remove()
        changed_predictions = changed["logits"].argmax(-1).numpy()
        report[name] = {
            "accuracy": float((changed_predictions == labels).mean()),
            "predictions_changed": float((changed_predictions != predictions).mean()),
            "mean_cosine_to_real_h": float((changed["face_embeds"] * real["face_embeds"]).sum(-1).mean()),
        }
    return report


def loss_gradient_report(model, processor, split, cfg, batches: int = 4) -> dict:
    """Per loss term, the norm of its weighted gradient over the trainable parameters, and its ratio to L_ce's."""
    from training.train import BatchBuilder

    build = BatchBuilder(cfg, processor, split, "cpu")
    parameters = [p for p in model.parameters() if p.requires_grad]
    weights = {term: getattr(model.config, f"loss_weight_{term}") for term in LOSS_TERMS}
    norms = {term: [] for term in LOSS_TERMS}
    order = np.random.default_rng(cfg.seed).permutation(len(split))
    model.train()
    for index in range(batches):
        indices = order[index * cfg.batch_size:(index + 1) * cfg.batch_size].tolist()
        if not indices:
            break
        out = model(**build(indices, step_seed=index))
        for term in LOSS_TERMS:
            value = weights[term] * getattr(out, f"loss_{term}")
            grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
            norms[term].append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    model.eval()
    means = {term: float(np.mean(values)) for term, values in norms.items() if values}
    return {"weights": weights, "gradient_norm": means,
            "relative_to_ce": {term: means[term] / means["ce"] if means["ce"] else None for term in means}}  # fmt: skip


def scalar_trajectories(run_dir) -> dict:
    """Per epoch, the logged scalars (logit scale, margin, pooling temperatures) from the run's epochs.jsonl."""
    path = Path(run_dir) / "epochs.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    names = ("logit_scale", "margin", "cvsa_temperature", "temporal_temperature")
    return {name: [record[name] for record in records if name in record] for name in names}


def run(run_dir, output=None, batches: int = 4) -> dict:
    model, processor, cfg, splits = load_run(run_dir)
    test = splits["test"]
    class_inputs = _class_inputs(processor, test)
    image_processor = processor.image_processor
    background = -image_processor.image_mean / image_processor.image_std  # a rendered 0: no surface
    results = {
        "benchmark": "liveness", "run": str(run_dir), "load_average_before": load_average(),
        "test_samples": len(test), "config": {key: getattr(model.config, key) for key in
                                              ("cvsa", "mtgf", "views", "loss_weight_ce", "loss_weight_itc",
                                               "loss_weight_cons", "loss_weight_gf")},
        "cvsa": view_weight_report(model, test, class_inputs, background) if test.pixel_values.dim() == 5 else None,
        "mtgf": mtgf_report(model, test, class_inputs, seed=cfg.seed),
        "scalars": scalar_trajectories(run_dir),
        "loss_gradients": loss_gradient_report(model, processor, splits["train"], cfg, batches),
    }  # fmt: skip
    write_json(results, Path(output or RESULTS_DIR / "liveness.json"), echo=False)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="outputs/demo", help="a run folder of `facet-vlm train` or `facet-vlm demo`")
    parser.add_argument("--output", default=str(RESULTS_DIR / "liveness.json"), help="JSON file to write")
    parser.add_argument("--batches", type=int, default=4, help="training batches for the loss-gradient shares")
    arguments = parser.parse_args(argv)
    results = run(arguments.run, arguments.output, arguments.batches)
    print(json.dumps({key: results[key] for key in ("cvsa", "mtgf", "loss_gradients")}, indent=2))
    return results


if __name__ == "__main__":
    main()

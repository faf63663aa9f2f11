"""The FACET-VLM training job (Accelerate): `facet-vlm train ...` or `python -m training.train ...`.

One loop serves a single CPU, one GPU and multi-process runs (`torchrun --nproc_per_node 2 -m training.train ...` or
`accelerate launch --multi_gpu --num_processes 2 -m training.train ...`; gloo on CPU). Every random choice (data
order, view augmentation, prompt sampling, dropout) is derived from (seed, epoch, step), so a run resumed from its
last checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMProcessor
from modeling_facet.modeling_facet import vision_tower_blocks
from modeling_facet.rasterization import to_device

from . import checkpointing, divergence, pretraining, run_folder
from .config import TrainConfig, add_arguments, config_from_args
from .cpu_threads import use_idle_cores
from .data import ExpressionSplit, is_multi_label, load_splits
from .evaluate_model import compute_metrics, decisions, predict, write_metrics
from .step_log import LOSS_TERMS, LossMeans


def _mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def build_model_and_processor(cfg: TrainConfig, multi_label: bool, start=None):
    """The model (from `start`, a FACET-VLM checkpoint; else from two pretrained towers or a preset) and its
    processor. The label names are set once the data is loaded (the model itself is label-agnostic: classes are
    prompts)."""
    labels = {"problem_type": "multi_label_classification" if multi_label else "single_label_classification"}
    source = cfg.pretrained or start
    if source:
        config = FacetVLMConfig.from_pretrained(source, **labels, **cfg.model_overrides)
        model = FacetVLMForExpressionRecognition.from_pretrained(source, config=config)
        processor = FacetVLMProcessor.from_pretrained(source)
    elif cfg.vision_pretrained or cfg.text_pretrained:
        if not (cfg.vision_pretrained and cfg.text_pretrained):
            raise ValueError("Give both --vision-pretrained and --text-pretrained, or neither.")
        model = FacetVLMForExpressionRecognition.from_vision_text_pretrained(
            cfg.vision_pretrained, cfg.text_pretrained, **labels, **cfg.model_overrides
        )
        processor = FacetVLMProcessor(  # the text checkpoint's own tokenizer matches its vocabulary
            FacetMeshImageProcessor.from_model_config(model.config), AutoTokenizer.from_pretrained(cfg.text_pretrained)
        )
    else:
        config = FacetVLMConfig.from_preset(cfg.preset, **labels, **cfg.model_overrides)
        processor = FacetVLMProcessor.from_model_config(config)  # writes the tokenizer's special ids into config
        model = FacetVLMForExpressionRecognition.from_config(config)
    return model, processor


class BatchBuilder:
    """Turns sample indices into model inputs: pixels with mixed view augmentation, mirrored scans and occluded views
    as configured, the class prompts, and one augmented prompt per sample, all seeded by the global step."""

    def __init__(self, cfg: TrainConfig, processor, split: ExpressionSplit, device):
        self.cfg, self.processor, self.device = cfg, processor, torch.device(device)
        if cfg.mirror_scans:
            processor.image_processor.mirror_view_order()  # views without mirror images fail before training
        # The rendered split is held on the device (from the first batch on), its labels also on the host for prompt
        # sampling: a step copies only its prompts and augmentation parameters there, without waiting for the device.
        self.split, self.host_labels = split, None
        prompts = processor(labels=split.label_names, exclude_words=cfg.exclude_words, return_tensors="pt")
        self.class_inputs = {"input_ids": to_device(prompts["input_ids"], self.device),
                             "attention_mask": to_device(prompts["attention_mask"], self.device)}  # fmt: skip

    def __call__(self, indices, step_seed: int) -> dict:
        if self.host_labels is None:
            self.host_labels, self.split = self.split.labels, self.split.to(self.device)
        batch = self.split.batch(indices, device=self.device)
        batch["pixel_values"] = self.processor.image_processor.augment_for_training(
            batch["pixel_values"], step_seed, self.cfg.augment_views, self.cfg.mirror_scans, self.cfg.occlude_views
        )
        batch.update(self.class_inputs)
        if self.cfg.augment_prompts and not self.split.multi_label:
            prompts = self.processor(
                labels=self.split.label_names,
                sample_labels=self.host_labels[list(indices)].tolist(),
                metadata=[self.split.metadata[i] for i in indices],
                augment=True,
                seed=step_seed,
                exclude_words=self.cfg.exclude_words,
                return_tensors="pt",
            )
            batch["prompt_input_ids"] = to_device(prompts["prompt_input_ids"], self.device)
            batch["prompt_attention_mask"] = to_device(prompts["prompt_attention_mask"], self.device)
        return batch


def _optimizer(model, cfg: TrainConfig):
    """AdamW in three groups: matrices with weight decay; biases and norms without; the scalars (logit scale, the
    L_gf margin, the pooling temperatures) without decay at `cfg.scalar_learning_rate`. At the matrices' rate a
    scalar moves about 0.1 in a few hundred steps: in the first version the margin and the scale did not move."""
    decay, no_decay, scalars = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.dim() == 0:
            scalars.append(parameter)
        else:
            (no_decay if parameter.dim() < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": scalars, "weight_decay": 0.0, "lr": cfg.scalar_learning_rate}]  # fmt: skip
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=cfg.learning_rate)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def train(cfg: TrainConfig) -> dict:
    """Train on the configured split, evaluate on its test side, save the model; returns the test metrics."""
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
        # Static scans leave the temporal transformer unused (and a single view the CVSA encoder).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    output = Path(cfg.output)
    run_folder.prepare_output_folder(cfg, accelerator)  # before any work: refuses a folder holding another run
    start = cfg.pretrained or pretraining.starting_checkpoint(cfg, pretrain=train)  # may pretrain (once per cache)
    set_seed(cfg.seed)
    model, processor = build_model_and_processor(cfg, is_multi_label(cfg.dataset), start)
    with accelerator.main_process_first():  # rank 0 renders and caches (the replayed scans too); the others read it
        splits = load_splits(cfg, processor.image_processor, show_progress=accelerator.is_main_process)
        train_split, test_split, validation_split = splits["train"], splits["test"], splits.get("validation")
        replay_draws = round(pretraining.replay_per_scan(cfg, start, train_split) * len(train_split))
        replay = pretraining.replay_split(cfg, processor.image_processor, train_split) if replay_draws else None
    tower_blocks = len(vision_tower_blocks(model.base_model.vision_towers[0]))
    frozen_blocks = pretraining.frozen_vision_blocks(cfg, start, train_split, tower_blocks)
    model.base_model.freeze_vision_blocks(frozen_blocks)
    validation_metric = "mean_f1" if train_split.multi_label else "accuracy"
    validation_key = f"validation_{validation_metric}"  # in epochs.jsonl
    model.config.id2label = dict(enumerate(train_split.label_names))
    model.config.label2id = {name: i for i, name in enumerate(train_split.label_names)}

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world
    steps_per_epoch = max(1, (len(train_split) + replay_draws) // global_batch)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = _optimizer(model, cfg)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(cfg.warmup_ratio * total_steps / cfg.gradient_accumulation_steps),
        math.ceil(total_steps / cfg.gradient_accumulation_steps),
    )  # fmt: skip
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    epoch_split = train_split if replay is None else train_split.concatenated(replay)
    build_batch = BatchBuilder(cfg, processor, epoch_split, accelerator.device)

    step, history, running_state, best_state = 0, [], None, None
    resumed = cfg.resume and checkpointing.resume(output, accelerator.unwrap_model(model), optimizer.optimizer,
                                                  scheduler.scheduler, log=accelerator.print)  # fmt: skip
    if resumed:
        last, state = resumed
        processor = FacetVLMProcessor.from_pretrained(last)
        build_batch = BatchBuilder(cfg, processor, epoch_split, accelerator.device)
        step, history, running_state = state["step"], state["history"], state.get("running")
        if best_validation(history, validation_key):
            best_state = checkpointing.load_best_weights(output, accelerator.unwrap_model(model))
        if accelerator.is_main_process:
            run_folder.restore_epoch_log(output, history)
        accelerator.print(f"Resumed from {last} at step {step}.")

    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_main_process, desc="training")
    running, started, seen = LossMeans.from_state(running_state, accelerator.device), time.perf_counter(), 0
    model.train()
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(cfg.seed, epoch, len(train_split), len(epoch_split) - len(train_split), replay_draws,
                            epoch_split.subjects, cfg.scans_per_person)
        global_indices = order[position * global_batch:(position + 1) * global_batch]
        indices = global_indices[rank * cfg.batch_size:(rank + 1) * cfg.batch_size].tolist()  # runs stay whole
        step_seed = _step_seed(cfg.seed, step)
        torch.manual_seed(step_seed)
        with accelerator.accumulate(model):
            outputs = model(**build_batch(indices, step_seed))
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step += 1
        seen += len(global_indices)
        running.add(outputs)  # on the device: no step waits for the GPU to read its loss back
        progress.update(1)

        if step % steps_per_epoch == 0 or step == total_steps:
            losses = running.means(accelerator)
            divergence.check_loss(losses, step - running.steps + 1, step)
            samples_per_second = seen / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{losses['loss']:.3f}", samples_per_s=f"{samples_per_second:.1f}")
            record = {"epoch": math.ceil(step / steps_per_epoch), "step": step, **losses,
                      "lr": scheduler.get_last_lr()[0], "samples_per_second": samples_per_second,
                      **trained_scalars(accelerator.unwrap_model(model))}  # fmt: skip
            if cfg.eval_every_epoch:
                record["test_accuracy"] = _gathered_metrics(accelerator, model, processor, test_split).get("accuracy")
                model.train()
            if validation_split is not None:
                best = best_validation(history, validation_key)
                scored = _validation_metrics(accelerator, model, processor, train_split, validation_split, cfg)
                record[validation_key] = scored[validation_metric]
                model.train()
                if best is None or record[validation_key] > best[validation_key]:
                    best_state = checkpointing.trained_state(accelerator.unwrap_model(model))
                    if accelerator.is_main_process:
                        checkpointing.save_best_weights(output, best_state)
            history.append(record)
            running = LossMeans()
            if accelerator.is_main_process:
                _log_epoch(output, record)
        if cfg.save_steps and (step % cfg.save_steps == 0 or step == total_steps):
            _save(accelerator, output, step, model, processor, optimizer, scheduler, history, running, cfg)
    progress.close()
    divergence.check_weights(accelerator.unwrap_model(model), step)

    if best_state is not None:  # early stopping: the best validation epoch's weights (and its BatchNorm statistics)
        accelerator.unwrap_model(model).load_state_dict(best_state, strict=False)
    elif cfg.recalibrate_batch_norm:
        recalibrate_batch_norm(accelerator.unwrap_model(model), train_split, cfg.batch_size, accelerator.device)
    metrics = _gathered_metrics(accelerator, model, processor, test_split)
    metrics.update(dataset=cfg.dataset, protocol=cfg.protocol, fold=cfg.fold, steps=step, seed=cfg.seed,
                   data_seed=cfg.data_seed, init_from=None if start is None else str(start),
                   train_samples=len(train_split), replayed_per_epoch=replay_draws, frozen_vision_blocks=frozen_blocks,
                   test_samples=len(test_split), world_size=world,
                   parameters_in_sync=_parameters_in_sync(accelerator, model),
                   train_seconds=time.perf_counter() - started)  # fmt: skip
    train_metrics = _gathered_metrics(accelerator, model, processor, train_split)
    metrics["train_metrics"] = {key: value for key, value in train_metrics.items()
                                if key in ("accuracy", "macro_f1", "mean_f1")}  # fmt: skip
    if validation_split is not None:
        best = best_validation(history, validation_key)
        metrics["validation"] = {validation_metric: best[validation_key],
                                 "best_epoch": best["epoch"], "subjects": sorted(set(validation_split.subjects)),
                                 "samples": len(validation_split)}  # fmt: skip
    if "eval" in splits:
        metrics["cross_dataset"] = _gathered_metrics(accelerator, model, processor, splits["eval"])
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output / "model")
        processor.save_pretrained(output / "model")
        write_metrics(metrics, output)
        (output / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    accelerator.wait_for_everyone()
    return metrics


def epoch_order(seed: int, epoch: int, size: int, pool_size: int = 0, pool_draws: int = 0, subjects=None,
                scans_per_person: int = 1) -> np.ndarray:
    """The shuffled sample indices of one epoch: every training sample (0 .. size-1) once, plus `pool_draws`
    replayed samples (size .. size+pool_size-1) drawn afresh each epoch, without repeats while the pool has enough.
    With `scans_per_person` above 1 the epoch is a shuffle of runs of that many scans of one person (`subjects` names
    each sample's): each person's scans are shuffled and cut into runs, the replayed ones from the pool's people."""
    rng = np.random.default_rng([seed, epoch])
    if scans_per_person > 1:
        runs = _person_runs(rng, range(size), subjects, scans_per_person)
        pool = _person_runs(rng, range(size, size + pool_size), subjects, scans_per_person)
        drawn = 0
        while pool and drawn < pool_draws:
            for run in (pool[i] for i in rng.permutation(len(pool))):
                runs.append(run[: pool_draws - drawn])
                drawn += len(runs[-1])
                if drawn == pool_draws:
                    break
        return np.concatenate([runs[i] for i in rng.permutation(len(runs))])
    if not pool_draws:
        return rng.permutation(size)
    drawn = size + rng.choice(pool_size, size=pool_draws, replace=pool_draws > pool_size)
    return rng.permutation(np.concatenate([np.arange(size), drawn]))


def _person_runs(rng, indices, subjects, length: int) -> list:
    """`indices` grouped by their person in `subjects`, each person's shuffled and cut into runs of `length`."""
    people = {}
    for index in indices:
        people.setdefault(subjects[index], []).append(index)
    runs = []
    for scans in people.values():
        scans = rng.permutation(scans)
        runs += [scans[start : start + length] for start in range(0, len(scans), length)]
    return runs


def best_validation(history: list, key: str) -> dict | None:
    """The epoch record with the best validation score `key` (the first of equals), or None before any was scored."""
    scored = [record for record in history if key in record]
    return max(scored, key=lambda record: record[key]) if scored else None


def _validation_metrics(accelerator, model, processor, train_split, validation_split, cfg) -> dict:
    """The validation people's metrics as the model would be tested now: with its BatchNorm statistics re-estimated
    on the clean training split first, when the run does that at its end."""
    if cfg.recalibrate_batch_norm:
        recalibrate_batch_norm(accelerator.unwrap_model(model), train_split, cfg.batch_size, accelerator.device)
    return _gathered_metrics(accelerator, model, processor, validation_split)


def trained_scalars(model) -> dict:
    """The scalars of the method as they act: the logit scale exp(s), the L_gf margin and the pooling temperatures
    (logged every epoch, so that a scalar that does not move shows)."""
    facet = model.base_model
    scale = facet.logit_scale.exp().clamp(max=model.config.logit_scale_max)
    values = {"logit_scale": scale.item(), "margin": torch.sigmoid(model.margin_raw).item()}
    for name, module in (("cvsa", facet.cvsa), ("temporal", facet.temporal)):
        if getattr(module, "pooling", None) is not None:
            values[f"{name}_temperature"] = module.pooling.log_temperature.exp().item()
    return values


@torch.no_grad()
def recalibrate_batch_norm(model, split: ExpressionSplit, batch_size: int, device) -> None:
    """Re-estimate every BatchNorm's running statistics as the average over `split`'s clean pixels (real frames
    only), weights unchanged. A short run's momentum averages still hold the initial statistics, and those of
    augmented pixels: whole 4D sequences (36 steps) were at chance until recalibrated."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta, was_training = [norm.momentum for norm in norms], model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    model.train()
    for start in range(0, len(split), batch_size):
        batch = split.batch(range(start, min(start + batch_size, len(split))), device=device)
        pixels = batch["pixel_values"]
        if "frame_mask" in batch:
            pixels = pixels[batch["frame_mask"]]
        model.base_model.get_view_features(pixels.to(model.dtype))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


def _gathered_metrics(accelerator, model, processor, split: ExpressionSplit) -> dict:
    """Metrics over the whole split with each rank predicting its share (gathered across processes)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    shard = split.subset(list(range(rank, len(split), world)))
    unwrapped = accelerator.unwrap_model(model)
    prompts = processor(labels=split.label_names, return_tensors="pt")
    logits = torch.from_numpy(predict(unwrapped, shard, dict(prompts), device=accelerator.device))
    labels = shard.labels.float() if split.multi_label else shard.labels
    order = torch.arange(rank, len(split), world)
    logits, labels, order = (accelerator.gather_for_metrics(t.to(accelerator.device).contiguous(), use_gather_object=False)
                             for t in _pad_to_equal((logits, labels, order), world, len(split)))  # fmt: skip
    keep = order >= 0
    permutation = order[keep].argsort()
    logits, labels = logits[keep][permutation].cpu().numpy(), labels[keep][permutation].cpu().numpy()
    return compute_metrics(*decisions(logits, labels.astype(np.int64), split), split.label_names)


def _parameters_in_sync(accelerator, model) -> bool:
    """True when every process holds the same weights (the check that gradients were all-reduced)."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = accelerator.gather(checksum.to(accelerator.device))
    return bool(torch.all(gathered == gathered[0]))


def _pad_to_equal(tensors, world: int, total: int):
    """Pad each rank's share to the same length (gather needs equal sizes); padded rows get order -1."""
    size = math.ceil(total / world)
    padded = []
    for tensor in tensors:
        missing = size - tensor.shape[0]
        fill = -1 if tensor.dtype == torch.long and tensor.dim() == 1 else 0
        padded.append(torch.cat([tensor, tensor.new_full((missing, *tensor.shape[1:]), fill)]) if missing else tensor)
    return padded


def _save(accelerator, output, step, model, processor, optimizer, scheduler, history, running, cfg):
    """Checkpoint `step` (after checking that its loss and weights are finite), keeping `save_total_limit`."""
    running_state = running.state(accelerator)
    if running_state:
        divergence.check_loss(dict(zip(LOSS_TERMS, (value / running.steps for value in running_state["sums"]))),
                              step - running.steps + 1, step)  # fmt: skip
    divergence.check_weights(accelerator.unwrap_model(model), step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpointing.save_checkpoint(
            output, step, accelerator.unwrap_model(model), processor, optimizer.optimizer, scheduler.scheduler,
            {"step": step, "history": history, "running": running_state, "config": dataclasses.asdict(cfg)},
        )  # fmt: skip
        checkpointing.prune_checkpoints(output, cfg.save_total_limit)
    accelerator.wait_for_everyone()


def _log_epoch(output: Path, record: dict):
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "epochs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return
    with SummaryWriter(str(output / "tensorboard")) as writer:
        for name, value in record.items():
            if isinstance(value, (int, float)) and name not in ("epoch", "step"):
                writer.add_scalar(name, value, record["step"])


def cross_validate(cfg: TrainConfig) -> dict:
    """Train and evaluate every fold of the protocol; writes per-fold metrics and the mean/std accuracy."""
    folds = []
    for fold in range(cfg.num_folds):
        fold_cfg = dataclasses.replace(cfg, fold=fold, cv=False, output=str(Path(cfg.output) / f"fold-{fold}"))
        folds.append(train(fold_cfg))
    accuracies = [m["accuracy"] for m in folds if "accuracy" in m]
    summary = {"folds": [{"fold": i, **{k: m[k] for k in ("accuracy", "macro_f1", "mean_f1") if k in m}}
                         for i, m in enumerate(folds)],
               "accuracy_mean": float(np.mean(accuracies)) if accuracies else None,
               "accuracy_std": float(np.std(accuracies)) if accuracies else None}  # fmt: skip
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output) / "cv_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv))
    use_idle_cores()  # as many torch threads as the machine has idle cores
    results = cross_validate(cfg) if cfg.cv else train(cfg)
    print(json.dumps({k: v for k, v in results.items() if k != "confusion_matrix"}, indent=2))


if __name__ == "__main__":
    main()

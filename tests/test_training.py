"""Training job, resume, cross-validation, evaluation CLI, HF Trainer fine-tuning and distributed runs (tiny preset,
a few synthetic subjects rendered at 32 px)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpointing
from training.train import TrainConfig, cross_validate, train


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One rendered synthetic dataset (4 subjects, tiny views) shared by the tests of this module."""
    return str(tmp_path_factory.mktemp("cache"))


def tiny_config(output, cache_dir, **overrides) -> TrainConfig:
    values = dict(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, fold=0, preset="tiny",
                  epochs=2, batch_size=8, learning_rate=3e-3, output=str(output), cache_dir=cache_dir, seed=3)  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_train_writes_metrics_and_a_loadable_model(tmp_path, cache_dir):
    metrics = train(tiny_config(tmp_path / "run", cache_dir, test_intensities=[3, 4]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "labels", "confusion_matrix", "per_class_recall"):
        assert key in saved
    assert saved["labels"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert sum(map(sum, saved["confusion_matrix"])) == saved["num_samples"] == 2 * 6 * 2  # 2 subjects x 6 x 2 levels
    assert Path(saved["confusion_matrix_png"]).is_file()
    assert metrics["accuracy"] == saved["accuracy"]
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["loss"] > 0 for e in epochs)

    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor

    model = FacetVLMForExpressionRecognition.from_pretrained(tmp_path / "run" / "model")
    processor = FacetVLMProcessor.from_pretrained(tmp_path / "run" / "model")
    assert model.config.id2label[3] == "happiness"
    assert processor.image_processor.image_size == model.config.image_size


def _killed_after(step):
    """A checkpoint writer that simulates the process dying right after checkpoint `step` is complete."""
    original = checkpointing.save_checkpoint

    def save_then_die(output_dir, saved_step, *args, **kwargs):
        path = original(output_dir, saved_step, *args, **kwargs)
        if saved_step == step:
            raise KeyboardInterrupt(f"killed after checkpoint {step}")
        return path

    return save_then_die


@pytest.mark.parametrize("validation_subjects", [0, 1])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, cache_dir, monkeypatch, validation_subjects):
    """With validation people, the kill falls after the first scored epoch: the resumed run must keep that epoch's
    weights as the best so far."""
    settings = dict(epochs=3, save_steps=2, validation_subjects=validation_subjects)
    uninterrupted = train(tiny_config(tmp_path / "full", cache_dir, **settings))
    monkeypatch.setattr(checkpointing, "save_checkpoint", _killed_after(4))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "killed", cache_dir, **settings))
    monkeypatch.undo()
    assert checkpointing.latest_checkpoint(tmp_path / "killed").name == "checkpoint-4"
    resumed = train(tiny_config(tmp_path / "killed", cache_dir, resume=True, **settings))
    assert resumed["accuracy"] == uninterrupted["accuracy"]
    assert resumed["confusion_matrix"] == uninterrupted["confusion_matrix"]
    from safetensors.torch import load_file

    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    for key, value in full.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)
    if validation_subjects:
        assert resumed["validation"] == uninterrupted["validation"]
        (tmp_path / "killed" / checkpointing.BEST_WEIGHTS_NAME).unlink()
        with pytest.raises(checkpointing.CheckpointError, match="best_validation.safetensors: missing"):
            train(tiny_config(tmp_path / "killed", cache_dir, resume=True, **settings))


def test_partial_checkpoints_are_never_resumed(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()  # no trainer_state.json: incomplete
    (tmp_path / ".checkpoint-6.partial").mkdir()
    complete = tmp_path / "checkpoint-2"
    complete.mkdir()
    (complete / "trainer_state.json").write_text("{}")
    assert checkpointing.latest_checkpoint(tmp_path) == complete


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    checkpointing.save_state_dict(optimizer.state_dict(), tmp_path, "optimizer")
    restored = checkpointing.load_state_dict(tmp_path, "optimizer")
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for key, state in original["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(restored["state"][key][name], value)


def test_cross_validation_writes_every_fold(tmp_path, cache_dir):
    summary = cross_validate(tiny_config(tmp_path / "cv", cache_dir, epochs=1))
    assert [fold["fold"] for fold in summary["folds"]] == [0, 1]
    assert (tmp_path / "cv" / "fold-1" / "metrics.json").is_file()
    saved = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    accuracies = [fold["accuracy"] for fold in saved["folds"]]
    assert saved["accuracy_mean"] == pytest.approx(sum(accuracies) / 2) == summary["accuracy_mean"]


def test_evaluate_cli_reproduces_training_metrics(tmp_path, cache_dir):
    metrics = train(tiny_config(tmp_path / "run", cache_dir, epochs=1))
    from training.cli import main

    main(["evaluate", str(tmp_path / "run" / "model"), "--dataset", "synthetic", "--protocol", "all",
          "--synthetic-subjects", "4", "--num-folds", "2", "--seed", "3", "--cache-dir", cache_dir,
          "--output", str(tmp_path / "eval")])  # fmt: skip
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"])
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: synthetic\nepochs: 7\nmodel_overrides:\n  cvsa: mean\n")
    cfg = TrainConfig.from_yaml(path, epochs=2)
    assert cfg.epochs == 2 and cfg.model_overrides == {"cvsa": "mean"}
    path.write_text("epochs: 3\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="Unknown dataset"):
        TrainConfig(dataset="bu5dfe")


def test_hf_trainer_fine_tunes_a_saved_model(tmp_path):
    from transformers import Trainer, TrainingArguments

    from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMProcessor
    from training.hf_trainer import FacetDataCollator, compute_metrics, prepare_for_trainer

    config = FacetVLMConfig.from_preset("tiny")
    processor = FacetVLMProcessor.from_model_config(config)
    torch.manual_seed(0)
    FacetVLMForExpressionRecognition(config).save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    model = prepare_for_trainer(FacetVLMForExpressionRecognition.from_pretrained(tmp_path / "saved"))

    labels = ["anger", "happiness", "surprise"]
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.randn(3, 3, 5, 32, 32, generator=generator)
    rows = [{"pixel_values": prototypes[i % 3] + 0.3 * torch.randn(3, 5, 32, 32, generator=generator), "label": i % 3}
            for i in range(48)]  # fmt: skip
    args = TrainingArguments(str(tmp_path / "trainer"), per_device_train_batch_size=12, num_train_epochs=6,
                             learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, eval_strategy="no", seed=0)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:12], processing_class=processor,
                      data_collator=FacetDataCollator(processor, labels),
                      compute_metrics=compute_metrics(labels))  # fmt: skip
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    evaluation = trainer.evaluate()
    assert evaluation["eval_accuracy"] > 0.5 and len(evaluation["eval_confusion_matrix"]) == 3


def test_collator_augmentation_and_prompts():
    from modeling_facet import FacetVLMConfig, FacetVLMProcessor
    from training.hf_trainer import FacetDataCollator

    processor = FacetVLMProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    rows = [{"pixel_values": torch.rand(3, 5, 32, 32) * 2 - 1, "expression": i} for i in range(4)]
    plain = FacetDataCollator(processor, ["anger", "disgust", "fear", "happiness"])(rows)
    assert plain["input_ids"].shape[:2] == (4, len(processor.templates)) and "prompt_input_ids" not in plain
    torch.testing.assert_close(plain["pixel_values"], torch.stack([r["pixel_values"] for r in rows]))
    labels = ["anger", "disgust", "fear", "happiness"]
    # The default recipe's augmentation: prompts augmented, pixels untouched (`facet-vlm train` leaves views alone).
    prompted = FacetDataCollator(processor, labels, augment_prompts=True, seed=1)(rows)
    torch.testing.assert_close(prompted["pixel_values"], plain["pixel_values"])
    assert prompted["prompt_input_ids"].shape[0] == 4 and prompted["labels"].tolist() == [0, 1, 2, 3]
    # Each pixel augmentation of `facet-vlm train`, by its TrainConfig name, as train.BatchBuilder applies it.
    for option in ({"augment_views": True}, {"mirror_scans": 1.0}, {"occlude_views": 1.0}):
        augmented = FacetDataCollator(processor, labels, seed=1, **option)(rows)
        assert not torch.allclose(augmented["pixel_values"], plain["pixel_values"]), option
        assert "prompt_input_ids" not in augmented
    mirrored = FacetDataCollator(processor, labels, mirror_scans=1.0)(rows)["pixel_values"]
    torch.testing.assert_close(mirrored, processor.image_processor.mirror_views(plain["pixel_values"]))
    again = FacetDataCollator(processor, labels, occlude_views=0.5, seed=3)
    first = FacetDataCollator(processor, labels, occlude_views=0.5, seed=3)
    torch.testing.assert_close(first(rows)["pixel_values"], again(rows)["pixel_values"])  # runs repeat
    with pytest.raises(ValueError, match="mirror"):  # views without mirror images fail before training
        FacetDataCollator(FacetVLMProcessor.from_model_config(FacetVLMConfig.from_preset("tiny", views=[[30, 0]])),
                          labels, mirror_scans=0.5)  # fmt: skip
    with pytest.raises(KeyError, match="label columns"):
        FacetDataCollator(processor, ["anger"])([{"pixel_values": torch.zeros(3, 5, 32, 32)}])


# Both launchers start two gloo processes on a CPU-only machine (`accelerate launch
# --cpu --num_processes 2` silently starts one).
LAUNCHERS = {
    "torchrun": ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
    "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534"],
}  # fmt: skip


@pytest.mark.skipif(not hasattr(torch.distributed, "is_available") or not torch.distributed.is_available(),
                    reason="torch.distributed is not available")  # fmt: skip
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_sync_and_only_rank_zero_writes(tmp_path, cache_dir, launcher):
    single = train(tiny_config(tmp_path / "warm", cache_dir, max_steps=1))  # renders the data once, one process
    command = [sys.executable, "-m", *LAUNCHERS[launcher],
               "-m", "training.train", "--preset", "tiny", "--dataset", "synthetic", "--protocol", "all",
               "--synthetic-subjects", "4", "--num-folds", "2", "--seed", "3", "--batch-size", "4", "--max-steps", "3",
               "--cache-dir", cache_dir, "--output", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["parameters_in_sync"] is True
    assert metrics["num_samples"] == single["num_samples"]  # every test sample counted once, from both ranks
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.name.startswith("metrics")) == ["metrics.json"]


def test_sequences_train_on_sliding_windows(tmp_path, cache_dir):
    whole = train(tiny_config(tmp_path / "whole", cache_dir, dataset="synthetic4d", max_steps=1))
    windows = train(tiny_config(tmp_path / "windows", cache_dir, dataset="synthetic4d", max_steps=1,
                                window_length=8, window_stride=8))  # fmt: skip
    # Synthetic sequences have 16-32 frames, so each gives 2 to 4 windows of 8, every window an example.
    for key in ("train_samples", "test_samples"):
        assert 2 * whole[key] <= windows[key] <= 4 * whole[key]
    # The windows of a test sequence vote: it is scored once.
    assert whole["num_samples"] == windows["num_samples"] == 2 * 6  # the 2 test subjects' 6 sequences


def test_excluded_words_stay_out_of_the_training_class_prompts():
    from types import SimpleNamespace

    from modeling_facet import FacetVLMConfig, FacetVLMProcessor
    from training.train import BatchBuilder

    processor = FacetVLMProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    cfg = TrainConfig(exclude_words=["disgusted", "joyful"])
    builder = BatchBuilder(cfg, processor, SimpleNamespace(label_names=["disgust", "happiness"]), "cpu")
    prompts = [processor.batch_decode(row, skip_special_tokens=True) for row in builder.class_inputs["input_ids"]]
    assert all("repulsed" in text and "disgusted" not in text for text in prompts[0])
    assert all("happy" in text for text in prompts[1])


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic4d"])
def test_training_pixels_equal_inference_pixels_for_a_non_default_processor(tmp_path, dataset):
    from datasets_scripts.synthetic import SyntheticFaces
    from modeling_facet import FacetMeshImageProcessor
    from training.data import load_splits

    processor = FacetMeshImageProcessor(
        views=[[0, 0], [15, 5]], image_size=16, channels=["depth", "shaded"], face_size=0.5, num_frames=3,
        frame_sampling="window", window_stride=2, image_mean=0.3, image_std=0.2,
    )  # fmt: skip
    cfg = tiny_config(tmp_path / "run", str(tmp_path / "cache"), dataset=dataset, synthetic_subjects=2)
    test = load_splits(cfg, processor, show_progress=False)["test"]
    sequence = dataset == "synthetic4d"
    paths = SyntheticFaces(
        config_name="sequences" if sequence else "scans", cache_dir=cfg.cache_dir, num_subjects=2,
        data_seed=cfg.data_seed, protocol="all", num_folds=2, fold=0, seed=cfg.data_seed,
    )  # fmt: skip
    paths.download_and_prepare()
    rows = paths.as_dataset()["test"].to_list()
    names = paths.info.features["expression"].names
    key = (lambda row: (row["subject"], names[row["expression"]])) if sequence else (
        lambda row: (row["subject"], names[row["expression"]], row["intensity"]))  # fmt: skip
    inputs = {key(row): os.path.dirname(row["frame_paths"][0]) if sequence else row["scan_path"] for row in rows}
    assert len(test) == len(inputs)
    for i in range(len(test)):
        found = (test.subjects[i], test.label_names[int(test.labels[i])])
        found += () if sequence else (int(test.intensities[i]),)
        expected = processor(inputs[found], return_tensors="pt")["pixel_values"][0]
        np.testing.assert_allclose(test.pixel_values[i].float().numpy(), expected.numpy(), atol=2e-2)


def test_the_model_seed_leaves_the_folds_and_the_data_alone(tmp_path, cache_dir):
    """`seed` drives the initialisation and the data order; `data_seed` the folds and the synthetic people, so an
    ablation study can repeat a fold with several model seeds."""
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    first = load_splits(tiny_config(tmp_path, cache_dir, seed=3), processor, show_progress=False)["test"]
    second = load_splits(tiny_config(tmp_path, cache_dir, seed=4), processor, show_progress=False)["test"]
    assert first.subjects == second.subjects
    torch.testing.assert_close(first.pixel_values, second.pixel_values)
    metrics = [train(tiny_config(tmp_path / f"seed-{seed}", cache_dir, seed=seed, max_steps=2)) for seed in (3, 4)]
    assert metrics[0]["data_seed"] == metrics[1]["data_seed"] and metrics[0]["seed"] != metrics[1]["seed"]


def test_batch_norm_statistics_are_recalibrated_on_the_training_split():
    """After training, every BatchNorm holds the exact mean of its inputs over the clean training pixels (a short
    run's momentum averages still hold the initial statistics: 4D whole sequences were at chance because of it)."""
    from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition
    from training.data import ExpressionSplit
    from training.train import recalibrate_batch_norm

    vision = {"model_type": "resnet", "hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8}
    model = FacetVLMForExpressionRecognition(FacetVLMConfig.from_preset("tiny", vision_config=vision))
    pixels = torch.randn(10, 2, 3, 5, 32, 32) * 3 + 1
    frame_mask = torch.tensor([[True, True]] * 5 + [[True, False]] * 5)
    split = ExpressionSplit(pixels.half(), torch.zeros(10, dtype=torch.long), ["anger"], frame_mask)
    first_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first_norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.eval()
    recalibrate_batch_norm(model, split, batch_size=4, device="cpu")
    hook.remove()
    assert not model.training and first_norm.momentum == 0.1
    inputs = torch.cat(seen)
    assert inputs.shape[0] == 15 * 3  # the real frames only, every view
    torch.testing.assert_close(first_norm.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=0.05, atol=0.05)


def test_demo_removes_its_data_cache_unless_told_to_keep_it(tmp_path, monkeypatch, capsys):
    from training import demo

    def fake_train(cfg):  # the real one renders and trains for minutes; this one fills the cache as it would
        scan = Path(cfg.cache_dir) / "downloads" / "synthetic_faces" / "F0001" / "F0001_HA04WH_F3D.wrl"
        scan.parent.mkdir(parents=True)
        scan.write_text("#VRML V2.0 utf8\n")
        (scan.parent / "F0001_HA04WH_F3D.bnd").write_text("1 0 0 0\n")
        (Path(cfg.output) / "model").mkdir(parents=True)
        return dict(accuracy=1.0, macro_f1=1.0, num_samples=1, train_seconds=1.0, labels=["happiness"])

    def fake_pipeline(model_dir):
        return lambda scan, candidate_labels: [{"label": "happiness", "score": 1.0, "scan": scan}]

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "held_out_scan", lambda cfg: (str(next(Path(cfg.cache_dir).rglob("*.wrl"))), "happiness"))
    monkeypatch.setattr(demo, "load_pipeline", fake_pipeline)
    summary = demo.run_demo(tmp_path / "demo", num_subjects=2)
    assert not (tmp_path / "demo" / "cache").exists() and "Removed the data cache" in capsys.readouterr().out
    classified = Path(summary["classified_scan"])  # a copy kept next to the model, with its landmark file
    assert classified.parent == tmp_path / "demo" / "held_out_scan" and classified.is_file()
    assert classified.with_suffix(".bnd").is_file() and summary["prediction"][0]["scan"] == str(classified)
    demo.run_demo(tmp_path / "kept", num_subjects=2, keep_cache=True)
    assert (tmp_path / "kept" / "cache").is_dir()
    demo.run_demo(tmp_path / "shared", num_subjects=2, cache_dir=tmp_path / "my-cache")  # the user's cache stays
    assert (tmp_path / "my-cache" / "downloads").is_dir() and not (tmp_path / "shared" / "cache").exists()


def test_windows_of_one_sequence_vote():
    """A sequence cut into windows is one test example: its windows' logits are averaged into one prediction."""
    from training.data import ExpressionSplit
    from training.evaluate_model import decisions

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])
    split = ExpressionSplit(torch.zeros(5, 1, 1, 1, 1, 1), torch.as_tensor(labels), ["anger", "fear"],
                            subjects=["F001"] * 3 + ["F002"] * 2, metadata=[{}] * 5,
                            groups=["F001/Angry", "F001/Angry", "F001/Angry", "F002/Fear", "F002/Fear"])  # fmt: skip
    predictions, references = decisions(logits, labels, split)
    # F001: mean logits (2/3, 5/6) -> fear; F002: (1/2, 3/2) -> fear.
    np.testing.assert_array_equal(predictions, [1, 1])
    np.testing.assert_array_equal(references, [0, 1])
    assert split.subset([3, 4]).groups == ["F002/Fear", "F002/Fear"]
    predictions, references = decisions(logits, labels, dataclasses.replace(split, groups=None))
    np.testing.assert_array_equal(predictions, [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(references, labels)


def test_sliding_window_splits_know_their_sequences(tmp_path, cache_dir):
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    cfg = tiny_config(tmp_path, cache_dir, dataset="synthetic4d", window_length=8, window_stride=8)
    test = load_splits(cfg, processor, show_progress=False)["test"]
    assert len(set(test.groups)) == 12 < len(test)  # the 2 test subjects' 6 sequences, 2-4 windows each
    whole = load_splits(tiny_config(tmp_path, cache_dir, dataset="synthetic4d"), processor, show_progress=False)
    assert whole["test"].groups is None


def test_validation_subjects_are_carved_from_the_training_side(tmp_path, cache_dir):
    """`validation_subjects` holds training people out (never test people); the validation split is scored like
    the test split (its intensities), and the rest stays for training."""
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    plain = load_splits(tiny_config(tmp_path, cache_dir), processor, show_progress=False)
    cfg = tiny_config(tmp_path, cache_dir, validation_subjects=1, test_intensities=[3, 4])
    splits = load_splits(cfg, processor, show_progress=False)
    held_out = set(splits["validation"].subjects)
    assert len(held_out) == 1 and held_out < set(plain["train"].subjects)
    assert held_out.isdisjoint(splits["train"].subjects) and held_out.isdisjoint(splits["test"].subjects)
    assert set(splits["train"].subjects) | held_out == set(plain["train"].subjects)
    assert set(splits["validation"].intensities.tolist()) == {3, 4}
    assert load_splits(cfg, processor, show_progress=False)["validation"].subjects == splits["validation"].subjects
    with pytest.raises(ValueError, match="validation_subjects=2 leaves no training subject: the training split of "
                                         "synthetic fold 0 has 2 subjects"):
        load_splits(tiny_config(tmp_path, cache_dir, validation_subjects=2), processor, show_progress=False)
    with pytest.raises(ValueError, match="validation_subjects must be 0 or more"):
        tiny_config(tmp_path, cache_dir, validation_subjects=-1)


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path, cache_dir):
    """Each epoch is scored on the validation people; the saved model is the best epoch's, and its validation
    accuracy, measured again on the saved model, is the one recorded for that epoch."""
    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor
    from training.data import load_splits
    from training.evaluate_model import evaluate_split

    cfg = tiny_config(tmp_path / "run", cache_dir, validation_subjects=1, epochs=4, learning_rate=2e-2)
    metrics = train(cfg)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    scores = [record["validation_accuracy"] for record in epochs]
    assert len(scores) == 4 and metrics["validation"]["best_epoch"] == 1 + int(np.argmax(scores))
    assert metrics["validation"]["accuracy"] == max(scores) and metrics["validation"]["subjects"]
    assert (tmp_path / "run" / "best_validation.safetensors").is_file()
    model = FacetVLMForExpressionRecognition.from_pretrained(tmp_path / "run" / "model")
    processor = FacetVLMProcessor.from_pretrained(tmp_path / "run" / "model")
    validation = load_splits(cfg, processor.image_processor, show_progress=False)["validation"]
    again = evaluate_split(model, processor, validation, device="cpu")
    assert again["accuracy"] == pytest.approx(max(scores))


def test_frozen_vision_blocks_keep_their_starting_weights(tmp_path, cache_dir):
    """`freeze_vision_blocks: 2` fine-tunes all but the vision tower's stem and first layer: those keep the starting
    model's weights exactly, while the layer after them moves."""
    from safetensors.torch import load_file

    train(tiny_config(tmp_path / "start", cache_dir, epochs=1))
    train(tiny_config(tmp_path / "tuned", cache_dir, init_from=str(tmp_path / "start" / "model"),
                      freeze_vision_blocks=2))  # fmt: skip
    start, tuned = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("start", "tuned"))
    tower = "facet.vision_towers.0."
    frozen = [key for key in start if key.startswith((tower + "embeddings.", tower + "pre_layrnorm.",
                                                      tower + "encoder.layers.0."))]  # fmt: skip
    trained = [key for key in start if key.startswith(tower + "encoder.layers.1.")]
    assert frozen and trained
    assert all(torch.equal(start[key], tuned[key]) for key in frozen)
    assert not all(torch.equal(start[key], tuned[key]) for key in trained)


def test_a_negative_count_of_frozen_vision_blocks_is_refused():
    with pytest.raises(ValueError, match="freeze_vision_blocks must be 0 or more"):
        TrainConfig(freeze_vision_blocks=-1)


def test_mirrored_training_scans_are_whole_mirrored_faces():
    from modeling_facet import FacetVLMConfig, FacetVLMProcessor
    from training.data import ExpressionSplit
    from training.train import BatchBuilder

    processor = FacetVLMProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    split = ExpressionSplit(torch.rand(4, 3, 5, 32, 32) * 2 - 1, torch.arange(4), ["a", "b", "c", "d"])
    plain = BatchBuilder(TrainConfig(preset="tiny", augment_prompts=False), processor, split, "cpu")([0, 1, 2, 3], 7)
    mirrored = BatchBuilder(TrainConfig(preset="tiny", augment_prompts=False, mirror_scans=1.0), processor, split,
                            "cpu")([0, 1, 2, 3], 7)  # fmt: skip
    torch.testing.assert_close(mirrored["pixel_values"], processor.image_processor.mirror_views(plain["pixel_values"]))
    for wrong in (-0.1, 1.5):
        with pytest.raises(ValueError, match="mirror_scans must be a probability in \\[0, 1\\]"):
            TrainConfig(mirror_scans=wrong)


def test_mirroring_views_without_mirror_images_fails_before_training():
    from modeling_facet import FacetVLMConfig, FacetVLMProcessor
    from training.data import ExpressionSplit
    from training.train import BatchBuilder

    config = FacetVLMConfig.from_preset("tiny", views=[[0, 0], [30, 0]])
    processor = FacetVLMProcessor.from_model_config(config)
    split = ExpressionSplit(torch.rand(2, 2, 5, 32, 32) * 2 - 1, torch.arange(2), ["a", "b"])
    BatchBuilder(TrainConfig(preset="tiny"), processor, split, "cpu")  # no mirroring asked for: any views
    with pytest.raises(ValueError, match=r"no mirror image of view \[30.0, 0.0\]"):
        BatchBuilder(TrainConfig(preset="tiny", mirror_scans=0.5), processor, split, "cpu")


def test_a_split_reaches_float16_without_a_float32_copy_of_all_its_pixels(monkeypatch):
    """Pixels are stored as float32 and held as float16: converting them in bounded chunks keeps a large split (the
    synthetic start's people, replayed) from needing 1.5 times its float32 size in memory at once."""
    import tracemalloc

    import datasets

    from datasets_scripts.registry import DATASETS
    from training import data

    rows, shape = 48, (3, 5, 16, 16)
    pixels = np.random.default_rng(0).standard_normal((rows, *shape)).astype(np.float32)
    features = datasets.Features({"pixel_values": datasets.Array4D(shape=shape, dtype="float32"),
                                  "expression": datasets.Value("int64"), "subject": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"pixel_values": pixels, "expression": [i % 3 for i in range(rows)],
                                          "subject": [f"S{i // 6}" for i in range(rows)]}, features=features)
    monkeypatch.setattr(data, "PIXEL_CHUNK_BYTES", 4 * pixels[0].nbytes)  # 4 rows at a time
    tracemalloc.start()
    split = data._to_split(dataset, DATASETS["synthetic"], ["a", "b", "c"], [0, 1, 2])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert split.pixel_values.dtype == torch.float16
    torch.testing.assert_close(split.pixel_values, torch.from_numpy(pixels).half(), rtol=0, atol=0)
    assert peak < pixels.nbytes / 3, f"converting the pixels peaked at {peak} bytes for {pixels.nbytes} of float32"

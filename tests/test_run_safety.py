"""A training run never loses another run, resumes a different one, trains on non-finite numbers or trips over a
broken checkpoint without naming it (issue 16, items 4, 5 and 9). Tiny preset, a few synthetic subjects at 32 px."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup

from training import checkpointing
from training.checkpointing import CheckpointError
from training.divergence import NonFiniteError
from training.run_folder import OutputFolderError
from training.train import train
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def record_config(folder, cfg, **changes):
    """Leave the record of a run with `cfg`'s settings (and `changes`) in `folder`, as a run does when it starts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_config.json").write_text(json.dumps({**dataclasses.asdict(cfg), **changes}))


# ------------------------------------------------------------------------------------ the output folder (item 4)


def test_a_non_empty_folder_without_a_run_is_refused(tmp_path, cache_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"out: is not empty and holds no FACET-VLM training run.*--overwrite-output"):
        train(tiny_config(tmp_path / "out", cache_dir))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_folder_of_another_run_is_refused_naming_the_settings(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "out", cache_dir)
    record_config(tmp_path / "out", cfg, epochs=12, seed=7)
    with pytest.raises(OutputFolderError, match=r"holds a different training run: epochs \(12 there, 2 now\), "
                                                r"seed \(7 there, 3 now\).*--overwrite-output"):  # fmt: skip
        train(cfg)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "out", cache_dir, resume=True)
    record_config(tmp_path / "out", cfg, batch_size=16, learning_rate=0.01)
    with pytest.raises(OutputFolderError, match=r"--resume: the run there has other settings: batch_size \(16 there, "
                                                r"8 now\), learning_rate \(0.01 there, 0.003 now\)"):  # fmt: skip
        train(cfg)


def test_resume_ignores_settings_that_do_not_change_the_run(tmp_path, cache_dir):
    from training import run_folder

    cfg = tiny_config(tmp_path / "out", cache_dir, resume=True, save_steps=5, num_proc=2)
    record_config(tmp_path / "out", cfg, save_steps=2, num_proc=1, cache_dir="/elsewhere", resume=False)
    assert run_folder.differing_settings(json.loads((tmp_path / "out" / "train_config.json").read_text()), cfg) == []


def test_a_new_run_replaces_an_older_runs_checkpoints_only_when_told(tmp_path, cache_dir):
    """The older run's checkpoints have higher steps: before, pruning deleted every checkpoint of the new run and
    --resume then continued the old one."""
    out = tmp_path / "out"
    train(tiny_config(out, cache_dir, epochs=3, save_steps=6))
    assert checkpointing.latest_checkpoint(out).name == "checkpoint-18"
    with pytest.raises(OutputFolderError, match=r"epochs \(3 there, 1 now\)"):
        train(tiny_config(out, cache_dir, epochs=1, save_steps=3))
    train(tiny_config(out, cache_dir, epochs=1, save_steps=3, overwrite_output=True))
    steps = sorted(int(path.name.split("-")[1]) for path in out.glob("checkpoint-*"))
    assert steps == [3, 6]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["config"]["epochs"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "epochs.jsonl").read_text().splitlines()] == [1]


def test_the_same_run_again_reuses_its_folder_but_not_its_checkpoints(tmp_path, cache_dir):
    out = tmp_path / "out"
    cfg = tiny_config(out, cache_dir, epochs=1)
    record_config(out, cfg)
    (out / "epochs.jsonl").write_text('{"epoch": 1, "loss": 9.0}\n')
    (out / "cache").mkdir()
    from training import run_folder

    run_folder.prepare_output_folder(cfg)  # the same settings: a rerun (`facet-vlm demo` twice)
    assert not (out / "epochs.jsonl").exists() and (out / "cache").is_dir()
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"step": 3, "config": dataclasses.asdict(cfg)}))
    with pytest.raises(OutputFolderError, match=r"holds checkpoints of this run \(up to step 3\): pass --resume"):
        run_folder.prepare_output_folder(cfg)


# --------------------------------------------------------------------------------- non-finite numbers (item 5)


def test_a_non_finite_loss_stops_the_run_before_anything_is_saved(tmp_path, cache_dir, monkeypatch):
    from modeling_facet import FacetVLMForExpressionRecognition

    forward = FacetVLMForExpressionRecognition.forward

    def nan_loss(self, *args, **kwargs):
        outputs = forward(self, *args, **kwargs)
        if outputs.loss is not None:  # training; evaluation passes no labels
            outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(FacetVLMForExpressionRecognition, "forward", nan_loss)
    with pytest.raises(NonFiniteError, match=r"the training loss is nan at step 1"):
        train(tiny_config(tmp_path / "out", cache_dir, save_steps=1))
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "model").exists()
    assert checkpointing.latest_checkpoint(tmp_path / "out") is None


def test_non_finite_weights_are_never_saved(tmp_path, cache_dir, monkeypatch):
    step = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    with pytest.raises(NonFiniteError, match=r"non-finite weights at step 1 .*\(1 tensor"):
        train(tiny_config(tmp_path / "out", cache_dir, max_steps=1))
    assert not (tmp_path / "out" / "model").exists()


# ----------------------------------------------------------------------------------- broken checkpoints (item 9)


@pytest.fixture
def saved_checkpoint(tmp_path):
    """A checkpoint of the tiny model after one AdamW step, and fresh model/optimizer/scheduler to load it into."""
    from tests.test_pipeline import save_tiny_model

    def parts():
        model, processor = save_tiny_model(tmp_path / "model")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, processor, optimizer, get_cosine_schedule_with_warmup(optimizer, 1, 10)

    model, processor, optimizer, scheduler = parts()
    model.train()
    model(**{"pixel_values": torch.rand(2, model.config.num_views, 5, model.config.image_size, model.config.image_size),
             "input_ids": torch.randint(5, 50, (6, 8)), "labels": torch.tensor([0, 1])}).loss.backward()  # fmt: skip
    optimizer.step()
    scheduler.step()
    state = {"step": 1, "history": [], "running": {"loss": 1.5, "steps": 1}, "config": {}}
    folder = checkpointing.save_checkpoint(tmp_path / "run", 1, model, processor, optimizer, scheduler, state)
    return folder, parts


def test_a_verified_checkpoint_loads(saved_checkpoint):
    folder, parts = saved_checkpoint
    model, _, optimizer, scheduler = parts()
    state = checkpointing.load_checkpoint(folder, model, optimizer, scheduler)
    assert state["step"] == 1 and state["running"] == {"loss": 1.5, "steps": 1}
    saved = load_file(folder / "model.safetensors")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    assert scheduler.last_epoch == 1


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _nan_weights(path):
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, path)


def _drop_weight(path):
    tensors = load_file(path)
    del tensors[sorted(tensors)[-1]]
    save_file(tensors, path)


def _reshape_weight(path):
    tensors = load_file(path)
    name = next(name for name in sorted(tensors) if tensors[name].dim() == 2)
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, path)


def _drop_key(key):
    def corrupt(path):
        values = json.loads(path.read_text())
        del values[key]
        path.write_text(json.dumps(values))

    return corrupt


@pytest.mark.parametrize(
    "file, corrupt, problem",
    [
        ("model.safetensors", _truncate, "cannot be read"),
        ("model.safetensors", _nan_weights, "non-finite values in 1 tensor"),
        ("model.safetensors", _drop_weight, "missing 1 weight"),
        ("model.safetensors", _reshape_weight, "has shape"),
        ("optimizer.safetensors", _truncate, "cannot be read"),
        ("optimizer.json", lambda path: path.write_text("{"), "cannot be read"),
        ("scheduler.json", _drop_key("lr_lambdas"), "missing 'lr_lambdas'"),
        ("trainer_state.json", lambda path: path.write_text("{'step'"), "cannot be read"),
        ("trainer_state.json", _drop_key("history"), "missing 'history'"),
    ],
    ids=["weights-truncated", "weights-nan", "weights-missing", "weights-shape", "optimizer-truncated",
         "optimizer-json", "scheduler-key", "state-json", "state-key"],  # fmt: skip
)
def test_a_broken_checkpoint_file_is_named(saved_checkpoint, file, corrupt, problem):
    folder, parts = saved_checkpoint
    corrupt(folder / file)
    model, _, optimizer, scheduler = parts()
    with pytest.raises(CheckpointError) as raised:
        checkpointing.load_checkpoint(folder, model, optimizer, scheduler)
    assert raised.value.path == str(folder / file) and problem in raised.value.problem


def _die_before_saving(step):
    """A checkpoint writer that simulates the process dying just before checkpoint `step` is written."""
    original = checkpointing.save_checkpoint

    def save_or_die(output_dir, saved_step, *args, **kwargs):
        if saved_step == step:
            raise KeyboardInterrupt(f"killed before checkpoint {step}")
        return original(output_dir, saved_step, *args, **kwargs)

    return save_or_die


def test_resume_falls_back_to_the_last_good_checkpoint_and_logs_every_epoch_once(tmp_path, cache_dir, monkeypatch, capsys):
    """6 steps per epoch, checkpoints every 4: killed at step 8, after epoch 1 was logged at step 6 but before its
    second checkpoint; the newest checkpoint is also broken, so the run resumes from an older one, mid-epoch."""
    settings = dict(epochs=2, save_steps=2, save_total_limit=3)
    full = tmp_path / "full"
    train(tiny_config(full, cache_dir, **settings))
    killed = tmp_path / "killed"
    monkeypatch.setattr(checkpointing, "save_checkpoint", _die_before_saving(8))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(killed, cache_dir, **settings))
    monkeypatch.undo()
    assert [path.name for path in sorted(killed.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    _truncate(killed / "checkpoint-6" / "model.safetensors")
    train(tiny_config(killed, cache_dir, resume=True, **settings))
    printed = capsys.readouterr()
    assert f"{killed / 'checkpoint-6' / 'model.safetensors'}" in printed.out + printed.err
    assert f"Resumed from {killed / 'checkpoint-4'} at step 4" in printed.out + printed.err

    def losses(folder):
        return [(record["epoch"], record["loss"]) for record in map(json.loads, (folder / "epochs.jsonl").read_text().splitlines())]

    assert losses(killed) == losses(full) and [epoch for epoch, _ in losses(full)] == [1, 2]
    assert all(math.isfinite(loss) for _, loss in losses(full))

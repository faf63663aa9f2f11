"""The default start of a benchmark run: the synthetic-pretrained model, built once into the HF cache and reused."""

import dataclasses
import json

import pytest
import yaml

from training import pretraining
from training.config import TrainConfig
from training.train import train


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    """A seconds-long pretraining recipe and an empty cache of pretrained models."""
    recipe = tmp_path / "pretraining.yaml"
    recipe.write_text(yaml.safe_dump(dict(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2,
                                          fold=0, max_steps=2, batch_size=8, seed=5)))  # fmt: skip
    monkeypatch.setattr(pretraining, "PRETRAINING_CONFIG", recipe)
    monkeypatch.setattr(pretraining, "cache_root", lambda: tmp_path / "hf-home" / "facet-vlm")
    return recipe


def _benchmark_run(tmp_path, **settings) -> TrainConfig:
    return TrainConfig(dataset="bu3dfe", data_dir=str(tmp_path), preset="tiny", output=str(tmp_path / "run"),
                       **settings)  # fmt: skip


def test_a_benchmark_run_starts_from_the_synthetic_model_built_once_and_then_reused(tmp_path, tiny_recipe):
    built = []

    def pretrain(cfg):
        built.append(cfg)
        return train(cfg)

    first = pretraining.starting_checkpoint(_benchmark_run(tmp_path), pretrain=pretrain)
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert first.is_relative_to(pretraining.cache_root())
    recipe = built[0]
    assert (recipe.dataset, recipe.preset, recipe.max_steps, recipe.init_from) == ("synthetic", "tiny", 2, "none")
    record = json.loads((first.parent / "pretraining.json").read_text())
    assert record["recipe"]["synthetic_subjects"] == 4 and 0 <= record["metrics"]["accuracy"] <= 1
    assert not any(first.parent.glob("cache")), "the pretraining's data cache is removed"

    def must_not_run(cfg):
        raise AssertionError("the cached model is rebuilt")

    assert pretraining.starting_checkpoint(_benchmark_run(tmp_path), pretrain=must_not_run) == first
    explicit = _benchmark_run(tmp_path, init_from="synthetic")
    assert pretraining.starting_checkpoint(explicit, pretrain=must_not_run) == first
    other = _benchmark_run(tmp_path, model_overrides={"projection_dim": 16})
    assert pretraining.pretrained_folder(other) != first.parent, "another architecture gets its own model"


def test_another_generator_version_gets_its_own_pretrained_model(monkeypatch):
    cfg = TrainConfig(preset="tiny")
    before = pretraining.pretrained_folder(cfg)
    monkeypatch.setattr(pretraining, "GENERATOR_VERSION", pretraining.GENERATOR_VERSION + 1)
    assert pretraining.pretrained_folder(cfg) != before


def test_scratch_synthetic_and_explicit_starts_build_nothing(tmp_path, tiny_recipe):
    def must_not_run(cfg):
        raise AssertionError("pretraining ran")

    assert pretraining.starting_checkpoint(_benchmark_run(tmp_path, init_from="none"), pretrain=must_not_run) is None
    synthetic = TrainConfig(dataset="synthetic4d", preset="tiny")  # the generator is the pretraining data already
    assert pretraining.starting_checkpoint(synthetic, pretrain=must_not_run) is None
    given = _benchmark_run(tmp_path, init_from="some/model")
    assert pretraining.starting_checkpoint(given, pretrain=must_not_run) == "some/model"
    for towers in (dict(pretrained="a/model"), dict(vision_pretrained="v", text_pretrained="t")):
        assert pretraining.starting_checkpoint(_benchmark_run(tmp_path, **towers), pretrain=must_not_run) is None


def test_a_multi_process_run_does_not_build_the_model_itself(tmp_path, tiny_recipe, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FileNotFoundError, match="facet-vlm pretrain --preset tiny"):
        pretraining.starting_checkpoint(_benchmark_run(tmp_path), pretrain=train)


def test_pretrain_command_prints_the_cached_model(tmp_path, tiny_recipe, capsys):
    from training.cli import main

    main(["pretrain", "--preset", "tiny"])
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder == str(pretraining.pretrained_folder(TrainConfig(preset="tiny")) / "model")


def test_a_run_records_where_it_started(tmp_path, tiny_recipe):
    cache_dir = str(tmp_path / "data")
    metrics = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=8, init_from="synthetic", output=str(tmp_path / "run"),
                                cache_dir=cache_dir))  # fmt: skip
    assert metrics["init_from"] == str(pretraining.pretrained_folder(TrainConfig(preset="tiny")) / "model")
    scratch = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=8, output=str(tmp_path / "scratch"), cache_dir=cache_dir))
    assert scratch["init_from"] is None


def test_the_gain_benchmark_pairs_every_arm_with_the_default_command(tmp_path, tiny_recipe, monkeypatch):
    from benchmarks import pretraining_gain
    from benchmarks.report import pretraining_markdown

    command = pretraining_gain.target_config
    monkeypatch.setattr(pretraining_gain, "target_config", lambda *args: dataclasses.replace(
        command(*args), preset="tiny", max_steps=2, batch_size=8))  # fmt: skip
    with pytest.raises(ValueError, match=r"Unknown arms \['bogus'\]"):
        pretraining_gain.run(quick=True, arms=["bogus"])
    results = pretraining_gain.run(quick=True, arms=["scratch", "l_gf"], work_dir=tmp_path / "work",
                                   output=tmp_path / "gain.json", target_seed=3)  # fmt: skip
    assert list(results["arms"]) == ["default", "scratch", "l_gf", "depth_cnn"]
    for summary in results["arms"].values():
        assert len(summary["runs"]) == 1 and 0 <= summary["mean"] <= 1 and 0 <= summary["train_mean"] <= 1
    assert results["arms"]["scratch"]["paired_difference"]["pairs"] == 1
    assert results["settings"]["target_generator"]["shape_family"] == "c", "the pretraining saw families a and b"
    assert results["settings"]["target_seed"] == results["settings"]["target_generator"]["seed"] == 3
    assert json.loads((tmp_path / "gain.json").read_text())["arms"].keys() == results["arms"].keys()
    zero_shot = results["zero_shot"]
    assert list(zero_shot) == ["pretrained", "default"], "the start before fine-tuning, and the default command's model"
    for summary in zero_shot.values():
        assert list(summary["accuracy"]) == list(pretraining_gain.WORD_SETS)
        assert all(0 <= value <= 1 for value in summary["accuracy"].values()) and len(summary["runs"]) == 1
    default_run = results["arms"]["default"]["runs"][0]
    assert zero_shot["default"]["runs"][0]["label_names"] == pytest.approx(default_run["value"]), "the same prompts"
    table = "\n".join(pretraining_markdown(results))
    assert "| `--init-from none` (from scratch) |" in table and "quick mode" in table
    assert "fold 0 of 2, model seeds 1-1" in table and "seed 3)" in table
    assert "| the default command's model |" in table and "irate" in table


def test_unseen_zero_shot_words_are_outside_the_prompt_vocabulary():
    from benchmarks import pretraining_gain
    from modeling_facet.prompts import SYNONYMS

    vocabulary = {word for words in SYNONYMS.values() for word in words}
    unseen = pretraining_gain.WORD_SETS["unseen_words"]
    assert set(unseen) == {"anger", "disgust", "fear", "happiness", "sadness", "surprise"}
    assert not set(unseen.values()) & vocabulary
    assert set(pretraining_gain.WORD_SETS["prompt_table_synonyms"].values()) <= vocabulary

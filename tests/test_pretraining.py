"""The default start of a benchmark run: the synthetic-pretrained model, built once into the HF cache and reused."""

import dataclasses
import json

import numpy as np
import pytest
import torch
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
    monkeypatch.setattr(pretraining, "PRETRAINING_SUBJECTS", 4)
    monkeypatch.setattr(pretraining, "cache_root", lambda: tmp_path / "hf-home" / "facet-vlm")
    return recipe


@pytest.fixture
def pretraining_gain(monkeypatch):
    """The gain benchmark with its target command on the tiny preset, two steps a run."""
    from benchmarks import pretraining_gain

    command = pretraining_gain.target_config
    monkeypatch.setattr(pretraining_gain, "target_config", lambda *args: dataclasses.replace(
        command(*args), preset="tiny", max_steps=2, batch_size=8))  # fmt: skip
    return pretraining_gain


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


def test_the_pretraining_recipe_trains_every_vision_block():
    """The recipe says so itself (the 4D default's `freeze_vision_blocks: None` would also resolve to 0 for it), so
    its settings, and with them the cache folders of the starts already built, did not change with that default."""
    assert pretraining.pretraining_config(TrainConfig(preset="tiny")).freeze_vision_blocks == 0


def test_the_default_start_learns_from_300_synthetic_people_and_is_the_start_that_asking_for_300_builds():
    """The main job trains on 100 people; the start has 3 times as many, and a start built before with
    `--pretraining-subjects 300` is the default one (the same settings, so the same cache folder)."""
    from training.config import DEMO_CONFIG

    default = TrainConfig(preset="tiny")
    assert pretraining.PRETRAINING_SUBJECTS == 300
    assert pretraining.pretraining_config(default).synthetic_subjects == 300
    assert TrainConfig.from_yaml(DEMO_CONFIG).synthetic_subjects == 100, "the main job keeps its 100 people"
    assert pretraining.pretrained_folder(default) == pretraining.pretrained_folder(
        dataclasses.replace(default, pretraining_subjects=300))  # fmt: skip
    fewer = dataclasses.replace(default, pretraining_subjects=100)
    assert pretraining.pretraining_config(fewer).synthetic_subjects == 100
    assert pretraining.pretrained_folder(fewer) != pretraining.pretrained_folder(default)


def test_more_pretraining_people_build_their_own_start_which_replay_then_draws(tmp_path, tiny_recipe):
    """`pretraining_subjects` pretrains the start on that many synthetic people instead of `PRETRAINING_SUBJECTS`,
    into its own cache folder, and replay draws from those people."""
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig

    built = []

    def pretrain(cfg):
        built.append(cfg.synthetic_subjects)
        return train(cfg)

    default, larger = _benchmark_run(tmp_path), _benchmark_run(tmp_path, pretraining_subjects=6)
    assert pretraining.pretraining_config(default).synthetic_subjects == 4, "None: PRETRAINING_SUBJECTS"
    start = pretraining.starting_checkpoint(larger, pretrain=pretrain)
    assert built == [6] and start == pretraining.pretrained_folder(larger) / "model"
    assert pretraining.pretrained_folder(larger) != pretraining.pretrained_folder(default)
    record = json.loads((start.parent / "pretraining.json").read_text())
    assert record["recipe"]["synthetic_subjects"] == 6
    assert pretraining.replay_per_scan(larger, start, _target_split(["anger"])) == 1.0, "its own start replays"
    assert pretraining.replay_per_scan(default, start, _target_split(["anger"])) == 0.0, "not the recipe's start"
    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    larger = dataclasses.replace(larger, cache_dir=str(tmp_path / "data"))
    replayed = pretraining.replay_split(larger, processor, _target_split(["anger", "happiness"])).subjects
    assert len(set(replayed)) == 3, "the training people (3 of 6 with 2 folds) of the larger pretraining"
    with pytest.raises(ValueError, match="pretraining_subjects must be 1 or more"):
        TrainConfig(pretraining_subjects=0)


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
    with pytest.raises(FileNotFoundError, match="facet-vlm pretrain --preset tiny --pretraining-subjects 6`"):
        pretraining.starting_checkpoint(_benchmark_run(tmp_path, pretraining_subjects=6), pretrain=train)


def test_pretrain_command_prints_the_cached_model(tmp_path, tiny_recipe, capsys):
    from training.cli import main

    main(["pretrain", "--preset", "tiny"])
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder == str(pretraining.pretrained_folder(TrainConfig(preset="tiny")) / "model")
    main(["pretrain", "--preset", "tiny", "--pretraining-subjects", "6"])
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder == str(pretraining.pretrained_folder(TrainConfig(preset="tiny", pretraining_subjects=6)) / "model")


def test_a_run_records_where_it_started(tmp_path, tiny_recipe):
    cache_dir = str(tmp_path / "data")
    metrics = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=8, init_from="synthetic", output=str(tmp_path / "run"),
                                cache_dir=cache_dir))  # fmt: skip
    assert metrics["init_from"] == str(pretraining.pretrained_folder(TrainConfig(preset="tiny")) / "model")
    scratch = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=8, output=str(tmp_path / "scratch"), cache_dir=cache_dir))
    assert scratch["init_from"] is None


def test_the_gain_benchmark_pairs_every_arm_with_the_default_command(tmp_path, tiny_recipe, pretraining_gain,
                                                                      monkeypatch):
    from benchmarks.report import pretraining_markdown

    with pytest.raises(ValueError, match=r"Unknown arms \['bogus'\]"):
        pretraining_gain.run(quick=True, arms=["bogus"])
    (tmp_path / "work" / "bu3dfe" / "F0001").mkdir(parents=True)  # a killed run's partial tree: written again
    other_people = pretraining_gain.ARMS["pretraining_100_people"]
    assert other_people[1] == {"pretraining_subjects": 100, "init_from": "auto"}
    monkeypatch.setitem(pretraining_gain.ARMS, "pretraining_100_people", (other_people[0], {
        "pretraining_subjects": 6, "init_from": "auto"}))  # fmt: skip
    results = pretraining_gain.run(quick=True, arms=["scratch", "l_gf", "pretraining_100_people"],
                                   work_dir=tmp_path / "work", output=tmp_path / "gain.json", target_seed=3)
    assert list(results["arms"]) == ["default", "scratch", "l_gf", "pretraining_100_people", "depth_cnn"]
    starts = [path.name for path in (pretraining.cache_root() / "synthetic-pretrained").iterdir() if path.is_dir()]
    assert len(starts) == 2, f"the other start is built beside the default one: {starts}"
    for summary in results["arms"].values():
        assert len(summary["runs"]) == 1 and 0 <= summary["mean"] <= 1 and 0 <= summary["train_mean"] <= 1
    assert results["arms"]["scratch"]["paired_difference"]["pairs"] == 1
    assert results["settings"]["target_generator"]["shape_family"] == "c", "the pretraining saw families a and b"
    assert results["settings"]["target_generator"]["seed"] == 3 and "target_seed" not in results["settings"], \
        "the seed has one home, the generator's settings"
    assert json.loads((tmp_path / "gain.json").read_text())["arms"].keys() == results["arms"].keys()
    zero_shot = results["zero_shot"]
    assert list(zero_shot) == ["pretrained", "default", "scratch", "l_gf", "pretraining_100_people"], \
        "the start, then every arm's models"
    for summary in zero_shot.values():
        assert list(summary["accuracy"]) == list(pretraining_gain.WORD_SETS)
        assert all(0 <= value <= 1 for value in summary["accuracy"].values()) and len(summary["runs"]) == 1
    for arm in ("default", "scratch", "l_gf", "pretraining_100_people"):
        run = results["arms"][arm]["runs"][0]
        assert zero_shot[arm]["runs"][0]["label_names"] == pytest.approx(run["value"]), f"{arm}: the same prompts"
    table = "\n".join(pretraining_markdown(results))
    assert "| `--init-from none` (from scratch) |" in table and "quick mode" in table
    assert "fold 0 of 2, model seeds 1-1" in table and "seed 3)" in table
    assert table.count("| `--init-from none` (from scratch) |") == 2, "its accuracy row and its zero-shot row"
    assert "| the synthetic-pretrained start, not fine-tuned |" in table and "irate" in table


def test_unseen_zero_shot_words_are_outside_the_prompt_vocabulary():
    from benchmarks import pretraining_gain
    from modeling_facet.prompts import SYNONYMS

    vocabulary = {word for words in SYNONYMS.values() for word in words}
    unseen = pretraining_gain.WORD_SETS["unseen_words"]
    assert set(unseen) == {"anger", "disgust", "fear", "happiness", "sadness", "surprise"}
    assert not set(unseen.values()) & vocabulary
    assert set(pretraining_gain.WORD_SETS["prompt_table_synonyms"].values()) <= vocabulary


def _target_split(label_names, labels=None, frame_mask=None):
    from training.data import ExpressionSplit

    labels = torch.arange(len(label_names)) if labels is None else labels
    return ExpressionSplit(torch.zeros(len(labels), 1), labels, list(label_names), frame_mask)


def test_replay_draws_the_pretraining_people_in_the_target_label_space(tmp_path, tiny_recipe):
    """`replay_split` renders the pretraining recipe's training people with the target run's image processor and
    keeps the classes the target shares, labelled as the target labels them."""
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset("tiny"))
    cfg = _benchmark_run(tmp_path, cache_dir=str(tmp_path / "data"))
    replay = pretraining.replay_split(cfg, processor, _target_split(["surprise", "anger"]))
    recipe = dataclasses.replace(pretraining.pretraining_config(cfg), cache_dir=str(tmp_path / "data"))
    pretraining_train = load_splits(recipe, processor, show_progress=False)["train"]
    assert replay.label_names == ["surprise", "anger"] and set(replay.labels.tolist()) == {0, 1}
    assert set(replay.subjects) == set(pretraining_train.subjects), "the people the start was trained on"
    surprise = pretraining_train.label_names.index("surprise")
    assert len(replay) == 2 * int((pretraining_train.labels == surprise).sum())
    assert replay.pixel_values.shape[1:] == pretraining_train.pixel_values.shape[1:]
    with pytest.raises(ValueError, match="bu3dfe: the synthetic pretraining data has none of the classes"):
        pretraining.replay_split(cfg, processor, _target_split(["boredom"]))
    for split, kind in ((_target_split(["AU1", "AU2"], labels=torch.zeros(1, 2)), "multi-hot labels"),
                        (_target_split(["anger"], frame_mask=torch.ones(1, 4, dtype=torch.bool)), "sequences")):
        with pytest.raises(ValueError, match=f"replay_synthetic needs single-label static scans; bu3dfe gives {kind}"):
            pretraining.replay_split(cfg, processor, split)


def test_replayed_scans_join_every_epoch_but_not_the_scores(tmp_path, tiny_recipe):
    """With `replay_synthetic: 1.0` each epoch adds as many pretraining scans as the target has training scans (so
    it has twice the steps); the train and test scores stay on the target's own people."""
    settings = dict(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny", epochs=2,
                    batch_size=4, data_seed=9, cache_dir=str(tmp_path / "data"))  # fmt: skip
    plain = train(TrainConfig(output=str(tmp_path / "plain"), **settings))
    replayed = train(TrainConfig(output=str(tmp_path / "replayed"), replay_synthetic=1.0, **settings))
    assert replayed["train_samples"] == plain["train_samples"] and replayed["test_samples"] == plain["test_samples"]
    assert replayed["replayed_per_epoch"] == plain["train_samples"] and plain["replayed_per_epoch"] == 0
    assert plain["steps"] == 2 * (plain["train_samples"] // 4)
    assert replayed["steps"] == 2 * (2 * plain["train_samples"] // 4)
    with pytest.raises(ValueError, match="replay_synthetic must be 0 or more"):
        TrainConfig(replay_synthetic=-0.5)


def test_by_default_a_run_from_the_synthetic_pretrained_model_replays_its_people_one_per_scan(tmp_path):
    """`replay_synthetic: None` (the default) replays one pretraining scan per training scan when the run starts from
    the synthetic-pretrained model on single-label static scans, and none otherwise; a value given is kept."""
    from modeling_facet import FacetVLMConfig

    cfg = _benchmark_run(tmp_path)
    synthetic_start = pretraining.pretrained_folder(cfg) / "model"
    FacetVLMConfig.from_preset("tiny").save_pretrained(synthetic_start)  # the basic emotions, as pretraining gives
    scans = _target_split(["anger", "fear"])
    assert cfg.replay_synthetic is None
    assert pretraining.replay_per_scan(cfg, synthetic_start, scans) == 1.0
    assert pretraining.replay_per_scan(cfg, str(synthetic_start), scans) == 1.0, "as `--init-from PATH` gives it"
    assert pretraining.replay_per_scan(cfg, None, scans) == 0.0, "from scratch: nothing it learned to keep"
    assert pretraining.replay_per_scan(cfg, tmp_path / "another-model", scans) == 0.0
    for split in (_target_split(["AU1", "AU2"], labels=torch.zeros(1, 2)),
                  _target_split(["anger"], frame_mask=torch.ones(1, 4, dtype=torch.bool))):  # fmt: skip
        assert pretraining.replay_per_scan(cfg, synthetic_start, split) == 0.0, "multi-hot labels and sequences"
    assert pretraining.replay_per_scan(cfg, synthetic_start, _target_split(["boredom", "pain"])) == 0.0, \
        "no class the start learned: nothing to replay, and no error the user did not ask for"
    for given in (0.0, 0.5):
        assert pretraining.replay_per_scan(dataclasses.replace(cfg, replay_synthetic=given), None, scans) == given


def test_by_default_a_4d_run_from_the_synthetic_pretrained_model_keeps_its_vision_tower(tmp_path):
    """`freeze_vision_blocks: None` (the default) freezes every vision block when the run starts from the
    synthetic-pretrained model on sequences, and none otherwise; a count given is kept."""
    from modeling_facet import FacetVLMConfig

    cfg = _benchmark_run(tmp_path)
    synthetic_start = pretraining.pretrained_folder(cfg) / "model"
    FacetVLMConfig.from_preset("tiny").save_pretrained(synthetic_start)
    sequences = _target_split(["anger", "fear"], frame_mask=torch.ones(2, 4, dtype=torch.bool))
    assert cfg.freeze_vision_blocks is None
    assert pretraining.frozen_vision_blocks(cfg, synthetic_start, sequences, tower_blocks=5) == 5
    assert pretraining.frozen_vision_blocks(cfg, str(synthetic_start), sequences, tower_blocks=3) == 3
    assert pretraining.frozen_vision_blocks(cfg, synthetic_start, _target_split(["anger"]), tower_blocks=5) == 0, \
        "static scans fine-tune the whole tower"
    assert pretraining.frozen_vision_blocks(cfg, None, sequences, tower_blocks=5) == 0, "from scratch"
    assert pretraining.frozen_vision_blocks(cfg, tmp_path / "another-model", sequences, tower_blocks=5) == 0
    for given in (0, 2):
        frozen = pretraining.frozen_vision_blocks(dataclasses.replace(cfg, freeze_vision_blocks=given),
                                                  synthetic_start, sequences, tower_blocks=5)  # fmt: skip
        assert frozen == given


def test_a_4d_run_from_the_synthetic_model_trains_all_but_its_vision_tower(tmp_path, tiny_recipe):
    from modeling_facet import FacetVLMForExpressionRecognition
    from modeling_facet.modeling_facet import vision_tower_blocks

    metrics = train(TrainConfig(dataset="synthetic4d", protocol="all", synthetic_subjects=4, num_folds=2,
                                preset="tiny", max_steps=2, batch_size=4, data_seed=9, init_from="synthetic",
                                cache_dir=str(tmp_path / "data"), output=str(tmp_path / "run")))  # fmt: skip
    start, tuned = (FacetVLMForExpressionRecognition.from_pretrained(folder).facet
                    for folder in (metrics["init_from"], tmp_path / "run" / "model"))  # fmt: skip
    blocks = vision_tower_blocks(start.vision_towers[0])
    assert metrics["frozen_vision_blocks"] == len(blocks) and metrics["replayed_per_epoch"] == 0
    kept = [(a, b) for block, tuned_block in zip(blocks, vision_tower_blocks(tuned.vision_towers[0]))
            for a, b in zip(block.parameters(), tuned_block.parameters())]  # fmt: skip
    assert kept and all(torch.equal(a, b) for a, b in kept)
    assert not all(torch.equal(a, b) for a, b in zip(start.temporal.parameters(), tuned.temporal.parameters())), \
        "the temporal transformer, which the start never trained, learns"


def test_the_default_run_from_the_synthetic_model_replays(tmp_path, tiny_recipe):
    metrics = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=4, data_seed=9, init_from="synthetic",
                                cache_dir=str(tmp_path / "data"), output=str(tmp_path / "run")))  # fmt: skip
    assert metrics["replayed_per_epoch"] == metrics["train_samples"]


def test_an_epoch_order_holds_every_training_scan_once_and_fresh_replay_draws():
    from training.train import epoch_order

    plain = epoch_order(seed=3, epoch=1, size=10)
    assert plain.tolist() == np.random.default_rng([3, 1]).permutation(10).tolist(), "no replay: the order as before"
    first, second = (epoch_order(seed=3, epoch=epoch, size=10, pool_size=50, pool_draws=5) for epoch in (0, 1))
    for order in (first, second):
        assert len(order) == 15 and sorted(order[order < 10].tolist()) == list(range(10))
        replayed = order[order >= 10]
        assert len(replayed) == len(set(replayed.tolist())) == 5 and replayed.max() < 60
    assert set(first[first >= 10].tolist()) != set(second[second >= 10].tolist()), "each epoch draws again"
    assert epoch_order(seed=3, epoch=0, size=10, pool_size=50, pool_draws=5).tolist() == first.tolist()


def test_an_epoch_order_in_runs_of_one_persons_scans_holds_every_training_scan_once_and_fresh_replay_runs():
    """With `scans_per_person` k, an epoch is a shuffle of runs of k scans of one person (each person's scans shuffled
    and cut into runs; the replay draws cut from the pool's people alike), so that a batch holds a few expressions of
    each of its people; k = 1 is the plain order."""
    from training.train import epoch_order

    subjects = [f"F{i // 6}" for i in range(30)] + [f"S{i // 10}" for i in range(40)]  # 5 people of 6, 4 of 10
    order = epoch_order(seed=3, epoch=0, size=30, pool_size=40, pool_draws=12, subjects=subjects, scans_per_person=4)
    assert len(order) == 42 and sorted(order[order < 30].tolist()) == list(range(30))
    replayed = order[order >= 30]
    assert len(replayed) == len(set(replayed.tolist())) == 12
    people = [subjects[i] for i in order]
    runs = 1 + sum(a != b for a, b in zip(people, people[1:]))
    assert runs <= 5 * 2 + 3, "each person's 6 scans in runs of 4 and 2, the 12 replayed in 3 runs of 4"
    again = epoch_order(seed=3, epoch=0, size=30, pool_size=40, pool_draws=12, subjects=subjects, scans_per_person=4)
    assert again.tolist() == order.tolist()
    later = epoch_order(seed=3, epoch=1, size=30, pool_size=40, pool_draws=12, subjects=subjects, scans_per_person=4)
    assert later.tolist() != order.tolist()
    plain = epoch_order(seed=3, epoch=0, size=30, pool_size=40, pool_draws=12)
    assert epoch_order(seed=3, epoch=0, size=30, pool_size=40, pool_draws=12, subjects=subjects,
                       scans_per_person=1).tolist() == plain.tolist()  # fmt: skip
    many = epoch_order(seed=3, epoch=0, size=30, pool_size=40, pool_draws=50, subjects=subjects, scans_per_person=4)
    assert len(many) == 80 and set(many[many >= 30].tolist()) == set(range(30, 70)), "a small pool is drawn again"
    with pytest.raises(ValueError, match="scans_per_person must be 1 or more"):
        TrainConfig(scans_per_person=0)


def test_a_run_in_runs_of_one_persons_scans_trains_and_records_them(tmp_path, tiny_recipe):
    metrics = train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                                max_steps=1, batch_size=4, data_seed=9, init_from="synthetic", scans_per_person=4,
                                cache_dir=str(tmp_path / "data"), output=str(tmp_path / "run")))  # fmt: skip
    assert metrics["steps"] == 1
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["scans_per_person"] == 4


def test_a_start_built_before_scans_per_person_keeps_its_cache_folder(tiny_recipe):
    """Settings added after starts were built stay out of a start's hash at the value that repeats the runs from
    before, so that the starts in users' caches stay valid; a recipe with another value gets a start of its own."""
    import hashlib

    cfg = TrainConfig(preset="tiny")
    recipe = pretraining.pretraining_config(cfg)
    assert recipe.scans_per_person == 1
    before = {key: value for key, value in dataclasses.asdict(recipe).items() if key != "scans_per_person"}
    settings = json.dumps({**before, "generator_version": pretraining.GENERATOR_VERSION}, sort_keys=True)
    folder = pretraining.pretrained_folder(cfg)
    assert folder.name == f"tiny-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
    tiny_recipe.write_text(yaml.safe_dump({**yaml.safe_load(tiny_recipe.read_text()), "scans_per_person": 4}))
    assert pretraining.pretrained_folder(cfg) != folder


def test_the_gain_benchmark_measures_the_4d_default_on_bu4dfe_sequences(tmp_path, tiny_recipe, pretraining_gain):
    from benchmarks.report import pretraining_markdown

    with pytest.raises(ValueError, match=r"Unknown layout 'bu5dfe'; choose one of \['bu3dfe', 'bu4dfe'\]"):
        pretraining_gain.run(quick=True, layout="bu5dfe")
    results = pretraining_gain.run(quick=True, layout="bu4dfe", arms=["scratch"], work_dir=tmp_path / "work",
                                   target_seed=3)  # fmt: skip
    assert (tmp_path / "work" / "bu4dfe" / "F001" / "Angry" / "000.wrl").is_file()
    assert list(results["arms"]) == ["default", "scratch"], "the depth CNN reads static scans only"
    assert results["settings"]["layout"] == "bu4dfe"
    assert results["settings"]["command"].startswith("facet-vlm train --dataset bu4dfe ")
    for summary in results["arms"].values():
        assert len(summary["runs"]) == 1 and 0 <= summary["mean"] <= 1 and 0 <= summary["train_mean"] <= 1
    assert list(results["zero_shot"]) == ["pretrained", "default", "scratch"]
    table = "\n".join(pretraining_markdown(results))
    assert "Target: a BU-4DFE-layout tree of 6 synthetic people" in table


def test_the_gain_benchmark_runs_every_fold_of_fewer_folds_and_no_more():
    from benchmarks import pretraining_gain

    assert pretraining_gain.run_settings(folds=5)["run_folds"] == 5, "a sixth fold does not exist"
    assert pretraining_gain.run_settings(folds=5, run_folds=2)["run_folds"] == 2
    assert pretraining_gain.run_settings()["run_folds"] == pretraining_gain.FULL["folds"]
    assert pretraining_gain.run_settings(quick=True, seeds=2) == {**pretraining_gain.QUICK, "seeds": 2,
                                                                  "first_seed": 1}  # fmt: skip


def test_the_gain_benchmark_adds_later_model_seeds_to_a_measurement(tmp_path, tiny_recipe, pretraining_gain):
    from benchmarks.report import pretraining_markdown

    assert pretraining_gain.run_settings(seeds=2, first_seed=4)["first_seed"] == 4
    assert pretraining_gain.run_settings()["first_seed"] == 1
    with pytest.raises(ValueError, match="first_seed must be 1 or more; got 0"):
        pretraining_gain.run_settings(first_seed=0)
    results = pretraining_gain.run(quick=True, seeds=2, first_seed=4, work_dir=tmp_path / "work", arms=["scratch"],
                                   target_seed=3)  # fmt: skip
    assert [run["seed"] for run in results["arms"]["scratch"]["runs"]] == [4, 5]
    assert [run["seed"] for run in results["zero_shot"]["default"]["runs"]] == [4, 5]
    assert "model seeds 4-5" in "\n".join(pretraining_markdown(results))

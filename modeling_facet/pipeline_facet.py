"""Zero-shot facial expression classification of 3D scans and 4D scan sequences with FACET-VLM.

`pipeline("zero-shot-facial-expression-classification", model=...)` renders each scan into the model's views,
embeds the candidate labels' prompts with the text tower (once per label set and templates) and returns the labels
ranked by score. The file ships with a saved model ([`save_for_hub`]), so a process without this package runs it
with `pipeline(model=<repo or folder>, trust_remote_code=True)`.
"""

from __future__ import annotations

import os
import types
from collections import OrderedDict
from collections.abc import Sized

import torch
import trimesh
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForZeroShotImageClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY, pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .image_processing_facet import pad_frames
from .mesh_io import FaceScan, FaceSequence
from .prompts import check_templates, default_templates


TASK = "zero-shot-facial-expression-classification"
# Generic names transformers gives classes it knows nothing about; they make no prompts.
_PLACEHOLDER_LABEL = "LABEL_"
_SCAN_TYPES = (str, os.PathLike, FaceScan, FaceSequence, trimesh.Trimesh, trimesh.Scene)


def parse_candidate_labels(candidate_labels) -> list:
    """The candidate labels as a list of strings: a list (or tuple) of strings, or one comma-separated string.

    Raises:
        ValueError: no labels, an empty or non-string label, or the same label twice.
    """
    if isinstance(candidate_labels, str):
        labels = [label.strip() for label in candidate_labels.split(",")]
    elif isinstance(candidate_labels, (list, tuple)):
        labels = list(candidate_labels)
    else:
        raise ValueError(
            f"candidate_labels must be a list of strings or a comma-separated string; got {candidate_labels!r}."
        )
    if not labels:
        raise ValueError("candidate_labels is empty: give at least one label, e.g. ['happy', 'sad'].")
    for position, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"candidate_labels[{position}] is {label!r}: every label must be a non-empty string.")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"candidate_labels repeats {', '.join(map(repr, repeated))}: each label must appear once.")
    return labels


def _check_input(item, position) -> None:
    """Raises a ValueError naming the input (and its position in a batch) when it is not a scan or sequence."""
    if isinstance(item, _SCAN_TYPES) or (isinstance(item, dict) and {"vertices", "faces"} <= item.keys()):
        return
    where = "" if position is None else f" at position {position} of the batch"
    raise ValueError(
        f"Unsupported pipeline input {type(item).__name__}{where}: expected a scan file path, a frame folder, a "
        "FaceScan, a FaceSequence, a trimesh mesh or a mapping with 'vertices' and 'faces' (or a list of those)."
    )


def collate_scans(items: list) -> dict:
    """Batches preprocessed inputs: static scans (1, V, C, H, W) are concatenated; as soon as one item is a sequence,
    every item becomes a (T, V, C, H, W) sequence padded to the longest one, with `frame_mask` False on padding."""
    if not any("frame_mask" in item for item in items):
        return {"pixel_values": torch.cat([item["pixel_values"] for item in items])}
    sequences = [item["pixel_values"] if "frame_mask" in item else item["pixel_values"].unsqueeze(1) for item in items]
    frames = torch.cat([sequence[0] for sequence in sequences])
    pixel_values, frame_mask = pad_frames(frames, [sequence.shape[1] for sequence in sequences])
    return {"pixel_values": pixel_values, "frame_mask": frame_mask}


class ZeroShotFacialExpressionClassificationPipeline(Pipeline):
    r"""
    Zero-shot facial expression classification of 3D face scans and 4D scan sequences with FACET-VLM: any label set
    works, because classes are prompts ("a 3D face with a joyful expression") scored by cosine similarity with the
    fused face embedding.

    Inputs: a scan file path (.wrl, .bnt, .obj, .ply, .off, .stl, .glb), a folder of frame files (a 4D sequence), a
    `FaceScan`, a `FaceSequence`, a `trimesh.Trimesh` / `Scene`, a mapping with "vertices" and "faces", or a list of
    those (a batch: one result per input; `batch_size` > 1 runs several inputs through the model at once).

    Call arguments:
        candidate_labels (list of `str` or a comma-separated `str`, *optional*): the classes, any words ("joy",
            "astonished", "contempt"), not only the training labels. Default: the model's `id2label`.
        hypothesis_template (`str`, *optional*): one prompt template with a `{}` for the label.
        templates (list of `str`, *optional*): several templates whose prompt embeddings are averaged per label.
            Default: the processor's templates (its action-unit templates when every label is an action unit).
        top_k (`int`, *optional*): keep the `top_k` best labels.
        multi_label (`bool`, *optional*): independent sigmoid scores instead of a softmax over the labels; by default
            the model's problem type decides. A multi-label model (BCE-trained, with a learned logit bias) gives the
            per-label probability it was trained to predict; for a single-label model the sigmoid of its scaled cosine
            exp(s) * cos(h, t_c) is a per-label match score, above 0.5 exactly when the face embedding is closer to
            the label's prompt than orthogonal to it, and not a calibrated probability.
        return_view_weights (`bool`, *optional*): return `{"labels": [...], "views": [[yaw, pitch], ...],
            "view_weights": [[...] per frame], "frame_weights": [...]}` instead of the plain label list:
            `view_weights[t][v]` is the CVSA weight of view v in frame t (one frame for a static scan),
            `frame_weights[t]` the temporal pooling weight of frame t (`[1.0]` for a static scan).

    Returns:
        A list of `{"label": str, "score": float}` sorted by decreasing score (one such list per input for list
        input), or the dictionary above with `return_view_weights=True`.

    The class prompt embeddings are cached per (labels, templates), so repeated calls with the same labels run
    only the vision side; the cache assumes the weights stay fixed (call [`clear_prompt_cache`] after changing them).
    On CPU, most of a call is reading and rendering the scan; on a machine whose cores are busy, export
    OMP_WAIT_POLICY=PASSIVE before torch is imported (`facet-vlm` does), or OpenMP's spinning waits slow the
    renderer many-fold (benchmarks/bench_pipeline.py).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    prompt_cache_size = 32

    def __init__(self, *args, **kwargs):
        self._prompt_cache = OrderedDict()
        super().__init__(*args, **kwargs)

    def __call__(self, inputs, **kwargs):
        """Classify one input or a list of inputs; see the class docstring for the arguments."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            for position, item in enumerate(inputs):
                _check_input(item, position)
            if not inputs:
                return []
        elif not isinstance(inputs, (types.GeneratorType, Dataset)):  # the image processor checks streamed items
            _check_input(inputs, None)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        hypothesis_template=None,
        templates=None,
        top_k=None,
        multi_label=None,
        return_view_weights=None,
    ):
        forward, postprocess = {}, {}
        if candidate_labels is not None:
            forward["candidate_labels"] = postprocess["candidate_labels"] = parse_candidate_labels(candidate_labels)
        if hypothesis_template is not None and templates is not None:
            raise ValueError("Pass either hypothesis_template or templates, not both.")
        if hypothesis_template is not None:
            forward["templates"] = check_templates(hypothesis_template)
        if templates is not None:
            forward["templates"] = check_templates(templates)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer; got {top_k!r}.")
            postprocess["top_k"] = top_k
        if multi_label is not None:
            postprocess["multi_label"] = bool(multi_label)
        if return_view_weights is not None:
            postprocess["return_view_weights"] = bool(return_view_weights)
        return {}, forward, postprocess

    def default_labels(self) -> list:
        """The model's own class names (`config.id2label` in id order); raises when it has none."""
        id2label = getattr(self.model.config, "id2label", None) or {}
        labels = [id2label[key] for key in sorted(id2label, key=int)]
        if not labels or all(str(label).startswith(_PLACEHOLDER_LABEL) for label in labels):
            raise ValueError(
                "No candidate_labels were given and the model config names no classes (id2label): pass "
                "candidate_labels, e.g. pipe(scan, candidate_labels=['happy', 'sad', 'surprised'])."
            )
        return labels

    def prompt_embeddings(self, candidate_labels, templates=None) -> torch.Tensor:
        """Class prototypes (C, d) of the labels: the text tower's embeddings of every template's prompt, averaged
        per label. Cached per (labels, templates); `templates` defaults to the processor's."""
        labels = self.default_labels() if candidate_labels is None else parse_candidate_labels(candidate_labels)
        processor = self.processor
        if templates is None:
            templates = default_templates(labels, processor.templates, processor.action_unit_templates)
        key = (tuple(labels), check_templates(templates))
        embeddings = self._prompt_cache.get(key)
        if embeddings is None:
            prompts = processor(labels=labels, templates=list(key[1]), return_tensors="pt").to(self.device)
            with torch.no_grad():
                embeddings = self.model.facet.get_text_features(prompts["input_ids"], prompts["attention_mask"])
            self._prompt_cache[key] = embeddings
            while len(self._prompt_cache) > self.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        self._prompt_cache.move_to_end(key)
        return embeddings

    def clear_prompt_cache(self) -> None:
        """Forget the cached prompt embeddings (after the model's weights changed)."""
        self._prompt_cache.clear()

    def preprocess(self, scan) -> dict:
        return dict(self.processor.image_processor(scan, return_tensors="pt"))

    def _forward(self, model_inputs, candidate_labels=None, templates=None) -> dict:
        text_embeds = self.prompt_embeddings(candidate_labels, templates)
        pixel_values = model_inputs["pixel_values"]
        frame_mask = model_inputs.get("frame_mask")
        outputs = self.model(pixel_values=pixel_values, frame_mask=frame_mask, text_embeds=text_embeds)
        if frame_mask is None:
            frame_mask = torch.ones(outputs.frame_weights.shape, dtype=torch.bool, device=pixel_values.device)
        return {
            "logits": outputs.logits,
            "view_weights": outputs.view_weights,
            "frame_weights": outputs.frame_weights,
            "frame_mask": frame_mask,
        }

    def postprocess(self, model_outputs, candidate_labels=None, top_k=None, multi_label=None, return_view_weights=False):
        labels = self.default_labels() if candidate_labels is None else candidate_labels
        logits = model_outputs["logits"][0].float()
        if multi_label is None:
            multi_label = self.model.config.problem_type == "multi_label_classification"
        scores = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
        order = torch.sort(scores, descending=True, stable=True).indices[:top_k].tolist()
        ranked = [{"label": labels[index], "score": scores[index].item()} for index in order]
        if not return_view_weights:
            return ranked
        frames = model_outputs["frame_mask"][0].bool()
        return {
            "labels": ranked,
            "views": [list(view) for view in self.model.config.views],
            "view_weights": model_outputs["view_weights"][0][frames].float().tolist(),
            "frame_weights": model_outputs["frame_weights"][0][frames].float().tolist(),
        }

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """As `Pipeline.get_iterator`, with [`collate_scans`] batching the rendered views when `batch_size` > 1."""
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_scans)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def register_pipeline() -> None:
    """Registers the task with transformers' `PIPELINE_REGISTRY` (importing `modeling_facet` does this)."""
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is ZeroShotFacialExpressionClassificationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=ZeroShotFacialExpressionClassificationPipeline,
        pt_model=AutoModelForZeroShotImageClassification,
        type="multimodal",
    )


def load_pipeline(model, **kwargs) -> ZeroShotFacialExpressionClassificationPipeline:
    """The pipeline for a FACET-VLM folder or Hub repo, with this package's code (a folder written by
    [`save_for_hub`] carries the pipeline as remote code too, which `pipeline(task, model=...)` would only run with
    `trust_remote_code=True`). `kwargs` go to `transformers.pipeline` (device, batch_size, candidate_labels, ...);
    no remote code runs unless `trust_remote_code=True` is among them."""
    register_pipeline()
    kwargs.setdefault("trust_remote_code", False)
    return pipeline(TASK, model=model, pipeline_class=ZeroShotFacialExpressionClassificationPipeline, **kwargs)


def save_for_hub(model, processor, save_directory) -> None:
    """Writes everything a Hub repository of the model needs into `save_directory`: config.json (with `auto_map`
    and `custom_pipelines`), the safetensors weights, the processor and tokenizer files, and the remote code of
    the model, processor and this pipeline, so that `pipeline(model=repo, trust_remote_code=True)`,
    `AutoModelForZeroShotImageClassification` and `AutoProcessor` load it without this package."""
    register_pipeline()
    pipe = ZeroShotFacialExpressionClassificationPipeline(model=model, processor=processor, task=TASK, device=model.device)
    had_pipelines, previous = hasattr(model.config, "custom_pipelines"), getattr(model.config, "custom_pipelines", None)
    try:
        pipe.save_pretrained(save_directory)  # writes custom_pipelines into the config it saves
    finally:  # the caller's config is left as it was, so its own later saves stay plain
        if had_pipelines:
            model.config.custom_pipelines = previous
        else:
            del model.config.custom_pipelines
    processor.save_pretrained(save_directory)  # Pipeline.save_pretrained leaves out processor_config.json


__all__ = [
    "TASK",
    "ZeroShotFacialExpressionClassificationPipeline",
    "collate_scans",
    "load_pipeline",
    "parse_candidate_labels",
    "register_pipeline",
    "save_for_hub",
]

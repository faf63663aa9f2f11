"""Fine-tuning a saved FACET-VLM with the HF `Trainer`: a data collator that attaches the class prompts, and
`compute_metrics`.

```python
from transformers import Trainer, TrainingArguments
from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor
from training.hf_trainer import FacetDataCollator, compute_metrics, prepare_for_trainer

model = prepare_for_trainer(FacetVLMForExpressionRecognition.from_pretrained(path))
processor = FacetVLMProcessor.from_pretrained(path)
trainer = Trainer(model=model, args=TrainingArguments("out", use_cpu=True, report_to="none"),
                  train_dataset=train, eval_dataset=test, processing_class=processor,
                  data_collator=FacetDataCollator(processor, label_names), compute_metrics=compute_metrics(label_names))
```
`train`/`test` are rows with `pixel_values` and an integer `expression` (or `label`/`labels`) column, e.g. a builder's
`views` config with `set_format("torch")`. Under several GPUs launch with `torchrun` or `accelerate launch`, not
`nn.DataParallel`: the (C, K, L) class prompts have no batch axis to scatter.
"""

from __future__ import annotations

import numpy as np
import torch

from .evaluate_model import compute_metrics as _metrics


LABEL_COLUMNS = ("labels", "label", "expression")
# Outputs that are not per-sample predictions: the Trainer must not concatenate them across eval batches.
IGNORED_OUTPUTS = ["view_weights", "frame_weights", "margin", "face_embeds", "text_embeds", "view_embeds",
                   "loss_ce", "loss_itc", "loss_cons", "loss_gf"]  # fmt: skip


def prepare_for_trainer(model):
    """Tell the Trainer which outputs to ignore at evaluation, so `predictions` are the logits alone."""
    model.config.keys_to_ignore_at_inference = IGNORED_OUTPUTS
    return model


class FacetDataCollator:
    """Stacks `pixel_values` (and `frame_mask`), reads the label column, and adds the tokenised prompts of the class
    names, shared by the batch. With `augment=True` it also applies mixed view augmentation and draws one augmented
    prompt per sample (seeded by a running counter, so runs repeat)."""

    def __init__(self, processor, label_names, augment: bool = False, seed: int = 0):
        self.processor, self.label_names, self.augment = processor, list(label_names), augment
        prompts = processor(labels=self.label_names, return_tensors="pt")
        self.class_inputs = {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]}
        self._calls = np.random.SeedSequence(seed)

    def _label(self, feature) -> int:
        for column in LABEL_COLUMNS:
            if column in feature:
                return int(feature[column])
        raise KeyError(f"A training row needs one of the label columns {LABEL_COLUMNS}; got {sorted(feature)}.")

    def __call__(self, features: list) -> dict:
        batch = {
            "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"], dtype=torch.float32) for f in features]),
            "labels": torch.tensor([self._label(f) for f in features], dtype=torch.long),
            **self.class_inputs,
        }
        if "frame_mask" in features[0]:
            batch["frame_mask"] = torch.stack([torch.as_tensor(f["frame_mask"], dtype=torch.bool) for f in features])
        if self.augment:
            seed = int(self._calls.spawn(1)[0].generate_state(1)[0])
            batch["pixel_values"] = self.processor.image_processor.augment_pixel_values(batch["pixel_values"], seed)
            prompts = self.processor(labels=self.label_names, sample_labels=batch["labels"].tolist(), augment=True,
                                     seed=seed, return_tensors="pt")  # fmt: skip
            batch["prompt_input_ids"] = prompts["prompt_input_ids"]
            batch["prompt_attention_mask"] = prompts["prompt_attention_mask"]
        return batch


def compute_metrics(label_names):
    """A `compute_metrics` for the Trainer: accuracy, macro F1, per-class recall and the confusion matrix."""

    def compute(eval_prediction) -> dict:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return _metrics(np.asarray(logits).argmax(-1), eval_prediction.label_ids, label_names)

    return compute

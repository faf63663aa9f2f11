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
    names, shared by the batch. Like `facet-vlm train` (and under its TrainConfig names), it can draw one augmented
    prompt per sample (`augment_prompts`, on in the default recipe), and apply mixed view augmentation, mirrored
    scans and blanked views; each batch is seeded by a running counter from `seed`, so runs repeat."""

    def __init__(self, processor, label_names, augment_prompts: bool = False, augment_views: bool = False,
                 mirror_scans: float = 0.0, occlude_views: float = 0.0, seed: int = 0):  # fmt: skip
        self.processor, self.label_names, self.augment_prompts = processor, list(label_names), augment_prompts
        self.pixel_augmentation = {"augment_views": augment_views, "mirror_scans": mirror_scans,
                                   "occlude_views": occlude_views}  # fmt: skip
        if mirror_scans:
            processor.image_processor.mirror_view_order()  # views without mirror images fail before training
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
        seed = int(self._calls.spawn(1)[0].generate_state(1)[0])
        batch["pixel_values"] = self.processor.image_processor.augment_for_training(
            batch["pixel_values"], seed, **self.pixel_augmentation
        )
        if self.augment_prompts:
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

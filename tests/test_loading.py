"""Loading a saved model as a user does prints nothing alarming."""

import subprocess
import sys
from pathlib import Path

import torch

from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition


ROOT = Path(__file__).resolve().parent.parent


def test_the_encoder_loads_a_classifier_checkpoint_without_an_unexpected_key_report(tmp_path):
    # AutoModel gives the encoder (FacetVLMModel); the classifier's own margin of L_gf is not the encoder's, and
    # transformers listed it as "margin_raw | UNEXPECTED", which reads like a broken checkpoint.
    torch.manual_seed(0)
    FacetVLMForExpressionRecognition(FacetVLMConfig.from_preset("tiny")).save_pretrained(tmp_path / "model")
    code = f"import modeling_facet; from transformers import AutoModel; AutoModel.from_pretrained({str(tmp_path / 'model')!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "UNEXPECTED" not in result.stdout + result.stderr

"""FACET-VLM: 3D/4D facial expression recognition with a vision-language model, for the HuggingFace ecosystem.

Importing this package registers the FACET-VLM classes with the transformers Auto classes, and marks them for
remote code so that `save_pretrained` writes the modeling files next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from .configuration_facet import FacetVLMConfig
from .modeling_facet import FacetVLMForExpressionRecognition, FacetVLMModel, FacetVLMPreTrainedModel


AutoConfig.register(FacetVLMConfig.model_type, FacetVLMConfig, exist_ok=True)
AutoModel.register(FacetVLMConfig, FacetVLMModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(FacetVLMConfig, FacetVLMForExpressionRecognition, exist_ok=True)
FacetVLMConfig.register_for_auto_class()
FacetVLMModel.register_for_auto_class("AutoModel")
FacetVLMForExpressionRecognition.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "FacetVLMConfig",
    "FacetVLMForExpressionRecognition",
    "FacetVLMModel",
    "FacetVLMPreTrainedModel",
]

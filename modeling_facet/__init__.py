"""FACET-VLM: 3D/4D facial expression recognition with a vision-language model, for the HuggingFace ecosystem.

Importing this package registers the FACET-VLM classes with the transformers Auto classes, and marks them for
remote code so that `save_pretrained` writes the modeling files next to the weights, and registers the
"zero-shot-facial-expression-classification" pipeline task.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_facet import FacetVLMConfig
from .image_processing_facet import FacetMeshImageProcessor
from .modeling_facet import FacetVLMForExpressionRecognition, FacetVLMModel, FacetVLMPreTrainedModel
from .pipeline_facet import ZeroShotFacialExpressionClassificationPipeline, register_pipeline
from .processing_facet import FacetVLMProcessor


AutoConfig.register(FacetVLMConfig.model_type, FacetVLMConfig, exist_ok=True)
AutoModel.register(FacetVLMConfig, FacetVLMModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(FacetVLMConfig, FacetVLMForExpressionRecognition, exist_ok=True)
FacetVLMConfig.register_for_auto_class()
FacetVLMModel.register_for_auto_class("AutoModel")
FacetVLMForExpressionRecognition.register_for_auto_class("AutoModelForZeroShotImageClassification")
AutoImageProcessor.register(FacetVLMConfig, image_processor_classes={"pil": FacetMeshImageProcessor}, exist_ok=True)
AutoProcessor.register(FacetVLMConfig, FacetVLMProcessor, exist_ok=True)
FacetMeshImageProcessor.register_for_auto_class()
FacetVLMProcessor.register_for_auto_class()
register_pipeline()

__all__ = [
    "FacetMeshImageProcessor",
    "FacetVLMConfig",
    "FacetVLMForExpressionRecognition",
    "FacetVLMModel",
    "FacetVLMPreTrainedModel",
    "FacetVLMProcessor",
    "ZeroShotFacialExpressionClassificationPipeline",
]

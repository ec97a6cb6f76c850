"""Classifiers over [0,1] images: the registry, the built-in networks, and how they run."""

from raydetect.models.classifier import ImageClassifier, ModelInfo
from raydetect.models.registry import ConfiguredLoader, checked, list_models, load_model, model_info

__all__ = ["ConfiguredLoader", "ImageClassifier", "ModelInfo", "checked", "list_models", "load_model", "model_info"]

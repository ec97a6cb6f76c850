"""Explanations and what a detector reads of them: baselines, explainers, descriptors (torch)."""

from raydetect.explain.baselines import gaussian_blur
from raydetect.explain.descriptors import describe, feature_names
from raydetect.explain.explainers import Explainer, Explanation

__all__ = ["Explainer", "Explanation", "describe", "feature_names", "gaussian_blur"]

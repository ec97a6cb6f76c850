"""Detectors over explanation descriptors: splits, metrics, heads, fitting, bundles, the score.

Everything here is torch/numpy/sklearn; ``detect.ray_fit`` (Ray Train) is imported only by the
jobs that use it.
"""

from raydetect.detect.bundle import Detector
from raydetect.detect.heads import HEADS, BoosterHead, ForestHead, Head, LinearHead
from raydetect.detect.score import Scorer

__all__ = ["HEADS", "BoosterHead", "Detector", "ForestHead", "Head", "LinearHead", "Scorer"]

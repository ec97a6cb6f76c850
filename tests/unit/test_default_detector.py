"""The detector shipped in the package: small, loads by default, and is the detector its manifest
measured (its recorded held-back scores recompute; its head catches a fresh BIM-10 attack)."""

from __future__ import annotations

import os

import numpy as np
import torch

from raydetect.attacks import make_attack
from raydetect.config import AttackConfig
from raydetect.detect import Detector
from raydetect.detect.bundle import DEFAULT_BUNDLE, default_bundle, load_for_audit
from tests.conftest import imagenet_sample_or_skip


def test_the_shipped_bundle_is_small_public_and_complete() -> None:
    size = sum(os.path.getsize(os.path.join(DEFAULT_BUNDLE, f)) for f in os.listdir(DEFAULT_BUNDLE))
    assert size < 1_000_000
    det = Detector.default()
    assert det.model_config["name"] == "efficientnet_lite0" and "device" not in det.model_config
    made = det.metrics["made_by"]
    assert "raydetect reproduce" in made["command"] and len(made["commit"]) == 40
    held = det.metrics["held_back"]
    assert held["clean_images"] >= 50 and held["per_attack"]
    assert {"bim-untargeted-4/255", "deepfool-untargeted-4/255"} <= {r["attack"] for r in held["per_attack"]}
    assert 0.01 <= det.calibration["fpr_range"][0] < det.target_fpr < det.calibration["fpr_range"][1] <= 0.15
    _, mcfg = load_for_audit(default_bundle())
    assert mcfg.device == "auto"


def test_the_shipped_detector_is_the_one_its_manifest_measured(monkeypatch) -> None:
    root = imagenet_sample_or_skip()
    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)  # the measurement drew the views with the public key
    det = Detector.default()
    recorded = det.metrics["held_back"]["clean_scores"]
    model = det.load_model("cpu")
    paths = [root / i for i in recorded]
    got = det.score(paths, model=model)
    assert np.allclose(got, list(recorded.values()), atol=1e-4), (got, list(recorded.values()))
    # A fresh BIM-10 attack on those images: the stated detection of BIM-10 holds (a constant head fails).
    from raydetect.images import decode_image

    x = torch.from_numpy(np.stack([decode_image(p.read_bytes(), model.info.preprocess) for p in paths]))
    r = make_attack(model, AttackConfig(eps=4 / 255, steps=10))(x)
    adv = det.score(r.adversarial[r.success].numpy(), model=model)
    stated = next(a for a in det.metrics["held_back"]["per_attack"] if a["attack"] == "bim-untargeted-4/255")
    assert stated["evaded"] <= 0.1 and r.success.sum() >= 5
    assert (adv > det.threshold).mean() >= 0.75 and adv.mean() > got.mean()

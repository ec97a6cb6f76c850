"""Signed bundles: a trusted key refuses unsigned, wrongly signed and altered bundles, wherever they live."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, to_dict
from raydetect.detect import HEADS, Detector
from raydetect.detect.fit import fit_head
from raydetect.detect.signing import SIGNATURE, TRUSTED_KEYS_ENV, generate_key, load_private_key
from raydetect.errors import RaydetectError
from raydetect.explain import feature_names


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_key(d / "alice")
    generate_key(d / "mallory")
    return {"alice": d / "alice", "alice.pub": d / "alice.pub", "mallory": d / "mallory", "mallory.pub": d / "mallory.pub"}


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)


def _detector(references: np.ndarray | None = None) -> Detector:
    rng = np.random.default_rng(0)
    fcfg = FeatureConfig(descriptors=("stats",), quantiles=8)
    X = rng.normal(size=(80, len(feature_names(fcfg)))).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    return Detector(
        head=fit_head("lr", X, y), threshold=0.37, target_fpr=0.05, model_config=to_dict(ModelConfig(name="digits_cnn")),
        attribution=to_dict(AttributionConfig(n_steps=4)), features=to_dict(fcfg), feature_names=feature_names(fcfg),
        trained_on=["bim-untargeted-0.3"], metrics={}, params={}, references=references,
    )  # fmt: skip


def _rewrite_sums(bundle: Path) -> None:
    """What `sha256sum manifest.json model_lr.json > SHA256SUMS` does after an edit: checksums match again."""
    names = [line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()]
    (bundle / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((bundle / n).read_bytes()).hexdigest()}  {n}\n" for n in names))


def _raise_threshold(bundle: Path) -> None:
    """The attack of the issue: threshold 1.0 flags nothing; then make the checksums agree."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["threshold"] = 1.0
    (bundle / "manifest.json").write_text(json.dumps(m))
    _rewrite_sums(bundle)


def test_keygen_writes_a_private_key_only_its_owner_reads(keys, tmp_path) -> None:
    assert stat.S_IMODE(os.stat(keys["alice"]).st_mode) == 0o600
    assert keys["alice.pub"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    load_private_key(keys["alice"])
    with pytest.raises(RaydetectError, match="refusing to overwrite"):
        generate_key(keys["alice"])
    with pytest.raises(RaydetectError, match="not an unencrypted PEM private key"):
        load_private_key(keys["alice.pub"])


def test_a_signed_bundle_loads_under_its_trusted_key(keys, tmp_path) -> None:
    _detector().save(tmp_path / "b", signing_key=keys["alice"])
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"manifest.json", "SHA256SUMS", SIGNATURE, HEADS["lr"].file}
    det = Detector.load(tmp_path / "b", trusted_keys=[keys["alice.pub"]])
    assert det.threshold == 0.37 and det.provenance.startswith("signed by trusted key ")
    # one of several trusted keys is enough; a raw base64 public key works as well as PEM
    from cryptography.hazmat.primitives import serialization

    raw = load_private_key(keys["alice"]).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    Detector.load(tmp_path / "b", trusted_keys=[keys["mallory.pub"], base64.b64encode(raw)])


def test_rewriting_sha256sums_after_an_edit_is_refused_under_a_trust_key(keys, tmp_path) -> None:
    """Checksums alone accept this bundle (the issue's finding); the signature does not."""
    _detector().save(tmp_path / "unsigned")
    _raise_threshold(tmp_path / "unsigned")
    assert Detector.load(tmp_path / "unsigned").threshold == 1.0  # checksums catch accidents only

    _detector().save(tmp_path / "b", signing_key=keys["alice"])
    _raise_threshold(tmp_path / "b")
    with pytest.raises(RaydetectError, match="signature does not verify; the bundle's files changed") as e:
        Detector.load(tmp_path / "b", trusted_keys=[keys["alice.pub"]])
    assert "\n" not in str(e.value)
    # Even with no trusted key, a signature that no longer matches its files is refused.
    with pytest.raises(RaydetectError, match="signature does not verify"):
        Detector.load(tmp_path / "b")


@pytest.mark.parametrize("target", ["model", "references", "signature"])
def test_any_changed_file_breaks_the_signature(target, keys, tmp_path) -> None:
    refs = np.random.default_rng(0).integers(0, 256, size=(3, 1, 8, 8)).astype(np.float32) / 255
    _detector(refs).save(tmp_path / "b", signing_key=keys["alice"])
    b = tmp_path / "b"
    assert np.array_equal(Detector.load(b, trusted_keys=[keys["alice.pub"]]).references, refs)
    if target == "model":
        d = json.loads((b / HEADS["lr"].file).read_text())
        d["intercept"] -= 50.0  # scores collapse to 0: nothing flagged
        (b / HEADS["lr"].file).write_text(json.dumps(d))
        _rewrite_sums(b)
    elif target == "references":
        np.save(b / "references.npy", np.zeros((3, 1, 8, 8), np.uint8))
        _rewrite_sums(b)
    else:
        sig = json.loads((b / SIGNATURE).read_text())
        s = bytearray(base64.b64decode(sig["signature"]))
        s[0] ^= 1
        sig["signature"] = base64.b64encode(bytes(s)).decode()
        (b / SIGNATURE).write_text(json.dumps(sig))
    with pytest.raises(RaydetectError, match="signature does not verify"):
        Detector.load(b, trusted_keys=[keys["alice.pub"]])


def test_unsigned_or_foreign_signed_bundles_are_refused_under_a_trust_key(keys, tmp_path) -> None:
    _detector().save(tmp_path / "unsigned")
    with pytest.raises(RaydetectError, match="is not signed"):
        Detector.load(tmp_path / "unsigned", trusted_keys=[keys["alice.pub"]])
    # An adversary who re-signs an altered bundle with their own key is refused too.
    _detector().save(tmp_path / "m", signing_key=keys["mallory"])
    _raise_threshold(tmp_path / "m")
    from raydetect.detect.signing import sign

    resigned = sign((tmp_path / "m" / "SHA256SUMS").read_bytes(), load_private_key(keys["mallory"]))
    (tmp_path / "m" / SIGNATURE).write_bytes(resigned)
    Detector.load(tmp_path / "m", trusted_keys=[keys["mallory.pub"]])  # consistent, for whoever trusts mallory
    with pytest.raises(RaydetectError, match="not a trusted key"):
        Detector.load(tmp_path / "m", trusted_keys=[keys["alice.pub"]])
    # ...and so is one that simply drops the signature.
    _detector().save(tmp_path / "s", signing_key=keys["alice"])
    (tmp_path / "s" / SIGNATURE).unlink()
    with pytest.raises(RaydetectError, match="is not signed"):
        Detector.load(tmp_path / "s", trusted_keys=[keys["alice.pub"]])


def test_trusted_keys_from_the_environment(keys, tmp_path, monkeypatch) -> None:
    _detector().save(tmp_path / "unsigned")
    _detector().save(tmp_path / "signed", signing_key=keys["alice"])
    ring = tmp_path / "trusted"
    ring.write_text("# the team's keys\n" + keys["alice.pub"].read_text())
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(ring))
    assert Detector.load(tmp_path / "signed").provenance.startswith("signed by trusted key")
    with pytest.raises(RaydetectError, match="is not signed"):
        Detector.load(tmp_path / "unsigned")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(tmp_path / "missing"))
    with pytest.raises(RaydetectError, match="cannot read trusted key"):
        Detector.load(tmp_path / "signed")


def test_without_a_trust_key_an_unsigned_bundle_loads_with_one_warning(tmp_path, caplog) -> None:
    _detector().save(tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="raydetect.detect.bundle"):
        det = Detector.load(tmp_path / "b")
        Detector.load(tmp_path / "b")  # the CLI loads twice (fail fast, then the job): still one warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "raydetect.detect.bundle"]
    assert len(warnings) == 1 and "is unsigned" in warnings[0] and "\n" not in warnings[0]
    assert det.provenance == "unsigned"


def test_a_bundle_at_a_uri_is_verified_the_same_way(keys, tmp_path) -> None:
    """s3:// and gs:// bundles go through the same pyarrow-filesystem reads as this file:// one."""
    uri = f"file://{tmp_path}/remote"
    _detector().save(uri, signing_key=keys["alice"])
    assert Detector.load(uri, trusted_keys=[keys["alice.pub"]]).provenance.startswith("signed by trusted key")
    _raise_threshold(tmp_path / "remote")
    with pytest.raises(RaydetectError, match="signature does not verify"):
        Detector.load(uri, trusted_keys=[keys["alice.pub"]])


def test_an_unsigned_save_removes_a_stale_signature(keys, tmp_path) -> None:
    _detector().save(tmp_path / "b", signing_key=keys["alice"])
    _detector().save(tmp_path / "b")
    assert not (tmp_path / "b" / SIGNATURE).exists()
    Detector.load(tmp_path / "b")

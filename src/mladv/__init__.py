"""mladv: realistic adversarial augmentation of medical images (MLAdv)."""
from .attacks import MLAdv, heuristic_projection, projection_kernel
from .models import build_model, load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["MLAdv", "build_model", "heuristic_projection", "load_checkpoint", "projection_kernel",
           "save_checkpoint", "__version__"]

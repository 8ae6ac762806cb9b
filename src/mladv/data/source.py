"""One entry point for every command's ``--data`` argument: a folder, or ``phantoms``."""
from __future__ import annotations

from .folder import ImageSet, load_folder
from .phantoms import make_phantoms

PHANTOMS = "phantoms"


def load_source(source: str, image_size: int = 64, *, skip_bad: bool = False,
                classes: list[str] | None = None, n_per_class: int = 200, seed: int = 0,
                progress: bool = False) -> ImageSet:
    """``"phantoms"`` (or ``"phantoms:N"`` for N images per class) gives the synthetic set of
    :mod:`mladv.data.phantoms`; anything else is read as an ImageFolder root."""
    if source == PHANTOMS or source.startswith(PHANTOMS + ":"):
        n = int(source.split(":", 1)[1]) if ":" in source else n_per_class
        data = make_phantoms(n, image_size, seed)
        if classes is not None and list(classes) != data.classes:
            raise ValueError(f"phantoms have classes {data.classes}, expected {list(classes)}")
        return data
    return load_folder(source, image_size, skip_bad=skip_bad, classes=classes, progress=progress)

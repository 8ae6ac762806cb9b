"""Data: image reading, the ImageFolder loader and the public data sets' layouts (one
``load_source`` string for all; NIH ChestX-ray14 and multi-label CSV manifests included), the
on-disk uint8 cache for sets too large for RAM (``build_memmap``), the patient-aware split
(and ``choose_split``: a checkpoint's split minus its training images), the synthetic
phantoms, and adversarial outputs as a ``Dataset`` or exported 16-bit PNGs."""
from .adversarial import AdversarialDataset, read_adversarial_parts
from .export import export_pngs
from .folder import DataError, ImageSet, load_folder, read_image, read_image_tensor, resize_square
from .memmap import MemmapDataset, build_memmap
from .nih import NIH_FINDINGS, load_nih
from .phantoms import CLASSES as PHANTOM_CLASSES
from .phantoms import make_phantoms, write_phantoms
from .presets import (
    COVID_CLASSES,
    PAPER_CLASSES,
    kermany_split,
    load_covid_radiography,
    load_csv,
    load_kermany,
    load_multilabel_csv,
)
from .source import PHANTOMS, load_source, parse_source
from .split import choose_split, multilabel_split, split_imageset, stratified_split

__all__ = ["AdversarialDataset", "COVID_CLASSES", "DataError", "ImageSet", "MemmapDataset",
           "NIH_FINDINGS", "PAPER_CLASSES", "PHANTOMS", "PHANTOM_CLASSES", "build_memmap",
           "choose_split", "export_pngs", "kermany_split", "load_covid_radiography", "load_csv",
           "load_folder", "load_kermany", "load_multilabel_csv", "load_nih", "load_source",
           "make_phantoms", "multilabel_split", "parse_source", "read_adversarial_parts",
           "read_image", "read_image_tensor", "resize_square", "split_imageset", "stratified_split",
           "write_phantoms"]

"""Data: ImageFolder loading, the patient-aware split and the synthetic phantoms."""
from .folder import DataError, ImageSet, load_folder, read_image, resize_square
from .phantoms import CLASSES as PHANTOM_CLASSES
from .phantoms import make_phantoms, write_phantoms
from .source import PHANTOMS, load_source
from .split import split_imageset, stratified_split

__all__ = ["DataError", "ImageSet", "PHANTOMS", "load_source", "PHANTOM_CLASSES", "load_folder", "make_phantoms",
           "read_image", "resize_square", "split_imageset", "stratified_split", "write_phantoms"]

"""Synthetic chest-radiograph-like phantoms: the embedded, offline default data set.

These are NOT medical images. Each image is procedurally drawn (body, lungs, mediastinum, heart,
ribs, diaphragm, quantum noise) from a seeded generator, in three classes:

- ``normal``: clear lung fields;
- ``covid_like``: bilateral, peripheral, lower-zone ground-glass opacities (broad, faint blobs);
- ``pneumonia_like``: a diffuse, perihilar interstitial (reticular) pattern.

Lesion strength is drawn per image down to very faint, and every class gets random
distractors, so a small CNN does not reach 100% at once.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from .folder import ImageSet

CLASSES = ["covid_like", "normal", "pneumonia_like"]


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float,
             soft: float = 0.04) -> np.ndarray:
    """Soft-edged ellipse indicator in [0, 1]."""
    r = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return np.asarray(expit((1.0 - r) / soft))


def _phantom(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    v, u = np.meshgrid(lin, lin, indexing="ij")
    u = u + rng.normal(0, 0.03)
    v = v + rng.normal(0, 0.03)
    body = _ellipse(u, v, 0, 0.05, rng.uniform(0.8, 0.9), rng.uniform(0.95, 1.05), 0.05)
    img = 0.05 + 0.50 * body
    sep, lung_y = rng.uniform(0.33, 0.42), rng.uniform(-0.1, 0.0)
    lrx, lry = rng.uniform(0.22, 0.28), rng.uniform(0.5, 0.6)
    dome = rng.uniform(0.4, 0.5) + 0.6 * (np.abs(u) - sep) ** 2  # hemi-diaphragms
    diaphragm = expit((v - dome) / 0.03) * body
    lungs = [_ellipse(u, v, s * sep, lung_y, lrx, lry) for s in (-1, 1)]
    lung = np.clip(lungs[0] + lungs[1], 0, 1) * (1 - diaphragm)
    img = img - rng.uniform(0.28, 0.36) * lung
    img += 0.22 * _ellipse(u, v, 0, 0, 0.07, 1.2, 0.1)                      # spine / mediastinum
    img += 0.16 * _ellipse(u, v, rng.uniform(0.08, 0.16), 0.22, 0.3, 0.24, 0.08)  # heart
    img += 0.22 * diaphragm
    ribs = np.cos(2 * np.pi * (v * rng.uniform(4.5, 5.5) + 0.8 * u ** 2 + rng.uniform(0, 1)))
    img += 0.05 * np.clip(ribs - 0.4, 0, None) * lung

    def blobs(count: int, amp: float, sigma: tuple[float, float], where: str) -> np.ndarray:
        out = np.zeros_like(u)
        for _ in range(count):
            side = rng.choice([-1, 1])
            if where == "peripheral":  # outer half of a lung, lower zones
                cx = side * (sep + rng.uniform(0.3, 0.9) * lrx)
                cy = lung_y + rng.uniform(-0.1, 0.9) * lry
            else:
                cx = side * (sep + rng.uniform(-0.9, 0.9) * lrx)
                cy = lung_y + rng.uniform(-0.9, 0.9) * lry
            s = rng.uniform(*sigma)
            out += amp * rng.uniform(0.6, 1.0) * np.exp(-((u - cx) ** 2 + (v - cy) ** 2)
                                                        / (2 * s * s))
        return np.asarray(out * lung)

    strength = rng.uniform(0.25, 1.0)
    if label == "covid_like":
        img += blobs(int(rng.integers(3, 7)), 0.14 * strength, (0.07, 0.14), "peripheral")
    elif label == "pneumonia_like":
        noise = rng.normal(0, 1, u.shape).astype(np.float32)
        reticular = np.abs(gaussian_filter(noise, 0.8) - gaussian_filter(noise, 2.0))
        reticular /= reticular.max() + 1e-8
        perihilar = np.exp(-((np.abs(u) - sep * 0.6) ** 2 + (v - lung_y) ** 2) / 0.25)
        img += 0.16 * strength * reticular * perihilar * lung
    # distractors in every class: a faint nodule, a little texture
    if rng.random() < 0.5:
        img += blobs(1, 0.06, (0.03, 0.06), "any")
    texture = gaussian_filter(rng.normal(0, 1, u.shape).astype(np.float32), 1.2)
    img += 0.03 * texture * lung
    img = gaussian_filter(img, 0.6) + rng.normal(0, 0.015, u.shape)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    return np.asarray(img, dtype=np.float32)


def make_phantoms(n_per_class: int = 200, size: int = 64, seed: int = 0) -> ImageSet:
    """Generate ``3 * n_per_class`` phantoms of ``size x size`` pixels, reproducibly from ``seed``.

    Returns an :class:`ImageSet` with classes :data:`CLASSES`; each image is its own group.
    """
    if n_per_class < 1 or size < 16:
        raise ValueError(f"need n_per_class >= 1 and size >= 16, got {n_per_class}, {size}")
    images, labels, paths = [], [], []
    for label_idx, name in enumerate(CLASSES):
        for k in range(n_per_class):
            rng = np.random.default_rng([seed, label_idx, k])
            images.append(torch.from_numpy(_phantom(name, size, rng))[None])
            labels.append(label_idx)
            paths.append(f"phantom:{name}/{k:05d}")
    return ImageSet(torch.stack(images), torch.tensor(labels), list(CLASSES), paths, list(paths))


def write_phantoms(root: str | os.PathLike[str], n_per_class: int = 200, size: int = 64,
                   seed: int = 0) -> Path:
    """Write the phantoms as an ImageFolder of 8-bit PNGs (to try the folder loader)."""
    from PIL import Image

    root = Path(root)
    data = make_phantoms(n_per_class, size, seed)
    for img, label, path in zip(data.images, data.labels, data.paths):
        out = root / data.classes[int(label)] / (path.split("/")[-1] + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(out)
    return root

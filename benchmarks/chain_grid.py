"""The chain's figure: one chest X-ray per class, clean / random chain / adversarial chain and each
chain's difference from the clean image (grey = 0), so a reader can judge whether the default
bounds still look like a normal acquisition of the same patient.

The adversarial chain needs a model: a ``small_cnn`` is trained for ``--epochs`` on the training
split of ``--data`` (patient-aware split, seed 0) unless ``--checkpoint`` (a ``mladv train``
``model.pt``) is given; the images are from the test split. Prints one JSON line (the model's
test accuracy, and its accuracy on the clean / random-chain / adversarial-chain test images).

    python benchmarks/chain_grid.py --data ../shared/data/cxr3 --out docs/chain-grid.png
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from PIL import Image

from mladv.attacks import make_attack
from mladv.data import load_source, split_imageset
from mladv.figures import adversarial_grid
from mladv.models import build_model, load_checkpoint
from mladv.training import accuracy, train_classifier


def grey_png(path: str) -> None:
    """Rewrite the (grey) figure as an 8-bit greyscale PNG: a third of the RGBA size."""
    Image.open(path).convert("L").save(path, optimize=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cxr3")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/chain-grid.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = split_imageset(load_source(args.data, args.size), seed=0)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        model = build_model("small_cnn", len(train.classes))
        train_classifier(model, train, epochs=args.epochs, batch_size=32, lr=3e-3,
                         seed=args.seed, progress=False)
    model.eval()
    x, y = test.images, test.labels
    chains = {"random chain": make_attack("chain", model, steps=0, seed=args.seed)(x, y),
              "adversarial chain": make_attack("chain", model, steps=1, seed=args.seed)(x, y)}
    adversarial_grid(x, chains, y, test.classes, args.out)
    grey_png(args.out)
    result = {"data": args.data, "size": args.size, "n_test": len(test),
              "acc_clean": accuracy(model, x, y),
              **{f"acc_{k.replace(' ', '_')}": accuracy(model, v, y) for k, v in chains.items()},
              "figure": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""The whole story in small, offline: phantoms -> small CNN -> MLAdv and PGD -> table + figure."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .attacks import MLAdv, pgd
from .crafting import attack_metrics, craft
from .data import make_phantoms, split_imageset
from .figures import adversarial_grid
from .models import build_model, save_checkpoint
from .training import accuracy, train_classifier
from .utils import atomic_write_json, prepare_output_dir, set_determinism


def run_demo(out: str | Path = "runs/demo", *, n_per_class: int = 250, image_size: int = 64,
             arch: str = "small_cnn", epochs: int = 15, eps: float = 8 / 255, steps: int = 10,
             seed: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Run the demo and write ``out/summary.json``, ``out/grid.png`` and ``out/model.pt``."""
    console = console or Console()
    out = prepare_output_dir(out)
    start = time.perf_counter()
    set_determinism(seed)
    console.print(f"[bold]1/4[/] generating {3 * n_per_class} synthetic phantoms "
                  f"({image_size}x{image_size}, not medical images)")
    data = make_phantoms(n_per_class, image_size, seed)
    train_set, test_set = split_imageset(data, seed=seed)
    console.print(f"[bold]2/4[/] training {arch} for {epochs} epochs on {len(train_set)} images")
    model = build_model(arch, len(data.classes))
    train_classifier(model, train_set, epochs=epochs, seed=seed, desc="train")
    clean_acc = accuracy(model, test_set.images, test_set.labels)
    save_checkpoint(out / "model.pt", model, classes=data.classes, image_size=image_size,
                    epoch=epochs, metrics={"test_acc": clean_acc}, data="phantoms",
                    train_images=train_set.images, split={"seed": seed, "test_size": 0.15})
    console.print(f"[bold]3/4[/] crafting MLAdv and PGD-{steps} on {len(test_set)} test images "
                  f"(eps = {eps * 255:.0f}/255)")
    attacks = {"MLAdv": MLAdv(model, eps=eps, steps=steps, seed=seed),
               f"PGD-{steps}": pgd(model, eps=eps, steps=steps, seed=seed)}
    results, advs = {}, {}
    for name, atk in attacks.items():
        t0 = time.perf_counter()
        advs[name] = craft(atk, test_set.images, test_set.labels, desc=name)
        results[name] = {**attack_metrics(model, test_set.images, advs[name], test_set.labels),
                         "seconds": time.perf_counter() - t0}
    console.print("[bold]4/4[/] writing the summary and the figure")
    adversarial_grid(test_set.images, advs, test_set.labels, data.classes, out / "grid.png")
    summary = {"data": "synthetic phantoms", "n_train": len(train_set), "n_test": len(test_set),
               "arch": arch, "image_size": image_size, "epochs": epochs, "eps": eps, "seed": seed,
               "clean_acc": clean_acc, "attacks": results,
               "wall_seconds": time.perf_counter() - start}
    atomic_write_json(summary, out / "summary.json")
    table = Table(title=f"mladv demo — clean test accuracy {clean_acc:.3f}")
    for col in ("attack", "white-box success", "SSIM", "L-inf (x255)", "mean |δ| (x255)", "s"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['success']:.3f}", f"{r['ssim']:.3f}", f"{r['linf_max'] * 255:.2f}",
                      f"{r['l1'] * 255:.2f}", f"{r['seconds']:.1f}")
    console.print(table)
    console.print(f"wrote {out / 'summary.json'} and {out / 'grid.png'} "
                  f"in {summary['wall_seconds']:.0f} s")
    return summary

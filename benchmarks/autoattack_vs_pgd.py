"""Gradient-masking check of a finished experiment: on the AutoAttack subset itself, is
AutoAttack at least as strong as own-model PGD? (Not speed: a sanity check of the robustness
numbers, like ``mladv_quality.py``.)

    python benchmarks/autoattack_vs_pgd.py runs/exp-cxr3-online

The experiment reports PGD on ``robustness.max_images`` test images and AutoAttack on the first
``robustness.autoattack_images`` of them, so the two columns cover different images and
AutoAttack can read *higher*. For every finished (seed, arm) this crafts own-model PGD (the run's
``pgd:`` options, e.g. 10 steps, step eps/4, random start, seed = the run's seed) at
``robustness.autoattack_eps`` on exactly the AutoAttack images and prints one JSON line:
per run ``autoattack`` (as recorded), ``pgd_same_images``, and ``masking_suspect`` when
AutoAttack leaves more images correct than PGD does (AutoAttack's APGD-CE alone should match or
beat PGD-10; more would point at a broken evaluation or gradients the attacks cannot use).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _common import environment
from mladv.experiment.config import load_config
from mladv.experiment.measure import autoattack_subset, own_model_accuracy
from mladv.experiment.run import load_data
from mladv.models import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished (or partial) `mladv experiment` folder")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.run / "config.yaml").is_file():
        sys.exit(f"{args.run}: no config.yaml (not an experiment folder)")
    cfg = load_config(args.run / "config.yaml")
    rob = cfg.robustness
    if not rob.autoattack_images:
        sys.exit(f"{args.run}: the run has no AutoAttack numbers (autoattack_images is 0)")
    _, test, _ = load_data(cfg)
    sub = test.subset(autoattack_subset(test, cfg))
    key = f"acc_autoattack_{rob.autoattack_eps:g}"
    rows = []
    for path in sorted(args.run.glob("seed-*/results/*.json")):
        res = json.loads(path.read_text())
        if key not in res.get("robust", {}):
            continue
        seed = int(res["seed"])
        model, _ = load_checkpoint(path.parent.parent / res["model"].split()[0])
        pgd = own_model_accuracy(model.eval(), sub, "pgd", rob.autoattack_eps, seed, cfg.pgd,
                                 rob.batch_size)  # crafted exactly as the run's PGD columns
        aa = float(res["robust"][key])
        rows.append({"arm": res["arm"], "seed": seed, "autoattack": aa, "pgd_same_images": pgd,
                     "masking_suspect": aa > pgd + 1e-9})
    print(json.dumps({"benchmark": "autoattack_vs_pgd", "run": str(args.run),
                      "eps": rob.autoattack_eps, "images": len(sub), "pgd": cfg.pgd,
                      "suspects": sum(r["masking_suspect"] for r in rows), "runs": rows,
                      **environment()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

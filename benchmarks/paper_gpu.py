"""The paper's own setting on one GPU, sized to a time budget: Table 2 (configs/paper-gpu.yaml,
``mladv experiment``) and Table 1 (configs/transfer-paper-gpu.yaml, ``mladv transfer``).

Each part is one command meant for at most 5 minutes of one H200 (``--budget-s``, default 270 s
of the command's own time). Before it starts it measures the device (training and forward
images/s of ResNet50 at the run's image size, a few batches), prints its plan and time estimate,
sizes the epochs (and RayS's query budget for Table 1) to fit, writes the sized config it runs
to ``OUT_DIR/configs/``, runs it with a hard stop at the budget (both commands resume: a rerun
continues where the stop left off), and merges ``OUT_DIR/summary.json`` (plan, estimate, wall
time, exit status, the run's results).

Cost model (units: one ResNet50 forward + backward of one image at the run's size; a forward is
1/3, one attack step 1, an MLAdv step 1.5; other models by :data:`ARCH_COST`), per seed of
Table 2: ``13 E n_train`` for training the 7 arms (mixing arms 1, offline arms 2 (x_train and
x'_train), AdvProp arms 3 (clean + adversarial rows + one crafting step)), ``2 x 1.5 k n_train``
for crafting the two offline ``x'_train`` (MLAdv, ``k`` steps), and the robustness attacks;
plus the AdvProp grid once (2 arms x grid points x ``3 E`` on the selection split). Table 1:
``E n_train`` x the four models' costs, the seven attacks' steps on the test images (RayS: its
queries / 3), the scoring forwards, BM3D on the CPU.

``--smoke``: the same script end to end on the CPU at 32 px on phantoms (2 seeds, at most 2
epochs, tiny attack budgets) in a few minutes; tests/test_paper_gpu.py runs it.

    python benchmarks/paper_gpu.py data-cache/cxr3-full runs/paper-gpu table2   # GPU, <= 5 min
    python benchmarks/paper_gpu.py data-cache/cxr3-full runs/paper-gpu table1   # GPU, <= 5 min
    python benchmarks/paper_gpu.py phantoms:6 /tmp/smoke all --smoke            # CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mladv.configbase import read_yaml
from mladv.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"table2": ROOT / "configs" / "paper-gpu.yaml",
           "table1": ROOT / "configs" / "transfer-paper-gpu.yaml"}
# fwd+bwd cost of one image relative to ResNet50 at the same size (FLOPs, rounded; VGG16-BN's
# 3.8x FLOPs run at a higher GPU efficiency)
ARCH_COST = {"resnet50": 1.0, "resnet101": 1.9, "resnet152": 2.7, "vgg16_bn": 3.0}
ATTACK_STEPS = {"fgsm": 1, "pgd": 10, "mifgsm": 10, "pifgsm": 10, "gama": 100, "mladv": 15}
FORWARD, MLADV_STEP = 1 / 3, 1.5
STARTUP_S = {"cuda": 25.0, "cpu": 8.0}  # imports, CUDA context, data decode, report
SMOKE = {"image_size": 32, "seeds": 2, "epochs": 2, "robust_images": 4, "test_images": 6,
         "rays_budget": 30, "gama_steps": 10}


def read_config(part: str) -> dict[str, Any]:
    """The YAML of ``part`` as ``mladv`` reads it (its ``extends:`` base merged under it), as a
    mapping the sizing edits and writes out whole (the sized copy extends nothing)."""
    return read_yaml(CONFIGS[part])[0]


def count_images(data: str) -> int:
    """Images in ``data``: ``phantoms:N`` -> 3 N; an ImageFolder -> its image files."""
    if data.startswith("phantoms"):
        return 3 * int(data.split(":", 1)[1]) if ":" in data else 600
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
    root = Path(data.split(":", 1)[1] if ":" in data and not Path(data).exists() else data)
    if not root.is_dir():
        raise SystemExit(f"{data}: data folder does not exist (copy cxr3-full into the project, "
                         f"e.g. data-cache/cxr3-full; see configs/paper-gpu.yaml)")
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in exts)


def calibrate(size: int, batch: int, device: torch.device, steps: int = 4) -> dict[str, float]:
    """Measured ResNet50 images/s at ``size``: training (fwd + bwd + AdamW step, the training
    loop's speed options) and forward only; 2 warm-up batches, then ``steps``."""
    from mladv.models import build_model
    from mladv.training import amp_context, resolve_speed
    precision, channels_last = resolve_speed(device)
    model = build_model("resnet50", 3).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.arange(batch, device=device) % 3

    def train_step() -> None:
        with amp_context(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad(), amp_context(device, precision):
            model(x)

    rates = {}
    for name, fn in (("train_img_s", train_step), ("forward_img_s", forward)):
        for _ in range(2):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        rates[name] = round(batch * steps / (time.perf_counter() - start), 1)
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table2_units(cfg: dict[str, Any], n: int, epochs: int) -> float:
    """Estimated cost of Table 2 (module doc), in ResNet50 fwd+bwd image units."""
    n_tr = n * (1 - cfg["split"]["test_size"])
    n_te = n - n_tr
    n_sel = n_tr * (1 - cfg["online"]["selection"]["val_size"])
    k = cfg["mladv"].get("steps", 10)
    rob = cfg["robustness"]
    m = min(rob.get("max_images") or n_te, n_te)
    pgd_steps = cfg["pgd"].get("steps", 10)
    eval_units = (n_te * (1 + len(rob["noise_sigmas"])) * FORWARD
                  + m * (MLADV_STEP * k + pgd_steps * len(rob.get("pgd_eps", []))))
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], int) else len(cfg["seeds"])
    per_seed = 13 * epochs * n_tr + 2 * MLADV_STEP * k * n_tr + len(cfg["arms"]) * eval_units
    grid = len(cfg["online"]["grid"]["eps"]) * len(cfg["online"]["grid"]["steps"])
    selection = 2 * grid * 3 * epochs * n_sel
    return float(seeds * per_seed + selection)


def table1_units(cfg: dict[str, Any], n: int, epochs: int, rays_budget: int) -> float:
    """Estimated cost of Table 1 (module doc), in ResNet50 fwd+bwd image units."""
    n_tr = n * (1 - cfg["split"]["test_size"])
    n_te = min(n - n_tr, cfg.get("max_images") or n)
    models = [cfg["source"], *cfg["targets"]]
    train = sum(ARCH_COST.get(m["arch"], 1.0) for m in models) * epochs * n_tr
    steps = sum(ATTACK_STEPS.get(a["name"], 10) for a in cfg["attacks"] if a["name"] != "rays")
    attacks = n_te * (steps + FORWARD * rays_budget)
    scoring = len(cfg["attacks"]) * n_te * FORWARD * sum(ARCH_COST.get(m["arch"], 1.0)
                                                         for m in models)
    return float(train + attacks + scoring)


def size_table2(cfg: dict[str, Any], n: int, rate: float, budget: float) -> dict[str, Any]:
    """The largest epoch count (1 .. the config's) whose estimate fits ``budget`` seconds."""
    most = cfg["train"]["epochs"]
    fits = [e for e in range(1, most + 1) if table2_units(cfg, n, e) / rate <= budget]
    epochs = fits[-1] if fits else 1
    cfg["train"]["epochs"] = epochs
    return {"epochs": epochs, "estimate_s": round(table2_units(cfg, n, epochs) / rate, 1),
            "fits": bool(fits)}


def size_table1(cfg: dict[str, Any], n: int, rate: float, budget: float) -> dict[str, Any]:
    """RayS's query budget first (at most a quarter of ``budget``, 100 .. the config's), then
    the largest epoch count (1 .. the config's) that fits."""
    rays = next((a for a in cfg["attacks"] if a["name"] == "rays"), None)
    n_te = min(n * cfg["split"]["test_size"], cfg.get("max_images") or n)
    queries = 0
    if rays is not None:
        most = int(rays.get("options", {}).get("budget", 10_000))
        queries = int(min(most, max(min(100, most), budget / 4 * rate / (FORWARD * n_te))))
        rays.setdefault("options", {})["budget"] = queries
    most_epochs = cfg["source"]["epochs"]
    fits = [e for e in range(1, most_epochs + 1)
            if table1_units(cfg, n, e, queries) / rate <= budget]
    epochs = fits[-1] if fits else 1
    for spec in (cfg["source"], *cfg["targets"]):
        spec["epochs"] = epochs
    return {"epochs": epochs, "rays_budget": queries, "fits": bool(fits),
            "estimate_s": round(table1_units(cfg, n, epochs, queries) / rate, 1)}


def smoke_config(part: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The CPU smoke test's sizes (module doc): 32 px, 2 seeds, tiny attack budgets."""
    cfg["image_size"] = SMOKE["image_size"]
    cfg["device"] = "cpu"
    if part == "table2":
        cfg["seeds"] = SMOKE["seeds"]
        cfg["train"]["epochs"] = min(cfg["train"]["epochs"], SMOKE["epochs"])
        cfg["train"]["batch_size"] = 16
        cfg["mladv"]["steps"] = 2
        cfg["pgd"]["steps"] = 2
        cfg["robustness"].update(max_images=SMOKE["robust_images"], batch_size=8)
        return cfg
    cfg["max_images"] = SMOKE["test_images"]
    for spec in (cfg["source"], *cfg["targets"]):
        spec.update(epochs=min(spec["epochs"], SMOKE["epochs"]), batch_size=16)
    for attack in cfg["attacks"]:
        options = attack.setdefault("options", {})
        options.pop("precision", None)
        options.pop("channels_last", None)
        if attack["name"] == "rays":
            options["budget"] = SMOKE["rays_budget"]
        if attack["name"] in ("gama", "mladv", "pgd", "mifgsm", "pifgsm"):
            options["steps"] = SMOKE["gama_steps"] if attack["name"] == "gama" else 2
    cfg["bm3d"] = {"max_images": 2, "workers": 1}
    return cfg


def command(part: str, config: Path, data: str, out: Path, device: str) -> list[str]:
    study = "experiment" if part == "table2" else "transfer"
    return [sys.executable, "-m", "mladv", study, str(config), "--data", data, "--out", str(out),
            "--device", device]


def run_part(part: str, args: argparse.Namespace, device: torch.device,
             speed: dict[str, float], started: float) -> dict[str, Any]:
    """Size, print the plan, run with a hard stop at the budget, and summarise one part."""
    cfg = read_config(part)
    if args.smoke:
        cfg = smoke_config(part, cfg)
    n = count_images(args.data)
    startup = STARTUP_S[device.type]
    budget = args.budget_s - (time.perf_counter() - started) - startup
    rate = speed["train_img_s"]
    sized = (size_table2 if part == "table2" else size_table1)(cfg, n, rate, budget)
    out = Path(args.out_dir)
    config = out / "configs" / CONFIGS[part].name
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"# sized by benchmarks/paper_gpu.py ({'smoke' if args.smoke else 'GPU'}): "
                      f"{json.dumps(sized)}\n" + yaml.safe_dump(cfg, sort_keys=False))
    plan = {"part": part, "config": str(config), "data": args.data, "images": n,
            "device": str(device), "image_size": cfg["image_size"], **sized,
            "budget_s": round(budget, 1), "startup_s": startup}
    print(f"[paper_gpu] plan {json.dumps(plan)}", flush=True)
    if not sized["fits"]:
        print(f"[paper_gpu] {part}: even 1 epoch is estimated at {sized['estimate_s']} s, over "
              f"the {budget:.0f} s left; the hard stop ends it and a rerun resumes", flush=True)
    run_out = out / part
    cmd = command(part, config, args.data, run_out, str(device))
    wall = time.perf_counter()
    remaining = max(10.0, args.budget_s - (time.perf_counter() - started) - 5)
    try:
        rc: int | None = subprocess.run(cmd, timeout=remaining, check=False).returncode
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    if part == "table2" and timed_out:  # the report of the (seed, arm) runs that finished
        try:
            subprocess.run([*cmd, "--report-only"], check=False, timeout=120)
        except subprocess.TimeoutExpired:
            print(f"[paper_gpu] {part}: the report of the finished runs did not finish in "
                  f"120 s; rerun the command to resume", file=sys.stderr, flush=True)
    return {"plan": plan, "wall_s": round(time.perf_counter() - wall, 1), "returncode": rc,
            "stopped_at_budget": timed_out, "out": str(run_out),
            "results": _results(run_out, part)}


REPORTS = {"table2": ("results.json", "report.md"), "table1": ("transfer.json", "transfer.md")}


def _results(folder: Path, part: str) -> Any:
    """The run's results (``results.json`` of ``mladv experiment``, ``transfer.json`` of
    ``mladv transfer``, as written), or ``None`` when it did not get that far."""
    path = folder / REPORTS[part][0]
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="ImageFolder of the data (e.g. data-cache/cxr3-full) or "
                   "phantoms:N (smoke)")
    p.add_argument("out_dir")
    p.add_argument("part", nargs="?", default="all", choices=("table2", "table1", "all"))
    p.add_argument("--smoke", action="store_true", help="CPU, 32 px, tiny sizes (module doc)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for this command (default 270 per part; smoke 80 per part)")
    args = p.parse_args(argv)
    parts = ["table2", "table1"] if args.part == "all" else [args.part]
    per_part = 80.0 if args.smoke else 270.0
    args.budget_s = args.budget_s or per_part * len(parts)
    device = torch.device("cpu" if args.smoke else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.smoke:
        print("[paper_gpu] no CUDA device: this is the GPU run (use --smoke on a CPU)",
              file=sys.stderr)
        raise SystemExit(2)
    count_images(args.data)  # a missing folder fails before any work
    cfg0 = read_config(parts[0])
    size = SMOKE["image_size"] if args.smoke else int(cfg0["image_size"])
    speed = calibrate(size, 16 if args.smoke else 64, device)
    print(f"[paper_gpu] device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"ResNet50 at {size} px: {json.dumps(speed)}", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    budget_total = args.budget_s
    for i, part in enumerate(parts):
        args.budget_s = budget_total / len(parts) * (i + 1)  # each part: its share, cumulative
        summary[part] = run_part(part, args, device, speed, started)
        summary[part]["calibration"] = speed
        atomic_write_json(summary, summary_path)
    summary["wall_s_last_command"] = round(time.perf_counter() - started, 1)
    summary["torch"] = torch.__version__
    atomic_write_json(summary, summary_path)
    print(f"[paper_gpu] wrote {summary_path} "
          f"({summary['wall_s_last_command']} s, budget {budget_total:.0f} s)", flush=True)
    failed = [p for p in parts if summary[p]["returncode"] not in (0, None)]
    if failed:  # a budget stop (None) resumes; a failed study is an error
        print(f"[paper_gpu] failed: {', '.join(failed)} (its error is above)", file=sys.stderr)
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

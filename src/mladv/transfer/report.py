"""The transfer experiment's outputs: the Fig. 3 grid, the tables, ``transfer.json`` /
``.csv`` and the Markdown / HTML report (written by :mod:`mladv.reporting`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..data import ImageSet
from ..figures import save_figure
from ..reporting import Block, csv_text, fmt, write_report
from ..utils import atomic_write_json, atomic_write_text
from .claims import PAPER_TABLE1, PAPER_TARGETS, by_name
from .config import DISPLAY, TransferConfig


def pick_figure_image(source_pred: Tensor, labels: Tensor, index: Tensor) -> int:
    """The first BM3D-sampled test image the source classifies correctly (else the first)."""
    for i in index.tolist():
        if source_pred[i] == labels[i]:
            return int(i)
    return int(index[0])


def fig3_grid(path: Path, cam_pred: tuple[Tensor, Tensor], test: ImageSet,
              advs: dict[str, Tensor], denoised: dict[str, Tensor], index: Tensor, i: int,
              cfg: TransferConfig) -> None:
    """Fig. 3: one column per attack (and the clean image first); rows: the image, its noise
    amplified so that eps fills the grey range, its BM3D-denoised version, and the source
    model's Grad-CAM of it overlaid. ``cam_pred``: the Grad-CAM maps and predicted classes of
    the columns (:func:`mladv.transfer.measure.figure_panels`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = int((index == i).nonzero()[0]) if (index == i).any() else None
    clean = test.images[i:i + 1]
    names = ["clean", *advs]
    imgs = [clean] + [advs[t][i:i + 1] for t in advs]
    cams, preds = cam_pred
    gain = 0.5 / cfg.eps_unit()
    fig, axes = plt.subplots(4, len(names), figsize=(1.9 * len(names), 8.2), squeeze=False)
    for c, (name, img) in enumerate(zip(names, imgs)):
        noise = (0.5 + gain * (img - clean)).clamp(0, 1)
        dn = denoised[name][pos:pos + 1] if pos is not None else None
        panels = [img, noise, dn, None]
        for r, panel in enumerate(panels):
            ax = axes[r][c]
            ax.axis("off")
            if r == 3:
                ax.imshow(img[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(cams[c].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            elif panel is not None:
                ax.imshow(panel[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0][c].set_title(f"{name}\n-> {test.classes[int(preds[c])]}", fontsize=8)
    for r, row in enumerate(["image", f"noise x{gain:.0f}", "BM3D", "Grad-CAM"]):
        axes[r][0].text(-0.08, 0.5, row, transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.suptitle(f"true class: {test.classes[int(test.labels[i])]}  (eps = {cfg.eps:g}/255)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def _pct(v: float | None) -> str:
    """A share in % with one decimal, ``n/a`` when missing (:func:`mladv.reporting.fmt`)."""
    return fmt(v, 1, scale=100)


def _pm_pct(stat: dict[str, Any]) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` share, in % with one decimal."""
    if stat["mean"] is None:
        return "n/a"
    return fmt(stat["mean"], 1, scale=100) + ("" if stat["std"] is None
                                              else " ± " + fmt(stat["std"], 1, scale=100))


def main_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Ours, as Table 1 plus cost and size columns (success in %, norms in 1/255 units). With
    target seeds, each target's and the black-box average's column is ``mean ± std`` over the
    seeds (per seed: :func:`seeds_table`)."""
    models = results["models"]
    seeds = results.get("seeds")
    if seeds:
        targets = [g["key"] for g in seeds["targets"]]
        names = [f"{g['label']} (mean ± std)" for g in seeds["targets"]]
    else:
        targets = [k for k in models if k != "source"]
        names = [models[k]["label"] for k in targets]
    head = (["attack", f"white-box ({models['source']['label']})"] + names
            + ["black-box avg" + (" (mean ± std)" if seeds else ""), "s / image",
               "queries (mean)", "L1: mean abs δ ×255", "L2", "L∞ ×255", "SSIM", "PSNR dB"])
    rows = []
    for title, a in results["attacks"].items():
        s = a["success"]
        if seeds:
            cells = ([_pm_pct(a["seeds"]["targets"][k]) for k in targets]
                     + [_pm_pct(a["seeds"]["blackbox_avg"])])
        else:
            cells = [_pct(s[k]) for k in targets] + [_pct(s["blackbox_avg"])]
        rows.append([title, _pct(s["source"])] + cells + [fmt(a["seconds_per_image"], 3),
                       fmt(a["queries"]["mean"], 0) if "queries" in a else "—",
                       fmt(a["l1"], 2, scale=255), fmt(a["l2"], 2),
                       fmt(a["linf_max"], 2, scale=255), fmt(a["ssim"], 3), fmt(a["psnr"], 1)])
    return head, rows


def seeds_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """With target seeds: one row per attack and target seed, each target's success and that
    seed's black-box average (%)."""
    groups = results["seeds"]["targets"]
    head = ["attack", "target seed"] + [g["label"] for g in groups] + ["black-box avg"]
    rows = []
    for title, a in results["attacks"].items():
        for seed, row in a["seeds"]["per_seed"].items():
            rows.append([title, seed] + [_pct(row[g["key"]]) for g in groups]
                        + [_pct(row["blackbox_avg"])])
    return head, rows


def ci_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """MLAdv's black-box average minus FGSM's, GAMA's and RayS's, with the paired
    patient-level bootstrap CI (:func:`mladv.transfer.measure.blackbox_cis`; in points)."""
    head = ["attack", "baseline", "attack black-box avg", "baseline black-box avg",
            "difference (points)", "CI (points)", "verdict"]
    def points(v: float) -> str:
        return fmt(v, 1, sign=True, scale=100)
    rows = [[c["attack"], c["baseline"], _pct(c["ours"]), _pct(c["theirs"]), points(c["diff"]),
             f"{points(c['low'])} to {points(c['high'])}", c["verdict"]]
            for c in results.get("blackbox_ci", [])]
    return head, rows


def bm3d_cam_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["attack", "white-box after BM3D", "black-box avg after BM3D",
            "energy removed by BM3D",
            f"share of abs δ in top-{100 * results['cam']['top']:.0f}% CAM"]
    rows = []
    for title, a in results["attacks"].items():
        b = results["bm3d"]["attacks"][title]
        rows.append([title, _pct(b["success"]["source"]), _pct(b["success"]["blackbox_avg"]),
                     _pct(b["energy_removed"]), _pct(a["cam_aggregation"])])
    return head, rows


def paper_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows_by = by_name(results)
    head = ["attack", "paper: white-box (ResNet50)"] + [f"paper: {t}" for t in PAPER_TARGETS] + [
        "paper: black-box avg", "ours: white-box", "ours: black-box avg", "ours − paper (avg)"]
    rows = []
    for name, vals in PAPER_TABLE1.items():
        ours = rows_by.get(name)
        w = ours["success"]["source"] if ours else float("nan")
        bb = ours["success"]["blackbox_avg"] if ours else float("nan")
        rows.append([DISPLAY[name]] + [f"{v:.1f}" for v in vals]
                    + [_pct(w), _pct(bb), fmt(100 * bb - vals[4], 1) if ours else "n/a"])
    return head, rows


def models_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["role", "model", "clean test accuracy", "clean accuracy after BM3D", "train s"]
    rows = [["source" if k == "source" else "target", m["label"], _pct(m["clean_acc"]),
             _pct(m["clean_acc_bm3d"]), fmt(m.get("train_seconds"), 0)]
            for k, m in results["models"].items()]
    return head, rows


def report_blocks(results: dict[str, Any]) -> list[Block]:
    """The report as :mod:`mladv.reporting` blocks, rendered to Markdown and HTML."""
    d = results["data"]
    b = results["bm3d"]
    return [
        ("h", "Transfer of adversarial noise (Table 1), BM3D and class-activation maps"),
        ("p", f"Data: {d['source']} ({d['n_train']} training / {d['n_test']} test images, "
              f"{d['image_size']} px, classes {', '.join(d['classes'])}); test images from "
              f"{d['test_source']}. eps = {results['eps_255']:g}/255 for every attack, crafted on "
              f"the source model. Success = share of the images a model classifies correctly "
              f"when clean that it misclassifies after the attack (%). Wall time "
              f"{results['wall_seconds']:.0f} s."),
        ("table", *models_table(results)),
        ("h2", "Attack success (%), cost and size"),
        ("table", *main_table(results)),
        *_seed_blocks(results),
        ("h2", "The paper's sentence: MLAdv vs FGSM, GAMA and RayS (black-box average)"),
        ("p", "Paper: MLAdv 63.9% vs FGSM 23.1%, GAMA 35.0%, RayS 49.5%. Ours: the difference "
              "of black-box averages (over every target model" +
              (" and target seed" if results.get("seeds") else "") +
              ") on the same adversarial test images, with a paired patient-level bootstrap CI "
              f"({_ci_note(results)}): held when every interval lies above 0."),
        ("table", *ci_table(results)),
        ("ul", [c["sentence"] for c in results["claims"]
                if c["claim"].startswith("transfer ranking")]),
        ("h2", "The paper's Table 1 beside ours"),
        ("p", "Paper: COVID-19 radiography set, 224 px, ResNet50 → ResNet101 / VGG16 / ResNet152. "
              "Ours: the models and data above, so only the ranking and the gaps compare."),
        ("table", *paper_table(results)),
        ("h2", "BM3D denoising and Grad-CAM aggregation"),
        ("p", f"BM3D (sigma = {255 * b['sigma']:.1f}/255, profile '{b['profile']}') on {b['n']} "
              f"test images; success after BM3D is counted over the images each model gets "
              f"right on the denoised clean image. Energy removed = 1 − ‖D(x_a) − D(x)‖² / "
              f"‖x_a − x‖². CAM column: share of |δ| inside the "
              f"top-{100 * results['cam']['top']:.0f}% "
              f"Grad-CAM region of the clean image on the source model "
              f"({100 * results['cam']['top']:.0f}% = uniform noise)."),
        ("table", *bm3d_cam_table(results)),
        ("h2", "The paper's claims"),
        ("ul", [c["sentence"] for c in results["claims"]]),
        ("h2", "Fig. 3"),
        ("figure", results["figure"]["path"],
         "Per attack: adversarial image, amplified noise, BM3D-denoised image, Grad-CAM overlay"),
    ]


def _ci_note(results: dict[str, Any]) -> str:
    cis = results.get("blackbox_ci") or []
    if not cis:
        return "none measured"
    c = cis[0]
    return (f"{100 * c['level']:.0f}%, {c['n_boot']} resamples of {c['n_patients']} patients, "
            f"{c['n_images']} images")


def _seed_blocks(results: dict[str, Any]) -> list[Block]:
    """With target seeds: the per-seed rows under the main table."""
    seeds = results.get("seeds")
    if not seeds:
        return []
    return [("h2", f"Black-box success per target seed (%; seeds {seeds['seeds']})"),
            ("p", "The same adversarial images (crafted once on the source) scored on each "
                  "seed's target models; the table above gives mean ± std over these rows "
                  "(sample std, ddof = 1)."),
            ("table", *seeds_table(results))]


def csv_rows(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per attack, every number of the report (success as fractions, norms in [0, 1])."""
    models = results["models"]
    rows = []
    for title, a in results["attacks"].items():
        b = results["bm3d"]["attacks"][title]
        row = {"attack": title, "name": a["name"], "white_box": a["success"]["source"]}
        row.update({f"success_{models[k]['label']}": a["success"][k]
                    for k in models if k != "source"})
        if "seeds" in a:
            row.update({"black_box_avg_seed_mean": a["seeds"]["blackbox_avg"]["mean"],
                        "black_box_avg_seed_std": a["seeds"]["blackbox_avg"]["std"]})
        row.update({"black_box_avg": a["success"]["blackbox_avg"],
                    "seconds_per_image": a["seconds_per_image"],
                    "queries_mean": a.get("queries", {}).get("mean", ""),
                    "l1": a["l1"], "l2": a["l2"], "linf": a["linf_max"], "ssim": a["ssim"],
                    "psnr": a["psnr"], "bm3d_white_box": b["success"]["source"],
                    "bm3d_black_box_avg": b["success"]["blackbox_avg"],
                    "bm3d_energy_removed": b["energy_removed"],
                    "cam_aggregation": a["cam_aggregation"]})
        rows.append(row)
    return list(rows[0]) if rows else [], rows


def write_reports(results: dict[str, Any], out: Path) -> None:
    """``transfer.json``, ``transfer.csv``, ``transfer.md`` and self-contained ``transfer.html``
    (the Fig. 3 grid, already in ``out``, embedded)."""
    atomic_write_json(results, out / "transfer.json")  # strict JSON: NaN / inf -> null
    head, rows = csv_rows(results)
    atomic_write_text(csv_text(head, [[row[h] for h in head] for row in rows]),
                      out / "transfer.csv")
    write_report(report_blocks(results), "mladv transfer", out / "transfer.md",
                 out / "transfer.html")

"""configs/full-cpu-r50.yaml (issue 24): it loads, trains the paper's ResNet50 in bf16 at 96 px,
and a smoke of it (its arms, bf16 training, its robustness columns) runs end to end on four
phantoms per class with small_cnn at 32 px, one seed, one epoch, tiny subsets: the pipeline, not
the architecture (a ResNet50 smoke took minutes of CPU)."""
from __future__ import annotations

from pathlib import Path

import yaml

from experiment_helpers import run_quietly
from mladv.experiment.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "full-cpu-r50.yaml"


def test_the_r50_config_is_the_paper_model_with_the_fixed_arms():
    cfg = load_config(CONFIG)
    assert (cfg.arch, cfg.image_size, cfg.train.precision) == ("resnet50", 96, "bf16")
    assert cfg.arms == ["none", "multi-loss+projection", "multi-loss", "mixup"]
    assert cfg.seed_list() == [0, 1, 2]


def test_a_two_image_smoke_of_the_r50_config_runs(tmp_path_factory):
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(data="phantoms:4", seeds=[0], image_size=32, arch="small_cnn", progress=False)
    raw["train"].update(epochs=1, batch_size=16)  # one batch of >= 2 (BatchNorm)
    raw["augment"].update(batch_size=4, shard_size=8)
    raw["mladv"] = {"steps": 1}
    raw["pgd"] = {"steps": 1}
    raw["robustness"].update(max_images=2, batch_size=2)
    _, results = run_quietly(tmp_path_factory, "r50", raw)
    assert {r["arm"] for r in results["runs"]} == set(raw["arms"])

"""Data-parallel training across 2 CPU processes (gloo) against the single-process run, and the
rank / shard helpers of :mod:`mladv.distributed`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ddp_helpers import spawn_ranks
from mladv.data import make_phantoms
from mladv.distributed import (
    DistEnv,
    barrier,
    env_from_environment,
    init_from_env,
    rank_and_world,
    rank_batch,
)
from mladv.models import build_model
from mladv.training import random_hflip, train_classifier

TRAIN_KW = dict(epochs=2, batch_size=10, lr=3e-3, seed=3, progress=False)


def _data():
    return make_phantoms(9, 16, seed=4)  # 27 images: the last global batch is ragged (7)


def _index_of(img: torch.Tensor, images: torch.Tensor) -> int:
    """Index of ``img`` (possibly flipped) in ``images``; -1 if absent."""
    for cand in (img, img.flip(-1)):
        hit = (images == cand).flatten(1).all(1).nonzero()
        if len(hit):
            return int(hit[0])
    return -1


def _body(rank: int, world: int, out_dir: str) -> None:
    """One rank (see :func:`ddp_helpers.spawn_ranks`): DDP-train tiny_cnn, then craft this
    rank's augment shards."""
    assert rank_and_world() == (rank, world) and dist.get_backend() == "gloo"
    torch.manual_seed(100 + rank)  # different inits on purpose: DDP must sync them from rank 0
    model = build_model("tiny_cnn", 3)
    data = _data()
    inputs: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    history = train_classifier(model, data, transform=random_hflip, **TRAIN_KW)
    hook.remove()
    steps = -(-len(data) // TRAIN_KW["batch_size"])
    seen = [_index_of(img, data.images) for x in inputs[:steps] for img in x]  # epoch 1
    torch.save({"state": model.state_dict(), "history": history, "seen": seen},
               os.path.join(out_dir, f"rank{rank}.pt"))
    r, w = rank_and_world()  # what the augment command passes on
    _craft(os.path.join(out_dir, "shards"), r, w)
    barrier()


def _craft(out: str, rank: int, world: int) -> list:
    """Augment shards of a fixed model and data set (the same in every process)."""
    from mladv.attacks import make_attack
    from mladv.augment import craft_shards

    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).eval()
    atk = make_attack("mladv", model, steps=2, seed=0)
    return craft_shards(atk, _data(), out, shard_size=4, batch_size=2, seed=5, rank=rank,
                        world_size=world, progress=False)


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory):
    return spawn_ranks(_body, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def ddp_runs(ddp_dir):
    return [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single_run():
    torch.manual_seed(100)  # rank 0's initialisation
    model = build_model("tiny_cnn", 3)
    history = train_classifier(model, _data(), transform=random_hflip, **TRAIN_KW)
    return model.state_dict(), history


def test_augment_shards_of_two_ranks_equal_the_single_process_output(ddp_dir, tmp_path):
    from mladv.augment import load_shards

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: bit-identical arithmetic
    try:
        _craft(str(tmp_path / "single"), 0, 1)
    finally:
        torch.set_num_threads(threads)
    per_rank = sorted(p.name for p in (ddp_dir / "shards").glob("shard-*.pt"))
    assert per_rank == sorted(p.name for p in (tmp_path / "single").glob("shard-*.pt"))
    merged, single = load_shards(ddp_dir / "shards"), load_shards(tmp_path / "single")
    assert torch.equal(merged.images, single.images)
    assert torch.equal(merged.labels, single.labels) and merged.paths == single.paths
    assert not torch.equal(merged.images, _data().images)  # they really are adversarial copies


def test_ddp_weights_are_identical_on_every_rank(ddp_runs):
    a, b = (r["state"] for r in ddp_runs)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_training_equals_single_process_training(ddp_runs, single_run):
    """No BatchNorm in tiny_cnn, global batch kept: the same model up to float rounding."""
    state, history = single_run
    for k, v in state.items():
        torch.testing.assert_close(ddp_runs[0]["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for got, want in zip(ddp_runs[0]["history"], history, strict=True):
        assert got["train_acc"] == pytest.approx(want["train_acc"])
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert ddp_runs[0]["history"] == ddp_runs[1]["history"]


def test_ddp_ranks_split_each_epoch_between_them(ddp_runs):
    """What each rank's model really saw in epoch 1 (read by a forward hook): equal shares,
    together every item; the only overlap is the one zero-weight pad of the ragged last batch
    (27 items = 10 + 10 + 7, dealt 5/5, 5/5, 4/3+1 pad)."""
    seen0, seen1 = ddp_runs[0]["seen"], ddp_runs[1]["seen"]
    assert -1 not in seen0 + seen1
    assert len(seen0) == len(seen1) == 14
    assert sorted(set(seen0) | set(seen1)) == list(range(27))
    assert len(seen0 + seen1) - len(set(seen0 + seen1)) == 1


def test_rank_batch_pads_to_equal_shapes_with_zero_weight():
    chunk = torch.tensor([5, 6, 7])
    parts = [rank_batch(chunk, r, 2) for r in range(2)]
    assert [p[0].tolist() for p in parts] == [[5, 7], [6, 5]]
    assert [p[1].tolist() for p in parts] == [[1.0, 1.0], [1.0, 0.0]]
    one = [rank_batch(torch.tensor([9]), r, 4) for r in range(4)]
    assert all(len(i) == 1 for i, _ in one) and sum(w.sum().item() for _, w in one) == 1


def test_environment_is_read_like_torchrun_sets_it(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_from_environment() == DistEnv(0, 1, 0)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_from_environment() == DistEnv(3, 4, 1)
    assert rank_and_world() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 / WORLD_SIZE=4"):
        env_from_environment()


def test_init_from_env_without_torchrun_is_a_noop(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env("cpu") == torch.device("cpu")
    assert not dist.is_initialized()


@pytest.mark.slow
def test_torchrun_two_processes_train_from_the_cli(tmp_path):
    """``torchrun --nproc_per_node 2 -m mladv train``: both ranks train, rank 0 writes."""
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mladv", "train", "phantoms:6", "--arch", "tiny_cnn",
           "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports and writes


@pytest.mark.slow
def test_torchrun_two_processes_run_the_experiment_from_the_cli(tmp_path):
    """``torchrun --nproc_per_node 2 -m mladv experiment``: DDP training, x'_train crafted in
    shards by both ranks, one set of results written by rank 0."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("name: tiny\ndata: 'phantoms:10'\nimage_size: 16\narch: tiny_cnn\nseeds: 1\n"
                   "arms: [none, ls]\ntrain: {epochs: 1, batch_size: 8}\nmladv: {steps: 2}\n"
                   "augment: {shard_size: 6, batch_size: 6}\n"
                   "robustness: {attacks: [pgd], noise_sigmas: [0.05], max_images: 8}\n")
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src, "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mladv", "experiment", str(cfg), "--device", "cpu", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert {r["arm"] for r in results["runs"]} == {"none", "ls"}
    shards = sorted((run / "seed-0" / "adv" / "ls").glob("shard-*.pt"))
    assert len(shards) >= 2  # both ranks wrote shards
    n_adv = sum(len(torch.load(p, weights_only=True)["labels"]) for p in shards)
    ls = next(r for r in results["runs"] if r["arm"] == "ls")
    assert n_adv == ls["n_train"] // 2  # x'_train covers x_train exactly once
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports

"""AdvProp (and online) training under DDP: 2 CPU processes (gloo), each crafting its own rows
(through the twins for advprop)."""
from __future__ import annotations

import os

import pytest
import torch

from ddp_helpers import spawn_ranks
from mladv.adversarial_training import AdversarialBatch
from mladv.data import make_phantoms
from mladv.models import build_model
from mladv.training import train_classifier

# (mode, adv_fraction); replace-all leaves the main BN unused (find_unused_parameters)
RUNS = {"both": ("advprop", None), "replace-all": ("advprop", 1.0), "online": ("online", 0.5)}


def _body(rank: int, world: int, out_dir: str) -> None:
    data = make_phantoms(5, 16, seed=4)  # 15 images: batches of 8 and a ragged 7
    for name, (mode, fraction) in RUNS.items():
        torch.manual_seed(100 + rank)  # different inits: DDP syncs them from rank 0
        model = build_model("small_cnn", 3)
        adv = AdversarialBatch("pgd", mode=mode, eps=2 / 255, fraction=fraction, seed=rank)
        history = train_classifier(model, data, epochs=1, batch_size=8, lr=3e-3, seed=1,
                                   progress=False, adversarial=adv)
        params = {k: v.detach().clone() for k, v in adv.trainable.named_parameters()}
        torch.save({"params": params, "history": history, "calls": adv.calls},
                   os.path.join(out_dir, f"{name}-rank{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = spawn_ranks(_body, tmp_path_factory.mktemp("advprop-ddp"))
    return {name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=True) for r in range(2)]
            for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_advprop_ddp_keeps_every_parameter_identical_on_both_ranks(runs, name):
    a, b = runs[name]
    assert set(a["params"]) == set(b["params"])
    assert any(k.startswith("twins.") for k in a["params"]) == (RUNS[name][0] == "advprop")
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["history"] == b["history"]
    assert a["calls"] == b["calls"] == 2  # 1 epoch x 2 batches, each rank crafted its rows


def test_advprop_ddp_trains_the_twins_apart_from_the_main_bn(runs):
    params = runs["both"][0]["params"]
    main, twin = params["model.net.0.1.weight"], params["twins.0.weight"]
    assert not torch.equal(twin, torch.ones_like(twin))  # the twin was trained
    assert not torch.allclose(main, twin)
    only_adv = runs["replace-all"][0]["params"]  # every row adversarial: main BN never used
    assert torch.equal(only_adv["model.net.0.1.weight"], torch.ones_like(main))
    assert not torch.equal(only_adv["twins.0.weight"], torch.ones_like(main))

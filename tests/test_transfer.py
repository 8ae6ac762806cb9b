"""``mladv transfer`` in miniature, its config checks, and the 1-channel baselines."""
import csv
import json
import math

import pytest
import torch
import yaml

from mladv.attacks import fgsm, mifgsm, pgd, pifgsm
from mladv.cli import main
from mladv.models import build_model, save_checkpoint
from mladv.transfer import load_config, run_transfer
from mladv.transfer.report import bm3d_cam_table, main_table, models_table, paper_table

ATTACKS = [{"name": "fgsm"}, {"name": "pgd", "options": {"steps": 2}},
           {"name": "mifgsm", "options": {"steps": 2}}, {"name": "pifgsm", "options": {"steps": 2}},
           {"name": "gama", "options": {"steps": 4}}, {"name": "rays", "options": {"budget": 30}},
           {"name": "mladv", "options": {"steps": 2}}]

pytestmark = pytest.mark.usefixtures("one_thread")


def mini_config(**changes):
    cfg = {"name": "mini", "data": "phantoms:12", "image_size": 24, "split": {"test_size": 0.3},
           "seed": 0, "eps": 8, "source": {"arch": "small_cnn", "epochs": 2, "lr": 0.003},
           "targets": [{"arch": "tiny_cnn", "epochs": 1, "lr": 0.01},
                       {"arch": "small_cnn", "name": "small_cnn-b", "epochs": 1, "lr": 0.003}],
           "attacks": ATTACKS, "batch_size": 8, "bm3d": {"max_images": 1, "workers": 2},
           "progress": False}
    cfg.update(changes)
    return cfg


def write_yaml(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("make", [fgsm, pgd, mifgsm, pifgsm])
def test_baselines_keep_one_channel(make):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3)
    x, y = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    adv = make(model, eps=8 / 255)(x, y)
    assert adv.shape == (3, 1, 16, 16)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_miniature_run_produces_every_column_and_resumes(tmp_path):
    config = write_yaml(tmp_path / "mini.yaml", mini_config())
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        with pytest.warns(UserWarning, match="BM3D"):
            main(["transfer", str(config), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    for name in ("transfer.json", "transfer.csv", "transfer.md", "transfer.html",
                 "transfer_fig3.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["device"] == "cpu"  # flag resolved

    res = json.loads((out / "transfer.json").read_text())
    titles = ["FGSM", "PGD", "MI-FGSM", "PI-FGSM", "GAMA", "RayS", "MLAdv"]
    assert list(res["attacks"]) == titles
    assert {k: (m["label"], m["arch"]) for k, m in res["models"].items()} == {
        "source": ("small_cnn", "small_cnn"), "t1": ("tiny_cnn", "tiny_cnn"),
        "t2": ("small_cnn-b", "small_cnn")}
    for title, a in res["attacks"].items():
        assert set(a["success"]) == {"source", "t1", "t2", "blackbox_avg"}
        for key in ("seconds_per_image", "l1", "l2", "linf", "linf_max", "ssim", "psnr",
                    "cam_aggregation"):
            assert a[key] is not None, (title, key)
        assert a["linf_max"] <= 8 / 255 + 1e-6
        assert set(res["bm3d"]["attacks"][title]) == {"success", "energy_removed"}
    queries = res["attacks"]["RayS"]["queries"]
    assert 1 <= queries["mean"] <= queries["max"] <= 30
    assert len(res["claims"]) >= 6 and all(c["sentence"] for c in res["claims"])

    with open(out / "transfer.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["attack"] for r in rows] == titles
    assert {"white_box", "success_tiny_cnn", "success_small_cnn-b", "black_box_avg",
            "seconds_per_image", "queries_mean", "l1", "l2", "linf", "ssim", "psnr",
            "bm3d_white_box", "bm3d_black_box_avg", "bm3d_energy_removed",
            "cam_aggregation"} <= set(rows[0])
    html = (out / "transfer.html").read_text()
    assert "data:image/png;base64," in html and "63.9" in html  # figure embedded, paper beside
    assert "ResNet101" in (out / "transfer.md").read_text()
    log = (out / "log.txt").read_text()  # the one logger: progress also in OUT/log.txt
    assert "data phantoms" in log and "RayS: white-box" in log

    # the rerun reuses the checkpoints, the adversarial images and the BM3D outputs
    with pytest.warns(UserWarning, match="BM3D"):
        again = run_transfer(load_config(config, {"device": "cpu"}), out, log=lambda *_: None)
    assert all(a["resumed"] for a in again["attacks"].values())
    assert all(m["resumed"] for m in again["models"].values())
    for title in titles:
        assert again["attacks"][title]["success"]["source"] == pytest.approx(
            res["attacks"][title]["success"]["source"], nan_ok=True)


def test_crafted_images_are_reused_only_for_the_same_attack_settings(tmp_path):
    """The reuse key holds the attack's one fingerprint (``attack_fingerprint``): the same
    settings reuse the saved images; another value of any option is refused, naming it (the
    resume contract of both studies), and crafts in a fresh folder."""
    from mladv.data import make_phantoms
    from mladv.transfer.config import AttackSpec, TransferConfig
    from mladv.transfer.run import obtain_attack

    cfg = TransferConfig.model_validate(mini_config(batch_size=4))
    torch.manual_seed(0)
    source, test = build_model("tiny_cnn", 3), make_phantoms(1, 16, seed=0)

    def resumed(options, folder=tmp_path):
        spec = AttackSpec(name="pgd", options=options)
        return obtain_attack(cfg, spec, source, "source-fp", test, folder)["resumed"]
    assert [resumed({"steps": 2}), resumed({"steps": 2})] == [False, True]
    with pytest.raises(ValueError, match=r"PGD\.pt: holds a finished piece made with other "
                       r"settings \(attack\.inner_options\.steps: 2 there, 3 now\)"):
        resumed({"steps": 3})
    with pytest.raises(ValueError,
                       match=r"attack\.inner_options\.random_start: true there, false now"):
        resumed({"steps": 2, "random_start": False})
    assert [resumed({"steps": 3}, tmp_path / "b"), resumed({"steps": 3}, tmp_path / "b")] == [
        False, True]


def hand_results():
    """A small ``transfer.json``-shaped result: a missing (None) and a NaN success, an infinite
    PSNR (RayS leaves unfooled images unchanged), RayS queries."""
    nan = math.nan

    def attack(name, source, target, psnr, queries=None):
        a = {"name": name, "success": {"source": source, "t1": target, "blackbox_avg": target},
             "seconds_per_image": 0.0123, "l1": 1.5 / 255, "l2": 0.12345, "linf_max": 8 / 255,
             "ssim": 0.98765, "psnr": psnr, "cam_aggregation": 0.4321}
        if queries is not None:
            a["queries"] = {"mean": queries, "median": queries, "max": int(queries)}
        return a
    return {
        "models": {"source": {"label": "small_cnn", "clean_acc": 0.875, "clean_acc_bm3d": 0.75,
                              "train_seconds": 12.4},
                   "t1": {"label": "tiny_cnn", "clean_acc": 0.5, "clean_acc_bm3d": nan}},
        "attacks": {"PGD": attack("pgd", 1.0, None, 38.04),
                    "RayS": attack("rays", 0.5, nan, math.inf, queries=17.5),
                    "MLAdv": attack("mladv", nan, 0.3333, 40.0)},
        "bm3d": {"attacks": {t: {"success": {"source": 0.125, "blackbox_avg": nan},
                                 "energy_removed": 0.6666} for t in ("PGD", "RayS", "MLAdv")}},
        "cam": {"top": 0.2},
    }


def test_report_tables_format_numbers_as_before_through_the_one_formatter():
    """The tables' text (written by the old ``_f`` before it went; now ``reporting.fmt``):
    % with one decimal, 1/255 units, ``n/a`` for None / NaN, ``inf`` for an infinite PSNR."""
    results = hand_results()
    assert main_table(results)[1] == [
        ["PGD", "100.0", "n/a", "n/a", "0.012", "—", "1.50", "0.12", "8.00", "0.988", "38.0"],
        ["RayS", "50.0", "n/a", "n/a", "0.012", "18", "1.50", "0.12", "8.00", "0.988", "inf"],
        ["MLAdv", "n/a", "33.3", "33.3", "0.012", "—", "1.50", "0.12", "8.00", "0.988", "40.0"]]
    assert bm3d_cam_table(results)[1] == [[t, "12.5", "n/a", "66.7", "43.2"]
                                          for t in ("PGD", "RayS", "MLAdv")]
    assert [row[6:] for row in paper_table(results)[1]] == [
        ["n/a", "n/a", "n/a"], ["n/a", "n/a", "n/a"], ["50.0", "n/a", "n/a"],
        ["n/a", "33.3", "-30.6"]]
    assert models_table(results)[1] == [["source", "small_cnn", "87.5", "75.0", "12"],
                                        ["target", "tiny_cnn", "50.0", "n/a", "n/a"]]


def test_target_with_other_classes_is_refused_naming_both(tmp_path):
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, build_model("tiny_cnn", 2), classes=["cat", "dog"], image_size=24)
    cfg = mini_config(targets=[{"arch": "tiny_cnn", "name": "pets", "checkpoint": str(ckpt)}])
    with pytest.raises(ValueError, match=r"target model pets has classes \['cat', 'dog'\] but "
                                         r"the source model small_cnn has \['covid_like'"):
        run_transfer(load_config(write_yaml(tmp_path / "c.yaml", cfg)), tmp_path / "run",
                     log=lambda *_: None)
    assert not (tmp_path / "run" / "models").exists()  # refused before any training


@pytest.mark.parametrize("change, message", [
    ({"eps": 0}, "eps: Input should be greater than 0"),
    ({"eps": 300}, "eps: Input should be less than or equal to 255"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"attacks": [{"name": "deepfool"}]}, "unknown attack"),
    ({"attacks": [{"name": "fgsm", "options": {"eps": 0.1}}]}, "set by the run"),
    ({"targets": []}, "targets: List should have at least 1 item"),
    ({"source": {"arch": "resnet9000"}}, "unknown architecture"),
    ({"image_size": 8}, "image_size: Input should be greater than or equal to 16"),
    ({"image_size": 2048}, "image_size: Input should be less than or equal to 1024"),
    ({"targets": [{"arch": "vgg16"}]}, r":\d+: targets: image_size must be an integer in "
                                       r"32..1024 for vgg16, got 24"),
    ({"source": {"arch": "small_cnn", "freeze_backbone": True}},
     "source: freeze_backbone needs weights"),
    ({"source": {"arch": "small_cnn", "checkpoint": "m.pt", "weights": "w.pth"}},
     "source: weights / freeze_backbone are for a model trained here"),
])
def test_bad_configs_are_refused_in_one_line(tmp_path, change, message):
    path = write_yaml(tmp_path / "bad.yaml", mini_config(**change))
    with pytest.raises(ValueError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, options, message", [
    ("rays", {"budget": 0}, r"attacks\[0\]: .*budget"),
    ("rays", {"budget": 10, "speed": 3}, r"attack 'rays' has no option 'speed'"),
    ("mladv", {"steps": "two"}, r"attack 'mladv': steps must be int, got 'two'"),
    ("pgd", {"steps": 0}, r"attack 'pgd': .*steps"),
])
def test_bad_attack_options_are_refused_when_the_config_is_read(tmp_path, name, options,
                                                                 message):
    cfg = mini_config(attacks=[{"name": name, "options": options}])
    with pytest.raises(ValueError, match=message) as info:
        load_config(write_yaml(tmp_path / "c.yaml", cfg))
    assert "\n" not in str(info.value)


def test_paper_config_reads_the_covid_radiography_layout():
    cfg = load_config("configs/transfer-paper.yaml")
    assert cfg.data == ("covid-radiography[COVID,Normal,Viral Pneumonia]:"
                        "data/COVID-19_Radiography_Dataset")
    assert cfg.image_size == 224 and cfg.source.arch == "resnet50"


def _pretrained_file(tmp_path, seed=7):
    torch.manual_seed(seed)
    net = build_model("small_cnn", 5).net  # a "pretrained" small_cnn with another head size
    torch.save(net.state_dict(), tmp_path / "w.pth")
    return net.state_dict()


def test_pretrained_source_arrives_frozen_is_reused_and_retrained_on_new_weights(tmp_path):
    from mladv.models import head_name
    from mladv.transfer.run import obtain_model, prepare_data

    pretrained = _pretrained_file(tmp_path)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", mini_config(source={
        "arch": "small_cnn", "epochs": 1, "lr": 0.05, "weights": str(tmp_path / "w.pth"),
        "freeze_backbone": True})))
    train, _ = prepare_data(cfg)
    cpu = torch.device("cpu")

    def obtain():
        return obtain_model(cfg, "source", cfg.source, 0, train, tmp_path / "models", cpu)

    model, info = obtain()
    assert info["weights"] == str(tmp_path / "w.pth") and info["resumed"] is False
    head = head_name(model.net)
    state = model.net.state_dict()
    assert state[f"{head}.weight"].shape == (len(train.classes), 128)  # a new head
    backbone = [k for k in pretrained if not k.startswith(head)]
    assert backbone and all(torch.equal(state[k], pretrained[k]) for k in backbone)  # frozen
    saved = torch.load(info["checkpoint"], weights_only=True)
    assert saved["weights"] == str(tmp_path / "w.pth") and saved["freeze_backbone"] is True
    assert len(saved["trained_on"]) == len(train)

    again, info2 = obtain()  # same weights file: the checkpoint is reused
    assert info2["resumed"] is True and info2["fingerprint"] == info["fingerprint"]
    other = _pretrained_file(tmp_path, seed=8)  # same path, other content: refused, naming it
    with pytest.raises(ValueError, match=r"source-small_cnn\.pt: holds a trained model made "
                       r"with other settings \(weights_sha1: "):
        obtain()
    (tmp_path / "models" / "source-small_cnn.pt").unlink()  # deleted: trained again
    third, info3 = obtain()
    assert info3["resumed"] is False and info3["fingerprint"] != info["fingerprint"]
    assert torch.equal(third.net.state_dict()[backbone[0]], other[backbone[0]])


def test_bad_weights_and_out_are_refused_before_the_data_loads(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the data was read before the error")
    monkeypatch.setattr("mladv.transfer.run.load_source", forbidden)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", mini_config(
        targets=[{"arch": "tiny_cnn", "name": "tv", "weights": str(tmp_path / "none.pth")}])))
    with pytest.raises(ValueError, match=r"^t1 model tv: weights '.*none.pth': no such file$"):
        run_transfer(cfg, tmp_path / "run", log=lambda *_: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^--out .*file: is a file, not a folder$"):
        run_transfer(load_config(tmp_path / "c.yaml"), tmp_path / "file", log=lambda *_: None)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["transfer", str(tmp_path / "missing.yaml")])
    assert info.value.code == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err

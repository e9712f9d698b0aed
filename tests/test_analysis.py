"""Initialisations (statistics transfer, transfusion), the data-size axis, and the
feature-reuse measurements, each on a case whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxrlab.analysis import (
    analyze_reuse,
    batch_bounds,
    init_kind,
    knn_accuracy,
    linear_cka,
    transfer_summary,
    weight_change,
)
from cxrlab.data import prepare_data
from cxrlab.data.synth import write_synthetic_dataset
from cxrlab.errors import CheckpointError, ConfigError, DataError
from cxrlab.models import create_model, statistics_transfer
from cxrlab.runs import load_run_model
from cxrlab.training import TrainConfig, train

from conftest import tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_synthetic_dataset(out, per_class=12, seed=3, size=48, progress=False)


def tiny(data: Path, **kw) -> TrainConfig:
    return tiny_config(data, **({"epochs": 1, "keep_init": True} | kw))


# ------------------------------------------------------------------------------------- CKA
def _direct_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Full-batch linear CKA on centred features (Kornblith et al. 2019, eq. 5)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_cka_known_cases_and_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))  # an orthogonal transform
    assert linear_cka(x, x, 64) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q, 64) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.7 * x, 64) == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(600, 12, generator=g)
    assert abs(linear_cka(x, noise, 64)) < 0.03  # unbiased: about 0 (biased CKA is not)
    assert _direct_cka(x, noise) > 0.01  # the full-batch biased estimate sits above 0
    # a partly related pair: minibatch unbiased CKA agrees with the full-batch value, and
    # does not depend on the batch size (the biased per-batch estimator would)
    y = x @ torch.randn(12, 5, generator=g) + 2.0 * torch.randn(600, 5, generator=g)
    direct = _direct_cka(x, y)
    for bs in (32, 100, 600):
        assert linear_cka(x, y, bs) == pytest.approx(direct, abs=0.04)
    # inputs of several dims are flattened; images as (n, c, h, w)
    img = torch.randn(40, 2, 3, 3, generator=g)
    assert linear_cka(img, img.flatten(1), 10) == pytest.approx(1.0, abs=1e-9)


def test_cka_batches_never_drop_below_four_examples() -> None:
    assert batch_bounds(10, 8) == [(0, 10)]  # a remainder of 2 joins the batch before it
    assert batch_bounds(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert batch_bounds(5, 64) == [(0, 5)]
    with pytest.raises(ValueError, match="at least 4"):
        batch_bounds(3, 64)
    with pytest.raises(ValueError, match="at least 4"):
        batch_bounds(100, 2)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.zeros(8, 2), torch.zeros(9, 2))


def test_knn_probe_matches_a_direct_majority_vote() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 3
    yb = rng.integers(0, 3, 200)
    yq = rng.integers(0, 3, 60)
    bank = centres[yb] + rng.normal(size=(200, 8))
    query = centres[yq] + rng.normal(size=(60, 8))
    ref = KNeighborsClassifier(n_neighbors=15, metric="cosine").fit(bank, yb).score(query, yq)
    ours = knn_accuracy(
        torch.tensor(bank),
        torch.tensor(yb),
        torch.tensor(query),
        torch.tensor(yq),
        k=15,
        temperature=1e6,
    )  # near-equal votes
    assert ours == pytest.approx(ref, abs=1 / 60)
    assert (
        knn_accuracy(
            torch.tensor(bank), torch.tensor(yb), torch.tensor(bank), torch.tensor(yb), k=1
        )
        == 1.0
    )


# -------------------------------------------------------------------------- initialisations
def test_statistics_transfer_redraws_from_pretrained_statistics() -> None:
    wt = create_model("efficientnet_lite0", 4, "imagenet")
    st = create_model("efficientnet_lite0", 4, "stats", seed=1)
    again = create_model("efficientnet_lite0", 4, "stats", seed=1)
    other = create_model("efficientnet_lite0", 4, "stats", seed=2)
    a, b, c, w = (m.net.state_dict() for m in (st, again, other, wt))
    head = {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a if k not in head)  # the seed fixes the draw
    key = "blocks.5.0.conv_pw.weight"  # a large conv tensor
    assert not torch.equal(a[key], c[key]) and not torch.equal(a[key], w[key])
    assert float(a[key].mean()) == pytest.approx(float(w[key].mean()), abs=2e-3)
    assert float(a[key].std()) == pytest.approx(float(w[key].std()), rel=0.02)
    # features are gone: the redrawn tensor is uncorrelated with the pretrained one
    corr = np.corrcoef(a[key].flatten().numpy(), w[key].flatten().numpy())[0, 1]
    assert abs(corr) < 0.02
    assert torch.equal(a["bn1.weight"], torch.ones_like(a["bn1.weight"]))  # norms reset
    assert torch.equal(a["bn1.running_var"], torch.ones_like(a["bn1.running_var"]))
    report = st.init_report
    assert report.method == "statistics transfer" and report.redrawn["conv"] == 49
    assert report.norms_reset == 49 and not report.pretrained_units


def test_transfusion_keeps_the_first_units_pretrained() -> None:
    wt = create_model("efficientnet_lite0", 4, "imagenet").net.state_dict()
    tf = create_model("efficientnet_lite0", 4, "imagenet:3", seed=0)
    state = tf.net.state_dict()
    kept = [p for unit in tf.units[:3] for p in unit]
    redrawn = [p for unit in tf.units[3:] for p in unit if "conv" in p]
    assert all(torch.equal(state[p], wt[p]) for p in kept)
    assert not any(torch.equal(state[p], wt[p]) for p in redrawn)
    assert tf.init_report.pretrained_units == tf.unit_names[:3]
    assert "transfusion" in tf.weights_source
    with pytest.raises(ConfigError, match="has 17 units"):
        create_model("efficientnet_lite0", 4, "imagenet:40")
    with pytest.raises(ConfigError, match="how many leading units"):
        create_model("efficientnet_lite0", 4, "imagenet:all")


def test_statistics_transfer_redraws_vit_position_embedding_and_class_token() -> None:
    vit = create_model("vit_tiny", 4, "none", image_size=32)
    before = {k: v.clone() for k, v in vit.net.state_dict().items()}
    report = statistics_transfer(vit.net, vit.unit_names, vit.units, seed=0)
    after = vit.net.state_dict()
    assert set(report.other_redrawn) >= {"cls_token", "pos_embed"}
    assert not torch.equal(before["pos_embed"], after["pos_embed"])
    assert report.redrawn["linear"] > 0 and report.norms_reset > 0


# ------------------------------------------------------------------------- data-size axis
def test_training_subsets_are_stratified_nested_and_seed_free(phantoms: Path) -> None:
    split = prepare_data(phantoms, image_size=32, progress=False).split
    train_rows = split.indices("train")
    small, large = split.train_subset(0.3), split.train_subset(0.6)
    assert set(small) < set(large) < set(train_rows) and split.train_subset(1.0) == train_rows
    per_class = {c: sum(split.records[i].label == c for i in small) for c in split.classes}
    full = {c: sum(split.records[i].label == c for i in train_rows) for c in split.classes}
    assert all(per_class[c] == max(1, round(0.3 * full[c])) for c in split.classes)
    two = split.train_subset(2)
    assert len(two) == 2 * len(split.classes)
    with pytest.raises(DataError, match="has only"):
        split.train_subset(1000)
    with pytest.raises(DataError, match="whole count"):
        split.train_subset(2.5)
    with pytest.raises(ConfigError, match="train_size"):
        TrainConfig(train_size=-1)


# ------------------------------------------------------------------ runs and their analysis
def test_runs_keep_their_initialisation_and_train_on_a_subset(
    phantoms: Path, tmp_path: Path
) -> None:
    res = train(
        tiny(phantoms, model="efficientnet_lite0", weights="stats", train_size=0.5), tmp_path / "st"
    )
    n_train = len(prepare_data(phantoms, image_size=32, progress=False).split.indices("train"))
    assert res.metrics["train_images"] == pytest.approx(n_train / 2, abs=4)
    assert res.card["initialisation"]["method"] == "statistics transfer"
    assert res.card["weights"].startswith("stats (statistics transfer of imagenet")
    init = load_file(str(tmp_path / "st" / "init.safetensors"))
    again = create_model("efficientnet_lite0", 4, "stats", seed=0, image_size=32).state_dict()
    assert all(torch.equal(init[k], again[k]) for k in init if "classifier" not in k)
    _, card = load_run_model(tmp_path / "st", file="init.safetensors")
    assert init_kind(card) == "ST"


def test_reuse_measurements_on_runs_whose_answer_is_known(phantoms: Path, tmp_path: Path) -> None:
    head = train(tiny(phantoms, freeze="head", epochs=2), tmp_path / "head")
    half = train(tiny(phantoms, freeze="0.5", epochs=2), tmp_path / "half")
    full = train(tiny(phantoms, epochs=2, lr=3e-3), tmp_path / "full")
    res = analyze_reuse(
        [head.run_dir, half.run_dir, full.run_dir],
        out=tmp_path / "an",
        batch_size=8,
        progress=False,
    )
    rows = {(r["run"], r["unit_index"]): r for r in res.table}
    n_units = 9  # resnet18: stem + 8 blocks
    for u in range(n_units):
        r = rows[("head", u)]  # nothing of the backbone trained
        assert r["cka_to_init"] == pytest.approx(1.0, abs=1e-9)
        assert r["weight_change"] == 0.0
        assert r["reset_to_init_accuracy"] == r["accuracy"]
    frozen = 4  # floor(0.5 * 9)
    for u in range(n_units):
        r = rows[("half", u)]
        if u < frozen:
            assert r["weight_change"] == 0.0 and r["cka_to_init"] == pytest.approx(1.0)
            assert r["reset_to_init_accuracy"] == r["accuracy"]
        else:
            assert r["weight_change"] > 0
    assert all(rows[("full", u)]["weight_change"] > 0 for u in range(n_units))
    assert [r["units_shared_with_init"] for r in res.runs] == [n_units, frozen, 0]
    assert all(0 <= r["knn_accuracy"] <= 1 for r in res.table)
    out = tmp_path / "an"
    for name in ("reuse.json", "reuse.md", "reuse_units.csv", "reuse_units.png"):
        assert (out / name).is_file(), name
    assert "| resnet18 | RI | head |" in (out / "reuse.md").read_text()
    # two models trained from different weights are compared with each other, not themselves
    other = train(
        tiny(
            phantoms, epochs=2, lr=3e-3, model="resnet18", weights="none", keep_init=False, seed=1
        ),
        tmp_path / "seed1",
    )
    res2 = analyze_reuse(
        [full.run_dir, other.run_dir],
        out=tmp_path / "an2",
        batch_size=8,
        reinit=False,
        progress=False,
    )
    # a run without init.safetensors: its random draw is rebuilt from its seed
    assert any("rebuilt from its seed 1" in n for n in res2.notes)
    cka = [r["cka_to_init"] for r in res2.table if r["run"] == "seed1"]
    assert np.isfinite(cka).all() and all(0 < c <= 1 + 1e-9 for c in cka)


def test_reuse_rebuilds_the_starting_weights_a_run_did_not_keep(
    phantoms: Path, tmp_path: Path
) -> None:
    """Without init.safetensors, the starting weights are drawn again from the card: the
    measurements equal those against the kept file. Weights that cannot be rebuilt leave
    the numbers null in reuse.json, each with its reason beside it (strict JSON)."""
    import shutil

    kept = train(tiny(phantoms, freeze="0.5", epochs=2), tmp_path / "kept").run_dir
    lost = tmp_path / "lost"
    shutil.copytree(kept, lost)
    (lost / "init.safetensors").unlink()
    res = analyze_reuse([kept, lost], out=tmp_path / "an", batch_size=8, progress=False)
    rows = {}
    for r in res.table:
        rows.setdefault(r["run"], []).append(r)
    for key in ("cka_to_init", "weight_change", "reset_to_init_accuracy"):
        assert [r[key] for r in rows["lost"]] == pytest.approx([r[key] for r in rows["kept"]])
    assert any("lost: no init.safetensors: starting weights rebuilt" in n for n in res.notes)
    # a card whose weights came from elsewhere: not rebuilt, and null with a reason
    card = json.loads((lost / "model_card.json").read_text())
    card["weights"] = "a checkpoint from another lab"
    (lost / "model_card.json").write_text(json.dumps(card))
    res = analyze_reuse([lost], out=tmp_path / "an2", batch_size=8, reinit=False, progress=False)
    text = (tmp_path / "an2" / "reuse.json").read_text()
    assert "NaN" not in text
    unit = json.loads(text)["units"][0]
    assert unit["cka_to_init"] is None and unit["weight_change"] is None
    assert "another lab" in unit["why_null"]["cka_to_init"]
    assert "--keep-init" in unit["why_null"]["cka_to_init"]


def test_weight_change_is_relative_per_unit() -> None:
    init = create_model("resnet18", 2, "none", image_size=32)
    model = create_model("resnet18", 2, "none", image_size=32)
    model.load_state_dict(init.state_dict())
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if name in model.units[2]:
                p.mul_(1.1)
    change = weight_change(model, init)
    assert change[2] == pytest.approx(0.1, rel=1e-6)
    assert change[0] == 0.0 and change[3] == 0.0


def test_reuse_refuses_runs_on_other_images(phantoms: Path, tmp_path: Path) -> None:
    a = train(tiny(phantoms, keep_init=False), tmp_path / "a").run_dir
    b = train(tiny(phantoms, keep_init=False, image_size=40), tmp_path / "b").run_dir
    with pytest.raises(CheckpointError, match=r"other input size.*same images"):
        analyze_reuse([a, b], out=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="at least one"):
        analyze_reuse([], out=tmp_path / "x")


def test_transfer_summary_gain_and_share() -> None:
    runs = [
        {"model": "m", "freeze": "none", "train_size": 1.0, "init": k, "accuracy": a}
        for k, accs in (
            ("WT", [0.9, 0.92, 0.91]),
            ("ST", [0.8, 0.81, 0.79]),
            ("RI", [0.7, 0.72, 0.71]),
        )
        for a in accs
    ]
    (row,) = transfer_summary(runs)
    assert row["gain"] == pytest.approx(0.2)
    assert row["st_share"] == pytest.approx(0.45)
    lo, hi = row["gain_ci"]
    assert lo < 0.2 < hi and lo > 0.15
    assert row["st_share_ci"][0] < 0.45 < row["st_share_ci"][1]
    assert json.dumps(row)  # plain numbers only
    assert "xr_wt_gain" not in row


def test_transfer_summary_xray_pretraining_gains() -> None:
    """XR-WT against WT and XR-RI against RI, each with its interval; one seed: no interval."""
    accs = {"WT": [0.80, 0.82, 0.81], "XR-WT": [0.83, 0.85, 0.84], "RI": [0.5, 0.52, 0.51],
            "XR-RI": [0.45]}  # fmt: skip
    runs = [{"model": "m", "freeze": "none", "train_size": 0.1, "init": k, "accuracy": a}
            for k, v in accs.items() for a in v]  # fmt: skip
    (row,) = transfer_summary(runs)
    assert row["xr_wt_gain"] == pytest.approx(0.03)
    lo, hi = row["xr_wt_gain_ci"]
    assert 0.0 < lo < 0.03 < hi < 0.06
    assert row["xr_ri_gain"] == pytest.approx(-0.06) and row["xr_ri_gain_ci"] is None
    from cxrlab.analysis.report import _xray_markdown

    (table_row,) = [line for line in _xray_markdown([row]) if line.startswith("| m ")]
    assert "| 81.0 (3) | 84.0 (3) | 51.0 (3) | 45.0 (1) | +3.0 [" in table_row
    assert table_row.endswith("| -6.0 |")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vit_b_16", "efficientnet_lite0",
                                  "vit_tiny", "vit_small"])  # fmt: skip
def test_statistics_transfer_covers_every_tensor_of_every_registered_model(name: str) -> None:
    from torch import nn

    from cxrlab.models import list_models

    assert set(list_models()) <= {"resnet18", "resnet34", "resnet50", "vit_b_16",
                                  "efficientnet_lite0", "vit_tiny", "vit_small"}  # fmt: skip
    model = create_model(name, 3, "none", image_size=224)
    torch.manual_seed(0)
    with torch.no_grad():  # no constant tensors, none that looks like a fresh norm layer
        for p in model.net.parameters():
            p.add_(0.5 + 0.1 * torch.randn_like(p))
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    statistics_transfer(model.net, model.unit_names, model.units, seed=0)
    after = model.net.state_dict()
    modules = dict(model.net.named_modules())
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    for unit in model.units:
        for p in unit:
            owner = modules.get(p.rsplit(".", 1)[0] if "." in p else "")
            if isinstance(owner, norms):
                fresh = 1.0 if p.endswith("weight") else 0.0
                assert torch.all(after[p] == fresh), p
            else:
                assert not torch.equal(after[p], before[p]), f"{p} was not redrawn"
    for p in model.head:  # the classifier is left as it is
        assert torch.equal(after[p], before[p])


def test_resumed_run_names_the_weights_it_started_from(phantoms: Path, tmp_path: Path) -> None:
    import os
    import signal

    from cxrlab.errors import TrainingInterrupted

    cfg = tiny(phantoms, model="efficientnet_lite0", weights="stats", epochs=2)

    def stop(epoch: int, step: int, model) -> None:
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "cut", on_step=stop)
    resumed = train(cfg, tmp_path / "cut", resume=True)  # rebuilt without re-drawing
    assert resumed.card["weights"].startswith("stats (statistics transfer")
    assert resumed.card["initialisation"]["method"] == "statistics transfer"
    resolved = json.loads((tmp_path / "cut" / "config.json").read_text())["resolved"]
    assert resolved["weights_source"] == resumed.card["weights"]

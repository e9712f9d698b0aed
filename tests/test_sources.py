"""Several sources as one dataset: the view, class maps, each image's source through the
split, the card and the metrics, balanced sampling, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import prepare_data, scan_dataset, write_synthetic_dataset
from cxrlab.data.prepare import resolve_data
from cxrlab.data.sources import combine_sources, confounds, parse_sources
from cxrlab.engine.batches import ImageBatches, sampling_strata
from cxrlab.errors import ConfigError, DataError
from cxrlab.evaluation import classification_metrics

from conftest import TINY_TRAIN, tiny_config


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Hospital A: COVID and Normal (with lung masks); hospital B: Normal and Viral
    Pneumonia, drawn with another seed. One source holds all of COVID, the other all of
    Viral Pneumonia: the source predicts those classes."""
    base = tmp_path_factory.mktemp("sources")
    a = write_synthetic_dataset(base / "a", per_class=6, size=40, seed=1, masks=True,
                                progress=False)  # fmt: skip
    b = write_synthetic_dataset(base / "b", per_class=6, size=48, seed=2, progress=False)
    for root, drop in ((a, ("Lung_Opacity", "Viral Pneumonia")), (b, ("COVID", "Lung_Opacity"))):
        for cls in drop:
            shutil.rmtree(root / cls)
    # one of A's Normal images is also in B (a copy across sources)
    shutil.copy(a / "Normal" / "images" / "Normal-1.png", b / "Normal" / "images" / "copy.png")
    return a, b


def test_data_scan_prints_the_class_source_table(two_sources, tmp_path, monkeypatch,
                                                 capsys) -> None:  # fmt: skip
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    assert main(["data", "scan", f"A={a}", f"B={b}", "--class-map",
                 "B=Viral Pneumonia=Pneumonia"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Images by class and source:" in out
    assert [ln.split() for ln in out.splitlines() if ln.startswith("Normal ")][-1] == [
        "Normal", "6", "7"]  # fmt: skip
    assert "every COVID image comes from A: the source predicts the class" in out
    assert "Exact copies across sources: 1" in out


def test_a_view_of_two_sources(two_sources, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    view = resolve_data([f"A={a}", f"B={b}"], ["B=Viral Pneumonia=Pneumonia"])
    assert view == resolve_data([f"A={a}", f"B={b}"], ["B=Viral Pneumonia=Pneumonia"])
    report = scan_dataset(view, progress=False)
    assert report.classes == ("COVID", "Normal", "Pneumonia")
    assert report.class_counts() == {"COVID": 6, "Normal": 13, "Pneumonia": 6}
    path = "Normal/images/A__Normal__Normal-1.png"
    assert (view / path).resolve() == (a / "Normal" / "images" / "Normal-1.png").resolve()
    summary = report.source_summary()
    assert summary["images"] == {"COVID": {"A": 6, "B": 0}, "Normal": {"A": 6, "B": 7},
                                 "Pneumonia": {"A": 0, "B": 6}}  # fmt: skip
    assert summary["copies_across"] == 1
    assert summary["confounds"] == [
        "every COVID image comes from A: the source predicts the class",
        "every Pneumonia image comes from B: the source predicts the class",
    ]
    # the split records each image's source, and keeps the copy across sources together
    prepared = prepare_data(view, image_size=32, progress=False)
    split = prepared.split
    assert {split.source_of(i) for i in range(len(split.records))} == {"A", "B"}
    by_hash: dict[str, set[str]] = {}
    for r, s in zip(split.records, split.assignment):
        by_hash.setdefault(r.hash, set()).add(s)
    assert all(len(s) == 1 for s in by_hash.values())
    csv_text = split.to_csv().splitlines()
    assert csv_text[1].endswith(",group,patient,source,split")
    assert csv_text[2].split(",")[-2] in "AB"
    # masks beside a linked image's original are found: A's images have valid lung masks
    with pytest.warns(UserWarning, match="13 of 25 images left out"):
        masked = prepare_data(view, image_size=32, lungs="remove", doubtful="skip",
                              progress=False)  # fmt: skip
    assert len(masked.left_out) == 13  # B's images (and the copy of A's) have no mask files
    assert {masked.split.source_of(i) for i in range(len(masked.split.records))} == {"A"}


def test_class_maps_merge_and_drop(two_sources, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    sources = parse_sources([f"A={a}", f"B={b}"],
                            ["A=COVID=Sick,Normal=-", "B=Viral Pneumonia=Sick"])  # fmt: skip
    report = scan_dataset(combine_sources(sources), progress=False)
    assert report.class_counts() == {"Normal": 7, "Sick": 12}
    assert report.source_summary()["images"]["Normal"] == {"A": 0, "B": 7}
    # one source with a map needs no name
    one = scan_dataset(resolve_data(str(b), ["Viral Pneumonia=VP"]), progress=False)
    assert one.classes == ("Normal", "VP") and set(one.sources.values()) == {b.name}


def test_sources_csv_names_finer_sources(two_sources, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    finer = tmp_path / "hospitals.csv"
    finer.write_text("path,source\nNormal/images/Normal-2.png,B-ward-7\n")
    report = scan_dataset(resolve_data([f"A={a}", f"B={b}"], (), [f"B={finer}"]),
                          progress=False)  # fmt: skip
    names = [report.source_of(r.path) for r in report.records]
    assert names.count("B-ward-7") == 1 and names.count("B") == 12


@pytest.mark.parametrize(
    ("maps", "finer", "message"),
    [
        (["A=Pneumonia=X"], "", "names 'Pneumonia', which it does not have"),
        (["A=COVID=-,Normal=-"], "", "Source 'A' has no image left after its class map"),
        (["A=Normal=normal"], "", "Sources name one class two ways: 'normal' (A) and 'Normal'"),
        (["C=Normal=X"], "", "--class-map names source 'C', which no --data names"),
        ([], "path,source\nNormal/images/nope.png,x\n", "names 1 file(s) that B does not have"),
    ],
)
def test_bad_sources_get_one_line(two_sources, tmp_path, monkeypatch, capsys, maps, finer,
                                  message) -> None:  # fmt: skip
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    args = ["data", "scan", f"A={a}", f"B={b}"]
    for m in maps:
        args += ["--class-map", m]
    if finer:
        (tmp_path / "f.csv").write_text(finer)
        args += ["--sources-csv", f"B={tmp_path / 'f.csv'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_two_sources_with_one_name_are_refused(two_sources) -> None:
    a, _ = two_sources
    with pytest.raises(ConfigError, match="Two --data sources are named 'A'"):
        parse_sources([f"A={a}", f"A={a}"])
    with pytest.raises(DataError, match="does not exist"):
        combine_sources(parse_sources([f"A={a}", "B=/no/such/folder"]))
    with pytest.raises(ConfigError, match="Source 'B' names no folder: give --data B=PATH"):
        parse_sources([f"A={a}", "B="])  # a study file's placeholder, not the current folder


def test_confounds_of_a_table() -> None:
    assert confounds({"X": {"s": 3}}) == []  # one source: nothing to say
    table = {"X": {"s": 3, "t": 0}, "Y": {"s": 2, "t": 2}, "Z": {"s": 1, "t": 1}}
    assert confounds(table) == ["every X image comes from s: the source predicts the class"]
    assert confounds({"X": {"s": 3, "t": 0}, "Y": {"s": 0, "t": 2}})[-1] == (
        "t holds Y only: its images are that class by source alone"
    )


def test_per_source_metrics_against_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    sources = np.array(["a"] * 25 + ["b"] * 35)
    m = classification_metrics(y, probs, ["x", "y", "z"], list(sources))["per_source"]
    pred = probs.argmax(1)
    for name in ("a", "b"):
        rows = sources == name
        assert m["sources"][name]["n"] == rows.sum()
        assert m["sources"][name]["accuracy"] == pytest.approx((pred[rows] == y[rows]).mean())
        recalls = [(pred[rows & (y == c)] == c).mean() for c in range(3) if (rows & (y == c)).any()]
        assert m["sources"][name]["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    worst = min("ab", key=lambda n: m["sources"][n]["balanced_accuracy"])
    assert m["worst"] == worst
    assert "per_source" not in classification_metrics(y, probs, ["x", "y", "z"], ["a"] * 60)


def test_balanced_sampling_draws_each_cell_alike(two_sources, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    split = prepare_data([f"A={a}", f"B={b}"], image_size=32, progress=False).split
    labels = np.asarray(split.labels())
    sources = np.array([split.source_of(i) for i in range(len(labels))])
    cells = np.array([f"{s}{y}" for s, y in zip(sources, labels)])
    batches = ImageBatches(np.zeros((len(labels), 4, 4), np.uint8),
                           np.arange(len(labels)), labels, 8)  # fmt: skip
    drawn = np.concatenate([batches.order(0, e, sampling_strata("source_class", split))
                            for e in range(300)])  # fmt: skip
    share = {c: np.isin(drawn, np.flatnonzero(cells == c)).mean() for c in set(cells)}
    assert len(share) == 4 and max(share.values()) - min(share.values()) < 0.02
    drawn = np.concatenate([batches.order(0, e, sampling_strata("source", split))
                            for e in range(300)])  # fmt: skip
    assert abs((sources[drawn] == "A").mean() - 0.5) < 0.02
    # class balance is the sampler it always was: the same draws as before
    old = batches.order(3, 1, labels)
    assert np.array_equal(batches.order(3, 1, sampling_strata("class", split)), old)
    assert sampling_strata("none", split) is None


def test_training_on_two_sources(two_sources, tmp_path, monkeypatch, capsys) -> None:
    """A run on two sources: its split and card name each image's source, its metrics
    score each source, and evaluate rebuilds a view that left the cache."""
    from cxrlab.runs import evaluate_run
    from cxrlab.training import train

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    cfg = tiny_config(f"A={a}", epochs=1, balance="source_class")
    cfg = cfg.replace(data=(f"A={a}", f"B={b}"), class_map=("B=Viral Pneumonia=Pneumonia",))
    run = train(cfg, tmp_path / "run").run_dir
    card = json.loads((run / "model_card.json").read_text())
    assert card["data"]["sources"]["images"]["Pneumonia"] == {"A": 0, "B": 6}
    assert [s["name"] for s in card["data"]["sources"]["built_from"]] == ["A", "B"]
    metrics = json.loads((run / "metrics.json").read_text())
    per = metrics["per_source"]["sources"]
    assert sum(m["n"] for m in per.values()) == metrics["n"]
    assert "test by source (balanced accuracy)" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "cache" / "sources")  # the view is gone: built again
    m = evaluate_run(run, progress=False)
    assert m["confusion_matrix"] == metrics["confusion_matrix"]
    assert m["per_source"] == metrics["per_source"]
    # the CLI takes the sources as repeated --data
    assert main(["train", "--data", f"A={a}", "--data", f"B={b}", "--class-map",
                 "B=Viral Pneumonia=Pneumonia", "--balance", "source", "--model", "resnet18",
                 "--weights", "none", "--image-size", "32", "--epochs", "1", "--precision",
                 "fp32", "--no-progress", "--out", str(tmp_path / "cli")]) == 0  # fmt: skip


def test_source_probe_finds_planted_source_beyond_the_class() -> None:
    """Features that carry the class only: the probe does no better than the class alone;
    features that also carry the source: it tells the sources apart."""
    from cxrlab.audit.probes import source_probe

    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    # source A has 80 % of class 0, source B 80 % of class 1: the class tells the source
    sources = np.where(rng.random(n) < 0.8, labels, 1 - labels)
    names = np.array(["A", "B"])[sources]
    classes = np.array(["x", "y"])[labels]
    class_only = np.c_[labels + rng.normal(0, 0.3, n), rng.normal(size=(n, 5))]
    plain = source_probe(class_only, names, classes, seed=0)
    assert plain["from_class"] == pytest.approx(0.8, abs=0.05)
    assert plain["balanced_accuracy"] <= plain["from_class"] + 0.05
    with_source = np.c_[class_only, sources + rng.normal(0, 0.15, n)]
    found = source_probe(with_source, names, classes, seed=0)
    assert found["balanced_accuracy"] > 0.95 and found["ci"][0] > plain["ci"][1]
    assert "skipped" in source_probe(class_only, ["A"] * n, classes)


def test_a_second_source_lowers_the_source_probe(tmp_path, monkeypatch) -> None:
    """Phantoms of two simulated hospitals, B's images brighter (another acquisition). When
    each hospital sends one class, the source is the class and a fine-tuned model's features
    carry it; when both send both classes and sampling balances each (source, class) cell,
    the class no longer tells the source and the probe falls toward chance."""
    from PIL import Image

    from cxrlab.audit import run_audit
    from cxrlab.training import TrainConfig, train

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    drawn = {}
    for name, seed in (("A", 1), ("B", 2)):
        root = write_synthetic_dataset(tmp_path / "drawn" / name, per_class=60, size=64,
                                       seed=seed, min_severity=0.8, progress=False)  # fmt: skip
        for cls in ("Lung_Opacity", "Viral Pneumonia"):
            shutil.rmtree(root / cls)
        if name == "B":  # hospital B's acquisition: a brighter intensity curve
            for png in root.rglob("*.png"):
                pixels = np.asarray(Image.open(png), dtype=np.float64) / 255
                Image.fromarray(np.round(255 * pixels**0.85).astype(np.uint8)).save(png)
        drawn[name] = root

    def one_class(name: str, cls: str) -> Path:
        root = tmp_path / "one" / name
        shutil.copytree(drawn[name] / cls, root / cls)
        return root

    def probe(a: Path, b: Path, balance: str, out: str) -> dict:
        cfg = TrainConfig(data=(f"A={a}", f"B={b}"), model="efficientnet_lite0",
                          weights="imagenet", image_size=64, epochs=4, batch_size=16, lr=1e-3,
                          balance=balance, ratios=(0.5, 0.1, 0.4), precision="fp32", threads=2,
                          progress=False)  # fmt: skip
        run = train(cfg, tmp_path / out).run_dir
        return run_audit(run, checks=("source",), progress=False).report["checks"]["source"]

    confounded = probe(one_class("A", "COVID"), one_class("B", "Normal"), "none", "confounded")
    assert confounded["from_class"] == 1.0 and confounded["balanced_accuracy"] >= 0.75
    mixed = probe(drawn["A"], drawn["B"], "source_class", "mixed")
    assert mixed["from_class"] == pytest.approx(0.5, abs=0.05)
    assert mixed["balanced_accuracy"] < confounded["balanced_accuracy"] - 0.15


def test_audit_source_check(two_sources, tmp_path, monkeypatch) -> None:
    """The audit of a run on two sources probes its features for the source; of a run on
    one source, the check says why it is skipped."""
    from cxrlab.audit import run_audit
    from cxrlab.training import train

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    cfg = tiny_config(f"A={a}", epochs=1).replace(data=(f"A={a}", f"B={b}"),
                                                   ratios=(0.4, 0.1, 0.5))  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    res = run_audit(run, checks=("source",), progress=False)
    source = res.report["checks"]["source"]
    assert source["sources"] == ["A", "B"] and source["features"] == 512  # ResNet-18's pool
    assert 0 <= source["balanced_accuracy"] <= 1 and 0.5 <= source["from_class"] <= 1
    assert "## Source probe" in (res.out / "audit.md").read_text()
    one = train(tiny_config(a, epochs=1), tmp_path / "one").run_dir
    skipped = run_audit(one, checks=("source",), progress=False).report["checks"]["source"]
    assert "one source" in skipped["skipped"]


def test_a_study_on_two_sources(two_sources, tmp_path, monkeypatch) -> None:
    """[study] data lists the sources and class_map maps them (a table or a string); every
    cell trains on the same view and split, and its metrics score each source."""
    from cxrlab.study import build_report, parse_study_config, run_study

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    text = f"""
[study]
name = "sources"
data = ["A={a}", "B={b}"]
seeds = 1
ratios = [0.4, 0.2, 0.4]
class_map = {{B = {{"Viral Pneumonia" = "Pneumonia"}}, A = "COVID=Covid"}}
{TINY_TRAIN}balance = "source_class"

[[cells]]
model = "resnet18"
weights = "none"
"""
    study = parse_study_config(text)
    cfg = study.cells[0].config
    assert cfg.data == (f"A={a}", f"B={b}")
    assert set(cfg.class_map) == {"B=Viral Pneumonia=Pneumonia", "A=COVID=Covid"}
    run_study(study, tmp_path / "out", progress=False)
    build_report(tmp_path / "out", study)
    split = (tmp_path / "out" / "split.csv").read_text()
    assert ",A," in split and ",B," in split and "Covid/images/" in split
    metrics = json.loads((tmp_path / "out" / "runs" / study.cells[0].id / "metrics.json")
                         .read_text())  # fmt: skip
    assert set(metrics["per_source"]["sources"]) == {"A", "B"}
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## By source" in summary and "| A | B | worst (runs) |" in summary
    with pytest.raises(ConfigError, match=r"class_map\.A must be a table"):
        parse_study_config(text.replace('A = "COVID=Covid"', "A = 3"))
    # --data NAME=PATH on the command line replaces the file's sources
    again = parse_study_config(text, data=[f"A={a}"])
    assert again.cells[0].config.data == f"A={a}"


def test_leave_one_source_out(two_sources, tmp_path, monkeypatch, capsys) -> None:
    """--holdout-source trains on the other sources and scores the one left out on its own
    validation and test splits, copies of training images left out."""
    from cxrlab.training import train

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    cfg = tiny_config(f"A={a}", epochs=1).replace(
        data=(f"A={a}", f"B={b}"), class_map=("B=Viral Pneumonia=-",), holdout_source="B",
        ratios=(0.5, 0.25, 0.25))  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    card = json.loads((run / "model_card.json").read_text())
    assert card["classes"] == ["COVID", "Normal"]  # A alone
    assert card["data"]["sources"]["images"] == {"COVID": {"A": 6}, "Normal": {"A": 6}}
    assert card["training"]["config"]["holdout_source"] == "B"
    held = json.loads((run / "holdout.json").read_text())
    assert held["source"] == "B" and held["val"]["split"] == "val"
    assert held["val"]["classes_present"] == ["Normal"] == held["test"]["classes_present"]
    # B's copy of A's Normal-1 is not scored when A's copy was trained or validated on
    total = (
        held["val"]["n"]
        + held["test"]["n"]
        + held["val"].get("excluded_copies", 0)
        + held["test"].get("excluded_copies", 0)
    )
    assert total <= 7
    # and its shift report: the signals against the run's own test images, the batch test
    shift = held["test"]["shift"]
    assert "error" not in shift, shift
    assert shift["n"] == held["test"]["n"] and shift["split"] == "test"
    assert set(shift["signals"]) == {"mahalanobis", "knn", "signature", "confidence", "combined"}
    assert all(0 <= v["auroc"] <= 1 for v in shift["signals"].values())
    assert shift["control"]["true_accuracy"] is not None and "images" not in shift
    assert "held-out source B (test" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="holdout_source 'C' is not one of the sources"):
        train(cfg.replace(holdout_source="C"), tmp_path / "bad")


def test_a_study_with_a_leave_one_source_out_axis(two_sources, tmp_path, monkeypatch) -> None:
    """holdout_source as a cell axis: the cell that holds B out trains on the study's split
    without B's images, scores B, and the report has a leave-one-source-out table."""
    from cxrlab.study import build_report, parse_study_config, run_study

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, b = two_sources
    study = parse_study_config(f"""
[study]
name = "loso"
data = ["A={a}", "B={b}"]
seeds = 1
ratios = [0.4, 0.3, 0.3]
{TINY_TRAIN}
[[cells]]
model = "resnet18"
weights = "none"
holdout_source = ["none", "B"]
""")
    ids = [c.id for c in study.cells]
    assert ids == ["resnet18-scratch-full-s0", "resnet18-scratch-full-noB-s0"]
    assert (
        study.cells[1].label.endswith(", without B")
        and study.cells[0].config.holdout_source is None
    )
    out = tmp_path / "out"
    run_study(study, out, progress=False)
    report = build_report(out, study)
    shared = (out / "split.csv").read_text().splitlines()[2:]
    without = (out / "splits" / "without-B.csv").read_text().splitlines()[2:]
    assert without == [line for line in shared if line.split(",")[-2] != "B"]
    held = json.loads((out / "runs" / ids[1] / "holdout.json").read_text())
    assert held["source"] == "B" and held["test"]["n"] > 0
    summary = (out / "summary.md").read_text()
    assert "## Leave one source out" in summary and "| B |" in summary
    assert "<h2>Leave one source out</h2>" in (out / "report.html").read_text()
    row = next(r for r in report.results.rows if r["cell"] == ids[1])
    assert row["holdout_test_accuracy"] == pytest.approx(held["test"]["accuracy"])
    assert ids[1] not in report.results.correct  # other test images: not paired


def test_a_named_cell_that_holds_a_source_out_is_its_own_row() -> None:
    """A cell's own label gets ", without B" when it holds B out: it tests on other images,
    so the summary must not average it with the cell trained on every source."""
    from cxrlab.study import parse_study_config

    study = parse_study_config("""
[study]
name = "loso"
data = ["A=a", "B=b"]
[[cells]]
model = "resnet18"
weights = "none"
label = "Mine"
holdout_source = ["none", "B"]
""")
    assert [c.label for c in study.cells] == ["Mine", "Mine, without B"]


def test_finer_sources_from_the_release_metadata(two_sources, tmp_path, monkeypatch,
                                                 capsys) -> None:  # fmt: skip
    """--sources-csv NAME=metadata reads the Kaggle release's <Class>.metadata.xlsx: each
    image's collection is the host of its URL; a release without them is refused in one line."""
    openpyxl = pytest.importorskip("openpyxl")
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    a, _ = two_sources
    copy = tmp_path / "release"
    shutil.copytree(a, copy)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["FILE NAME", "FORMAT", "SIZE", "URL"])
    for i in range(1, 7):  # upper case, as the release writes them
        url = "https://www.sirm.org/covid/" if i <= 4 else "https://github.com/ieee8023/x"
        sheet.append([f"COVID-{i}", "PNG", "256*256", url])
    book.save(copy / "COVID.metadata.xlsx")
    report = scan_dataset(resolve_data([f"A={copy}"], (), ["A=metadata"]), progress=False)
    names = [report.source_of(r.path) for r in report.records]
    assert names.count("A:sirm.org") == 4 and names.count("A:github.com") == 2
    assert names.count("A") == 6  # the Normal images: no spreadsheet names them
    assert main(["data", "scan", f"A={a}", "--sources-csv", "A=metadata"]) == 2
    assert "no <Class>.metadata.xlsx" in capsys.readouterr().err

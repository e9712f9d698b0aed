import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import ConfigError, TrainingInterrupted
from cxrlab.study import build_report, parse_study_config, run_study, select_cells
from cxrlab.study.report.results import StudyResults, compare, summary_markdown
from cxrlab.training import train

from conftest import TINY_STUDY


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ph"), per_class=8, seed=3, size=40,
                                   progress=False)  # fmt: skip


def test_config_validation_names_the_key() -> None:
    base = '[study]\nname="x"\n[[cells]]\nmodel="resnet18"\n'
    with pytest.raises(ConfigError, match=r"Unknown key 'sheduler' in \[train\].*'scheduler'"):
        parse_study_config(base + '[train]\nsheduler="cosine"\n')
    with pytest.raises(ConfigError, match=r"Unknown key 'lrr'.*did you mean 'lr'"):
        parse_study_config('[[cells]]\nmodel="resnet18"\nlrr=0.1\n')
    with pytest.raises(ConfigError, match=r"Unknown key 'sed' in \[study\]"):
        parse_study_config('[study]\nsed=1\n[[cells]]\nmodel="resnet18"\n')
    with pytest.raises(ConfigError, match="Unknown table"):
        parse_study_config(base + "[grid]\nx=1\n")
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        parse_study_config(base + '[train]\nepochs="ten"\n')
    with pytest.raises(ConfigError, match="freeze"):
        parse_study_config('[[cells]]\nmodel="resnet18"\nfreeze="most"\n')
    with pytest.raises(ConfigError, match="has no model"):
        parse_study_config("[[cells]]\nweights='none'\n")
    with pytest.raises(ConfigError, match="appears twice"):
        parse_study_config(base + base.split("\n", 2)[2])
    with pytest.raises(ConfigError, match="seeds"):
        parse_study_config(base + "[train]\nseed=3\n")
    with pytest.raises(ConfigError, match="at least one"):
        parse_study_config('[study]\nname="x"\n')
    with pytest.raises(ConfigError, match="TOML"):
        parse_study_config("[study\n")


def test_cell_ids_are_stable_and_seed_major() -> None:
    text = Path("configs/original.toml").read_text()
    study = parse_study_config(text, data="somewhere", seeds=2, epochs=3)
    ids = [c.id for c in study.cells]
    assert ids[:3] == ["resnet18-in1k-head-s0", "resnet18-in1k-f050-s0", "resnet18-in1k-f075-s0"]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert all(c.seed == 0 for c in study.cells[:10]) and ids[10] == "resnet18-in1k-head-s1"
    assert "vit_b_16-in1k-last4-s0" in ids and "vit_b_16-scratch-full-s1" in ids
    assert {c.config.epochs for c in study.cells} == {3}
    assert parse_study_config(text, data="x").cells[0].id == ids[0]  # same text, same ids
    labels = {c.label for c in study.cells}
    assert labels == {"Pretrained, head only", "Pretrained, 50% frozen", "Pretrained, 75% frozen",
                      "From scratch", "Pretrained, last 4 blocks trained"}  # fmt: skip
    # per-cell overrides get a short hash so two variants never share an id
    over = parse_study_config('[[cells]]\nmodel="resnet18"\nlr=[0.1, 0.01]\n')
    a, b = (c.id for c in over.cells)
    assert a != b and a.startswith("resnet18-in1k-full-") and a.endswith("-s0")
    # ... and their own rows in the tables, not one row with two "seeds"
    assert [c.label for c in over.cells] == ["Pretrained, fully fine-tuned (lr=0.1)",
                                             "Pretrained, fully fine-tuned (lr=0.01)"]  # fmt: skip


def test_select_cells_by_id_and_shard() -> None:
    study = parse_study_config(Path("configs/demo.toml").read_text())
    cells = study.cells
    shards = [select_cells(cells, shard=f"{i}/3") for i in (1, 2, 3)]
    assert sorted(c.id for s in shards for c in s) == sorted(c.id for c in cells)
    assert not set(shards[0]) & set(shards[1])
    prefix = select_cells(cells, ["efficientnet_lite0-in1k-head"])
    assert [c.id for c in prefix] == [f"efficientnet_lite0-in1k-head-s{i}" for i in range(3)]
    with pytest.raises(ConfigError, match="No cell"):
        select_cells(cells, ["resnet99"])
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(ConfigError, match="--shard"):
            select_cells(cells, shard=bad)


def test_study_runs_skips_resumes_and_reports(phantoms: Path, tmp_path: Path) -> None:
    study = parse_study_config(TINY_STUDY.format(data=phantoms))
    out = tmp_path / "study"
    # interrupt one cell half-way, as a killed job would leave it
    cut = study.cells[1]
    run_dir = out / "runs" / cut.id
    first = run_study(study, out, cells=[study.cells[0].id], progress=False)
    assert first.ran == [study.cells[0].id] and not first.complete

    def stop(epoch: int, step: int, model) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = cut.config.replace(split_file=str(out / "split.csv"))
    with pytest.raises(TrainingInterrupted):
        train(cfg, run_dir, on_step=stop)
    done = run_study(study, out, progress=False)
    assert done.complete and cut.id in done.ran and done.skipped == [study.cells[0].id]
    again = run_study(study, out, progress=False)
    assert again.ran == [] and len(again.skipped) == 4  # everything cached

    # the resumed cell ends exactly like an uninterrupted run of the same cell
    ref = train(cfg, tmp_path / "reference")
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] == ref.metrics["accuracy"]

    report = build_report(out)
    for key in ("results", "summary", "comparisons", "report", "accuracy",
                "features_pretrained"):  # fmt: skip
        if key == "features_pretrained":
            continue  # tiny study has no pretrained CNN
        assert report.files[key].is_file(), key
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("cell,group,label,model,weights,freeze,seed")
    summary = (out / "summary.md").read_text()
    assert "| Training type | resnet18 |" in summary
    assert "| From scratch | " in summary and "| From scratch, 50% frozen | " in summary
    assert len(report.comparisons) == 1
    # two seeds per training type: the verdict cannot count training noise and says so
    assert report.comparisons[0].status == "not established"
    assert "not established" in report.comparisons[0].verdict()
    assert "not established: the study has 2 seeds per training type" in summary
    assert (
        report.files["comparison_plot"].is_file() and report.files["comparisons"].suffix == ".csv"
    )
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 10  # accuracy, comparisons, 2 per run
    assert "seed-level differences" in html
    assert "split hash" in html and "[[cells]]" in html


def test_sharded_study_and_changed_settings(phantoms: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_STUDY.format(data=phantoms).replace("seeds = 2", "seeds = 1"))
    out = tmp_path / "s"
    assert main(["study", "run", str(cfg), "--out", str(out), "--shard", "1/2",
                 "--no-progress"]) == 0  # fmt: skip
    assert "1/2 cells finished" in capsys.readouterr().out
    assert main(["study", "run", str(cfg), "--out", str(out), "--shard", "2/2",
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "2/2 cells finished" in text and "Report:" in text
    assert main(["study", "report", str(out)]) == 0
    assert "2 runs (0 cells missing)" in capsys.readouterr().out
    # the same folder with other settings is refused, naming the setting
    assert main(["study", "run", str(cfg), "--out", str(out), "--epochs", "2",
                 "--no-progress"]) == 2  # fmt: skip
    assert "epochs=1" in capsys.readouterr().err
    assert main(["study", "run", "configs/offline.toml", "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err


def test_cells_run_in_parallel_processes_as_they_run_alone(phantoms: Path, tmp_path: Path,
                                                            capfd) -> None:  # fmt: skip
    """``--jobs 2`` runs two cells at once, one torch thread each: every cell trains exactly
    as it does alone with one thread, and each output line names its cell."""
    import torch

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_STUDY.format(data=phantoms).replace("seeds = 2", "seeds = 1"))
    assert main(["study", "run", str(cfg), "--out", str(tmp_path / "p"), "--jobs", "2",
                 "--no-progress"]) == 0  # fmt: skip
    text = capfd.readouterr().out
    assert "Running 2 cells, 2 at a time (1 CPU thread(s) each)" in text
    ids = sorted(d.name for d in (tmp_path / "p" / "runs").iterdir())
    assert len(ids) == 2 and "2/2 cells finished" in text and "Report:" in text
    for cell_id in ids:
        assert f"[{cell_id}] == {cell_id}" in text
        assert re.search(rf"^\[{cell_id}\] test: accuracy", text, re.M)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(parse_study_config(cfg.read_text()), tmp_path / "s", progress=False)
    finally:
        torch.set_num_threads(threads)
    for cell_id in ids:
        alone = (tmp_path / "s" / "runs" / cell_id / "history.csv").read_text().splitlines()
        parallel = (tmp_path / "p" / "runs" / cell_id / "history.csv").read_text().splitlines()
        assert [r.split(",")[:5] for r in parallel] == [r.split(",")[:5] for r in alone]
    assert main(["study", "run", str(cfg), "--out", str(tmp_path / "p"), "--jobs", "0"]) == 2


def test_summary_table_layout_like_the_original() -> None:
    rows, correct = [], {}
    rng = np.random.default_rng(0)
    arms = {"resnet18": ["Pretrained, head only", "From scratch"],
            "resnet34": ["Pretrained, head only", "From scratch"],
            "vit_b_16": ["Pretrained, last 4 blocks trained", "From scratch"]}  # fmt: skip
    for model, labels in arms.items():
        for label in labels:
            for seed in (0, 1):
                cell = f"{model}-{label}-{seed}"
                correct[cell] = rng.random(50) < 0.8
                acc = float(correct[cell].mean())
                rows.append({"cell": cell, "label": label, "model": model, "seed": seed,
                             "accuracy": acc, "macro_f1": acc, "balanced_accuracy": acc,
                             "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0})  # fmt: skip
    results = StudyResults(rows, correct, [f"img{i}" for i in range(50)])
    study = parse_study_config('[study]\nname="t"\n[[cells]]\nmodel="resnet18"\n')
    text = summary_markdown(study, results, compare(results, n_resamples=200))
    assert "## Accuracy: resnet18, resnet34" in text and "## Accuracy: vit_b_16" in text
    assert "| Training type | resnet18 | resnet34 |" in text
    assert "| Training type | vit_b_16 |" in text
    r18 = [r["accuracy"] for r in rows if r["model"] == "resnet18" and r["label"] == "From scratch"]
    assert f"| From scratch | {np.mean(r18):.4f} ± {np.std(r18, ddof=1):.4f} [" in text
    assert text.count("*not established*") == 3  # two seeds per training type


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(phantoms: Path, tmp_path: Path) -> None:
    """Open report.html in a real browser and check the embedded figures are drawn."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the report in Chromium: apt-get install chromium")
        pytest.skip("needs Chromium (apt-get install chromium) to render the report")
    from PIL import Image

    study = parse_study_config(TINY_STUDY.format(data=phantoms).replace("seeds = 2", "seeds = 1"))
    out = tmp_path / "study"
    run_study(study, out, progress=False)
    report = build_report(out, study).files["report"]

    def coloured_fraction(page: Path) -> float:
        shot = page.with_suffix(".png")
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        assert img.shape[:2] == (2400, 1200)
        return float((np.abs(img - img.mean(axis=2, keepdims=True)).max(axis=2) > 40).mean())

    # the same page with its images' data removed: what a broken report would look like
    broken = tmp_path / "broken.html"
    text = report.read_text()
    broken.write_text(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:,", text))
    drawn, missing = coloured_fraction(report), coloured_fraction(broken)
    # matplotlib's coloured lines and markers appear only if the embedded PNGs were drawn
    assert drawn > 0.002 and drawn > 5 * missing, (drawn, missing)


def test_search_chooses_on_validation_only(phantoms: Path, tmp_path: Path) -> None:
    """Each candidate is a trial cell; the best validation loss per cell and seed is chosen,
    the test split is never read to choose, and all trials are kept and shown."""
    text = TINY_STUDY.format(data=phantoms).replace('freeze = ["none", "0.5"]', 'freeze = "none"')
    study = parse_study_config(
        text.replace("epochs = 1", "epochs = 1\nlr = {search = [0.1, 1e-4]}")
    )
    ids = [c.id for c in study.cells]
    assert ids == [f"resnet18-scratch-full-lr{lr}-s{s}" for s in (0, 1) for lr in ("0.1", "0.0001")]
    assert {c.selects for c in study.cells} == {"resnet18-scratch-full-s0",
                                                "resnet18-scratch-full-s1"}  # fmt: skip
    out = tmp_path / "s"
    run_study(study, out, progress=False)
    # every cell keeps its shift reference as it finishes
    assert all((out / "runs" / i / "shift" / "reference.json").is_file() for i in ids)

    def val_loss(cell_id: str) -> float:
        card = json.loads((out / "runs" / cell_id / "model_card.json").read_text())
        return card["training"]["best_val_loss"]

    expected = {seed: min((c.id for c in study.cells if c.seed == seed), key=val_loss)
                for seed in (0, 1)}  # fmt: skip
    # spoil every losing trial's test results: choosing must not read them
    for c in study.cells:
        if c.id not in expected.values():
            (out / "runs" / c.id / "metrics.json").write_text("not the test results")
            (out / "runs" / c.id / "predictions.csv").unlink()
    report = build_report(out, study)
    assert sorted(r["cell"] for r in report.results.rows) == sorted(expected.values())
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 5 and trials[0].startswith("selects_for,cell,label,model,seed")
    assert sum(line.endswith(",True") for line in trials) == 2
    summary = report.files["summary"].read_text()
    assert "## Hyperparameter search (chosen on validation data)" in summary
    assert "| resnet18-scratch-full-s0 | 0 | lr=" in summary
    assert report.files["trials_plot"].is_file()
    with pytest.raises(ConfigError, match="cannot be searched"):
        parse_study_config(text.replace('freeze = "none"', 'freeze = {search = ["none"]}'))
    with pytest.raises(ConfigError, match="search = "):
        parse_study_config(text.replace("epochs = 1", "epochs = 1\nlr = {pick = [1]}"))


def test_study_final_model_is_chosen_on_validation(phantoms: Path, tmp_path: Path) -> None:
    text = TINY_STUDY.format(data=phantoms).replace("seeds = 2", 'seeds = 2\nfinal = "ensemble"')
    study = parse_study_config(text)
    out = tmp_path / "s"
    run_study(study, out, progress=False)
    report = build_report(out, study)
    final = report.files["final"]
    card = json.loads((final / "model_card.json").read_text())

    def mean_val(label: str) -> float:
        cells = [c for c in study.cells if c.label == label]
        return np.mean([json.loads((out / "runs" / c.id / "model_card.json").read_text())
                        ["training"]["best_val_loss"] for c in cells])  # fmt: skip

    best = min({c.label for c in study.cells}, key=mean_val)
    assert len(card["members"]) == 2 and best in card["description"]
    from cxrlab.infer import load

    assert len(load(final, device="cpu").members) == 2
    assert "## Final model" in report.files["summary"].read_text()
    # the runner chose final/; rebuilding the report only reads it, and never writes a model
    import shutil

    from cxrlab.cli import main

    before = {f: f.read_bytes() for f in final.rglob("*") if f.is_file()}
    assert main(["study", "report", str(out)]) == 0
    assert {f: f.read_bytes() for f in final.rglob("*") if f.is_file()} == before  # untouched
    shutil.rmtree(final)
    again = build_report(out, study)
    assert not final.exists() and "final" not in again.files
    assert "## Final model" not in again.files["summary"].read_text()
    assert main(["study", "final", str(out)]) == 0
    assert json.loads((final / "model_card.json").read_text())["members"] == card["members"]


def test_reuse_study_with_initialisations_and_training_sizes(phantoms: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    cells = (
        '[[cells]]\nmodel = "efficientnet_lite0"\nweights = ["imagenet", "stats", "none"]\n'
        '[[cells]]\nmodel = "efficientnet_lite0"\nweights = "none"\ntrain_size = 0.5\n'
    )
    text = (
        TINY_STUDY.format(data=phantoms).replace("seeds = 2", "seeds = 1").split("[[cells]]")[0]
        + cells
        + "[analysis]\nreuse = true\nbatch_size = 4\nreinit = false\n"
    )
    study = parse_study_config(text)
    ids = [c.id for c in study.cells]
    assert ids == ["efficientnet_lite0-in1k-full-s0", "efficientnet_lite0-st-full-s0",
                   "efficientnet_lite0-scratch-full-s0",
                   "efficientnet_lite0-scratch-full-n50pc-s0"]  # fmt: skip
    labels = [c.label for c in study.cells]
    assert labels[1] == "Statistics transfer, fully fine-tuned"
    assert labels[3] == "From scratch, 50% of training data"
    assert all(c.config.keep_init for c in study.cells)
    out = tmp_path / "reuse"
    run_study(study, out, progress=False)
    info = json.loads((out / "analysis" / "reuse.json").read_text())
    assert len(info["runs"]) == 4 and {r["init"] for r in info["runs"]} == {"WT", "ST", "RI"}
    assert {p["a_init"] + p["b_init"] for p in info["pairs"]} == {"WTST", "WTRI", "STRI"}
    report = build_report(out, study)
    assert "by_size_accuracy" in report.files
    # training types are compared at the same training size only
    assert len(report.comparisons) == 3 and all("50%" not in c.b for c in report.comparisons)
    summary = (out / "summary.md").read_text()
    assert "Feature reuse" in summary and "| efficientnet_lite0 | none | 50% |" in summary
    assert "Feature reuse: why pretraining helps" in (out / "report.html").read_text()
    with pytest.raises(ConfigError, match="cannot be searched"):
        parse_study_config(text.replace("train_size = 0.5", "train_size = {search = [1]}"))


def test_trials_figure_has_one_panel_per_cell_with_a_line_per_seed(tmp_path: Path) -> None:
    from PIL import Image

    from cxrlab.study.report.trials import plot_trials

    trials = [{"selects_for": f"{cell}-s{seed}", "seed": seed, "candidate": f"lr={lr}",
               "val_loss": 1 / (1 + lr + seed), "chosen": lr == 3}
              for cell in ("a-head", "a-full") for seed in (0, 1) for lr in (1, 3)]  # fmt: skip
    out = plot_trials(trials, "val_loss", tmp_path / "trials.png")
    width = Image.open(out).size[0]
    assert width == round(3.4 * 2 * 110)  # two cells, not four cell-seed panels


def test_final_rules_score_on_validation_here_elsewhere_and_both() -> None:
    """final_by: the validation loss on the study's data, the held-out sources' validation
    NLL (over the sources every candidate held out), or the mean of the two; each rule picks
    the arm its numbers say, computed by hand below."""
    from cxrlab.study.final import final_scores

    def study(final_by: str):
        return parse_study_config(f"""
[study]
name = "pick"
data = ["A=a", "B=b", "C=c"]
seeds = 2
final = "ensemble"
final_by = "{final_by}"
[[cells]]
model = "resnet18"
weights = "none"
label = "fits"
holdout_source = ["none", "B", "C"]
[[cells]]
model = "resnet18"
weights = "none"
label = "travels"
lr = 1e-4
holdout_source = ["none", "B"]
""")

    cells = study("val_loss").cells
    val = {"fits": (0.10, 0.14), "travels": (0.30, 0.26)}  # on the study's own data
    held = {("fits", "B"): (0.60, 0.40), ("fits", "C"): (0.05, 0.05),
            ("travels", "B"): (0.20, 0.30)}  # fmt: skip
    rows, val_losses = [], {}
    for c in cells:
        label = c.label.removesuffix(f", without {c.config.holdout_source}")
        row = {"cell": c.id, "model": c.model, "label": c.label, "holdout_val_nll": ""}
        if c.config.holdout_source:
            row["holdout_val_nll"] = held[(label, c.config.holdout_source)][c.seed]
        else:
            val_losses[c.id] = val[label][c.seed]
        rows.append(row)
    arm = {name: ("resnet18", name) for name in val}

    scores, how = final_scores(study("val_loss"), rows, val_losses)
    assert scores == pytest.approx({arm["fits"]: 0.12, arm["travels"]: 0.28})
    assert how == "the lowest mean validation loss"
    # held out: only B was held out by both, so C does not count (fits: 0.50, travels: 0.25)
    scores, how = final_scores(study("holdout_val_nll"), rows, val_losses)
    assert scores == pytest.approx({arm["fits"]: 0.50, arm["travels"]: 0.25})
    assert how == "the lowest mean validation NLL on held-out B"
    # both: fits (0.12 + 0.50) / 2 = 0.31, travels (0.28 + 0.25) / 2 = 0.265
    scores, how = final_scores(study("val_and_holdout"), rows, val_losses)
    assert scores == pytest.approx({arm["fits"]: 0.31, arm["travels"]: 0.265})
    assert how.endswith("validation NLL on held-out B")
    assert min(scores, key=scores.get) == arm["travels"]

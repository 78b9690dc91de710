"""`vaekit report`: one self-contained HTML file about one run or several side by side.
(That it opens offline in a real browser with no errors is checked in test_browser.py.)"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_cli
from vaekit.app import report
from vaekit.errors import VaekitError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class Page(HTMLParser):
    """The tags, attributes and table cells of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    vae, cvae = root / "vae", root / "cvae"
    shutil.copytree(FIXTURES / "vae-v0.1", vae)
    shutil.copytree(FIXTURES / "cvae-v0.1", cvae)
    return vae, cvae


def test_one_run_report_is_self_contained(tiny_run, tmp_path):
    out = report.write_report([tiny_run], tmp_path / "r.html")
    html = out.read_text()
    page = Page(html)
    # nothing is fetched: no script, style, image or frame from anywhere else
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"^(https?:)?//", value), (tag, attrs)
            if tag in ("img", "script", "link", "iframe"):
                assert value == "" or value.startswith("data:"), (tag, attrs)
    assert len(html) > 3_000_000  # plotly's JavaScript is inlined
    figures = {a["data-figure"] for t, a in page.tags if t == "figure" and "data-figure" in a}
    assert figures == {f for f, *_ in report.FIGURES}
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == len(report.FIGURES)  # the tiny run has every figure
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert 'id="training-curves"' in html


def test_the_evaluation_table_shows_the_stored_numbers(fixture_runs, tmp_path):
    vae, _ = fixture_runs
    stored = json.loads((vae / "evaluation.json").read_text())
    html = report.write_report([vae], tmp_path / "r.html").read_text()
    page = Page(html)
    assert f"{stored['elbo']:.3f} ± {stored['elbo_se']:.3f}" in page.cells
    assert f"{stored['log_likelihood']:.3f} ± {stored['log_likelihood_se']:.3f}" in page.cells
    assert f"{stored['gap']:.3f} ± {stored['gap_se']:.3f}" in page.cells
    assert f"{stored['bits_per_dim']:.4f} ± {stored['bits_per_dim_se']:.4f}" in page.cells
    assert "0 of 2" in page.cells  # active units of d
    # figures the run lacks (it was trained with --no-figures) say what draws them
    assert html.count(f"not in the run: <code>vaekit plot {vae}</code>") == len(report.FIGURES)


def test_gap_decomposition_and_curve_are_shown_when_stored(fixture_runs, tmp_path):
    vae, _ = fixture_runs
    run = tmp_path / "run"
    shutil.copytree(vae, run)
    result = json.loads((run / "evaluation.json").read_text())
    result.update(split="test", importance_samples=1000, amortisation_gap=0.125, amortisation_gap_se=0.01,
                  approximation_gap=0.0675, approximation_gap_se=0.02,
                  curve=[{"k": 1, "estimate": -44.3, "se": 0.01}, {"k": 10, "estimate": -44.2, "se": 0.01}])
    (run / "evaluation-test.json").write_text(json.dumps(result))
    html = report.write_report([run], tmp_path / "r.html").read_text()
    page = Page(html)
    assert "0.125 ± 0.010" in page.cells and "0.068 ± 0.020" in page.cells
    assert "test split" in page.cells and "validation split" in page.cells
    assert 'id="likelihood-curve"' in html
    # two runs' curves on one plot, each with its ELBO line
    other = tmp_path / "other"
    shutil.copytree(run, other)
    html = report.write_report([run, other], tmp_path / "two.html").read_text()
    assert html.count('test: log-likelihood estimate"') == 2 and html.count('test: ELBO"') == 2


def test_several_runs_show_the_differing_settings(fixture_runs, tmp_path):
    vae, cvae = fixture_runs
    html = report.write_report([vae, cvae], tmp_path / "r.html").read_text()
    diff = html[html.index('id="config-diff"'):]
    diff = Page(diff[: diff.index("</table>")]).cells
    assert diff[:3] == ["setting", "vae", "cvae"]
    rows = {diff[i]: diff[i + 1 : i + 3] for i in range(3, len(diff), 3)}
    assert rows["model"] == ["vae", "cvae"]
    assert rows["binarize"] == ["dynamic", "static"]
    assert "hidden" not in rows and "latent_dim" not in rows  # equal in both
    # dynamic against static binarisation: different examples, so no "best" between them
    assert html.count('class="best"') == 0


def test_runs_with_one_name_get_told_apart(tmp_path):
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "x" / "run"]
    assert report.unique_names(paths) == ["x/run", "y/run", "x/run (2)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "nowhere", "-o", "r.html"], "run directory not found"),
        (["report", "empty", "-o", "r.html"], "no config.json"),
        (["report", "empty", "-o", "r.pdf"], "must end in .html"),
        (["report", "empty", "-o", "missing/r.html"], "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_cli_report(fixture_runs, tmp_path):
    vae, cvae = fixture_runs
    done = run_cli("report", vae, cvae, "-o", tmp_path / "both.html")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "both.html").stat().st_size > 3_000_000


def test_a_missing_app_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    with pytest.raises(VaekitError, match=r"needs plotly: pip install 'vaekit\[app\]'"):
        report.require_app_packages("report")


def test_the_new_commands_document_their_options():
    for command, option in (("report", "--output"), ("runs", "--json"), ("explore", "--no-browser")):
        done = run_cli(command, "--help")
        assert done.returncode == 0 and option in done.stdout, done.stderr


@pytest.mark.parametrize(("damage", "reason"), [
    ({"curve": "abc"}, "curve is 'abc', not a list of points"),
    ({"curve": [{"k": 1}]}, "is not {k ≥ 1, estimate, se}"),
    ({"split": ["a"]}, "split is ['a'], not a text"),
    ({"elbo": {"a": 1}}, "elbo is {'a': 1}, not a number"),
])
def test_a_damaged_run_is_named_and_the_others_are_reported(fixture_runs, tmp_path, damage, reason):
    import html as html_module

    vae, cvae = fixture_runs
    bad = tmp_path / "bad"
    shutil.copytree(vae, bad)
    stored = json.loads((bad / "evaluation.json").read_text())
    (bad / "evaluation.json").write_text(json.dumps({**stored, **damage}))
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    (bad / "metrics.jsonl").write_text("\n".join([*lines, '{"epoch": 3, "seconds": ' + "9" * 5000 + "}"]) + "\n")
    (bad / "latent.png").write_text("not a png")
    html = report.write_report([cvae, bad], tmp_path / "r.html").read_text()
    text = html_module.unescape(html)
    assert f"evaluation.json skipped: {bad}/evaluation.json: " in text and reason in text
    assert "line 3 holds a 5,000-digit integer" in text and "latent.png left out" in text
    page = Page(html)
    assert "unreadable" in page.cells  # the damaged run's status in the runs table
    cvae_eval = json.loads((cvae / "evaluation.json").read_text())
    assert f"{cvae_eval['elbo']:.3f} ± {cvae_eval['elbo_se']:.3f}" in page.cells  # the other run as usual


def test_wall_time_is_the_sessions_or_named_as_the_epochs_sum(fixture_runs, tmp_path):
    vae, cvae = fixture_runs
    timed = tmp_path / "timed"
    shutil.copytree(vae, timed)
    info = json.loads((timed / "run.json").read_text())
    (timed / "run.json").write_text(json.dumps({**info, "sessions_seconds": 11.0}))
    html = report.write_report([timed, cvae], tmp_path / "r.html").read_text()
    cells = Page(html[html.index('id="runs"'):html.index('id="evaluation"')]).cells
    assert "11.0 s" in cells and any(c.endswith("s (epochs)") for c in cells)
    assert "\"(epochs)\": the epochs' seconds summed" in html


HOSTILE = '<a href="https:evil.example">click me'


def plotly_labels(html: str) -> list[str]:
    """Every trace name and hover template in the page's plotly figures."""
    found = []
    for call in re.findall(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, flags=re.S):
        for trace in json.loads(call):
            found += [trace.get("name", ""), trace.get("hovertemplate", "")]
    return found


def test_names_are_shown_as_text_not_links_in_the_figures(fixture_runs, tmp_path):
    vae, _ = fixture_runs
    run = tmp_path / HOSTILE
    shutil.copytree(vae, run)
    result = json.loads((run / "evaluation.json").read_text())
    result.update(split="<b>odd</b> split", curve=[{"k": 1, "estimate": -44.3, "se": 0.01},
                                                   {"k": 10, "estimate": -44.2, "se": 0.01}])
    (run / "evaluation.json").write_text(json.dumps(result))
    html = report.write_report([run], tmp_path / "r.html").read_text()
    labels = plotly_labels(html)
    assert len(labels) >= 8 and any("click me" in x for x in labels) and any("odd" in x for x in labels)
    for label in labels:  # plotly would draw a tag as a link or bold; entities are drawn as text
        assert "<a" not in label and "<b>" not in label, label
    assert any("&lt;a href=\"https:evil.example\"&gt;click me" in x for x in labels)
    assert report.plotly_text("100% %{y} <i>&") == "100&#37; &#37;{y} &lt;i&gt;&amp;"


def long_metrics(run: Path, epochs: int) -> int:
    """Give ``run`` a metrics.jsonl of ``epochs`` epochs; return its size in bytes."""
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    with open(run / "metrics.jsonl", "w") as f:
        for epoch in range(1, epochs + 1):
            f.write(json.dumps({**row, "epoch": epoch, "train_elbo": -100 + epoch / epochs}) + "\n")
    return (run / "metrics.jsonl").stat().st_size


def test_long_metrics_are_streamed_and_thinned_for_the_page(fixture_runs, tmp_path):
    import tracemalloc

    vae, _ = fixture_runs
    run = tmp_path / "long"
    shutil.copytree(vae, run)
    report.read_run(vae)  # the modules it imports are not what is measured
    size = long_metrics(run, 12_345)
    tracemalloc.start()
    read = report.read_run(run)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < size  # streamed: memory for the kept epochs, not for the file (was ~15× it)
    assert read.epochs_total == 12_345 and read.summary["epochs_done"] == 12_345
    assert report.CURVE_POINTS <= len(read.metrics) <= 2 * report.CURVE_POINTS + 1
    epochs = [m["epoch"] for m in read.metrics]
    assert epochs[-1] == 12_345 and epochs[:3] == [1, 1 + read.epochs_stride, 1 + 2 * read.epochs_stride]
    html = report.render([read])
    assert f"12,345 epochs, every {read.epochs_stride}th drawn (and the last)" in html


def test_figures_over_the_caps_are_left_out_and_named(tiny_run, tmp_path, monkeypatch):
    sizes = {f: (tiny_run / f).stat().st_size for f, *_ in report.FIGURES}
    monkeypatch.setattr(report, "FIGURE_CAP", sorted(sizes.values())[-2])  # the largest is over it
    largest = max(sizes, key=sizes.get)
    html = report.write_report([tiny_run, tiny_run], tmp_path / "r.html").read_text()
    assert html.count(f"{largest} left out: ") == 2 and "a report embeds per figure" in html
    monkeypatch.setattr(report, "FIGURE_CAP", max(sizes.values()))
    monkeypatch.setattr(report, "FIGURES_CAP", sum(sizes.values()))  # room for the first run's only
    html = report.write_report([tiny_run, tiny_run], tmp_path / "r.html").read_text()
    assert html.count("of figures are used up") == len(sizes)  # each of the second run's, named
    images = [a for t, a in Page(html).tags if t == "img"]
    assert len(images) == len(sizes)  # the first run's


def test_best_is_marked_only_among_comparable_runs(fixture_runs, tmp_path):
    vae, _ = fixture_runs
    runs = {}
    for name, data, shift in (("a", "digits", 0.0), ("b", "digits", 1.0), ("other", "mnist", 5.0)):
        run = runs[name] = tmp_path / name
        shutil.copytree(vae, run)
        result = json.loads((run / "evaluation.json").read_text())
        result.update(elbo=result["elbo"] + shift, log_likelihood=result["log_likelihood"] + shift)
        (run / "evaluation.json").write_text(json.dumps(result))
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "data": data}))
    html = report.write_report([runs["a"], runs["b"], runs["other"]], tmp_path / "r.html").read_text()
    row = html[html.index('data-key="elbo"'):]
    cells = re.findall(r"<td( class=\"best\")?>", row[: row.index("</tr>")])
    assert cells == ["", ' class="best"', ""]  # b beats a; mnist's higher ELBO is not compared
    # more importance samples for one run: its log-likelihood is not compared with the other's
    result = json.loads((runs["a"] / "evaluation.json").read_text())
    (runs["a"] / "evaluation.json").write_text(json.dumps({**result, "importance_samples": 5000}))
    html = report.write_report([runs["a"], runs["b"]], tmp_path / "r.html").read_text()
    row = html[html.index('data-key="log_likelihood"'):]
    assert 'class="best"' not in row[: row.index("</tr>")]


def test_a_run_that_validated_on_the_test_set_shows_it_once_as_test(fixture_runs, tmp_path):
    vae, _ = fixture_runs
    run = tmp_path / "run"
    shutil.copytree(vae, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "validation_split": "test"}))
    result = json.loads((run / "evaluation.json").read_text())  # split "validation": the test set
    (run / "evaluation-test.json").write_text(json.dumps({**result, "split": "test", "importance_samples": 1000}))
    page = Page(report.write_report([run], tmp_path / "r.html").read_text())
    assert "test split" in page.cells and "validation split" not in page.cells
    assert page.cells.count("evaluation-test.json") == 1  # the larger K of the two evaluations
    other = tmp_path / "other"
    shutil.copytree(run, other)
    html = report.write_report([run, other], tmp_path / "two.html").read_text()
    assert "<h3>test split</h3>" in html and "<h3>validation split</h3>" not in html

"""report: an experiment's charts as one offline HTML file, drawn by a real headless browser
(Chromium) with no script error, and as PNG images; run names and values from shared
experiments cannot inject markup or script."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.report import experiment_report

from .helpers import build, log_run

pytestmark = pytest.mark.jvm

DATABASE = "report_db"
# a run name that would run script and set a marker if the report did not escape it
HOSTILE = ("</script><script>document.body.setAttribute('data-pwned','1')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">")


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.fail("No Chromium: the report tests draw the HTML in a real browser (apt-get install chromium; "
                    "`make test` installs it where it can).")
    return found


def rendered_dom(path) -> str:
    """The report's DOM after its scripts ran, from headless Chromium."""
    result = subprocess.run(
        [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=30000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def sweep(tracking_server, engine, tmp_path_factory):
    """A sweep of 40 runs (numeric lr and depth, categorical optimizer, a constant param),
    each with an rmse history of 5 steps, plus runs the report must leave out."""
    from mlflow import MlflowClient

    from mlflow_spark_tools.config import load_settings

    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment(f"report-{tmp_path_factory.mktemp('x').name}")
    expected = {}
    for i in range(40):
        lr, depth, optimizer = 10 ** -(1 + i % 4), 2 + i % 5, ("adam", "sgd", "rmsprop")[i % 3]
        # the best two runs (i = 39, 19) differ in optimizer, so it varies among any drawn runs
        final = 1.0 / depth + lr * 3 + {"adam": 0.0, "sgd": 0.01, "rmsprop": 0.005}[optimizer] + i * 1e-4
        name = HOSTILE if i == 39 else f"trial-{i}"  # the best run: in the table and every chart
        run_id = log_run(client, experiment, params={"lr": lr, "depth": depth, "optimizer": optimizer,
                                                     "seed": 42},
                         metrics={"rmse": [(final + (4 - s) * 0.5, s) for s in range(5)]}, run_name=name)
        expected[run_id] = final
    log_run(client, experiment, params={"lr": 0.5, "depth": 9, "optimizer": "adam"},
            metrics={"rmse": float("nan"), "diverged": float("nan")}, run_name="nan-run")
    deleted = log_run(client, experiment, params={"lr": 0.5, "depth": 9, "optimizer": "<b>x</b>"},
                      metrics={"rmse": -100.0}, run_name="deleted-run")
    client.delete_run(deleted)
    settings = load_settings(environ={}).with_overrides(tracking_uri=tracking_server.url,
                                                        rate_limit_profile="unlimited", tables__database=DATABASE)
    build(settings, experiment, engine, metric_history="all")
    return experiment, expected, settings


def run_report(settings, engine, *args):
    return CliRunner().invoke(cli, ["report", *args], obj={"settings": settings, "engine": engine})


def test_the_report_draws_every_chart_in_a_browser_offline_and_escapes_what_runs_hold(sweep, engine, tmp_path):
    experiment, expected, settings = sweep
    out = tmp_path / "reports with spaces" / "sweep report.html"
    result = run_report(settings, engine, "--experiment-id", experiment, "--metric", "rmse", "--top", "5",
                        "--out", str(out), "--format", "png")
    assert result.exit_code == 0, result.output
    best = min(expected, key=expected.get)
    assert "40 runs with rmse; best" in result.stdout and best in result.stdout

    text = out.read_text()
    assert out.stat().st_size < 5_000_000
    # offline: no script, style or image is fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert HOSTILE not in text and "</script><script>document" not in text

    dom = rendered_dom(out)
    body = re.findall(r"<body([^>]*)>", dom)[-1]  # the inline libraries hold "<body>" in their text
    assert 'data-rendered="3"' in body, body
    assert json.loads(re.search(r"data-errors=\"([^\"]*)\"", body).group(1).replace("&quot;", '"')) == []
    assert "data-pwned" not in body and not re.search(r'data-pwned="', dom)  # no injected script ran
    for chart in ("parallel", "params", "curves"):
        section = dom.split(f'id="chart-{chart}"', 1)[1]
        assert "<svg" in section.split("</svg>", 1)[0], chart
    # the top runs, best first, as the table orders them
    ranked = sorted(expected, key=expected.get)[:5]
    positions = [dom.index(run_id) for run_id in ranked]
    assert positions == sorted(positions)
    assert "<td>&lt;/script&gt;&lt;script&gt;document.body" in dom  # shown as text in the top runs

    from PIL import Image

    images = sorted(p.name for p in out.parent.glob("*.png"))
    assert images == ["sweep report_curves.png", "sweep report_parallel.png", "sweep report_params.png"]
    for name in images:
        image = Image.open(io.BytesIO((out.parent / name).read_bytes())).convert("RGB")
        assert image.width >= 300 and image.height >= 200, (name, image.size)
        colors = image.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 20, name  # drawn, not blank
        white = max(count for count, color in colors if color == (255, 255, 255)) if any(
            c == (255, 255, 255) for _, c in colors) else 0
        assert white < image.width * image.height * 0.97, name


def test_the_python_report_holds_only_the_rows_it_draws(sweep, engine, tmp_path):
    experiment, expected, _ = sweep
    report = experiment_report(experiment, "rmse", top=3, max_points=10, max_params=2, engine=engine,
                               database=DATABASE)
    data = report.data
    assert data.runs_with_metric == 40  # the NaN and the deleted run are left out
    assert data.top.column("run_id").to_pylist() == sorted(expected, key=expected.get)[:3]
    plotted = data.plotted.column("run_id").to_pylist()
    # max_points runs drawn, whatever the run ids' hashes: the best 5 and the first 5 by hash
    assert len(plotted) == 10 and len(set(plotted)) == len(plotted)
    assert set(sorted(expected, key=expected.get)[:5]) <= set(plotted)  # the best half
    # params that vary, those most runs have first: the constant seed is not charted
    # numeric params with more than three values over every run are continuous axes
    assert [a.key for a in data.params] == ["depth", "lr"] and all(a.numeric for a in data.params)
    assert report.chart_names == ["parallel", "params", "curves"]
    assert report.chart("curves").to_dict()["datasets"]  # an Altair chart with its rows
    curves = data.curves.to_pylist()
    assert {r["run_id"] for r in curves} == set(data.top.column("run_id").to_pylist())
    assert all(len([r for r in curves if r["run_id"] == run_id]) == 5 for run_id in {r["run_id"] for r in curves})
    # categorical params are aggregated over every run, not only the plotted ones
    full = experiment_report(experiment, "rmse", engine=engine, database=DATABASE, max_points=4)
    optimizer = full.data.categories["optimizer"].to_pylist()
    assert sorted(r["value"] for r in optimizer) == ["adam", "rmsprop", "sgd"]
    assert sum(r["runs"] for r in optimizer) == 40
    assert all(math.isfinite(r["median"]) and r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]
               for r in optimizer)
    svg = full.save(tmp_path / "r.html", "svg")
    assert [p.suffix for p in svg] == [".html", ".svg", ".svg", ".svg"]
    assert all(p.read_text().lstrip().startswith("<svg") for p in svg[1:])


@pytest.mark.parametrize("args, message", [
    (["--experiment-id", "424242", "--metric", "rmse"], "exp_424242: build it first with `mlflow-spark-tools build-tables"),
    (["--metric", "no_such_metric"], "has the metric 'no_such_metric'"),
    (["--experiment-id", "1; DROP TABLE x", "--metric", "rmse"], "experiment id"),
    (["--metric", "diverged"], "has a value of 'diverged' that is a number"),
])
def test_report_errors_are_one_line(sweep, engine, tmp_path, args, message):
    experiment, _, settings = sweep
    if "--experiment-id" not in args:
        args = ["--experiment-id", experiment, *args]
    result = run_report(settings, engine, *args, "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


def _specs(html_text):
    """The charts' Vega-Lite specs in a report's HTML."""
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html_text, re.S)
    return [json.loads(block) for block in blocks]


def _tooltip_titles(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "tooltip":
                entries = value if isinstance(value, list) else [value]
                yield from (e.get("title", e.get("field")) for e in entries if isinstance(e, dict))
            yield from _tooltip_titles(value)
    elif isinstance(node, list):
        for value in node:
            yield from _tooltip_titles(value)


def test_line_separators_and_keys_named_like_tooltip_fields_draw_safely(tracking_server, engine, tmp_path):
    """A U+2028 in a param value and a run name: every chart draws, in the browser
    and as PNG (values in Vega sort arrays become expressions, which a line separator breaks).
    A param named ``image`` with URLs: vega-tooltip would show (fetch) it on hover, so no
    tooltip entry is named ``image`` or ``title``."""
    from mlflow import MlflowClient

    from mlflow_spark_tools.config import load_settings

    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment(f"separators-{tmp_path.name}")
    for i in range(12):
        log_run(client, experiment, run_name=f"run\u2028{i}",
                params={"optimizer": ("adam\u2028w", "sgd", "a'b\"c")[i % 3], "image": f"http://127.0.0.1:9/{i % 2}.png",
                        "title": ("x", "y")[i % 2], "lr rate": 10 ** -(1 + i % 4)},
                metrics={"rmse": [(1.0 / (i + 1) + s, s) for s in range(3)]})
    settings = load_settings(environ={}).with_overrides(tracking_uri=tracking_server.url,
                                                        rate_limit_profile="unlimited", tables__database=DATABASE)
    build(settings, experiment, engine, metric_history="all")
    out = tmp_path / "separators.html"
    result = run_report(settings, engine, "--experiment-id", experiment, "--metric", "rmse", "--out", str(out),
                        "--format", "png")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "separators_curves.png", "separators_parallel.png", "separators_params.png"]
    dom = rendered_dom(out)
    body = re.findall(r"<body([^>]*)>", dom)[-1]
    assert json.loads(re.search(r"data-errors=\"([^\"]*)\"", body).group(1).replace("&quot;", '"')) == []
    assert 'data-rendered="3"' in body, body
    specs = _specs(out.read_text())
    titles = [t for spec in specs for t in _tooltip_titles(spec)]
    assert "image (key)" in titles and "title (key)" in titles
    assert not {"image", "title"} & set(titles), titles


@pytest.fixture(scope="module")
def wide_sweep(tracking_server, engine, tmp_path_factory):
    """30 runs over 12 params (one of them numeric with two values), named in Chinese."""
    from mlflow import MlflowClient

    from mlflow_spark_tools.config import load_settings

    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment(f"wide-{tmp_path_factory.mktemp('w').name}")
    for i in range(30):
        params = {f"p{k}": (i * (k + 3)) % 17 + k for k in range(10)}
        params.update(layers=(2, 4)[i % 2], 优化器=("亚当", "随机梯度")[i // 15])
        # two clusters of runs per value of layers, which a box alone hides
        rmse = (0.2 if i % 4 < 2 else 0.8) + i * 1e-3
        log_run(client, experiment, params=params, metrics={"rmse": [(rmse + (2 - s) * 0.1, s) for s in range(3)]},
                run_name=f"试验-{i}")
    settings = load_settings(environ={}).with_overrides(tracking_uri=tracking_server.url,
                                                        rate_limit_profile="unlimited", tables__database=DATABASE)
    build(settings, experiment, engine, metric_history="all")
    return experiment, settings


def test_a_wide_sweep_fits_the_page_and_few_valued_numbers_are_categories_with_their_runs(
        wide_sweep, engine, tmp_path):
    experiment, settings = wide_sweep
    report = experiment_report(experiment, "rmse", max_points=20, engine=engine, database=DATABASE)
    axes = {a.key: a for a in report.data.params}
    assert len(axes) == 12 and not axes["layers"].numeric and axes["p1"].numeric
    parallel = report.chart("parallel").to_dict()
    assert parallel["width"] <= 1000
    assert parallel["layer"][0]["encoding"]["color"]["legend"]["orient"] == "bottom"
    drawn = report.data.plotted.num_rows
    assert drawn == 20 and parallel["title"].startswith("Parallel coordinates: 20 of 30 runs drawn")
    # the box of each value of layers has the drawn runs' points over it, in both clusters
    params = report.chart("params").to_dict()
    panel = next(p for p in params["concat"] if p.get("title") == "layers")
    circles = [layer for layer in panel["layer"] if layer["mark"]["type"] == "circle"]
    assert len(circles) == 1
    points = params["datasets"][circles[0]["data"]["name"]]
    assert {p["value"] for p in points} == {"2", "4"} and len(points) == drawn
    assert {p["metric"] < 0.5 for p in points} == {True, False}

    out = tmp_path / "wide.html"
    result = run_report(settings, engine, "--experiment-id", experiment, "--metric", "rmse", "--out", str(out),
                        "--max-points", "20", "--format", "png")
    assert result.exit_code == 0, result.output
    dom = rendered_dom(out)
    body = re.findall(r"<body([^>]*)>", dom)[-1]
    assert 'data-rendered="3"' in body, body
    section = dom.split('id="chart-parallel"', 1)[1]
    width = float(re.search(r'<svg[^>]*\swidth="([0-9.]+)"', section).group(1))
    assert width <= 1400 - 2 * 24, width  # the metric axis and the legend stay on a 1,400 px page


def _png_of_title(title):
    import vl_convert

    return vl_convert.vegalite_to_png({"title": title, "data": {"values": [{"a": 1}]}, "mark": "point",
                                       "encoding": {"x": {"field": "a", "type": "quantitative"}}})


def test_chinese_japanese_and_korean_text_is_drawn_not_boxed(tmp_path):
    """Text in a script no font covers is drawn as the same empty boxes whatever it says: the
    PNG renderer and the browser must draw CJK run names differently from code points no font
    has (make installs a font for them)."""
    assert _png_of_title("学习率 最適化 학습률") != _png_of_title("\U000f0000\U000f0001\U000f0002 \U000f0003")
    shots = []
    for name, text in (("cjk", "学习率 最適化 학습률"), ("none", "\U000f0000\U000f0001\U000f0002 \U000f0003")):
        page = tmp_path / f"{name}.html"
        page.write_text(f"<html><body style='font-family:sans-serif;font-size:40px'>{text}</body></html>",
                        encoding="utf-8")
        shot = tmp_path / f"{name}.png"
        subprocess.run([browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--screenshot={shot}", "--window-size=600,120", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
        shots.append(shot.read_bytes())
    assert shots[0] != shots[1]


def test_a_png_report_says_when_no_font_draws_its_cjk_text(wide_sweep, engine, tmp_path, monkeypatch, caplog):
    import logging
    import os

    experiment, _ = wide_sweep
    quiet = tmp_path / "bin"
    quiet.mkdir()
    (quiet / "fc-list").write_text("#!/bin/sh\nexit 0\n")  # fontconfig that knows no font for Chinese
    (quiet / "fc-list").chmod(0o755)
    monkeypatch.setenv("PATH", f"{quiet}{os.pathsep}{os.environ['PATH']}")
    report = experiment_report(experiment, "rmse", engine=engine, database=DATABASE)
    with caplog.at_level(logging.WARNING):
        report.save(tmp_path / "r.html", "svg")
        assert "no font" not in caplog.text  # an SVG is drawn by its viewer's fonts
        report.save(tmp_path / "r.html", "png")
    assert "no font on this machine has those glyphs" in caplog.text and "fonts-noto-cjk" in caplog.text

"""`ddbackdoor report`: plots from results.csv, one self-contained HTML file, DER, single runs."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddbackdoor.cli import main
from ddbackdoor.errors import UserError
from ddbackdoor.report import build_report
from ddbackdoor.report.tables import axes_and_lines, defense_effectiveness, series
from ddbackdoor.sweeps.results import write_results

BLUE = (31, 119, 180)  # matplotlib's first line colour


def colours(picture: Image.Image) -> set[tuple[int, ...]]:
    return set(map(tuple, np.asarray(picture.convert("RGB")).reshape(-1, 3).tolist()))


def fake_run(run_dir: Path, cta: list[float], asr: list[float]) -> None:
    run_dir.mkdir(parents=True)
    victims = [
        {"network": "convnet", "seed": i, "cta": c, "asr": a, "asr_all": a}
        for i, (c, a) in enumerate(zip(cta, asr, strict=True))
    ]
    stats = lambda v: {"mean": sum(v) / len(v), "std": 0.0, "values": v}  # noqa: E731
    metrics = {
        "cta": stats(cta),
        "asr": stats(asr),
        "asr_all": stats(asr),
        "per_victim": victims,
        "iteration": 5,
        "seconds": 1.0,
        "history": [
            {"iteration": 0, "cta": stats(cta), "asr": stats(asr)},
            {"iteration": 5, "cta": stats(cta), "asr": stats(asr)},
        ],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (8, 8), (255, 255, 255)).save(run_dir / "trigger.png")
    Image.new("RGB", (40, 40), (90, 90, 90)).save(run_dir / "synthetic.png")


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """Two attacks x trigger size 2, 4 (portion 0.01) + size 2 at portion 0.1, seeds 0 and 1."""
    rows = []
    cells = [(2, 0.01), (4, 0.01), (2, 0.1)]
    for attack in ("naive", "doorping"):
        for size, portion in cells:
            for seed in (0, 1):
                asr = [0.95, 0.5] if attack == "doorping" and size == 4 else [0.1 * seed, 0.2]
                run_id = f"{attack}-{size}-{portion}-{seed}"
                fake_run(tmp_path / "runs" / run_id, [0.8, 0.7], asr)
                rows.append(
                    {
                        "id": run_id,
                        "status": "finished",
                        "attack": attack,
                        "poison.trigger_size": size,
                        "poison.portion": portion,
                        "seed": seed,
                        **{
                            f"{s}_values": ";".join(map(str, v))
                            for s, v in (("cta", [0.8, 0.7]), ("asr", asr), ("asr_all", asr))
                        },
                        "asr_mean": sum(asr) / 2,
                        "asr_std": 0.0,
                        "cta_mean": 0.75,
                        "cta_std": 0.05,
                        "victims": 2,
                        "victims_asr_ge_0.9": sum(a >= 0.9 for a in asr),
                        "run_dir": f"runs/{run_id}",
                        "error": "",
                    }
                )
    write_results(tmp_path, rows, ["attack", "poison.trigger_size", "poison.portion", "seed"])
    defended = tmp_path / "runs" / "doorping-4-0.01-0" / "defenses"
    defended.mkdir()
    (defended / "fine_pruning.json").write_text(
        json.dumps(
            {
                "defense": "fine_pruning",
                "kind": "model",
                "before": {"cta": 0.8, "asr": 0.9},
                "after": {"cta": 0.7, "asr": 0.1},
                "pruned": 3,
                "channels": 16,
            }
        )
    )
    return tmp_path


def test_series_pool_seeds_and_hold_the_other_axis_at_its_common_value(sweep_dir):
    from ddbackdoor.sweeps.results import read_results

    rows = read_results(sweep_dir)
    assert axes_and_lines(rows) == (["poison.trigger_size", "poison.portion"], ["attack"])
    lines = series(rows, "poison.trigger_size", "asr")
    assert set(lines) == {"attack=naive", "attack=doorping"}
    point = lines["attack=doorping"][1]  # size 4, portion held at 0.01, both seeds' victims
    assert point.x == 4 and point.values == [0.95, 0.5, 0.95, 0.5] and point.carried == 2
    assert point.mean == pytest.approx(0.725)
    by_portion = series(rows, "poison.portion", "asr")["attack=naive"]  # size held at 2
    assert [p.x for p in by_portion] == [0.01, 0.1]


def test_der_is_backdoorbench_s_rating():
    assert defense_effectiveness({"cta": 0.8, "asr": 0.9}, {"cta": 0.7, "asr": 0.1}) == pytest.approx(0.85)
    assert defense_effectiveness({"cta": 0.8, "asr": 0.9}, {"cta": 0.8, "asr": 0.9}) == 0.5
    assert defense_effectiveness({"cta": 0.8, "asr": 0.1}, {"cta": 0.9, "asr": 0.5}) == 0.5


def embedded_pictures(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    ]


def test_sweep_report_is_one_self_contained_file_with_plots_and_der(sweep_dir):
    html_file, md_file = build_report(sweep_dir)
    html = html_file.read_text()
    assert "http" not in html.lower().replace("https://github.com", "")  # nothing fetched from outside
    assert len(re.findall(r"<img ", html)) == len(embedded_pictures(html))
    pictures = embedded_pictures(html)
    plots = [p for p in pictures if p.width > 400]
    assert len(plots) == 2  # ASR/CTA against trigger size, and against portion
    assert any(BLUE in colours(plot) for plot in plots)
    assert "0.850" in html  # the DER of the defended run
    md = md_file.read_text()
    for link in re.findall(r"\]\((report/[^)]+)\)", md):
        assert (sweep_dir / link).exists(), link
    assert "| doorping-4-0.01-0 | finished | doorping | 4 | 0.01 | 0 |" in md


def test_single_run_report_and_clear_errors(sweep_dir, tmp_path, capsys):
    run = sweep_dir / "runs" / "naive-2-0.01-0"
    build_report(run)
    assert len(embedded_pictures((run / "report.html").read_text())) == 3  # history, trigger, grid
    with pytest.raises(UserError, match="neither results.csv"):
        build_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "neither results.csv" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed")
def test_the_report_renders_its_plots_in_headless_chromium(sweep_dir):
    html_file, _ = build_report(sweep_dir)
    shot = sweep_dir / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            html_file.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert BLUE in colours(Image.open(shot))  # a plotted line is on screen, not a broken-image icon


def test_summary_pools_the_seeds_of_each_cell(sweep_dir):
    from ddbackdoor.report.tables import summary_table
    from ddbackdoor.sweeps.results import read_results

    header, table = summary_table(
        read_results(sweep_dir), ["attack", "poison.trigger_size", "poison.portion"]
    )
    assert header[:4] == ["attack", "poison.trigger_size", "poison.portion", "runs"]
    row = next(r for r in table if r[:3] == ["doorping", "4", "0.01"])
    assert row[3] == "2" and row[6] == "2/4"  # two seeds, two of their four victims at 0.9
    assert row[5] == "0.725 ± 0.225" and row[7] == "0.95, 0.50, 0.95, 0.50"
    assert len(table) == 6


def test_by_seed_table_shows_every_victim_of_every_seed(sweep_dir):
    from ddbackdoor.report.tables import by_seed_table
    from ddbackdoor.sweeps.results import read_results

    rows = [r for r in read_results(sweep_dir) if r["poison.trigger_size"] == "4"]
    header, table = by_seed_table(rows, ["attack", "poison.trigger_size", "poison.portion"])
    assert header == [
        "seed",
        "attack=naive, trigger_size=4, portion=0.01",
        "attack=doorping, trigger_size=4, portion=0.01",
    ]
    assert [row[0] for row in table] == ["0", "1"]
    assert table[1][1] == "0.100, 0.200 (CTA 0.750)" and table[0][2] == "0.950, 0.500 (CTA 0.750)"
    # six cells is the most a by-seed table shows; the full sweep has six, one seed has none
    assert by_seed_table(read_results(sweep_dir), ["attack", "poison.trigger_size", "poison.portion"])
    assert by_seed_table([r for r in rows if r["seed"] == "0"], ["attack"]) is None


def test_runs_table_lists_per_victim_and_source_class_asr(sweep_dir):
    from ddbackdoor.sweeps.results import read_results

    rows = read_results(sweep_dir)
    for row in rows:
        row.update(asr_source_values="0.5;0.25", asr_source_mean="0.375", asr_source_std="0.125")
    write_results(sweep_dir, rows, ["attack", "poison.trigger_size", "poison.portion", "seed"])
    _, md = build_report(sweep_dir)
    text = md.read_text()
    assert "ASR (source class)" in text and "0.375 ± 0.125" in text
    assert "| 0.950, 0.500 |" in text and "## By seed" in text


def test_a_run_on_several_architectures_gets_a_table_per_architecture(tmp_path):
    from ddbackdoor.report.tables import by_network_table

    fake_run(tmp_path / "run", [0.6, 0.5, 0.4, 0.2], [1.0, 0.8, 0.0, 0.1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for victim, network in zip(metrics["per_victim"], ["convnet", "convnet", "vgg11", "vgg11"], strict=True):
        victim["network"] = network
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    header, table = by_network_table(metrics["per_victim"])
    assert table == [
        ["convnet", "0.550 ± 0.050", "0.900 ± 0.100", "1.000, 0.800"],
        ["vgg11", "0.300 ± 0.100", "0.050 ± 0.050", "0.000, 0.100"],
    ]
    _, md = build_report(tmp_path / "run")
    assert "## By victim architecture" in md.read_text()
    assert by_network_table(metrics["per_victim"][:2]) is None  # one architecture: no table


def test_a_sweep_without_seeds_has_no_by_seed_table(sweep_dir):
    from ddbackdoor.report.tables import by_seed_table
    from ddbackdoor.sweeps.results import read_results

    rows = [{k: v for k, v in row.items() if k != "seed"} for row in read_results(sweep_dir)]
    assert by_seed_table(rows, ["attack"]) is None


def test_a_line_label_spells_out_keys_that_share_their_last_part():
    from ddbackdoor.report.tables import line_label

    row = {"attack": "inkdrop", "inkdrop.clip": "True", "sneakdoor.clip": "False", "poison.target": "0"}
    label = line_label(row, ["attack", "inkdrop.clip", "sneakdoor.clip", "poison.target"])
    assert label == "attack=inkdrop, inkdrop.clip=True, sneakdoor.clip=False, target=0"

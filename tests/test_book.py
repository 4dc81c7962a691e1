"""The book build's own helpers: output cleaning, progress bars, scale notice, console script."""
import nbformat
import pytest

from fer_nb import book, cli, notice, progress


def _cell(outputs, tags=()):
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["tags"] = list(tags)
    cell.outputs = [nbformat.v4.new_output(**o) for o in outputs]
    return cell


def test_clean_outputs_drops_progress_bars_and_empty_streams():
    bar = "\rfit 1/3:   0%|          | 0/10 [00:00<?, ?it/s]\rfit 1/3: 100%|##########| 10/10 [00:01<00:00, 9.1it/s]"
    nb = nbformat.v4.new_notebook(cells=[
        _cell([{"output_type": "stream", "name": "stderr", "text": bar},
               {"output_type": "stream", "name": "stdout", "text": "epoch 1: loss 0.5\n"},
               {"output_type": "stream", "name": "stderr", "text": "\n"},
               {"output_type": "stream", "name": "stdout", "text": "done\n"}]),
        _cell([{"output_type": "stream", "name": "stderr", "text": "UserWarning: something real\n"}]),
        _cell([], tags=["injected-parameters"]),
        _cell([], tags=["parameters"]),
    ])
    counts = book.clean_outputs(nb)
    first, second, injected, params = nb.cells
    assert [o["name"] for o in first.outputs] == ["stdout"]  # both stdout outputs merged, no stderr left
    assert first.outputs[0]["text"] == "epoch 1: loss 0.5\ndone\n"
    assert second.outputs[0]["text"] == "UserWarning: something real\n"  # real messages are kept
    assert "remove-cell" in injected.metadata["tags"] and "remove-cell" not in params.metadata["tags"]
    assert counts["empty_streams"] == 2 and counts["hidden_cells"] == 1


def test_progress_modes(monkeypatch):
    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setenv("FER_NB_PLAIN_PROGRESS", "1")
    assert progress.mode() == "off"
    assert progress.bar(range(3)).disable  # unattended kernels draw nothing
    monkeypatch.delenv("FER_NB_PLAIN_PROGRESS")
    monkeypatch.setattr(progress, "has_widgets", lambda: False)
    assert progress.mode() == "text"  # no ipywidgets: text bars, no IProgress warning
    monkeypatch.setattr(progress, "in_kernel", lambda: False)
    assert progress.mode() == "text"
    assert list(progress.bar(range(3), disable=True)) == [0, 1, 2]


def test_scale_notice_is_an_admonition(tiny_cfg, capsys):
    html = notice.scale_notice_html(tiny_cfg)
    assert html.startswith('<div class="admonition caution">') and "<code>smoke</code>" in html
    notice.scale_notice(tiny_cfg)  # outside IPython: plain text
    assert "only show that the pipeline runs" in capsys.readouterr().out


def test_console_script_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "book" in out
    assert cli.main(["scoreboard"]) == 0
    assert "verdict" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_pyproject_script_points_to_cli():
    import tomllib

    data = tomllib.loads((book.ROOT / "pyproject.toml").read_text())
    module, func = data["project"]["scripts"]["fer-nb"].split(":")
    assert module == "fer_nb.cli" and callable(getattr(cli, func))


def test_wide_figures_get_the_full_width_tag():
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(width_in):
        fig = plt.figure(figsize=(width_in, 2), dpi=100)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()

    wide, narrow = png(15), png(6)
    assert book.png_width(wide) == 1500 and book.png_width(narrow) == 600 and book.png_width("") == 0
    nb = nbformat.v4.new_notebook(cells=[
        _cell([{"output_type": "display_data", "data": {"image/png": wide}, "metadata": {}}]),
        _cell([{"output_type": "display_data", "data": {"image/png": narrow}, "metadata": {}}]),
    ])
    book.clean_outputs(nb)
    assert "full-width" in nb.cells[0].metadata["tags"] and "full-width" not in nb.cells[1].metadata["tags"]


def test_table_of_contents_is_generated_from_the_notebooks():
    """Every notebook is a chapter of the book, in file-name order; the committed _toc.yml is current."""
    from fer_nb.book import BOOK, notebook_sources, toc_text

    text = toc_text()
    for src in notebook_sources():
        assert f"_generated/{src.stem}" in text, src.name
    assert (BOOK / "_toc.yml").read_text() == text, "run `python -m fer_nb.book --toc` and commit book/_toc.yml"


def test_notice_and_labels_say_which_recorded_runs_this_code_made(tmp_path, monkeypatch):
    """A recorded run shown beside a page is labelled when other (or unknown) code made it (issue #19)."""
    import json

    from fer_nb import config, notice, report

    cfg = config.resolve("toolkit_tour", "smoke", device="cpu", out_dir=tmp_path / "run")
    folder = tmp_path / "results" / "toolkit_tour"
    folder.mkdir(parents=True)
    report.write_metrics(cfg, {"t": {"row": {"acc": 1.0}}}, {"acc": 1.0})
    current = json.loads((cfg.out_dir / "metrics.json").read_text())
    (folder / "small-synthfacs.json").write_text(json.dumps(current))
    old = dict(current, provenance={k: v for k, v in current["provenance"].items() if k != "code"})
    (folder / "smoke-synthfacs.json").write_text(json.dumps(old))
    monkeypatch.setattr(notice, "RESULTS", tmp_path / "results")
    text = notice.scale_notice_text(cfg)
    assert "`results/toolkit_tour/small-synthfacs.json` (made by this page's code)" in text
    assert "`results/toolkit_tour/smoke-synthfacs.json` (made by earlier code without a fingerprint)" in text
    assert report.run_label(current, "toolkit_tour").endswith("seed")
    assert report.run_label(old, "toolkit_tour").endswith("· other code")


def test_no_two_package_modules_share_a_name():
    """Issue #18: ``losses/margin_mix.py`` beside ``papers/margin_mix.py`` made tracebacks, mutation
    reports and ``show_source`` captions ambiguous. Each module name is unique in ``fer_nb``."""
    from collections import Counter
    from pathlib import Path

    import fer_nb

    names = Counter(p.name for p in Path(fer_nb.__file__).parent.rglob("*.py")
                    if p.name != "__init__.py" and "__pycache__" not in p.parts)
    assert [n for n, c in names.items() if c > 1] == []


def test_reduction_names_are_defined_once():
    """Issue #18: the shared reductions and their check live in ``losses/common.py`` only."""
    import re
    from pathlib import Path

    import fer_nb

    pkg = Path(fer_nb.__file__).parent
    defined = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
               if re.search(r'^REDUCTIONS\s*=\s*\("mean", "sum", "none"\)', p.read_text(), re.M)
               or re.search(r"^def check_reduction\(", p.read_text(), re.M)
               or re.search(r'if reduction not in \(', p.read_text())]
    assert defined == ["losses/common.py"]

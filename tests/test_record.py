"""``make record`` (fer_nb.record): every recorded run is current, has a recipe, and the recipe runs."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fer_nb import record
from fer_nb.fingerprint import code_fingerprint


def test_recorded_results_are_current():
    """A change to code a recorded run depends on must come with its re-recording (`make record`)."""
    stale = record.check()
    assert not stale, ("recorded runs made by other code than this checkout's; re-record them with "
                       "`make record` (add --data-root for the FER+ ones):\n"
                       + "\n".join(f"  results/{name}: {why}" for name, why in stale))


def test_every_recording_has_a_recipe():
    found = {r.name: r for r in record.recordings()}
    assert {"margin_mix/baseline-wrn28_2-ferplus.json", "datasets/synthfacs-vs-ferplus.json"} <= set(found)
    assert {"caf/small-synthfacs.json", "margin_mix/small-ferplus.json", "nm_tuple/small-synthfacs.json"} <= set(found)
    base = found["margin_mix/baseline-wrn28_2-ferplus.json"]
    cmd = base.command(record.ROOT / "w", record.ROOT / "data")
    hp = base.recorded["config"]["hp"]
    assert cmd[2] == "benchmarks.ferplus_baseline"
    assert cmd[cmd.index("--steps") + 1] == str(hp["steps"]) and cmd[cmd.index("--epochs") + 1] == str(hp["epochs"])
    nb = found["margin_mix/small-ferplus.json"]
    cmd = nb.command(record.ROOT / "w", record.ROOT / "data")
    assert cmd[cmd.index("--execute-notebook") + 1] == "margin_mix" and nb.needs_data
    assert cmd[cmd.index("--seeds") + 1] == "0,1,2" and "--data-root" in cmd
    assert "--data-root" not in found["caf/small-synthfacs.json"].command(record.ROOT / "w", None)


def test_longest_recordings_are_scheduled_first_by_their_stored_time():
    found = {r.name: r for r in record.recordings()}
    udat = found["udat_as/small-synthfacs.json"]   # keeps its time as summary.wall_seconds, or recording.seconds
    assert udat.last_seconds > 600
    assert found["margin_mix/small-synthfacs.json"].last_seconds > found["loss_geometry/small-synthfacs.json"].last_seconds


def _fake_results(tmp_path, code: str | None):
    """A results folder holding one copy of the recorded CAF run, its fingerprint replaced by ``code``."""
    rec = json.loads((record.RESULTS / "caf" / "small-synthfacs.json").read_text())
    if code is None:
        rec["provenance"].pop("code")
    else:
        rec["provenance"]["code"] = {**rec["provenance"]["code"], "code": code}
    (tmp_path / "caf").mkdir(exist_ok=True)
    (tmp_path / "caf" / "small-synthfacs.json").write_text(json.dumps(rec))
    return tmp_path


def test_check_names_a_recording_made_by_other_code(tmp_path):
    results = _fake_results(tmp_path, "0123456789abcdef")
    [(name, why)] = record.check(results)
    assert name == "caf/small-synthfacs.json" and "0123456789abcdef" in why and "changed since" in why
    (tmp_path / "caf" / "small-synthfacs.json").unlink()
    results = _fake_results(tmp_path, code_fingerprint("caf")["code"])
    assert record.check(results) == []


def test_a_recording_without_fingerprint_or_recipe_is_refused(tmp_path):
    results = _fake_results(tmp_path, None)
    assert "without a code fingerprint" in record.check(results)[0][1]
    (tmp_path / "caf" / "other.json").write_text(json.dumps({"config": {}, "provenance": {"notebook": "caf"}}))
    with pytest.raises(ValueError, match="no recipe"):
        record.recordings(results)


def test_real_data_recordings_need_a_data_root(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--data-root"):
        record.main(["--only", "margin_mix/small-ferplus.json", "--dry-run", "--data-root", str(tmp_path / "none")])


def _needs_git():
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(record.ROOT), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode:
        pytest.skip("needs the book as a git checkout")


def _smoke_recording(tmp_path):
    """A results folder with one stale "recording" of the toolkit tour at smoke (about half a minute)."""
    results = tmp_path / "results"
    (results / "toolkit_tour").mkdir(parents=True)
    fake = {"provenance": {"notebook": "toolkit_tour", "scale": "smoke", "dataset": "synthfacs", "seeds": [0],
                           "code": {"code": "stale"}}, "config": {}, "tables": {}}
    (results / "toolkit_tour" / "smoke-synthfacs.json").write_text(json.dumps(fake))
    return results


def worktrees():
    return set(subprocess.run(["git", "-C", str(record.ROOT), "worktree", "list", "--porcelain"],
                              capture_output=True, text=True).stdout.splitlines())


@pytest.mark.notebook
def test_record_runs_a_chapter_from_a_worktree_of_head(tmp_path):
    """End to end: a smoke "recording" of the toolkit tour, made in a worktree of HEAD, copied into results."""
    _needs_git()
    results = _smoke_recording(tmp_path)
    [rec] = record.recordings(results)
    assert rec.staleness() is not None
    before = worktrees()
    assert record.run_all([rec], jobs=1, data_root=None) == []
    made = json.loads((results / "toolkit_tour" / "smoke-synthfacs.json").read_text())
    head = subprocess.run(["git", "-C", str(record.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert made["provenance"]["commit"].startswith(head.strip()) and made["recording"]["commit"] == head.strip()
    assert made["recording"]["seconds"] > 0 and made["provenance"]["scale"] == "smoke" and "tables" in made
    assert worktrees() == before                      # its worktree is gone again


@pytest.mark.notebook
def test_a_stopped_record_leaves_no_kernel_and_no_worktree(tmp_path):
    """``kill`` of ``make record`` stops the recordings it started (their kernels too) and removes its worktree."""
    _needs_git()
    results = _smoke_recording(tmp_path)
    before = worktrees()
    proc = subprocess.Popen([sys.executable, "-m", "fer_nb.record", "--results", str(results), "--jobs", "1"],
                            cwd=record.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if " start " in line:
            work = line.rsplit("log ", 1)[1].strip().rsplit("/", 1)[0]
            break
    def recording():   # the child interpreter that runs the chapter, and the kernel it started
        child = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True).stdout.split()
        return child + (subprocess.run(["pgrep", "-P", child[0]], capture_output=True, text=True).stdout.split()
                        if child else [])

    deadline = time.time() + 60
    while len(recording()) < 2 and time.time() < deadline:   # wait until the child has started its kernel
        time.sleep(0.2)
    running = recording()
    assert len(running) >= 2, running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143

    def alive():
        return [pid for pid in running if subprocess.run(["kill", "-0", pid], capture_output=True).returncode == 0]

    deadline = time.time() + 30                       # the kernel shuts down after its parent: allow it a moment
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    assert alive() == [], f"processes of the stopped recording still running 30 s later: {alive()}"
    assert worktrees() == before
    assert json.loads((results / "toolkit_tour" / "smoke-synthfacs.json").read_text())["provenance"]["code"] == {
        "code": "stale"}                             # nothing half-written

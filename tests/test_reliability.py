"""Issue #19: stale results (code fingerprint), resume with any batch source, atomic writes,
checkpoint errors and run-parameter errors. Each test here failed before its fix."""
import dataclasses
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from torch import nn

from fer_nb import config, fingerprint, io, report, train

HERE = Path(__file__).parent
WRITER = HERE / "atomic_writer_job.py"


# ---------------------------------------------------------------- 1. code fingerprint ---------

NB = """---
kernelspec: {name: python3}
---
# Title

```{code-cell} ipython3
:tags: [parameters]

SCALE = "smoke"
SEEDS = 1
```

Prose that may change freely.

```{code-cell} ipython3
x = 1
```
"""


def test_notebook_fingerprint_covers_code_cells_but_not_parameters_or_prose(tmp_path):
    p = tmp_path / "nb.md"
    p.write_text(NB)
    base = fingerprint.notebook_fingerprint(p)
    p.write_text(NB.replace('SCALE = "smoke"', 'SCALE = "small"').replace("Prose that", "Other prose that"))
    assert fingerprint.notebook_fingerprint(p) == base  # papermill parameters and prose do not count
    p.write_text(NB.replace("x = 1", "x = 2"))
    assert fingerprint.notebook_fingerprint(p) != base


def test_package_fingerprint_changes_with_any_source_file(tmp_path, monkeypatch):
    pkg = tmp_path / "fer_nb"
    (pkg / "presets").mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "presets" / "x.yaml").write_text("smoke: {epochs: 1}\n")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.setattr(fingerprint, "PACKAGE", pkg)
    base = fingerprint.package_fingerprint()
    (pkg / "notes.txt").write_text("other")
    assert fingerprint.package_fingerprint() == base
    (pkg / "presets" / "x.yaml").write_text("smoke: {epochs: 2}\n")
    changed_preset = fingerprint.package_fingerprint()
    assert changed_preset != base
    (pkg / "a.py").write_text("A = 2\n")
    assert fingerprint.package_fingerprint() not in (base, changed_preset)


def _fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fer_nb"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "presets").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "used.py").write_text("from .sub import deep\n")
    (pkg / "sub" / "deep.py").write_text("def f():\n    import fer_nb.lazy\n")
    (pkg / "lazy.py").write_text("L = 1\n")
    (pkg / "unused.py").write_text("U = 1\n")
    (pkg / "presets" / "chap.yaml").write_text("smoke: {}\n")
    (pkg / "presets" / "other.yaml").write_text("smoke: {}\n")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "10_chap.md").write_text(NB.replace("x = 1", "from fer_nb import used\nx = 1"))
    monkeypatch.setattr(fingerprint, "PACKAGE", pkg)
    monkeypatch.setattr(fingerprint, "NOTEBOOKS", nbs)
    return pkg


def test_chapter_fingerprint_covers_exactly_the_modules_it_can_reach(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)
    names = {p.relative_to(pkg).as_posix() for p in fingerprint.chapter_files("chap")}
    # relative import, function-level import, parent __init__ files and the chapter's own preset
    assert names == {"__init__.py", "used.py", "sub/__init__.py", "sub/deep.py", "lazy.py", "presets/chap.yaml"}
    base = fingerprint.code_fingerprint("chap")["code"]
    (pkg / "unused.py").write_text("U = 2\n")
    (pkg / "presets" / "other.yaml").write_text("smoke: {epochs: 3}\n")
    assert fingerprint.code_fingerprint("chap")["code"] == base  # unreachable code leaves it valid
    (pkg / "lazy.py").write_text("L = 2\n")
    assert fingerprint.code_fingerprint("chap")["code"] != base  # reachable code makes it stale


def test_extra_sources_enter_the_fingerprint(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)
    script = tmp_path / "bench.py"
    script.write_text("import fer_nb.unused\n")
    assert pkg / "unused.py" in fingerprint.chapter_files("chap", [script])
    with_script = fingerprint.code_fingerprint("chap", [script])["code"]
    assert with_script != fingerprint.code_fingerprint("chap")["code"]
    script.write_text("import fer_nb.unused\n# edited\n")
    assert fingerprint.code_fingerprint("chap", [script])["code"] != with_script
    (pkg / "unused.py").write_text("U = 3\n")
    assert fingerprint.code_fingerprint("chap", [script])["code"] not in (with_script,)


def test_a_chapter_that_is_not_python_falls_back_to_the_whole_package(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)
    (tmp_path / "notebooks" / "10_chap.md").write_text(NB.replace("x = 1", "!ls"))
    assert set(fingerprint.chapter_files("chap")) == set(fingerprint.package_files())


def test_fer_nb_has_no_dynamic_imports_the_closure_would_miss():
    for path in fingerprint.package_files():
        if path.suffix == ".py":
            text = path.read_text(encoding="utf-8")
            assert "import_module(" not in text and "__import__(" not in text, path


def test_every_chapter_fingerprint_reaches_config_and_its_preset():
    for nb in config.available_notebooks():
        files = {p.relative_to(fingerprint.PACKAGE).as_posix() for p in fingerprint.chapter_files(nb)}
        if fingerprint.notebook_source(nb) is not None:
            assert {"config.py", "fingerprint.py", f"presets/{nb}.yaml"} <= files, nb


def test_config_carries_the_fingerprint_of_its_chapter(tmp_path):
    cfg = config.resolve("nm_tuple", device="cpu", out_dir=tmp_path)
    assert cfg.code["notebook_file"] == "20_nm_tuple.md"
    assert cfg.code == fingerprint.code_fingerprint("nm_tuple")
    assert len(cfg.code["code"]) == 16 and cfg.code["package"] and cfg.code["notebook"]


def test_run_hash_changes_with_the_code(tmp_path):
    cfg = config.resolve("toolkit_tour", device="cpu", out_dir=tmp_path)
    other = dataclasses.replace(cfg, code=MappingProxyType(dict(cfg.code, code="0" * 16)))
    assert cfg.run_hash(seed=0) != other.run_hash(seed=0)


def _toy(batches_from_global_rng=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)

    def step(batch, ctx):
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}

    def batches(epoch):
        if batches_from_global_rng:  # the order comes from the global torch, python and numpy RNGs
            perm = torch.randperm(64).tolist()
            random.shuffle(perm)
            perm = [perm[i] for i in np.random.permutation(64)]
        else:
            perm = torch.randperm(64, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [(x[perm[i:i + 16]], y[perm[i:i + 16]]) for i in range(0, 64, 16)]

    return model, opt, step, batches


def test_checkpoint_carries_the_code_and_other_code_is_not_reused(tmp_path):
    cfg = config.resolve("toolkit_tour", device="cpu", out_dir=tmp_path)
    old = dataclasses.replace(cfg, code=MappingProxyType(dict(cfg.code, code="0" * 16)))
    h_old = old.run_hash(seed=0)
    model, opt, step, batches = _toy()
    train.fit_or_load(train.checkpoint_path(tmp_path, "m", h_old), h_old, modules={"m": model},
                      optimizers={"o": opt}, train_step=step, train_batches=batches, epochs=1, progress=False)
    assert io.load_torch(train.checkpoint_path(tmp_path, "m", h_old))["code"] == "0" * 16
    h_new = cfg.run_hash(seed=0)
    calls = []

    def counting_step(batch, ctx):
        calls.append(1)
        return step(batch, ctx)

    train.fit_or_load(train.checkpoint_path(tmp_path, "m", h_new), h_new, modules={"m": model},
                      optimizers={"o": opt}, train_step=counting_step, train_batches=batches, epochs=1,
                      progress=False)
    assert calls, "a checkpoint made by other code must be retrained, not loaded"
    assert io.load_torch(train.checkpoint_path(tmp_path, "m", h_new))["code"] == cfg.code["code"]
    # the same file name with another code's checkpoint inside is refused and says so
    with pytest.raises(ValueError, match="other code"):
        train.fit(modules={"m": model}, optimizers={"o": opt}, train_step=step, train_batches=batches,
                  epochs=2, checkpoint=train.checkpoint_path(tmp_path, "m", h_old), run_hash=h_new, progress=False)


def test_metrics_carry_the_fingerprint_and_staleness_is_reported(tmp_path):
    cfg = config.resolve("toolkit_tour", device="cpu", out_dir=tmp_path)
    m = json.loads(report.write_metrics(cfg, {"t": {"r": {"acc": 1.0}}}, {"acc": 1.0}).read_text())
    assert m["provenance"]["code"] == dict(cfg.code)
    assert not fingerprint.is_stale(m, cfg) and fingerprint.staleness(m, cfg) is None
    assert not fingerprint.is_stale(m, "toolkit_tour")  # by notebook key: the chapter's current code
    assert fingerprint.is_stale(m, "nm_tuple")
    changed = json.loads(json.dumps(m))
    changed["provenance"]["code"]["code"] = "f" * 16
    changed["provenance"]["code"]["notebook"] = "e" * 16
    assert fingerprint.is_stale(changed, cfg)
    assert "different code" in fingerprint.staleness(changed, cfg) and "notebook" in fingerprint.staleness(changed, cfg)
    legacy = json.loads(json.dumps(m))
    del legacy["provenance"]["code"]
    assert fingerprint.is_stale(legacy, cfg) and "earlier code" in fingerprint.staleness(legacy, cfg)
    assert not fingerprint.is_stale(None, cfg)
    with pytest.raises(TypeError, match="Config"):
        fingerprint.is_stale(m, {"not": "a config"})


def test_recorded_results_without_a_fingerprint_are_labelled_stale(tmp_path):
    recorded = sorted(report.RESULTS.glob("*/*-*.json"))
    assert recorded
    for path in recorded:
        m = json.loads(path.read_text())
        if "config" not in m:
            continue
        cfg = config.resolve(m["provenance"]["notebook"], device="cpu", out_dir=tmp_path)
        if "code" not in m["provenance"]:
            assert "earlier code" in fingerprint.staleness(m, cfg), path


# ---------------------------------------------------------------- 2. resume, any batch source --

@pytest.mark.parametrize("global_rng", [False, True], ids=["seeded-generator", "global-rng"])
def test_resume_is_bit_identical_however_batches_are_drawn(tmp_path, global_rng):
    from fer_nb.seed import seed_everything

    seed_everything(1)
    model_a, opt_a, step_a, batches_a = _toy(global_rng)
    seed_everything(1)
    train.fit({"m": model_a}, {"o": opt_a}, step_a, batches_a, 4, progress=False)
    ckpt = tmp_path / "c.pt"
    seed_everything(1)
    model_b, opt_b, step_b, batches_b = _toy(global_rng)
    seed_everything(1)
    with pytest.raises(KeyboardInterrupt):
        train.fit({"m": model_b}, {"o": opt_b}, step_b, batches_b, 4, checkpoint=ckpt, run_hash="h",
                  progress=False, stop_after_steps=10)
    seed_everything(123)  # a resumed process starts from other RNG states: all must come from the checkpoint
    model_c, opt_c, step_c, batches_c = _toy(global_rng)
    hist = train.fit({"m": model_c}, {"o": opt_c}, step_c, batches_c, 4, checkpoint=ckpt, run_hash="h",
                     progress=False)
    assert hist.resumed_from == 2
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(pa, pc)


def test_batches_are_requested_once_per_epoch():
    model, opt, step, batches = _toy()
    asked = []
    train.fit({"m": model}, {"o": opt}, step, lambda e: asked.append(e) or batches(e), 3, progress=False)
    assert asked == [0, 1, 2]


# ---------------------------------------------------------------- 3. atomic writes ------------

def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    io.save_torch({"w": torch.ones(1000)}, path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", disk_full)  # fails after the new bytes went out
    with pytest.raises(OSError, match="No space"):
        io.save_torch({"w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_torch(path)["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_files_get_the_umask_permissions_and_keep_a_replaced_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = io.save_json({"a": 1}, tmp_path / "m.json")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        q = io.save_torch({"a": torch.ones(1)}, tmp_path / "c.pt")
        assert stat.S_IMODE(q.stat().st_mode) == 0o644
        os.chmod(p, 0o640)
        io.save_json({"a": 2}, p)
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_stale_temp_files_are_removed_live_ones_kept(tmp_path, dead_pid):
    target = tmp_path / "c.pt"
    dead = tmp_path / f".c.pt.pid{dead_pid}.ab12.tmp"
    live = tmp_path / f".c.pt.pid{os.getppid()}.cd34.tmp"
    legacy_old = tmp_path / ".c.pt.k2j3h4x.tmp"
    legacy_new = tmp_path / ".c.pt.q9w8e7r.tmp"
    other = tmp_path / ".d.pt.pid1.ab12.tmp"
    for p in (dead, live, legacy_old, legacy_new, other):
        p.write_bytes(b"x" * 10)
    os.utime(legacy_old, (time.time() - 2 * io.LEGACY_TEMP_AGE_S,) * 2)
    io.save_torch({"a": torch.ones(1)}, target)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["c.pt", live.name, legacy_new.name, other.name])


def test_sigkill_mid_write_never_corrupts_and_leftovers_are_cleaned(tmp_path):
    target = tmp_path / "ck.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    rng = random.Random(0)
    versions, mid_write = set(), 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(target)], env=env)
        deadline = time.time() + 120
        while time.time() < deadline and not target.exists():
            time.sleep(0.02)
        assert target.exists(), "the writer never finished a first write"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        state = io.load_torch(target)  # the target is always a whole checkpoint, old or new
        assert torch.all(state["w"] == float(state["version"]))
        versions.add(state["version"])
        mid_write += any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert mid_write >= 3, "the kills should land inside writes (the writer is slowed down for that)"
    io.save_torch({"version": 0, "w": torch.zeros(1)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"], "killed writers' temp files must be removed"


# ---------------------------------------------------------------- 5. checkpoint and parameter errors

def test_truncated_checkpoint_names_the_file_and_the_fix(tmp_path):
    model, opt, step, batches = _toy()
    ckpt = tmp_path / "c.pt"
    train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt, run_hash="h", progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(io.CheckpointError, match=r"c\.pt.*truncated.*delete it"):
        train.fit({"m": model}, {"o": opt}, step, batches, 2, checkpoint=ckpt, run_hash="h", progress=False)


def test_malicious_checkpoint_is_refused_without_advice_to_unpickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    ckpt = tmp_path / "c.pt"
    torch.save({"run_hash": "h", "x": Evil()}, ckpt)
    model, opt, step, batches = _toy()
    with pytest.raises(io.CheckpointError, match="Do not load it with weights_only=False") as err:
        train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt, run_hash="h", progress=False)
    assert str(ckpt) in str(err.value) and "delete it" in str(err.value)
    assert "add_safe_globals" not in str(err.value)


def test_checkpoint_of_the_wrong_shape_is_refused(tmp_path):
    model, opt, step, batches = _toy()
    ckpt = tmp_path / "c.pt"
    io.save_torch({"weights": torch.ones(3)}, ckpt)
    with pytest.raises(io.CheckpointError, match="not a fer_nb training checkpoint"):
        train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt, run_hash="h", progress=False)
    train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt.with_name("d.pt"), run_hash="h",
              progress=False)
    other = nn.Linear(2, 2)
    with pytest.raises(io.CheckpointError, match="does not fit 'm'"):
        train.fit({"m": other}, {"o": torch.optim.SGD(other.parameters(), lr=0.1)}, step, batches, 2,
                  checkpoint=ckpt.with_name("d.pt"), run_hash="h", progress=False)


def test_out_dir_that_cannot_be_made_is_a_clear_error():
    with pytest.raises(ValueError, match=r"OUT_DIR /proc/nope cannot be created.*can write"):
        config.resolve("toolkit_tour", device="cpu", out_dir="/proc/nope")


def test_out_dir_is_not_created_before_device_is_validated(tmp_path):
    with pytest.raises(ValueError, match="DEVICE"):
        config.resolve("toolkit_tour", device="tpu", out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_seeds_as_text_from_papermill_says_how_to_pass_a_list(tmp_path):
    with pytest.raises(TypeError, match=r"-p SEEDS 2.*-y"):
        config.resolve("toolkit_tour", device="cpu", seeds="[0, 1]", out_dir=tmp_path)


def test_wrong_case_parameter_is_refused_in_a_notebook_namespace(tmp_path):
    # what a kernel holds after `papermill -p scale small`: the parameters cell, then the injected cell
    ns = {"__name__": "__main__", "SCALE": "smoke", "DATASET": "synthfacs", "DATA_ROOT": None, "DEVICE": "cpu",
          "SEEDS": 1, "OUT_DIR": str(tmp_path), "scale": "small", "config": config}
    code = "cfg = config.resolve('toolkit_tour', SCALE, DATASET, DATA_ROOT, DEVICE, SEEDS, OUT_DIR)"
    with pytest.raises(NameError, match=r"'scale' -> SCALE.*-p SCALE"):
        exec(code, ns)
    del ns["scale"]
    exec(code, ns)
    assert ns["cfg"].scale == "smoke"
    with pytest.raises(NameError, match="'Seeds' -> SEEDS"):
        config.check_parameters({"SEEDS": 1, "Seeds": 3})
    config.check_parameters({"SEEDS": 1, "_scale": 3, "scaled": 2})  # private or other names are fine


@pytest.mark.notebook
def test_papermill_lower_case_parameter_fails_the_run(tmp_path, monkeypatch):
    """`papermill -p scale small` on a chapter-shaped notebook: the set-up cell's resolve() refuses it."""
    import nbformat
    import papermill

    params = nbformat.v4.new_code_cell('SCALE = "smoke"\nDATASET = "synthfacs"\nDATA_ROOT = None\nDEVICE = "cpu"\n'
                                       f'SEEDS = 1\nOUT_DIR = {str(tmp_path / "run")!r}')
    params.metadata["tags"] = ["parameters"]
    setup = nbformat.v4.new_code_cell("from fer_nb import config\n"
                                      "cfg = config.resolve('toolkit_tour', SCALE, DATASET, DATA_ROOT, DEVICE, SEEDS, OUT_DIR)")
    nb = nbformat.v4.new_notebook(cells=[params, setup])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(papermill.PapermillExecutionError, match="wrong case: 'scale' -> SCALE"):
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters={"scale": "small"}, progress_bar=False)
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "ok.ipynb"), kernel_name="python3",
                               parameters={"SCALE": "small"}, progress_bar=False)

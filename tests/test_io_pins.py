"""Pins for fer_nb/io.py written from the survivors of the mutation run (issue #18,
benchmarks/results/mutation/ssl_io.json): each test fails on a named kind of mutation."""
import collections
import json
import math
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from fer_nb import io


def _dead_pid() -> int:
    pid = 2 ** 22 - 7
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


# ------------------------------------------------------------------------------- temp files ---

def test_stale_temp_with_upper_case_random_part_is_removed(tmp_path):
    target = tmp_path / "m.json"
    stale = tmp_path / f".m.json.pid{_dead_pid()}.AB12cd.tmp"
    stale.write_text("half")
    assert io.clean_stale_temp(target) == [stale]      # the list holds the removed paths
    assert not stale.exists()


def test_pid_alive_for_this_process_without_a_signal(monkeypatch):
    monkeypatch.setattr(os, "kill", lambda *a: pytest.fail("no signal to our own pid"))
    assert io._pid_alive(os.getpid()) is True


def test_pid_alive_probes_with_signal_zero_and_reads_permission_as_alive(monkeypatch):
    sent = []

    def fake_kill(pid, sig):
        sent.append(sig)
        raise PermissionError

    monkeypatch.setattr(os, "kill", fake_kill)
    assert io._pid_alive(12345) is True
    assert sent == [0]
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(sig))
    assert io._pid_alive(12345) is True and sent == [0, 0]


def test_legacy_temp_exactly_at_the_age_limit_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    legacy = tmp_path / ".m.json.abc123.tmp"
    legacy.write_text("x")
    mtime = legacy.stat().st_mtime
    monkeypatch.setattr(io.time, "time", lambda: mtime + io.LEGACY_TEMP_AGE_S)
    assert io.clean_stale_temp(target) == [] and legacy.exists()
    monkeypatch.setattr(io.time, "time", lambda: mtime + io.LEGACY_TEMP_AGE_S + 1)
    assert io.clean_stale_temp(target) == [legacy]


def test_one_unremovable_temp_does_not_stop_the_others(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    dead = _dead_pid()
    names = [f".m.json.pid{dead}.{tag}.tmp" for tag in ("aa", "bb", "cc")]
    for n in names:
        (tmp_path / n).write_text("x")
    real_scandir, real_unlink = os.scandir, os.unlink
    monkeypatch.setattr(io.os, "scandir", lambda p: sorted(real_scandir(p), key=lambda e: e.name))

    def unlink(p):
        if str(p).endswith(".aa.tmp"):
            raise PermissionError("busy")
        real_unlink(p)

    monkeypatch.setattr(io.os, "unlink", unlink)
    assert sorted(p.name for p in io.clean_stale_temp(target)) == names[1:]


# ------------------------------------------------------------------------------------- umask ---

def test_umask_is_read_from_proc_without_setting_it(monkeypatch):
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc on this system")
    mask = os.umask(0o027)
    try:
        # setting the umask to read it races with other threads (the decoder's thread pool): not used
        monkeypatch.setattr(io.os, "umask", lambda *a: pytest.fail("os.umask called although /proc has it"))
        assert io._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(mask)


def test_umask_without_proc_is_read_and_restored(monkeypatch):
    real_open = open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc"):
            raise OSError("no /proc")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    mask = os.umask(0o077)
    try:
        assert io._umask() == 0o077
        assert os.umask(0o077) == 0o077     # restored after reading
    finally:
        os.umask(mask)


# ------------------------------------------------------------------------------ atomic write ---

def test_atomic_write_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    io.save_json({"x": 1}, path)
    assert json.loads(path.read_text()) == {"x": 1}


def test_temp_name_carries_pid_and_eight_hex_digits(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: (seen.append(Path(a).name), real_replace(a, b)))
    io.save_json({"x": 1}, tmp_path / "m.json")
    assert re.fullmatch(rf"\.m\.json\.pid{os.getpid()}\.[0-9a-f]{{8}}\.tmp", seen[0]), seen


# ------------------------------------------------------------------------------ checkpoints ---

def test_namedtuples_survive_the_numpy_scalar_cleaning():
    Point = collections.namedtuple("Point", "x y")
    import numpy as np

    out = io._plain_scalars({"p": Point(np.float32(1.5), 2), "t": (np.int64(3),)})
    assert type(out["p"]) is Point and out["p"] == Point(np.float32(1.5), 2)
    assert out["t"] == (3,) and type(out["t"][0]) is int


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.pt"))):
        io.load_torch(tmp_path / "none.pt")


def test_load_torch_passes_map_location_and_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    io.save_torch({"w": torch.ones(2)}, path)
    assert io.load_torch(path, map_location="meta")["w"].device.type == "meta"
    seen = {}
    real_load = torch.load

    def spy(*a, **k):
        seen.update(k)
        return real_load(*a, **k)

    monkeypatch.setattr(io.torch, "load", spy)
    io.load_torch(path)
    assert seen == {"map_location": "cpu", "weights_only": True}


@pytest.mark.parametrize("message, reason", [
    ("Weights only load failed. Unsupported global: GLOBAL evil.Payload was not an allowed global",
     "(it refers to evil.Payload)"),
    ("Weights only load failed for another reason", "(refused by the weights-only loader)"),
])
def test_refused_pickle_says_what_it_refers_to(tmp_path, monkeypatch, message, reason):
    path = tmp_path / "c.pt"
    path.write_bytes(b"x")

    def refuse(*a, **k):
        raise pickle.UnpicklingError(message)

    monkeypatch.setattr(io.torch, "load", refuse)
    with pytest.raises(io.CheckpointError) as err:
        io.load_torch(path)
    assert reason in str(err.value) and str(path) in str(err.value)


def test_truncated_checkpoint_names_size_type_and_first_sentence(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    path.write_bytes(b"12345")

    def broken(*a, **k):
        raise RuntimeError("first sentence. second sentence\nmore")

    monkeypatch.setattr(io.torch, "load", broken)
    with pytest.raises(io.CheckpointError) as err:
        io.load_torch(path)
    msg = str(err.value)
    assert "(5 bytes)" in msg and "(RuntimeError: first sentence);" in msg and "second" not in msg

    def silent(*a, **k):
        raise EOFError("")

    monkeypatch.setattr(io.torch, "load", silent)
    with pytest.raises(io.CheckpointError, match=re.escape("(EOFError: no detail)")):
        io.load_torch(path)


# ------------------------------------------------------------------------------------- JSON ---

def test_json_default_turns_tuples_into_lists():
    assert io._json_default((1, 2)) == [1, 2]


def test_save_json_keeps_key_order_and_two_space_indent(tmp_path):
    path = io.save_json({"b": 1, "a": [1, 2]}, tmp_path / "m.json")
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_save_json_writes_nan_when_allowed(tmp_path):
    path = io.save_json({"x": math.nan}, tmp_path / "m.json", allow_nan=True)
    assert path.read_text() == '{\n  "x": NaN\n}\n'

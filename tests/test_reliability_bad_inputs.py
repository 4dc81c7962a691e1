"""Every bad input of the catalogue (tests/bad_inputs.py) raises an error from inside fer_nb that
says what is wrong, never a raw traceback from torch, numpy or the standard library; the inputs
that used to fail and are now accepted load; book/reliability.md lists every case."""
import re
from pathlib import Path

import pytest

import bad_inputs  # tests/ is on sys.path under pytest (rootdir conftest)

FER_NB = str(Path(bad_inputs.ROOT / "fer_nb"))
PAGE = bad_inputs.ROOT / "book" / "reliability.md"


def test_the_catalogue_is_large_enough():
    assert len(bad_inputs.CASES) >= 60


@pytest.mark.parametrize("area,what,fn", bad_inputs.CASES, ids=[w for _, w, _ in bad_inputs.CASES])
def test_bad_input_raises_a_clear_error_from_fer_nb(area, what, fn):
    out = bad_inputs.run(fn)
    assert isinstance(out, Exception), f"{what}: no error (returned {out!r})"
    where = bad_inputs.raised_in(out)
    assert where.startswith(FER_NB), f"{what}: raised inside {where}, not by fer_nb: {out!r}"
    msg = bad_inputs.message(out)
    assert len(msg) >= 15 and "Traceback" not in msg, f"{what}: message too terse: {msg!r}"


@pytest.mark.parametrize("area,what,fn", bad_inputs.ACCEPTED, ids=[w for _, w, _ in bad_inputs.ACCEPTED])
def test_formerly_failing_input_is_accepted(area, what, fn):
    out = bad_inputs.run(fn)
    assert not isinstance(out, Exception), f"{what}: {out!r}"


def test_the_reliability_page_lists_every_case():
    text = PAGE.read_text()
    listed = set(re.findall(r"^\| \d+ \| [^|]+ \| ([^|]+?) \|", text, flags=re.M))
    missing = [w for _, w, _ in bad_inputs.CASES + bad_inputs.ACCEPTED if w.replace("|", "/") not in listed]
    assert not missing, f"book/reliability.md lacks these cases (run python tests/bad_inputs.py): {missing}"

"""The fuzzer (tests/fuzz_inputs.py): 320 seeded mutations of real files, not one raw traceback."""

from __future__ import annotations

import faulthandler

import pytest

from fuzz_inputs import fuzz


@pytest.mark.realdata
def test_fuzzed_real_inputs_give_results_or_named_errors(shared_data, tmp_path):
    faulthandler.dump_traceback_later(170, exit=True)  # a reader that spins fails the run instead of hanging CI
    try:
        r = fuzz(shared_data, tmp_path, n=320, seed=0)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert r.total == 320
    assert r.named > 100 and r.ok > 20  # the mutations do hit the readers, and many inputs still read
    assert not r.raw, "raw tracebacks:\n" + "\n".join(f"--- {n}\n{tb}" for n, tb in r.raw[:10])

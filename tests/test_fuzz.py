"""The seeded mutation fuzzer (``tests/fuzzing.py``) in CI: zero tracebacks, hangs, over-bound
allocations and wrong results.

CI runs a fixed seed and :data:`fuzzing.CI_CASES` mutants per family (about 20 s on two busy
cores). ``RECORDKIT_FUZZ_CASES=1000`` runs 1000 mutants of every family instead, and
``RECORDKIT_FUZZ_SEED`` another seed; ``python tests/fuzzing.py --cases 1000`` does the same
and prints the table of docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import sys

import pytest
from fuzzing import BAD, FAMILIES, cases_from_env, sweep

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, FIFOs")


@pytest.mark.slow
def test_fuzz_every_input_family():
    seed = int(os.environ.get("RECORDKIT_FUZZ_SEED", "0"))
    report = sweep(seed, cases_from_env())
    counts = report.counts()
    assert set(counts) == set(FAMILIES), counts
    for family, c in counts.items():
        assert c["ok"] > 0 and c["refused"] > 0, (family, c)  # both paths exercised
    bad = report.bad()
    shown = "\n".join(
        f"{r['family']} #{r['case']} {r['op']} [{r['mutation']}]: {r['outcome']} {r['detail']}"
        for r in bad[:20]
    )
    assert not bad, f"seed {seed}: {len(bad)} bad case(s)\n{shown}\n{report.table()}"
    assert all(o not in BAD or n == 0 for c in counts.values() for o, n in c.items())

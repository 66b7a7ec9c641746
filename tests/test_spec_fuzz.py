"""schemathesis against the official specs, on the session's real server: no 5xx, and
every response valid for its operation, signed (past authentication) and unsigned.

Bounded for `make test` (FUZZ_EXAMPLES generated requests per operation, mode and
signing; default 25); bench/fuzz.py runs the same fuzzer longer. The two known defects of
the official spec are corrected by name in tests/spec_fuzz.py (KNOWN_SPEC_DEFECTS).
"""

from __future__ import annotations

import os

import httpx

from tests.spec_fuzz import Fuzzer, prepare

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


def test_official_specs_fuzz_clean(server):
    with httpx.Client(timeout=30) as http:
        target = prepare(http, server.public_url, server.operator_url, server.operator_token)
        tally = Fuzzer(http, target).run(EXAMPLES)
    print(tally.summary())
    # Every operation was reached, signed and unsigned.
    assert len(tally.by_operation) == 2 * 19, sorted(tally.by_operation)
    assert tally.sent > 19 * 2 * EXAMPLES, tally.summary()
    assert not tally.server_errors, "\n".join(tally.server_errors[:20])
    assert not tally.violations, "\n".join(tally.violations[:20])
    # Signed requests got past authentication into the handlers.
    assert tally.statuses[200] + tally.statuses[201] > 0, tally.summary()

"""Progress of long steps written to a file rather than a terminal: lines, not a silent bar."""

from __future__ import annotations

import io

from lutlm.progress import status


def test_a_log_file_gets_the_first_message_then_one_per_interval():
    out = io.StringIO()
    with status("quantize", out, every=3600) as report:
        report("layer 1/30")
        report("layer 2/30")  # within the interval: dropped
    assert out.getvalue().splitlines() == ["quantize: 0 s: layer 1/30"]
    out = io.StringIO()
    with status("compile", out, every=0) as report:
        for msg in ("kernels", "shards"):
            report(msg)
    assert [line.split(": ", 2)[2] for line in out.getvalue().splitlines()] == ["kernels", "shards"]

"""`lutlm bench kernels` end to end, quick: rows for both adapters with the documented keys.

No speed is asserted here (speed belongs to the benchmark's own output); this checks that both
executors run the same workload and report it."""

from __future__ import annotations

import json

from lutlm.cli import main

KEYS = {"adapter", "where", "kernel", "bits", "ms", "weight_gbps", "ratio_to_copy", "samples"}


def test_bench_kernels_quick_native_and_browser(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert main(["bench", "kernels", "--quick", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["where"] for r in rows} == {"native", "browser"}
    browser = [r for r in rows if r["where"] == "browser"]
    assert "swiftshader" in browser[0]["adapter"]
    for where in ("native", "browser"):
        mine = [r for r in rows if r["where"] == where]
        assert {(r["kernel"], r["bits"]) for r in mine} >= {("copy", 4), ("dequant", 4), ("lut", 4), ("lut", 2)}
        for r in mine:
            assert KEYS <= r.keys() and r["ms"] > 0 and len(r["samples"]) == 1
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(rows) and "ratio to copy" in table


def test_bench_bad_arguments(capsys):
    assert main(["bench", "kernels", "--where", "gpu"]) == 2
    assert "--where takes native, browser" in capsys.readouterr().err
    assert main(["bench", "kernels", "--rounds", "0"]) == 2


def test_bench_model_bad_arguments(tmp_path, capsys):
    assert main(["bench", "model", str(tmp_path)]) == 2
    assert "not a model package" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["bench", "model", str(tmp_path), "--peers", "webllm"]) == 2
    assert "--peers takes wllama" in capsys.readouterr().err
    assert main(["bench", "model", str(tmp_path), "--prompts", "forty"]) == 2

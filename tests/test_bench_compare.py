"""benchmarks/compare.py: rows matched by key, regressions flagged in each metric's bad direction, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from compare import diff  # noqa: E402


def result(rows: list[tuple[dict, dict]]) -> dict:
    return {"schema": 1, "benchmark": "t", "meta": {}, "lower_is_better": ["peak_mib"],
            "rows": [{"key": k, "metrics": m} for k, m in rows]}


def test_diff_flags_regressions_by_direction() -> None:
    old = result([({"size": 1}, {"tok_s": 100.0, "peak_mib": 50.0}), ({"size": 2}, {"tok_s": 10.0})])
    new = result([({"size": 1}, {"tok_s": 85.0, "peak_mib": 40.0}), ({"size": 2}, {"tok_s": 9.5}),
                  ({"size": 3}, {"tok_s": 1.0})])
    table, regressions = diff(old, new, threshold=10.0)
    by = {(r[0], r[1]): r for r in table}
    assert by["size=1", "tok_s"][4:] == ["-15.0%", "REGRESSION"]  # throughput down 15% > 10%
    assert by["size=1", "peak_mib"][4:] == ["-20.0%", ""]  # memory down: an improvement
    assert by["size=2", "tok_s"][4:] == ["-5.0%", ""]  # within the threshold
    assert by["size=3", "(new row)"]
    assert regressions == 1


def test_cli_exit_codes(tmp_path: Path) -> None:
    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps(result([({"x": 1}, {"peak_mib": 10.0})])))
    b.write_text(json.dumps(result([({"x": 1}, {"peak_mib": 12.0})])))
    bad.write_text("{}")
    run = lambda *args: subprocess.run([sys.executable, str(BENCH / "compare.py"), *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True)
    assert run(a, a).returncode == 0
    worse = run(a, b)  # memory up 20%
    assert worse.returncode == 1 and "REGRESSION" in worse.stdout
    broken = run(a, bad)
    assert broken.returncode == 2 and broken.stderr.startswith(f"error: {bad}")

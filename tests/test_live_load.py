"""bench/live_load.py --smoke: concurrent live sessions on one server (a bare aiohttp route in a child process),
each receiving only its own frames, a huge size and a session loop refused with their messages, the server alive and
the other sessions streaming. The bench exits 1 when any of these checks fails; speed is not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("aiohttp", reason="the bench's websocket clients need aiohttp")


def test_live_load_smoke_isolates_sessions_and_refuses_what_would_take_the_server_down(tmp_path):
    out = tmp_path / "live_load.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "live_load.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checks_failed"] == []
    assert [row["sessions"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["isolated"] and row["freed"] and len(row["per_session"]) == row["sessions"]
        assert all(s["frames_back"] > 0 and s["in_order"] for s in row["per_session"])
        assert row["server_rss_mb_peak"] > 0
    attack = result["adversarial"]
    assert attack["huge_size"][0]["answer"] == ("width: 100000 px is over the live limit of 1024 px a side; use 0 for "
                                                "the model's own size")
    assert attack["loop_admitted"] == attack["limit"] - attack["streams"] and attack["loop_refused"] >= 1
    assert attack["loop_refusal_message"] == ("the server holds 3 live sessions (its limit); try again later or raise "
                                              "RAIN_LIVE_MAX_SESSIONS")
    assert attack["server_alive"] and attack["streams_kept_streaming"]
    assert "capacity" in result and "ESTIMATE" in result["capacity"]["gpu_estimate"]["label"]

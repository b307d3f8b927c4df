"""A run killed mid-training (SIGKILL) resumes from its checkpoint and stores each result once."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

from toy_suites import toy_suite


def test_sigkill_then_resume(bench_env, write_suite, tmp_path):
    # Slow steps (sleep in the loss) so the kill lands mid-training after a checkpoint.
    suite = toy_suite(
        models=[{"plugin": "toy-ae", "params": {"sleep": 0.05}, "budget": {"steps": 120, "checkpoint_every": 10}}]
    )
    path = write_suite(suite)
    cmd = [sys.executable, "-m", "bench_core", "-p", "fakeplugins", "run", str(path), "--no-report"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=bench_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt_root = tmp_path / "reports" / "toy" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt_root.glob("*/*train_state.pt")):
        time.sleep(0.2)
    assert list(ckpt_root.glob("*/*train_state.pt")), "no training checkpoint appeared"
    time.sleep(0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    con = sqlite3.connect(tmp_path / "reports" / "toy" / "results.sqlite")
    assert con.execute("SELECT status FROM cells WHERE kind = 'model'").fetchall() == [("running",)]
    assert con.execute("SELECT COUNT(*) FROM results WHERE kind != 'baseline'").fetchone() == (0,)
    con.close()

    again = subprocess.run(cmd, cwd=tmp_path, env=bench_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    con = sqlite3.connect(tmp_path / "reports" / "toy" / "results.sqlite")
    status, details = con.execute("SELECT status, details FROM cells WHERE kind = 'model'").fetchone()
    assert status == "done"
    stage = json.loads(details)["stages"][0]
    assert stage["resumed_from"] >= 10 and stage["resumed_from"] % 10 == 0
    assert stage["steps"] == 120
    counts = con.execute(
        "SELECT task, metric, COUNT(*) FROM results WHERE kind != 'baseline' GROUP BY task, metric"
    ).fetchall()
    assert counts and all(n == 1 for _, _, n in counts)
    con.close()
    assert not list(ckpt_root.glob("*/*train_state.pt"))  # resume state removed once weights are final
    assert list(ckpt_root.glob("*/model.safetensors"))

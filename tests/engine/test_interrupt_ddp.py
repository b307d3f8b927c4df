"""Ctrl-C during ``bench run --nproc 2`` stops every process, exits 130 and leaves a resumable store (issue #7).

The launcher runs in a session of its own, as a shell job would. torchrun starts its workers in
sessions of their own too, so survivors are looked for among the launcher's descendants (noted
while training runs), its session, and any process whose command line names the test's suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from toy_suites import toy_suite

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo, /proc: exercised on Linux")

EXIT_INTERRUPTED = 130
# Generous: on a loaded 2-core machine starting torchrun and two workers takes 10-20 s, and torchrun
# allows its workers 30 s to exit after the signal before it SIGKILLs them.
START_S, EXIT_S, RERUN_S = 120, 90, 180


def _proc_table() -> dict[int, tuple[str, int, int, str]]:
    """pid -> (state, ppid, session id, command line) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        # The command name in parentheses may contain spaces: split after its closing parenthesis.
        state, ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        table[int(entry)] = (state, int(ppid), int(session), cmdline)
    return table


def _descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _, _) in _proc_table().items():
        children.setdefault(ppid, []).append(child)
    found, todo = set(), list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.add(child)
        todo += children.get(child, [])
    return found


def _survivors(launcher: int, known: set[int], marker: str) -> dict[int, str]:
    """Processes of the run still alive (zombies do not count): known pids, the launcher's session, the marker."""
    return {
        pid: cmdline
        for pid, (state, _, session, cmdline) in _proc_table().items()
        if state != "Z" and (pid in known or pid == launcher or session == launcher or marker in cmdline)
    }


def _wait_for(condition: Callable[[], object], seconds: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {seconds} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _interrupt(cmd: list[str], cwd: Path, env: dict[str, str], ready: Callable[[], object], send) -> str:
    """Start ``cmd`` in a new session, call ``send(launcher_pid)`` once ``ready()``; check that everything stops.

    Returns the run's output. Whatever survives is SIGKILLed (by pid) so that a failure leaves nothing behind.
    """
    log = cwd / f"run-{time.monotonic_ns()}.log"
    marker = cmd[cmd.index("run") + 1]  # the suite's absolute path: on every rank's command line
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    known: set[int] = set()
    try:
        _wait_for(ready, START_S, "training under way", proc, log)
        known = _descendants(proc.pid)
        workers = [pid for pid, (*_, cmdline) in _proc_table().items() if pid in known and "bench_core" in cmdline]
        assert len(workers) >= 3, f"expected torchrun and two workers under the launcher, saw {workers}"
        send(proc.pid)
        try:
            code = proc.wait(timeout=EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not exit within {EXIT_S} s of SIGINT:\n{log.read_text()[-3000:]}")
        output = log.read_text()
        assert code == EXIT_INTERRUPTED, output[-3000:]
        # torchrun waits for its workers before exiting and the launcher for torchrun: nothing should
        # be left at all; the grace only absorbs /proc lagging behind.
        deadline = time.monotonic() + 10
        while (left := _survivors(proc.pid, known, marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes left behind: {left}"
        assert "interrupted: finished cells are kept" in output  # the workers stopped on SIGINT, not SIGKILL
        return output
    finally:
        for pid in [proc.pid, *_survivors(proc.pid, known, marker)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _command(suite: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench_core", "-p", "fakeplugins", "run", str(suite), "--no-report", *extra]


def test_ctrl_c_to_the_job_stops_every_process_and_the_rerun_finishes(bench_env, write_suite, tmp_path):
    # Two cells: seed 0 finishes, Ctrl-C lands while seed 1 trains (slow steps: a sleep in the loss).
    model = {"plugin": "toy-ae", "params": {"sleep": 0.05}, "budget": {"steps": 40, "checkpoint_every": 5}}
    suite = write_suite(toy_suite(name="ctrlc", seeds=[0, 1], models=[model]), "ctrlc.yaml")
    db, checkpoints = tmp_path / "reports" / "ctrlc" / "results.sqlite", tmp_path / "reports" / "ctrlc" / "checkpoints"

    def second_cell_training() -> bool:
        if not db.exists() or not list(checkpoints.glob("*/*train_state.pt")):
            return False
        return _rows(db, "SELECT seed, status FROM cells WHERE kind = 'model' ORDER BY seed") == [
            (0, "done"),
            (1, "running"),
        ]

    # A terminal sends Ctrl-C's SIGINT to the whole foreground process group.
    _interrupt(_command(suite, "--nproc", "2"), tmp_path, bench_env, second_cell_training,
               lambda pid: os.killpg(pid, signal.SIGINT))  # fmt: skip

    assert _rows(db, "SELECT seed, status FROM cells WHERE kind = 'model' ORDER BY seed") == [
        (0, "done"),
        (1, "running"),
    ]
    written = _rows(
        db, "SELECT cell_key, task, metric, value, created FROM results WHERE kind != 'baseline' ORDER BY 1, 2, 3"
    )
    assert written and {row[0] for row in written} == {
        _rows(db, "SELECT cell_key FROM cells WHERE kind = 'model' AND seed = 0")[0][0]
    }

    # The same suite again (one process: quicker here, and the train state does not depend on the world size).
    rerun = subprocess.run(_command(suite), cwd=tmp_path, env=bench_env, capture_output=True, text=True,
                           timeout=RERUN_S)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _rows(db, "SELECT seed, status FROM cells WHERE kind = 'model' ORDER BY seed") == [(0, "done"), (1, "done")]
    after = _rows(
        db, "SELECT cell_key, task, metric, value, created FROM results WHERE kind != 'baseline' ORDER BY 1, 2, 3"
    )
    assert set(written) <= set(after)  # seed 0's rows untouched, not rewritten
    # Seed 1's rows, each once; its metrics are seed 0's (throughput rows depend on how many timed
    # batches there were, which differs between the sharded 2-process and the 1-process evaluation).
    seed1 = [row for row in after if row[0] != written[0][0]]
    pairs = [(task, metric) for _, task, metric, _, _ in seed1]
    assert len(pairs) == len(set(pairs))
    assert {p for p in pairs if "images_per_s" not in p[1]} == {
        (task, metric) for _, task, metric, _, _ in written if "images_per_s" not in metric
    }
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]


def test_sigint_to_the_launcher_alone_stops_every_process(bench_env, write_suite, tmp_path):
    # `kill -INT <launcher pid>`: torchrun and the workers get no signal but what the launcher passes on.
    model = {"plugin": "toy-ae", "params": {"sleep": 0.05}, "budget": {"steps": 200, "checkpoint_every": 5}}
    suite = write_suite(toy_suite(name="sigint", models=[model]), "sigint.yaml")
    out = tmp_path / "reports" / "sigint"

    _interrupt(_command(suite, "--nproc", "2"), tmp_path, bench_env,
               lambda: list((out / "checkpoints").glob("*/*train_state.pt")),
               lambda pid: os.kill(pid, signal.SIGINT))  # fmt: skip

    assert _rows(out / "results.sqlite", "SELECT status FROM cells WHERE kind = 'model'") == [
        ("running",)
    ]  # retried on the next run
    assert _rows(out / "results.sqlite", "PRAGMA integrity_check") == [("ok",)]

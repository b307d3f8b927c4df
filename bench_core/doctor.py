"""``bench doctor``: find damaged files in an output directory and rebuild what needs no retraining.

Checked: the results store (``PRAGMA integrity_check``, and that it opens), every
checkpoint's weights (the safetensors header parses and the file holds exactly the data
it describes), every resumable training state (``torch.load(weights_only=True)``, as
the trainer loads it) and every cell's ``eval.json`` (readable and shaped as the report
reads it).

With ``repair`` a damaged file is moved aside as ``NAME.damaged-<timestamp>``, never
deleted. The store's readable rows go into a fresh store; its cells whose metric rows may
be lost are marked failed, so the next ``bench run`` re-evaluates them from their
checkpoints (checkpoints are keyed by what determines the weights, not by the store).
A cell that needs weights that were moved aside retrains; a stage whose training state
was moved aside restarts; a cell whose ``eval.json`` was moved aside is re-evaluated.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from bench_core.api import BenchError
from bench_core.store import STORE_NAME, ResultsStore, StoreDamaged, is_damage

DAMAGED = ".damaged-"  # infix of the names damaged files are moved aside to


@dataclass
class Finding:
    """One damaged file: what it is, what is wrong, and what to do (or what was done)."""

    kind: str  # "results store", "weights", "training state", "eval file"
    path: Path
    problem: str
    action: str

    def line(self) -> str:
        """The one-line form printed by ``bench doctor``."""
        return f"{self.kind} {self.path}: {self.problem}; {self.action}"


@dataclass
class Diagnosis:
    """What ``bench doctor`` checked and found in one output directory."""

    output_dir: Path
    repaired: bool
    checked: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when nothing is wrong (any longer), 1 when damaged files were found and left as they are."""
        return 1 if self.findings and not self.repaired else 0

    def format(self) -> str:
        """The report: one line per damaged file, a summary, and the next step."""
        out = [f.line() for f in self.findings]
        out.append(f"checked {', '.join(self.checked)}: {len(self.findings) or 'no'} damaged")
        if self.findings and not self.repaired:
            out.append(
                f"run `bench doctor --repair {self.output_dir}` to move damaged files aside (never deleted) "
                "and rebuild what can be rebuilt without retraining"
            )
        elif self.findings:
            suite = self.output_dir / "suite.yaml"  # the copy of the suite last run there
            which = suite if suite.exists() and suite.stat().st_size else "SUITE"
            out.append(
                f"next: `bench run {which} --output {self.output_dir}` re-evaluates the cells marked above from "
                "their checkpoints without retraining; training whose weights or state were moved aside starts again"
            )
        return "\n".join(out)


def diagnose(output_dir: str | Path, repair: bool = False) -> Diagnosis:
    """Check the results store, checkpoints and cell files of ``output_dir``; with ``repair``, fix them.

    Run it while no ``bench run`` writes to ``output_dir``: repair moves files a running
    process may hold open.
    """
    out = Path(output_dir)
    if not any((out / name).exists() for name in (STORE_NAME, "checkpoints", "cells")):
        raise BenchError(f"{out} is not a bench output directory (no {STORE_NAME}, checkpoints/ or cells/)")
    diagnosis = Diagnosis(out, repair)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _check_store(diagnosis, stamp)
    _check_checkpoints(diagnosis, stamp)
    _check_eval_files(diagnosis, stamp)
    return diagnosis


# -- results store ----------------------------------------------------------------------------
def _check_store(diagnosis: Diagnosis, stamp: str) -> None:
    path = diagnosis.output_dir / STORE_NAME
    if not path.exists():
        diagnosis.checked.append("no results store (the next `bench run` creates one)")
        return
    diagnosis.checked.append("the results store")
    problem = _store_damage(path)
    if problem is None:
        return
    if not diagnosis.repaired:
        action = "--repair moves it aside and copies the rows it can still read into a fresh store"
    else:
        aside = _move_aside(path, stamp)
        for side in ("-wal", "-shm"):  # renamed alike, so SQLite still pairs them with the moved file
            if (wal := path.with_name(path.name + side)).exists():
                wal.rename(aside.with_name(aside.name + side))
        action = f"moved aside to {aside.name}; " + _salvage(aside, path)
    diagnosis.findings.append(Finding("results store", path, f"damaged ({problem})", action))


def _store_damage(path: Path) -> str | None:
    """Why the results store at ``path`` is damaged, or ``None`` when it is sound and opens."""
    try:
        # Read-only, so checking never writes to (or recovers a WAL into) a damaged file.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            report = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise BenchError(f"could not check the results store {path}: {exc}") from None
        return str(exc)
    if report != ["ok"]:
        lines = [line for text in report for line in text.splitlines() if not line.startswith("***")]
        more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
        return f"integrity check: {lines[0]}{more}"
    try:
        ResultsStore(path).close()
    except StoreDamaged as exc:
        return exc.cause
    return None


def _salvage(damaged: Path, path: Path) -> str:
    """Copy the rows still readable in ``damaged`` into a fresh store at ``path``; say what was kept."""
    readable, complete = _read_what_remains(damaged)
    store = ResultsStore(path)
    try:
        with store.transaction() as cur:
            for table, rows in readable.items():
                columns = {row[1] for row in cur.execute(f"PRAGMA table_info({table})")}  # none: unknown table
                for row in rows:
                    names = [c for c in row if c in columns]
                    cur.execute(
                        f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        [row[c] for c in names],
                    )
            # A finished cell whose metric rows may be lost is taken again by the next run.
            rerun = 0 if complete else cur.execute(_RERUN_DONE_CELLS, (_STORE_REBUILT,)).rowcount
    finally:
        store.close()
    if not any(rows for table, rows in readable.items() if table != "meta"):
        return "nothing could be read from it; a fresh empty store replaces it"
    kept = ", ".join(f"{len(rows)} {table} rows" for table, rows in readable.items() if table != "meta")
    lost = " (the rest was unreadable)" if not complete else ""
    marked = f"; {rerun} finished cells marked for re-evaluation" if rerun else ""
    return f"copied {kept} into a fresh store{lost}{marked}"


_RERUN_DONE_CELLS = "UPDATE cells SET status='failed', reason=? WHERE status='done'"
_STORE_REBUILT = "its rows may be lost: bench doctor rebuilt the damaged results store; re-run to re-evaluate it"


def _read_what_remains(damaged: Path) -> tuple[dict[str, list[dict]], bool]:
    """The readable rows of every table of the store file ``damaged``, and whether all of it was readable."""
    with closing(sqlite3.connect(f"{damaged.resolve().as_uri()}?mode=ro", uri=True)) as src:
        try:
            # Lets SQLite read a file shorter than its header says (a truncated store) instead of refusing it.
            src.execute("PRAGMA writable_schema=ON")
            sql = "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            tables = [row[0] for row in src.execute(sql)]
        except sqlite3.DatabaseError:
            return {}, False  # not even the schema can be read
        readable, complete = {}, True
        for table in tables:
            readable[table], whole = _readable_rows(src, table)
            complete = complete and whole
    return readable, complete


def _readable_rows(conn: sqlite3.Connection, table: str) -> tuple[list[dict], bool]:
    """The rows of ``table`` that can still be read, and whether the whole table could.

    A damaged page ends a scan, so the table is read forwards, then backwards from its end:
    that keeps the rows on both sides of one damaged region.
    """
    rows: dict[int, dict] = {}
    for order in ("ASC", "DESC"):
        try:
            cursor = conn.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid {order}")
            names = [d[0] for d in cursor.description][1:]
            for rowid, *values in cursor:
                rows[rowid] = dict(zip(names, values, strict=True))
        except sqlite3.DatabaseError:
            continue
        if order == "ASC":
            return list(rows.values()), True
    return [rows[k] for k in sorted(rows)], False


# -- checkpoints --------------------------------------------------------------------------------
def _check_checkpoints(diagnosis: Diagnosis, stamp: str) -> None:
    from bench_core.checkpoints import BEST_WEIGHTS, TRAIN_STATE, WEIGHTS

    root = diagnosis.output_dir / "checkpoints"
    directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    n_weights = n_states = 0
    for ckdir in directories:
        weights = [p for p in (ckdir / WEIGHTS, ckdir / BEST_WEIGHTS) if p.exists()]
        n_weights += len(weights)
        damaged = [(p, problem) for p in weights if (problem := _safetensors_damage(p))]
        # The runner retrains only when model.safetensors is missing, and retraining rewrites both
        # files; so both go aside together, or the retrained cell would lack its best weights.
        moved = {p: _move_aside(p, stamp) for p in weights} if damaged and diagnosis.repaired else {}
        for p, problem in damaged:
            if diagnosis.repaired:
                action = f"moved aside to {moved[p].name} (with the other weights here); {_RETRAIN}"
            else:
                action = f"--repair moves this checkpoint's weights aside, so {_RETRAIN}"
            diagnosis.findings.append(Finding("weights", p, problem, action))
        for state in sorted(ckdir.glob(f"*-{TRAIN_STATE}")):
            n_states += 1
            if (problem := _train_state_damage(state)) is None:
                continue
            if diagnosis.repaired:
                action = f"moved aside to {_move_aside(state, stamp).name}; the stage restarts from its first step"
            else:
                action = "--repair moves it aside; the stage then restarts from its first step"
            diagnosis.findings.append(Finding("training state", state, problem, action))
    diagnosis.checked.append(f"{n_weights} weight files, {n_states} training states")


_RETRAIN = "a cell that needs them again retrains instead of failing (stored results stay)"


def _safetensors_damage(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or ``None``; reads only its header."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            if size < 8:
                return f"truncated: {size} bytes, not even a header length"
            n = int.from_bytes(fh.read(8), "little")
            if 8 + n > size:
                return f"truncated: {size} bytes, its header alone claims {8 + n}"
            header = json.loads(fh.read(n))
        end = max((entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"unreadable safetensors header ({type(exc).__name__}: {exc})"
    if 8 + n + end != size:
        return f"truncated or overwritten: its header describes {8 + n + end} bytes, the file has {size}"
    return None


def _train_state_damage(path: Path) -> str | None:
    import torch

    try:  # the trainer's own load (checkpoints.load_train_state)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncation and refusals come as several exception types
        first = (str(exc).splitlines() or [""])[0][:200]
        return f"cannot be loaded with weights_only=True ({type(exc).__name__}: {first})"
    return None if isinstance(state, dict) else f"holds {type(state).__name__}, not a training-state dict"


# -- cell files ---------------------------------------------------------------------------------
def _check_eval_files(diagnosis: Diagnosis, stamp: str) -> None:
    root = diagnosis.output_dir / "cells"
    paths = sorted(root.rglob("eval.json")) if root.is_dir() else []
    diagnosis.checked.append(f"{len(paths)} eval files")
    damaged = [(p, problem) for p in paths if (problem := _eval_damage(p))]
    if not damaged:
        return
    if diagnosis.repaired:
        rerun = _mark_cells_for_rerun(diagnosis.output_dir, [p for p, _ in damaged])
    for p, problem in damaged:
        if diagnosis.repaired:
            again = "its cell is marked for re-evaluation" if p in rerun else "no finished cell of the store uses it"
            action = f"moved aside to {_move_aside(p, stamp).name}; {again}"
        else:
            action = "--repair moves it aside and marks its cell for re-evaluation from its checkpoint"
        diagnosis.findings.append(Finding("eval file", p, problem, action))


def _eval_damage(path: Path) -> str | None:
    from bench_core.results import eval_json_problem, parse_eval_json  # the report's own reading, so the two agree

    try:
        return eval_json_problem(parse_eval_json(path.read_text()))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        return f"unreadable ({type(exc).__name__}: {exc})"


def _mark_cells_for_rerun(output_dir: Path, eval_paths: list[Path]) -> set[Path]:
    """Mark the finished cells owning ``eval_paths`` failed, so the next run re-evaluates them."""
    if not (output_dir / STORE_NAME).exists():
        return set()
    store = ResultsStore(output_dir)
    try:
        owner = {}
        for cell in store.cells():
            cell_dir = cell["details"].get("cell_dir")
            for p in eval_paths:
                # eval.json of the headline variant, or of another variant under variants/<label>/
                if cell["status"] == "done" and cell_dir and (output_dir / cell_dir) in p.parents:
                    owner[p] = cell["cell_key"]
        with store.transaction() as cur:
            for key in set(owner.values()):
                cur.execute(
                    "UPDATE cells SET status='failed', reason=? WHERE cell_key=?",
                    ("its eval.json was damaged and moved aside by bench doctor; re-run to re-evaluate it", key),
                )
    finally:
        store.close()
    return set(owner)


def _move_aside(path: Path, stamp: str) -> Path:
    """Rename ``path`` to ``NAME.damaged-<stamp>`` (numbered if taken) and return the new path."""
    target = path.with_name(f"{path.name}{DAMAGED}{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}{DAMAGED}{stamp}.{n}"), n + 1
    return path.rename(target)

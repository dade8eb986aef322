"""The run journal: one SQLite file per run directory, the durable memory of an experiment run.

Everything the engine decides on and everything it observes is written here: the protocol text
and its hash, the station, state transitions, ground commands, step starts and ends, every pump
action's intent (its :class:`~kiboauto.devices.ActionMarker`) and result, telemetry, events,
inspection results and the engine's resumable checkpoints, plus an outbox of messages for the
ground link.

The rule of the house is **intent before action**: :meth:`Journal.record_intent` commits the
marker (WAL fsynced) before it returns, and the start of a move is sent only after that. After a
crash, :meth:`Journal.open_intents` lists the actions whose intent is journaled but whose end is
not; the engine settles each one by asking the device (:func:`kiboauto.actions.complete`).

sqlite3 is blocking. Every call is one short local transaction and runs on the caller's thread
(the event loop thread for the engine): no extra thread, no queue that could hold an intent back.
The journal never reads a clock: protocol time and wall time are passed in by the caller, who owns
the :class:`~kiboauto.clock.Clock`. Every failure of the underlying file (corrupt, foreign, of
another schema version, unwritable) is raised as :class:`JournalError` with the path and reason.
See docs/journal.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from kiboauto.devices import ActionMarker, DeviceError, PumpResult, Reading

__all__ = [
    "APPLICATION_ID",
    "JOURNAL_NAME",
    "SCHEMA_VERSION",
    "ActionRecord",
    "IntentCommitter",
    "Journal",
    "JournalError",
    "OpenIntent",
    "OutboxItem",
    "RunRecord",
    "TelemetryRow",
]

SCHEMA_VERSION = 1
"""Bumped on every incompatible change of the tables below; a file of another version is refused."""

APPLICATION_ID = 0x4B49424A  # "KIBJ": marks the file as a kiboauto journal (PRAGMA application_id)

JOURNAL_NAME = "journal.sqlite"
"""The journal's file name inside a run directory."""

_SCHEMA = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    protocol TEXT NOT NULL,
    protocol_sha256 TEXT NOT NULL,
    station TEXT NOT NULL,
    created REAL
);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    reason TEXT NOT NULL,
    t_protocol REAL,
    t_wall REAL
);
CREATE TABLE commands (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    source TEXT NOT NULL,
    accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
    reason_code TEXT NOT NULL,
    t_protocol REAL,
    t_wall REAL
);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_protocol REAL,
    started_wall REAL,
    ended_protocol REAL,
    ended_wall REAL,
    outcome TEXT
);
CREATE TABLE actions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    marker TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'ended', 'lost')),
    result TEXT,
    delivered_ul REAL,
    error TEXT,
    started_protocol REAL,
    started_wall REAL,
    ended_protocol REAL,
    ended_wall REAL
);
CREATE INDEX actions_open ON actions(run_id, state);
CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    value,
    unit TEXT NOT NULL,
    severity TEXT NOT NULL,
    t REAL NOT NULL
);
CREATE INDEX telemetry_by_name ON telemetry(run_id, device, name, t);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    code TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    t REAL
);
CREATE TABLE inspections (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    cell TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    image_path TEXT NOT NULL,
    model_version TEXT NOT NULL,
    result TEXT NOT NULL,
    t REAL
);
CREATE TABLE checkpoints (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    t_wall REAL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL,
    sent_at REAL
);
CREATE INDEX outbox_pending ON outbox(run_id, sent_at);
"""

_INSERT_STEP = (
    "INSERT INTO steps(id, run_id, step, attempt, started_protocol, started_wall,"
    " ended_protocol, ended_wall, outcome) VALUES (?,?,?,?,?,?,?,?,?)"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints(run_id, key, value, t_wall) VALUES (?,?,?,?)"
    " ON CONFLICT(run_id, key) DO UPDATE SET value=excluded.value, t_wall=excluded.t_wall"
)

_ROW_TABLES = frozenset({"transitions", "commands", "steps", "events", "telemetry", "inspections"})


class JournalError(Exception):
    """The journal file cannot be used: corrupt, foreign, of another schema version, unwritable.

    ``path`` is the file, ``reason`` says what is wrong; the message holds both.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"journal {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class OpenIntent(NamedTuple):
    """An action whose intent is journaled but whose end is not: to be settled from the device."""

    action_id: int
    step: str
    marker: ActionMarker


class TelemetryRow(NamedTuple):
    """One telemetry sample as stored: ``value`` is a number, a text or ``None`` (not finite)."""

    device: str
    name: str
    value: float | str | None
    unit: str
    severity: str
    t: float

    @classmethod
    def from_reading(cls, device: str, name: str, reading: Reading) -> TelemetryRow:
        """The row for a device :class:`~kiboauto.devices.Reading` (quantity split into unit)."""
        data = reading.to_json()
        value: Any = data["value"]
        unit = ""
        if isinstance(value, dict):
            unit = str(value["unit"])
            value = value["value"]
        elif isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, int | float | str):
            value = str(value)
        return cls(device, name, value, unit, str(data["severity"]), float(data["timestamp"]))


@dataclass(frozen=True)
class RunRecord:
    """A run as journaled: the protocol text, its SHA-256 and the station text."""

    run_id: int
    protocol: str
    protocol_sha256: str
    station: str
    created: float | None


@dataclass(frozen=True)
class ActionRecord:
    """One device action: its intent (marker), its state and, once ended, its result or error."""

    action_id: int
    step: str
    device: str
    kind: str
    marker: ActionMarker
    state: str  # "open" | "ended" | "lost"
    result: dict[str, Any] | None
    delivered_ul: float | None
    error: str | None


@dataclass(frozen=True)
class OutboxItem:
    """A message for the ground link, kept until the link acknowledges it."""

    outbox_id: int
    topic: str
    payload: str
    created: float | None


class IntentCommitter:
    """The ``commit`` callback of :func:`kiboauto.actions.run_once` and ``complete``.

    Each call journals the marker as an intent of ``step`` and commits it before returning, so the
    action's start is sent only once its intent is durable. ``action_ids`` lists the rows created,
    in order (``complete`` may commit a follow-up marker for a remainder); the engine ends them
    with :meth:`Journal.end_action`.
    """

    def __init__(self, journal: Journal, step: str, t_protocol: float | None = None) -> None:
        self.journal = journal
        self.step = step
        self.t_protocol = t_protocol
        self.action_ids: list[int] = []

    async def __call__(self, marker: ActionMarker) -> None:
        self.action_ids.append(
            self.journal.record_intent(self.step, marker, t_protocol=self.t_protocol)
        )

    @property
    def last_id(self) -> int:
        """The row of the last committed intent (``LookupError`` if none yet)."""
        if not self.action_ids:
            raise LookupError("no intent committed yet")
        return self.action_ids[-1]


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


class Journal:
    """One run's journal file. Open with :meth:`open`; use as a context manager or :meth:`close`.

    Records that the engine decides on (runs, intents, action ends, transitions, commands, steps,
    checkpoints) are committed with ``synchronous=FULL``: the write-ahead log is fsynced before the
    call returns. High-rate observations (telemetry, events, inspections, outbox) are committed with
    ``synchronous=NORMAL``: they survive a killed process, and a power loss can cost only those
    written since the last FULL commit, never the file's consistency.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._sync = ""
        self._run_id: int | None = None
        self._group_limit = 0  # 0: every write is its own transaction (see group_commits)
        self._group_open = False
        self._group_count = 0
        # grouped step rows and checkpoints wait here (in memory) until the group is written:
        # a step's start and end become one INSERT, a checkpoint set many times one upsert
        self._pending_steps: dict[int, list[Any]] = {}
        self._pending_done: list[tuple[Any, ...]] = []  # instant steps: complete rows
        self._pending_checkpoints: dict[str, tuple[str, float | None]] = {}
        self._next_step_id: int | None = None
        self._drain_hooks: list[Callable[[], None]] = []
        self._draining = False

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, path: Path | str, *, check: bool = True) -> Journal:
        """Open (or create) the journal at ``path``: a file, or a run directory (its journal).

        An existing file must be a kiboauto journal of :data:`SCHEMA_VERSION`; with ``check`` it is
        also verified (``PRAGMA quick_check``). The current run is the latest one in the file, if
        any. Raises :class:`JournalError` otherwise.
        """
        p = Path(path)
        if p.is_dir():
            p = p / JOURNAL_NAME
        try:
            conn = sqlite3.connect(p, isolation_level=None, timeout=10.0)
        except sqlite3.Error as e:
            raise JournalError(p, f"cannot open: {e}") from None
        journal = cls(conn, p)
        try:
            journal._setup(check)
        except JournalError:
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            raise JournalError(p, f"not a usable journal: {e}") from None
        return journal

    def _setup(self, check: bool) -> None:
        c = self._conn
        # Reading the schema first: garbage bytes fail here ("file is not a database").
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        if tables:
            if app_id != APPLICATION_ID or "schema_version" not in tables:
                raise JournalError(self.path, "not a kiboauto journal (foreign SQLite file)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                found = "none" if row is None else row[0]
                raise JournalError(
                    self.path,
                    f"schema version {found}, this kiboauto reads version {SCHEMA_VERSION}",
                )
        elif app_id not in (0, APPLICATION_ID):
            raise JournalError(self.path, "not a kiboauto journal (foreign application id)")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(self.path, f"cannot use write-ahead logging (journal_mode={mode})")
        c.execute("PRAGMA foreign_keys=ON")
        self._set_sync("FULL")
        if not tables:
            with self._tx(durable=True):
                c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
        elif check:
            result = [r[0] for r in c.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                raise JournalError(self.path, "corrupt: " + "; ".join(map(str, result[:5])))
        row = c.execute("SELECT max(id) FROM runs").fetchone()
        self._run_id = row[0]

    def close(self) -> None:
        """Close the file (idempotent), committing an open group of writes first."""
        with contextlib.suppress(sqlite3.Error, JournalError):
            self.flush()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    def _set_sync(self, level: str) -> None:
        if self._sync != level:
            self._conn.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    def group_commits(self, max_pending: int = 256) -> None:
        """From now on, group the writes that need not be durable one by one (steps, checkpoints,
        telemetry, events, inspections) into one transaction of at most ``max_pending`` writes.

        The group is committed by :meth:`flush`, by the next durable write (an intent, a
        transition, a command: all of those stay committed and fsynced before they return), when
        it is full, and by :meth:`close`. A crash loses at most the writes of the open group,
        never part of one: the file stays consistent. The engine flushes before every wait.
        """
        self._group_limit = max(1, int(max_pending))

    def before_group_write(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` each time a group of writes is about to be written, so that state kept
        in memory (the engine's cursor) is checkpointed in the same transaction as the step rows
        it describes, once per group instead of once per step."""
        self._drain_hooks.append(hook)

    def _drain(self) -> None:
        """Write the buffered step rows and checkpoints into the open group (no commit)."""
        if self._draining:
            return
        self._draining = True
        try:
            for hook in self._drain_hooks:
                hook()
        finally:
            self._draining = False
        if not (self._pending_steps or self._pending_checkpoints or self._pending_done):
            return
        steps, self._pending_steps = self._pending_steps, {}
        done, self._pending_done = self._pending_done, []
        checkpoints, self._pending_checkpoints = self._pending_checkpoints, {}
        c = self._conn
        try:
            self._open_group()
            c.executemany(_INSERT_STEP, [(i, *row) for i, row in steps.items()] + done)
            c.executemany(
                _UPSERT_CHECKPOINT,
                [(self.run_id, k, text, wall) for k, (text, wall) in checkpoints.items()],
            )
        except sqlite3.Error as e:
            raise JournalError(self.path, f"write failed: {e}") from None

    def _open_group(self) -> None:
        """Begin the group's transaction if it is not open yet (sqlite3 errors propagate)."""
        if not self._group_open:
            self._set_sync("NORMAL")
            self._conn.execute("BEGIN IMMEDIATE")
            self._group_open = True

    def _buffered(self) -> None:
        self._group_count += 1
        if self._group_count >= self._group_limit and not self._draining:
            self.flush()

    def flush(self) -> None:
        """Commit the open group of writes, if any (not fsynced: see :meth:`group_commits`)."""
        self._drain()
        if self._group_open:
            self._group_open = False
            self._group_count = 0
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise JournalError(self.path, f"write failed: {e}") from None

    @contextlib.contextmanager
    def _tx(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; committed (fsynced when ``durable``) or rolled back, errors wrapped."""
        c = self._conn
        if not durable and self._group_limit:
            yield from self._grouped(c)
            return
        self.flush()
        try:
            self._set_sync("FULL" if durable else "NORMAL")
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot begin a transaction: {e}") from None
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise JournalError(self.path, f"write failed: {e}") from None
            raise

    def _grouped(self, c: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        try:
            self._open_group()
            c.execute("SAVEPOINT one_write")
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot begin a transaction: {e}") from None
        try:
            yield c
            c.execute("RELEASE one_write")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK TO one_write")
                c.execute("RELEASE one_write")
            if isinstance(e, sqlite3.Error):
                raise JournalError(self.path, f"write failed: {e}") from None
            raise
        self._group_count += 1
        if self._group_count >= self._group_limit:
            self.flush()

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self._drain()  # reads see buffered writes
        try:
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
            rows: list[sqlite3.Row] = cur.execute(sql, tuple(args)).fetchall()
            return rows
        except sqlite3.Error as e:
            raise JournalError(self.path, f"read failed: {e}") from None

    @property
    def has_run(self) -> bool:
        """Whether the file holds a run (if not, :meth:`start_run` first)."""
        return self._run_id is not None

    @property
    def run_id(self) -> int:
        """The current run (the one :meth:`start_run` created, or the latest in the file)."""
        if self._run_id is None:
            raise JournalError(self.path, "no run started in this journal")
        return self._run_id

    # ------------------------------------------------------------------ the run

    def start_run(
        self, protocol_text: str, station_text: str, *, t_wall: float | None = None
    ) -> int:
        """Journal a new run (protocol text and its SHA-256, station text); it becomes current."""
        digest = hashlib.sha256(protocol_text.encode("utf-8")).hexdigest()
        with self._tx(durable=True) as c:
            cur = c.execute(
                "INSERT INTO runs(protocol, protocol_sha256, station, created) VALUES (?,?,?,?)",
                (protocol_text, digest, station_text, t_wall),
            )
        assert cur.lastrowid is not None
        self._run_id = cur.lastrowid
        return cur.lastrowid

    def run(self) -> RunRecord:
        """The current run."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (self.run_id,))
        r = rows[0]
        return RunRecord(r["id"], r["protocol"], r["protocol_sha256"], r["station"], r["created"])

    # ------------------------------------------------------------------ actions: intent first

    def record_intent(
        self,
        step: str,
        marker: ActionMarker,
        *,
        t_protocol: float | None = None,
        t_wall: float | None = None,
    ) -> int:
        """Journal the intent of an action and COMMIT it (WAL fsynced) before returning its row.

        The start of the action may be sent only after this returns. ``t_wall`` defaults to the
        marker's ``created`` (taken from the caller's clock when the marker was prepared).
        """
        wall = marker.created if t_wall is None else t_wall
        with self._tx(durable=True) as c:
            cur = c.execute(
                "INSERT INTO actions(run_id, step, device, kind, marker, state,"
                " started_protocol, started_wall) VALUES (?,?,?,?,?,'open',?,?)",
                (self.run_id, step, marker.device, marker.kind, marker.to_json(), t_protocol, wall),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def intent_committer(self, step: str, *, t_protocol: float | None = None) -> IntentCommitter:
        """An async ``commit`` callback for :func:`kiboauto.actions.run_once` / ``complete``."""
        return IntentCommitter(self, step, t_protocol)

    def end_action(
        self,
        action_id: int,
        result: PumpResult | Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
        *,
        delivered_ul: float | None = None,
        t_protocol: float | None = None,
        t_wall: float | None = None,
    ) -> None:
        """Close an open action with its result (JSON object) and/or error text.

        ``delivered_ul`` is taken from a :class:`~kiboauto.devices.PumpResult`, a result mapping's
        ``"delivered_ul"`` or a :class:`~kiboauto.devices.DeviceError`'s, unless given explicitly.
        Ending an action that is not open raises :class:`JournalError`.
        """
        data: dict[str, Any] | None
        if isinstance(result, PumpResult):
            data = {
                "delivered_ul": result.delivered_ul,
                "target_ul": result.target_ul,
                "marker": json.loads(result.marker.to_json()),
            }
        else:
            data = None if result is None else dict(result)
        if delivered_ul is None:
            if data is not None and isinstance(data.get("delivered_ul"), int | float):
                delivered_ul = float(data["delivered_ul"])
            elif isinstance(error, DeviceError) and error.delivered_ul is not None:
                delivered_ul = error.delivered_ul
        if data is not None and delivered_ul is not None:
            data.setdefault("delivered_ul", delivered_ul)
        text = None
        if error is not None:
            text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._close_action(action_id, "ended", data, delivered_ul, text, t_protocol, t_wall)

    def mark_lost(
        self,
        action_id: int,
        why: str,
        *,
        t_protocol: float | None = None,
        t_wall: float | None = None,
    ) -> None:
        """Close an open action whose outcome the device cannot tell (power-cycled): ``lost``."""
        self._close_action(action_id, "lost", None, None, why, t_protocol, t_wall)

    def _close_action(
        self,
        action_id: int,
        state: str,
        result: dict[str, Any] | None,
        delivered_ul: float | None,
        error: str | None,
        t_protocol: float | None,
        t_wall: float | None,
    ) -> None:
        with self._tx(durable=True) as c:
            cur = c.execute(
                "UPDATE actions SET state=?, result=?, delivered_ul=?, error=?,"
                " ended_protocol=?, ended_wall=? WHERE id=? AND state='open'",
                (
                    state,
                    None if result is None else json.dumps(result, sort_keys=True),
                    delivered_ul,
                    error,
                    t_protocol,
                    t_wall,
                    action_id,
                ),
            )
            if cur.rowcount != 1:
                raise JournalError(self.path, f"action {action_id} is not open")

    def open_intents(self) -> list[OpenIntent]:
        """The current run's actions with an intent and no end, oldest first (for resume)."""
        rows = self._query(
            "SELECT id, step, marker FROM actions WHERE run_id=? AND state='open' ORDER BY id",
            (self.run_id,),
        )
        return [OpenIntent(r["id"], r["step"], self._marker(r["marker"])) for r in rows]

    def actions(self) -> list[ActionRecord]:
        """All the current run's actions, oldest first."""
        rows = self._query("SELECT * FROM actions WHERE run_id=? ORDER BY id", (self.run_id,))
        return [
            ActionRecord(
                r["id"],
                r["step"],
                r["device"],
                r["kind"],
                self._marker(r["marker"]),
                r["state"],
                None if r["result"] is None else self._load(r["result"], f"action {r['id']}"),
                r["delivered_ul"],
                r["error"],
            )
            for r in rows
        ]

    def _load(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as e:
            raise JournalError(self.path, f"corrupt {what}: {e}") from None

    def _marker(self, text: str) -> ActionMarker:
        try:
            return ActionMarker.from_json(text)
        except ValueError as e:
            raise JournalError(self.path, f"corrupt action marker: {e}") from None

    # ------------------------------------------------------------------ what the engine decides

    def record_transition(
        self,
        from_state: str,
        to_state: str,
        trigger: str,
        reason: str,
        t_protocol: float | None,
        t_wall: float | None,
    ) -> int:
        """Journal a state transition of the run (durable)."""
        return self._insert(
            "transitions",
            ("from_state", "to_state", "trigger", "reason", "t_protocol", "t_wall"),
            (from_state, to_state, trigger, reason, t_protocol, t_wall),
            durable=True,
        )

    def record_command(
        self,
        command: str,
        args: Mapping[str, Any],
        source: str,
        accepted: bool,
        reason_code: str,
        t_protocol: float | None,
        t_wall: float | None,
    ) -> int:
        """Journal a command (ground or crew), accepted or refused, and why (durable)."""
        return self._insert(
            "commands",
            ("command", "args", "source", "accepted", "reason_code", "t_protocol", "t_wall"),
            (command, _json(dict(args)), source, int(accepted), reason_code, t_protocol, t_wall),
            durable=True,
        )

    def record_step_start(
        self, step: str, attempt: int, t_protocol: float | None, t_wall: float | None
    ) -> int:
        """Journal the start of a step attempt; the row is for ``record_step_end``."""
        if self._group_limit:
            if self._next_step_id is None:
                self._drain()
                row = self._conn.execute("SELECT max(id) FROM steps").fetchone()
                self._next_step_id = int(row[0] or 0) + 1
            step_id = self._next_step_id
            self._next_step_id += 1
            self._pending_steps[step_id] = [
                self.run_id,
                step,
                attempt,
                t_protocol,
                t_wall,
                None,
                None,
                None,
            ]
            self._buffered()
            return step_id
        return self._insert(
            "steps",
            ("step", "attempt", "started_protocol", "started_wall"),
            (step, attempt, t_protocol, t_wall),
            durable=False,
        )

    def record_step(
        self, step: str, attempt: int, t_protocol: float | None, t_wall: float | None, outcome: str
    ) -> None:
        """Journal a step attempt that started and ended at once (an instant step)."""
        if self._group_limit:
            if self._next_step_id is None:
                self.record_step_end(
                    self.record_step_start(step, attempt, t_protocol, t_wall),
                    outcome,
                    t_protocol,
                    t_wall,
                )
                return
            step_id = self._next_step_id
            self._next_step_id += 1
            self._pending_steps[step_id] = [
                self.run_id,
                step,
                attempt,
                t_protocol,
                t_wall,
                t_protocol,
                t_wall,
                outcome,
            ]
            self._buffered()
            return
        row = self.record_step_start(step, attempt, t_protocol, t_wall)
        self.record_step_end(row, outcome, t_protocol, t_wall)

    def record_steps(
        self, rows: Sequence[tuple[str, int, float | None, float | None, str]]
    ) -> None:
        """Journal many instant step attempts (step, attempt, t_protocol, t_wall, outcome) that
        started and ended at once."""
        if not self._group_limit or self._next_step_id is None:
            for step, attempt, tp, tw, outcome in rows:
                self.record_step(step, attempt, tp, tw, outcome)
            return
        first = self._next_step_id
        self._next_step_id += len(rows)
        run_id = self.run_id
        self._pending_done.extend(
            (first + i, run_id, step, attempt, tp, tw, tp, tw, outcome)
            for i, (step, attempt, tp, tw, outcome) in enumerate(rows)
        )
        self._group_count += len(rows) - 1
        self._buffered()

    def record_step_end(
        self, step_row: int, outcome: str, t_protocol: float | None, t_wall: float | None
    ) -> None:
        """Journal the end of a step attempt and its outcome."""
        pending = self._pending_steps.get(step_row)
        if pending is not None:
            if pending[7] is not None:
                raise JournalError(self.path, f"step row {step_row} is not running")
            pending[5:8] = [t_protocol, t_wall, outcome]
            return
        with self._tx(durable=False) as c:
            cur = c.execute(
                "UPDATE steps SET outcome=?, ended_protocol=?, ended_wall=?"
                " WHERE id=? AND run_id=? AND outcome IS NULL",
                (outcome, t_protocol, t_wall, step_row, self.run_id),
            )
            if cur.rowcount != 1:
                raise JournalError(self.path, f"step row {step_row} is not running")

    def set_checkpoint(self, key: str, value: Any, *, t_wall: float | None = None) -> None:
        """Store (upsert) one piece of the engine's resumable state as JSON (durable)."""
        try:
            text = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint {key!r} is not JSON: {e}") from e
        if self._group_limit:
            self._pending_checkpoints[key] = (text, t_wall)
            self._buffered()
            return
        with self._tx(durable=False) as c:
            c.execute(_UPSERT_CHECKPOINT, (self.run_id, key, text, t_wall))

    def get_checkpoint(self, key: str, default: Any = None) -> Any:
        """A checkpoint's value, or ``default`` when it was never set."""
        rows = self._query(
            "SELECT value FROM checkpoints WHERE run_id=? AND key=?", (self.run_id, key)
        )
        return default if not rows else self._load(rows[0]["value"], f"checkpoint {key!r}")

    def checkpoints(self) -> dict[str, Any]:
        """All the current run's checkpoints."""
        rows = self._query(
            "SELECT key, value FROM checkpoints WHERE run_id=? ORDER BY key", (self.run_id,)
        )
        return {r["key"]: self._load(r["value"], f"checkpoint {r['key']!r}") for r in rows}

    # ------------------------------------------------------------------ what the engine observes

    def record_event(self, code: str, severity: str, message: str, t: float | None) -> int:
        """Journal an event (alarm, holding, operator note)."""
        return self._insert(
            "events", ("code", "severity", "message", "t"), (code, severity, message, t), False
        )

    def record_telemetry(self, rows: Iterable[TelemetryRow]) -> int:
        """Journal many telemetry samples in one transaction; returns how many were written."""
        data = [(self.run_id, *row) for row in rows]
        if not data:
            return 0
        with self._tx(durable=False) as c:
            c.executemany(
                "INSERT INTO telemetry(run_id, device, name, value, unit, severity, t)"
                " VALUES (?,?,?,?,?,?,?)",
                data,
            )
        return len(data)

    def record_inspection(
        self,
        cell: str,
        image_sha256: str,
        image_path: str,
        result: Mapping[str, Any],
        t: float | None,
        *,
        model_version: str = "",
    ) -> int:
        """Journal an inspection: the evidence (image hash and path, model version) and result."""
        return self._insert(
            "inspections",
            ("cell", "image_sha256", "image_path", "model_version", "result", "t"),
            (cell, image_sha256, image_path, model_version, _json(dict(result)), t),
            durable=False,
        )

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The current run's rows of ``transitions``, ``commands``, ``steps``, ``events``,
        ``telemetry`` or ``inspections``, oldest first (JSON columns left as text)."""
        if table not in _ROW_TABLES:
            raise ValueError(f"not a row table: {table!r} (one of {sorted(_ROW_TABLES)})")
        found = self._query(f"SELECT * FROM {table} WHERE run_id=? ORDER BY id", (self.run_id,))
        return [dict(r) for r in found]

    # ------------------------------------------------------------------ the outbox

    def outbox_add(
        self, topic: str, payload: Mapping[str, Any] | str, *, t_wall: float | None = None
    ) -> int:
        """Queue a message for the ground link; it stays pending until :meth:`outbox_ack`."""
        return self._insert(
            "outbox", ("topic", "payload", "created"), (topic, _json(payload), t_wall), False
        )

    def outbox_pending(self, limit: int = 100) -> list[OutboxItem]:
        """Messages not yet acknowledged, oldest first."""
        rows = self._query(
            "SELECT id, topic, payload, created FROM outbox WHERE run_id=? AND sent_at IS NULL"
            " ORDER BY id LIMIT ?",
            (self.run_id, limit),
        )
        return [OutboxItem(r["id"], r["topic"], r["payload"], r["created"]) for r in rows]

    def outbox_ack(self, outbox_id: int, t_wall: float) -> None:
        """Mark a message as acknowledged by the ground (idempotent)."""
        with self._tx(durable=False) as c:
            c.execute(
                "UPDATE outbox SET sent_at=? WHERE id=? AND sent_at IS NULL", (t_wall, outbox_id)
            )

    # ------------------------------------------------------------------ helpers

    def _insert(
        self, table: str, columns: tuple[str, ...], values: tuple[Any, ...], durable: bool
    ) -> int:
        sql = (
            f"INSERT INTO {table}(run_id, {', '.join(columns)})"
            f" VALUES ({', '.join('?' * (len(columns) + 1))})"
        )
        with self._tx(durable) as c:
            cur = c.execute(sql, (self.run_id, *values))
        assert cur.lastrowid is not None
        return cur.lastrowid

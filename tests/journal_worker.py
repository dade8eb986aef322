"""A journal writer for the crash test: killed with SIGKILL at a random instant, then restarted.

    python tests/journal_worker.py JOURNAL

Opens (or creates) JOURNAL, prints ``ready``, then loops: record an intent and print
``intent ID``; write a batch of telemetry; end the action with a result and print ``ended ID``;
every few actions update a checkpoint. Each line is printed (and flushed) only after the call it
reports has returned, so every id on stdout is one the journal promised to keep.
"""

from __future__ import annotations

import sys
from itertools import count

from kiboauto.devices import ActionMarker
from kiboauto.journal import Journal, TelemetryRow


def main(path: str) -> None:
    with Journal.open(path) as journal:
        if not journal.has_run:
            journal.start_run("protocol: crash test\n", "station: none\n", t_wall=0.0)
        print("ready", flush=True)
        for n in count():
            t = float(n)
            marker = ActionMarker(
                device="pump1",
                identity="NE1000-X",
                kind="dispense",
                target_ul=10.0 + n % 7,
                rate_ul_min=100.0,
                baseline={"infused": t, "n": n},
                epoch="e1",
                created=t,
                step_ul=0.001,
            )
            action_id = journal.record_intent(f"loop/{n}", marker, t_protocol=t)
            print(f"intent {action_id}", flush=True)
            journal.record_telemetry(
                TelemetryRow("pump1", f"r{i}", t + i, "uL", "OK", t) for i in range(50)
            )
            journal.end_action(action_id, {"delivered_ul": marker.target_ul}, t_wall=t)
            print(f"ended {action_id}", flush=True)
            if n % 5 == 0:
                journal.set_checkpoint("loop", {"n": n, "last": action_id}, t_wall=t)


if __name__ == "__main__":
    main(sys.argv[1])

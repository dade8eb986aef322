"""The experiment engine: the run lifecycle state machine, the one command path and the local
control socket (``kiboauto ctl``)."""

from __future__ import annotations

from kiboauto.engine.commands import (
    COMMANDS,
    Command,
    CommandPath,
    CommandRefused,
    Reply,
    RunControl,
    parse_command,
)
from kiboauto.engine.control import (
    ControlError,
    ControlServer,
    NoRunListening,
    ctl_main,
    diagram_main,
    send_command,
    send_command_sync,
)
from kiboauto.engine.machine import (
    TRANSITIONS,
    Reason,
    RunMachine,
    RunState,
    Verdict,
)

__all__ = [
    "COMMANDS",
    "TRANSITIONS",
    "Command",
    "CommandPath",
    "CommandRefused",
    "ControlError",
    "ControlServer",
    "NoRunListening",
    "Reason",
    "Reply",
    "RunControl",
    "RunMachine",
    "RunState",
    "Verdict",
    "ctl_main",
    "diagram_main",
    "parse_command",
    "send_command",
    "send_command_sync",
]

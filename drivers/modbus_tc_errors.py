"""Errors the Modbus thermal controller driver raises besides the device layer's own."""

from __future__ import annotations

from kiboauto.devices import DeviceAlarm, DeviceError

from .modbus_tc_wire import EXCEPTION_NAMES

__all__ = ["InvalidRequest", "ModbusExceptionReply", "SetpointOutOfRange"]


class ModbusExceptionReply(DeviceAlarm):
    """The controller answered with a Modbus exception (``code`` is ``"modbus-0x02"`` etc.)."""

    def __init__(self, device: str, function_code: int, exception_code: int, what: str) -> None:
        name = EXCEPTION_NAMES.get(exception_code, "unknown exception")
        super().__init__(
            device,
            f"modbus-0x{exception_code:02X}",
            f"{what} refused (function 0x{function_code:02X}): {name}",
        )
        self.function_code = function_code
        self.exception_code = exception_code


class InvalidRequest(DeviceError, ValueError):
    """A request this driver cannot send (a count, address, value or unit the caller gave)."""


class SetpointOutOfRange(InvalidRequest):
    """A set value outside the controller's configured temperature range."""

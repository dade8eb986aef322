"""Protocol files: loading with positions, every kind of mistake found with its file:line:column
and what was expected, checks against the station, the examples, the JSON Schema and the CLI
functions. Mutated example texts never raise anything but ProtocolError."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiboauto.protocol import (
    LoadedProtocol,
    ProtocolError,
    load_protocol,
    load_text,
    protocol_json_schema,
    validate,
)
from kiboauto.protocol.commands import schema_main, validate_main
from kiboauto.protocol.loader import MAX_BYTES, MAX_DEPTH
from kiboauto.protocol.model import STEP_KINDS
from kiboauto.protocol.validate import (
    CAVRO_DEFAULT_PORTS,
    CAVRO_DEFAULT_SYRINGE_UL,
    CAVRO_PULSES_PER_STROKE,
    CAVRO_SPEED_RANGE,
    DEFAULT_SETPOINT_RANGE_C,
    SIM_CAMERA_CELLS,
)
from kiboauto.station import StationFile, default_station

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "examples" / "protein-crystal.yaml", ROOT / "examples" / "cell-culture.yaml"]

BASE = """\
name: t
roles:
  pump: {kind: SyringePump, device: pump1, syringe: 100 uL, reservoir: 50 uL}
  valve: {kind: Valve, device: valve1}
  incubator: ThermalController
  camera: {kind: Camera, device: camera1}
parameters:
  vol: {default: 5 uL, max: 10 uL}
  temp: {default: 20 degC}
steps:
  - set_temperature: {device: incubator, to: temp}
  - select_port: {valve: valve, port: 2}
  - dispense: {pump: pump, volume: vol, rate: 5 uL/min}
  - repeat:
      every: 1 h
      times: 3
      until: cell[1].count >= 1
      steps:
        - inspect: {camera: camera, cell: 1}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def problems(text: str | bytes, station: StationFile | None = None) -> list[str]:
    """Every problem of a protocol text, loading and validating, as printed."""
    try:
        loaded = load_text(text, "p.yaml")
    except ProtocolError as e:
        return [str(p) for p in e.problems]
    return [str(p) for p in validate(loaded, station)]


def only(text: str | bytes, station: StationFile | None = None) -> str:
    found = problems(text, station)
    assert len(found) == 1, found
    assert "expected" in found[0], found[0]
    return found[0]


@pytest.fixture(scope="module")
def station() -> StationFile:
    return default_station()


# -- the examples ------------------------------------------------------------------------------


@pytest.mark.req("KA-PRO-002")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_with_and_without_the_station(path: Path, station: StationFile) -> None:
    loaded = load_protocol(path)
    assert validate(loaded) == []
    assert validate(loaded, station) == []
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.text == path.read_text(encoding="utf-8")
    assert loaded.source == str(path)


@pytest.mark.req("KA-PRO-002")
def test_base_is_valid_and_positions_are_kept(station: StationFile) -> None:
    assert problems(BASE) == []
    assert problems(BASE, station) == []
    loaded = load_text(BASE, "p.yaml")
    assert loaded.position(("steps", 2)) == (13, 5)
    assert loaded.position(("steps", 2, "dispense", "rate")) == (13, 47)
    assert loaded.key_position(("steps", 2, "dispense", "rate")) == (13, 41)
    assert loaded.position(("steps", 3, "repeat", "until")) == (17, 14)
    assert loaded.position(("roles", "incubator")) == (5, 14)
    # a path that is not in the file falls back to the nearest enclosing value
    assert loaded.position(("steps", 2, "dispense", "nothing")) == (13, 15)


@pytest.mark.req("KA-PRO-002")
def test_the_thresholds_match_the_drivers_and_simulators() -> None:
    from kiboauto.drivers import cavro_wire
    from kiboauto.drivers.cavro import CavroPump
    from kiboauto.hil.camera_sim import SimCamera
    from kiboauto.hil.thermal_sim import ThermalSim

    cavro = inspect.signature(CavroPump.__init__).parameters
    assert cavro["ports"].default == CAVRO_DEFAULT_PORTS
    assert cavro["syringe_volume_ul"].default == CAVRO_DEFAULT_SYRINGE_UL
    assert cavro_wire.TOP_SPEED_RANGE == CAVRO_SPEED_RANGE
    assert cavro_wire.PULSES_PER_STROKE == CAVRO_PULSES_PER_STROKE
    thermal = inspect.signature(ThermalSim.__init__).parameters
    assert (thermal["lower_limit_c"].default, thermal["upper_limit_c"].default) == (
        DEFAULT_SETPOINT_RANGE_C
    )
    assert inspect.signature(SimCamera.__init__).parameters["cells"].default == SIM_CAMERA_CELLS


# -- mistakes found while loading --------------------------------------------------------------


@pytest.mark.req("KA-PRO-002")
def test_yaml_syntax_error() -> None:
    text = edit("  valve: {kind: Valve, device: valve1}", "  valve: {kind: Valve, device: valve1")
    assert only(text) == (
        "p.yaml:5:12: not valid YAML: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping at line 4, column 10)"
    )


@pytest.mark.req("KA-PRO-002")
def test_duplicate_key() -> None:
    assert only(edit("name: t\n", "name: t\nname: u\n")) == (
        "p.yaml:2:1: name: duplicate key 'name' (first at line 1, column 1); expected each key "
        "once in a mapping"
    )
    nested = edit("      times: 3\n", "      times: 3\n      times: 4\n")
    assert only(nested).startswith("p.yaml:17:7: steps[3].repeat.times: duplicate key 'times'")


@pytest.mark.req("KA-PRO-002")
def test_unknown_key_points_at_the_key() -> None:
    assert only(edit("rate: 5 uL/min}", "rate: 5 uL/min, speed: 3}")) == (
        "p.yaml:13:57: steps[2].dispense.speed: unknown key 'speed'; expected one of: pump, "
        "volume, rate"
    )
    assert problems(edit("  temp: {default: 20 degC}", "  temp: {defualt: 20 degC}")) == [
        "p.yaml:9:9: parameters.temp.default: missing key 'default'; expected 'default:' in this "
        "mapping",
        "p.yaml:9:10: parameters.temp.defualt: unknown key 'defualt'; expected one of: default, "
        "min, max, settable, description (did you mean 'default'?)",
    ]


@pytest.mark.req("KA-PRO-002")
def test_missing_key_points_at_the_mapping() -> None:
    text = edit("{pump: pump, volume: vol, rate: 5 uL/min}", "{pump: pump, volume: vol}")
    assert only(text) == (
        "p.yaml:13:15: steps[2].dispense.rate: missing key 'rate'; expected 'rate:' in this mapping"
    )


@pytest.mark.req("KA-PRO-002")
def test_wrong_unit() -> None:
    assert only(edit("rate: 5 uL/min", "rate: 5 uL")) == (
        "p.yaml:13:47: steps[2].dispense.rate: '5 uL' is a [length] ** 3, not a flow; "
        "expected e.g. '50 uL/min'"
    )


@pytest.mark.req("KA-PRO-002")
def test_not_a_quantity() -> None:
    assert only(edit("every: 1 h", "every: soon please")) == (
        "p.yaml:15:14: steps[3].repeat.every: cannot read 'soon please' as a quantity: expected "
        "a number and a unit; expected a time such as '6 h'"
    )
    # pint would evaluate this arithmetic for ever; the shape check refuses it at once
    assert only(edit("every: 1 h", "every: 9**9**9 h")).startswith(
        "p.yaml:15:14: steps[3].repeat.every: cannot read '9**9**9 h' as a quantity"
    )


@pytest.mark.req("KA-PRO-002")
def test_unknown_step_kind() -> None:
    text = edit("  - select_port: {valve: valve", "  - select_prt: {valve: valve")
    assert only(text) == (
        "p.yaml:12:5: steps[1].select_prt: unknown step kind 'select_prt'; expected one of: "
        + ", ".join(STEP_KINDS)
        + " (did you mean 'select_port'?)"
    )


@pytest.mark.req("KA-PRO-002")
def test_two_kinds_in_one_step() -> None:
    text = edit("port: 2}\n", "port: 2}\n    wait: 5 s\n")
    assert only(text) == (
        "p.yaml:13:5: steps[1].wait: a step has one kind, this one has 2 (select_port, wait); "
        "expected exactly one kind key per step (write one step for each)"
    )


@pytest.mark.req("KA-PRO-002")
def test_repeat_without_an_end() -> None:
    found = problems(edit("      times: 3\n", ""))
    assert found == [
        "p.yaml:15:7: steps[3].repeat: a repeat needs 'times' or 'for' so that it ends"
    ]


@pytest.mark.req("KA-PRO-002")
def test_bad_condition_points_inside_the_condition() -> None:
    # plain scalar: the value starts at column 14, the error is at column 17 of the condition
    assert only(edit("until: cell[1].count >= 1", "until: cell[1].count >= ")) == (
        "p.yaml:17:30: steps[3].repeat.until: condition 'cell[1].count >=': column 17: "
        "expected a value after '>=', found end of text"
    )
    # quoted: the condition starts one column after the quote
    assert only(edit("until: cell[1].count >= 1", 'until: "cell[1].count => 1"')) == (
        "p.yaml:17:29: steps[3].repeat.until: condition 'cell[1].count => 1': column 15: a "
        "single '=' does not compare; expected '==' (or '<=', '>=', '!=')"
    )


@pytest.mark.req("KA-PRO-002")
def test_non_utf8(tmp_path: Path) -> None:
    raw = b"name: t\ndescription: caf\xe9\n"
    expected = "p.yaml:2:17: byte 0xe9 is not UTF-8; expected UTF-8 text (save the file as UTF-8)"
    assert only(raw) == expected
    path = tmp_path / "p.yaml"
    path.write_bytes(raw)
    with pytest.raises(ProtocolError) as e:
        load_protocol(path)
    assert str(e.value) == expected.replace("p.yaml", str(path))


@pytest.mark.req("KA-PRO-002")
def test_oversized_file(tmp_path: Path) -> None:
    text = BASE + "#" * MAX_BYTES
    assert only(text) == (
        "p.yaml: the file is larger than 1048576 bytes; expected a protocol of at most "
        "1048576 bytes (1 MiB)"
    )
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (50 * MAX_BYTES))
    with pytest.raises(ProtocolError, match="larger than 1048576 bytes"):
        load_protocol(path)


@pytest.mark.req("KA-PRO-002")
def test_alias_bomb_is_refused_at_the_first_alias() -> None:
    laughs = "a: &a [" + ", ".join(["lol"] * 9) + "]\n"
    for i, prev in enumerate("abcdefgh"):
        laughs += f"{chr(ord(prev) + 1)}: &{chr(ord(prev) + 1)} [" + ", ".join([f"*{prev}"] * 9)
        laughs += "]\n"
        if i == 7:
            break
    assert only(laughs) == (
        "p.yaml:2:8: YAML alias '*a' is not allowed in a protocol (aliases can expand a few "
        "lines into millions of values); expected the value written out"
    )


@pytest.mark.req("KA-PRO-002")
def test_nesting_is_bounded() -> None:
    # 'name: ' then 5000 '[': the root mapping is level 1, the 64th '[' (column 70) level 65
    text = "name: " + "[" * 5000 + "]" * 5000 + "\n"
    assert only(text) == (
        f"p.yaml:1:{6 + MAX_DEPTH}: nested deeper than 64 levels; expected at most 64 "
        "levels of mappings and lists"
    )


@pytest.mark.req("KA-PRO-002")
def test_other_file_level_mistakes() -> None:
    assert only("") == "p.yaml:1:1: the file holds no protocol; expected a mapping with name, " + (
        "roles and steps"
    )
    assert only("- a\n- b\n").startswith("p.yaml:1:1: the file holds a list; expected a mapping")
    assert only("name: t\x07\n").startswith("p.yaml:1:8: character U+0007 is not allowed")
    with pytest.raises(ProtocolError, match="cannot read the file"):
        load_protocol("/nonexistent/p.yaml")


# -- mistakes found by validate ----------------------------------------------------------------


@pytest.mark.req("KA-PRO-002")
def test_unknown_parameter_reference() -> None:
    assert only(edit("volume: vol,", "volume: volume_per_cell,")) == (
        "p.yaml:13:36: steps[2].dispense.volume: unknown parameter 'volume_per_cell'; expected "
        "a volume such as '10 uL' or the name of one of the parameters: temp, vol"
    )


@pytest.mark.req("KA-PRO-002")
def test_parameter_of_the_wrong_dimension() -> None:
    assert only(edit("volume: vol,", "volume: temp,")) == (
        "p.yaml:13:36: steps[2].dispense.volume: parameter 'temp' is a temperature (default 20 "
        "degC); expected a volume parameter here, e.g. with default '10 uL'"
    )


@pytest.mark.req("KA-PRO-002")
def test_unknown_role() -> None:
    assert only(edit("{pump: pump, volume", "{pump: pmp, volume")) == (
        "p.yaml:13:22: steps[2].dispense.pump: unknown role 'pmp'; expected one of the roles: "
        "pump, valve, incubator, camera (or declare 'pmp' under roles:)"
    )


@pytest.mark.req("KA-PRO-002")
def test_role_of_the_wrong_kind() -> None:
    assert only(edit("{pump: pump, volume", "{pump: valve, volume")) == (
        "p.yaml:13:22: steps[2].dispense.pump: role 'valve' is a Valve; expected a SyringePump "
        "role for 'pump' (pump)"
    )


@pytest.mark.req("KA-PRO-002")
def test_role_missing_from_the_station(station: StationFile) -> None:
    text = edit("{kind: Camera, device: camera1}", "{kind: Camera, device: camera2}")
    assert problems(text) == []
    assert only(text, station) == (
        "p.yaml:6:34: roles.camera.device: the station has no device 'camera2' for role "
        "'camera'; expected one of its devices: pump1, valve1, incubator, camera1"
    )
    # a role without 'device' is played by the station device of its own name
    renamed = edit("  incubator: ThermalController", "  oven: ThermalController")
    renamed = edit("{device: incubator,", "{device: oven,", renamed)
    assert only(renamed, station) == (
        "p.yaml:5:3: roles.oven: the station has no device 'oven' for role 'oven'; expected one "
        "of its devices: pump1, valve1, incubator, camera1 (set 'device:' of role 'oven' to one "
        "of them)"
    )


@pytest.mark.req("KA-PRO-002")
def test_station_device_of_the_wrong_kind(station: StationFile) -> None:
    text = edit("{kind: Camera, device: camera1}", "{kind: Camera, device: pump1}")
    assert only(text, station) == (
        "p.yaml:6:34: roles.camera.device: station device 'pump1' (driver newera) is a "
        "SyringePump, not a Camera; expected a device with driver opencv"
    )


@pytest.mark.req("KA-PRO-002")
def test_dispense_over_the_syringe_capacity(station: StationFile) -> None:
    assert only(edit("syringe: 100 uL", "syringe: 8 uL")) == (
        "p.yaml:13:36: steps[2].dispense.volume: dispense volume 10 uL (the max of settable "
        "parameter 'vol') is more than role pump's syringe holds (8 uL); expected at most 8 uL "
        "per step"
    )
    # without a 'syringe', the Cavro's comes from the station (driver default 250 uL)
    text = BASE.replace("device: pump1, syringe: 100 uL", "device: valve1").replace(
        "volume: vol, rate: 5 uL/min", "volume: 300 uL, rate: 50 uL/min"
    )
    text = text.replace("reservoir: 50 uL", "reservoir: 1 mL")
    assert problems(text) == []
    assert only(text, station) == (
        "p.yaml:13:36: steps[2].dispense.volume: dispense volume 300 uL is more than station "
        "device valve1's syringe holds (250 uL); expected at most 250 uL per step"
    )


@pytest.mark.req("KA-PRO-002")
def test_total_over_the_reservoir_counts_repeats() -> None:
    text = edit(
        "        - inspect: {camera: camera, cell: 1}\n",
        "        - inspect: {camera: camera, cell: 1}\n"
        "        - dispense: {pump: pump, volume: 8 uL, rate: 5 uL/min}\n",
    )
    # 10 uL (the max of 'vol') + 3 iterations x 8 uL = 34 uL
    assert problems(text) == []
    assert only(edit("reservoir: 50 uL", "reservoir: 30 uL", text)) == (
        "p.yaml:3:72: roles.pump.reservoir: 'pump' dispenses up to 34 uL over the whole run (each "
        "repeat counted at its most iterations), more than its reservoir of 30 uL; expected at "
        "most 30 uL in all"
    )
    # 'every 1 h for 5 h' runs at 0, 1, ... 5 h: 6 iterations, 10 + 48 = 58 uL
    by_time = edit("      times: 3\n", "      for: 5 h\n", text)
    assert "up to 58 uL" in only(by_time)


@pytest.mark.req("KA-PRO-002")
def test_set_point_out_of_range() -> None:
    assert only(edit("temp: {default: 20 degC}", "temp: {default: 20 degC, max: 95 degC}")) == (
        "p.yaml:11:46: steps[0].set_temperature.to: set point 95 degC (the max of settable "
        "parameter 'temp') is outside the controller's default range limits (-10..60 degC); "
        "expected -10 degC <= set point <= 60 degC"
    )
    ranged = edit(
        "  incubator: ThermalController",
        "  incubator: {kind: ThermalController, range: [2 degC, 30 degC]}",
    )
    text = edit("to: temp}", "to: 37 degC}", ranged)
    assert only(text) == (
        "p.yaml:11:46: steps[0].set_temperature.to: set point 37 degC is outside the range of "
        "role 'incubator' (2..30 degC); expected 2 degC <= set point <= 30 degC"
    )


@pytest.mark.req("KA-PRO-002")
def test_valve_port_out_of_range(station: StationFile) -> None:
    text = edit("port: 2}", "port: 12}")
    assert problems(text) == []  # the number of ports is the station's
    assert only(text, station) == (
        "p.yaml:12:39: steps[1].select_port.port: port 12 is not a port of 'valve' (station "
        "device valve1: a 9-port valve); expected 1..9"
    )


@pytest.mark.req("KA-PRO-002")
def test_duplicate_step_id() -> None:
    text = edit(
        "  - select_port: {valve: valve, port: 2}",
        "  - id: a\n    select_port: {valve: valve, port: 2}\n  - id: a\n    wait: 5 s",
    )
    assert only(text) == (
        "p.yaml:14:9: steps[2].id: duplicate step id 'a' (first at line 12, column 9); expected "
        "each id once"
    )


@pytest.mark.req("KA-PRO-002")
def test_unknown_goto_target() -> None:
    text = edit("port: 2}\n", "port: 2}\n    id: turn\n    on_failure: goto retry_fill\n")
    assert only(text) == (
        "p.yaml:14:17: steps[1].on_failure: goto 'retry_fill': no step has id 'retry_fill'; "
        "expected one of the step ids: turn"
    )


@pytest.mark.req("KA-PRO-002")
def test_crew_step_without_id() -> None:
    text = edit(
        "  - select_port: {valve: valve, port: 2}",
        "  - crew: {procedure: swap the bag, expected: 10 min}",
    )
    assert only(text) == (
        "p.yaml:12:5: steps[1]: a crew step needs an id (the crew confirms it by id: 'kiboauto "
        "ctl RUN_DIR confirm ID'); expected e.g. 'id: passage_cells'"
    )


@pytest.mark.req("KA-PRO-002")
def test_condition_names_must_resolve() -> None:
    found = problems(edit("until: cell[1].count >= 1", "until: cell[2].count >= 1 and params.x"))
    assert found == [
        "p.yaml:17:14: steps[3].repeat.until: condition: no inspect step inspects cell 2 "
        "('cell[2].count'); expected one of the inspected cells: cell[1]",
        "p.yaml:17:37: steps[3].repeat.until: condition: unknown parameter 'params.x'; expected "
        "one of: params.vol, params.temp",
    ]
    mode = only(edit("until: cell[1].count >= 1", "until: cell[1].confluence > 0.8"))
    assert mode == (
        "p.yaml:17:14: steps[3].repeat.until: condition: 'cell[1].confluence' comes from an "
        "inspect step with mode confluence, and cell 1 is only inspected with mode crystals; "
        "expected an inspect step of cell 1 with mode confluence"
    )
    watchdog = BASE + "watchdogs:\n  - {name: hot, when: oven.temperature > 25 degC for 5 min}\n"
    assert only(watchdog) == (
        "p.yaml:21:23: watchdogs[0].when: watchdog: unknown name 'oven.temperature'; expected "
        "params.NAME, ROLE.READING (roles: pump, valve, incubator, camera), cell[N].FIELD, "
        "run.time or loop.count"
    )
    unmonitored = edit("oven.temperature", "incubator.temperature", watchdog)
    assert only(unmonitored) == (
        "p.yaml:21:23: watchdogs[0].when: watchdog: 'incubator.temperature' is a reading of "
        "role 'incubator', which is not monitored, so it is never sampled; expected a monitor "
        "entry for it (monitor: - device: incubator)"
    )
    monitored = unmonitored + "monitor:\n  - {device: incubator, every: 1 min}\n"
    assert problems(monitored) == []
    twice = monitored + "  - {device: incubator, limits: {temperature: {yellow: [1 degC, null]}}}\n"
    twice += "  - {device: incubator, limits: {temperature: {yellow: [2 degC, null]}}}\n"
    assert only(twice) == (
        "p.yaml:25:34: monitor[2].limits.temperature: limits of incubator.temperature are "
        "already given in monitor[1]; expected one set of limits per reading"
    )
    loop = BASE + "  - branch: {if: loop.count > 2, then: [{wait: 1 s}]}\n"
    assert only(loop) == (
        "p.yaml:20:18: steps[4].branch.if: condition: loop.count is only defined inside a "
        "repeat; expected it in a repeat"
    )


@pytest.mark.req("KA-PRO-002")
def test_condition_compares_values_of_the_kinds_a_run_gives() -> None:
    # cell[N].max_length_um is a length: a plain number on the other side fails at run time
    text = edit("until: cell[1].count >= 1", "until: cell[1].max_length_um >= 100")
    assert only(text) == (
        "p.yaml:17:36: steps[3].repeat.until: condition: cannot compare a plain number with "
        "length (µm); give the number a unit (cell[1].max_length_um is a length (um)); expected "
        "values of the same kind on both sides"
    )
    assert (
        problems(edit("until: cell[1].count >= 1", "until: cell[1].max_length_um >= 100 um")) == []
    )


@pytest.mark.req("KA-PRO-002")
def test_feasibility_of_rates_periods_and_red_limits(station: StationFile) -> None:
    slow = BASE.replace("device: pump1, syringe: 100 uL", "device: valve1")
    assert only(slow, station) == (
        "p.yaml:13:47: steps[2].dispense.rate: rate 5 uL/min is outside what station device "
        "valve1 pumps with its 250 uL syringe; expected 12.5..15000 uL/min"
    )
    assert only(edit("every: 1 h", "every: 0 s")) == (
        "p.yaml:15:14: steps[3].repeat.every: every 0 s is not above 0 s; expected a period > 0 s"
    )
    short = edit("      times: 3\n", "      for: 30 min\n")
    assert only(short) == (
        "p.yaml:16:12: steps[3].repeat.for: 'for' 30 min is shorter than 'every' 1 h: the steps "
        "would run once; expected 'for' at least as long as 'every' (or 'times: 1')"
    )
    red = BASE + (
        "monitor:\n  - device: incubator\n    limits:\n"
        "      temperature: {red: [18 degC, 19 degC]}\n"
    )
    assert only(red) == (
        "p.yaml:23:26: monitor[0].limits.temperature.red: set point 20 degC (parameter 'temp') "
        "is outside the red band 18..19 degC of incubator.temperature: reaching it would put the "
        "run on hold; expected a red band that holds every set point of the run"
    )


# -- never anything but ProtocolError ----------------------------------------------------------

_TEXTS = [p.read_text(encoding="utf-8") for p in EXAMPLES]
_STATION = default_station()


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["delete_line", "swap", "truncate", "insert", "duplicate"]))
        if not text:
            break
        if how == "delete_line":
            lines = text.splitlines(keepends=True)
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "".join(lines)
        elif how == "swap" and len(text) > 1:
            i = draw(st.integers(0, len(text) - 2))
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        elif how == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif how == "insert":
            i = draw(st.integers(0, len(text)))
            piece = draw(
                st.sampled_from([":", "-", " ", "\n", "[", "{", "*", "&a ", "'", '"', "#"])
            )
            text = text[:i] + piece + text[i:]
        elif how == "duplicate":
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
    return text


@pytest.mark.req("KA-PRO-002")
@settings(
    max_examples=120,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=_mutated())
def test_mutated_examples_only_raise_protocol_error(text: str) -> None:
    try:
        loaded = load_text(text, "m.yaml")
    except ProtocolError as e:
        assert e.problems
        for p in e.problems:
            assert p.message and p.file == "m.yaml"
        return
    for p in validate(loaded, _STATION) + validate(loaded):
        assert p.line >= 1 and p.column >= 1 and p.message


# -- schema and commands -----------------------------------------------------------------------


@pytest.mark.req("KA-PRO-002")
def test_json_schema_describes_steps_as_one_of() -> None:
    schema = protocol_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "kiboauto protocol"
    one_of = schema["properties"]["steps"]["items"]["oneOf"]
    assert len(one_of) == len(STEP_KINDS)
    repeat = schema["$defs"]["RepeatArgs"]["properties"]
    assert "for" in repeat and "for_" not in repeat
    assert json.loads(schema_main()) == schema
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)
    bad = yaml.safe_load(BASE)
    bad["steps"][1]["wait"] = "5 s"  # two kinds in one step
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.req("KA-PRO-002")
def test_validate_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main(EXAMPLES[0], None, False) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{EXAMPLES[0]}: valid (")
    assert "8 parameters, roles protein_pump, precipitant_pump, valve, incubator, camera)" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text(edit("port: 2}", "port: 12}"), encoding="utf-8")
    station_file = tmp_path / "station.yaml"
    station_file.write_text(
        "devices:\n  valve1: {driver: cavro, port: sim, options: {ports: 6}}\n", encoding="utf-8"
    )
    assert validate_main(bad, station_file, False) == 2
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"{bad}:12:39: steps[1].select_port.port: port 12 is not a port of 'valve' " in (lines[-1])
    )
    assert any("the station has no device 'pump1'" in line for line in lines)

    broken = tmp_path / "broken-station.yaml"
    broken.write_text("devices:\n  x: {driver: nope, port: sim}\n", encoding="utf-8")
    assert validate_main(EXAMPLES[0], broken, False) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{broken}:2: devices.x.driver: ")

    assert validate_main(bad, None, True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["steps"] == 5
    (tmp_path / "worse.yaml").write_text("name: [\n", encoding="utf-8")
    assert validate_main(tmp_path / "worse.yaml", None, True) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and report["problems"][0]["line"] == 2


@pytest.mark.req("KA-PRO-002")
def test_loaded_protocol_is_what_the_engine_reads() -> None:
    loaded = load_protocol(EXAMPLES[0])
    assert isinstance(loaded, LoadedProtocol)
    assert loaded.protocol.device_for("precipitant_pump") == "valve1"
    line, column = loaded.position(("steps", 0, "set_temperature", "to"))
    assert loaded.text.splitlines()[line - 1][column - 1 :].startswith("growth_temperature")


@pytest.mark.req("KA-PRO-002")
def test_the_documented_example_is_valid(
    tmp_path: Path, station: StationFile, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (ROOT / "docs" / "protocol-language.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "lysozyme.yaml"
    path.write_text(example, encoding="utf-8")
    loaded = load_protocol(path)
    assert validate(loaded, station) == []
    assert validate_main(path, None, False) == 0
    printed = capsys.readouterr().out.strip().replace(str(path), "lysozyme.yaml")
    assert printed in doc


@pytest.mark.req("KA-PRO-002")
def test_inspection_geometry_and_field_quality_names_follow_their_mode() -> None:
    """``cell[N].drop_found`` comes from a crystals inspection, ``cell[N].quality_ok`` from a
    confluence one: each is accepted from its own mode and refused from the other."""
    ok = """\
name: t
roles: {camera: {kind: Camera, device: camera1}}
steps:
  - repeat:
      every: 1 h
      times: 3
      until: "cell[1].quality_ok and cell[1].wall_fraction < 0.2 and cell[2].drop_found"
      steps:
        - inspect: {camera: camera, cell: 1, mode: confluence}
        - inspect: {camera: camera, cell: 2}
"""
    assert problems(ok) == []
    wrong = ok.replace("cell[2].drop_found", "cell[2].quality_ok")
    found = problems(wrong)
    assert len(found) == 1 and "mode confluence" in found[0] and "cell 2" in found[0], found

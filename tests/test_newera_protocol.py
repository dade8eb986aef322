"""New Era NE-500/NE-1000 wire format: the framing and parsers on their own (CRC, basic and safe
frames, replies, numbers), checked with hypothesis, and random bytes into the parsers and the
simulator. Driver and simulator behaviour over ptys and memory pipes is in test_newera.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiboauto.drivers.newera_wire import (
    ALARMS,
    ERRORS,
    STATUS_TEXT,
    crc16_xmodem,
    decode_reply_data,
    encode_basic_reply,
    encode_reply_data,
    encode_safe_frame,
    format_number,
    parse_any_reply,
    parse_basic_reply,
    parse_number,
    parse_safe_frame,
    parse_safe_reply,
)
from kiboauto.drivers.transport import BadFrame
from kiboauto.hil.newera_sim import NewEraSim


# ---------------------------------------------------------------------------------------------
# KA-BAD-001: framing properties and robustness
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-001")
def test_crc_check_value_and_manual_example() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert crc16_xmodem(b"SAF0") == 0x5543  # the manual's "back to basic mode" packet
    assert encode_safe_frame(b"SAF0") == b"\x02\x08SAF0\x55\x43\x03"


_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@pytest.mark.req("KA-BAD-001")
@given(
    address=st.integers(0, 99),
    status=st.sampled_from(sorted(STATUS_TEXT)),
    data=_printable.filter(lambda s: not s.startswith("?")),
)
def test_reply_round_trip_both_framings(address: int, status: str, data: str) -> None:
    raw = encode_reply_data(address, status, data)
    basic = encode_basic_reply(raw)
    safe = encode_safe_frame(raw)
    for frame, parser in ((basic, parse_basic_reply), (safe, parse_safe_reply)):
        parsed = parser(frame + b"trailing")
        assert parsed is not None
        reply, used = parsed
        assert used == len(frame)
        assert (reply.address, reply.status, reply.data) == (address, status, data)
        for cut in range(len(frame)):
            assert parser(frame[:cut]) is None  # incomplete is never an error


@pytest.mark.req("KA-BAD-001")
@given(
    address=st.integers(0, 99),
    alarm=st.sampled_from(sorted(ALARMS)),
    error=st.sampled_from(sorted(ERRORS)),
)
def test_alarm_and_error_replies_decode(address: int, alarm: str, error: str) -> None:
    reply = decode_reply_data(encode_reply_data(address, "S", alarm=alarm))
    assert (reply.address, reply.alarm) == (address, alarm)
    reply = decode_reply_data(encode_reply_data(address, "I", f"?{error}"))
    assert (reply.status, reply.error) == ("I", error)


@pytest.mark.req("KA-BAD-001")
@given(data=st.binary(max_size=200))
def test_safe_frame_round_trip(data: bytes) -> None:
    frame = encode_safe_frame(data)
    assert parse_safe_frame(frame) == (data, len(frame))


@pytest.mark.req("KA-BAD-001")
@given(
    data=st.binary(min_size=1, max_size=60), where=st.integers(0, 1000), flip=st.integers(1, 255)
)
def test_any_corruption_of_a_safe_frame_is_caught(data: bytes, where: int, flip: int) -> None:
    frame = bytearray(encode_safe_frame(data))
    i = where % len(frame)
    frame[i] ^= flip
    try:
        parsed = parse_safe_frame(bytes(frame))
    except BadFrame:
        return
    # Only a longer length byte can leave the frame incomplete instead of wrong.
    assert parsed is None and i == 1


@pytest.mark.req("KA-BAD-001")
@settings(max_examples=300)
@given(blob=st.binary(max_size=300))
def test_random_bytes_into_parsers(blob: bytes) -> None:
    for parser in (parse_basic_reply, parse_safe_reply, parse_any_reply):
        try:
            parsed = parser(blob)
        except BadFrame:
            continue
        if parsed is not None:
            _, used = parsed
            assert 0 < used <= len(blob)


@pytest.mark.req("KA-BAD-001")
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"\r", b"\x02", b"RUN\r", b"STP\r", b"SAF5\r", b"DIS\r", b"VOL0\r"]),
        ),
        max_size=25,
    )
)
def test_random_bytes_into_the_simulator(chunks: list[bytes]) -> None:
    sim = NewEraSim("fuzz", power_on_alarm=False)
    for chunk in chunks:
        for reply in sim.handle_bytes(chunk):
            assert reply[:1] == b"\x02" and reply[-1:] == b"\x03"
            assert parse_any_reply(reply) is not None
    sim.advance()


@pytest.mark.req("KA-BAD-001")
@given(value=st.floats(min_value=0, max_value=9999.4, allow_nan=False))
def test_numbers_fit_the_pump(value: float) -> None:
    text = format_number(value)
    whole, _, frac = text.partition(".")
    assert len(whole + frac) <= 4 and len(frac) <= 3
    parsed = parse_number(text)
    assert parsed is not None
    assert abs(parsed - value) <= 0.5 * 10 ** -len(frac) + 1e-9

"""Limits of `load_image` and `kiboauto inspect`: pixel limit from the header, float images,
overlay folders, the scale option and strict JSON. Real files, real OpenCV, the real command."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiboauto.hil.scene import random_spec, render
from kiboauto.inspect_cmd import DEFAULT_MAX_PIXELS, json_line, json_text
from kiboauto.vision import ImageError, load_image
from kiboauto.vision import io as vio

KIBOAUTO = [sys.executable, "-m", "kiboauto"]
SEED0 = 20_100


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KIBOAUTO, "inspect", *args], capture_output=True, text=True, timeout=120
    )


def _strict(text: str) -> Any:
    """Parse JSON refusing NaN, Infinity and -Infinity."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG (tens of KB) that decodes to ``width * height`` bytes."""
    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row * min(200, height - y)) for y in range(0, height, 200)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small rendered drops and a 20000 x 20000 PNG, written once for the module."""
    folder = tmp_path_factory.mktemp("drops")
    files = {}
    for k, drop_class in enumerate(("crystals", "clear")):
        image, _ = render(random_spec(SEED0 + k, drop_class=drop_class, width=640, height=480))
        files[drop_class] = folder / f"{drop_class}.png"
        assert cv2.imwrite(str(files[drop_class]), image)
    files["huge"] = folder / "huge.png"
    files["huge"].write_bytes(huge_png(20000, 20000))
    return files


# ---------------------------------------------------------------------------------------------
# pixel limit, read from the header
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
@pytest.mark.parametrize(
    "suffix", [".png", ".jpg", ".tif", ".bmp", ".webp", ".pnm", ".jp2", ".pfm"]
)
@pytest.mark.parametrize("kind", ["grey8", "colour8", "grey16", "colour16", "float"])
def test_header_dimensions_match_the_decoder(suffix: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    shape = (37, 53, 3) if kind.startswith("colour") else (37, 53)
    dtype = {"8": np.uint8, "6": np.uint16}.get(kind[-1], np.float32)
    image = (rng.random(shape) * 200).astype(dtype)
    try:
        ok, data = cv2.imencode(suffix, image)
    except cv2.error:
        pytest.skip(f"OpenCV does not write {kind} as {suffix}")
    if not ok:
        pytest.skip(f"OpenCV does not write {kind} as {suffix}")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert vio.image_dimensions(data.tobytes()) == (decoded.shape[1], decoded.shape[0]) == (53, 37)


def _peak_mb_of_loading(path: Path) -> int:
    """Peak memory (MB) of a fresh process that imports kiboauto.vision and loads ``path``."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec from the forking
    # parent (a large pytest process), while VmHWM belongs to the new process alone.
    probe = (
        "from kiboauto.vision import ImageError, load_image\n"
        "try:\n"
        f"    load_image({str(path)!r})\n"
        "except ImageError:\n"
        "    pass\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print(int(status.split()[0]) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    return int(done.stdout.strip())


@pytest.mark.req("KA-BAD-003")
def test_load_image_refuses_a_20000_square_png_from_its_header(drops: dict[str, Path]) -> None:
    path = drops["huge"]
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError) as e:
        load_image(path)
    # Refused from the header: loading it in a fresh process peaks no higher than loading an
    # ordinary drop image does, far below the 400 MB that decoding its pixels would take (memory,
    # not time; the same imports on both sides, so a first-run compilation cancels out).
    huge_mb = _peak_mb_of_loading(path)
    ordinary_mb = _peak_mb_of_loading(drops["clear"])
    assert huge_mb - ordinary_mb < 150, f"{huge_mb} MB against {ordinary_mb} MB: pixels decoded"
    message = str(e.value)
    assert str(path) in message and "20000x20000" in message
    assert "400.0 megapixels" in message and "50 megapixels" in message
    assert DEFAULT_MAX_PIXELS == vio.DEFAULT_MAX_PIXELS == 50_000_000
    # the limit is an argument
    with pytest.raises(ImageError, match="640x480"):
        load_image(drops["clear"], max_pixels=640 * 480 - 1)
    assert load_image(drops["clear"], max_pixels=640 * 480).shape[:2] == (480, 640)


@pytest.mark.req("KA-BAD-003")
def test_jpeg_and_tiff_headers_are_checked_too(tmp_path: Path) -> None:
    # a JPEG whose frame header says 20000 x 20000 (SOF0 after an APP0 segment)
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 20000, 20000, 1) + b"\x01\x11\x00"
    jpeg = tmp_path / "big.jpg"
    jpeg.write_bytes(b"\xff\xd8" + app0 + sof0 + b"\xff\xd9")
    # a big-endian TIFF whose first page says 30000 x 20000
    entries = [(256, 4, 1, 30000), (257, 4, 1, 20000), (258, 3, 1, 8 << 16)]
    ifd = struct.pack(">H", len(entries))
    ifd += b"".join(struct.pack(">HHII", *entry) for entry in entries) + b"\x00" * 4
    tiff = tmp_path / "big.tif"
    tiff.write_bytes(b"MM\x00*" + struct.pack(">I", 8) + ifd)
    for path, size in ((jpeg, "20000x20000"), (tiff, "30000x20000")):
        with pytest.raises(ImageError, match=size) as e:
            load_image(path)
        assert str(path) in str(e.value) and "megapixels" in str(e.value)


@pytest.mark.req("KA-BAD-003")
def test_inspect_reports_an_oversized_file_and_goes_on(drops: dict[str, Path]) -> None:
    paths = [str(drops["crystals"]), str(drops["huge"]), str(drops["clear"])]
    start = time.monotonic()
    result = _run(*paths, "--json", "--um-per-px", "4")
    _no_traceback(result)
    assert result.returncode == 1, result.stderr
    lines = [_strict(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert "error" not in lines[0] and "error" not in lines[2]
    error = lines[1]["error"]
    assert str(drops["huge"]) in error and "20000x20000" in error and "50 megapixels" in error
    assert time.monotonic() - start < 60
    # --max-megapixels moves the limit both ways
    tight = _run(str(drops["clear"]), "--json", "--max-megapixels", "0.3")
    assert tight.returncode == 1 and "640x480" in _strict(tight.stdout)["error"]
    loose = _run(str(drops["clear"]), "--json", "--max-megapixels", "0.31")
    assert loose.returncode == 0 and "class" in _strict(loose.stdout)
    for bad in ("0", "-1", "nan", "inf"):
        refused = _run(str(drops["clear"]), "--max-megapixels", bad)
        _no_traceback(refused)
        assert refused.returncode == 2 and "--max-megapixels" in refused.stderr


# ---------------------------------------------------------------------------------------------
# float images
# ---------------------------------------------------------------------------------------------
def _float_drop(tmp_path: Path, name: str, scale: float, poison: float | None) -> Path:
    image, _ = render(random_spec(SEED0, drop_class="crystals", width=640, height=480))
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    values = grey.astype(np.float32) / 255.0 * np.float32(scale)
    if poison is not None:
        values[100:110, 200:210] = poison
    path = tmp_path / name
    assert cv2.imwrite(str(path), values)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.float32  # a real float TIFF
    return path


@pytest.mark.req("KA-BAD-003")
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_float_tiff_with_nan_or_inf_is_refused(tmp_path: Path, poison: float) -> None:
    path = _float_drop(tmp_path, "poisoned.tif", 1.0, poison)
    with pytest.raises(ImageError, match=r"100 NaN or infinite") as e:
        load_image(path)
    assert str(path) in str(e.value)
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_image(path, float_range=(0.0, 1.0))


@pytest.mark.req("KA-BAD-003")
def test_float_tiff_needs_its_range(tmp_path: Path) -> None:
    unit = _float_drop(tmp_path, "unit.tif", 1.0, None)
    assert load_image(unit).dtype == np.uint8  # values in [0, 1]: scaled to 0..255
    counts = _float_drop(tmp_path, "counts.tif", 4095.0, None)
    with pytest.raises(ImageError, match=r"--float-range") as e:
        load_image(counts)
    assert str(counts) in str(e.value)
    scaled = load_image(counts, float_range=(0.0, 4095.0))
    raw = cv2.imread(str(counts), cv2.IMREAD_UNCHANGED)
    assert scaled.dtype == np.uint8
    assert np.abs(scaled.astype(int) - np.rint(raw / 4095.0 * 255.0)).max() <= 1
    np.testing.assert_array_equal(scaled, load_image(unit))  # same picture either way
    with pytest.raises(ImageError, match="outside the declared range"):
        load_image(counts, float_range=(0.0, 1000.0))
    with pytest.raises(ValueError):
        load_image(counts, float_range=(5.0, 1.0))


@pytest.mark.req("KA-BAD-003")
def test_inspect_float_tiffs(tmp_path: Path) -> None:
    nan = _float_drop(tmp_path, "nan.tif", 1.0, math.nan)
    counts = _float_drop(tmp_path, "counts.tif", 4095.0, None)
    result = _run(str(nan), str(counts), "--json")
    _no_traceback(result)
    assert result.returncode == 1
    first, second = (_strict(line) for line in result.stdout.splitlines())
    assert "NaN" in first["error"] and str(nan) in first["error"]
    assert "--float-range" in second["error"]
    ranged = _run(str(counts), "--json", "--float-range", "0:4095")
    assert ranged.returncode == 0, ranged.stderr
    assert _strict(ranged.stdout)["class"] == "crystals"
    for bad in ("5:1", "0", "a:b", "0:inf"):
        refused = _run(str(counts), "--float-range", bad)
        _no_traceback(refused)
        assert refused.returncode == 2 and "--float-range" in refused.stderr


# ---------------------------------------------------------------------------------------------
# overlay folder
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
def test_overlay_onto_a_file_fails_up_front(drops: dict[str, Path], tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for target in (a_file, a_file / "sub"):
        result = _run(str(drops["clear"]), "--json", "--overlay", str(target))
        _no_traceback(result)
        assert result.returncode == 2, result.stderr
        assert "--overlay" in result.stderr and str(target) in result.stderr
        assert result.stdout == ""
    assert a_file.read_text() == "not a folder"


@pytest.mark.req("KA-BAD-003")
def test_one_overlay_that_cannot_be_written_is_that_images_error(
    drops: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "crystals.overlay.png").mkdir(parents=True)  # a folder where the file should go
    paths = [str(drops["crystals"]), str(drops["clear"])]
    result = _run(*paths, "--json", "--overlay", str(out))
    _no_traceback(result)
    assert result.returncode == 1
    first, second = (_strict(line) for line in result.stdout.splitlines())
    assert str(drops["crystals"]) in first["error"] and "overlay" in first["error"]
    assert Path(second["overlay"]).is_file()


# ---------------------------------------------------------------------------------------------
# --um-per-px and finite JSON
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-2"])
def test_bad_scale_is_refused(drops: dict[str, Path], value: str) -> None:
    result = _run(str(drops["clear"]), "--json", f"--um-per-px={value}")
    _no_traceback(result)
    assert result.returncode == 2
    assert "--um-per-px" in result.stderr
    assert result.stdout == ""


@pytest.mark.req("KA-BAD-003")
def test_json_holds_only_finite_numbers(drops: dict[str, Path]) -> None:
    # a finite but enormous scale overflows the crystal areas and lengths to infinity
    result = _run(str(drops["crystals"]), "--json", "--um-per-px", "1e308")
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    for token in ("NaN", "Infinity"):
        assert token not in result.stdout
    record = _strict(result.stdout)
    assert record["count"] >= 1
    assert record["max_length_um"] is None
    assert "max_length_um" in record["non_finite"]
    assert "crystals[0].length_um" in record["non_finite"]
    assert record["crystals"][0]["length_um"] is None
    # the table output says n/a instead of failing
    table = _run(str(drops["crystals"]), "--um-per-px", "1e308")
    _no_traceback(table)
    assert table.returncode == 0 and "n/a" in table.stdout


@pytest.mark.req("KA-BAD-003")
def test_json_line_and_text_replace_non_finite() -> None:
    record = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "x", "e": 2}
    for text in (json_line(record), json_text(record, indent=2)):
        parsed = _strict(text)
        assert parsed["a"] is None and parsed["b"] == [1.0, None, {"c": None}]
        assert parsed["d"] == "x" and parsed["e"] == 2
        assert parsed["non_finite"] == ["a", "b[1]", "b[2].c"]


@pytest.mark.req("KA-BAD-003")
def test_track_plot_that_cannot_be_written_is_an_error_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    series = tmp_path / "cell01"
    series.mkdir()
    image = np.full((120, 160), 120, np.uint8)
    for h in (6, 12):
        cv2.imwrite(str(series / f"cell01_t{h}h.png"), image)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the plot's folder should be", encoding="utf-8")
    for plot in (blocker / "growth.png", tmp_path / "growth.unknown-suffix"):
        result = subprocess.run(
            [
                *KIBOAUTO,
                "inspect",
                "--track",
                str(series),
                "--plot",
                str(plot),
                "--um-per-px",
                "2",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "cannot write the growth plot" in result.stderr
        report = json.loads(result.stdout.splitlines()[-1])
        assert report["plot"] is None
        assert "tracks" in report  # the growth report itself is kept

"""A/B of the serial benchmark: this tree against an earlier commit, alternated in one session.

Machines here are noisy, so a change's cost is only measured against its reference in the same
run, alternating the two. The reference's ``kiboauto``, ``drivers/`` and ``hil/`` are unpacked
from git into a temporary folder and put first on the import path of its runs (its simulators
too: `hil serve` is started by its own benchmark process); its own ``bench/serial_bench.py`` is
run. Prints, per protocol, the median driver/raw-pty ratio of each side and their quotient
(1.0: no cost; 0.9: the change costs 10 % of status transactions per second).

    python bench/serial_ab.py --ref 5b8ff79 [--rounds 6] [--seconds 3] [--protocols newera]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# A module that makes `import kiboauto` find the reference package before the installed one.
PREFER_REF = """
import sys
from importlib.machinery import PathFinder

class _PreferReference:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "kiboauto":
            return PathFinder.find_spec(name, [{root!r}])
        return None

sys.meta_path.insert(0, _PreferReference)
"""


def unpack(ref: str, into: Path) -> tuple[Path, Path]:
    """The reference as an importable package (``kiboauto`` with its drivers and hil inside)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "kiboauto", "drivers", "hil", "bench"],
        check=True,
        capture_output=True,
    ).stdout
    raw = into / "raw"
    raw.mkdir()
    subprocess.run(["tar", "-x", "-C", str(raw)], input=archive, check=True)
    package = into / "pkg"
    package.mkdir()
    (raw / "kiboauto").rename(package / "kiboauto")
    (raw / "drivers").rename(package / "kiboauto" / "drivers")
    (raw / "hil").rename(package / "kiboauto" / "hil")
    site = into / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PREFER_REF.format(root=str(package)), encoding="utf-8")
    return raw / "bench" / "serial_bench.py", site


def one_run(script: Path, env_path: str | None, args: argparse.Namespace) -> dict[str, Any]:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    else:
        env.pop("PYTHONPATH", None)
    # An older bench script may not know --protocols: select through its globals instead.
    code = (
        "import asyncio, json, runpy, sys\n"
        f"m = runpy.run_path({str(script)!r}, run_name='bench')\n"
        f"m['run'].__globals__['PROTOCOLS'] = tuple({args.protocols.split(',')!r})\n"
        "proc, ports = m['start_hil']()\n"
        "try:\n"
        f"    print(json.dumps(asyncio.run(m['run'](ports, {args.seconds!r}))))\n"
        "finally:\n"
        "    proc.terminate(); proc.wait(timeout=15)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=6, help="alternations (each side once)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--protocols", default="newera,cavro,modbus-tc")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "ref": []}
    with tempfile.TemporaryDirectory() as tmp:
        ref_script, ref_site = unpack(args.ref, Path(tmp))
        for n in range(1, args.rounds + 1):
            runs["this"].append(one_run(ROOT / "bench" / "serial_bench.py", None, args))
            runs["ref"].append(one_run(ref_script, str(ref_site), args))
            print(f"round {n}/{args.rounds} done", file=sys.stderr)
    print(f"{'protocol':<10} {'this ratio':>10} {'ref ratio':>10} {'this/ref':>9}  per round")
    for protocol in args.protocols.split(","):
        this = [r[protocol]["ratio_driver_vs_raw"] for r in runs["this"]]
        ref = [r[protocol]["ratio_driver_vs_raw"] for r in runs["ref"]]
        quotient = statistics.median(this) / statistics.median(ref)
        rounds = " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(this, ref, strict=True))
        print(
            f"{protocol:<10} {statistics.median(this):>10.3f} {statistics.median(ref):>10.3f} "
            f"{quotient:>9.3f}  {rounds}"
        )


if __name__ == "__main__":
    main()

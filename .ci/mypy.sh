#!/usr/bin/env bash
# mypy over kiboauto/, drivers/ and hil/ as the installed package sees them.
# drivers/ and hil/ install as kiboauto.drivers and kiboauto.hil (a package-dir mapping that mypy
# cannot follow through an editable install), so type-check a plain copy laid out as installed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$here/kiboauto" "$tmp/kiboauto"
cp -r "$here/drivers" "$tmp/kiboauto/drivers"
cp -r "$here/hil" "$tmp/kiboauto/hil"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
cd "$tmp"
"$py" -m mypy --config-file "$here/pyproject.toml" kiboauto 2>&1 \
  | sed -e "s#^kiboauto/drivers/#drivers/#" -e "s#^kiboauto/hil/#hil/#"
exit "${PIPESTATUS[0]}"

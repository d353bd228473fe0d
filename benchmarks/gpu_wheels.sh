#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels that the serve section of benchmarks/gpu.sh installs on the
# GPU machine (Python 3.12, x86-64, no network): starlette, uvicorn, python-multipart and what they need there
# (anyio, idna, typing_extensions, click, h11; all pure Python). Versions: the ones installed here (those the tests
# run with), else the newest. Then checks, offline, that they install together for Python 3.12.
#
#   bash benchmarks/gpu_wheels.sh     # -> benchmarks/wheels (git ignores it); carry it: carry ["benchmarks/wheels"]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=benchmarks/wheels
PACKAGES=(starlette uvicorn python-multipart)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64)
MAX_MIB=20  # the device tool carries at most 64 MiB with the working tree

requirements=()
for name in "${PACKAGES[@]}"; do
  version=$(python3 -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")
  requirements+=("$name${version:+==$version}")
done
rm -rf "$DEST"
python3 -m pip download -q "${TARGET[@]}" --dest "$DEST" "${requirements[@]}"
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
# the install the GPU machine does (serve_load.py --wheels), resolved for Python 3.12 without an index
python3 -m pip install -q --no-index --find-links "$DEST" "${TARGET[@]}" --target "$check" "${PACKAGES[@]}"
size=$(du -sm "$DEST" | cut -f1)
ls -1 "$DEST"
echo "$(ls "$DEST" | wc -l) wheels, ${size} MiB in $DEST (${requirements[*]}); they install offline for Python 3.12"
if ((size > MAX_MIB)); then
  echo "error: $DEST holds ${size} MiB, over the ${MAX_MIB} MiB the device carry allows it" >&2
  exit 1
fi

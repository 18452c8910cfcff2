#!/usr/bin/env bash
# Pack s3lake and its pinned runtime dependencies as a Python environment for EMR Serverless, which takes
# native packages (pyarrow, pandas, numpy, awscrt) only as a packed environment passed with spark.archives
# (EMR Serverless User Guide, tutorials.html: "Using Python libraries with EMR Serverless"; --py-files
# carries pure Python).
#
#   pack-serverless-venv.sh WHEEL REQUIREMENTS PYTHON_VERSION ARCH OUT.tar.gz
#
# PYTHON_VERSION is the job's Python (3.9, 3.11, 3.13), ARCH the application's (X86_64 or ARM64). pip installs
# the manylinux wheels of that Python and architecture (no compiler, no Docker), so this runs on any
# machine; the archive holds lib/site-packages and bin/python, a launcher that runs the image's own
# python<PYTHON_VERSION> with those packages first on sys.path (the image ships that interpreter, as a
# venv-pack archive also expects). pip's own settings (PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS) apply.
set -euo pipefail

PROG=pack-serverless-venv
if [[ $# -ne 5 ]]; then
  echo "$PROG: usage: pack-serverless-venv.sh WHEEL REQUIREMENTS PYTHON_VERSION ARCH OUT.tar.gz" >&2
  exit 2
fi
WHEEL="$1" REQ="$2" PYV="$3" ARCH="$4" OUT="$5"
PYTHON="${PYTHON:-python3}"
[[ "$PYV" =~ ^3\.[0-9]+$ ]] || { echo "$PROG: PYTHON_VERSION must look like 3.11, got '$PYV'" >&2; exit 2; }
case "$ARCH" in
  X86_64) MACHINE=x86_64 ;;
  ARM64) MACHINE=aarch64 ;;
  *) echo "$PROG: ARCH must be X86_64 or ARM64, got '$ARCH'" >&2; exit 2 ;;
esac

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ENV_DIR="$WORK/env"
mkdir -p "$ENV_DIR/bin" "$ENV_DIR/lib/site-packages"

# pip evaluates environment markers against the interpreter running it, not --python-version: resolve
# the requirements' python_version markers for the target Python first.
"$PYTHON" - "$REQ" "$PYV" >"$WORK/requirements.txt" <<'PY'
import sys
try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
path, version = sys.argv[1:]
for raw in open(path):
    line = raw.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"python_version": version, "python_full_version": version + ".0"}):
        req.marker = None
        print(req)
PY

PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --no-compile --no-deps
  --only-binary=:all: --python-version "$PYV" --implementation cp
  --platform "manylinux2014_$MACHINE" --platform "manylinux_2_28_$MACHINE"
  --target "$ENV_DIR/lib/site-packages")
"${PIP[@]}" -r "$WORK/requirements.txt"
"${PIP[@]}" "$WHEEL"
rm -rf "$ENV_DIR/lib/site-packages/bin"

cat >"$ENV_DIR/bin/python" <<EOF
#!/bin/sh
# s3lake's EMR Serverless environment: the image's python$PYV with this archive's packages first on sys.path.
env_dir="\$(cd "\$(dirname "\$0")/.." && pwd)"
PYTHONPATH="\$env_dir/lib/site-packages\${PYTHONPATH:+:\$PYTHONPATH}"
export PYTHONPATH
exec python$PYV "\$@"
EOF
chmod 755 "$ENV_DIR/bin/python"
ln -s python "$ENV_DIR/bin/python3"
tar -C "$ENV_DIR" -czf "$OUT" .
echo "$PROG: packed $(basename "$WHEEL") for Python $PYV on $ARCH into $OUT"

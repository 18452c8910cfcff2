#!/usr/bin/env bash
# EMR bootstrap action: install the pinned runtime dependencies and the s3lake wheel into a virtualenv
# on this node; spark-env's PYSPARK_PYTHON (conf/emr-configurations-<line>.json) points at its python3.
#
#   install-s3lake.sh WHEEL REQUIREMENTS [PYTHON]     (WHEEL, REQUIREMENTS: an s3:// URL or a local path)
#
# PYTHON is the interpreter the virtualenv is made from, the line's Python that launch_emr.sh --python
# picked: python3.9 or python3.11 on emr-7.x, python3.11 or python3.13 on emr-spark-8.1.x.
# Idempotent: a second run with the same wheel, requirements and Python does nothing. Any failure exits
# non-zero with a "FAILED" line on stderr, so EMR fails the node at bootstrap (the cluster then ends with
# a bootstrap failure) instead of jobs failing later on a half-installed node.
# Environment: S3LAKE_HOME (default /opt/s3lake), S3LAKE_BOOTSTRAP_PYTHON (default python3; PYTHON wins).
set -Eeuo pipefail

PROG=install-s3lake
failed() {
  local rc=$?
  echo "$PROG: FAILED (exit $rc) at line $1: $2" >&2
  exit "$rc"
}
trap 'failed "$LINENO" "$BASH_COMMAND"' ERR

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "$PROG: FAILED: usage: install-s3lake.sh WHEEL REQUIREMENTS [PYTHON]" >&2
  exit 2
fi
WHEEL_SRC="$1"
REQ_SRC="$2"
HOME_DIR="${S3LAKE_HOME:-/opt/s3lake}"
PYTHON="${3:-${S3LAKE_BOOTSTRAP_PYTHON:-python3}}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "$PROG: FAILED: $PYTHON is not installed on this node (pick another --python for this release)" >&2
  exit 2
fi
VENV="$HOME_DIR/venv"

# The bootstrap runs as the hadoop user: create the home with sudo if needed, then own it.
if ! mkdir -p "$HOME_DIR" 2>/dev/null || [[ ! -w "$HOME_DIR" ]]; then
  sudo mkdir -p "$HOME_DIR"
  sudo chown "$(id -u):$(id -g)" "$HOME_DIR"
fi
chmod 755 "$HOME_DIR"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$HOME_DIR/.lock"
  flock 9
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fetch() { # $1 source, $2 destination file
  case "$1" in
    s3://*) aws s3 cp --only-show-errors "$1" "$2" ;;
    *) cp "$1" "$2" ;;
  esac
}
WHEEL="$WORK/$(basename "$WHEEL_SRC")" # pip needs the wheel's own file name
REQ="$WORK/requirements.txt"
fetch "$WHEEL_SRC" "$WHEEL"
fetch "$REQ_SRC" "$REQ"

STAMP="$(cat "$WHEEL" "$REQ" <("$PYTHON" -VV) | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python3" && -f "$HOME_DIR/installed" && "$(cat "$HOME_DIR/installed")" == "$STAMP" ]] &&
  "$VENV/bin/python3" -c 'import s3lake' 2>/dev/null; then
  echo "$PROG: $(basename "$WHEEL") is already installed in $VENV"
  exit 0
fi

rm -f "$HOME_DIR/installed"
if [[ -x "$VENV/bin/python3" && "$("$VENV/bin/python3" -VV 2>&1)" != "$("$PYTHON" -VV 2>&1)" ]]; then
  rm -rf "$VENV" # made from another Python: start over
fi
[[ -x "$VENV/bin/python3" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python3" -m pip --disable-pip-version-check --no-input)
"${PIP[@]}" install --quiet -r "$REQ"
"${PIP[@]}" install --quiet --no-deps --force-reinstall "$WHEEL"
"${PIP[@]}" check
"$VENV/bin/python3" -c 'import s3lake, boto3, pyarrow'
chmod -R a+rX "$VENV"
echo "$STAMP" >"$HOME_DIR/installed"
echo "$PROG: installed $(basename "$WHEEL") into $VENV ($("$VENV/bin/python3" -V 2>&1))"

#!/usr/bin/env bash
# launch_emr.sh: build s3lake from this working tree, upload it under a versioned S3 prefix and run one
# job on Amazon EMR: as a Spark step on a new transient cluster (or --cluster-id, a running one), or as an
# EMR Serverless job run (--serverless APPLICATION_ID, or --serverless-create NAME for a new application).
#
# Two release lines: emr-7.x (7.10.0 and later; Spark 3.5, Python 3.9/3.11; conf/emr-configurations-emr-7.json
# pins EMRFS) and emr-spark-8.1.x (Spark 4.1, Python 3.11/3.13; conf/emr-configurations-emr-spark-8.json, S3A
# with EMR's magic commit protocol). See README "Which line, cluster or Serverless".
#
# Exit status: 0 submitted (or, with --wait, the step COMPLETED / the job run reached SUCCESS); 1 an AWS call
# failed or the step / job run did not succeed; 2 bad input or environment (one line on stderr, nothing uploaded).
# Environment: AWS_* as for the AWS CLI (AWS_ENDPOINT_URL is honoured by the CLI itself);
# PYTHON (default python3) builds the artifacts; S3LAKE_BUILD_CACHE (a directory) keeps wheels and Serverless
# environments built from identical sources; S3LAKE_POLL_SECONDS (default 30) paces --wait.
set -euo pipefail

PROG=launch_emr.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JOBS="copy-in-place anonymize json-to-parquet"
DEFAULT_RELEASE_LABEL="emr-7.14.0"

usage() {
  cat <<'EOF'
usage: ./launch_emr.sh JOB --artifacts s3://bucket/prefix [options] [-- JOB_ARGS...]

  JOB                          copy-in-place | anonymize | json-to-parquet
  --artifacts s3://B/P         where the build is uploaded (under P/s3lake/<version>/); required
  --release-label L            emr-7.14.0 (default; any emr-7.x from 7.10.0) or emr-spark-8.1.0 (8.1.x)
  --python X.Y                 the job's Python: 3.9 (default) or 3.11 on emr-7.x; 3.11 (default) or 3.13
                               on emr-spark-8.1.x
  --log-uri s3://...           cluster or job run logs (default <artifacts>/logs/)
  --tags k=v,...               extra cluster or job run tags
  --wait                       poll until the step / job run ends; exit 1 unless it succeeded
  --dry-run                    print every AWS command it would run; call and change nothing
  -h, --help                   this help
 EMR on EC2 (default: a new transient cluster)
  --cluster-id j-XXXX          add the step to this running cluster instead of creating one
  --instance-type T            primary, core and task instance type (default m6g.xlarge)
  --core-count N               core nodes (default 2)
  --spot-task-count N          Spot task nodes (default 0)
  --subnet-id ID               EC2 subnet
  --security-configuration N   EMR security configuration name
  --ec2-role NAME              EC2 instance profile (default EMR_EC2_DefaultRole; see conf/iam/)
  --service-role NAME          EMR service role (default EMR_DefaultRole)
  --keep-alive                 keep the cluster after the step; it ends after --idle-timeout idle
  --idle-timeout SECONDS       idle auto-termination with --keep-alive (default 3600)
 EMR Serverless
  --serverless APPLICATION_ID  start a job run on this application (state CREATED or STARTED)
  --serverless-create NAME     create a Spark application NAME with --release-label, then run on it
  --execution-role-arn ARN     the job runtime role (required; see conf/iam/emr-serverless-job-runtime.json)
  --architecture A             X86_64 (default) or ARM64, for --serverless-create
  --venv-archive F|s3://...    a packed virtualenv to use instead of building one (spark.archives)
Everything after "--" is passed to the job unchanged.
EOF
}

die() { # one-line error, exit 2
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}
info() { printf '%s: %s\n' "$PROG" "$*" >&2; }
one_line() { tr -s ' \t\r\n' ' ' <"$1" | sed 's/^ *//; s/ *$//'; }
aws_failed() { # $1: what failed, $2: file with the CLI's stderr
  printf '%s: error: %s: %s\n' "$PROG" "$1" "$(one_line "$2")" >&2
  exit 1
}

# Quote a word for a POSIX shell only where needed, so --dry-run output can be pasted back.
shq() {
  if [[ -n "$1" && "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
print_cmd() {
  local sep="" word
  for word in "$@"; do
    printf '%s' "$sep"
    shq "$word"
    sep=" "
  done
  printf '\n'
}

# ---------------------------------------------------------------------------------------------------
# Arguments
JOB="" ARTIFACTS="" CLUSTER_ID="" RELEASE_LABEL="$DEFAULT_RELEASE_LABEL" INSTANCE_TYPE="m6g.xlarge"
CORE_COUNT=2 SPOT_TASK_COUNT=0 SUBNET_ID="" LOG_URI="" SECURITY_CONFIGURATION=""
EC2_ROLE="EMR_EC2_DefaultRole" SERVICE_ROLE="EMR_DefaultRole" KEEP_ALIVE=0 IDLE_TIMEOUT=3600
WAIT=0 DRY_RUN=0 TAGS="" PY_VERSION=""
SERVERLESS_APP="" SERVERLESS_NAME="" EXECUTION_ROLE_ARN="" ARCHITECTURE="" VENV_ARCHIVE=""
CREATE_ONLY=()  # options that shape a new cluster or application: refused with --cluster-id / --serverless
CLUSTER_ONLY=() # options of the EMR on EC2 path: refused with --serverless*
SERVERLESS_ONLY=() # options of the Serverless path: refused without --serverless*
RELEASE_LABEL_SET=0
IDLE_TIMEOUT_SET=0
JOB_ARGS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  opt="$1"
  value=""
  if [[ "$opt" == --*=* ]]; then
    value="${opt#*=}"
    opt="${opt%%=*}"
    set -- "$opt" "$value" "${@:2}"
  fi
  case "$opt" in
    -h | --help) usage; exit 0 ;;
    --) shift; JOB_ARGS=("$@"); break ;;
    --artifacts) need_value "$@"; ARTIFACTS="$2"; shift 2 ;;
    --cluster-id) need_value "$@"; CLUSTER_ID="$2"; CLUSTER_ONLY+=("$1"); shift 2 ;;
    --release-label) need_value "$@"; RELEASE_LABEL="$2"; RELEASE_LABEL_SET=1; CREATE_ONLY+=("$1"); shift 2 ;;
    --python) need_value "$@"; PY_VERSION="$2"; CREATE_ONLY+=("$1"); shift 2 ;;
    --instance-type) need_value "$@"; INSTANCE_TYPE="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --core-count) need_value "$@"; CORE_COUNT="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --spot-task-count) need_value "$@"; SPOT_TASK_COUNT="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --subnet-id) need_value "$@"; SUBNET_ID="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --log-uri) need_value "$@"; LOG_URI="$2"; CREATE_ONLY+=("$1"); shift 2 ;;
    --security-configuration)
      need_value "$@"; SECURITY_CONFIGURATION="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --ec2-role) need_value "$@"; EC2_ROLE="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --service-role) need_value "$@"; SERVICE_ROLE="$2"; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --idle-timeout)
      need_value "$@"; IDLE_TIMEOUT="$2"; IDLE_TIMEOUT_SET=1; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift 2 ;;
    --tags) need_value "$@"; TAGS="$2"; CREATE_ONLY+=("$1"); shift 2 ;;
    --keep-alive) KEEP_ALIVE=1; CREATE_ONLY+=("$1"); CLUSTER_ONLY+=("$1"); shift ;;
    --serverless) need_value "$@"; SERVERLESS_APP="$2"; shift 2 ;;
    --serverless-create) need_value "$@"; SERVERLESS_NAME="$2"; shift 2 ;;
    --execution-role-arn) need_value "$@"; EXECUTION_ROLE_ARN="$2"; SERVERLESS_ONLY+=("$1"); shift 2 ;;
    --architecture) need_value "$@"; ARCHITECTURE="$2"; SERVERLESS_ONLY+=("$1"); shift 2 ;;
    --venv-archive) need_value "$@"; VENV_ARCHIVE="$2"; SERVERLESS_ONLY+=("$1"); shift 2 ;;
    --wait) WAIT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -*) die "unknown option $opt (see --help)" ;;
    *)
      [[ -z "$JOB" ]] || die "unexpected argument '$opt' (job arguments go after --)"
      JOB="$opt"
      shift
      ;;
  esac
done

[[ -n "$JOB" ]] || die "missing JOB (one of: ${JOBS// /, })"
case " $JOBS " in
  *" $JOB "*) ;;
  *) die "unknown job '$JOB' (expected one of: ${JOBS// /, })" ;;
esac
[[ -n "$ARTIFACTS" ]] || die "missing --artifacts s3://bucket/prefix (where the build is uploaded)"
[[ "$ARTIFACTS" =~ ^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$ ]] ||
  die "--artifacts must be s3://bucket[/prefix], got '$ARTIFACTS'"
ARTIFACTS="${ARTIFACTS%/}"
ARTIFACTS_BUCKET="${ARTIFACTS#s3://}"
ARTIFACTS_BUCKET="${ARTIFACTS_BUCKET%%/*}"
for pair in "core-count:$CORE_COUNT" "spot-task-count:$SPOT_TASK_COUNT" "idle-timeout:$IDLE_TIMEOUT"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die "--${pair%%:*} must be a whole number, got '${pair#*:}'"
done
((10#$IDLE_TIMEOUT >= 60 && 10#$IDLE_TIMEOUT <= 604800)) || die "--idle-timeout must be 60..604800 seconds"
((IDLE_TIMEOUT_SET == 0 || KEEP_ALIVE == 1)) || die "--idle-timeout needs --keep-alive"
[[ -z "$LOG_URI" || "$LOG_URI" == s3://?* ]] || die "--log-uri must be s3://..., got '$LOG_URI'"

# How the job runs: "cluster" (new), "step" (--cluster-id), "serverless" (existing application) or
# "serverless-create".
MODE=cluster
if [[ -n "$SERVERLESS_APP" && -n "$SERVERLESS_NAME" ]]; then
  die "--serverless and --serverless-create exclude each other"
elif [[ -n "$SERVERLESS_APP$SERVERLESS_NAME" ]]; then
  ((${#CLUSTER_ONLY[@]} == 0)) || die "${CLUSTER_ONLY[0]} is an EMR on EC2 option; it does not apply with EMR Serverless"
  if [[ -n "$SERVERLESS_APP" ]]; then
    MODE=serverless
    [[ "$SERVERLESS_APP" =~ ^[0-9a-zA-Z]{8,64}$ ]] ||
      die "--serverless takes an application id (letters and digits), got '$SERVERLESS_APP'"
    [[ -z "$ARCHITECTURE" ]] || die "--architecture only applies with --serverless-create (the application has one)"
  else
    MODE=serverless-create
    [[ "$SERVERLESS_NAME" =~ ^[A-Za-z0-9._/#-]{1,64}$ ]] ||
      die "--serverless-create NAME must be 1-64 of A-Za-z0-9._/#-, got '$SERVERLESS_NAME'"
  fi
  [[ -n "$EXECUTION_ROLE_ARN" ]] ||
    die "EMR Serverless needs --execution-role-arn arn:aws:iam::ACCOUNT:role/NAME (the job runtime role)"
  [[ "$EXECUTION_ROLE_ARN" =~ ^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$ ]] ||
    die "--execution-role-arn must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME), got '$EXECUTION_ROLE_ARN'"
  ARCHITECTURE="${ARCHITECTURE:-X86_64}"
  [[ "$ARCHITECTURE" == X86_64 || "$ARCHITECTURE" == ARM64 ]] ||
    die "--architecture must be X86_64 or ARM64, got '$ARCHITECTURE'"
  if [[ -n "$VENV_ARCHIVE" && "$VENV_ARCHIVE" != s3://?* ]]; then
    [[ -f "$VENV_ARCHIVE" ]] || die "--venv-archive $VENV_ARCHIVE is not a file"
    [[ "$VENV_ARCHIVE" == *.tar.gz || "$VENV_ARCHIVE" == *.tgz ]] || die "--venv-archive must be a .tar.gz"
  fi
else
  ((${#SERVERLESS_ONLY[@]} == 0)) || die "${SERVERLESS_ONLY[0]} only applies with --serverless or --serverless-create"
  if [[ -n "$CLUSTER_ID" ]]; then
    MODE=step
    [[ "$CLUSTER_ID" =~ ^j-[A-Z0-9]+$ ]] || die "--cluster-id must look like j-XXXXXXXXXXXXX, got '$CLUSTER_ID'"
    ((${#CREATE_ONLY[@]} == 0)) || die "${CREATE_ONLY[0]} only applies when creating a cluster, not with --cluster-id"
  fi
fi
if [[ "$MODE" == serverless ]]; then
  # An existing application has its release label (and so its line); --python still picks the interpreter.
  for o in "${CREATE_ONLY[@]+"${CREATE_ONLY[@]}"}"; do
    [[ " --python --tags --release-label --log-uri " == *" $o "* ]] ||
      die "$o only applies when creating a cluster or application, not with --serverless"
  done
fi

# The release line: its configuration, its Pythons. Sources: emr-s3a-migrate.html (S3A from 7.10.0),
# emr-spark810-release.html (emr-spark-8.1.0: Spark 4.1.1, Python 3.11 and 3.13).
release_line() { # $1 label -> sets LINE, PYTHONS (default first); returns 1 if unsupported
  if [[ "$1" =~ ^emr-7\.([0-9]+)\.[0-9]+$ ]] && ((10#${BASH_REMATCH[1]} >= 10)); then
    LINE=emr-7 PYTHONS="3.9 3.11"
  elif [[ "$1" =~ ^emr-spark-8\.1\.[0-9]+$ ]]; then
    LINE=emr-spark-8 PYTHONS="3.11 3.13"
  else
    return 1
  fi
}
unsupported_label() {
  die "unsupported release label '$1' (supported: emr-7.x from emr-7.10.0, default $DEFAULT_RELEASE_LABEL; emr-spark-8.1.x)"
}
choose_python() { # after release_line: validate --python against the line
  local default="${PYTHONS%% *}"
  if [[ -z "$PY_VERSION" ]]; then
    PY_VERSION="$default"
  elif [[ " $PYTHONS " != *" $PY_VERSION "* ]]; then
    die "--python $PY_VERSION is not a Python of $LINE (use one of: ${PYTHONS// /, })"
  fi
}
LINE="" PYTHONS=""
if [[ "$MODE" != step ]]; then
  # With --serverless this is checked again against the application's own label once it is read.
  release_line "$RELEASE_LABEL" || unsupported_label "$RELEASE_LABEL"
  [[ "$MODE" == serverless && $RELEASE_LABEL_SET == 0 ]] || choose_python
fi

USER_TAGS=()
if [[ -n "$TAGS" ]]; then
  IFS=',' read -r -a USER_TAGS <<<"$TAGS"
  for tag in "${USER_TAGS[@]}"; do
    [[ "$tag" =~ ^[^=]+=.*$ ]] || die "--tags wants k=v,k=v; '$tag' has no '='"
  done
fi

JOB_FILE="${JOB//-/_}.py"
[[ -f "$ROOT/jobs/$JOB_FILE" ]] || die "job entry point jobs/$JOB_FILE is missing from $ROOT"
[[ -f "$ROOT/bootstrap/install-s3lake.sh" && -f "$ROOT/bootstrap/requirements.txt" ]] ||
  die "bootstrap/install-s3lake.sh or bootstrap/requirements.txt is missing from $ROOT"
for line_conf in "$ROOT"/conf/emr-configurations-emr-7.json "$ROOT"/conf/emr-configurations-emr-spark-8.json; do
  [[ -f "$line_conf" ]] || die "${line_conf#"$ROOT"/} is missing from $ROOT"
done

command -v aws >/dev/null 2>&1 ||
  die "the AWS CLI ('aws') is not on PATH; install it (pip install awscli, or AWS CLI v2)"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is not on PATH (set PYTHON=...); it builds the wheel"

REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
[[ -n "$REGION" ]] || REGION="$(aws configure get region 2>/dev/null || true)"
REGION="${REGION:-us-east-1}"
AWS=(aws --region "$REGION")

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/launch_emr.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
ERR="$STAGE/aws.err"

# ---------------------------------------------------------------------------------------------------
# Credentials (a read-only call; skipped by --dry-run, which calls nothing)
if ((DRY_RUN)); then
  echo "# dry run: nothing is uploaded or created; the AWS CLI commands it would run:"
  print_cmd "${AWS[@]}" sts get-caller-identity --query Arn --output text
else
  if ! caller="$("${AWS[@]}" sts get-caller-identity --query Arn --output text 2>"$ERR")"; then
    if grep -qiE 'unable to locate credentials|could not be found|no credentials' "$ERR"; then
      die "no AWS credentials found: configure a profile, AWS_PROFILE or AWS_ACCESS_KEY_ID ($(one_line "$ERR"))"
    fi
    die "the AWS credentials do not work: $(one_line "$ERR")"
  fi
  info "calling AWS as $caller in $REGION"
fi

# ---------------------------------------------------------------------------------------------------
# EMR Serverless: the application must exist in state CREATED or STARTED, be a Spark application and run a
# supported release label; its label decides the line. Checked before anything is built or uploaded.
APP_STATE=""
if [[ "$MODE" == serverless ]]; then
  GET_APP=("${AWS[@]}" emr-serverless get-application --application-id "$SERVERLESS_APP"
    --query '[application.state,application.releaseLabel,application.type,application.architecture]' --output text)
  if ((DRY_RUN)); then
    print_cmd "${GET_APP[@]}"
    echo "# (the release line comes from the application's label; this dry run assumes $RELEASE_LABEL)"
    choose_python
  else
    described="$("${GET_APP[@]}" 2>"$ERR")" || die "cannot read EMR Serverless application $SERVERLESS_APP: $(one_line "$ERR")"
    read -r APP_STATE app_label app_type app_arch <<<"$described"
    case "$APP_STATE" in
      CREATED | STARTED) ;;
      *) die "EMR Serverless application $SERVERLESS_APP is $APP_STATE (a job run needs CREATED or STARTED)" ;;
    esac
    [[ "${app_type^^}" == SPARK ]] || die "EMR Serverless application $SERVERLESS_APP is a $app_type application, not Spark"
    if ((RELEASE_LABEL_SET)) && [[ "$RELEASE_LABEL" != "$app_label" ]]; then
      die "EMR Serverless application $SERVERLESS_APP runs $app_label, not --release-label $RELEASE_LABEL"
    fi
    RELEASE_LABEL="$app_label"
    release_line "$RELEASE_LABEL" || unsupported_label "$RELEASE_LABEL"
    choose_python
    [[ "$app_arch" == X86_64 || "$app_arch" == ARM64 ]] && ARCHITECTURE="$app_arch"
    info "EMR Serverless application $SERVERLESS_APP: $APP_STATE, $RELEASE_LABEL, $ARCHITECTURE"
  fi
fi
CONFIGURATIONS="$ROOT/conf/emr-configurations-$LINE.json"

# ---------------------------------------------------------------------------------------------------
# Roles named on the command line exist before anything is uploaded or created (iam:GetRole). A caller
# that may not read IAM gets one warning and goes on: the service checks the role when the run starts.
check_role() { # $1 option, $2 role ARN
  local name="${2##*/}"
  local get=("${AWS[@]}" iam get-role --role-name "$name" --query Role.Arn --output text)
  if ((DRY_RUN)); then
    print_cmd "${get[@]}"
    return
  fi
  "${get[@]}" >/dev/null 2>"$ERR" && return
  if grep -q NoSuchEntity "$ERR"; then
    die "$1 $2: no such IAM role in this account (nothing was uploaded or created)"
  elif grep -qiE 'AccessDenied|not authorized' "$ERR"; then
    info "warning: cannot check that $1 $2 exists (iam:GetRole denied); going on"
  else
    die "cannot check $1 $2: $(one_line "$ERR")"
  fi
}
if [[ "$MODE" == serverless || "$MODE" == serverless-create ]]; then
  check_role --execution-role-arn "$EXECUTION_ROLE_ARN"
fi

# ---------------------------------------------------------------------------------------------------
# Build: the wheel (bootstrap pip-installs it), a zip of the package (spark-submit --py-files), the job
# entry point, bootstrap/ and conf/, laid out as they are uploaded.
OUT="$STAGE/out"
mkdir -p "$OUT/jobs" "$STAGE/src"
cp "$ROOT/jobs/$JOB_FILE" "$OUT/jobs/"
cp -R "$ROOT/bootstrap" "$ROOT/conf" "$OUT/"
find "$OUT" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
cp "$ROOT/setup.py" "$STAGE/src/"
[[ ! -f "$ROOT/pyproject.toml" ]] || cp "$ROOT/pyproject.toml" "$STAGE/src/"
cp -R "$ROOT/lib" "$STAGE/src/"
find "$STAGE/src" \( -name __pycache__ -o -name '*.egg-info' -o -name '*.pyc' \) -prune -exec rm -rf {} +

# S3LAKE_BUILD_CACHE=DIR reuses a wheel built from byte-identical sources (keyed by their SHA-256).
SRC_HASH="$("$PYTHON" - "$STAGE/src" <<'PY'
import hashlib, os, sys
root, digest = sys.argv[1], hashlib.sha256()
for base, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(base, name)
        digest.update(os.path.relpath(path, root).encode() + b"\0" + open(path, "rb").read() + b"\0")
print(digest.hexdigest())
PY
)"
CACHED="${S3LAKE_BUILD_CACHE:+$S3LAKE_BUILD_CACHE/$SRC_HASH}"
if [[ -n "$CACHED" ]] && compgen -G "$CACHED/s3lake-*.whl" >/dev/null; then
  cp "$CACHED"/s3lake-*.whl "$OUT/"
else
  info "building the s3lake wheel"
  # Offline when setuptools and wheel are importable; otherwise pip fetches them for an isolated build.
  PIP_WHEEL=("$PYTHON" -m pip wheel --quiet --no-deps --disable-pip-version-check -w "$OUT")
  if "$PYTHON" -c 'import setuptools, wheel' >/dev/null 2>&1; then
    PIP_WHEEL+=(--no-build-isolation)
  fi
  (cd "$STAGE/src" && "${PIP_WHEEL[@]}" . >"$STAGE/build.log" 2>&1) ||
    die "building the wheel failed: $(tail -n 3 "$STAGE/build.log" | tr -s '\n' ' ')"
  if [[ -n "$CACHED" ]]; then
    mkdir -p "$CACHED.tmp.$$"
    cp "$OUT"/s3lake-*.whl "$CACHED.tmp.$$/"
    if ! mv -T "$CACHED.tmp.$$" "$CACHED" 2>/dev/null; then rm -rf "$CACHED.tmp.$$"; fi # lost a race: fine
  fi
fi
WHEELS=("$OUT"/s3lake-*.whl)
[[ -f "${WHEELS[0]}" ]] || die "building the wheel produced no s3lake-*.whl"
WHEEL="$(basename "${WHEELS[0]}")"
VERSION="${WHEEL#s3lake-}"
VERSION="${VERSION%%-*}"
PYZIP="s3lake-$VERSION.zip"
"$PYTHON" - "$STAGE/src/lib" "$OUT/$PYZIP" <<'PY'
import os, sys, zipfile
lib, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
    for base, dirs, files in os.walk(os.path.join(lib, "s3lake")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".pyc"):
                path = os.path.join(base, name)
                zf.write(path, os.path.relpath(path, lib))
PY

SHA="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)"
if [[ -n "$SHA" ]] && ! GIT_OPTIONAL_LOCKS=0 git -C "$ROOT" diff-index --quiet HEAD -- 2>/dev/null; then
  SHA="$SHA-dirty"
fi
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
BUILD_ID="$VERSION-$STAMP${SHA:+-g$SHA}"
PREFIX="$ARTIFACTS/s3lake/$BUILD_ID"
"$PYTHON" - "$OUT/build-info.json" "$BUILD_ID" "$VERSION" "${SHA:-unknown}" "$JOB" <<'PY'
import json, sys
dest, build_id, version, sha, job = sys.argv[1:]
json.dump({"build": build_id, "version": version, "git": sha, "job": job}, open(dest, "w"), indent=2)
PY

# ---------------------------------------------------------------------------------------------------
# The EMR request pieces, built as JSON by Python so that no job argument is ever re-split or re-quoted.
LOG_URI="${LOG_URI:-$ARTIFACTS/logs/}"
# conf/ data files (rules, schemas) ride along with --files, so YARN puts them in the driver's and the
# executors' working directory: a job argument can name them by file name (--schema firehose-events.json).
SPARK_FILES="$("$PYTHON" - "$OUT/conf" "$PREFIX/conf" <<'PY'
import os, sys
root, url = sys.argv[1:]
found = {}
for base, dirs, files in os.walk(root):
    rel_base = os.path.relpath(base, root)
    dirs[:] = sorted(d for d in dirs if not (rel_base == "." and d == "iam"))
    for name in sorted(files):
        if rel_base == "." and (name.startswith("emr-configurations") or name.startswith("README")):
            continue
        if name in found or "," in name or any(ch.isspace() for ch in name):
            sys.exit(f"conf/{os.path.join(rel_base, name)}: --files needs unique file names without commas or spaces")
        found[name] = url + "/" + os.path.normpath(os.path.join(rel_base, name))
print(",".join(found[n] for n in sorted(found)))
PY
)" || die "cannot pass conf/ files to spark-submit --files"
STEP_ARGS=(spark-submit --deploy-mode cluster)
[[ -z "$SPARK_FILES" ]] || STEP_ARGS+=(--files "$SPARK_FILES")
STEP_ARGS+=(--py-files "$PREFIX/$PYZIP" "$PREFIX/jobs/$JOB_FILE")
if ((${#JOB_ARGS[@]})); then STEP_ARGS+=("${JOB_ARGS[@]}"); fi
if [[ -n "$CLUSTER_ID" || $KEEP_ALIVE == 1 ]]; then
  ON_FAILURE=CONTINUE # never tear down a cluster the step does not own
else
  ON_FAILURE=TERMINATE_CLUSTER
fi
STEPS_JSON="$("$PYTHON" - "s3lake $JOB" "$ON_FAILURE" "${STEP_ARGS[@]}" <<'PY'
import json, sys
name, on_failure, *args = sys.argv[1:]
print(json.dumps([{"Type": "CUSTOM_JAR", "Name": name, "ActionOnFailure": on_failure,
                   "Jar": "command-runner.jar", "Args": args}]))
PY
)"

print_location() { # $1 cluster id, $2 step id, $3 log uri (may be empty)
  local logs="${3:-}"
  logs="${logs/#s3n:\/\//s3://}"
  echo "artifacts: $PREFIX/"
  echo "cluster:   $1"
  echo "step:      $2"
  echo "console:   https://console.aws.amazon.com/emr/home?region=$REGION#/clusterDetails/$1"
  if [[ -n "$logs" && "$logs" != None ]]; then
    logs="${logs%/}"
    STDERR_AT="$logs/$1/steps/$2/stderr.gz"
    echo "logs:      $logs/$1/"
    echo "stderr:    $STDERR_AT"
  else
    STDERR_AT="(nowhere: the cluster has no log URI)"
    echo "logs:      (the cluster has no log URI)"
  fi
}

UPLOAD_PROBE=("${AWS[@]}" s3 cp --only-show-errors "$OUT/build-info.json" "$PREFIX/build-info.json")
UPLOAD=("${AWS[@]}" s3 cp --only-show-errors --recursive --exclude build-info.json "$OUT/" "$PREFIX/")

# ---------------------------------------------------------------------------------------------------
# EMR Serverless: a job run whose entry point is the uploaded job. Its native dependencies (pyarrow,
# pandas, awscrt) cannot ride in --py-files, so the job's Python environment travels as a packed archive
# through spark.archives, and PYSPARK_PYTHON points into it, as the EMR Serverless User Guide prescribes
# ("Using Python libraries with EMR Serverless"). conf/ data files go with --files as on a cluster.
if [[ "$MODE" == serverless* ]]; then
  VENV_NAME="s3lake-$VERSION-python$PY_VERSION-${ARCHITECTURE,,}.tar.gz"
  if [[ "$VENV_ARCHIVE" == s3://* ]]; then
    VENV_URL="$VENV_ARCHIVE"
  elif [[ -n "$VENV_ARCHIVE" ]]; then
    cp "$VENV_ARCHIVE" "$OUT/$VENV_NAME"
    VENV_URL="$PREFIX/$VENV_NAME"
  else
    VENV_URL="$PREFIX/$VENV_NAME"
    PACK=("$ROOT/bootstrap/pack-serverless-venv.sh" "$OUT/$WHEEL" "$ROOT/bootstrap/requirements.txt" "$PY_VERSION"
      "$ARCHITECTURE" "$OUT/$VENV_NAME")
    VENV_KEY="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(" ".join(sys.argv[1:]).encode()
      + open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/bootstrap/requirements.txt" "$SRC_HASH" \
      "$PY_VERSION" "$ARCHITECTURE")"
    VENV_CACHED="${S3LAKE_BUILD_CACHE:+$S3LAKE_BUILD_CACHE/venv-$VENV_KEY.tar.gz}"
    if ((DRY_RUN)); then
      echo "# then it packs the job's Python environment (pip, manylinux wheels; no AWS call):"
      echo "#   $(print_cmd "${PACK[@]}")"
    elif [[ -n "$VENV_CACHED" && -f "$VENV_CACHED" ]]; then
      cp "$VENV_CACHED" "$OUT/$VENV_NAME"
    else
      info "packing the Python $PY_VERSION $ARCHITECTURE environment for EMR Serverless"
      PYTHON="$PYTHON" "${PACK[@]}" >"$STAGE/pack.log" 2>&1 ||
        die "packing the EMR Serverless environment failed: $(tail -n 3 "$STAGE/pack.log" | tr -s '\n' ' ')"
      if [[ -n "$VENV_CACHED" ]]; then
        cp "$OUT/$VENV_NAME" "$VENV_CACHED.tmp.$$" && mv -f "$VENV_CACHED.tmp.$$" "$VENV_CACHED"
      fi
    fi
  fi
  SUBMIT_PARAMS=()
  [[ -z "$SPARK_FILES" ]] || SUBMIT_PARAMS+=(--files "$SPARK_FILES")
  SUBMIT_PARAMS+=(--conf "spark.archives=$VENV_URL#environment"
    --conf spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON=./environment/bin/python
    --conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python
    --conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python)
  for word in "${SUBMIT_PARAMS[@]}"; do
    [[ "$word" != *[[:space:]]* ]] || die "EMR Serverless splits sparkSubmitParameters on spaces: '$word' has one"
  done
  JOB_DRIVER="$("$PYTHON" - "$PREFIX/jobs/$JOB_FILE" "${SUBMIT_PARAMS[*]}" "${JOB_ARGS[@]+"${JOB_ARGS[@]}"}" <<'PY'
import json, sys
entry, params, *args = sys.argv[1:]
driver = {"entryPoint": entry, "sparkSubmitParameters": params}
if args:
    driver["entryPointArguments"] = args
print(json.dumps({"sparkSubmit": driver}))
PY
)"
  # The line's spark-defaults apply to the job run (YARN-only keys dropped); Glue is the metastore as on a
  # cluster (spark-hive-site there, a spark.hadoop.* key here); logs go to --log-uri.
  OVERRIDES="$("$PYTHON" - "$CONFIGURATIONS" "$LOG_URI" <<'PY'
import json, sys
path, log_uri = sys.argv[1:]
conf = {c["Classification"]: c for c in json.load(open(path))}
props = {k: v for k, v in conf["spark-defaults"]["Properties"].items() if not k.startswith("spark.yarn.")}
for key, value in conf.get("spark-hive-site", {}).get("Properties", {}).items():
    props["spark.hadoop." + key] = value
print(json.dumps({
    "applicationConfiguration": [{"classification": "spark-defaults", "properties": props}],
    "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": log_uri}},
}))
PY
)"
  RUN_TAGS="$("$PYTHON" - "s3lake:job=$JOB" "s3lake:build=$BUILD_ID" "${USER_TAGS[@]+"${USER_TAGS[@]}"}" <<'PY'
import json, sys
print(json.dumps(dict(tag.split("=", 1) for tag in sys.argv[1:])))
PY
)"
  CREATE_APP=("${AWS[@]}" emr-serverless create-application --type SPARK --name "$SERVERLESS_NAME"
    --release-label "$RELEASE_LABEL" --architecture "$ARCHITECTURE" --query applicationId --output text)
  APP_ID="${SERVERLESS_APP:-APPLICATION_ID}"
  start_cmd() { # $1 application id
    START=("${AWS[@]}" emr-serverless start-job-run --application-id "$1" --execution-role-arn "$EXECUTION_ROLE_ARN"
      --name "s3lake $JOB $BUILD_ID" --job-driver "$JOB_DRIVER" --configuration-overrides "$OVERRIDES"
      --tags "$RUN_TAGS" --query jobRunId --output text)
  }
  GET_RUN_STATE=(emr-serverless get-job-run --job-run-id)
  if ((DRY_RUN)); then
    [[ "$MODE" != serverless-create ]] || print_cmd "${CREATE_APP[@]}"
    print_cmd "${UPLOAD_PROBE[@]}"
    print_cmd "${UPLOAD[@]}"
    start_cmd "$APP_ID"
    print_cmd "${START[@]}"
    if ((WAIT)); then
      echo "# then every ${S3LAKE_POLL_SECONDS:-30}s until the job run ends:"
      print_cmd "${AWS[@]}" emr-serverless get-job-run --application-id "$APP_ID" --job-run-id JOB_RUN_ID \
        --query '[jobRun.state,jobRun.stateDetails]' --output text
    fi
    exit 0
  fi

  info "uploading to $PREFIX/"
  "${UPLOAD_PROBE[@]}" 2>"$ERR" >/dev/null || die "cannot write to $PREFIX/: $(one_line "$ERR")"
  if [[ "$MODE" == serverless-create ]]; then
    APP_ID="$("${CREATE_APP[@]}" 2>"$ERR")" || aws_failed "emr-serverless create-application" "$ERR"
    info "created EMR Serverless application $APP_ID ($RELEASE_LABEL, $ARCHITECTURE)"
    for _ in $(seq 1 60); do # CREATING -> CREATED takes seconds to minutes
      APP_STATE="$("${AWS[@]}" emr-serverless get-application --application-id "$APP_ID" \
        --query application.state --output text 2>"$ERR")" || aws_failed "emr-serverless get-application" "$ERR"
      [[ "$APP_STATE" == CREATING ]] || break
      sleep "${S3LAKE_POLL_SECONDS:-30}"
    done
    [[ "$APP_STATE" == CREATED || "$APP_STATE" == STARTED ]] ||
      { info "application $APP_ID is $APP_STATE, not CREATED"; exit 1; }
  fi
  "${UPLOAD[@]}" 2>"$ERR" >/dev/null || die "cannot write to $PREFIX/: $(one_line "$ERR")"
  start_cmd "$APP_ID"
  RUN_ID="$("${START[@]}" 2>"$ERR")" || aws_failed "emr-serverless start-job-run" "$ERR"
  logs="${LOG_URI%/}/applications/$APP_ID/jobs/$RUN_ID"
  echo "artifacts:   $PREFIX/"
  echo "application: $APP_ID"
  echo "job run:     $RUN_ID"
  echo "release:     $RELEASE_LABEL (Python $PY_VERSION, $ARCHITECTURE)"
  echo "logs:        $logs/"
  echo "stderr:      $logs/SPARK_DRIVER/stderr.gz"
  ((WAIT)) || exit 0
  poll="${S3LAKE_POLL_SECONDS:-30}"
  last=""
  while :; do
    sleep "$poll" # a run never ends the moment it is submitted
    described="$("${AWS[@]}" "${GET_RUN_STATE[@]}" "$RUN_ID" --application-id "$APP_ID" \
      --query '[jobRun.state,jobRun.stateDetails]' --output text 2>"$ERR")" || aws_failed "get-job-run $RUN_ID" "$ERR"
    state="${described%%[[:space:]]*}"
    details="${described#"$state"}"
    details="$(printf '%s' "$details" | tr -s ' \t\r\n' ' ' | sed 's/^ *//; s/ *$//')"
    [[ "$details" != None ]] || details=""
    [[ "$state" == "$last" ]] || info "job run $RUN_ID is $state"
    last="$state"
    case "$state" in
      SUCCESS) exit 0 ;;
      FAILED | CANCELLED)
        info "job run $RUN_ID $state${details:+ ($details)}; its stderr: $logs/SPARK_DRIVER/stderr.gz"
        exit 1
        ;;
    esac
  done
fi

if [[ -n "$CLUSTER_ID" ]]; then
  DESCRIBE=("${AWS[@]}" emr describe-cluster --cluster-id "$CLUSTER_ID"
    --query '[Cluster.Status.State,Cluster.LogUri]' --output text)
  SUBMIT=("${AWS[@]}" emr add-steps --cluster-id "$CLUSTER_ID" --steps "$STEPS_JSON"
    --query 'StepIds[0]' --output text)
else
  INSTANCE_GROUPS="$("$PYTHON" - "$INSTANCE_TYPE" "$CORE_COUNT" "$SPOT_TASK_COUNT" <<'PY'
import json, sys
itype, core, task = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
groups = [{"Name": "Primary", "InstanceGroupType": "MASTER", "InstanceType": itype, "InstanceCount": 1}]
if core:
    groups.append({"Name": "Core", "InstanceGroupType": "CORE", "InstanceType": itype, "InstanceCount": core})
if task:
    groups.append({"Name": "Task (Spot)", "InstanceGroupType": "TASK", "InstanceType": itype,
                   "InstanceCount": task, "BidPrice": "OnDemandPrice"})
print(json.dumps(groups))
PY
)"
  EC2_ATTRIBUTES="$("$PYTHON" - "$EC2_ROLE" "$SUBNET_ID" <<'PY'
import json, sys
role, subnet = sys.argv[1:]
print(json.dumps({"InstanceProfile": role, **({"SubnetId": subnet} if subnet else {})}))
PY
)"
  BOOTSTRAP_JSON="$("$PYTHON" - "$PREFIX" "$WHEEL" "python$PY_VERSION" <<'PY'
import json, sys
prefix, wheel, python = sys.argv[1:]
print(json.dumps([{"Name": "install-s3lake", "Path": f"{prefix}/bootstrap/install-s3lake.sh",
                   "Args": [f"{prefix}/{wheel}", f"{prefix}/bootstrap/requirements.txt", python]}]))
PY
)"
  CLUSTER_TAGS=()
  for default in "s3lake:job=$JOB" "s3lake:build=$BUILD_ID"; do
    keep=1
    for tag in "${USER_TAGS[@]+"${USER_TAGS[@]}"}"; do
      [[ "${tag%%=*}" != "${default%%=*}" ]] || keep=0
    done
    ((keep == 0)) || CLUSTER_TAGS+=("$default")
  done
  CLUSTER_TAGS+=("${USER_TAGS[@]+"${USER_TAGS[@]}"}")
  SUBMIT=("${AWS[@]}" emr create-cluster
    --name "s3lake $JOB $BUILD_ID"
    --release-label "$RELEASE_LABEL"
    --applications Name=Spark
    --configurations "file://$CONFIGURATIONS"
    --instance-groups "$INSTANCE_GROUPS"
    --ec2-attributes "$EC2_ATTRIBUTES"
    --service-role "$SERVICE_ROLE"
    --log-uri "$LOG_URI"
    --bootstrap-actions "$BOOTSTRAP_JSON"
    --steps "$STEPS_JSON")
  if ((KEEP_ALIVE)); then
    SUBMIT+=(--no-auto-terminate --auto-termination-policy "IdleTimeout=$IDLE_TIMEOUT")
  else
    SUBMIT+=(--auto-terminate)
  fi
  [[ -z "$SECURITY_CONFIGURATION" ]] || SUBMIT+=(--security-configuration "$SECURITY_CONFIGURATION")
  SUBMIT+=(--tags "${CLUSTER_TAGS[@]}" --query ClusterId --output text)
fi

# ---------------------------------------------------------------------------------------------------
if ((DRY_RUN)); then
  print_cmd "${UPLOAD_PROBE[@]}"
  print_cmd "${UPLOAD[@]}"
  if [[ -n "$CLUSTER_ID" ]]; then
    print_cmd "${DESCRIBE[@]}"
    print_cmd "${SUBMIT[@]}"
  else
    print_cmd "${SUBMIT[@]}"
    print_cmd "${AWS[@]}" emr list-steps --cluster-id CLUSTER_ID --query 'Steps[0].Id' --output text
  fi
  if ((WAIT)); then
    echo "# then every ${S3LAKE_POLL_SECONDS:-30}s until the step ends:"
    print_cmd "${AWS[@]}" emr describe-step --cluster-id "${CLUSTER_ID:-CLUSTER_ID}" --step-id STEP_ID \
      --query Step.Status.State --output text
  fi
  exit 0
fi

info "uploading to $PREFIX/"
"${UPLOAD_PROBE[@]}" 2>"$ERR" >/dev/null || die "cannot write to $PREFIX/: $(one_line "$ERR")"
"${UPLOAD[@]}" 2>"$ERR" >/dev/null || die "cannot write to $PREFIX/: $(one_line "$ERR")"

if [[ -n "$CLUSTER_ID" ]]; then
  described="$("${DESCRIBE[@]}" 2>"$ERR")" || aws_failed "describe-cluster $CLUSTER_ID" "$ERR"
  read -r state cluster_logs <<<"$described"
  case "$state" in
    TERMINATING | TERMINATED | TERMINATED_WITH_ERRORS) die "cluster $CLUSTER_ID is $state" ;;
  esac
  STEP_ID="$("${SUBMIT[@]}" 2>"$ERR")" || aws_failed "emr add-steps" "$ERR"
else
  CLUSTER_ID="$("${SUBMIT[@]}" 2>"$ERR")" || aws_failed "emr create-cluster" "$ERR"
  STEP_ID="$("${AWS[@]}" emr list-steps --cluster-id "$CLUSTER_ID" --query 'Steps[0].Id' --output text \
    2>"$ERR")" || aws_failed "emr list-steps" "$ERR"
  cluster_logs="$LOG_URI"
fi
print_location "$CLUSTER_ID" "$STEP_ID" "$cluster_logs"
((WAIT)) || exit 0

# ---------------------------------------------------------------------------------------------------
# --wait: the step's state decides; a cluster that ended under an unfinished step is a failure too.
poll="${S3LAKE_POLL_SECONDS:-30}"
last=""
ended=0
while :; do
  state="$("${AWS[@]}" emr describe-step --cluster-id "$CLUSTER_ID" --step-id "$STEP_ID" \
    --query Step.Status.State --output text 2>"$ERR")" || aws_failed "describe-step $STEP_ID" "$ERR"
  [[ "$state" == "$last" ]] || info "step $STEP_ID is $state"
  last="$state"
  case "$state" in
    COMPLETED) exit 0 ;;
    FAILED | CANCELLED | INTERRUPTED)
      reason="$("${AWS[@]}" emr describe-step --cluster-id "$CLUSTER_ID" --step-id "$STEP_ID" \
        --query Step.Status.FailureDetails.Reason --output text 2>/dev/null || true)"
      [[ "$reason" != None ]] || reason=""
      info "step $STEP_ID $state${reason:+ ($reason)}; its stderr: $STDERR_AT"
      exit 1
      ;;
  esac
  cstate="$("${AWS[@]}" emr describe-cluster --cluster-id "$CLUSTER_ID" --query Cluster.Status.State \
    --output text 2>"$ERR")" || aws_failed "describe-cluster $CLUSTER_ID" "$ERR"
  case "$cstate" in
    TERMINATED | TERMINATED_WITH_ERRORS)
      if ((ended)); then
        info "cluster $CLUSTER_ID $cstate before step $STEP_ID finished ($state); its stderr: $STDERR_AT"
        exit 1
      fi
      ended=1 # read the step once more: it may have ended just before its cluster did
      continue
      ;;
  esac
  sleep "$poll"
done

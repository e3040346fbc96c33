#!/usr/bin/env bash
# `make run`: the main job end to end on the default configuration (SQLite
# under data/, RabbitMQ on localhost, the sandbox gateway instead of Alipay).
#
#   data/ (0700) and its PII key (0600) if absent -> migrate -> sandbox (background) -> enqueue examples/contacts.jsonl
#   -> run --until-idle -> status -> a few results of the batch and its summary
#
# The example file plants a few invalid records, so `enqueue` exits 2 after
# naming them; the demo shows that and goes on. Any other failure fails the
# demo. Re-runnable: the example's fixed transaction_ids are already final on a
# second run, so the worker acks them without calling the gateway again.
#
# The sandbox listens on a free port (not the default 8480, which a test or a
# second demo may hold); the worker is pointed at it through
# ZHIMA__UPSTREAM__GATEWAY_URL. The sandbox is stopped on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/debug/zhima-worker}
EXAMPLE=${EXAMPLE:-examples/contacts.jsonl}
SANDBOX_START_S=${SANDBOX_START_S:-30}

step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: $*" >&2; exit 1; }

[[ -x $BIN ]] || fail "$BIN is missing; run \`make build\` (or \`make run\`)"
# The SQLite database lives in data/ (the worker refuses a missing directory
# rather than guess); private to this user, like the files in it.
mkdir -p -m 700 data
# The PII key (pii.hmac_key_path): made once, kept across runs (every replica
# must share it, so the worker never makes one itself).
PII_KEY=${ZHIMA__PII__HMAC_KEY_PATH:-data/pii_hmac.key}
if [[ ! -e $PII_KEY ]]; then
  (umask 077 && head -c 32 /dev/urandom >"$PII_KEY")
  echo "made the PII key $PII_KEY (32 random bytes, mode 600)"
fi
# The default key is the published test key (0644 on a fresh clone): not secret.
[[ -n ${ZHIMA__UPSTREAM__PRIVATE_KEY_PATH:-} ]] || export ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE=true

step "zhima-worker migrate"
"$BIN" migrate

step "zhima-worker sandbox (background)"
sandbox_out=$(mktemp)
sandbox_pid=
stop_sandbox() {
  if [[ -n $sandbox_pid ]] && kill -0 "$sandbox_pid" 2>/dev/null; then
    kill -TERM "$sandbox_pid" 2>/dev/null || true
    wait "$sandbox_pid" 2>/dev/null || true
  fi
  rm -f "$sandbox_out"
}
trap stop_sandbox EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$BIN" sandbox --listen 127.0.0.1:0 >"$sandbox_out" &
sandbox_pid=$!

deadline=$((SECONDS + SANDBOX_START_S))
until address=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$sandbox_out") && [[ -n $address ]]; do
  kill -0 "$sandbox_pid" 2>/dev/null || fail "the sandbox exited before listening"
  ((SECONDS < deadline)) || fail "the sandbox did not print 'listening on' within ${SANDBOX_START_S} s"
  sleep 0.1
done
echo "sandbox listening on $address (pid $sandbox_pid)"
export ZHIMA__UPSTREAM__GATEWAY_URL="$address/gateway.do"

step "zhima-worker enqueue $EXAMPLE"
status=0
enqueue_out=$(mktemp)
"$BIN" enqueue "$EXAMPLE" | tee "$enqueue_out" || status=${PIPESTATUS[0]}
batch_id=$(sed -n 's/.*; batch_id \([A-Za-z0-9_-]*\)$/\1/p' "$enqueue_out")
rm -f "$enqueue_out"
case $status in
  0) ;;
  2) echo "(exit 2: the invalid records above were planted in $EXAMPLE and were not published)" ;;
  *) fail "enqueue failed with exit $status" ;;
esac

step "zhima-worker run --until-idle"
# One log line per job would bury the summary: show the worker's lifecycle
# and any warning (set ZHIMA__LOG__FILTER=info to see every job).
ZHIMA__LOG__FILTER=${ZHIMA__LOG__FILTER:-warn,zhima_worker::app=info,zhima_worker::cluster=info} \
  "$BIN" run --until-idle

step "zhima-worker status"
"$BIN" status

[[ -n $batch_id ]] || fail "enqueue printed no batch id"
step "zhima-worker results --batch $batch_id --format csv (a few of them)"
# The event fields of every final job of this run's batch (see README
# "Getting results"); a consumer would get the same as events on the
# zhima.results exchange. The columns before error_message hold no comma in
# the example, so plain awk can pick them.
results_csv=$(mktemp)
"$BIN" results --batch "$batch_id" --format csv >"$results_csv"
awk -F, 'NR == 1 || ($4 == "succeeded" && ++shown <= 5) { print $2 "," $4 "," $6 "," $7 "," $8 }' \
  "$results_csv" | column -t -s,
echo "..."
echo
echo "batch $batch_id:"
awk -F, 'NR > 1 { n[$4]++; total++ }
  END { printf "  %d jobs final: %d succeeded, %d failed\n", total, n["succeeded"], n["failed"] }' \
  "$results_csv"
rm -f "$results_csv"

echo
echo "demo: done"

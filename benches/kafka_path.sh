#!/usr/bin/env bash
# The Kafka path end to end, side by side with the same data from a file, in one session:
#   benches/kafka_path.sh [CUSTOMERS] [EPOCHS]      (defaults 20000 12: 20,000 routers x 20 features x 1 hour)
# Starts a Tansu broker (in-memory storage) on a free loopback port, generates a fleet, `produce`s it, then runs
#   file  -> file     (the reference),
#   kafka -> kafka    (consume the backlog, changes/summaries/dead letters back to Kafka, offsets committed),
# three times each, and prints one JSON line per run: messages in per second (excluding the --until-idle
# tail) and the per-epoch wall seconds at the sink (an epoch's end-to-end time while the backlog drains).
# Needs: target/release/fleetwatch built with --features kafka; FLEETWATCH_TANSU (scripts/test installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-20000}; E=${2:-12}; IDLE=2
. benches/kafka_broker.sh
MSGS=$(($(wc -l <"$W/fleet/telemetry.jsonl") - 1))
echo "produce: $($B produce --from "$W/fleet/telemetry.jsonl" --to "$K/tele")"
now() { python3 -c 'import time; print(time.time())'; }
report() { # name start end output-file-or-recorded-topic
  python3 - "$1" "$2" "$3" "$4" "$MSGS" "$IDLE" <<'PY'
import json, statistics, sys
name, t0, t1, path, msgs, idle = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
secs = t1 - t0
walls = []
for line in open(path):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    v = v.get("value", v) if isinstance(v, dict) else v
    if isinstance(v, dict) and v.get("type") == "summary":
        walls.append(v["wall_seconds"])
busy = secs - (idle if name.startswith("kafka") else 0)
print(json.dumps({"run": name, "messages": msgs, "seconds": round(secs, 3), "busy_seconds": round(busy, 3),
                  "messages_per_s": round(msgs / busy), "epochs": len(walls),
                  "epoch_seconds_median": round(statistics.median(walls[1:] or walls), 3),
                  "epoch_seconds_max": round(max(walls[1:] or walls), 3)}))
PY
}
for i in 1 2 3; do
  t0=$(now)
  $B run --input "$W/fleet/telemetry.jsonl" --output "$W/file.jsonl" --workers 2 2>/dev/null
  report file "$t0" "$(now)" "$W/file.jsonl"
  t0=$(now)
  $B run --input "$K/tele" --output "$K/out$i" --workers 2 --until-idle $IDLE --group-id bench$i 2>/dev/null
  t1=$(now)
  $B record --from "$K/out$i" --out "$W/out$i.jsonl" --until-idle 2 >/dev/null
  report kafka "$t0" "$t1" "$W/out$i.jsonl"
done

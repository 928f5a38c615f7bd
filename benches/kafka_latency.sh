#!/usr/bin/env bash
# Live-rate latency of the Kafka path: the producer sends a generated fleet at a fixed rate (as routers would,
# in event-time order), the pipeline runs Kafka -> Kafka beside it, and for each epoch we measure
#   latency = (broker timestamp of the epoch's summary) - (moment the producer sent the first log that closes
#             the epoch, i.e. the first log of its partition with ts >= epoch end + allowed lateness)
# using the producer's pacing (message n is due at start + n / rate).
#   benches/kafka_latency.sh [CUSTOMERS] [EPOCHS] [RATE]     (defaults 20000 12 40000)
# Needs: target/release/fleetwatch built with --features kafka; FLEETWATCH_TANSU.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-20000}; E=${2:-12}; RATE=${3:-40000}
. benches/kafka_broker.sh
# create the topic first so the pipeline can start before the data
head -1 "$W/fleet/telemetry.jsonl" >"$W/empty.jsonl"
$B produce --from "$W/empty.jsonl" --to "$K/tele" >/dev/null
$B run --input "$K/tele" --output "$K/out" --workers 2 --until-idle 5 2>/dev/null & RUN=$!
sleep 2
T0=$(python3 -c 'import time; print(time.time())')
$B produce --from "$W/fleet/telemetry.jsonl" --to "$K/tele" --rate "$RATE" >"$W/produce.json"
wait $RUN
$B record --from "$K/out" --out "$W/out.jsonl" --until-idle 2 >/dev/null
python3 - "$W/fleet/telemetry.jsonl" "$W/out.jsonl" "$T0" "$RATE" <<'PY'
import json, statistics, sys
tele, out, t0, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
L, LATE = 300, 60
first_ts_at = []  # per message n: (partition, ts)
with open(tele) as f:
    next(f)
    for n, line in enumerate(f):
        v = json.loads(line)
        first_ts_at.append((v["partition"], v["value"]["ts"]))
lat = []
for line in open(out):
    v = json.loads(line)
    if "value" not in v or v["value"].get("type") != "summary":
        continue
    e = v["value"]["epoch"]
    close = (e + 1) * L + LATE
    # the epoch closes when the last partition passes `close`: the latest, over partitions, of each one's first
    # message at or after it (or the end of the stream)
    firsts = {}
    for n, (p, ts) in enumerate(first_ts_at):
        if ts >= close and p not in firsts:
            firsts[p] = n
    parts = {p for p, _ in first_ts_at}
    n_close = max(firsts.get(p, len(first_ts_at)) for p in parts)
    sent = t0 + n_close / rate
    lat.append((e, v["timestamp"] / 1000.0 - sent))
body = [l for e, l in lat[:-1]]  # the last epoch closes only at the end of the stream
print(json.dumps({"epochs": len(lat), "rate_msgs_per_s": rate,
                  "latency_s_median": round(statistics.median(body), 3),
                  "latency_s_max": round(max(body), 3),
                  "latency_s": [round(l, 3) for l in body]}))
PY

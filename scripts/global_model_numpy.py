#!/usr/bin/env python3
"""The global model's inference in numpy, for a side-by-side cost figure (BENCHMARKS.md, "The global model").

Reads a fleetwatch weights file (safetensors, F32) without any ML library, runs the same leave-one-out
network as `model::global::Network::forward` over batches of random customers, and prints the time per
customer (median of --rounds), to set beside benches/kernels.rs `global_model` (the Rust kernel, one customer
at a time, with the per-series calibration).

usage: scripts/global_model_numpy.py dataflows/home-wifi.safetensors [--customers 200000] [--rounds 5]
"""
import argparse, json, struct, time

import numpy as np


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    data = b[8 + n :]
    meta = header.pop("__metadata__", {})
    t = {}
    for name, h in header.items():
        s, e = h["data_offsets"]
        t[name] = np.frombuffer(data[s:e], dtype="<f4").reshape(h["shape"])
    return meta, t


def forward(t, x, f):
    """x: (B, 2F+4) → ẑ: (B, F), each output without its own feature's inputs."""
    w, b, v, c = t["hidden.weight"], t["hidden.bias"], t["out.weight"], t["out.bias"]
    a = x @ w.T + b  # (B, H)
    own = x[:, :f, None] * w[:, :f].T[None] + x[:, f : 2 * f, None] * w[:, f : 2 * f].T[None]  # (B, F, H)
    u = np.maximum(a[:, None, :] - own, 0.0)
    return (u * v[None]).sum(axis=2) + c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    meta, t = load(a.weights)
    f = len(meta["features"].split(","))
    rng = np.random.default_rng(1)
    x = np.zeros((a.customers, 2 * f + 4), dtype=np.float32)
    x[:, :f] = np.clip(rng.standard_normal((a.customers, f)), -6, 6)
    x[:, f : 2 * f] = 1.0
    phase = rng.uniform(0, 2 * np.pi, a.customers)
    x[:, 2 * f], x[:, 2 * f + 1], x[:, 2 * f + 2], x[:, 2 * f + 3] = np.cos(phase), np.sin(phase), 1.0, 0.0
    times = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for s in range(0, a.customers, a.batch):
            forward(t, x[s : s + a.batch], f)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({
        "numpy": np.__version__,
        "customers": a.customers,
        "batch": a.batch,
        "seconds_median": med,
        "ns_per_customer": med / a.customers * 1e9,
        "hidden": int(t["hidden.bias"].shape[0]),
        "features": f,
    }))


if __name__ == "__main__":
    main()

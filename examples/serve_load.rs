//! Load for `run --serve` / `bench --serve`: a fixed request rate from a real HTTP client (ureq, keep-alive
//! connections), open loop — each request has a scheduled send time and its latency counts from then, so a
//! slow answer delays the requests behind it in the numbers too (no coordinated omission).
//!
//! ```text
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 --rate 1000 --seconds 30 \
//!     --customers 2000000 [--anomalies-share 0.1] [--token-file FILE]
//! ```
//!
//! Requests: `GET /customers/cust-NNNNNNN` for customers drawn uniformly from the generator's ids, and a
//! share of `GET /anomalies?limit=100`. Prints one JSON object: requests, answers by status, latency
//! percentiles (ms) and the rate achieved. It waits for `/health` to report a view before starting.

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests per second, all threads together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Customer ids are drawn from cust-0000000 .. cust-(N-1).
    #[arg(long)]
    customers: u64,
    /// Share of requests that list open alerts instead of asking for a customer.
    #[arg(long, default_value_t = 0.1)]
    anomalies_share: f64,
    /// Client threads (each a keep-alive connection).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Give up waiting for the server's first view after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    wait: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = match &args.token_file {
        Some(p) => Some(std::fs::read_to_string(p)?.trim().to_string()),
        None => None,
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(4)
        .build();
    // Wait until the pipeline has published a view (the first epoch closed).
    let waited = Instant::now();
    loop {
        let ready = agent
            .get(&format!("{}/health", args.url))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .is_some_and(|b| b.contains("\"newest\""));
        if ready {
            break;
        }
        if waited.elapsed().as_secs_f64() > args.wait {
            anyhow::bail!("no view at {}/health after {} s", args.url, args.wait);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let threads = args.threads.max(1);
    let interval = Duration::from_secs_f64(threads as f64 / args.rate);
    let per_thread = (args.rate * args.seconds / threads as f64).round() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let agent = agent.clone();
            let url = args.url.clone();
            let token = token.clone();
            let (customers, share) = (args.customers.max(1), args.anomalies_share);
            std::thread::spawn(move || {
                // The client shares the pipeline's 2 cores here: it asks for short time slices as the
                // server does, so that it reads each answer when it comes (a client on its own host would
                // not wait behind the workers at all).
                fleetwatch::serving::short_time_slices();
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut latencies = Vec::with_capacity(per_thread as usize);
                let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
                // Threads start staggered inside one interval.
                let offset = interval.mul_f64(t as f64 / threads as f64);
                for i in 0..per_thread {
                    let due = start + offset + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let path = if (next() % 10_000) as f64 / 10_000.0 < share {
                        "/anomalies?limit=100".to_string()
                    } else {
                        format!("/customers/cust-{:07}", next() % customers)
                    };
                    let mut req = agent.get(&format!("{url}{path}"));
                    if let Some(t) = &token {
                        req = req.set("Authorization", &format!("Bearer {t}"));
                    }
                    let status = match req.call() {
                        Ok(r) => {
                            let s = r.status();
                            let _ = r.into_string();
                            s
                        }
                        Err(ureq::Error::Status(s, r)) => {
                            let _ = r.into_string();
                            s
                        }
                        Err(_) => 0,
                    };
                    latencies.push(Instant::now().duration_since(due).as_secs_f64() * 1e3);
                    *statuses.entry(status).or_default() += 1;
                }
                (latencies, statuses)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for h in handles {
        let (l, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        all.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        all[((all.len() - 1) as f64 * p).round() as usize]
    };
    let report = serde_json::json!({
        "requests": all.len(),
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "rate_requested": args.rate,
        "rate_achieved": all.len() as f64 / elapsed,
        "latency_ms": {
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

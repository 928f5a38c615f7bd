//! Kafka at the edges (feature `kafka`, crate `rdkafka` with its bundled librdkafka): `produce` pushes a
//! recorded topic into a Kafka topic (the load generator), `record` captures a Kafka topic into the
//! recorded-topic format that `run --input FILE` replays.
//!
//! Addresses are `kafka://HOST:PORT/TOPIC`. A recorded topic keeps, per message, its partition, offset,
//! timestamp (ms), key and value; `produce` sends each record to its own partition (the topic is created with
//! the file's partition count when it does not exist) with its own key and timestamp, through an idempotent
//! producer, so `record` of what `produce` sent gives every partition's messages back in the same order.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::kafka_properties::KafkaProperties;
use crate::sources::RecordedHeader;

/// What can go wrong talking to Kafka or reading and writing the files.
#[derive(Debug, thiserror::Error)]
pub enum KafkaIoError {
    #[error("{0:?} is not kafka://HOST:PORT/TOPIC")]
    Address(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Broker(String),
}

/// A Kafka cluster and how to talk to it: the bootstrap brokers (`HOST:PORT[,HOST:PORT...]`) and the
/// operator's librdkafka properties (TLS, SASL, ...), applied to every client made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers {
    pub bootstrap: String,
    pub properties: KafkaProperties,
}

impl Brokers {
    /// Brokers without extra properties (plaintext, no authentication).
    pub fn plain(bootstrap: impl Into<String>) -> Brokers {
        Brokers {
            bootstrap: bootstrap.into(),
            properties: KafkaProperties::default(),
        }
    }

    /// The same brokers with `properties`.
    pub fn with_properties(self, properties: KafkaProperties) -> Brokers {
        Brokers { properties, ..self }
    }
}

impl std::fmt::Display for Brokers {
    /// The bootstrap list only: what names the cluster in messages (never the properties).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.bootstrap)
    }
}

/// A parsed `kafka://HOST:PORT/TOPIC[,TOPIC...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAddress {
    pub brokers: Brokers,
    pub topics: Vec<String>,
}

impl KafkaAddress {
    pub fn parse(s: &str) -> Result<KafkaAddress, KafkaIoError> {
        let bad = || KafkaIoError::Address(s.to_string());
        let rest = s.strip_prefix("kafka://").ok_or_else(bad)?;
        let (brokers, topics) = rest.split_once('/').ok_or_else(bad)?;
        let topics: Vec<String> = topics
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let valid_topic = |t: &String| {
            t.len() <= 249
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        };
        if brokers.is_empty() || !brokers.contains(':') || topics.is_empty() {
            return Err(bad());
        }
        if !topics.iter().all(valid_topic) {
            return Err(bad());
        }
        Ok(KafkaAddress {
            brokers: Brokers::plain(brokers),
            topics,
        })
    }

    /// The one topic of an address that must name exactly one.
    pub fn topic(&self) -> Result<&str, KafkaIoError> {
        match self.topics.as_slice() {
            [t] => Ok(t),
            _ => Err(KafkaIoError::Address(format!(
                "kafka://{}/{} (exactly one topic expected)",
                self.brokers,
                self.topics.join(",")
            ))),
        }
    }
}

/// One line of a recorded topic, borrowed.
#[derive(Deserialize)]
struct Envelope<'a> {
    partition: i32,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default, borrow)]
    key: Option<&'a str>,
    #[serde(borrow)]
    value: &'a RawValue,
}

/// Counts delivery failures reported by the broker.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!("delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What `produce` did.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ProduceReport {
    pub messages: u64,
    /// Lines that are not a recorded-topic record, sent as they are (value = the line) to the partition of
    /// the line before them: the pipeline dead-letters them.
    pub raw_lines: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub partitions: u32,
    pub seconds: f64,
}

/// A client's configuration: the brokers, fleetwatch's defaults, the client's own settings `own` (what
/// its role needs), then the operator's properties ([`crate::kafka_properties`]: they override the
/// defaults and the role's tunables; the keys fleetwatch must own were refused when they were resolved).
pub(crate) fn client_config(brokers: &Brokers, own: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &brokers.bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000");
    for (k, v) in own {
        c.set(*k, *v);
    }
    for (k, v) in brokers.properties.pairs() {
        c.set(k, v);
    }
    // librdkafka's own debug contexts (e.g. `fetch,consumer`), logged at debug level (RUST_LOG=debug).
    if let Ok(d) = std::env::var("FLEETWATCH_KAFKA_DEBUG") {
        c.set("debug", d)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    c
}

/// A request to the brokers failed: the error, with what librdkafka reported meanwhile on the client's
/// main queue — an authentication refusal, a broker that closed the connection — which no request
/// returns (a refused SASL handshake surfaces only as a timed-out request otherwise).
fn unreachable(
    brokers: &Brokers,
    consumer: &BaseConsumer<ErrorsNoted>,
    e: KafkaError,
) -> KafkaIoError {
    let mut reported: Vec<String> = Vec::new();
    let mut note = |r: String| {
        if !reported.contains(&r) {
            reported.push(r);
        }
    };
    for _ in 0..64 {
        match consumer.poll(Duration::ZERO) {
            Some(Err(r)) => note(r.to_string()),
            Some(Ok(_)) => {}
            None => break,
        }
    }
    if let Ok(mut logged) = consumer.context().errors.lock() {
        for r in logged.drain(..) {
            note(r);
        }
    }
    let mut text = format!("cannot reach the brokers {}: {e}", brokers.bootstrap);
    if !reported.is_empty() {
        text.push_str("; the client reported: ");
        text.push_str(&reported.join("; "));
    }
    KafkaIoError::Broker(text)
}

/// A consumer context that logs like rdkafka's default one (through `tracing`) and also keeps the
/// error-level log lines (a refused SASL handshake is reported only as one), for [`unreachable`].
#[derive(Default)]
struct ErrorsNoted {
    errors: std::sync::Mutex<Vec<String>>,
}

impl ClientContext for ErrorsNoted {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error)
            && let Ok(mut e) = self.errors.lock()
            && e.len() < 16
        {
            e.push(log_message.to_string());
        }
        DefaultClientContext.log(level, fac, log_message);
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorsNoted {}

/// Checks that the brokers answer a metadata request (with the run's properties: authentication, TLS).
pub fn check_reachable(brokers: &Brokers) -> Result<(), KafkaIoError> {
    let consumer: BaseConsumer<ErrorsNoted> =
        client_config(brokers, &[]).create_with_context(ErrorsNoted::default())?;
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| unreachable(brokers, &consumer, e))?;
    Ok(())
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub fn ensure_topic(brokers: &Brokers, topic: &str, partitions: u32) -> Result<(), KafkaIoError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[]).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(topic, partitions.max(1) as i32, TopicReplication::Fixed(1));
    let results = match futures_executor::block_on(admin.create_topics([&new], &opts)) {
        Ok(r) => r,
        Err(e) => {
            // The admin client reports nothing but a timeout when the brokers refuse it: ask plainly
            // for the reason, and fall back to its error if the brokers do answer.
            check_reachable(brokers)?;
            return Err(e.into());
        }
    };
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(KafkaIoError::Broker(format!("create topic {t}: {e}"))),
        }
    }
    Ok(())
}

/// The partition count of a topic (from the broker's metadata).
pub fn partition_count(brokers: &Brokers, topic: &str) -> Result<u32, KafkaIoError> {
    let consumer: BaseConsumer<ErrorsNoted> =
        client_config(brokers, &[]).create_with_context(ErrorsNoted::default())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| unreachable(brokers, &consumer, e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| KafkaIoError::Broker(format!("no metadata for topic {topic}")))?;
    if let Some(e) = t.error() {
        return Err(KafkaIoError::Broker(format!("topic {topic}: {e:?}")));
    }
    Ok(t.partitions().len() as u32)
}

/// `fleetwatch produce --from FILE --to kafka://HOST:PORT/TOPIC [--rate MSGS_PER_S]`.
pub fn produce(
    from: &Path,
    to: &KafkaAddress,
    rate: Option<f64>,
) -> Result<ProduceReport, KafkaIoError> {
    let topic = to.topic()?;
    let io = |source| KafkaIoError::Io {
        path: from.display().to_string(),
        source,
    };
    let file = std::fs::File::open(from).map_err(io)?;
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file);
    let mut first = Vec::new();
    lines.read_until(b'\n', &mut first).map_err(io)?;
    let header: Option<RecordedHeader> = first
        .starts_with(RecordedHeader::MARK)
        .then(|| serde_json::from_slice(trim_newline(&first)).ok())
        .flatten();
    ensure_topic(
        &to.brokers,
        topic,
        header.as_ref().map_or(1, |h| h.partitions),
    )?;
    let partitions = partition_count(&to.brokers, topic)?;
    let producer: BaseProducer<Deliveries> = client_config(
        &to.brokers,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("queue.buffering.max.messages", "200000"),
        ],
    )
    .create_with_context(Deliveries::default())?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut report = ProduceReport {
        partitions,
        ..ProduceReport::default()
    };
    let mut last_partition = 0i32;
    let mut pending: Option<Vec<u8>> = (header.is_none() && !first.is_empty()).then_some(first);
    let mut buf = Vec::new();
    loop {
        let line = match pending.take() {
            Some(l) => l,
            None => {
                buf.clear();
                if lines.read_until(b'\n', &mut buf).map_err(io)? == 0 {
                    break;
                }
                std::mem::take(&mut buf)
            }
        };
        let text = trim_newline(&line);
        if text.is_empty() {
            continue;
        }
        let env: Option<Envelope<'_>> = serde_json::from_slice(text).ok();
        let (partition, key, value, ts) = match &env {
            Some(e) => (e.partition, e.key, e.value.get().as_bytes(), e.timestamp),
            None => {
                report.raw_lines += 1;
                match lenient_envelope(text) {
                    Some(l) => (l.partition, Some(l.key), l.value, Some(l.timestamp)),
                    None => (last_partition, None, text, None),
                }
            }
        };
        last_partition = partition;
        let mut rec: BaseRecord<'_, str, [u8], ()> = BaseRecord::to(topic).payload(value);
        if partition >= 0 && (partition as u32) < partitions {
            rec = rec.partition(partition);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(t) = ts {
            rec = rec.timestamp(t);
        }
        let mut rec = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    producer.poll(Duration::from_millis(10));
                    rec = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        report.messages += 1;
        producer.poll(Duration::ZERO);
        if let Some(r) = rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(report.messages as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if tty && report.messages % 100_000 == 0 {
            eprint!(
                "\rproduced {} messages ({:.0}/s)",
                report.messages,
                report.messages as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
    producer.flush(Duration::from_secs(60))?;
    if tty {
        eprintln!();
    }
    let ctx = producer.context();
    report.acknowledged = ctx.acked.load(Ordering::Relaxed);
    report.failed = ctx.failed.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    if report.failed > 0 || report.acknowledged != report.messages {
        return Err(KafkaIoError::Broker(format!(
            "{} of {} messages were not acknowledged",
            report.messages - report.acknowledged.min(report.messages),
            report.messages
        )));
    }
    Ok(report)
}

/// The parts of a line in the canonical recorded layout whose value is not valid JSON
/// (`{"partition":P,"offset":O,"timestamp":T,"key":"K","value":V}` with a broken V): its partition,
/// timestamp, key and the value's bytes as they are, so the pipeline sees the same broken value it would
/// have seen in the file.
fn lenient_envelope(line: &[u8]) -> Option<Loose<'_>> {
    fn number<'a>(rest: &'a [u8], field: &[u8]) -> Option<(i64, &'a [u8])> {
        let rest = rest.strip_prefix(field)?;
        let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let v = std::str::from_utf8(rest.get(..n)?).ok()?.parse().ok()?;
        Some((v, &rest[n..]))
    }
    let (partition, rest) = number(line, b"{\"partition\":")?;
    let (_, rest) = number(rest, b",\"offset\":")?;
    let (ts, rest) = number(rest, b",\"timestamp\":")?;
    let rest = rest.strip_prefix(b",\"key\":\"")?;
    let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    let key = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end + 1..].strip_prefix(b",\"value\":")?;
    let value = rest.strip_suffix(b"}").unwrap_or(rest);
    Some(Loose {
        partition: i32::try_from(partition).ok()?,
        timestamp: ts,
        key,
        value,
    })
}

/// A record whose value is not valid JSON, taken apart by [`lenient_envelope`].
#[derive(Debug, PartialEq)]
struct Loose<'a> {
    partition: i32,
    timestamp: i64,
    key: &'a str,
    value: &'a [u8],
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// What `record` did.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct RecordReport {
    pub messages: u64,
    pub partitions: u32,
    pub seconds: f64,
}

/// `fleetwatch record --from kafka://HOST:PORT/TOPIC --out FILE [--until-idle S]`: reads every partition from
/// its beginning and writes each message as a recorded-topic line, in the order they arrive, until no message
/// came for `until_idle`.
pub fn record(
    from: &KafkaAddress,
    out: &Path,
    until_idle: Duration,
) -> Result<RecordReport, KafkaIoError> {
    let topic = from.topic()?;
    let partitions = partition_count(&from.brokers, topic)?;
    let group = format!("fleetwatch-record-{}", std::process::id());
    let consumer: BaseConsumer = client_config(
        &from.brokers,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ],
    )
    .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let io = |source| KafkaIoError::Io {
        path: out.display().to_string(),
        source,
    };
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out).map_err(io)?);
    let header = serde_json::to_string(&RecordedHeader::new(topic, partitions))
        .map_err(|e| KafkaIoError::Broker(e.to_string()))?;
    writeln!(w, "{header}").map_err(io)?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut report = RecordReport {
        partitions,
        ..RecordReport::default()
    };
    let mut last = Instant::now();
    let mut line = Vec::with_capacity(1024);
    while last.elapsed() < until_idle {
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Broker restarts, leader moves: librdkafka reconnects and resumes by itself.
                tracing::warn!("kafka consumer: {e}");
                continue;
            }
        };
        recorded_line(&mut line, &m);
        w.write_all(&line).map_err(io)?;
        report.messages += 1;
        last = Instant::now();
        if tty && report.messages % 100_000 == 0 {
            eprint!("\rrecorded {} messages", report.messages);
        }
    }
    w.flush().map_err(io)?;
    if tty {
        eprintln!();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes a consumed message as one recorded-topic line (with its newline) into `line`: the layout `record`
/// captures and `run --input FILE` replays, and what the live Kafka source parses, so both decide alike.
pub(crate) fn recorded_line<M: Message>(line: &mut Vec<u8>, m: &M) {
    line.clear();
    // (writes into a Vec<u8> cannot fail)
    let _ = write!(
        line,
        "{{\"partition\":{},\"offset\":{}",
        m.partition(),
        m.offset()
    );
    if let Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) = m.timestamp() {
        let _ = write!(line, ",\"timestamp\":{t}");
    }
    line.extend_from_slice(b",\"key\":");
    match m.key().map(std::str::from_utf8) {
        Some(Ok(k)) => {
            let _ = serde_json::to_writer(&mut *line, k);
        }
        _ => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(b",\"value\":");
    let payload = m.payload().unwrap_or_default();
    // The value is written as it came, valid JSON or not (the pipeline refuses a broken one with the same
    // reason in the file as on the topic); only a line break would split the record, so a multi-line
    // value is compacted (valid JSON) or kept as a JSON string (broken).
    if !payload.contains(&b'\n') {
        line.extend_from_slice(payload);
    } else {
        let text = match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) => v.to_string(),
            Err(_) => {
                serde_json::Value::String(String::from_utf8_lossy(payload).into_owned()).to_string()
            }
        };
        line.extend_from_slice(text.as_bytes());
    }
    line.extend_from_slice(b"}\n");
}

/// Where a run's outputs go on Kafka.
#[derive(Debug, Clone)]
pub struct KafkaOutputConfig {
    pub brokers: Brokers,
    /// The anomaly changes, one message per change keyed by customer.
    pub topic: String,
    /// The per-epoch summaries (key `epoch`) and the end record (key `end`); `None`: partition 0 of `topic`.
    pub summary_topic: Option<String>,
    /// Dead letters (value: the dead-letter JSON line; headers `reason`, `detail`, `source`).
    pub dead_letter_topic: Option<String>,
    /// Partitions of `topic` when it has to be created.
    pub partitions: u32,
}

/// The Kafka output: an idempotent producer; every `barrier` waits until the broker has acknowledged
/// everything sent so far.
pub struct KafkaOutput {
    producer: BaseProducer<Deliveries>,
    cfg: KafkaOutputConfig,
    sent: u64,
    written_through: Option<u64>,
}

fn output_error(target: &str, message: impl std::fmt::Display) -> crate::sinks::OutputError {
    crate::sinks::OutputError {
        target: target.to_string(),
        message: message.to_string(),
    }
}

impl KafkaOutput {
    /// Creates the topics that do not exist, connects the producer, and reads which epochs an earlier run of
    /// the same job has already made durable (the last summary on the summary partition).
    pub fn connect(cfg: &KafkaOutputConfig) -> Result<KafkaOutput, crate::sinks::OutputError> {
        let target = format!("kafka://{}/{}", cfg.brokers, cfg.topic);
        let fail = |e: KafkaIoError| output_error(&target, e);
        ensure_topic(&cfg.brokers, &cfg.topic, cfg.partitions).map_err(fail)?;
        for t in [&cfg.summary_topic, &cfg.dead_letter_topic]
            .into_iter()
            .flatten()
        {
            ensure_topic(&cfg.brokers, t, 1).map_err(fail)?;
        }
        let summary = cfg.summary_topic.as_deref().unwrap_or(&cfg.topic);
        let written_through = last_summary_epoch(&cfg.brokers, summary).map_err(fail)?;
        let producer: BaseProducer<Deliveries> = client_config(
            &cfg.brokers,
            &[
                ("enable.idempotence", "true"),
                ("linger.ms", "1"),
                ("message.timeout.ms", "120000"),
                ("queue.buffering.max.messages", "200000"),
            ],
        )
        .create_with_context(Deliveries::default())
        .map_err(|e| output_error(&target, e))?;
        Ok(KafkaOutput {
            producer,
            cfg: cfg.clone(),
            sent: 0,
            written_through,
        })
    }

    /// The last epoch whose summary an earlier run made durable.
    pub fn written_through(&self) -> Option<u64> {
        self.written_through
    }

    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        payload: &[u8],
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> Result<(), crate::sinks::OutputError> {
        let mut rec: BaseRecord<'_, str, [u8], ()> = BaseRecord::to(topic).payload(payload);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.producer.poll(Duration::from_millis(10));
                    rec = r;
                }
                Err((e, _)) => return Err(output_error(topic, e)),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }
}

impl crate::sinks::Output for KafkaOutput {
    fn write(
        &mut self,
        text: &str,
        kinds: &[crate::sinks::LineKind<'_>],
    ) -> Result<(), crate::sinks::OutputError> {
        use crate::sinks::LineKind;
        let topic = self.cfg.topic.clone();
        let summary = self.cfg.summary_topic.clone();
        let dead = self.cfg.dead_letter_topic.clone();
        for (line, kind) in text.lines().zip(kinds) {
            match kind {
                LineKind::Change(c) => {
                    self.send(&topic, None, Some(c.as_str()), line.as_bytes(), None)?
                }
                LineKind::Summary(_) | LineKind::End => {
                    let key = if matches!(kind, LineKind::End) {
                        "end"
                    } else {
                        "epoch"
                    };
                    let t = summary.as_deref().unwrap_or(&topic);
                    self.send(t, Some(0), Some(key), line.as_bytes(), None)?
                }
                LineKind::DeadLetter(d) => {
                    let Some(t) = dead.as_deref() else { continue };
                    let source = format!(
                        "{}:{}:{}",
                        d.input,
                        d.partition.map_or(-1, |p| p as i64),
                        d.offset.map_or(-1, |o| o as i64)
                    );
                    let headers = rdkafka::message::OwnedHeaders::new()
                        .insert(rdkafka::message::Header {
                            key: "reason",
                            value: Some(d.code.as_str()),
                        })
                        .insert(rdkafka::message::Header {
                            key: "detail",
                            value: Some(d.detail.as_str()),
                        })
                        .insert(rdkafka::message::Header {
                            key: "source",
                            value: Some(source.as_str()),
                        });
                    self.send(t, None, None, line.as_bytes(), Some(headers))?
                }
            }
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), crate::sinks::OutputError> {
        let target = format!("kafka://{}/{}", self.cfg.brokers, self.cfg.topic);
        // (BaseProducer::flush sleeps in steps of up to 100 ms; an epoch's barrier polls finely instead.)
        let deadline = Instant::now() + Duration::from_secs(130);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(output_error(
                    &target,
                    "the broker did not acknowledge within 130 s",
                ));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        let acked = ctx.acked.load(Ordering::Relaxed);
        if failed > 0 || acked < self.sent {
            return Err(output_error(
                &target,
                format!(
                    "{} of {} messages were not acknowledged",
                    self.sent.saturating_sub(acked),
                    self.sent
                ),
            ));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), crate::sinks::OutputError> {
        crate::sinks::Output::barrier(self)
    }
}

/// The largest `epoch` of the summary records (key `epoch`) on partition 0 of `topic`, reading it whole.
pub fn last_summary_epoch(brokers: &Brokers, topic: &str) -> Result<Option<u64>, KafkaIoError> {
    summary_epoch(brokers, topic, true)
}

/// The largest `epoch` of the summary records below the high watermark `topic`'s partition 0 reports on
/// entry: a lower bound on what a running pipeline has made durable. Unlike [`last_summary_epoch`] (which
/// reads on until the partition has been quiet for a second, for resuming a stopped run) it answers while
/// the pipeline keeps writing.
pub fn durable_summary_epoch(brokers: &Brokers, topic: &str) -> Result<Option<u64>, KafkaIoError> {
    summary_epoch(brokers, topic, false)
}

/// `settle`: after the reported high watermark, read on until the partition has been quiet for a second.
fn summary_epoch(
    brokers: &Brokers,
    topic: &str,
    settle: bool,
) -> Result<Option<u64>, KafkaIoError> {
    let group = format!("fleetwatch-resume-{}", std::process::id());
    let consumer: BaseConsumer = client_config(
        brokers,
        &[("group.id", &group), ("enable.auto.commit", "false")],
    )
    .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last: Option<u64> = None;
    #[derive(Deserialize)]
    struct Summary {
        epoch: u64,
    }
    // Read up to the reported high watermark, then on until the partition has been quiet for a second:
    // Tansu 0.6 reports the high watermark at the start of a partition's last batch, which may hold several
    // summaries.
    let mut reached = false;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!("kafka consumer: {e}");
                continue;
            }
            None => {
                if reached && quiet_since.elapsed() >= Duration::from_secs(1) {
                    return Ok(last);
                }
                continue;
            }
        };
        quiet_since = Instant::now();
        if m.key() == Some(b"epoch".as_slice())
            && let Some(s) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Summary>(p).ok())
        {
            last = Some(last.map_or(s.epoch, |l: u64| l.max(s.epoch)));
        }
        if m.offset() + 1 >= high {
            if !settle {
                return Ok(last);
            }
            reached = true;
        }
    }
    Err(KafkaIoError::Broker(format!(
        "could not read {topic} partition 0 up to offset {high} within 120 s"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_envelope_keeps_a_broken_value_as_it_is() {
        let line = br#"{"partition":3,"offset":41,"timestamp":1700000000123,"key":"cust-1","value":{"ts":1,"snr_db":NaN}}"#;
        let l = lenient_envelope(line).expect("canonical layout");
        assert_eq!(
            (l.partition, l.timestamp, l.key),
            (3, 1_700_000_000_123, "cust-1")
        );
        assert_eq!(l.value, br#"{"ts":1,"snr_db":NaN}"#);
        // a truncated line keeps what it has
        let cut = br#"{"partition":3,"offset":41,"timestamp":17,"key":"c","value":{"ts":1,"sn"#;
        assert_eq!(
            lenient_envelope(cut).map(|e| e.value),
            Some(&br#"{"ts":1,"sn"#[..])
        );
        assert!(lenient_envelope(br#"{"partition":3,"offs"#).is_none());
        assert!(lenient_envelope(b"garbage").is_none());
    }

    #[test]
    fn addresses() {
        let a = KafkaAddress::parse("kafka://127.0.0.1:9092/telemetry").expect("valid");
        assert_eq!(a.brokers, Brokers::plain("127.0.0.1:9092"));
        assert_eq!(a.topics, ["telemetry"]);
        let b = KafkaAddress::parse("kafka://h:1/a,b.c").expect("valid");
        assert_eq!(b.topics, ["a", "b.c"]);
        assert!(b.topic().is_err());
        for bad in [
            "kafka://h:1/",
            "kafka:///t",
            "http://h:1/t",
            "kafka://h/t",
            "kafka://h:1/a b",
        ] {
            assert!(KafkaAddress::parse(bad).is_err(), "{bad}");
        }
    }
}

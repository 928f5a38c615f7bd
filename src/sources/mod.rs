//! Sources: recorded-topic files and CSV exports, read partition-parallel by the workers.
//!
//! # Recorded topic format
//!
//! One JSON message per line, in the order a consumer received them; an optional first line describes the
//! topic:
//!
//! ```text
//! {"fleetwatch":"recorded-topic","version":1,"topic":"telemetry","partitions":16}
//! {"partition":3,"offset":41,"timestamp":1700000000123,"key":"cust-0000042","value":{"customer_id":"cust-0000042","ts":1700000000,"rssi_dbm":-61.5,...}}
//! ```
//!
//! # Who reads what
//!
//! Every worker scans every line (finding a line's partition costs a few nanoseconds in the canonical
//! layout), but fully parses only the lines of the partitions it owns. The bytes come off the disk once per
//! process: one reader thread per file fills chunks that all the process's workers read ([`chunks`]). A line whose partition cannot be read
//! belongs to the partition of the line before it. A CSV file (`customer_id,ts,<feature>...`) is one
//! partition, read by its owner.
//!
//! Before reading, each worker finds the first record of each partition it owns (the header tells which
//! partitions exist; without it the file is scanned once): a worker may not let the pipeline's epoch advance
//! past a partition that has not started yet.

pub mod chunks;
pub mod intake;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod parse;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::epoch::EpochClock;
use crate::keys::CustomerId;
use crate::record::{DeadLetter, LogN, RejectCode, Rejection, SourcePos};
use crate::spec::Spec;
pub use intake::{Admitted, Intake, PartitionCut, PartitionState, SourceCounts, SourceSnapshot};
use parse::LogParser;

/// Errors that stop a source (unreadable files, a CSV header that cannot be mapped). Bad *records* are never
/// errors: they become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Csv { path: String, message: String },
    #[error("kafka source: {0}")]
    Kafka(String),
}

/// What the source operator drives on each worker: a file replay or a live Kafka consumer. Both parse into
/// an [`Intake`], which epochs the records and buffers them for the operator to ship.
pub trait Source<const N: usize> {
    /// The least epoch this worker may still emit records at (`u64::MAX`: nothing more before the end);
    /// `None` once the source is done.
    fn frontier(&mut self) -> Option<u64>;
    /// Reads up to `budget` records; returns how many it consumed.
    fn pump(&mut self, budget: usize) -> Result<usize, SourceError>;
    /// The epoched records and dead letters waiting to be shipped.
    fn intake(&mut self) -> &mut Intake<N>;
    /// Every output of every epoch below `upto` is durably written (`u64::MAX`: all of them): a source with
    /// a commit protocol commits its input positions up to there.
    fn acknowledged(&mut self, _upto: u64) {}
    /// True if the source wants [`Source::acknowledged`] calls until the sink has finished.
    fn wants_acks(&self) -> bool {
        false
    }
    /// After a pump that found nothing, how long to wait before the next one (`None`: at once).
    fn idle_wait(&self) -> Option<std::time::Duration> {
        None
    }
    /// The epoch `--speed` paces reading by, given the frontier (`None`: not known yet, read on).
    fn pace_epoch(&self, frontier: u64) -> Option<u64> {
        Some(frontier)
    }
    /// Where each owned partition stands now (for a checkpoint); `None` if this source cannot resume from
    /// positions.
    fn cuts(&self) -> Option<Vec<PartitionCut>> {
        None
    }
}

impl<const N: usize> Source<N> for FileSource<N> {
    fn frontier(&mut self) -> Option<u64> {
        FileSource::frontier(self)
    }
    fn pump(&mut self, budget: usize) -> Result<usize, SourceError> {
        FileSource::pump(self, budget)
    }
    fn intake(&mut self) -> &mut Intake<N> {
        &mut self.intake
    }
    fn idle_wait(&self) -> Option<std::time::Duration> {
        // The reader thread has not read the next bytes yet.
        self.waiting
            .then_some(std::time::Duration::from_micros(500))
    }
    fn cuts(&self) -> Option<Vec<PartitionCut>> {
        Some(FileSource::cuts(self))
    }
}

/// Where each input's readers start in a restored run: for every input, the earliest position any
/// partition of it resumes at (every worker reads from there and skips the lines of its partitions that
/// come before their own cut).
pub fn resume_starts(
    snapshots: &[SourceSnapshot],
    inputs: usize,
) -> Vec<(chunks::Start, u32, u64)> {
    let mut starts: Vec<Option<(chunks::Start, u32, u64)>> = vec![None; inputs];
    for cut in snapshots.iter().flat_map(|s| s.partitions.iter()) {
        if let Some(slot) = starts.get_mut(cut.input as usize)
            && slot.is_none_or(|(s, _, _)| cut.at.offset < s.offset)
        {
            *slot = Some((cut.at, cut.last_partition, cut.record));
        }
    }
    starts.into_iter().map(|s| s.unwrap_or_default()).collect()
}

/// The format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    RecordedTopic,
    Csv,
}

/// One `--input` file.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: InputKind,
}

impl InputFile {
    /// Decides the format from the extension (`.csv`) or, failing that, from the first byte.
    pub fn detect(path: &Path) -> Result<InputFile, SourceError> {
        let kind = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            InputKind::Csv
        } else {
            let mut f = File::open(path).map_err(|source| SourceError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let mut b = [0u8; 64];
            let n = f.read(&mut b).map_err(|source| SourceError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let first = b[..n].iter().find(|c| !c.is_ascii_whitespace());
            if first == Some(&b'{') || n == 0 {
                InputKind::RecordedTopic
            } else {
                InputKind::Csv
            }
        };
        Ok(InputFile {
            path: path.to_path_buf(),
            kind,
        })
    }
}

/// The header line of a recorded topic.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordedHeader {
    pub fleetwatch: String,
    pub version: u32,
    #[serde(default)]
    pub topic: String,
    pub partitions: u32,
}

impl RecordedHeader {
    pub const MARK: &'static [u8] = b"{\"fleetwatch\":\"recorded-topic\"";

    pub fn new(topic: &str, partitions: u32) -> Self {
        RecordedHeader {
            fleetwatch: "recorded-topic".into(),
            version: 1,
            topic: topic.into(),
            partitions,
        }
    }

    fn parse(line: &[u8]) -> Option<RecordedHeader> {
        if !line.starts_with(Self::MARK) {
            return None;
        }
        serde_json::from_slice(line).ok()
    }
}

/// Which worker owns source partition `partition` of input `input`.
pub fn partition_owner(input: u32, partition: u32, peers: usize) -> usize {
    ((partition as u64 + input as u64 * 7919) % peers.max(1) as u64) as usize
}

/// Lines of a file, straight from a memory map (the prescan's reader: it usually stops after a few lines;
/// the replay itself reads through [`chunks`]). Pages behind the cursor are released as it advances,
/// so a long replay does not accumulate the whole file in the process's resident set.
///
/// The inputs must not be modified while a run reads them (a memory-mapped file changing underneath is
/// undefined behaviour).
pub struct LineReader {
    map: Option<memmap2::Mmap>,
    pos: usize,
    released: usize,
    /// Bytes up to which the kernel has been asked to read ahead.
    prefetched: usize,
    line_no: u64,
}

/// Lines longer than this are refused (and skipped).
pub const MAX_LINE: usize = 16 << 20;
/// Release mapped pages behind the cursor in steps of this many bytes.
const RELEASE_STEP: usize = 64 << 20;
/// Keep the kernel reading this far ahead of the cursor (asynchronously, `MADV_WILLNEED`), in steps of
/// `RELEASE_STEP`. Page-fault-driven readahead alone fetched about 190 MB/s on the CI VM, whose disk reads
/// 0.9–1.1 GB/s sequentially: a replay larger than the page cache was I/O-bound without it.
const PREFETCH_AHEAD: usize = 256 << 20;

impl LineReader {
    pub fn open(path: &Path) -> Result<LineReader, SourceError> {
        let io = |source| SourceError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the file is only read, and inputs are documented as not modified during a run.
            let m = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let _ = m.advise(memmap2::Advice::Sequential);
            Some(m)
        };
        Ok(LineReader {
            map,
            pos: 0,
            released: 0,
            prefetched: 0,
            line_no: 0,
        })
    }

    /// The next line as `(line number, byte range in `buf()`, too_long)`, without its newline.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, std::ops::Range<usize>, bool)>> {
        let Some(map) = self.map.as_ref() else {
            return Ok(None);
        };
        let buf: &[u8] = map;
        if self.pos >= buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let end = match memchr::memchr(b'\n', &buf[start..]) {
            Some(nl) => start + nl,
            None => buf.len(),
        };
        self.pos = end + 1;
        self.line_no += 1;
        if self.pos + PREFETCH_AHEAD > self.prefetched + RELEASE_STEP && self.prefetched < buf.len()
        {
            let from = self.prefetched.max(self.pos / 4096 * 4096);
            let to = (self.pos + PREFETCH_AHEAD).min(buf.len());
            if to > from {
                let _ = map.advise_range(memmap2::Advice::WillNeed, from, to - from);
            }
            self.prefetched = to;
        }
        if self.pos - self.released > 2 * RELEASE_STEP {
            let upto = (self.pos - RELEASE_STEP) / 4096 * 4096;
            if upto > self.released {
                // SAFETY: the released range lies wholly behind the cursor; no slice into it is alive
                // (callers use a line before asking for the next one) and a read-only file mapping
                // simply re-reads the page cache if touched again.
                unsafe {
                    let _ = map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        self.released,
                        upto - self.released,
                    );
                }
                self.released = upto;
            }
        }
        if end - start > MAX_LINE {
            return Ok(Some((self.line_no, start..start, true)));
        }
        let stop = if end > start && buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Ok(Some((self.line_no, start..stop, false)))
    }

    pub fn buf(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

enum Reader {
    Lines(chunks::ChunkLines),
    Csv {
        reader: Box<csv::Reader<File>>,
        columns: Vec<Option<usize>>,
        record: csv::ByteRecord,
    },
    Skip,
}

/// One worker's share of the inputs: reads, parses, epochs and buffers records until the operator ships them.
pub struct FileSource<const N: usize> {
    inputs: Vec<InputFile>,
    index: usize,
    peers: usize,
    parser: LogParser,
    current: usize,
    reader: Option<Reader>,
    last_partition: u32,
    scratch: LogN<N>,
    /// Epoching and the buffered output.
    pub intake: Intake<N>,
    finished: bool,
    /// The process's shared readers of the inputs (`None`: this source reads them on its own).
    shared: Option<chunks::SharedInputs>,
    /// The last pump stopped because the reader thread had not read the next bytes yet.
    waiting: bool,
    /// Per input: where reading starts (a restored run), the partition a line without a readable one
    /// inherits there, and the CSV records before it.
    starts: Vec<(chunks::Start, u32, u64)>,
    /// Per input: where this worker's reading of it ended.
    ended_at: Vec<Option<(chunks::Start, u32, u64)>>,
    /// Restored partitions' cuts: their lines up to the cut were read before the checkpoint.
    resume: HashMap<(u32, u32), PartitionCut>,
}

impl<const N: usize> FileSource<N> {
    /// Prepares worker `index` of `peers`: finds each owned partition's first epoch.
    pub fn new(
        spec: &Spec,
        inputs: Vec<InputFile>,
        index: usize,
        peers: usize,
    ) -> Result<FileSource<N>, SourceError> {
        let clock = EpochClock::new(&spec.epoch, spec.input.max_future_skew_seconds);
        let mut parser = LogParser::new(spec);
        let placeholder = CustomerId::parse(b"x", b"").map_err(|_| SourceError::Csv {
            path: String::new(),
            message: "internal: placeholder id".into(),
        })?;
        let mut scratch = LogN::empty(placeholder);
        let mut partitions = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let i = i as u32;
            match input.kind {
                InputKind::RecordedTopic => {
                    prescan_recorded(
                        &input.path,
                        i,
                        index,
                        peers,
                        &mut parser,
                        &clock,
                        &mut scratch,
                        &mut partitions,
                    )?;
                }
                InputKind::Csv => {
                    if partition_owner(i, 0, peers) == index {
                        let start = prescan_csv(&input.path, &mut parser, &clock, &mut scratch)?;
                        partitions.insert((i, 0), PartitionState::new(start));
                    }
                }
            }
        }
        let mut intake = Intake::new(clock);
        intake.partitions = partitions;
        let n = inputs.len();
        Ok(FileSource {
            starts: vec![Default::default(); n],
            ended_at: vec![None; n],
            resume: HashMap::new(),
            inputs,
            index,
            peers,
            parser,
            current: 0,
            reader: None,
            last_partition: 0,
            scratch,
            intake,
            finished: false,
            shared: None,
            waiting: false,
        })
    }

    /// Reads the inputs through readers shared with the other workers of this process (one disk read per
    /// process; see [`chunks`]). Without this, the source reads each input on its own.
    pub fn with_shared(mut self, shared: chunks::SharedInputs) -> FileSource<N> {
        self.shared = Some(shared);
        self
    }

    /// Resumes from a checkpoint's source snapshots (of any earlier layout): takes over the clocks and cuts
    /// of the partitions this worker owns now and reads from `starts` (see [`resume_starts`]). What the
    /// earlier workers had read past the checkpoint is re-delivered through the intake, by one worker.
    pub fn restore(
        &mut self,
        snapshots: &[SourceSnapshot],
        starts: Vec<(chunks::Start, u32, u64)>,
    ) {
        let peers = self.peers;
        let index = self.index;
        for cut in self
            .intake
            .restore_cuts(snapshots, |i, p| partition_owner(i, p, peers) == index)
        {
            self.resume.insert((cut.input, cut.partition), cut);
        }
        if starts.len() == self.starts.len() {
            self.starts = starts;
        }
    }

    /// Where each owned partition stands: its clock, and the position after the last line of it this
    /// worker has read (never before its restored cut).
    pub fn cuts(&self) -> Vec<PartitionCut> {
        let mut out: Vec<PartitionCut> = self
            .intake
            .partitions
            .iter()
            .map(|(&(input, partition), st)| {
                let i = input as usize;
                let (at, last_partition, record) = if i < self.current {
                    self.ended_at.get(i).copied().flatten().unwrap_or_default()
                } else if i == self.current {
                    match &self.reader {
                        Some(Reader::Lines(r)) => (r.resume_point(), self.last_partition, 0),
                        Some(Reader::Csv { reader, .. }) => csv_point(reader),
                        _ => self.starts.get(i).copied().unwrap_or_default(),
                    }
                } else {
                    self.starts.get(i).copied().unwrap_or_default()
                };
                let mut cut = PartitionCut {
                    input,
                    partition,
                    watermark: st.clock.watermark,
                    start: st.start,
                    floor: self.intake.floor_of((input, partition)),
                    at,
                    last_partition,
                    record,
                };
                if let Some(r) = self.resume.get(&(input, partition))
                    && r.at.offset > cut.at.offset
                {
                    cut.at = r.at;
                    cut.last_partition = r.last_partition;
                    cut.record = r.record;
                }
                cut
            })
            .collect();
        out.sort_by_key(|c| (c.input, c.partition));
        out
    }

    /// True for a line of a restored partition that was read before the checkpoint.
    #[inline]
    fn read_before(&self, input: u32, partition: u32, line_no: u64) -> bool {
        !self.resume.is_empty()
            && self
                .resume
                .get(&(input, partition))
                .is_some_and(|c| line_no <= c.at.line)
    }

    /// The least epoch this worker may still emit records at; `None` once every owned partition is done.
    pub fn frontier(&self) -> Option<u64> {
        let mut min: Option<u64> = None;
        for key in self.intake.partitions.keys() {
            if (key.0 as usize) < self.current {
                continue; // input fully read
            }
            if let Some(e) = self.intake.open_epoch(*key) {
                min = Some(min.map_or(e, |m: u64| m.min(e)));
            }
        }
        if self.finished {
            None
        } else {
            Some(min.unwrap_or(u64::MAX))
        }
    }

    /// True once all inputs are read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Reads up to `budget` lines. Returns the number of lines consumed.
    pub fn pump(&mut self, budget: usize) -> Result<usize, SourceError> {
        let mut done = 0;
        self.waiting = false;
        while done < budget && !self.finished && !self.waiting {
            if self.reader.is_none() {
                if self.current >= self.inputs.len() {
                    self.finished = true;
                    break;
                }
                self.reader = Some(self.open_current()?);
                self.last_partition = self.starts[self.current].1;
            }
            let n = match self.reader.as_mut() {
                Some(Reader::Lines(_)) => self.pump_lines(budget - done)?,
                Some(Reader::Csv { .. }) => self.pump_csv(budget - done)?,
                Some(Reader::Skip) | None => None,
            };
            match n {
                Some(n) => done += n,
                None => {
                    // Input exhausted.
                    let end = match &self.reader {
                        Some(Reader::Lines(r)) => Some((r.resume_point(), self.last_partition, 0)),
                        Some(Reader::Csv { reader, .. }) => Some(csv_point(reader)),
                        _ => None,
                    };
                    if let Some(slot) = self.ended_at.get_mut(self.current) {
                        *slot = end.or(Some(self.starts[self.current]));
                    }
                    self.reader = None;
                    self.current += 1;
                }
            }
        }
        Ok(done)
    }

    fn open_current(&mut self) -> Result<Reader, SourceError> {
        let input = &self.inputs[self.current];
        let i = self.current as u32;
        match input.kind {
            InputKind::RecordedTopic => {
                let lines = match &self.shared {
                    Some(shared) => shared.lines(self.current),
                    None => None,
                };
                let start = self.starts[self.current].0;
                Ok(Reader::Lines(lines.unwrap_or_else(|| {
                    chunks::SharedFile::starting_at(&input.path, 1, start).lines(0)
                })))
            }
            InputKind::Csv => {
                if partition_owner(i, 0, self.peers) != self.index {
                    return Ok(Reader::Skip);
                }
                let (mut reader, columns) = open_csv(&input.path, &self.parser)?;
                let (start, _, record) = self.starts[self.current];
                if start.line > 0 {
                    let mut pos = csv::Position::new();
                    pos.set_byte(start.offset)
                        .set_line(start.line)
                        .set_record(record);
                    reader.seek(pos).map_err(|e| SourceError::Io {
                        path: input.path.display().to_string(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                }
                Ok(Reader::Csv {
                    reader: Box::new(reader),
                    columns,
                    record: csv::ByteRecord::new(),
                })
            }
        }
    }

    /// `Some(lines)` read, or `None` at the end of the input. Sets `waiting` when it stopped because the
    /// next bytes are not read yet.
    fn pump_lines(&mut self, budget: usize) -> Result<Option<usize>, SourceError> {
        let input = self.current as u32;
        let mut reader = match self.reader.take() {
            Some(Reader::Lines(r)) => r,
            other => {
                self.reader = other;
                return Ok(None);
            }
        };
        let mut n = 0;
        while n < budget {
            let next = reader.next_line().map_err(|source| SourceError::Io {
                path: self.inputs[self.current].path.display().to_string(),
                source,
            })?;
            let r = match next {
                chunks::Next::Line(r) => r,
                chunks::Next::Wait => {
                    self.waiting = true;
                    break;
                }
                chunks::Next::End => {
                    if n == 0 {
                        // (Kept until `pump` notes where the input ended.)
                        self.reader = Some(Reader::Lines(reader));
                        return Ok(None);
                    }
                    break;
                }
            };
            n += 1;
            let line_no = r.no;
            let line = reader.line(&r);
            if r.too_long {
                let p = self.last_partition;
                if partition_owner(input, p, self.peers) == self.index
                    && !self.read_before(input, p, line_no)
                {
                    let rej = Rejection::new(
                        RejectCode::Malformed,
                        format!("line longer than {MAX_LINE} bytes"),
                    );
                    self.intake
                        .push_dead(DeadLetter::new(input, line_no, b"", rej), (input, p));
                }
                continue;
            }
            if line.iter().all(|c| c.is_ascii_whitespace())
                || (line_no == 1 && line.starts_with(RecordedHeader::MARK))
            {
                continue;
            }
            let partition = match parse::envelope_partition(line) {
                Some(p) => {
                    self.last_partition = p;
                    p
                }
                None => self.last_partition,
            };
            if partition_owner(input, partition, self.peers) != self.index
                || self.read_before(input, partition, line_no)
            {
                continue;
            }
            let mut log = self.scratch;
            match self.parser.parse_recorded(line, &mut log) {
                Ok(env) => {
                    log.pos = SourcePos {
                        partition: env.partition,
                        offset: env.offset,
                    };
                    self.intake.admit(
                        log,
                        (input, env.partition),
                        line_no,
                        Some(env.offset),
                        || line.to_vec(),
                    );
                }
                Err(rej) => {
                    let mut dl = DeadLetter::new(input, line_no, line, rej);
                    dl.partition = parse::envelope_partition(line);
                    self.intake.push_dead(dl, (input, partition));
                }
            }
        }
        self.reader = Some(Reader::Lines(reader));
        Ok(Some(n))
    }

    fn pump_csv(&mut self, budget: usize) -> Result<Option<usize>, SourceError> {
        let input = self.current as u32;
        let (mut reader, columns, mut record) = match self.reader.take() {
            Some(Reader::Csv {
                reader,
                columns,
                record,
            }) => (reader, columns, record),
            other => {
                self.reader = other;
                return Ok(None);
            }
        };
        let mut n = 0;
        while n < budget {
            let more = match reader.read_byte_record(&mut record) {
                Ok(more) => more,
                Err(e) => {
                    // A CSV syntax error is a bad row, not a stop, unless the file cannot be read.
                    if let csv::ErrorKind::Io(_) = e.kind() {
                        return Err(SourceError::Io {
                            path: self.inputs[self.current].path.display().to_string(),
                            source: std::io::Error::other(e.to_string()),
                        });
                    }
                    let line_no = e.position().map(|p| p.line()).unwrap_or(0);
                    let rej = Rejection::new(RejectCode::Malformed, format!("CSV: {e}"));
                    self.intake
                        .push_dead(DeadLetter::new(input, line_no, b"", rej), (input, 0));
                    n += 1;
                    continue;
                }
            };
            if !more {
                if n == 0 {
                    self.reader = Some(Reader::Csv {
                        reader,
                        columns,
                        record,
                    });
                    return Ok(None);
                }
                self.reader = Some(Reader::Csv {
                    reader,
                    columns,
                    record,
                });
                return Ok(Some(n));
            }
            n += 1;
            let line_no = record.position().map(|p| p.line()).unwrap_or(0);
            let mut log = self.scratch;
            match self.parser.parse_csv_row(&record, &columns, &mut log) {
                Ok(()) => {
                    log.pos = SourcePos {
                        partition: 0,
                        offset: line_no,
                    };
                    self.intake.admit(log, (input, 0), line_no, None, || {
                        join_csv(&record).into_bytes()
                    });
                }
                Err(rej) => {
                    let raw = join_csv(&record);
                    self.intake.push_dead(
                        DeadLetter::new(input, line_no, raw.as_bytes(), rej),
                        (input, 0),
                    );
                }
            }
        }
        self.reader = Some(Reader::Csv {
            reader,
            columns,
            record,
        });
        Ok(Some(n))
    }
}

/// A CSV reader's position after its last record: `(byte offset and line, 0, records read)`.
fn csv_point(reader: &csv::Reader<File>) -> (chunks::Start, u32, u64) {
    let p = reader.position();
    (
        chunks::Start {
            offset: p.byte(),
            line: p.line(),
        },
        0,
        p.record(),
    )
}

fn join_csv(r: &csv::ByteRecord) -> String {
    let mut s = String::new();
    for (i, f) in r.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&String::from_utf8_lossy(f));
    }
    s
}

fn open_csv(
    path: &Path,
    parser: &LogParser,
) -> Result<(csv::Reader<File>, Vec<Option<usize>>), SourceError> {
    let file = File::open(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file);
    let header = reader
        .byte_headers()
        .map_err(|e| SourceError::Csv {
            path: path.display().to_string(),
            message: format!("cannot read the CSV header: {e}"),
        })?
        .clone();
    let columns = parser
        .csv_columns(&header)
        .map_err(|message| SourceError::Csv {
            path: path.display().to_string(),
            message,
        })?;
    Ok((reader, columns))
}

fn prescan_csv<const N: usize>(
    path: &Path,
    parser: &mut LogParser,
    clock: &EpochClock,
    scratch: &mut LogN<N>,
) -> Result<Option<u64>, SourceError> {
    let (mut reader, columns) = open_csv(path, parser)?;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {
                if parser.parse_csv_row(&record, &columns, scratch).is_ok() {
                    return Ok(Some(clock.epoch_of(scratch.ts - clock.lateness)));
                }
            }
            Ok(false) => return Ok(None),
            Err(e) => {
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(SourceError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn prescan_recorded<const N: usize>(
    path: &Path,
    input: u32,
    index: usize,
    peers: usize,
    parser: &mut LogParser,
    clock: &EpochClock,
    scratch: &mut LogN<N>,
    partitions: &mut HashMap<(u32, u32), PartitionState>,
) -> Result<(), SourceError> {
    let mut reader = LineReader::open(path)?;
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    // Partitions still waiting for their first good record (known from the header), or all (no header).
    let mut pending: Option<std::collections::BTreeSet<u32>> = None;
    let mut last_partition = 0u32;
    while let Some((line_no, range, too_long)) = reader.next_line().map_err(io)? {
        if too_long {
            continue;
        }
        let line = &reader.buf()[range];
        if line_no == 1
            && let Some(h) = RecordedHeader::parse(line)
        {
            let owned: std::collections::BTreeSet<u32> = (0..h.partitions)
                .filter(|p| partition_owner(input, *p, peers) == index)
                .collect();
            for p in &owned {
                partitions
                    .entry((input, *p))
                    .or_insert(PartitionState::new(None));
            }
            pending = Some(owned);
            continue;
        }
        if let Some(p) = &pending
            && p.is_empty()
        {
            break;
        }
        let partition = parse::envelope_partition(line).unwrap_or(last_partition);
        last_partition = partition;
        if partition_owner(input, partition, peers) != index {
            continue;
        }
        let state = partitions
            .entry((input, partition))
            .or_insert(PartitionState::new(None));
        if state.start.is_some() {
            continue;
        }
        if let Ok(env) = parser.parse_recorded(line, scratch)
            && env.partition == partition
        {
            state.start = Some(clock.epoch_of(scratch.ts - clock.lateness));
            if let Some(p) = pending.as_mut() {
                p.remove(&partition);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> Spec {
        Spec::parse(
            "name='t'\n[input]\ncustomer_id_prefix='cust-'\n[epoch]\nallowed_lateness_seconds=0\n\
             [[features]]\nname='a'\n",
            "t",
        )
        .unwrap()
    }

    fn line(p: u32, o: u64, c: &str, ts: i64, a: f32) -> String {
        format!(
            r#"{{"partition":{p},"offset":{o},"key":"{c}","value":{{"customer_id":"{c}","ts":{ts},"a":{a}}}}}"#
        )
    }

    fn run_all(path: &Path, peers: usize) -> (Vec<(u64, String, i64)>, Vec<DeadLetter>) {
        let mut logs = Vec::new();
        let mut dead = Vec::new();
        for w in 0..peers {
            let input = InputFile::detect(path).unwrap();
            let mut s =
                FileSource::<{ crate::record::NARROW }>::new(&spec(), vec![input], w, peers)
                    .unwrap();
            while !s.is_finished() {
                s.pump(3).unwrap();
            }
            for (e, v) in std::mem::take(&mut s.intake.logs) {
                for l in v {
                    logs.push((e, l.customer.to_string(), l.ts));
                }
            }
            dead.append(&mut s.intake.dead);
        }
        logs.sort();
        dead.sort_by_key(|d| d.line);
        (logs, dead)
    }

    #[test]
    fn partitions_are_split_and_lateness_is_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(
            f,
            "{}",
            serde_json::to_string(&RecordedHeader::new("t", 2)).unwrap()
        )
        .unwrap();
        let base: i64 = 1_700_000_100; // a multiple of 300: epochs start on it
        writeln!(f, "{}", line(0, 0, "cust-1", base, 1.0)).unwrap();
        writeln!(f, "{}", line(1, 0, "cust-2", base + 10, 1.0)).unwrap();
        writeln!(f, "{}", line(0, 1, "cust-1", base + 600, 1.0)).unwrap();
        writeln!(f, "{{broken").unwrap(); // inherits partition 0
        // partition 1 is not late: its own watermark is still base + 10
        writeln!(f, "{}", line(1, 1, "cust-2", base + 20, 1.0)).unwrap();
        // partition 0 record of epoch 0 after watermark base+600 (lateness 0): late, folded into epoch 2
        writeln!(f, "{}", line(0, 2, "cust-1", base + 5, 1.0)).unwrap();
        drop(f);
        for peers in [1, 2, 3] {
            let (logs, dead) = run_all(&path, peers);
            let e0 = (base / 300) as u64;
            assert_eq!(
                logs,
                vec![
                    (e0, "cust-1".into(), base),
                    (e0, "cust-2".into(), base + 10),
                    (e0, "cust-2".into(), base + 20),
                    (e0 + 2, "cust-1".into(), base + 5),
                    (e0 + 2, "cust-1".into(), base + 600),
                ],
                "peers {peers}"
            );
            assert_eq!(dead.len(), 1);
            assert_eq!(dead[0].line, 5);
            assert_eq!(dead[0].code, RejectCode::Malformed);
            assert_eq!(
                dead[0].epoch,
                Some(e0 + 2),
                "attributed to partition 0's open epoch"
            );
        }
    }

    #[test]
    fn frontier_waits_for_partitions_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut f = File::create(&path).unwrap();
        let base: i64 = 1_700_000_100; // a multiple of 300: epochs start on it
        for i in 0..10 {
            writeln!(f, "{}", line(0, i, "cust-1", base + 300 * i as i64, 1.0)).unwrap();
        }
        writeln!(f, "{}", line(1, 0, "cust-2", base + 300, 1.0)).unwrap();
        drop(f);
        let input = InputFile::detect(&path).unwrap();
        let mut s =
            FileSource::<{ crate::record::NARROW }>::new(&spec(), vec![input], 0, 1).unwrap();
        // (The reader thread may not have read the file yet: a pump can return before its budget.)
        let mut read = 0;
        while read < 5 {
            read += s.pump(5 - read).unwrap();
        }
        // partition 1 starts at epoch e0+1 and holds the frontier there
        assert_eq!(s.frontier(), Some((base / 300) as u64 + 1));
        while !s.is_finished() {
            s.pump(100).unwrap();
        }
        assert_eq!(s.frontier(), None);
    }

    #[test]
    fn csv_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "customer_id,ts,a").unwrap();
        writeln!(f, "cust-1,1700000000,1.5").unwrap();
        writeln!(f, "cust-2,2023-11-14T22:13:20Z,").unwrap();
        writeln!(f, "cust-3,1700000000,abc").unwrap();
        drop(f);
        let (logs, dead) = run_all(&path, 2);
        assert_eq!(logs.len(), 2);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].code, RejectCode::WrongType);
        assert_eq!(dead[0].line, 4);
    }
}

//! `--predictions DIR`: every scored series of an epoch as a Parquet file, for the serving store.
//!
//! Layout, one directory per epoch and one file per worker (each worker writes the customers it owns, in id
//! order; nothing is exchanged for it):
//!
//! ```text
//!   DIR/epoch=000123/part-0-of-2.parquet
//!   DIR/epoch=000123/part-1-of-2.parquet
//! ```
//!
//! The `epoch=` directories are Hive-style partitions, so DuckDB (`read_parquet('DIR/*/*.parquet',
//! hive_partitioning = true)`), Spark, pandas / pyarrow (`pd.read_parquet(DIR)`) and Druid's Parquet input
//! read the tree directly. An epoch is complete when its directory holds every `part-W-of-P` (P files).
//!
//! Schema, one row per (customer, feature) scored at the epoch:
//!
//! ```text
//!   time      INT64 TIMESTAMP(MILLIS, UTC)  start of the epoch (Druid's __time)
//!   customer  STRING                        dictionary (a customer's 20 rows: one run of one index)
//!   feature   STRING                        dictionary
//!   observed, expected, lower, upper, score  FLOAT (the band is the series' own alert band; score ≥ 1
//!                                            is anomalous for that series)
//!   alert     STRING, null when none       the series' open alert's kind after the epoch
//!   severity  STRING, null when none       warning / critical
//! ```
//!
//! (`epoch` itself is the partition column.) Each file is written under a temporary name, fsynced and
//! renamed, so a reader never sees a partial file. A background thread per worker writes it from the
//! epoch's [`EpochView`] (shared, not copied); the worker blocks only when the previous epoch's file is
//! still being written.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, PageType};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, PageEncodingStats};
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnDescPtr, ColumnPath};

use super::view::EpochView;
use crate::model::header::decode_alert;

/// Rows per row group (and per batch handed to the column writers).
const ROW_GROUP: usize = 1 << 20;

const SCHEMA: &str = "
message prediction {
  REQUIRED INT64 time (TIMESTAMP(MILLIS,true));
  REQUIRED BYTE_ARRAY customer (UTF8);
  REQUIRED BYTE_ARRAY feature (UTF8);
  REQUIRED FLOAT observed;
  REQUIRED FLOAT expected;
  REQUIRED FLOAT lower;
  REQUIRED FLOAT upper;
  REQUIRED FLOAT score;
  OPTIONAL BYTE_ARRAY alert (UTF8);
  OPTIONAL BYTE_ARRAY severity (UTF8);
}
";

#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    #[error("--predictions {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("--predictions {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
}

/// Where and how often.
#[derive(Debug, Clone)]
pub struct PredictionsConfig {
    pub dir: PathBuf,
    /// Write epochs `e` with `e % every == 0`.
    pub every: u64,
    /// The spec's feature names (column `feature`).
    pub features: Vec<String>,
    pub epoch_seconds: u64,
}

impl PredictionsConfig {
    pub fn is_due(&self, epoch: u64) -> bool {
        epoch % self.every.max(1) == 0
    }

    /// The file of worker `worker` of `peers` at `epoch`.
    pub fn file(&self, epoch: u64, worker: usize, peers: usize) -> PathBuf {
        self.dir
            .join(format!("epoch={epoch:06}"))
            .join(format!("part-{worker}-of-{peers}.parquet"))
    }
}

/// A worker's background writer.
pub struct PredictionsWriter {
    tx: Option<crossbeam_channel::Sender<Arc<EpochView>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PredictionsWriter {
    /// Starts worker `worker` of `peers`' writer thread.
    pub fn start(
        cfg: PredictionsConfig,
        worker: usize,
        peers: usize,
    ) -> Result<PredictionsWriter, PredictionsError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| PredictionsError::Io {
            path: cfg.dir.display().to_string(),
            source,
        })?;
        // One epoch queued while one is written: the worker waits for a writer further behind.
        let (tx, rx) = crossbeam_channel::bounded::<Arc<EpochView>>(1);
        let dir = cfg.dir.display().to_string();
        let thread = std::thread::Builder::new()
            .name(format!("fleetwatch-predictions-{worker}"))
            .spawn(move || {
                lower_priority();
                for view in rx {
                    let path = cfg.file(view.epoch, worker, peers);
                    let started = std::time::Instant::now();
                    match write_file(&cfg, &view, &path) {
                        Ok(rows) => {
                            crate::metrics::global()
                                .predictions_written(rows, started.elapsed().as_secs_f64());
                            tracing::debug!(
                                rows,
                                seconds = started.elapsed().as_secs_f64(),
                                "predictions {} written",
                                path.display()
                            )
                        }
                        Err(e) => {
                            crate::metrics::global().predictions_failed();
                            tracing::error!("{e}")
                        }
                    }
                }
            })
            .map_err(|source| PredictionsError::Io { path: dir, source })?;
        Ok(PredictionsWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues an epoch's view (blocks while the writer is an epoch behind).
    pub fn write(&self, view: Arc<EpochView>) {
        if let Some(tx) = &self.tx
            && tx.send(view).is_err()
        {
            tracing::error!("the predictions writer has stopped");
        }
    }
}

impl Drop for PredictionsWriter {
    /// Waits for the queued files: a run's last epochs are on disk when the run returns.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer yields the CPU to the workers: its file is due before the next epoch's (5 minutes at the
/// user's scale), an epoch's own work is due at once. (Linux: a thread's nice value is its own; raising
/// it needs no privilege. Elsewhere, or if refused, the thread keeps the default priority.)
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread's own id, with no pointers involved.
        let refused = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0
        };
        if refused {
            tracing::debug!("the predictions writer keeps the default priority");
        }
    }
}

/// Writes the rows of `view` scored at its epoch to `path` (temporary name, fsync, rename). Returns the
/// rows written.
pub fn write_file(
    cfg: &PredictionsConfig,
    view: &EpochView,
    path: &Path,
) -> Result<u64, PredictionsError> {
    let name = path.display().to_string();
    let io = |source| PredictionsError::Io {
        path: name.clone(),
        source,
    };
    let pq = |source| PredictionsError::Parquet {
        path: name.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("parquet.tmp");
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(pq)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("alert"), true)
        .set_column_dictionary_enabled(ColumnPath::from("severity"), true)
        // Statistics cost a comparison per value: none from the column writers. The customer column, which
        // is encoded here (`customer_chunk`), carries its chunk's min and max (row groups hold customer
        // ranges, so a reader looking for one customer skips the others).
        .set_statistics_enabled(EnabledStatistics::None)
        .set_created_by(format!("fleetwatch {}", env!("CARGO_PKG_VERSION")))
        .build();
    let file = File::create(&tmp).map_err(io)?;
    let mut w = SerializedFileWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        schema,
        Arc::new(props),
    )
    .map_err(pq)?;
    let (customer_column, feature_column) =
        (w.schema_descr().column(1), w.schema_descr().column(2));

    let now = (view.epoch + 1).min(u32::MAX as u64) as u32;
    let time = (view.epoch * cfg.epoch_seconds * 1000) as i64;
    let names: Vec<&[u8]> = cfg.features.iter().map(|f| f.as_bytes()).collect();
    let kinds: Vec<ByteArray> = crate::model::AnomalyKind::ALL
        .iter()
        .map(|k| ByteArray::from(Bytes::from_static(k.as_str().as_bytes())))
        .collect();
    let severities = [
        ByteArray::from(Bytes::from_static(b"warning")),
        ByteArray::from(Bytes::from_static(b"critical")),
    ];

    let mut rows = 0u64;
    let mut c = 0usize;
    // One row group's selected rows: (customer index, series index).
    let mut picked: Vec<(u32, u32)> = Vec::with_capacity(ROW_GROUP.min(view.scored_at.len()));
    let mut ids: Vec<u8> = Vec::new();
    let mut id_at: Vec<(u32, u32)> = Vec::new();
    let mut gathered: Vec<f32> = Vec::new();
    let features = view.features.min(names.len());
    while c < view.len() {
        picked.clear();
        ids.clear();
        id_at.clear();
        while c < view.len() && picked.len() + features <= ROW_GROUP.max(features) {
            let first = picked.len();
            for s in view.series(c).take(features) {
                if view.scored_at[s] == now {
                    picked.push((id_at.len() as u32, s as u32));
                }
            }
            if picked.len() > first {
                let b = view.customers[c].as_bytes();
                id_at.push((ids.len() as u32, b.len() as u32));
                ids.extend_from_slice(b);
            }
            c += 1;
        }
        if picked.is_empty() {
            continue;
        }
        let mut g = w.next_row_group().map_err(pq)?;
        // `time`: the epoch's start on every row.
        if let Some(mut cw) = g.next_column().map_err(pq)? {
            cw.typed::<Int64Type>()
                .write_batch(&vec![time; picked.len()], None, None)
                .map_err(pq)?;
            cw.close().map_err(pq)?;
        }
        // `customer` and `feature`: encoded here (`DictionaryChunk`) and spliced in.
        for chunk in [
            customer_chunk(&customer_column, &ids, &id_at, &picked),
            feature_chunk(&feature_column, &names, view.features, &picked),
        ] {
            let (chunk, close) = chunk.map_err(pq)?;
            g.append_column(&chunk, close).map_err(pq)?;
        }
        // The values, then `alert` and `severity`, by the column writers.
        let mut col = 3usize;
        while let Some(mut cw) = g.next_column().map_err(pq)? {
            match col {
                3..=7 => {
                    let src = match col {
                        3 => &view.observed,
                        4 => &view.expected,
                        5 => &view.lower,
                        6 => &view.upper,
                        _ => &view.score,
                    };
                    // Every series of the group's customers scored (the usual case): the column as it is.
                    let (first, last) = (picked[0].1 as usize, picked[picked.len() - 1].1 as usize);
                    let w = cw.typed::<FloatType>();
                    if last + 1 - first == picked.len() {
                        w.write_batch(&src[first..=last], None, None).map_err(pq)?;
                    } else {
                        gathered.clear();
                        gathered.extend(picked.iter().map(|(_, s)| src[*s as usize]));
                        w.write_batch(&gathered, None, None).map_err(pq)?;
                    }
                }
                _ => {
                    let kind = col == 8;
                    let mut values = Vec::new();
                    let levels: Vec<i16> = picked
                        .iter()
                        .map(|(_, s)| match decode_alert(view.alert[*s as usize]) {
                            Some(a) => {
                                values.push(if kind {
                                    kinds[a.kind.index() as usize].clone()
                                } else {
                                    severities[(a.severity
                                        == crate::model::header::Severity::Critical)
                                        as usize]
                                        .clone()
                                });
                                1
                            }
                            None => 0,
                        })
                        .collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&levels), None)
                        .map_err(pq)?;
                }
            }
            cw.close().map_err(pq)?;
            col += 1;
        }
        g.close().map_err(pq)?;
        rows += picked.len() as u64;
    }
    let out = w.into_inner().map_err(pq)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(rows)
}

/// A dictionary-encoded column chunk written here instead of by the column writer, for the two string
/// columns whose values are indices we already hold: `customer` (the group's distinct ids; a customer's rows
/// are consecutive, so its indices are one RLE run) and `feature` (the spec's names; the indices cycle, so
/// they are bit-packed). The column writer's dictionary encoder hashed and compared every row's string and
/// counted two reference-count changes per row: with both columns, most of the file's time (BENCHMARKS.md,
/// "Predictions: the string columns encoded by hand"). One Snappy-compressed dictionary page (PLAIN: a 4-byte
/// length and the bytes per entry) and one data page (v1, RLE_DICTIONARY: the bit width, then the indices as
/// RLE / bit-packed hybrid runs; the columns are required, so there are no levels), an offset index entry
/// for the data page (the other columns' writers write one, and a file has one for every chunk or none) and
/// the given statistics.
struct DictionaryChunk {
    /// PLAIN-encoded entries.
    dictionary: Vec<u8>,
    entries: usize,
    /// The bit width byte and the runs.
    indices: Vec<u8>,
    rows: usize,
}

impl DictionaryChunk {
    fn new<'a>(entries: impl Iterator<Item = &'a [u8]>, rows: usize) -> DictionaryChunk {
        let mut dictionary = Vec::new();
        let mut n = 0;
        for e in entries {
            dictionary.extend_from_slice(&(e.len() as u32).to_le_bytes());
            dictionary.extend_from_slice(e);
            n += 1;
        }
        DictionaryChunk {
            dictionary,
            entries: n,
            indices: Vec::new(),
            rows,
        }
    }

    /// Indices 0..entries need ⌈log2 entries⌉ bits, at least 1.
    fn bit_width(&self) -> u8 {
        (u32::BITS - (self.entries.max(2) as u32 - 1).leading_zeros()) as u8
    }

    /// The indices as RLE runs, one per (index, length): a ULEB128 header of `length << 1`, then the value in
    /// ⌈bit width / 8⌉ bytes, little-endian.
    fn rle_runs(mut self, runs: impl Iterator<Item = (u32, usize)>) -> Self {
        let width = self.bit_width();
        let value_bytes = (width as usize).div_ceil(8);
        self.indices.push(width);
        for (index, length) in runs {
            uleb128((length as u64) << 1, &mut self.indices);
            self.indices
                .extend_from_slice(&index.to_le_bytes()[..value_bytes]);
        }
        self
    }

    /// The indices as one bit-packed run: a ULEB128 header of `groups << 1 | 1`, then the values packed
    /// least-significant bit first, `bit width` bits each, in groups of eight (the last padded with zeros).
    fn bit_packed(mut self, values: impl Iterator<Item = u32>) -> Self {
        let width = self.bit_width() as u32;
        let groups = self.rows.div_ceil(8);
        self.indices.push(width as u8);
        uleb128(((groups as u64) << 1) | 1, &mut self.indices);
        let start = self.indices.len();
        let (mut acc, mut bits) = (0u64, 0u32);
        for v in values {
            acc |= (v as u64) << bits;
            bits += width;
            while bits >= 8 {
                self.indices.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
        if bits > 0 {
            self.indices.push(acc as u8);
        }
        self.indices.resize(start + groups * width as usize, 0);
        self
    }

    /// The chunk's bytes and what the row group writer needs to splice them in.
    fn finish(
        self,
        descr: &ColumnDescPtr,
        statistics: Option<Statistics>,
    ) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
        let mut snappy = snap::raw::Encoder::new();
        let mut compress = |raw: &[u8]| {
            snappy
                .compress_vec(raw)
                .map_err(|e| ParquetError::General(format!("snappy: {e}")))
        };
        let dictionary = compress(&self.dictionary)?;
        let indices = compress(&self.indices)?;
        let mut sink = TrackedWrite::new(Vec::with_capacity(dictionary.len() + indices.len() + 64));
        let (dict_page, data_page) = {
            let mut pages = SerializedPageWriter::new(&mut sink);
            let d = pages.write_page(CompressedPage::new(
                Page::DictionaryPage {
                    buf: Bytes::from(dictionary),
                    num_values: self.entries as u32,
                    encoding: Encoding::PLAIN,
                    is_sorted: false,
                },
                self.dictionary.len(),
            ))?;
            let p = pages.write_page(CompressedPage::new(
                Page::DataPage {
                    buf: Bytes::from(indices),
                    num_values: self.rows as u32,
                    encoding: Encoding::RLE_DICTIONARY,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                },
                self.indices.len(),
            ))?;
            pages.close()?;
            (d, p)
        };
        let chunk = Bytes::from(sink.into_inner()?);
        let mut metadata = ColumnChunkMetaData::builder(descr.clone())
            .set_compression(Compression::SNAPPY)
            .set_encodings(vec![
                Encoding::PLAIN,
                Encoding::RLE,
                Encoding::RLE_DICTIONARY,
            ])
            .set_page_encoding_stats(vec![
                PageEncodingStats {
                    page_type: PageType::DICTIONARY_PAGE,
                    encoding: Encoding::PLAIN,
                    count: 1,
                },
                PageEncodingStats {
                    page_type: PageType::DATA_PAGE,
                    encoding: Encoding::RLE_DICTIONARY,
                    count: 1,
                },
            ])
            .set_total_compressed_size(
                (dict_page.compressed_size + data_page.compressed_size) as i64,
            )
            .set_total_uncompressed_size(
                (dict_page.uncompressed_size + data_page.uncompressed_size) as i64,
            )
            .set_num_values(self.rows as i64)
            .set_dictionary_page_offset(Some(dict_page.offset as i64))
            .set_data_page_offset(data_page.offset as i64);
        if let Some(s) = statistics {
            metadata = metadata.set_statistics(s);
        }
        Ok((
            chunk,
            ColumnCloseResult {
                bytes_written: dict_page.bytes_written + data_page.bytes_written,
                rows_written: self.rows as u64,
                metadata: metadata.build()?,
                bloom_filter: None,
                column_index: None,
                offset_index: Some(OffsetIndexMetaData {
                    page_locations: vec![PageLocation {
                        offset: data_page.offset as i64,
                        compressed_page_size: data_page.compressed_size as i32,
                        first_row_index: 0,
                    }],
                    unencoded_byte_array_data_bytes: None,
                }),
            },
        ))
    }
}

fn uleb128(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One row group's `customer` column: the group's distinct ids in `id_at` order, one RLE run per customer,
/// and the smallest and largest id as the chunk's statistics (row groups hold customer ranges, so a reader
/// looking for one customer skips the others). `picked` holds (index into `id_at`, series) per row.
fn customer_chunk(
    descr: &ColumnDescPtr,
    ids: &[u8],
    id_at: &[(u32, u32)],
    picked: &[(u32, u32)],
) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
    let id = |&(at, len): &(u32, u32)| &ids[at as usize..(at + len) as usize];
    let mut i = 0;
    let runs = std::iter::from_fn(|| {
        let index = picked.get(i)?.0;
        let length = picked[i..].iter().take_while(|p| p.0 == index).count();
        i += length;
        Some((index, length))
    });
    let chunk = DictionaryChunk::new(id_at.iter().map(id), picked.len()).rle_runs(runs);
    let min = id_at.iter().map(id).min().unwrap_or_default();
    let max = id_at.iter().map(id).max().unwrap_or_default();
    chunk.finish(
        descr,
        Some(Statistics::byte_array(
            Some(ByteArray::from(min.to_vec())),
            Some(ByteArray::from(max.to_vec())),
            Some(id_at.len() as u64),
            Some(0),
            false,
        )),
    )
}

/// One row group's `feature` column: the spec's feature names, each row's feature index bit-packed (a
/// customer's scored features in order: no runs to speak of). No statistics, as before.
fn feature_chunk(
    descr: &ColumnDescPtr,
    names: &[&[u8]],
    features: usize,
    picked: &[(u32, u32)],
) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
    DictionaryChunk::new(names.iter().copied(), picked.len())
        .bit_packed(picked.iter().map(|&(_, s)| s % features as u32))
        .finish(descr, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::CustomerId;
    use crate::model::AnomalyKind;
    use crate::model::header::{OpenAlert, Severity, encode_alert};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    fn view() -> EpochView {
        let id = |s: &str| CustomerId::parse(s.as_bytes(), b"").unwrap();
        let crit = encode_alert(Some(OpenAlert {
            severity: Severity::Critical,
            kind: AnomalyKind::LevelShift,
        }));
        EpochView {
            epoch: 10,
            features: 2,
            customers: vec![id("a-1"), id("b-22")],
            last_seen: vec![11, 11],
            customer_alert: vec![0, 0],
            silence: vec![0, 0],
            // a: both scored at 10; b: only feature 1 (feature 0 last scored at 9)
            scored_at: vec![11, 11, 10, 11],
            observed: vec![1.0, 2.0, 3.0, 4.5],
            expected: vec![1.5, 2.0, 3.0, 1.0],
            lower: vec![0.0, 1.0, 2.0, 0.5],
            upper: vec![3.0, 3.0, 4.0, 1.5],
            score: vec![0.25, 0.0, 0.1, 7.0],
            alert: vec![0, 0, 0, crit],
        }
    }

    /// Every row of the file at `path`: its columns as `cell` formats them (`None`: left out), joined by spaces.
    fn read_rows(path: &Path, cell: impl Fn(&str, &Field) -> Option<String>) -> Vec<String> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                r.get_column_iter()
                    .filter_map(|(name, f)| cell(name, f))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn writes_the_series_scored_at_the_epoch_and_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PredictionsConfig {
            dir: dir.path().to_path_buf(),
            every: 1,
            features: vec!["rssi".into(), "tput".into()],
            epoch_seconds: 300,
        };
        let path = cfg.file(10, 1, 2);
        assert!(path.ends_with("epoch=000010/part-1-of-2.parquet"));
        let rows = write_file(&cfg, &view(), &path).unwrap();
        assert_eq!(rows, 3);
        // no temporary file left behind
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("part-1-of-2.parquet")]);
        let got = read_rows(&path, |name, f| {
            Some(match f {
                Field::Null => format!("{name}=null"),
                Field::TimestampMillis(t) => format!("{name}={t}"),
                Field::Str(s) => format!("{name}={s}"),
                Field::Float(x) => format!("{name}={x}"),
                other => format!("{name}=?{other:?}"),
            })
        });
        assert_eq!(
            got,
            vec![
                "time=3000000 customer=a-1 feature=rssi observed=1 expected=1.5 lower=0 upper=3 \
                 score=0.25 alert=null severity=null",
                "time=3000000 customer=a-1 feature=tput observed=2 expected=2 lower=1 upper=3 \
                 score=0 alert=null severity=null",
                "time=3000000 customer=b-22 feature=tput observed=4.5 expected=1 lower=0.5 upper=1.5 \
                 score=7 alert=level_shift severity=critical",
            ]
        );
    }

    /// The customer column is encoded by hand (`customer_chunk`): with 600 customers its indices take 10 bits
    /// (two bytes a run), customers without a row this epoch are left out of its dictionary, and its chunk
    /// statistics are the smallest and largest id whatever the view's order.
    #[test]
    fn the_customer_column_reads_back_with_its_statistics_for_many_customers() {
        use parquet::file::statistics::Statistics;
        let n = 600usize;
        const F: usize = 20;
        // Ids in an order that is not sorted (the statistics must not assume it).
        let names: Vec<String> = (0..n).map(|i| format!("c-{:04}", (i * 7919) % n)).collect();
        let view = EpochView {
            epoch: 10,
            features: F,
            customers: names
                .iter()
                .map(|s| CustomerId::parse(s.as_bytes(), b"").unwrap())
                .collect(),
            last_seen: vec![11; n],
            customer_alert: vec![0; n],
            silence: vec![0; n],
            // Every fifth customer scored nothing this epoch, every third only its second feature.
            scored_at: (0..F * n)
                .map(|s| match (s / F % 5, s / F % 3, s % F) {
                    (0, _, _) => 9,
                    (_, 0, f) if f < F / 2 => 9,
                    _ => 11,
                })
                .collect(),
            observed: (0..F * n).map(|s| s as f32).collect(),
            expected: vec![0.0; F * n],
            lower: vec![0.0; F * n],
            upper: vec![0.0; F * n],
            score: vec![0.0; F * n],
            alert: vec![0; F * n],
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = PredictionsConfig {
            dir: dir.path().to_path_buf(),
            every: 1,
            features: (0..F).map(|f| format!("f{f}")).collect(),
            epoch_seconds: 300,
        };
        let path = cfg.file(10, 0, 1);
        let mut expected = Vec::new();
        for (c, name) in names.iter().enumerate() {
            for f in 0..F {
                if view.scored_at[F * c + f] == 11 {
                    expected.push(format!("{name} f{f} {}", F * c + f));
                }
            }
        }
        let included: Vec<&String> = names
            .iter()
            .enumerate()
            .filter(|(c, _)| c % 5 != 0)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            write_file(&cfg, &view, &path).unwrap(),
            expected.len() as u64
        );
        let got = read_rows(&path, |name, f| match (name, f) {
            ("customer" | "feature", Field::Str(s)) => Some(s.clone()),
            ("observed", Field::Float(x)) => Some(format!("{x}")),
            _ => None,
        });
        assert_eq!(got, expected);
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let chunk = reader.metadata().row_group(0).column(1);
        assert_eq!(chunk.column_path().string(), "customer");
        match chunk.statistics() {
            Some(Statistics::ByteArray(s)) => {
                let min = included.iter().min().unwrap();
                let max = included.iter().max().unwrap();
                assert_eq!(s.min_opt().unwrap().data(), min.as_bytes());
                assert_eq!(s.max_opt().unwrap().data(), max.as_bytes());
                assert_eq!(s.distinct_count(), Some(included.len() as u64));
            }
            other => panic!("customer statistics: {other:?}"),
        }
    }

    /// The hand-encoded dictionary pages against bytes worked out by hand (Parquet's PLAIN and RLE /
    /// bit-packed hybrid encodings).
    #[test]
    fn dictionary_chunks_encode_as_worked_out_by_hand() {
        let plain = DictionaryChunk::new([&b"ab"[..], b"c"].into_iter(), 0);
        assert_eq!(plain.dictionary, [2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, b'c']);
        // 300 entries: 9 bits, stored in 2 bytes per run; lengths 20, 1, 200 → ULEB128 of 40, 2, 400.
        let entries: Vec<Vec<u8>> = (0..300).map(|i: u32| i.to_le_bytes().to_vec()).collect();
        let rle = DictionaryChunk::new(entries.iter().map(|e| e.as_slice()), 221)
            .rle_runs([(0, 20), (299, 1), (5, 200)].into_iter());
        assert_eq!(rle.indices, [9, 40, 0, 0, 2, 0x2b, 0x01, 0x90, 0x03, 5, 0]);
        // 5 entries: 3 bits; 10 values in 2 groups of 8 (header (2 << 1) | 1), least-significant bit first:
        // 0 1 2 3 4 0 1 2 → bits 3, 7, 9, 10, 14, 18, 22 set → 0x88 0x46 0x44; 3 4 (0 × 6) → 0x23 0 0.
        let packed = DictionaryChunk::new(entries[..5].iter().map(|e| e.as_slice()), 10)
            .bit_packed([0, 1, 2, 3, 4, 0, 1, 2, 3, 4].into_iter());
        assert_eq!(packed.indices, [3, 0x05, 0x88, 0x46, 0x44, 0x23, 0, 0]);
    }

    #[test]
    fn every_nth_epoch_is_due() {
        let cfg = PredictionsConfig {
            dir: PathBuf::new(),
            every: 12,
            features: vec![],
            epoch_seconds: 300,
        };
        assert!(cfg.is_due(0) && cfg.is_due(24));
        assert!(!cfg.is_due(13));
    }
}

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
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

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

/// A feature name as `'static` bytes: the column writers clone a value per row, and a static `Bytes`
/// clones without touching a reference count. Each distinct name is leaked once per process (a spec has
/// at most 64 features).
fn interned(name: &str) -> &'static [u8] {
    static NAMES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::BTreeMap<String, &'static [u8]>>,
    > = std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    names
        .entry(name.to_string())
        .or_insert_with(|| Box::leak(name.as_bytes().to_vec().into_boxed_slice()))
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
        .set_column_dictionary_enabled(ColumnPath::from("feature"), true)
        .set_column_dictionary_enabled(ColumnPath::from("alert"), true)
        .set_column_dictionary_enabled(ColumnPath::from("severity"), true)
        .set_column_dictionary_enabled(ColumnPath::from("customer"), true)
        // Statistics cost a comparison per value; only the customer's (row groups hold customer ranges, so
        // a reader looking for one customer skips the others) are kept.
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from("customer"), EnabledStatistics::Chunk)
        .set_created_by(format!("fleetwatch {}", env!("CARGO_PKG_VERSION")))
        .build();
    let file = File::create(&tmp).map_err(io)?;
    let mut w = SerializedFileWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        schema,
        Arc::new(props),
    )
    .map_err(pq)?;

    let now = (view.epoch + 1).min(u32::MAX as u64) as u32;
    let time = (view.epoch * cfg.epoch_seconds * 1000) as i64;
    let names: Vec<ByteArray> = cfg
        .features
        .iter()
        .map(|f| ByteArray::from(Bytes::from_static(interned(f))))
        .collect();
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
        let ids = Bytes::from(std::mem::take(&mut ids));
        let mut g = w.next_row_group().map_err(pq)?;
        let mut col = 0usize;
        while let Some(mut cw) = g.next_column().map_err(pq)? {
            match col {
                0 => {
                    let v = vec![time; picked.len()];
                    cw.typed::<Int64Type>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
                1 => {
                    let v: Vec<ByteArray> = picked
                        .iter()
                        .map(|(ci, _)| {
                            let (at, len) = id_at[*ci as usize];
                            ByteArray::from(ids.slice(at as usize..(at + len) as usize))
                        })
                        .collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
                2 => {
                    let v: Vec<ByteArray> = picked
                        .iter()
                        .map(|(_, s)| names[*s as usize % view.features].clone())
                        .collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
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
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let got: Vec<String> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                r.get_column_iter()
                    .map(|(name, f)| match f {
                        Field::Null => format!("{name}=null"),
                        Field::TimestampMillis(t) => format!("{name}={t}"),
                        Field::Str(s) => format!("{name}={s}"),
                        Field::Float(x) => format!("{name}={x}"),
                        other => format!("{name}=?{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
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

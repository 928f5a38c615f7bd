//! NAB's corpus: data files (`data/<category>/<file>.csv`, columns `timestamp,value`), label windows
//! (`labels/combined_windows.json`), and scoring profiles (`config/profiles.json`).
//!
//! Windows are resolved to row indices once; as in NAB (`labeler.CorpusLabel.getWindows`), a window edge
//! that is not exactly one of its file's timestamps is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::NabError;
use crate::timefmt::days_from_civil;

/// One of NAB's series.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path relative to `data/`, e.g. `realKnownCause/nyc_taxi.csv` (NAB's key for it).
    pub rel: String,
    /// The folder, e.g. `realKnownCause`.
    pub category: String,
    /// The file name, e.g. `nyc_taxi.csv`.
    pub name: String,
    /// Timestamps as written in the file (echoed into results files byte for byte).
    pub timestamps: Vec<String>,
    /// Timestamps as microseconds since 1970-01-01 (naive, as NAB reads them).
    pub micros: Vec<i64>,
    /// Values as written in the file.
    pub raw_values: Vec<String>,
    pub values: Vec<f64>,
    /// Label windows as inclusive row ranges, in time order.
    pub windows: Vec<(usize, usize)>,
}

impl DataFile {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// NAB's `label` column: 1 inside a window, else 0.
    pub fn labels(&self) -> Vec<u8> {
        let mut l = vec![0u8; self.len()];
        for &(a, b) in &self.windows {
            for x in &mut l[a..=b] {
                *x = 1;
            }
        }
        l
    }

    /// Unix seconds of row `i`.
    pub fn unix_seconds(&self, i: usize) -> i64 {
        self.micros[i].div_euclid(1_000_000)
    }
}

/// A scoring profile: the weights of NAB's cost matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub root: PathBuf,
    /// In NAB's key order (sorted by relative path).
    pub files: Vec<DataFile>,
    /// `standard`, `reward_low_FP_rate`, `reward_low_FN_rate` (then any others, by name).
    pub profiles: Vec<Profile>,
    /// Rows excluded from scoring at the start of each file: `min(⌊p·n⌋, p·5000)`.
    pub probationary_percent: f64,
}

/// The profile names in the order NAB's scoreboard lists them.
pub const PROFILE_ORDER: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

impl Corpus {
    /// Loads NAB from its root folder (the one holding `data/`, `labels/` and `config/`).
    pub fn load(root: &Path) -> Result<Corpus, NabError> {
        let windows_path = root.join("labels").join("combined_windows.json");
        let windows: BTreeMap<String, Vec<Vec<String>>> = read_json(&windows_path)?;
        let profiles_path = root.join("config").join("profiles.json");
        let profiles = read_profiles(&profiles_path)?;
        let mut files = Vec::with_capacity(windows.len());
        for (rel, wins) in &windows {
            let path = root.join("data").join(rel);
            let mut f = read_data_file(&path, rel)?;
            for w in wins {
                let [start, end] = w.as_slice() else {
                    return Err(NabError::format(
                        &windows_path,
                        format!("{rel}: a window must be [start, end]"),
                    ));
                };
                let find = |t: &str| -> Result<usize, NabError> {
                    let us = parse_timestamp(t).ok_or_else(|| {
                        NabError::format(&windows_path, format!("{rel}: bad timestamp {t:?}"))
                    })?;
                    f.micros.iter().position(|&x| x == us).ok_or_else(|| {
                        NabError::format(
                            &windows_path,
                            format!("{rel}: window edge {t} is not a timestamp of the file"),
                        )
                    })
                };
                let (a, b) = (find(start)?, find(end)?);
                if b < a {
                    return Err(NabError::format(
                        &windows_path,
                        format!("{rel}: window {start}..{end} ends before it starts"),
                    ));
                }
                f.windows.push((a, b));
            }
            files.push(f);
        }
        Ok(Corpus {
            root: root.to_path_buf(),
            files,
            profiles,
            probationary_percent: 0.15,
        })
    }

    /// The number of label windows (NAB's "perfect" count of true positives).
    pub fn window_count(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Reads a detector's per-row `anomaly_score` column from NAB's results layout
    /// (`dir/<category>/<detector>_<file>.csv`), one vector per data file, checked against the data's length.
    pub fn read_results(&self, dir: &Path, detector: &str) -> Result<Vec<Vec<f64>>, NabError> {
        let mut out = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let path = dir.join(&f.category).join(format!("{detector}_{}", f.name));
            let mut rdr = csv::Reader::from_path(&path).map_err(|e| csv_error(&path, e))?;
            let headers = rdr.headers().map_err(|e| csv_error(&path, e))?.clone();
            let col = headers
                .iter()
                .position(|h| h == "anomaly_score")
                .ok_or_else(|| NabError::format(&path, "no anomaly_score column"))?;
            let mut scores = Vec::with_capacity(f.len());
            for (i, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(|e| csv_error(&path, e))?;
                let v = rec
                    .get(col)
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or_else(|| NabError::format(&path, format!("row {}: bad score", i + 2)))?;
                scores.push(v);
            }
            if scores.len() != f.len() {
                return Err(NabError::format(
                    &path,
                    format!("{} rows, the data file has {}", scores.len(), f.len()),
                ));
            }
            out.push(scores);
        }
        Ok(out)
    }
}

fn csv_error(path: &Path, e: csv::Error) -> NabError {
    NabError::format(path, e.to_string())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NabError> {
    let bytes = std::fs::read(path).map_err(|e| NabError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| NabError::format(path, e.to_string()))
}

fn read_profiles(path: &Path) -> Result<Vec<Profile>, NabError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Costs {
        tp_weight: f64,
        fp_weight: f64,
        fn_weight: f64,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "CostMatrix")]
        cost_matrix: Costs,
    }
    let map: BTreeMap<String, Entry> = read_json(path)?;
    let mut profiles: Vec<Profile> = map
        .into_iter()
        .map(|(name, e)| Profile {
            name,
            tp_weight: e.cost_matrix.tp_weight,
            fp_weight: e.cost_matrix.fp_weight,
            fn_weight: e.cost_matrix.fn_weight,
        })
        .collect();
    let rank = |n: &str| {
        PROFILE_ORDER
            .iter()
            .position(|p| *p == n)
            .unwrap_or(usize::MAX)
    };
    profiles.sort_by(|a, b| rank(&a.name).cmp(&rank(&b.name)).then(a.name.cmp(&b.name)));
    Ok(profiles)
}

fn read_data_file(path: &Path, rel: &str) -> Result<DataFile, NabError> {
    let (category, name) = rel
        .rsplit_once('/')
        .ok_or_else(|| NabError::format(path, "expected <category>/<file>.csv"))?;
    let mut rdr = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
    let mut f = DataFile {
        rel: rel.to_string(),
        category: category.to_string(),
        name: name.to_string(),
        timestamps: Vec::new(),
        micros: Vec::new(),
        raw_values: Vec::new(),
        values: Vec::new(),
        windows: Vec::new(),
    };
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let (Some(t), Some(v)) = (rec.get(0), rec.get(1)) else {
            return Err(NabError::format(
                path,
                format!("row {}: two columns expected", i + 2),
            ));
        };
        let us = parse_timestamp(t)
            .ok_or_else(|| NabError::format(path, format!("row {}: bad timestamp {t:?}", i + 2)))?;
        let x = v
            .trim()
            .parse::<f64>()
            .map_err(|_| NabError::format(path, format!("row {}: bad value {v:?}", i + 2)))?;
        f.timestamps.push(t.to_string());
        f.micros.push(us);
        f.raw_values.push(v.to_string());
        f.values.push(x);
    }
    Ok(f)
}

/// Parses NAB's naive timestamps, `YYYY-MM-DD HH:MM:SS[.ffffff]`, into microseconds since 1970-01-01.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut micros = 0i64;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() > 26 || b.len() == 20 {
            return None;
        }
        let frac = num(20..b.len())?;
        micros = frac * 10i64.pow((26 - b.len()) as u32);
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 24 + h) * 60 + mi) * 60_000_000 + sec * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_microseconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(
            parse_timestamp("1970-01-02 00:00:00.000000"),
            Some(86_400_000_000)
        );
        // 2014-07-01 is day 16252 since the epoch
        assert_eq!(
            parse_timestamp("2014-07-01 00:30:00"),
            Some((16_252 * 86_400 + 1_800) * 1_000_000)
        );
        assert_eq!(parse_timestamp("2014-07-01"), None);
        assert_eq!(parse_timestamp("2014-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("2014-07-01 00:00:00."), None);
        assert_eq!(parse_timestamp("2014-07-01 00:00:00x1"), None);
    }
}

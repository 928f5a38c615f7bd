//! Detectors by name: what a spec's `[detector] name = "..."` resolves to.
//!
//! To add a detector: implement [`Detector`](super::Detector), add one line to [`Registry::builtin`] (or call
//! [`Registry::register`] from your own binary, see `examples/custom_detector.rs`), and name it in a spec.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Detector;

/// A detector's parameters from the spec's `[detector]` table, with typed access that records which keys
/// were read so that misspelt parameters are reported instead of silently ignored.
pub struct DetectorParams {
    table: toml::Table,
    read: std::cell::RefCell<Vec<String>>,
}

impl DetectorParams {
    pub fn new(table: toml::Table) -> Self {
        DetectorParams {
            table,
            read: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A float parameter with a default, checked to lie in `[lo, hi]`.
    pub fn f32(&self, key: &str, default: f32, lo: f32, hi: f32) -> Result<f32, String> {
        self.read.borrow_mut().push(key.to_string());
        let v = match self.table.get(key) {
            None => return Ok(default),
            Some(toml::Value::Float(f)) => *f as f32,
            Some(toml::Value::Integer(i)) => *i as f32,
            Some(other) => {
                return Err(format!(
                    "detector parameter {key} must be a number, got {}",
                    other.type_str()
                ));
            }
        };
        if !(lo..=hi).contains(&v) {
            return Err(format!(
                "detector parameter {key} = {v} is outside [{lo}, {hi}]"
            ));
        }
        Ok(v)
    }

    /// Fails if the table holds keys no one read (typos).
    pub fn finish(&self) -> Result<(), String> {
        let read = self.read.borrow();
        let unknown: Vec<&String> = self
            .table
            .keys()
            .filter(|k| !read.iter().any(|r| r == *k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown detector parameters: {unknown:?}"))
        }
    }
}

type Constructor = fn(&DetectorParams) -> Result<Arc<dyn Detector>, String>;

/// Name → constructor.
#[derive(Clone)]
pub struct Registry {
    entries: BTreeMap<String, Constructor>,
}

impl Registry {
    /// The detectors that ship with fleetwatch.
    pub fn builtin() -> Registry {
        let mut r = Registry {
            entries: BTreeMap::new(),
        };
        r.register("seasonal-robust", |p| {
            Ok(Arc::new(super::seasonal::SeasonalRobust::from_params(p)?))
        });
        r.register("ewma-zscore", |p| {
            Ok(Arc::new(super::ewma::EwmaZscore::from_params(p)?))
        });
        r
    }

    /// Adds (or replaces) a detector.
    pub fn register(&mut self, name: &str, constructor: Constructor) {
        self.entries.insert(name.to_string(), constructor);
    }

    /// Registered names.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Builds the named detector from its parameters.
    pub fn build(&self, name: &str, params: &toml::Table) -> Result<Arc<dyn Detector>, String> {
        let constructor = self.entries.get(name).ok_or_else(|| {
            format!(
                "unknown detector {name:?}; registered detectors: {}",
                self.names().join(", ")
            )
        })?;
        let params = DetectorParams::new(params.clone());
        let detector = constructor(&params)?;
        params.finish()?;
        Ok(detector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_rejects() {
        let r = Registry::builtin();
        assert!(r.build("seasonal-robust", &toml::Table::new()).is_ok());
        assert!(r.build("nope", &toml::Table::new()).is_err());
        let mut t = toml::Table::new();
        t.insert("alpah".into(), toml::Value::Float(0.1));
        assert!(
            r.build("seasonal-robust", &t)
                .err()
                .unwrap()
                .contains("alpah")
        );
        let mut t = toml::Table::new();
        t.insert("alpha".into(), toml::Value::Float(7.0));
        assert!(r.build("seasonal-robust", &t).is_err());
    }
}

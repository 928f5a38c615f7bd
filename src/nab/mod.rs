//! The Numenta Anomaly Benchmark (NAB v1.1) in the product: its corpus, its scorer, and a streaming runner
//! that feeds each of its series, row by row, through the fleet's own per-series model.
//!
//! * [`corpus`] — the 58 data files, the label windows, the scoring profiles.
//! * [`scorer`] — NAB's rules, ported line for line from `nab/sweeper.py`, `optimizer.py`, `scorer.py` and
//!   `runner.normalize`: the scaled-sigmoid reward, the probationary period, the corpus-wide threshold sweep
//!   and the normalisation between the null detector (0) and the perfect one (100).
//! * [`runner`] — the configured detector over every series as a stream, and the results in NAB's layout.
//!
//! The scorer is proven against NAB's published numbers: fed the per-row outputs of `numenta` and
//! `windowedGaussian` it reproduces their `final_results.json` figures (`tests/nab.rs`).

pub mod corpus;
pub mod runner;
pub mod scorer;

pub use corpus::{Corpus, DataFile, Profile};
pub use runner::{NabOptions, run_detector};
pub use scorer::{CorpusScore, score_corpus};

/// What can go wrong reading NAB's files.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

impl NabError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> NabError {
        NabError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn format(path: &std::path::Path, reason: impl Into<String>) -> NabError {
        NabError::Format {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

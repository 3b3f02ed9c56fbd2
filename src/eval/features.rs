//! Pooled features kept on disk between runs: the dump and load of the study
//! scripts (`cv --dump-features` / `--load-features`) and the feature cache
//! (`cv` / `finetune --feature-cache DIR`), from which a later cv or
//! finetune on the same images, split, weights and settings reads its
//! features back instead of repeating the pass through the trunk — minutes
//! on a laptop CPU, most of a probe's cv or finetune.
//!
//! A cache entry is found by a hash of everything its features depend on:
//! the dump key (weights, preprocessing, views, seed, pooling, rows), the
//! images' prepared pixels, the mirror images, the thread count and device
//! (the arithmetic's order), and this program's own bytes (a rebuilt vggft
//! may compute them differently). A miss only costs the pass it would have
//! cost anyway; the cache never fails a run.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::Block;
use crate::session::Session;
use crate::train::{self, Reporter};

/// Most bytes the feature cache keeps; the least recently used entries go first.
pub const CACHE_BUDGET: u64 = 2 << 30;

/// Everything the pooled features of a cv's cache depend on: the images, the
/// weights, preprocessing, augmented views and the pooling.
pub(crate) fn key(session: &Session) -> serde_json::Value {
    let (c, ds) = (&session.config, &session.prepared.dataset);
    let rows: Vec<(String, Option<String>)> = ds.samples.iter().map(|s| (s.path.display().to_string(), s.subject.clone())).collect();
    let mut key = serde_json::json!({
        "weights_sha256": c.weights.sha256,
        "preprocess": c.data.preprocess,
        "augment": c.train.augment,
        "views": c.train.cache_views,
        "seed": c.train.seed,
        "pooling": [c.model.head, c.model.features, c.model.bn, c.model.width_div, c.model.precision],
        "rows": rows,
    });
    // Only when cells are pooled, so that dumps made before `--pool-grid` stay valid.
    if c.model.pool_grid.cells() > 0 {
        key["pool_grid"] = c.model.pool_grid.to_string().into();
    }
    key
}

/// The field of a dump's `.json` that holds the SHA-256 of its safetensors
/// file: features damaged on disk after they were written (a flipped bit
/// reads as a valid file) are computed again, never trained on. Dumps from
/// before it was written are read unchecked.
const FILE_SHA256: &str = "safetensors_sha256";

/// The head-level shared cache and, in `PATH.json`, what it depends on
/// (`key`) and the file's SHA-256.
pub(crate) fn dump(path: &Path, key: &serde_json::Value, shared: &[train::Cache]) -> Result<()> {
    let Some(c) = shared.iter().find(|c| c.from == Block::Head) else {
        return Err(Error::invalid(crate::error::Setting::Data, "has no pooled-feature cache to dump (a probe recipe or --baseline probe makes one)"));
    };
    // (save_atomic: a full disk in the OS's words, as every weights file says it.)
    let t: Vec<(String, tch::Tensor)> = c.named_tensors().into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    crate::model::weights::save_atomic(&t, path)?;
    let mut meta = key.clone();
    meta[FILE_SHA256] = crate::model::weights::sha256_file(path)?.into();
    fsutil::write_json(&path.with_extension("json"), &meta)
}

/// A dump back, refused unless its `.json` is `key` and it holds a row of
/// every image of the session, augmented views of `aug_rows` (`None`: every
/// image) and the mirror images where `mirrors`.
pub(crate) fn load(path: &Path, key: &serde_json::Value, session: &Session, aug_rows: Option<&[usize]>, mirrors: bool) -> Result<train::Cache> {
    // A .json that cannot be read (gone, another user's) is said as such, not as one that differs.
    let json = path.with_extension("json");
    let mut saved: Option<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).map_err(|e| Error::io(&json, e))?).ok();
    let sum = saved.as_mut().and_then(serde_json::Value::as_object_mut).and_then(|o| o.remove(FILE_SHA256));
    if saved.as_ref() != Some(key) {
        return Err(Error::file(path, "was dumped for other images, weights, preprocessing, views or pooling (its .json beside it differs)"));
    }
    let (t, actual) = crate::model::weights::read_tensors_sha256(path)?;
    if sum.is_some_and(|sum| sum.as_str() != Some(actual.as_str())) {
        return Err(Error::file(path, "is damaged: its SHA-256 is not the one written beside it when it was kept"));
    }
    let n = session.prepared.dataset.samples.len();
    let c = train::Cache::from_named(t, n, aug_rows, session.device)
        .ok_or_else(|| Error::file(path, format!("does not hold the pooled features of these {n} images")))?;
    if mirrors && !c.has_flipped() {
        return Err(Error::file(path, "holds no mirror images, which --clean-views trains on (dump it again, or give --clean-views false)"));
    }
    if session.prepared.data.lone.is_some() && !c.has_lone() {
        return Err(Error::file(path, "holds no whole frames, which the single-image head of a --face person recipe reads (dump it again)"));
    }
    Ok(c)
}

/// The feature cache's entry for this session: its file, its key, the rows
/// with augmented views (`None`: all) and whether it holds the mirror images.
pub(crate) struct Entry {
    pub path: PathBuf,
    pub key: serde_json::Value,
    pub aug_rows: Option<Vec<usize>>,
    pub mirrors: bool,
}

impl Entry {
    /// The entry in `dir` for the session's features: augmented views of
    /// `aug_rows` (a finetune's training images; `None`: every image, as cv
    /// keeps them), clean rows of all, with mirror images where `mirrors`.
    /// `None` where this program's file cannot be read.
    pub(crate) fn new(dir: &Path, session: &Session, aug_rows: Option<&[usize]>, mirrors: bool) -> Option<Entry> {
        let program = std::env::current_exe().ok().and_then(|p| crate::model::weights::sha256_file(&p).ok())?;
        let gray = session.prepared.data.gray.contiguous();
        let pixels: Vec<u8> = Vec::try_from(gray.view_dtype(tch::Kind::Uint8).flatten(0, -1)).ok()?;
        let mut key = key(session);
        key["pixels_sha256"] = crate::run::sha256_hex(&pixels).into();
        key["mirrors"] = mirrors.into();
        // The bound can cut the views a cache holds.
        key["cache_mem_mb"] = session.config.train.cache_mem_mb.into();
        if let Some(rows) = aug_rows {
            key["aug_rows"] = rows.into();
        }
        // The single-image head's whole frames (`--face person` with person statistics) are kept beside the rest.
        if session.prepared.data.lone.is_some() {
            key["whole_frames"] = true.into();
        }
        key["threads"] = tch::get_num_threads().into();
        key["device"] = format!("{:?}", session.device).into();
        key["program_sha256"] = program.into();
        let name = crate::run::sha256_hex(key.to_string().as_bytes());
        Some(Entry { path: dir.join(format!("{}.safetensors", &name[..32])), key, aug_rows: aug_rows.map(<[usize]>::to_vec), mirrors })
    }

    /// The cached features, when an earlier run left them (marked as just used).
    pub(crate) fn read(&self, session: &Session, reporter: &mut dyn Reporter) -> Option<train::Cache> {
        if !self.path.exists() {
            return None;
        }
        match load(&self.path, &self.key, session, self.aug_rows.as_deref(), self.mirrors) {
            Ok(c) => {
                let _ = std::fs::File::options().write(true).open(&self.path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(c)
            }
            Err(e) => {
                reporter.message(&format!("feature cache: {e}; computing the features again"));
                None
            }
        }
    }

    /// `read`, saying so on a hit: the features come from `earlier` (e.g.
    /// "an earlier cv's pass over the same images, weights and settings").
    pub(crate) fn read_said(&self, session: &Session, reporter: &mut dyn Reporter, earlier: &str) -> Option<train::Cache> {
        let c = self.read(session, reporter)?;
        reporter.message(&format!(
            "pooled features from the feature cache, not recomputed: {} ({earlier}; --feature-cache off computes them again)",
            self.path.display()
        ));
        Some(c)
    }

    /// `write` with the budget, saying what became of it: kept for `next`
    /// (e.g. "the next cv on the same images and settings"), or why not; a
    /// cache that cannot be written only costs the reuse.
    pub(crate) fn keep(&self, shared: &[train::Cache], reporter: &mut dyn Reporter, next: &str) {
        match self.write(shared, CACHE_BUDGET) {
            Ok(bytes) => reporter.message(&format!("kept them in the feature cache for {next}: {} ({} MiB)", self.path.display(), bytes.div_ceil(1 << 20))),
            Err(err) => reporter.message(&format!("feature cache: {err}; going on without it")),
        }
    }

    /// Keeps `shared`'s head-level features for the next run, then trims the
    /// folder to `budget` bytes (`CACHE_BUDGET`); features larger than that
    /// are not kept. Returns the bytes written.
    pub(crate) fn write(&self, shared: &[train::Cache], budget: u64) -> Result<u64> {
        let bytes: u64 = shared.iter().filter(|c| c.from == Block::Head).map(train::Cache::bytes).sum();
        if bytes > budget {
            return Err(Error::file(&self.path, format!("not kept: the features ({} MiB) exceed the cache's {} MiB", bytes.div_ceil(1 << 20), budget >> 20)));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot make the folder: {e}")))?;
        dump(&self.path, &self.key, shared)?;
        trim(dir, budget, &self.path);
        Ok(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }
}

/// Removes the least recently used entries of `dir` (and their `.json`)
/// until the entries take at most `budget` bytes; `keep` stays.
fn trim(dir: &Path, budget: u64, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len(), p)))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut total = 0u64;
    for (_, len, p) in entries {
        total += len;
        if total > budget && p != keep {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(p.with_extension("json"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_larger_than_the_budget_are_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let (n, width) = (3, 1000);
        let rows = |k: i64| tch::Tensor::ones([k * n, width], (tch::Kind::Float, tch::Device::Cpu));
        let named = vec![("aug".to_string(), rows(2)), ("clean".to_string(), rows(1))];
        let c = train::Cache::from_named(named, n as usize, None, tch::Device::Cpu).unwrap();
        let e = Entry { path: d.path().join("fc").join("e.safetensors"), key: serde_json::json!({"k": 1}), aug_rows: None, mirrors: false };
        let err = e.write(std::slice::from_ref(&c), 20_000).unwrap_err().to_string();
        assert!(err.contains("e.safetensors: not kept: the features (1 MiB) exceed the cache's 0 MiB"), "{err}");
        assert!(!e.path.exists());
        let bytes = e.write(std::slice::from_ref(&c), 1 << 20).unwrap();
        assert!(bytes > 36_000 && e.path.exists() && e.path.with_extension("json").exists(), "{bytes}");
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_entries_within_its_budget() {
        let d = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now();
        for (i, age) in [(0, 30), (1, 10), (2, 20), (3, 40)] {
            let p = d.path().join(format!("{i}.safetensors"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            std::fs::write(p.with_extension("json"), "{}").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t0 - std::time::Duration::from_secs(age)).unwrap();
        }
        // Entry 3 is the oldest but was just written: it stays beside the newest one.
        trim(d.path(), 250, &d.path().join("3.safetensors"));
        let left: Vec<bool> = (0..4).map(|i| d.path().join(format!("{i}.safetensors")).exists()).collect();
        assert_eq!(left, [false, true, true, true]);
        assert!(!d.path().join("0.json").exists() && d.path().join("1.json").exists());
    }
}

//! Batch sources: where a training batch's network input comes from. The
//! plain source decodes (and augments) gray images and runs the whole
//! network; the cached source reads the frozen prefix's output (a bank of
//! augmented views per image) and runs only the blocks that train.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::{sub_seed, Reporter, TrainData};
use crate::config::{Stage, TrainConfig};
use crate::data::Preprocess;
use crate::model::{Block, BnMode, Vgg16};
use crate::subject::SubjectNorm;
use crate::{Error, Result};

/// A cache pass's line to the user: where it says how far it is, and the
/// flag (Ctrl-C, SIGTERM) that stops it between two chunks of images — a
/// pass over a few hundred photos at 224 px takes minutes on a laptop CPU,
/// too long to run on after being told to stop.
pub struct Pass<'a> {
    pub reporter: &'a mut dyn Reporter,
    pub stop: Option<&'a AtomicBool>,
}

impl<'a> Pass<'a> {
    pub fn new(reporter: &'a mut dyn Reporter, stop: Option<&'a AtomicBool>) -> Self {
        Pass { reporter, stop }
    }

    /// Reports `done` of `total` images of `what` before the next chunk, or
    /// ends the pass when a stop was asked for.
    fn step(&mut self, what: &str, done: usize, total: usize) -> Result<()> {
        self.reporter.progress(what, "image(s)", done, total);
        if self.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Err(Error::Interrupted(format!("stopped while {what}")));
        }
        Ok(())
    }

    /// Reports the pass's end.
    fn finish(&mut self, what: &str, total: usize) {
        self.reporter.progress(what, "image(s)", total, total);
    }
}

/// The frozen prefix's outputs, indexed by dataset row. Each image's views
/// depend only on the seed and the image (not on which split it is in), so
/// one cache can serve every fold of a cross-validation.
#[derive(Debug)]
pub struct Cache {
    pub from: Block,
    /// K augmented views: row `v·n_aug + aug_row[i]` is view v of image i.
    aug: Tensor,
    views: usize,
    n_aug: usize,
    aug_row: Vec<Option<usize>>,
    /// Unaugmented rows (validation / test images; all images without augmentation).
    clean: Tensor,
    clean_row: Vec<Option<usize>>,
    /// The clean rows mirrored left–right (flip test-time augmentation), when asked for.
    flipped: Option<Tensor>,
    /// With `--face person`: each clean row's whole frame
    /// (`data::Loaded::lone`) and, beside `flipped`, its mirror image — what
    /// the single-image head trains on and is scored from.
    lone: Option<(Tensor, Option<Tensor>)>,
}

impl Cache {
    /// Bytes its tensors hold.
    pub(crate) fn bytes(&self) -> u64 {
        let size = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        size(&self.aug)
            + if self.clean.data_ptr() == self.aug.data_ptr() { 0 } else { size(&self.clean) }
            + self.flipped.as_ref().map_or(0, size)
            + self.lone.as_ref().map_or(0, |(c, f)| size(c) + f.as_ref().map_or(0, size))
    }

    pub(crate) fn shallow(&self) -> Cache {
        Cache {
            from: self.from,
            aug: self.aug.shallow_clone(),
            views: self.views,
            n_aug: self.n_aug,
            aug_row: self.aug_row.clone(),
            clean: self.clean.shallow_clone(),
            clean_row: self.clean_row.clone(),
            flipped: self.flipped.as_ref().map(Tensor::shallow_clone),
            lone: self.lone.as_ref().map(|(c, f)| (c.shallow_clone(), f.as_ref().map(Tensor::shallow_clone))),
        }
    }

    /// Adds the mirrored twin of every clean row (for flip test-time augmentation).
    pub fn add_flipped(&mut self, model: &Vgg16, pre: &Preprocess, gray: &Tensor, device: Device, pass: &mut Pass) -> Result<()> {
        let what = format!("caching the mirror images' {}", holds(self.from));
        self.flipped = Some(self.clean_rows_through(model, pre, (gray, true), device, (&what, pass))?);
        Ok(())
    }

    /// Adds every clean row's whole frame (`lone`: `TrainData::lone`) through
    /// the frozen blocks and, where the cache holds mirror images, its mirror
    /// image: the single-image head's input, as a lone photo's in `predict`.
    pub fn add_lone(&mut self, model: &Vgg16, pre: &Preprocess, lone: &Tensor, device: Device, pass: &mut Pass) -> Result<()> {
        let what = format!("caching the whole frames' {} for the single-image head", holds(self.from));
        let clean = self.clean_rows_through(model, pre, (lone, false), device, (&what, pass))?;
        let what = format!("caching the whole frames' mirror images' {}", holds(self.from));
        let flipped = match self.flipped {
            Some(_) => Some(self.clean_rows_through(model, pre, (lone, true), device, (&what, pass))?),
            None => None,
        };
        self.lone = Some((clean, flipped));
        Ok(())
    }

    /// The clean rows' images in `images` (mirrored when `flip`) through the
    /// frozen blocks below `from`, in the clean rows' order and the cache's precision.
    fn clean_rows_through(
        &self,
        model: &Vgg16,
        pre: &Preprocess,
        (images, flip): (&Tensor, bool),
        device: Device,
        (what, pass): (&str, &mut Pass),
    ) -> Result<Tensor> {
        let rows: Vec<usize> = images_of(&self.clean_row, self.clean_row.iter().flatten().count()).into_iter().flatten().collect();
        let store = self.clean.kind();
        let mut parts: Vec<Tensor> = Vec::new();
        for (k, c) in rows.chunks(8).enumerate() {
            pass.step(what, k * 8, rows.len())?;
            let g = crate::data::select(images, c, device);
            parts.push(tch::no_grad(|| model.prefix(&pre.normalise(&if flip { g.flip([3]) } else { g }), Block::Conv1, self.from).to_kind(store)));
        }
        pass.finish(what, rows.len());
        Ok(if parts.is_empty() { self.clean.shallow_clone() } else { Tensor::cat(&parts, 0) })
    }

    /// Whether it holds the whole frames (`add_lone`).
    pub(crate) fn has_lone(&self) -> bool {
        self.lone.is_some()
    }

    /// The single-image head's training views of dataset rows `rows`: each
    /// row's clean view (its whole frame where the cache holds those,
    /// `add_lone`), or its mirror image where `mirrored` says and the cache
    /// holds them; `None` where some row has no clean row.
    ///
    /// Not the augmented views: on the London faces (aligned portraits, 5
    /// folds × 3 seeds) the head trained on them scored 0.806, on these 0.950
    /// (docs/results/accuracy, "The single-image head").
    fn single_views(&self, rows: &[usize], mirrored: &[bool], device: Device) -> Option<Tensor> {
        let (clean, flipped) = match &self.lone {
            Some((c, f)) => (c, f.as_ref()),
            None => (&self.clean, self.flipped.as_ref()),
        };
        let at: Option<Vec<usize>> = rows.iter().map(|&i| self.clean_row.get(i).copied().flatten()).collect();
        let at = index(at?.into_iter(), device);
        let x = clean.index_select(0, &at);
        let x = match flipped {
            Some(f) => {
                let m = Tensor::from_slice(mirrored).to_device(device).unsqueeze(1);
                f.index_select(0, &at).where_self(&m, &x)
            }
            None => x,
        };
        Some(x.to_kind(Kind::Float))
    }

    /// Whole-frame rows (`add_lone`) of dataset rows `rows`, mirrored when `flip`,
    /// when the cache holds them.
    pub(crate) fn lone_rows(&self, rows: &[usize], flip: bool, device: Device) -> Option<Tensor> {
        let (clean, flipped) = self.lone.as_ref()?;
        let t = if flip { flipped.as_ref()? } else { clean };
        Some(t.index_select(0, &index(rows.iter().map(|&i| self.clean_row[i].unwrap_or(0)), device)).to_kind(Kind::Float))
    }

    /// Its tensors by name (`aug`: view v of image i at row v·n + i when
    /// every image has views; `clean`; `flipped`), for study scripts.
    pub(crate) fn named_tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut t = vec![("aug", self.aug.to_kind(Kind::Float)), ("clean", self.clean.to_kind(Kind::Float))];
        t.extend(self.flipped.as_ref().map(|f| ("flipped", f.to_kind(Kind::Float))));
        if let Some((c, f)) = &self.lone {
            t.push(("lone", c.to_kind(Kind::Float)));
            t.extend(f.as_ref().map(|f| ("lone_flipped", f.to_kind(Kind::Float))));
        }
        t
    }

    /// A head-level cache of all `n` dataset rows back from `named_tensors`,
    /// its augmented views those of dataset rows `aug_rows` (ascending; `None`:
    /// every row) — `None` when the tensors do not fit: rows or names differ.
    pub(crate) fn from_named(mut t: Vec<(String, Tensor)>, n: usize, aug_rows: Option<&[usize]>, device: Device) -> Option<Cache> {
        let mut take = |name: &str| t.iter().position(|(k, _)| k == name).map(|i| t.swap_remove(i).1.to_device(device));
        let (aug, clean, flipped) = (take("aug")?, take("clean")?, take("flipped"));
        let lone = take("lone").map(|c| (c, take("lone_flipped")));
        let rows = |x: &Tensor| x.size().first().map_or(0, |&r| r as usize);
        let all: Vec<usize> = (0..n).collect();
        let aug_rows = aug_rows.unwrap_or(&all);
        let n_aug = aug_rows.len();
        let views = rows(&aug) / n_aug.max(1);
        let ok = n > 0
            && n_aug > 0
            && aug_rows.iter().all(|&i| i < n)
            && rows(&clean) == n
            && views >= 1
            && rows(&aug) == views * n_aug
            && flipped.as_ref().is_none_or(|f| f.size() == clean.size())
            && lone.as_ref().is_none_or(|(c, f)| {
                c.size() == clean.size() && f.as_ref().is_some() == flipped.is_some() && f.as_ref().is_none_or(|f| f.size() == clean.size())
            });
        let mut aug_row = vec![None; n];
        for (r, &i) in aug_rows.iter().enumerate() {
            aug_row[i] = Some(r);
        }
        ok.then(|| Cache { from: Block::Head, aug, views, n_aug, aug_row, clean, clean_row: (0..n).map(Some).collect(), flipped, lone })
    }

    /// Mirrored clean rows of dataset rows `rows`, when the cache holds them.
    pub(crate) fn flipped_rows(&self, rows: &[usize], device: Device) -> Option<Tensor> {
        let f = self.flipped.as_ref()?;
        Some(f.index_select(0, &index(rows.iter().map(|&i| self.clean_row[i].unwrap_or(0)), device)).to_kind(Kind::Float))
    }

    /// Whether it holds the mirror images of its clean rows.
    pub(crate) fn has_flipped(&self) -> bool {
        self.flipped.is_some()
    }

    /// Whether it holds augmented views of every `train` and clean rows of every `eval` image.
    pub(crate) fn covers(&self, train: &[usize], eval: &[usize]) -> bool {
        train.iter().all(|&i| self.aug_row.get(i).is_some_and(Option::is_some)) && eval.iter().all(|&i| self.clean_row.get(i).is_some_and(Option::is_some))
    }

    /// Clean (unaugmented) cached rows of dataset rows `rows`, as float32.
    pub(crate) fn clean_rows(&self, rows: &[usize], device: Device) -> Tensor {
        self.clean.index_select(0, &index(rows.iter().map(|&i| self.clean_row[i].unwrap_or(0)), device)).to_kind(Kind::Float)
    }

    /// The rows of `aug` holding one randomly drawn view of each dataset row in `rows`.
    fn pick(&self, rows: &[usize], rng: &mut ChaCha8Rng, device: Device) -> Tensor {
        let pick = rows.iter().map(|&r| rng.gen_range(0..self.views) * self.n_aug + self.aug_row[r].unwrap_or(0)).collect::<Vec<_>>();
        index(pick.into_iter(), device)
    }

    /// The cache with each image's clean view and its mirror image appended
    /// as two more views (`--clean-views`): training then draws among K + 2
    /// views, one of them the view the image is scored from. Returned as it
    /// is where some image with augmented views has no clean or mirrored
    /// row, or where the augmented views are the clean ones (no augmentation).
    pub(crate) fn with_clean_views(self) -> Cache {
        let rows: Option<Vec<usize>> = images_of(&self.aug_row, self.n_aug).into_iter().map(|i| i.and_then(|i| self.clean_row[i])).collect();
        let (Some(rows), Some(flipped)) = (rows, self.flipped.as_ref()) else {
            return self;
        };
        if self.aug.data_ptr() == self.clean.data_ptr() {
            return self;
        }
        let idx = index(rows.into_iter(), self.aug.device());
        let store = self.aug.kind();
        let aug = Tensor::cat(&[self.aug.shallow_clone(), self.clean.index_select(0, &idx).to_kind(store), flipped.index_select(0, &idx).to_kind(store)], 0);
        Cache { aug, views: self.views + 2, ..self }
    }

    /// One randomly drawn augmented view of each dataset row in `rows`.
    fn views_of(&self, rows: &[usize], rng: &mut ChaCha8Rng, device: Device) -> Tensor {
        self.aug_at(&self.pick(rows, rng, device))
    }

    /// The rows `pick` of the augmented views, as float32.
    fn aug_at(&self, pick: &Tensor) -> Tensor {
        self.aug.index_select(0, pick).to_kind(Kind::Float)
    }
}

/// The dataset row held at each of a bank's `n` rows, from its row map
/// (dataset row → bank row, as `aug_row` and `clean_row` are).
fn images_of(row_map: &[Option<usize>], n: usize) -> Vec<Option<usize>> {
    let mut image = vec![None; n];
    for (i, r) in row_map.iter().enumerate() {
        if let Some(r) = *r {
            image[r] = Some(i);
        }
    }
    image
}

/// What a cache entering at `from` holds, in words.
pub(crate) fn holds(from: Block) -> String {
    if from == Block::Head {
        "pooled features".into()
    } else {
        format!("{} output", Block::from_index(from.index().saturating_sub(1)))
    }
}

/// Rows → an index tensor.
fn index(rows: impl Iterator<Item = usize>, device: Device) -> Tensor {
    Tensor::from_slice(&rows.map(|r| r as i64).collect::<Vec<_>>()).to_device(device)
}

/// Builds the cache of blocks below `from` for augmented views of `aug_rows`
/// and clean views of `clean_rows` (dataset indices into `gray`).
#[allow(clippy::too_many_arguments)]
pub fn build_cache(
    model: &Vgg16,
    cfg: &TrainConfig,
    pre: &Preprocess,
    gray: &Tensor,
    from: Block,
    views: usize,
    aug_rows: &[usize],
    clean_rows: &[usize],
    device: Device,
    pass: &mut Pass,
) -> Result<Cache> {
    let n_all = gray.size()[0] as usize;
    let identity = cfg.augment.is_identity();
    let store = if cfg.cache_f16 { Kind::Half } else { Kind::Float };
    // Images through the frozen blocks, over all views: the progress unit.
    let total = if identity {
        aug_rows.iter().chain(clean_rows).copied().collect::<std::collections::BTreeSet<_>>().len()
    } else {
        views * aug_rows.len() + clean_rows.len()
    };
    let what = format!("caching the frozen {}", holds(from));
    let done = std::cell::Cell::new(0usize);
    let pass = std::cell::RefCell::new(pass);
    let feats = |rows: &[usize], view: Option<usize>| -> Result<Tensor> {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = rows
                .chunks(8)
                .map(|c| {
                    pass.borrow_mut().step(&what, done.get().min(total), total)?;
                    done.set(done.get() + c.len());
                    let g = crate::data::select(gray, c, device);
                    let g = match view {
                        Some(v) => cfg.augment.apply_seeded(&g, &c.iter().map(|&i| sub_seed(cfg.seed, 1, v as u64, i as u64)).collect::<Vec<_>>()),
                        None => g,
                    };
                    Ok(model.prefix(&pre.normalise(&g), Block::Conv1, from).to_kind(store))
                })
                .collect::<Result<_>>()?;
            Ok(Tensor::cat(&parts, 0))
        })
    };
    let row_map = |rows: &[usize]| {
        let mut m = vec![None; n_all];
        for (r, &i) in rows.iter().enumerate() {
            m[i] = Some(r);
        }
        m
    };
    if identity {
        let mut all: Vec<usize> = aug_rows.iter().chain(clean_rows).copied().collect();
        all.sort_unstable();
        all.dedup();
        let clean = feats(&all, None)?;
        pass.borrow_mut().finish(&what, total);
        let rows = row_map(&all);
        return Ok(Cache {
            from,
            aug: clean.shallow_clone(),
            views: 1,
            n_aug: all.len(),
            aug_row: rows.clone(),
            clean,
            clean_row: rows,
            flipped: None,
            lone: None,
        });
    }
    let banks: Vec<Tensor> = (0..views).map(|v| feats(aug_rows, Some(v))).collect::<Result<_>>()?;
    let clean = if clean_rows.is_empty() { Tensor::zeros([0], (Kind::Float, device)) } else { feats(clean_rows, None)? };
    pass.borrow_mut().finish(&what, total);
    Ok(Cache {
        from,
        aug: Tensor::cat(&banks, 0),
        views,
        n_aug: aug_rows.len(),
        aug_row: row_map(aug_rows),
        clean,
        clean_row: row_map(clean_rows),
        flipped: None,
        lone: None,
    })
}

/// `cache_plan`, then `build_cache` for augmented views of `aug_rows` and
/// clean rows of `clean_rows` (and with `flipped` their mirror images,
/// `Cache::add_flipped`; with `lone` their whole frames, `Cache::add_lone`):
/// the cache of the blocks below `from` and its view count, or why the
/// cache is off; an error where the pass was stopped (`Pass`).
#[allow(clippy::too_many_arguments)]
pub fn plan_and_build(
    model: &Vgg16,
    cfg: &TrainConfig,
    pre: &Preprocess,
    (gray, lone): (&Tensor, Option<&Tensor>),
    from: Block,
    (aug_rows, clean_rows): (&[usize], &[usize]),
    flipped: bool,
    device: Device,
    pass: &mut Pass,
) -> Result<std::result::Result<(Cache, usize), String>> {
    // The mirror images are fixed rows too: counted against --cache-mem with the clean ones (and the whole frames).
    let fixed_rows = clean_rows.len() * if flipped { 2 } else { 1 } * if lone.is_some() { 2 } else { 1 };
    let views = match cache_plan(model, cfg, pre, from, aug_rows.len(), fixed_rows, device) {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    if !cfg.augment.is_identity() && views < cfg.cache_views {
        pass.reporter
            .message(&format!("--cache-mem {} MiB holds {views} of the {} augmented views asked for (--cache-views)", cfg.cache_mem_mb, cfg.cache_views));
    }
    let c = model.frozen(|| {
        let mut c = build_cache(model, cfg, pre, gray, from, views, aug_rows, clean_rows, device, pass)?;
        if flipped {
            c.add_flipped(model, pre, gray, device, pass)?;
        }
        if let Some(lone) = lone {
            c.add_lone(model, pre, lone, device, pass)?;
        }
        Ok::<_, Error>(c)
    })?;
    Ok(Ok((c, views)))
}

/// Runs a cache on through the blocks `base.from..from` (frozen in the stage that needs it).
pub fn derive_cache(model: &Vgg16, base: &Cache, from: Block) -> Cache {
    if from == base.from {
        return base.shallow();
    }
    let run = |t: &Tensor| -> Tensor {
        let n = t.size()[0];
        if n == 0 {
            return t.shallow_clone();
        }
        model.frozen(|| {
            let parts: Vec<Tensor> =
                (0..n).step_by(64).map(|s| model.prefix(&t.narrow(0, s, (n - s).min(64)).to_kind(Kind::Float), base.from, from).to_kind(t.kind())).collect();
            Tensor::cat(&parts, 0)
        })
    };
    let aug = run(&base.aug);
    let same = base.aug.data_ptr() == base.clean.data_ptr();
    Cache {
        from,
        clean: if same { aug.shallow_clone() } else { run(&base.clean) },
        aug,
        views: base.views,
        n_aug: base.n_aug,
        aug_row: base.aug_row.clone(),
        clean_row: base.clean_row.clone(),
        flipped: base.flipped.as_ref().map(run),
        lone: base.lone.as_ref().map(|(c, f)| (run(c), f.as_ref().map(run))),
    }
}

/// How many augmented views of `n_aug` images fit the memory bound beside
/// `n_clean` fixed rows (clean views, and mirror images where kept), or why
/// the cache is off.
pub fn cache_plan(
    model: &Vgg16,
    cfg: &TrainConfig,
    pre: &Preprocess,
    from: Block,
    n_aug: usize,
    n_clean: usize,
    device: Device,
) -> std::result::Result<usize, String> {
    if !cfg.cache {
        return Err("off (--no-cache)".into());
    }
    if from == Block::Conv1 {
        return Err("off: no frozen block in this stage".into());
    }
    if model.cfg.bn_mode == BnMode::Train {
        return Err("off: --bn train changes the frozen blocks' statistics every batch".into());
    }
    let views = if cfg.augment.is_identity() { 1 } else { cfg.cache_views };
    let s = pre.image_size as i64;
    let probe = tch::no_grad(|| model.prefix(&Tensor::zeros([1, 3, s, s], (Kind::Float, device)), Block::Conv1, from));
    let per = probe.numel() * if cfg.cache_f16 { 2 } else { 4 };
    let budget = cfg.cache_mem_mb << 20;
    let fixed = per * n_clean;
    let fit = if fixed + per * n_aug > budget { 0 } else { ((budget - fixed) / (per * n_aug.max(1))).min(views) };
    if fit == 0 {
        return Err(format!(
            "off: one augmented view with the clean (and mirrored) rows, {} rows, needs {} MiB, over --cache-mem {} MiB",
            n_aug + n_clean,
            (per * (n_aug + n_clean)) >> 20,
            cfg.cache_mem_mb
        ));
    }
    Ok(fit)
}

/// Where a stage's batches come from.
pub(crate) enum Source<'a> {
    /// Gray images through the whole network, augmented on the fly.
    Plain { cfg: &'a TrainConfig, pre: &'a Preprocess, data: &'a TrainData, device: Device },
    /// The frozen prefix's output, read from a cache; for a head-level cache
    /// of a subject-normalised model also its augmented views standardised
    /// per person (`with_person_views`).
    Cached { cache: Cache, device: Device, person: Option<Tensor> },
}

impl Source<'_> {
    /// The first block the source's tensors enter.
    pub(crate) fn from(&self) -> Block {
        match self {
            Source::Plain { .. } => Block::Conv1,
            Source::Cached { cache, .. } => cache.from,
        }
    }

    pub(crate) fn cache(&self) -> Option<&Cache> {
        match self {
            Source::Plain { .. } => None,
            Source::Cached { cache, .. } => Some(cache),
        }
    }

    /// The training input of dataset rows `rows` (augmented draws come from `rng`).
    pub(crate) fn train_batch(&self, rows: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
        match self {
            Source::Plain { cfg, pre, data, device } => {
                let g = crate::data::select(&data.gray, rows, *device);
                let g = if cfg.augment.is_identity() { g } else { cfg.augment.apply(&g, rng) };
                pre.normalise(&g)
            }
            Source::Cached { cache, device, .. } => cache.views_of(rows, rng, *device),
        }
    }

    /// With `--face person` (`TrainData::lone`), the whole frames of `rows`
    /// for the single-image head where `person_batch` does not serve them
    /// (a trunk that trains, a cache without person views): their clean
    /// views from the cache's whole-frame rows, or the images.
    pub(crate) fn single_batch(&self, rows: &[usize]) -> Option<(Tensor, Block)> {
        match self {
            Source::Plain { pre, data, device, .. } => data.lone.as_ref().map(|l| (pre.normalise(&crate::data::select(l, rows, *device)), Block::Conv1)),
            Source::Cached { cache, device, .. } => cache.lone_rows(rows, false, *device).map(|t| (t, cache.from)),
        }
    }

    /// Whether `person_batch` serves batches (`with_person_views` was applied).
    pub(crate) fn has_person_views(&self) -> bool {
        matches!(self, Source::Cached { person: Some(_), .. })
    }

    /// Like `train_batch`, from the views standardised per person (the same
    /// draws from `rng`), with the unstandardised ones when `raw`; `None`
    /// without `with_person_views`.
    pub(crate) fn person_batch(&self, rows: &[usize], rng: &mut ChaCha8Rng, raw: bool) -> Option<(Tensor, Option<Tensor>)> {
        let Source::Cached { cache, device, person: Some(person) } = self else {
            return None;
        };
        let pick = cache.pick(rows, rng, *device);
        // The single-image head: each row's clean view or its mirror image, by the parity of the view drawn.
        let single = || {
            let views: Vec<i64> = Vec::try_from(pick.to_device(Device::Cpu)).unwrap_or_default();
            let mirrored: Vec<bool> = views.iter().map(|&p| (p as usize / cache.n_aug.max(1)) % 2 == 1).collect();
            cache.single_views(rows, &mirrored, *device).unwrap_or_else(|| cache.aug_at(&pick))
        };
        Some((person.index_select(0, &pick), raw.then(single)))
    }

    /// The source with a head-level cache's augmented views also held
    /// standardised by `norm` (dataset row i by its person `group(i)`; rows
    /// the statistics do not cover, `None`, are never drawn and pass
    /// unchanged). With the trunk frozen a person's statistics are fixed for
    /// the stage: standardising every view once replaces standardising each
    /// batch of each ensemble member. Other sources are returned as they are.
    pub(crate) fn with_person_views(self, norm: &SubjectNorm, group: impl Fn(usize) -> Option<usize>) -> Self {
        match self {
            Source::Cached { cache, device, .. } if cache.from == Block::Head => {
                let of_row: Vec<Option<usize>> = images_of(&cache.aug_row, cache.n_aug).into_iter().map(|i| i.and_then(&group)).collect();
                let groups: Vec<Option<usize>> = (0..cache.views).flat_map(|_| of_row.iter().copied()).collect();
                let person = tch::no_grad(|| norm.apply_covered(&cache.aug.to_kind(Kind::Float), &groups));
                Source::Cached { cache, device, person: Some(person) }
            }
            other => other,
        }
    }
}

/// Caches for one fit: the base cache at the lowest freeze point of the
/// remaining stages (the blocks below it never train, so it serves every
/// stage), extended per stage through the blocks that stage keeps frozen,
/// and caches built once for several fits (cross-validation folds).
pub(crate) struct Sources<'a> {
    cfg: &'a TrainConfig,
    pre: &'a Preprocess,
    data: &'a TrainData,
    device: Device,
    shared: &'a [Cache],
    base: Option<Cache>,
    /// Whether the fit resumed from a checkpoint (shared caches then no longer match the weights).
    resumed: bool,
}

impl<'a> Sources<'a> {
    /// Plans (and builds) the base cache for the stages from `first_stage` on;
    /// an error where the pass was stopped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: &Vgg16,
        cfg: &'a TrainConfig,
        pre: &'a Preprocess,
        data: &'a TrainData,
        device: Device,
        shared: &'a [Cache],
        first_stage: usize,
        resumed: bool,
        pass: &mut Pass,
    ) -> Result<Self> {
        let mut s = Sources { cfg, pre, data, device, shared, base: None, resumed };
        let base_from = cfg.stages.iter().skip(first_stage).map(|s| s.from).min().unwrap_or(Block::Head);
        // Person statistics are taken from clean images, the training images' too; clean views train.
        let clean: Vec<usize> = if model.cfg.subject_norm || cfg.clean_views {
            let mut v: Vec<usize> = data.train.iter().chain(&data.val).copied().collect();
            v.sort_unstable();
            v
        } else {
            data.val.clone()
        };
        s.base = match s.shared(base_from).filter(|_| first_stage == 0 && !resumed) {
            Some(c) => Some(c.shallow()),
            None => {
                let t0 = Instant::now();
                // Mirror images for the clean views and for the single-image head, which trains on each
                // photo's clean view and its mirror image (as in cv, whose cache holds them for flip TTA).
                let mirrors = cfg.clean_views || model.cfg.subject_norm;
                match plan_and_build(model, cfg, pre, (&data.gray, data.lone.as_ref()), base_from, (&data.train, &clean), mirrors, device, pass)? {
                    Ok((c, views)) => {
                        pass.reporter.message(&format!(
                            "cached the frozen {}: {} view(s) of {} training images{}{}{}, in {:.1}s",
                            holds(base_from),
                            views,
                            data.train.len(),
                            if data.val.is_empty() { String::new() } else { format!(" and {} validation images", data.val.len()) },
                            if mirrors { ", every image's mirror image" } else { "" },
                            if data.lone.is_some() { ", and every image's whole frame for the single-image head" } else { "" },
                            t0.elapsed().as_secs_f64()
                        ));
                        Some(c)
                    }
                    Err(why) => {
                        pass.reporter.message(&format!("frozen-prefix cache {why}"));
                        None
                    }
                }
            }
        };
        Ok(s)
    }

    fn shared(&self, from: Block) -> Option<&'a Cache> {
        self.shared.iter().find(|c| c.from == from && c.covers(&self.data.train, &self.data.val))
    }

    /// The source for stage `si` (the model holds the weights that stage starts from).
    pub(crate) fn for_stage(&self, model: &Vgg16, si: usize, reporter: &mut dyn Reporter) -> Source<'a> {
        let stage: Stage = self.cfg.stages[si];
        // Blocks no earlier stage trained still hold the weights a shared cache was built with.
        let untouched = !self.resumed && self.cfg.stages[..si].iter().all(|s| s.from >= stage.from);
        let target = stage.from;
        let reusable = self.base.as_ref().filter(|b| target > b.from && untouched).and_then(|_| self.shared(target));
        let cache = match (&self.base, reusable) {
            (_, Some(c)) => Some(c.shallow()),
            (Some(b), None) if target >= b.from => {
                let t0 = Instant::now();
                let c = derive_cache(model, b, target);
                if target > b.from {
                    reporter.message(&format!(
                        "stage {} ({}+): extended the cache to the {} in {:.1}s",
                        si + 1,
                        stage.from,
                        holds(target),
                        t0.elapsed().as_secs_f64()
                    ));
                }
                Some(c)
            }
            _ => None,
        };
        match cache {
            Some(cache) => Source::Cached { cache: if self.cfg.clean_views { cache.with_clean_views() } else { cache }, device: self.device, person: None },
            None => Source::Plain { cfg: self.cfg, pre: self.pre, data: self.data, device: self.device },
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// (rows, cols) of values drawn from a local stream (libtorch's global
    /// generator is shared with the tests running beside this one).
    fn values(rows: i64, cols: i64, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-3.0..4.0)).collect();
        Tensor::from_slice(&v).view([rows, cols])
    }

    #[test]
    fn person_views_are_the_batches_standardised_per_person() {
        // Six images of three people (the third not in training), two views each.
        let (n, d) = (6, 5);
        let aug = values(2 * n, d, 1);
        let clean = values(n, d, 2);
        let flipped = values(n, d, 3);
        let named = vec![("aug".into(), aug.shallow_clone()), ("clean".into(), clean.shallow_clone()), ("flipped".into(), flipped.shallow_clone())];
        let cache = Cache::from_named(named, n as usize, None, Device::Cpu).expect("fits");
        let groups = [0usize, 0, 1, 1, 2, 2];
        let train = [0usize, 1, 2, 3];
        let norm = SubjectNorm::fit(&cache.clean_rows(&train, Device::Cpu), &groups[..4]);
        let source = Source::Cached { cache: cache.shallow(), device: Device::Cpu, person: None };
        assert!(!source.has_person_views() && source.person_batch(&train, &mut ChaCha8Rng::seed_from_u64(0), true).is_none());
        let source = source.with_person_views(&norm, |i| (i < 4).then_some(groups[i]));
        assert!(source.has_person_views());
        for seed in 0..4 {
            let rows = [3usize, 0, 2, 1, 1];
            let (z, raw) = source.person_batch(&rows, &mut ChaCha8Rng::seed_from_u64(seed), true).expect("person views");
            let x = source.train_batch(&rows, &mut ChaCha8Rng::seed_from_u64(seed));
            let g: Vec<usize> = rows.iter().map(|&r| groups[r]).collect();
            // The same draws, standardised exactly as a batch would have been.
            assert!(z.equal(&norm.apply(&x, &g)), "seed {seed}");
            // The single-image head's: each row's clean view for the first view drawn, its mirror image for the second.
            let single: Vec<Tensor> = rows
                .iter()
                .enumerate()
                .map(|(k, &r)| if x.get(k as i64).equal(&aug.get(r as i64)) { clean.get(r as i64) } else { flipped.get(r as i64) })
                .collect();
            assert!(raw.expect("raw asked for").equal(&Tensor::stack(&single, 0)), "seed {seed}");
            assert!(source.person_batch(&rows, &mut ChaCha8Rng::seed_from_u64(seed), false).is_some_and(|(_, r)| r.is_none()));
        }
        // The person outside training is left as it was: row 4 and row n + 4 (its second view).
        let Source::Cached { person: Some(p), .. } = &source else { panic!("person views") };
        for r in [4, n + 4, 5] {
            assert!(p.get(r).equal(&aug.get(r)), "row {r}");
        }
        assert!(!p.get(0).equal(&aug.get(0)));
    }

    #[test]
    fn clean_views_follow_the_augmented_ones() {
        let (n, d) = (3i64, 4);
        let named = |flipped: bool| {
            let mut t: Vec<(String, Tensor)> =
                vec![("aug".into(), values(2 * n, d, 3)), ("clean".into(), Tensor::arange(n * d, (Kind::Float, Device::Cpu)).view([n, d]))];
            if flipped {
                t.push(("flipped".into(), -Tensor::arange(n * d, (Kind::Float, Device::Cpu)).view([n, d])));
            }
            Cache::from_named(t, n as usize, None, Device::Cpu).expect("fits")
        };
        // Without mirror images there is nothing to add: unchanged.
        let plain = named(false).with_clean_views();
        assert_eq!((plain.views, plain.aug.size()[0]), (2, 2 * n));
        let c = named(true);
        let aug = c.aug.shallow_clone();
        let c = c.with_clean_views();
        assert_eq!((c.views, c.aug.size()[0]), (4, 4 * n));
        // Views 0-1 as before, view 2 each image's clean row, view 3 its mirror image, in the images' order.
        assert!(c.aug.narrow(0, 0, 2 * n).equal(&aug));
        assert!(c.aug.narrow(0, 2 * n, n).equal(&c.clean) && c.aug.narrow(0, 3 * n, n).equal(c.flipped.as_ref().unwrap()));
        // Draws reach them: each of the 4 views of image 1 comes up.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let seen: std::collections::BTreeSet<i64> =
            (0..64).map(|_| i64::try_from(c.views_of(&[1], &mut rng, Device::Cpu).sum(Kind::Float) * 1000.0).unwrap()).collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        // Scoring still reads the clean and mirrored rows alone.
        assert!(c.clean_rows(&[2], Device::Cpu).equal(&c.clean.get(2).unsqueeze(0)));
    }
}

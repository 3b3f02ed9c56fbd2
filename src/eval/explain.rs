//! Grad-CAM (Selvaraju et al. 2017): where the network looks. Owns the
//! heatmap computation on one block's output, its overlay on the gray input
//! the network actually saw (face crop included), captioned tiles and
//! contact sheets, and `vggft explain` (per image, per class mean).
//!
//! The map is taken at a block's output as vggft defines it (after the
//! block's 2×2 pool: conv5 is 7×7 for a 224 px input), the score is the
//! class's pre-softmax score (for a head trained on raw labels, the
//! log-sum-exp of the class's raw logits, whose softmax is the class's
//! summed probability; or one raw label's own logit, `--class HA` of a
//! JAFFE run trained on the seven codes). A subject-normalised model is explained as
//! `predict` answers: a photo among enough of its person's through the
//! person-normalised head (that person's statistics held fixed while the
//! gradient flows), a photo alone through the single-image head.

use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use plotters::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::error::{Error, Result, Setting};
use crate::eval::predict::{Mode, SubjectFrom};
use crate::fsutil;
use crate::model::{Block, Vgg16};

/// One explained image.
#[derive(Clone)]
pub struct Cam {
    /// The gray network input (S×S, [0, 1]).
    pub input: Vec<f32>,
    /// Grad-CAM heat (S×S), scaled so its maximum is 1 (all zero when no
    /// location raises the score).
    pub heat: Vec<f32>,
    /// Task-class probabilities.
    pub probs: Vec<f64>,
    /// The explained class (predicted, or chosen; for a raw label, the class that holds it).
    pub class: usize,
    /// The raw label explained instead of the whole class, and its
    /// probability (the share of the class's that is that label's).
    pub raw: Option<(usize, f64)>,
    /// How far the image lies from the training photos (`Prediction::distance`).
    pub distance: Option<f64>,
    /// Which head of a subject-normalised model answered (none: the only head).
    pub mode: Option<Mode>,
}

/// What a heatmap explains (`--class`): one of the run's classes, or one
/// raw label of a head trained on raw labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Class(usize),
    Raw(usize),
}

impl Target {
    /// `--class NAME`: one of the run's classes, else one of its raw labels
    /// (a class's own name wins: JAFFE's `neutral` is both), as written, else
    /// in any case (`Neutral`), else by JAFFE's or KDEF's code (`HA`: the
    /// `happy` its files were read as, as `--label-map` takes the codes).
    pub fn parse(cfg: &RunConfig, name: &str) -> Result<Target> {
        let find = |list: &[String], name: &str| list.iter().position(|c| c == name).or_else(|| list.iter().position(|c| c.eq_ignore_ascii_case(name)));
        let codes = crate::data::scan::JAFFE_CODES.iter().chain(&crate::data::scan::KDEF_CODES);
        let word = codes.filter(|(code, _)| code.eq_ignore_ascii_case(name)).map(|&(_, w)| w).next();
        for name in std::iter::once(name).chain(word) {
            if let Some(c) = find(&cfg.classes, name) {
                return Ok(Target::Class(c));
            }
            if let Some(r) = find(&cfg.raw_classes, name).filter(|_| !cfg.raw_to_task.is_empty()) {
                return Ok(Target::Raw(r));
            }
        }
        let raw =
            if cfg.raw_to_task.is_empty() { String::new() } else { format!("; its raw labels (each explained alone) are {}", cfg.raw_classes.join(", ")) };
        Err(Error::invalid(Setting::Class, format!("{name}: the run's classes are {}{raw}", cfg.classes.join(", "))))
    }

    /// The name a heatmap of this target is shown under.
    pub fn name<'a>(&self, cfg: &'a RunConfig) -> &'a str {
        match *self {
            Target::Class(c) => &cfg.classes[c],
            Target::Raw(r) => &cfg.raw_classes[r],
        }
    }
}

impl Cam {
    /// The name of what the heat is for (a class, or a raw label) and its probability.
    pub fn explained<'a>(&self, cfg: &'a RunConfig) -> (&'a str, f64) {
        match self.raw {
            Some((r, p)) => (&cfg.raw_classes[r], p),
            None => (&cfg.classes[self.class], self.probs[self.class]),
        }
    }
}

/// A photo's person statistics (predict's person mode): the statistics of
/// that person's photos among the inputs and the person's row in them.
pub(crate) type PersonOf<'a> = (&'a crate::subject::SubjectNorm, usize);

/// Class scores (N, C) from head logits: the logits themselves, or for a
/// raw-label head the log-sum-exp of each class's raw logits.
fn class_scores(logits: &Tensor, raw_to_task: &[usize], classes: usize) -> Tensor {
    if raw_to_task.is_empty() {
        return logits.shallow_clone();
    }
    let cols: Vec<Tensor> = (0..classes)
        .map(|c| {
            let idx: Vec<i64> = raw_to_task.iter().enumerate().filter(|(_, &t)| t == c).map(|(r, _)| r as i64).collect();
            logits.index_select(1, &Tensor::from_slice(&idx).to_device(logits.device())).logsumexp([1], false)
        })
        .collect();
    Tensor::stack(&cols, 1)
}

/// The block a heatmap is taken at: the one given (`--layer`), else the
/// last block the run's head reads.
pub fn layer_or_default(cfg: &RunConfig, given: Option<Block>) -> Block {
    given.unwrap_or_else(|| cfg.model.last_feature_block())
}

/// Whether Grad-CAM can be taken at `layer` in this run: a conv block the
/// head reads from (a block after the last of `--features` gets no gradient).
pub fn check_layer(cfg: &RunConfig, layer: Block) -> Result<()> {
    if layer == Block::Head {
        return Err(Error::invalid(Setting::Layer, "must be a conv block (conv1 … conv5)"));
    }
    let last = cfg.model.last_feature_block();
    if layer > last {
        return Err(Error::invalid(
            Setting::Layer,
            format!(
                "{} comes after everything the run's head reads (its features end at {}): give --layer {} or an earlier block",
                layer.name(),
                last.name(),
                last.name()
            ),
        ));
    }
    Ok(())
}

/// Grad-CAM of one prepared gray image (S×S) at `layer`'s output, for
/// `target` (default: the predicted class); with `person`, through the
/// person-normalised head, the statistics a constant (a subject-normalised
/// model's single-image head otherwise).
pub(crate) fn grad_cam(
    model: &Vgg16,
    cfg: &RunConfig,
    gray: &[f32],
    (layer, target): (Block, Option<Target>),
    person: Option<PersonOf>,
    device: Device,
) -> Result<Cam> {
    check_layer(cfg, layer)?;
    let s = cfg.data.preprocess.image_size as i64;
    let g = Tensor::from_slice(gray).view([1, 1, s, s]).to_device(device);
    // The input requires a gradient, so every block's output is part of the graph.
    let x = cfg.data.preprocess.normalise(&g).detach().set_requires_grad(true);
    let (pooled, map) = model.pooled_tapped(&x, Block::Conv1, false, Some(layer));
    let map = map.ok_or_else(|| Error::internal(format!("block {} produced no output", layer.name())))?;
    let person = person.filter(|_| model.cfg.subject_norm);
    let mode = model.cfg.subject_norm.then_some(if person.is_some() { Mode::Person } else { Mode::Single });
    let logits = match person {
        Some((norm, g)) => model.classify(&norm.apply(&pooled, &[g]), false),
        None if model.cfg.subject_norm => model.classify_global(&pooled, false).unwrap_or_else(|| model.classify(&pooled, false)),
        None => model.classify(&pooled, false),
    };
    let mut probs: Vec<f64> = Vec::<f64>::try_from(cfg.task_probs(&logits).detach().to_device(Device::Cpu).view([-1])).map_err(Error::Torch)?;
    // The raw labels' probabilities, calibrated as predict reports them (they sum to their class's).
    let mut raw_probs: Vec<f64> = if cfg.raw_to_task.is_empty() {
        vec![]
    } else {
        Vec::<f64>::try_from(logits.detach().softmax(-1, Kind::Double).to_device(Device::Cpu).view([-1])).map_err(Error::Torch)?
    };
    cfg.calibrate_row(mode, &mut probs, &mut raw_probs);
    let (class, raw) = match target {
        None => (cam_class(cfg, &probs, mode), None),
        Some(Target::Class(c)) => (c, None),
        Some(Target::Raw(r)) => (cfg.raw_to_task[r], Some((r, raw_probs[r]))),
    };
    let score = match raw {
        // A raw label's own logit: the log-sum-exp of its class's, narrowed to one.
        Some((r, _)) => logits.get(0).get(r as i64),
        None => class_scores(&logits, &cfg.raw_to_task, cfg.classes.len()).get(0).get(class as i64),
    };
    let grad = Tensor::run_backward(&[&score], &[&map], false, false).pop().ok_or_else(|| Error::internal("no gradient reached the block"))?;
    let a = map.detach().to_kind(Kind::Float);
    let weights = grad.to_kind(Kind::Float).mean_dim([2i64, 3].as_slice(), true, Kind::Float);
    let cam = (weights * a).sum_dim_intlist([1i64].as_slice(), true, Kind::Float).relu();
    let up = cam.upsample_bilinear2d([s, s], false, None, None);
    let max = up.max().double_value(&[]);
    let heat = if max > 0.0 { up / max } else { up.zeros_like() };
    let heat = Vec::<f32>::try_from(heat.to_device(Device::Cpu).view([-1])).map_err(Error::Torch)?;
    // Under the head explained, as predict measures it: against the person's photos, or the training photos.
    let f = pooled.detach();
    let distance = model
        .feature_distance(&f, model.cfg.subject_norm)
        .map(|d| tch::no_grad(|| person.map_or(d, |(norm, g)| norm.spread_distance(&f, &[g]))).double_value(&[0]));
    Ok(Cam { input: gray.to_vec(), heat, probs, class, raw, distance, mode })
}

/// The class a run answers for one image's Grad-CAM probabilities, at the
/// threshold of the head that gave them.
fn cam_class(cfg: &RunConfig, probs: &[f64], mode: Option<Mode>) -> usize {
    crate::eval::threshold::decide(probs, cfg.threshold_for(mode))
}

/// How each input is framed (or why it cannot be), the people's
/// statistics, and the index of the input each one repeats (itself if none).
type Prepared = (Vec<Result<Framing>>, Option<People>, Vec<usize>);

/// How an input is framed, as `predict` frames it: among its person's
/// photos, in the face box it was first prepared with (found once, not
/// again), or alone, as the single-image head reads it. Its pixels are
/// prepared again when it is explained: a folder of thousands is not held.
#[derive(Clone)]
enum Framing {
    Person(Option<crate::data::face::FaceBox>),
    Alone,
}

/// The network input of `path`, framed so.
fn framed(path: &Path, cfg: &RunConfig, finder: &mut Option<crate::data::face::FaceFinder>, framing: &Framing) -> Result<Vec<f32>> {
    use crate::eval::predict::{prepare_alone, prepare_one};
    match framing {
        Framing::Person(b) => prepare_one(path, cfg, finder, b.as_ref()),
        Framing::Alone => prepare_alone(path, cfg, finder),
    }
    .map(|(v, _)| v)
}

/// Each input framed as `predict` frames it (the person's face box for a
/// photo among enough of its person's, the single-image head's frame
/// otherwise), with the person statistics of the first kind: those of its
/// person's decoded inputs, as `predict` fits them (without the mirror images).
/// An input that repeats an earlier one of its person (the same file, or
/// the same bytes) counts once in its person's statistics and is explained
/// as that one, as `predict` answers it; so is one that repeats an earlier
/// input answered alone. Also each input's first (`repeats`): a repeat's
/// heat is its first's.
fn prepared_with_people(
    cfg: &RunConfig,
    model: &Vgg16,
    (paths, subjects): (&[PathBuf], &SubjectFrom),
    finder: &mut Option<crate::data::face::FaceFinder>,
) -> Prepared {
    let keys = if model.cfg.subject_norm { subjects.keys(paths) } else { vec![None; paths.len()] };
    // Photos alone (no person) repeat each other too: the same bytes, the same heat.
    let same: Vec<Option<String>> = keys.iter().map(|k| Some(k.as_ref().map_or_else(|| "alone".to_string(), |k| format!("person {k}")))).collect();
    let first = crate::eval::predict::repeats(paths, &same);
    let distinct: Vec<usize> = (0..paths.len()).filter(|&i| first[i] == i).collect();
    if distinct.len() == paths.len() {
        let (px, people) = prepared_distinct(cfg, model, (paths, keys), finder);
        return (px, people, first);
    }
    let at: std::collections::HashMap<usize, usize> = distinct.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let (d_paths, d_keys): (Vec<PathBuf>, Vec<Option<String>>) = distinct.iter().map(|&i| (paths[i].clone(), keys[i].clone())).unzip();
    let (d_px, d_people) = prepared_distinct(cfg, model, (&d_paths, d_keys), finder);
    let px = paths.iter().zip(&first).map(|(p, f)| d_px[at[f]].as_ref().map(Clone::clone).map_err(|e| Error::image(p, e.problem()))).collect();
    let people = d_people.map(|d| People { group_of: first.iter().map(|f| d.group_of[at[f]]).collect(), norm: d.norm });
    (px, people, first)
}

/// `prepared_with_people` of inputs none of which repeats another; `keys`: each one's person.
/// The photos answered with their person's statistics are decoded here,
/// 16 at a time, for those statistics' features, and their pixels dropped;
/// the photos answered alone are first decoded when explained.
fn prepared_distinct(
    cfg: &RunConfig,
    model: &Vgg16,
    (paths, keys): (&[PathBuf], Vec<Option<String>>),
    finder: &mut Option<crate::data::face::FaceFinder>,
) -> (Vec<Result<Framing>>, Option<People>) {
    use crate::eval::predict::{modes_of, person_boxes, prepare_one};
    let wanted: Vec<bool> = modes_of(&keys).into_iter().map(|m| m == Mode::Person).collect();
    let alone: Vec<bool> = wanted.iter().map(|w| !w).collect();
    let given = person_boxes(cfg, paths, (&keys, &alone), finder);
    let s = cfg.data.preprocess.image_size as i64;
    let mut framing: Vec<Result<Framing>> = Vec::with_capacity(paths.len());
    // The pooled features of the decoded photos of `wanted` people, in row order.
    let (mut decoded, mut chunks, mut pending): (Vec<usize>, Vec<Tensor>, Vec<f32>) = (vec![], vec![], vec![]);
    for (i, p) in paths.iter().enumerate() {
        if !wanted[i] {
            framing.push(Ok(Framing::Alone));
            continue;
        }
        match prepare_one(p, cfg, finder, given[i].as_ref()) {
            Ok((v, used)) => {
                framing.push(Ok(Framing::Person(used.or_else(|| given[i].clone()))));
                decoded.push(i);
                if model.cfg.subject_norm {
                    pending.extend(v);
                }
            }
            Err(e) => framing.push(Err(e)),
        }
        let last = i + 1 == paths.len();
        let n = pending.len() as i64 / (s * s);
        if model.cfg.subject_norm && (n == 16 || (last && n > 0)) {
            chunks.push(pooled_of(model, cfg, &Tensor::from_slice(&std::mem::take(&mut pending)).view([n, 1, s, s])));
        }
    }
    // A person left with too few decoded photos is answered alone: framed so.
    let person_keys: Vec<Option<String>> = (0..paths.len()).map(|i| keys[i].clone().filter(|_| wanted[i] && framing[i].is_ok())).collect();
    let person: Vec<bool> = modes_of(&person_keys).into_iter().map(|m| m == Mode::Person).collect();
    for i in 0..paths.len() {
        if wanted[i] && framing[i].is_ok() && !person[i] {
            framing[i] = Ok(Framing::Alone);
        }
    }
    if !model.cfg.subject_norm {
        return (framing, None);
    }
    let keys: Vec<Option<String>> = (0..paths.len()).map(|i| keys[i].clone().filter(|_| person[i])).collect();
    let rows: Vec<usize> = (0..paths.len()).filter(|&i| keys[i].is_some()).collect();
    if rows.is_empty() {
        return (framing, None);
    }
    let all = Tensor::cat(&chunks, 0);
    let at: Vec<i64> = decoded.iter().enumerate().filter(|&(_, &i)| person[i]).map(|(k, _)| k as i64).collect();
    let f = all.index_select(0, &Tensor::from_slice(&at).to_device(all.device()));
    let people = people_of_rows(model, &f, &rows, &keys);
    (framing, people)
}

/// The pooled features (n, D) of gray inputs (n,1,S,S), as the person-normalised head reads them.
fn pooled_of(model: &Vgg16, cfg: &RunConfig, gray: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let g = gray.to_device(model.device()).to_kind(Kind::Float);
        model.frozen(|| model.pooled_from(&cfg.data.preprocess.normalise(&g), Block::Conv1, false))
    })
}

/// The person statistics a subject-normalised model answers photos in
/// person mode with: fitted, as `predict` fits them, on the rows of `gray`
/// (N,1,S,S, as the person-normalised head reads them) whose `person` is
/// given — those answered in that mode — and each row's person among them.
pub struct People {
    norm: crate::subject::SubjectNorm,
    group_of: Vec<Option<usize>>,
}

impl People {
    fn of_row(&self, i: usize) -> Option<PersonOf<'_>> {
        self.group_of.get(i).copied().flatten().map(|g| (&self.norm, g))
    }
}

/// `People` of `gray`'s rows in person mode (`person[i]` given); none where no row is.
pub fn people_of(model: &Vgg16, cfg: &RunConfig, gray: &Tensor, person: &[Option<String>]) -> Option<People> {
    let rows: Vec<usize> = (0..person.len()).filter(|&i| person[i].is_some()).collect();
    if rows.is_empty() || !model.cfg.subject_norm {
        return None;
    }
    let chunks: Vec<Tensor> = rows
        .chunks(16)
        .map(|chunk| {
            pooled_of(model, cfg, &gray.index_select(0, &Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(gray.device())))
        })
        .collect();
    people_of_rows(model, &Tensor::cat(&chunks, 0), &rows, person)
}

/// `people_of` from the pooled features the rows were scored with (N, D), without another trunk pass.
pub fn people_of_features(model: &Vgg16, features: &Tensor, person: &[Option<String>]) -> Option<People> {
    let rows: Vec<usize> = (0..person.len()).filter(|&i| person[i].is_some()).collect();
    if rows.is_empty() || !model.cfg.subject_norm {
        return None;
    }
    let at = Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(features.device());
    people_of_rows(model, &features.index_select(0, &at), &rows, person)
}

/// `People` from the features `f` of `rows` (those with a `person`).
fn people_of_rows(model: &Vgg16, f: &Tensor, rows: &[usize], person: &[Option<String>]) -> Option<People> {
    let groups = crate::subject::groups(&rows.iter().map(|&i| person[i].clone()).collect::<Vec<_>>());
    let norm = tch::no_grad(|| crate::subject::SubjectNorm::fit_towards(f, &groups, model.person_prior().as_ref()));
    let mut group_of = vec![None; person.len()];
    for (k, &i) in rows.iter().enumerate() {
        group_of[i] = Some(groups[k]);
    }
    Some(People { norm, group_of })
}

/// Sums of the heat in each image quadrant, as fractions of the total
/// (top-left, top-right, bottom-left, bottom-right).
pub fn quadrant_mass(heat: &[f32], s: usize) -> [f64; 4] {
    let mut q = [0f64; 4];
    for (i, &h) in heat.iter().enumerate() {
        let (x, y) = (i % s, i / s);
        q[(y >= s / 2) as usize * 2 + (x >= s / 2) as usize] += h as f64;
    }
    let total: f64 = q.iter().sum();
    if total > 0.0 {
        q.iter_mut().for_each(|v| *v /= total);
    }
    q
}

/// The gray input with the heat laid over it in inferno, the overlay's
/// opacity growing with the heat so cold regions still show the face.
pub(crate) fn overlay(input: &[f32], heat: &[f32], s: u32) -> RgbImage {
    RgbImage::from_fn(s, s, |x, y| {
        let i = (y * s + x) as usize;
        let g = input[i].clamp(0.0, 1.0) * 255.0;
        let h = heat[i].clamp(0.0, 1.0);
        let c = colorous::INFERNO.eval_continuous(h as f64);
        let a = 0.65 * h;
        let mix = |v: u8| ((1.0 - a) * g + a * v as f32).round().clamp(0.0, 255.0) as u8;
        Rgb([mix(c.r), mix(c.g), mix(c.b)])
    })
}

/// Tiles at least this wide on a sheet (small test inputs are enlarged).
const MIN_TILE: u32 = 160;
const LINE: u32 = 15;

/// `img` enlarged to at least [`MIN_TILE`], with caption lines underneath.
pub(crate) fn captioned(img: &RgbImage, lines: &[String]) -> Result<RgbImage> {
    let img = if img.width() < MIN_TILE {
        imageops::resize(img, MIN_TILE, MIN_TILE * img.height() / img.width(), imageops::FilterType::Triangle)
    } else {
        img.clone()
    };
    let (w, h) = (img.width(), img.height() + LINE * lines.len() as u32 + 4);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    imageops::overlay(&mut canvas, &img, 0, 0);
    let mut buf = canvas.into_raw();
    {
        crate::eval::plot::register_font();
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let font = ("sans-serif", 12).into_font();
        let max_chars = (w / 7) as usize;
        for (k, line) in lines.iter().enumerate() {
            let text: String = line.chars().take(max_chars).collect();
            root.draw(&Text::new(text, (3, (img.height() + 2 + LINE * k as u32) as i32), font.clone()))
                .map_err(|e| Error::internal(format!("cannot draw a caption: {e}")))?;
        }
        root.present().map_err(|e| Error::internal(format!("cannot draw a caption: {e}")))?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::internal("caption buffer has the wrong size"))
}

/// Tiles (equal sizes) in a grid at most 8 wide, on white.
pub fn sheet(tiles: &[RgbImage]) -> RgbImage {
    let Some(first) = tiles.first() else { return RgbImage::from_pixel(1, 1, Rgb([255, 255, 255])) };
    let cols = (tiles.len() as f64).sqrt().ceil().clamp(1.0, 8.0) as u32;
    let rows = (tiles.len() as u32).div_ceil(cols);
    let (cw, ch) = (first.width() + 6, first.height() + 6);
    let mut canvas = RgbImage::from_pixel(cols * cw + 6, rows * ch + 6, Rgb([255, 255, 255]));
    for (k, t) in tiles.iter().enumerate() {
        let (x, y) = (6 + (k as u32 % cols) * cw, 6 + (k as u32 / cols) * ch);
        imageops::overlay(&mut canvas, t, x as i64, y as i64);
    }
    canvas
}

/// Tiles per page of a sheet of many (faces' contact sheet, explain's
/// sheet): 8 columns × 25 rows, about 1300 × 3800 px for 128-px face crops,
/// a page any viewer opens. One contact sheet of 2040 London photos was
/// 1334 × 47181 px and took `faces` to 669 MB; a KDEF-sized set (4900
/// photos) would make one of ~150 megapixels, past Pillow's 89-megapixel
/// decompression-bomb warning.
pub const SHEET_PAGE: usize = 200;

/// `STEM.png`, then `STEM_2.png`, … for the later pages.
fn sheet_page(dir: &Path, stem: &str, page: usize) -> PathBuf {
    dir.join(if page == 0 { format!("{stem}.png") } else { format!("{stem}_{}.png", page + 1) })
}

/// Which later page of `stem`'s sheet a file name is (`STEM_N.png`, N ≥ 2).
fn later_page(name: &str, stem: &str) -> Option<usize> {
    name.strip_prefix(stem)?.strip_prefix('_')?.strip_suffix(".png")?.parse().ok().filter(|&n| n >= 2)
}

/// Writes `items` as a sheet in pages of equal size of at most `SHEET_PAGE`
/// tiles (`tile` makes each, a page at a time: one page's tiles are in
/// memory) — 204 items make two pages of 102 — and removes the later pages
/// of `stem` that an earlier, larger call left in `dir`. Returns the pages.
pub(crate) fn save_sheets<T>(dir: &Path, stem: &str, items: &[T], tile: impl Fn(&T) -> Result<RgbImage>) -> Result<Vec<PathBuf>> {
    let per_page = items.len().div_ceil(items.len().div_ceil(SHEET_PAGE).max(1)).max(1);
    let mut pages = Vec::new();
    for (k, page) in items.chunks(per_page).enumerate() {
        let path = sheet_page(dir, stem, k);
        save_png(&path, &sheet(&page.iter().map(&tile).collect::<Result<Vec<_>>>()?))?;
        pages.push(path);
    }
    remove_later_pages(dir, stem, pages.len());
    Ok(pages)
}

/// Removes the pages of sheet `stem` in `dir` after the first `kept`.
pub(crate) fn remove_later_pages(dir: &Path, stem: &str, kept: usize) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if later_page(&e.file_name().to_string_lossy(), stem).is_some_and(|n| n > kept) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes an image as PNG, atomically.
pub(crate) fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    fsutil::write_atomic(path, &png)
}

/// What `vggft explain` does.
pub struct ExplainRequest<'a> {
    pub paths: &'a [PathBuf],
    /// What every heatmap explains (`--class`); none: each image's answer.
    pub class: Option<Target>,
    pub layer: Block,
    pub out: &'a Path,
    /// Also write the mean heatmap of each explained class.
    pub mean: bool,
    /// Also write each image's network input, heat and probabilities as
    /// safetensors (for the PyTorch cross-check in scripts/gradcam_check.py).
    pub arrays: bool,
    /// Each input's person, as `predict` takes it (a subject-normalised model).
    pub subjects: &'a SubjectFrom,
}

/// One explained file, or why it could not be.
pub struct Explained {
    pub path: PathBuf,
    pub result: Result<(Cam, PathBuf)>,
}

/// Explains every path; writes a PNG per image, `sheet.png` (in pages of at
/// most `SHEET_PAGE`: `sheet_2.png`, …), `explain.csv` and (with `mean`)
/// `mean_<class>.png`. Returns each input's result (its class, probabilities
/// and mode; the pixels, written to its heatmap and `--arrays`, are not
/// kept: a folder of thousands) and the sheet's pages.
pub fn explain(cfg: &RunConfig, model: &Vgg16, req: &ExplainRequest, device: Device) -> Result<(Vec<Explained>, Vec<PathBuf>)> {
    check_layer(cfg, req.layer)?;
    refuse_out_among_inputs(req.out, req.paths)?;
    crate::data::scan::refuse_other_output(req.out, "a folder of heatmaps", "the heatmaps, sheet.png and explain.csv", &["explain.csv", "sheet.png"])?;
    let stale = earlier_outputs(req.out);
    // Each input's heatmap, by the input's place and name.
    let heatmaps: Vec<PathBuf> = req.paths.iter().enumerate().map(|(i, p)| req.out.join(tile_name(i, p))).collect();
    refuse_others_files(req.out, &planned_files(cfg, req, &heatmaps), &stale)?;
    // One writer at a time (a second call would remove this one's heatmaps
    // as stale); what an earlier call left is read again under the lock.
    let _lock = fsutil::create_locked(req.out, ".lock", false)?;
    fsutil::remove_stale_temps(req.out);
    let stale = earlier_outputs(req.out);
    // explain.csv first, listing what this call writes and what an earlier
    // one left: a call stopped part-way leaves a folder the next call knows
    // as its own, down to each file.
    write_plan(&req.out.join("explain.csv"), &cfg.classes, req.paths, &heatmaps, &stale)?;
    let s = cfg.data.preprocess.image_size;
    let mut finder = None;
    let mut out = Vec::new();
    let mut tiles = Vec::new();
    let mut written = std::collections::HashSet::new();
    let (prepared, people, first) = prepared_with_people(cfg, model, (req.paths, req.subjects), &mut finder);
    // A result keeps its pixels (input and heat, ~0.4 MB at 224 px) only
    // where a later repeat copies them; `--mean` adds each into its class's
    // sums (count, input, heat) as it comes, in input order.
    let repeated: std::collections::HashSet<usize> = first.iter().enumerate().filter(|&(j, &f)| f != j).map(|(_, &f)| f).collect();
    let pixels = (s * s) as usize;
    // One mean per class explained; for a raw label given, that label's alone.
    let mean_names: Vec<&str> = match req.class {
        Some(t @ Target::Raw(_)) => vec![t.name(cfg)],
        _ => cfg.classes.iter().map(String::as_str).collect(),
    };
    let mut sums = vec![(0usize, vec![0f32; pixels], vec![0f32; pixels]); if req.mean { mean_names.len() } else { 0 }];
    for ((i, p), framing) in req.paths.iter().enumerate().zip(prepared) {
        // A repeat's heat is its first's (`out` holds one entry per input before it).
        let earlier = (first[i] != i).then(|| out.get(first[i])).flatten().and_then(|e: &Explained| e.result.as_ref().ok());
        let cam = match (framing, earlier) {
            (Ok(_), Some((cam, _))) => cam.clone(),
            (Ok(framing), None) => match framed(p, cfg, &mut finder, &framing) {
                Ok(px) => grad_cam(model, cfg, &px, (req.layer, req.class), people.as_ref().and_then(|p| p.of_row(i)), device)?,
                Err(e) => {
                    out.push(Explained { path: p.clone(), result: Err(e) });
                    continue;
                }
            },
            (Err(e), _) => {
                out.push(Explained { path: p.clone(), result: Err(e) });
                continue;
            }
        };
        let stem = crate::fsutil::output_stem(p);
        let file = heatmaps[i].clone();
        let tile = captioned(&overlay(&cam.input, &cam.heat, s), &caption(cfg, &cam, &stem, None))?;
        save_png(&file, &tile)?;
        written.insert(file.clone());
        if req.arrays {
            written.insert(save_arrays(&file, &cam, s)?);
        }
        if let Some((n, input, heat)) = sums.get_mut(if cam.raw.is_some() { 0 } else { cam.class }) {
            *n += 1;
            input.iter_mut().zip(&cam.input).for_each(|(a, v)| *a += v);
            heat.iter_mut().zip(&cam.heat).for_each(|(a, v)| *a += v);
        }
        let mut cam = cam;
        if !repeated.contains(&i) {
            (cam.input, cam.heat) = (Vec::new(), Vec::new());
        }
        tiles.push(file.clone());
        out.push(Explained { path: p.clone(), result: Ok((cam, file)) });
    }
    // Before the sheet: a call killed there left a listing of what it wrote.
    write_csv(&req.out.join("explain.csv"), cfg, &out)?;
    // The sheet's tiles are the heatmaps as written, read back a page at a
    // time: a folder of many photos is not held in memory.
    let sheets = save_sheets(req.out, "sheet", &tiles, |f: &PathBuf| {
        image::open(f).map(|i| i.to_rgb8()).map_err(|e| Error::file(f, format!("cannot read the heatmap back for sheet.png: {e}")))
    })?;
    written.extend(sheets.iter().cloned());
    for (sum, name) in sums.iter().zip(&mean_names) {
        written.extend(save_mean(req.out, (name, req.layer), sum, s)?);
    }
    // A second explain into the same folder (other images, fewer, or none
    // readable) would leave the first one's heatmaps, sheet and means beside
    // an explain.csv that no longer lists them: remove what it wrote and this
    // one did not.
    for old in stale.iter().filter(|f| !written.contains(*f)) {
        let _ = std::fs::remove_file(old);
    }
    Ok((out, sheets))
}

/// `--arrays`: the heatmap `file`'s twin `.safetensors` with the network's
/// input, the heat, the probabilities and the class explained (and a raw
/// label's index and probability); returns its path.
fn save_arrays(file: &Path, cam: &Cam, s: u32) -> Result<PathBuf> {
    let t = |v: &[f32]| Tensor::from_slice(v).view([s as i64, s as i64]);
    let named = [
        ("input".to_string(), t(&cam.input)),
        ("heat".to_string(), t(&cam.heat)),
        ("probs".to_string(), Tensor::from_slice(&cam.probs)),
        ("class".to_string(), Tensor::from_slice(&[cam.class as f64])),
    ];
    // A raw label explained: its index among the run's raw labels, and its probability.
    let raw = cam.raw.map(|(r, p)| [("raw_class".to_string(), Tensor::from_slice(&[r as f64])), ("raw_prob".to_string(), Tensor::from_slice(&[p]))]);
    let named: Vec<(String, Tensor)> = named.into_iter().chain(raw.into_iter().flatten()).collect();
    let arrays = file.with_extension("safetensors");
    crate::model::weights::save_atomic(&named, &arrays)?;
    Ok(arrays)
}

/// `--mean`: one class's (or raw label's) `mean_<name>.png` in `out`, the
/// average input under the average heat (scaled to its maximum), from
/// `sum` (count, summed inputs, summed heats); none where it has no image.
fn save_mean(out: &Path, (name, layer): (&str, Block), (count, input, heat): &(usize, Vec<f32>, Vec<f32>), s: u32) -> Result<Option<PathBuf>> {
    if *count == 0 {
        return Ok(None);
    }
    let n = *count as f32;
    let input: Vec<f32> = input.iter().map(|v| v / n).collect();
    let heat: Vec<f32> = heat.iter().map(|v| v / n).collect();
    let max = heat.iter().copied().fold(0.0f32, f32::max);
    let heat: Vec<f32> = heat.iter().map(|h| if max > 0.0 { h / max } else { 0.0 }).collect();
    let lines = vec![format!("mean Grad-CAM: {name}"), format!("{count} image(s), {}", layer.name())];
    let file = out.join(format!("mean_{}.png", safe_name(name)));
    save_png(&file, &captioned(&overlay(&input, &heat, s), &lines)?)?;
    Ok(Some(file))
}

/// The files a call writes by name: each input's heatmap
/// (`NNNN_<photo>.png`), its `--arrays` twin, `mean_<class>.png`.
fn planned_files(cfg: &RunConfig, req: &ExplainRequest, heatmaps: &[PathBuf]) -> Vec<PathBuf> {
    let mut names = heatmaps.to_vec();
    if req.arrays {
        names.extend(heatmaps.iter().map(|h| h.with_extension("safetensors")));
    }
    if req.mean {
        names.extend(cfg.classes.iter().map(|c| req.out.join(format!("mean_{}.png", safe_name(c)))));
    }
    names
}

/// The heatmap file name of the `i`-th input.
fn tile_name(i: usize, p: &Path) -> String {
    format!("{i:04}_{}.png", crate::fsutil::output_stem(p))
}

/// Whether a file name has `tile_name`'s shape.
fn is_tile(n: &str) -> bool {
    n.len() > 9 && n.as_bytes()[..4].iter().all(u8::is_ascii_digit) && n.as_bytes()[4] == b'_' && n.ends_with(".png")
}

/// Refuses an `out` folder holding a file of a name this call writes
/// (`planned`) that no earlier explain listed (`stale`): a file of the
/// user's, which would be replaced.
fn refuse_others_files(out: &Path, planned: &[PathBuf], stale: &[PathBuf]) -> Result<()> {
    match planned.iter().find(|f| f.exists() && !stale.contains(f)) {
        Some(f) => Err(Error::file(
            out,
            format!(
                "holds a {} that this command did not write: a heatmap of that name would replace it; give another --out",
                f.file_name().unwrap_or_default().to_string_lossy()
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses an `--out` folder that holds photos being explained: the heatmaps
/// (PNGs) and `sheet.png` would be mixed with them, and the next `predict` or
/// `explain` of that folder would read them as photos.
fn refuse_out_among_inputs(out: &Path, paths: &[PathBuf]) -> Result<()> {
    let dir = fsutil::absolute(out);
    match paths.iter().find(|p| p.parent().map(|d| fsutil::absolute(if d.as_os_str().is_empty() { Path::new(".") } else { d })) == Some(dir.clone())) {
        Some(p) => Err(Error::file(
            out,
            format!(
                "holds photos being explained ({}): the heatmaps and sheet.png would be mixed with them and read as photos by the next predict or explain of that folder; give another --out (e.g. {})",
                p.display(),
                out.join("heatmaps").display()
            ),
        )),
        None => Ok(()),
    }
}

/// What an earlier `vggft explain` wrote into `out`, found by its
/// `explain.csv`: the heatmaps it lists (`NNNN_name.png`, by file name, so a
/// run from another working folder counts) and their `--arrays` twins,
/// `sheet.png` (and its later pages) and `mean_*.png`. Nothing when `out` holds no explain.csv:
/// a folder explain did not write is not touched.
fn earlier_outputs(out: &Path) -> Vec<PathBuf> {
    let Ok(mut r) = csv::Reader::from_path(out.join("explain.csv")) else { return vec![] };
    let column = r.headers().ok().and_then(|h| h.iter().position(|c| c == "heatmap"));
    let mut files: Vec<PathBuf> = r
        .records()
        .filter_map(|rec| Some(Path::new(rec.ok()?.get(column?)?).file_name()?.to_string_lossy().into_owned()))
        .filter(|n| is_tile(n))
        .flat_map(|n| [out.join(&n), out.join(n).with_extension("safetensors")])
        .collect();
    files.push(out.join("sheet.png"));
    files.extend(std::fs::read_dir(out).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| {
        p.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| (n.starts_with("mean_") && n.ends_with(".png")) || later_page(&n, "sheet").is_some())
    }));
    files
}

/// Caption lines: the file, the explained class with its probability, and
/// (when known) the true class.
pub(crate) fn caption(cfg: &RunConfig, cam: &Cam, name: &str, truth: Option<usize>) -> Vec<String> {
    let pred = cam_class(cfg, &cam.probs, cam.mode);
    let mut lines = vec![name.to_string(), format!("{} {:.2}", cfg.classes[pred], cam.probs[pred])];
    if cam.class != pred || cam.raw.is_some() {
        let (name, p) = cam.explained(cfg);
        lines.push(format!("heat for {name} ({p:.2})"));
    }
    if let Some(t) = truth {
        lines.push(format!("true {}", cfg.classes[t]));
    }
    lines
}

/// One of the worst-predicted images.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TopLoss {
    pub path: String,
    pub truth: usize,
    pub probs: Vec<f64>,
    /// Cross-entropy of the true class, −ln p(true).
    pub loss: f64,
    /// The photo's own label where it is not its class's name (`sad` of
    /// `expressive`): which expression the model got wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The class the model answered (at its threshold; absent in older cv folders: the most probable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<usize>,
    /// Its captioned heatmap tile (PNG).
    pub tile: PathBuf,
}

/// Indices of the `n` rows with the highest −ln p(true), highest first.
pub fn worst(y: &[i64], probs: &[Vec<f64>], n: usize) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = y.iter().zip(probs).enumerate().map(|(i, (&t, p))| (i, -p[t as usize].max(1e-12).ln())).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Grad-CAM tiles (heat for the predicted class, the probabilities that
/// were scored, the true class and the loss in the caption) of the rows
/// `picked` of `gray` (N,1,S,S), written into `dir` as `prefix-K.png`;
/// row i's class is decided at `thresholds[i]` (`threshold::decide`), its
/// heat taken through the head that scored it (`people`: the rows scored
/// with their person's statistics).
#[allow(clippy::too_many_arguments)]
pub fn loss_tiles(
    cfg: &RunConfig,
    model: &Vgg16,
    gray: &Tensor,
    picked: &[(usize, f64)],
    (paths, labels): (&[String], &[String]),
    y: &[i64],
    (probs, thresholds): (&[Vec<f64>], &[Option<f64>]),
    people: Option<&People>,
    (layer, device): (Block, Device),
    (dir, prefix): (&Path, &str),
) -> Result<Vec<TopLoss>> {
    let s = cfg.data.preprocess.image_size;
    let mut out = Vec::new();
    for (k, &(i, loss)) in picked.iter().enumerate() {
        let px = Vec::<f32>::try_from(gray.get(i as i64).to_device(Device::Cpu).to_kind(Kind::Float).view([-1])).map_err(Error::Torch)?;
        let pred = crate::eval::threshold::decide(&probs[i], thresholds.get(i).copied().flatten());
        let cam = grad_cam(model, cfg, &px, (layer, Some(Target::Class(pred))), people.and_then(|p| p.of_row(i)), device)?;
        let name = crate::fsutil::output_stem(Path::new(&paths[i]));
        let truth = &cfg.classes[y[i] as usize];
        let label = labels.get(i).filter(|l| *l != truth).cloned();
        let lines = vec![
            name,
            format!("pred {} {:.2}", cfg.classes[pred], probs[i][pred]),
            format!("true {truth} {:.2}{}", probs[i][y[i] as usize], label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default()),
            format!("loss {loss:.2}"),
        ];
        let tile = dir.join(format!("{prefix}-{k:03}.png"));
        save_png(&tile, &captioned(&overlay(&cam.input, &cam.heat, s), &lines)?)?;
        out.push(TopLoss { path: paths[i].clone(), truth: y[i] as usize, probs: probs[i].clone(), loss, label, predicted: Some(pred), tile });
    }
    Ok(out)
}

/// Removes the top losses an earlier evaluation wrote into `dir`
/// (`top_losses.png`, `.csv` and the `top_losses/loss-NNN.png` tiles, nothing
/// else): a later evaluation into the same folder, with fewer or none, would
/// otherwise leave them beside metrics that are not theirs.
pub fn clear_top_losses(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("top_losses.png"));
    let _ = std::fs::remove_file(dir.join("top_losses.csv"));
    let tiles = dir.join("top_losses");
    for e in std::fs::read_dir(&tiles).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.strip_prefix("loss-").and_then(|r| r.strip_suffix(".png")).is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(tiles);
}

/// `top_losses.png` (the tiles, worst first) and `top_losses.csv` in `dir`.
pub fn write_top_losses(dir: &Path, classes: &[String], top: &[TopLoss]) -> Result<()> {
    let tiles: Vec<RgbImage> = top
        .iter()
        .map(|t| image::open(&t.tile).map(|i| i.to_rgb8()).map_err(|e| Error::file(&t.tile, format!("cannot read tile: {e}"))))
        .collect::<Result<_>>()?;
    save_png(&dir.join("top_losses.png"), &sheet(&tiles))?;
    let p = dir.join("top_losses.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["rank".to_string(), "path".into(), "true".into(), "predicted".into(), "loss".into()];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    // Last, so that the columns before it keep their places.
    header.push("label".into());
    let _ = w.write_record(&header);
    for (r, t) in top.iter().enumerate() {
        let mut rec = vec![
            (r + 1).to_string(),
            t.path.clone(),
            classes[t.truth].clone(),
            classes[t.predicted.unwrap_or_else(|| crate::eval::predict::argmax(&t.probs))].clone(),
            format!("{:.4}", t.loss),
        ];
        rec.extend(t.probs.iter().map(|p| format!("{p:.6}")));
        rec.push(t.label.clone().unwrap_or_default());
        let _ = w.write_record(&rec);
    }
    fsutil::write_atomic(&p, &w.into_inner().map_err(|e| Error::file(&p, e.to_string()))?)
}

fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// `explain.csv` before any heatmap is written: each input with the heatmap
/// it will have, and the heatmaps an earlier call left (`stale`), to be
/// removed at the end; the finished call replaces it with its results.
fn write_plan(path: &Path, classes: &[String], inputs: &[PathBuf], heatmaps: &[PathBuf], stale: &[PathBuf]) -> Result<()> {
    let mut rows: Vec<(String, &PathBuf, &str)> = inputs
        .iter()
        .zip(heatmaps)
        .map(|(p, h)| {
            (p.display().to_string(), h, "not recorded: the call ended early (a stop or an error); the heatmap is there if it was written before that")
        })
        .collect();
    rows.extend(
        stale
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| is_tile(&n.to_string_lossy())) && !heatmaps.contains(f))
            .map(|f| (String::new(), f, "left by an earlier explain")),
    );
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(csv_header(classes));
    for (input, file, why) in rows {
        let mut rec = vec![input, String::new(), file.display().to_string(), why.to_string()];
        rec.extend(classes.iter().map(|_| String::new()));
        let _ = w.write_record(&rec);
    }
    fsutil::write_atomic(path, &w.into_inner().map_err(|e| Error::file(path, e.to_string()))?)
}

fn csv_header(classes: &[String]) -> Vec<String> {
    let mut header = vec!["path".to_string(), "explained".into(), "heatmap".into(), "error".into()];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header
}

fn write_csv(path: &Path, cfg: &RunConfig, rows: &[Explained]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(csv_header(&cfg.classes));
    for r in rows {
        let mut rec = vec![r.path.display().to_string()];
        match &r.result {
            Ok((cam, file)) => {
                rec.extend([cam.explained(cfg).0.to_string(), file.display().to_string(), String::new()]);
                rec.extend(cam.probs.iter().map(|p| format!("{p:.6}")));
            }
            Err(e) => {
                rec.extend([String::new(), String::new(), e.problem()]);
                rec.extend(cfg.classes.iter().map(|_| String::new()));
            }
        }
        let _ = w.write_record(&rec);
    }
    fsutil::write_atomic(path, &w.into_inner().map_err(|e| Error::file(path, e.to_string()))?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// The listing written before any heatmap names this call's heatmaps and
    /// an earlier call's, so a call stopped part-way leaves files the next
    /// one knows as explain's (`earlier_outputs`).
    #[test]
    fn the_plan_lists_this_calls_heatmaps_and_the_earlier_ones() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let classes = ["neutral".to_string(), "expressive".to_string()];
        let inputs = [PathBuf::from("photos/a.jpg"), PathBuf::from("b.v2.png")];
        let earlier = [out.join("0000_old.png"), out.join("0000_old.safetensors"), out.join("sheet.png")];
        let heatmaps = [out.join("0000_a.png"), out.join("0001_b.v2.png")];
        super::write_plan(&out.join("explain.csv"), &classes, &inputs, &heatmaps, &earlier).unwrap();
        let mut listed = super::earlier_outputs(out);
        listed.sort();
        let mut expected: Vec<PathBuf> =
            ["0000_a.png", "0000_a.safetensors", "0000_old.png", "0000_old.safetensors", "0001_b.v2.png", "0001_b.v2.safetensors", "sheet.png"]
                .iter()
                .map(|n| out.join(n))
                .collect();
        expected.sort();
        assert_eq!(listed, expected);
    }
}

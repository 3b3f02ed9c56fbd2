//! The decision rule of a two-class task: the threshold on P(first class)
//! at or above which the model answers the first class, and the inner
//! cross-validation that sets it.
//!
//! The larger probability (threshold 0.5) is right only when the model's
//! probabilities are calibrated for people it never saw. With person
//! statistics on the JAFFE-format sets they are not: the neutral photos sit
//! at P(neutral) ≈ 0.5, so about half of them are called expressive
//! (docs/results/accuracy). `--threshold inner` (the default of the probe on
//! person statistics) holds some training people out in turn, trains the
//! same recipe on the others, scores the held-out people, and keeps the
//! threshold that maximises balanced accuracy on those scores (for the
//! person head, of the people shown with both classes) — no test person's
//! label is used. The same held-out scores calibrate the
//! single-image head's probabilities (`--calibrate`), for any number of
//! classes.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result, Setting};
use crate::session::Session;
use crate::train::{self, Cache, TrainData, Trainer};

/// Inner folds: the training people are dealt into this many groups (fewer
/// when there are fewer people), each held out once. Measured on the
/// JAFFE-format sets (docs/results/accuracy, "A threshold set in training").
pub const INNER_FOLDS: usize = 3;

/// An inner threshold is kept within [BOUND, 1 − BOUND]. The inner fits'
/// held-out scores put neutral photos at P(neutral) of 0.01 and less (wide
/// pooled features, overconfident heads), and thresholds that far out (down
/// to 1e-14 for the single-image head) rested on a handful of inner scores:
/// clipped at 0.1 / 0.9, balanced accuracy rose or held in each of the 9
/// leave-one-subject-out runs at hand, for both heads (docs/results/accuracy).
pub const BOUND: f64 = 0.1;

/// An inner threshold replaces 0.5 only where it raises the inner held-out
/// balanced accuracy by at least this much: smaller gains are within what
/// ~9 inner people's scores can tell apart. Offline on the saved folds of
/// the 10-seed default runs of both JAFFE-format sets (docs/results/accuracy,
/// "A threshold set in training"), 0.02 raised the JAFFE-framed figure
/// 0.963 → 0.968 and halved its spread over seeds (0.018 → 0.009), the
/// face-filling one level (0.865 → 0.866), the single-image heads level;
/// on ten other people, 0.949 → 0.952 (spread 0.014 → 0.009).
pub const MIN_GAIN: f64 = 0.02;

/// What `--threshold` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdChoice {
    /// `inner` for the probe on person statistics with several photos per
    /// person and a two-class task (where it was measured), else `off`.
    Auto,
    /// Set by an inner subject-grouped cross-validation over the training people.
    Inner,
    /// The larger probability (also what a run config from before thresholds means).
    #[default]
    Off,
    /// This threshold on P(first class).
    Fixed(f64),
}

impl ThresholdChoice {
    /// `auto`, `inner`, `off` or a probability strictly between 0 and 1.
    pub fn parse(s: &str) -> Result<ThresholdChoice> {
        match s {
            "auto" => Ok(ThresholdChoice::Auto),
            "inner" => Ok(ThresholdChoice::Inner),
            "off" => Ok(ThresholdChoice::Off),
            _ => match s.parse::<f64>() {
                Ok(t) if ThresholdChoice::Fixed(t).check_range().is_ok() => Ok(ThresholdChoice::Fixed(t)),
                _ => Err(Error::invalid(
                    Setting::Threshold,
                    format!("`{s}`: expected auto, inner, off or a probability strictly between 0 and 1 (0 and 1 themselves would answer one class always)"),
                )),
            },
        }
    }

    /// A fixed threshold lies strictly between 0 and 1 (the rule of the
    /// flag, for a loaded `config.json` too).
    pub(crate) fn check_range(self) -> Result<()> {
        match self {
            ThresholdChoice::Fixed(t) if !(t > 0.0 && t < 1.0) => {
                Err(Error::invalid(Setting::Threshold, format!("must lie strictly between 0 and 1, got {t}")))
            }
            _ => Ok(()),
        }
    }

    /// `check_range`, and a threshold (inner or fixed) needs two classes.
    pub(crate) fn validate(self, classes: usize) -> Result<()> {
        self.check_range()?;
        match self {
            ThresholdChoice::Fixed(_) | ThresholdChoice::Inner if classes != 2 => Err(Error::invalid(
                Setting::Threshold,
                format!("applies to two-class tasks (a threshold on the first class's probability); this one has {classes} classes"),
            )),
            _ => Ok(()),
        }
    }
}

/// What `--calibrate` asks for: the single-image head's probabilities
/// calibrated on the inner fits' held-out scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrateChoice {
    /// `inner` where the inner fits run anyway (`--threshold inner`) and for
    /// the probe on person statistics with several photos per person
    /// (any number of classes), else `off`. In a run config from before the
    /// flag: calibrated exactly where the threshold was set by inner fits.
    #[default]
    Auto,
    Inner,
    Off,
}

impl CalibrateChoice {
    pub fn parse(s: &str) -> Result<CalibrateChoice> {
        match s {
            "auto" => Ok(CalibrateChoice::Auto),
            "inner" => Ok(CalibrateChoice::Inner),
            "off" => Ok(CalibrateChoice::Off),
            _ => Err(Error::invalid(Setting::Calibrate, format!("`{s}`: expected auto, inner or off"))),
        }
    }
}

/// A trained model's threshold(s) on P(first class), in its `config.json`
/// (and each cv fold's result).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// For the main head (person-normalised, for a subject-normalised model).
    pub person: f64,
    /// For the single-image head of a subject-normalised model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<f64>,
    /// How the inner cross-validation set it (none: given with `--threshold P`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner: Option<InnerCv>,
    /// Where configs written on 2026-12-03 kept the single-image head's
    /// calibration (now `RunConfig::calibration`): read, never written.
    #[serde(default, rename = "calibration", skip_serializing)]
    pub(crate) legacy_calibration: Option<Calibration>,
}

/// The single-image head's probabilities as reported: P_k ∝ p_k^`scale`,
/// and for two classes `shift` added to the log-odds — Platt scaling,
/// P(first) = σ(`scale` · z + `shift`) with z = ln p₁ − ln p₂ as the head
/// gives them; for more classes temperature scaling (`shift` 0). The long
/// probe's single-image head is near max-margin on its training people
/// (P(neutral) 0.000 or 1.000 for most new people's photos: log loss 3.7
/// against the prior's 0.41 on the JAFFE-framed set; 7-way 5.5–6.4 against
/// chance's 1.95, docs/results/accuracy); a scale fitted on people the head
/// never saw says how sure it can be. `scale` > 0 keeps the head's order, so
/// every decision stays what it was (two classes: at the mapped threshold;
/// more: the most probable class is the same).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub scale: f64,
    pub shift: f64,
}

impl Calibration {
    /// The box the fitted parameters are kept in: a positive scale keeps the
    /// head's order, and a calibrated threshold from [`BOUND`, 1 − `BOUND`]
    /// stays strictly inside (0, 1) in floating point.
    const SCALE: (f64, f64) = (1e-3, 10.0);
    const SHIFT: f64 = 10.0;

    /// z of a row of two task-class probabilities (each floored at 1e-300, so |z| ≤ 691).
    pub fn log_odds(p: &[f64]) -> f64 {
        p[0].max(1e-300).ln() - p[1].max(1e-300).ln()
    }

    /// Fits the calibration of probability rows `rows` of classes `y` (held-out
    /// scores): Platt scaling for two classes ([`Calibration::fit`]), a
    /// temperature for more ([`Calibration::fit_temperature`]).
    pub fn fit_rows(y: &[i64], rows: &[Vec<f64>]) -> Option<Calibration> {
        match rows.first().map(Vec::len) {
            Some(2) => {
                let first: Vec<bool> = y.iter().map(|&c| c == 0).collect();
                let z: Vec<f64> = rows.iter().map(|p| Calibration::log_odds(p)).collect();
                Calibration::fit(&first, &z)
            }
            Some(k) if k > 2 => Calibration::fit_temperature(y, rows),
            _ => None,
        }
    }

    /// The scale (1 / temperature) that maximises the likelihood of classes
    /// `y` under P_k ∝ p_k^scale, within `Calibration::SCALE`: the negative
    /// log-likelihood is convex in the scale, so a bisection on its slope
    /// (60 halvings of ln scale) finds it. `None` with fewer than 2 classes
    /// present (no spread to learn from).
    pub fn fit_temperature(y: &[i64], rows: &[Vec<f64>]) -> Option<Calibration> {
        let mut present: Vec<i64> = y.to_vec();
        present.sort_unstable();
        present.dedup();
        if present.len() < 2 || y.len() != rows.len() {
            return None;
        }
        let logs: Vec<Vec<f64>> = rows.iter().map(|p| p.iter().map(|q| q.max(1e-300).ln()).collect()).collect();
        // d/da of the mean −log-likelihood: E_q[l] − l_y for each row, q the calibrated row.
        let slope = |a: f64| -> f64 {
            logs.iter().zip(y).map(|(l, &c)| softmax_scaled(a, l).iter().zip(l).map(|(q, v)| q * v).sum::<f64>() - l[c as usize]).sum::<f64>() / y.len() as f64
        };
        let (mut lo, mut hi) = (Self::SCALE.0.ln(), Self::SCALE.1.ln());
        if slope(lo.exp()) >= 0.0 {
            return Some(Calibration { scale: Self::SCALE.0, shift: 0.0 });
        }
        if slope(hi.exp()) <= 0.0 {
            return Some(Calibration { scale: Self::SCALE.1, shift: 0.0 });
        }
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if slope(mid.exp()) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(Calibration { scale: ((lo + hi) / 2.0).exp(), shift: 0.0 })
    }

    /// Fits scale and shift by maximum likelihood on held-out scores `z` of
    /// rows whose first class is `first`, with Platt's smoothed targets
    /// ((n₁ + 1)/(n₁ + 2) and 1/(n₀ + 2): a few dozen scores must not
    /// teach certainty), by Newton's method with a backtracking line search
    /// (Lin, Lin & Weng 2007). `None` without rows of both classes.
    pub fn fit(first: &[bool], z: &[f64]) -> Option<Calibration> {
        let n1 = first.iter().filter(|&&f| f).count() as f64;
        let n0 = first.len() as f64 - n1;
        if n1 == 0.0 || n0 == 0.0 {
            return None;
        }
        let target: Vec<f64> = first.iter().map(|&f| if f { (n1 + 1.0) / (n1 + 2.0) } else { 1.0 / (n0 + 2.0) }).collect();
        // −log-likelihood, stable for large |s|: log(1 + e^s) − t·s.
        let loss = |a: f64, b: f64| -> f64 {
            z.iter()
                .zip(&target)
                .map(|(&z, &t)| {
                    let s = a * z + b;
                    let softplus = if s > 0.0 { s + (-s).exp().ln_1p() } else { s.exp().ln_1p() };
                    softplus - t * s
                })
                .sum()
        };
        let (mut a, mut b) = (0.0, ((n1 + 1.0) / (n0 + 1.0)).ln());
        let mut f = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
            for (&z, &t) in z.iter().zip(&target) {
                let p = 1.0 / (1.0 + (-(a * z + b)).exp());
                let w = p * (1.0 - p);
                (ga, gb) = (ga + (p - t) * z, gb + (p - t));
                (haa, hab, hbb) = (haa + w * z * z, hab + w * z, hbb + w);
            }
            if ga.abs() < 1e-9 && gb.abs() < 1e-9 {
                break;
            }
            let det = haa * hbb - hab * hab;
            let (da, db) = (-(hbb * ga - hab * gb) / det, -(haa * gb - hab * ga) / det);
            let descent = ga * da + gb * db;
            let mut step = 1.0;
            while step > 1e-10 {
                let g = loss(a + step * da, b + step * db);
                if g < f + 1e-4 * step * descent {
                    (a, b, f) = (a + step * da, b + step * db, g);
                    break;
                }
                step /= 2.0;
            }
            if step <= 1e-10 {
                break;
            }
        }
        Some(Calibration { scale: a.clamp(Self::SCALE.0, Self::SCALE.1), shift: b.clamp(-Self::SHIFT, Self::SHIFT) })
    }

    /// `apply` to rows of task-class probabilities alone.
    pub fn apply_rows(&self, rows: &mut [Vec<f64>]) {
        for p in rows {
            self.apply(p, &mut [], &[]);
        }
    }

    /// The formula, for summaries.
    pub fn describe(&self) -> String {
        if self.shift == 0.0 {
            format!("P ∝ (the head's P)^{:.3} (temperature {:.1})", self.scale, 1.0 / self.scale)
        } else {
            format!("P = σ({:.3} × the head's log-odds {} {:.3})", self.scale, if self.shift < 0.0 { "−" } else { "+" }, self.shift.abs())
        }
    }

    /// The calibrated P(first) of a head's log-odds `z`.
    pub fn p0(&self, z: f64) -> f64 {
        1.0 / (1.0 + (-(self.scale * z + self.shift)).exp())
    }

    /// A threshold on the head's P(first) → the same decisions' threshold on the calibrated one.
    pub fn threshold(&self, t: f64) -> f64 {
        self.p0(t.ln() - (1.0 - t).ln())
    }

    /// Calibrated task-class probabilities of a row (and the row's raw-label
    /// probabilities `raw`, of task classes `raw_to_task`, rescaled to sum to them).
    pub fn apply(&self, p: &mut [f64], raw: &mut [f64], raw_to_task: &[usize]) {
        let q: Vec<f64> = if p.len() == 2 {
            let q0 = self.p0(Self::log_odds(p));
            vec![q0, 1.0 - q0]
        } else {
            softmax_scaled(self.scale, &p.iter().map(|q| q.max(1e-300).ln()).collect::<Vec<_>>())
        };
        for c in 0..p.len() {
            let members = raw_to_task.iter().filter(|&&t| t == c).count().max(1) as f64;
            for (r, _) in raw.iter_mut().zip(raw_to_task).filter(|(_, &t)| t == c) {
                *r = if p[c] > 0.0 { *r * q[c] / p[c] } else { q[c] / members };
            }
        }
        p.copy_from_slice(&q);
    }
}

/// softmax(a · `logs`), computed from the largest term so that no exponential overflows.
fn softmax_scaled(a: f64, logs: &[f64]) -> Vec<f64> {
    let top = logs.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(a * v));
    let w: Vec<f64> = logs.iter().map(|&v| (a * v - top).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|w| w / sum).collect()
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the inner cross-validation that set a threshold saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InnerCv {
    pub folds: usize,
    /// Training people dealt into the folds.
    pub people: usize,
    /// Of them, those with photos of one class only, left out of the person
    /// head's threshold (`mixed_rows`; absent in configs from before: none were).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub one_sided: usize,
    /// Balanced accuracy of the held-out people's scores at 0.5 and at the threshold.
    pub at_half: f64,
    pub at_threshold: f64,
    /// The same for the single-image head (at 0.5, at its threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<(f64, f64)>,
}

impl Threshold {
    /// A threshold given on the command line.
    pub fn fixed(t: f64) -> Threshold {
        Threshold { person: t, single: None, inner: None, legacy_calibration: None }
    }

    /// The threshold for a prediction made in `mode` (`None`: a model without person statistics).
    pub fn for_mode(&self, mode: Option<crate::eval::predict::Mode>) -> f64 {
        match mode {
            Some(crate::eval::predict::Mode::Single) => self.single.unwrap_or(self.person),
            _ => self.person,
        }
    }

    /// Where the inner cross-validation that set the threshold found the
    /// single-image head near chance on held-out training people (below
    /// [`SINGLE_NEAR_CHANCE`] balanced accuracy at 0.5 and at its own
    /// threshold): one sentence saying what that means for a photo answered
    /// alone. (The JAFFE-format sets, where identity dominates the features,
    /// measure ~0.5 there; the London faces ~0.9.)
    pub fn single_near_chance(&self) -> Option<String> {
        let (half, own) = self.inner.as_ref()?.single?;
        let best = half.max(own);
        (best < SINGLE_NEAR_CHANCE).then(|| {
            format!(
                "the model's single-image head reached {best:.2} balanced accuracy on held-out training people (the inner cross-validation that set its threshold; chance is 0.50): an answer for a photo alone, with no other photo of its person, means little — give each person's photos together"
            )
        })
    }

    /// One line for summaries; `calibration`: the single-image head's, whose scale its threshold is on.
    pub fn describe(&self, first_class: &str, calibration: Option<&Calibration>) -> String {
        let evidence =
            self.inner.as_ref().and_then(|i| i.single).map(|(h, t)| format!(", whose held-out balanced accuracy went {h:.3} → {t:.3}")).unwrap_or_default();
        let calibrated = calibration.map(|c| format!("; its probabilities calibrated on the same held-out scores, {}", c.describe())).unwrap_or_default();
        // The single-image head's part: its own threshold where it differs, its calibration where fitted.
        let single = match self.single {
            Some(s) if s != self.person || calibration.is_some() => format!(" ({s:.3} for the single-image head{evidence}{calibrated})"),
            _ => String::new(),
        };
        match &self.inner {
            None => format!("answers {first_class} where P({first_class}) ≥ {:.3} (--threshold)", self.person),
            Some(i) => {
                let whose = match i.one_sided {
                    0 => "their".to_string(),
                    n => format!("{n} shown with one class only left out of it; the others'"),
                };
                format!(
                    "answers {first_class} where P({first_class}) ≥ {:.3}{single}, set by a {}-fold subject-grouped cross-validation over the {} training people ({whose} held-out balanced accuracy {:.3} at 0.5, {:.3} at the threshold; --threshold off: the larger probability)",
                    self.person, i.folds, i.people, i.at_half, i.at_threshold
                )
            }
        }
    }
}

/// The held-out balanced accuracy below which the single-image head is said
/// to be near chance (`Threshold::single_near_chance`).
pub const SINGLE_NEAR_CHANCE: f64 = 0.6;

/// The class for probabilities `p`: the first where a threshold is given and
/// P(first) reaches it (two classes), else the most probable.
pub fn decide(p: &[f64], threshold: Option<f64>) -> usize {
    match threshold {
        Some(t) if p.len() == 2 => usize::from(p[0] < t),
        _ => crate::eval::predict::argmax(p),
    }
}

/// The threshold on `p0` (P(first class)) that maximises the balanced
/// accuracy of `first` (whether each row is of the first class): 0.5 and
/// the midpoints between consecutive distinct scores within [`BOUND`,
/// 1 − `BOUND`] and the two bounds are tried; ties go to the one nearest 0.5,
/// and 0.5 stays unless the best beats it by [`MIN_GAIN`].
/// Without rows of both classes: 0.5.
pub fn best_threshold(first: &[bool], p0: &[f64]) -> f64 {
    let (n1, n0) = (first.iter().filter(|&&f| f).count(), first.iter().filter(|&&f| !f).count());
    if n1 == 0 || n0 == 0 {
        return 0.5;
    }
    let mut s: Vec<f64> = p0.to_vec();
    s.sort_by(f64::total_cmp);
    s.dedup();
    let inside = |t: &f64| (BOUND..=1.0 - BOUND).contains(t);
    let candidates = [BOUND, 1.0 - BOUND].into_iter().chain(s.windows(2).map(|w| (w[0] + w[1]) / 2.0).filter(inside));
    let bacc = |t: f64| balanced_at(first, p0, t);
    let half = bacc(0.5);
    let mut best: (f64, f64) = (half, 0.5);
    for t in candidates {
        let b = bacc(t);
        if b > best.0 + 1e-12 || ((b - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs()) {
            best = (b, t);
        }
    }
    if best.0 < half + MIN_GAIN {
        return 0.5;
    }
    best.1
}

/// Balanced accuracy of "first class where `p0` ≥ `t`".
pub fn balanced_at(first: &[bool], p0: &[f64], t: f64) -> f64 {
    let y: Vec<i64> = first.iter().map(|&f| i64::from(!f)).collect();
    let pred: Vec<i64> = p0.iter().map(|&p| i64::from(p < t)).collect();
    crate::eval::balanced_accuracy(&y, &pred, 2)
}

/// The training people (groups of `data.train`), sorted.
fn people(data: &TrainData) -> Vec<usize> {
    let mut people: Vec<usize> = data.train.iter().map(|&r| data.groups[r]).collect();
    people.sort_unstable();
    people.dedup();
    people
}

/// The rows of each inner fold (sorted): `people` shuffled with `seed` and dealt into `k` folds.
fn inner_folds(data: &TrainData, mut people: Vec<usize>, k: usize, seed: u64) -> Vec<Vec<usize>> {
    people.shuffle(&mut ChaCha8Rng::seed_from_u64(train::sub_seed(seed, 6, 0, 0)));
    let fold_of: std::collections::HashMap<usize, usize> = people.iter().enumerate().map(|(i, &g)| (g, i % k)).collect();
    (0..k)
        .map(|f| {
            let mut rows: Vec<usize> = data.train.iter().copied().filter(|&r| fold_of[&data.groups[r]] == f).collect();
            rows.sort_unstable();
            rows
        })
        .collect()
}

/// The rows (indices) on which the person head's threshold is chosen: those
/// of the people (`who`) held out with photos of both classes (`first` and
/// not), and how many were left out. A one-sided person's statistics are the
/// average of that one class, so the person head's scores of their photos
/// say little about where a mixed person's classes part — and the threshold
/// is for mixed people, whose statistics the head was made for: on the
/// JAFFE-format set with one neutral-only and one expressive-only person
/// (docs/results/accuracy) the inner thresholds' median over 3 seeds was
/// 0.449 with them (0.229 for seed 0) and 0.500 without, and balanced
/// accuracy rose 0.897 → 0.909, each seed gaining.
/// Where no such person is left with both classes among their rows: every row.
fn mixed_rows(who: &[usize], first: &[bool]) -> (Vec<usize>, usize) {
    let mut seen: std::collections::BTreeMap<usize, (bool, bool)> = std::collections::BTreeMap::new();
    for (&g, &f) in who.iter().zip(first) {
        let e = seen.entry(g).or_default();
        if f {
            e.0 = true
        } else {
            e.1 = true
        }
    }
    let rows: Vec<usize> = (0..who.len()).filter(|&i| seen[&who[i]] == (true, true)).collect();
    if rows.is_empty() {
        return ((0..who.len()).collect(), 0);
    }
    (rows, seen.values().filter(|&&v| v != (true, true)).count())
}

/// What the inner fits set: the threshold(s) of a two-class task and the
/// single-image head's calibration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InnerFits {
    pub threshold: Option<Threshold>,
    pub calibration: Option<Calibration>,
}

/// Sets the threshold (`tc.threshold` inner) and the single-image head's
/// calibration (`tc.calibrates()`) of a model trained with `tc` on
/// `data.train` by an inner subject-grouped cross-validation over the
/// training people: each inner fold's people are scored (as the final model
/// is scored: flip test-time augmentation when `tta_flip`, person statistics
/// from each person's own photos) by the recipe trained on the other people.
/// `None` with fewer than 2 people. `stop` (Ctrl-C) is checked between inner fits.
pub(crate) fn inner_fits(
    session: &Session,
    tc: &TrainConfig,
    data: &TrainData,
    shared: &[Cache],
    tta_flip: bool,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<Option<InnerFits>> {
    let people = people(data);
    if people.len() < 2 {
        return Ok(None);
    }
    let (n_people, k) = (people.len(), INNER_FOLDS.min(people.len()));
    let task = |r: usize| data.task.as_ref().map_or(data.targets[r], |t| t.targets[r]);
    // For a calibration alone only the single-image head's scores count, and that head trains beside the
    // first of the main heads: the other members are left out (a third of the heads to train).
    let fit_cfg = TrainConfig { members: if tc.threshold == ThresholdChoice::Inner { tc.members } else { 1 }, ..tc.clone() };
    let (mut y, mut p_main, mut p_single, mut who) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let stopped = || Error::Interrupted("stopped during the inner fits on the training people (the trained model's last epoch is saved)".into());
    for held in inner_folds(data, people, k, tc.seed) {
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(stopped());
        }
        let rest: Vec<usize> = data.train.iter().copied().filter(|r| held.binary_search(r).is_err()).collect();
        let inner = TrainData {
            gray: data.gray.shallow_clone(),
            lone: data.lone.as_ref().map(tch::Tensor::shallow_clone),
            targets: data.targets.clone(),
            train: rest,
            val: vec![],
            num_classes: data.num_classes,
            groups: data.groups.clone(),
            task: data.task.clone(),
        };
        let (mut model, _) = session.fresh_model(tc.seed as i64, true)?;
        session.recalibrate(&mut model, &inner.train)?;
        // Stopped within a fit too (after its current batch, as the main fit stops), not only between them:
        // each can be as long as the main fit.
        let trainer = Trainer { stop, ..Trainer::throwaway(&fit_cfg, &session.config.data.preprocess, &inner, session.device, shared) };
        trainer.run(&mut model, &mut train::Collect::default(), None).map_err(|e| match e {
            Error::Interrupted(_) => stopped(),
            e => e,
        })?;
        let scores = trainer.scores(&model, shared.first(), &held, tta_flip, None);
        let rows = |logits: &tch::Tensor| crate::run::rows(&session.config.task_probs(logits));
        y.extend(held.iter().map(|&r| task(r)));
        who.extend(held.iter().map(|&r| data.groups[r]));
        p_main.extend(rows(&scores.main));
        if let Some(s) = &scores.single {
            p_single.extend(rows(s));
        }
    }
    let single = (p_single.len() == y.len()).then_some(&p_single);
    let calibration = single.filter(|_| tc.calibrates()).and_then(|rows| Calibration::fit_rows(&y, rows));
    let threshold = (tc.threshold == ThresholdChoice::Inner && session.config.classes.len() == 2).then(|| {
        let first: Vec<bool> = y.iter().map(|&c| c == 0).collect();
        let main: Vec<f64> = p_main.iter().map(|p| p[0]).collect();
        // The person head's threshold is chosen on the people shown with both classes (`mixed_rows`).
        let (mixed, one_sided) = mixed_rows(&who, &first);
        let (mf, mm): (Vec<bool>, Vec<f64>) = mixed.iter().map(|&i| (first[i], main[i])).unzip();
        let person = best_threshold(&mf, &mm);
        // The single-image head's threshold is chosen on its own probabilities, then carried to the calibrated ones.
        let single = single.map(|rows| {
            let p0: Vec<f64> = rows.iter().map(|p| p[0]).collect();
            let t = best_threshold(&first, &p0);
            (calibration.map_or(t, |c| c.threshold(t)), (balanced_at(&first, &p0, 0.5), balanced_at(&first, &p0, t)))
        });
        Threshold {
            person,
            single: single.map(|s| s.0),
            inner: Some(InnerCv {
                folds: k,
                people: n_people,
                one_sided,
                at_half: balanced_at(&mf, &mm, 0.5),
                at_threshold: balanced_at(&mf, &mm, person),
                single: single.map(|s| s.1),
            }),
            legacy_calibration: None,
        }
    });
    Ok(Some(InnerFits { threshold, calibration }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The near-chance sentence comes from the single-image head's held-out
    /// figures alone: the better of 0.5 and its threshold below 0.6.
    #[test]
    fn a_single_image_head_near_chance_is_named() {
        let inner = |single| InnerCv { folds: 3, people: 8, one_sided: 0, at_half: 0.9, at_threshold: 0.95, single };
        let t = |single| Threshold { person: 0.5, single: Some(0.4), inner: Some(inner(single)), legacy_calibration: None };
        let said = t(Some((0.507, 0.528))).single_near_chance().unwrap();
        assert!(said.starts_with("the model's single-image head reached 0.53 balanced accuracy on held-out training people"), "{said}");
        assert_eq!(t(Some((0.55, 0.61))).single_near_chance(), None, "its threshold lifted it above");
        assert_eq!(t(None).single_near_chance(), None, "no single-image head");
        assert_eq!(Threshold::fixed(0.4).single_near_chance(), None, "no inner cross-validation");
    }

    #[test]
    fn the_best_threshold_separates_and_ties_go_to_one_half() {
        // First-class rows below 0.5 but above every other row: 0.5 gets them all wrong.
        let first = [true, true, false, false];
        let p0 = [0.40, 0.45, 0.20, 0.30];
        let t = best_threshold(&first, &p0);
        assert!((t - 0.35).abs() < 1e-12, "{t}");
        assert_eq!(balanced_at(&first, &p0, 0.5), 0.5);
        assert_eq!(balanced_at(&first, &p0, t), 1.0);
        // Perfect at 0.5 already: kept.
        assert_eq!(best_threshold(&[true, false], &[0.9, 0.1]), 0.5);
        // One class only: nothing to set.
        assert_eq!(best_threshold(&[true, true], &[0.1, 0.2]), 0.5);
        // The best split far out: the best within the bounds, on both sides.
        let first = [true, true, true, false, false, false];
        // 0.035 would split these perfectly; 0.1 gets 2/3 and 3/3, the best within.
        assert_eq!(best_threshold(&first, &[0.05, 0.101, 0.15, 0.01, 0.02, 0.09]), BOUND);
        // 0.96 would split these perfectly; 0.9 gets 3/3 and 2/3.
        assert_eq!(best_threshold(&first, &[0.99, 0.98, 0.97, 0.95, 0.899, 0.2]), 1.0 - BOUND);
        // Nothing within the bounds does better than 0.5: 0.5.
        assert_eq!(best_threshold(&[true, true, false, false], &[0.02, 0.03, 0.001, 0.01]), 0.5);
        // A gain under MIN_GAIN keeps 0.5; one at it moves. 60 rows of each class, all right at 0.5 but one
        // first-class row at 0.45: 0.44 gains 1/120 of balanced accuracy (under 0.02), so 0.5 stays.
        let first: Vec<bool> = (0..120).map(|i| i < 60).collect();
        let mut p0: Vec<f64> = (0..120).map(|i| if i < 60 { 0.8 } else { 0.2 }).collect();
        p0[0] = 0.45;
        assert!(balanced_at(&first, &p0, 0.44) - balanced_at(&first, &p0, 0.5) < MIN_GAIN);
        assert_eq!(best_threshold(&first, &p0), 0.5);
        // Three such rows (0.025 gained): the threshold moves below them.
        p0[1] = 0.45;
        p0[2] = 0.45;
        assert!((best_threshold(&first, &p0) - 0.325).abs() < 1e-12, "{}", best_threshold(&first, &p0));
    }

    #[test]
    fn the_person_heads_threshold_is_chosen_on_the_people_shown_with_both_classes() {
        // People 0–3 with both classes, split at 0.5; person 4 neutral only, scored below 0.5 (their
        // own average is the neutral face) but above the mixed people's expressive photos; person 5
        // expressive only.
        let mut who = vec![];
        let mut first = vec![];
        let mut p0 = vec![];
        for g in 0..4 {
            for (f, p) in [(true, 0.7), (true, 0.6), (false, 0.2), (false, 0.3), (false, 0.35)] {
                who.push(g);
                first.push(f);
                p0.push(p);
            }
        }
        for p in [0.4, 0.42, 0.45, 0.38] {
            who.push(4);
            first.push(true);
            p0.push(p);
        }
        for p in [0.1, 0.12] {
            who.push(5);
            first.push(false);
            p0.push(p);
        }
        // Over every row, the neutral-only person pulls the threshold down to 0.365 (all rows right there).
        assert!((best_threshold(&first, &p0) - 0.365).abs() < 1e-12);
        let (rows, one_sided) = mixed_rows(&who, &first);
        assert_eq!((rows.len(), one_sided), (20, 2));
        assert!(rows.iter().all(|&i| who[i] < 4));
        let (f, p): (Vec<bool>, Vec<f64>) = rows.iter().map(|&i| (first[i], p0[i])).unzip();
        assert_eq!(best_threshold(&f, &p), 0.5);
        // Nobody with both classes: every row, none left out.
        assert_eq!(mixed_rows(&[0, 0, 1], &[true, true, false]), (vec![0, 1, 2], 0));
        // The summary says who was left out.
        let inner = InnerCv { folds: 3, people: 6, one_sided: 2, at_half: 1.0, at_threshold: 1.0, single: None };
        let t = Threshold { person: 0.5, single: None, inner: Some(inner), legacy_calibration: None };
        let s = t.describe("neutral", None);
        assert!(s.contains("over the 6 training people (2 shown with one class only left out of it; the others' held-out"), "{s}");
    }

    #[test]
    fn platt_scaling_recovers_a_known_scale_and_keeps_every_decision() {
        // Scores of an overconfident head: true P(first) = σ(0.05·z − 1), z spread over ±100.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let z: Vec<f64> = (0..4000).map(|i| -100.0 + 200.0 * (i as f64 + 0.5) / 4000.0).collect();
        let first: Vec<bool> = z.iter().map(|&z| rand::Rng::gen::<f64>(&mut rng) < 1.0 / (1.0 + (-(0.05 * z - 1.0)).exp())).collect();
        let c = Calibration::fit(&first, &z).unwrap();
        assert!((c.scale - 0.05).abs() < 0.01 && (c.shift + 1.0).abs() < 0.2, "{c:?}");
        // A head's row → calibrated: the order is kept, and a decision at t is the decision at the mapped threshold.
        let t = 0.3;
        for &p0 in &[1e-200, 1e-9, 0.2, 0.29, 0.31, 0.7, 1.0 - 1e-12, 1.0] {
            let mut row = [p0, 1.0 - p0];
            c.apply(&mut row, &mut [], &[]);
            assert!((row[0] + row[1] - 1.0).abs() < 1e-12 && row[0] > 0.0 && row[0] < 1.0, "{row:?}");
            assert_eq!(p0 >= t, row[0] >= c.threshold(t), "{p0} → {row:?}");
        }
        // Saturated rows come back as what a fitted scale allows: 1 − 1e-12 (log-odds 27.6) → σ(0.38) ≈ 0.6.
        let mut row = [1.0 - 1e-12, 1e-12];
        c.apply(&mut row, &mut [], &[]);
        assert!(row[0] > 0.5 && row[0] < 0.75, "{row:?}");
        // Raw-label probabilities rescale within their class and sum to it.
        let (mut task, mut raw) = ([0.9, 0.1], [0.9, 0.06, 0.04]);
        c.apply(&mut task, &mut raw, &[0, 1, 1]);
        assert!((raw[0] - task[0]).abs() < 1e-12 && (raw[1] + raw[2] - task[1]).abs() < 1e-12 && (raw[1] / raw[2] - 1.5).abs() < 1e-9, "{raw:?}");
        // A head that knows nothing: the scale stays positive (decisions kept), the probabilities near the prior.
        let flat: Vec<bool> = (0..300).map(|i| i % 3 == 0).collect();
        let zs: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
        let c = Calibration::fit(&flat, &zs).unwrap();
        assert!(c.scale > 0.0 && c.scale < 0.01 && (c.p0(0.0) - 1.0 / 3.0).abs() < 0.05, "{c:?}");
        assert!(Calibration::fit(&[true, true], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn the_summary_names_the_single_image_heads_calibration_even_at_the_same_threshold() {
        let inner = InnerCv { folds: 3, people: 9, one_sided: 0, at_half: 0.6, at_threshold: 0.7, single: Some((0.5, 0.55)) };
        let c = Calibration { scale: 0.01, shift: -1.5 };
        let t = Threshold { person: 0.3, single: Some(0.3), inner: Some(inner), legacy_calibration: None };
        let s = t.describe("neutral", Some(&c));
        assert!(s.contains("(0.300 for the single-image head") && s.contains("P = σ(0.010 × the head's log-odds − 1.500)"), "{s}");
        // Same threshold, nothing fitted: no single-image part.
        assert!(!t.describe("neutral", None).contains("single-image"), "{}", t.describe("neutral", None));
        // Its own threshold: named, uncalibrated.
        let t = Threshold { single: Some(0.2), ..t };
        assert!(t.describe("neutral", None).contains("(0.200 for the single-image head, whose held-out balanced accuracy went 0.500 → 0.550)"));
        // A temperature (more than two classes) reads as one.
        assert_eq!(Calibration { scale: 0.125, shift: 0.0 }.describe(), "P ∝ (the head's P)^0.125 (temperature 8.0)");
    }

    #[test]
    fn a_temperature_recovers_a_known_scale_and_keeps_the_most_probable_class() {
        // An overconfident 4-class head: its log-probabilities are 8× what the truth's are.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut y, mut rows) = (Vec::new(), Vec::new());
        for _ in 0..3000 {
            let logits: Vec<f64> = (0..4).map(|_| rand::Rng::gen_range(&mut rng, -2.0..2.0)).collect();
            let truth = softmax(&logits);
            let u: f64 = rand::Rng::gen(&mut rng);
            let mut acc = 0.0;
            let c = truth.iter().position(|&p| {
                acc += p;
                u < acc
            });
            y.push(c.unwrap_or(3) as i64);
            rows.push(softmax(&logits.iter().map(|l| 8.0 * l).collect::<Vec<_>>()));
        }
        let c = Calibration::fit_rows(&y, &rows).unwrap();
        assert!(c.shift == 0.0 && (c.scale - 0.125).abs() < 0.02, "{c:?}");
        for row in rows.iter().take(50) {
            let (mut q, mut raw) = (row.clone(), vec![]);
            c.apply(&mut q, &mut raw, &[]);
            assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert_eq!(crate::eval::predict::argmax(&q), crate::eval::predict::argmax(row));
            // Calibrated back to the truth's spread: P ∝ p^scale.
            let want = softmax(&row.iter().map(|p| c.scale * p.ln()).collect::<Vec<_>>());
            assert!(q.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
        }
        // Saturated rows (probabilities of 0) stay finite and ordered.
        let mut q = vec![1.0, 0.0, 0.0];
        Calibration { scale: 0.1, shift: 0.0 }.apply(&mut q, &mut [], &[]);
        assert!(q[0] > 0.99 && q[1] > 0.0 && (q[1] - q[2]).abs() < 1e-15, "{q:?}");
        // A head that knows nothing: the smallest scale (uniform); one class only: nothing to fit.
        let flat: Vec<i64> = (0..300).map(|i| i % 3).collect();
        let sure: Vec<Vec<f64>> = (0..300).map(|i| (0..3).map(|k| if k == (i * 7 + 1) % 3 { 0.98 } else { 0.01 }).collect()).collect();
        assert!(Calibration::fit_rows(&flat, &sure).unwrap().scale < 0.01);
        assert!(Calibration::fit_rows(&[1, 1], &[vec![0.2, 0.7, 0.1], vec![0.1, 0.8, 0.1]]).is_none());
    }

    fn softmax(l: &[f64]) -> Vec<f64> {
        softmax_scaled(1.0, l)
    }

    #[test]
    fn decide_uses_the_threshold_for_two_classes_only() {
        assert_eq!(decide(&[0.4, 0.6], None), 1);
        assert_eq!(decide(&[0.4, 0.6], Some(0.3)), 0);
        assert_eq!(decide(&[0.3, 0.7], Some(0.3)), 0, "at the threshold: the first class");
        assert_eq!(decide(&[0.2, 0.5, 0.3], Some(0.1)), 1, "three classes: the most probable");
    }

    #[test]
    fn choices_parse_and_validate() {
        assert_eq!(ThresholdChoice::parse("inner").unwrap(), ThresholdChoice::Inner);
        assert_eq!(ThresholdChoice::parse("0.3").unwrap(), ThresholdChoice::Fixed(0.3));
        for bad in ["1", "0", "-0.2", "half", "nan"] {
            let e = ThresholdChoice::parse(bad).unwrap_err().to_string();
            assert!(e.contains("threshold") && e.contains("strictly between 0 and 1"), "{bad}: {e}");
        }
        assert!(ThresholdChoice::Inner.validate(7).unwrap_err().to_string().contains("two-class"));
        assert!(ThresholdChoice::Auto.validate(7).is_ok() && ThresholdChoice::Fixed(0.4).validate(2).is_ok());
    }
}

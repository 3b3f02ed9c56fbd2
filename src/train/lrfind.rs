//! `vggft lr-find`: an exponential learning-rate sweep (Smith, "Cyclical
//! Learning Rates for Training Neural Networks", 2017; fastai's lr_find)
//! from the configured freeze point, and a suggested rate.

use std::path::PathBuf;

use crate::config::Stage;
use crate::data::augment::Augment;
use crate::error::{Error, Result, Setting};
use crate::eval::plot;
use crate::eval::threshold::{CalibrateChoice, ThresholdChoice};
use crate::fsutil;
use crate::model::Block;
use crate::session::Session;
use crate::train::hooks::LrSweep;
use crate::train::{batches, Ctx, Reporter, TrainData, Trainer};

pub struct Request {
    pub recipe: crate::config::Recipe,
    pub steps: usize,
    pub start_lr: f64,
    pub end_lr: f64,
    pub out: PathBuf,
}

pub struct Found {
    /// (rate, raw loss, smoothed loss) per step.
    pub points: Vec<(f64, f64, f64)>,
    pub suggested: f64,
    pub method: String,
    pub csv: PathBuf,
    pub png: PathBuf,
    /// The rate the recipe itself trains at (`--lr`, or its default), and
    /// whether that default was chosen by cross-validated accuracy (the
    /// probe on person statistics), where a loss-curve heuristic can mislead.
    pub recipe_lr: f64,
    pub recipe_lr_measured: bool,
}

impl Found {
    /// The sweep's smoothed loss at the step nearest `lr` (None outside the sweep), and its lowest point.
    pub fn loss_at(&self, lr: f64) -> (Option<f64>, (f64, f64)) {
        let finite = || self.points.iter().filter(|p| p.2.is_finite());
        let low = finite().min_by(|a, b| a.2.total_cmp(&b.2)).map_or((f64::NAN, f64::NAN), |p| (p.0, p.2));
        let inside = self.points.first().is_some_and(|p| p.0 <= lr) && self.points.last().is_some_and(|p| p.0 >= lr);
        let near = finite().min_by(|a, b| (a.0.ln() - lr.ln()).abs().total_cmp(&(b.0.ln() - lr.ln()).abs())).map(|p| p.2);
        (near.filter(|_| inside), low)
    }
}

/// fastai's "valley": the longest decreasing run (subsequence) of the
/// smoothed loss, and the point half-way (in steps) along it — robust to the
/// noisy start of the sweep that fools a plain steepest-slope pick.
pub(crate) fn suggest(points: &[(f64, f64, f64)]) -> (f64, String) {
    let loss: Vec<f64> = points.iter().map(|p| p.2).collect();
    let n = loss.len();
    if n < 5 {
        return (points.first().map(|p| p.0).unwrap_or(1e-3), "too few points: the start rate".into());
    }
    // Longest strictly decreasing subsequence ending at each point.
    let mut len = vec![1usize; n];
    let mut from = (0..n).collect::<Vec<_>>();
    for i in 1..n {
        for j in 0..i {
            if loss[j] > loss[i] && len[j] + 1 > len[i] && loss[i].is_finite() {
                len[i] = len[j] + 1;
                from[i] = from[j];
            }
        }
    }
    let end = (0..n).max_by_key(|&i| (len[i], std::cmp::Reverse(i))).unwrap_or(0);
    let start = from[end];
    let third = (end - start) / 3;
    let idx = (start + third + third / 2).min(n - 1);
    (points[idx].0, format!("valley: the longest descent of the smoothed loss runs from {:.1e} to {:.1e}", points[start].0, points[end].0))
}

/// The longest sweep `--steps` asks for.
pub const MAX_STEPS: usize = 10_000;

pub fn run(req: &Request, reporter: &mut dyn Reporter) -> Result<Found> {
    // Their ratio finite too: the sweep's rates are start × ratio^k, and an infinite rate left the loss plot's axis
    // without an end (`--end-lr inf` spun after the sweep until killed).
    if !(req.start_lr > 0.0 && req.end_lr > req.start_lr && (req.end_lr / req.start_lr).is_finite()) {
        return Err(Error::invalid(
            Setting::StartLr,
            format!("must be > 0 and below --end-lr, and --end-lr / --start-lr a finite number, got {:e} and {:e}", req.start_lr, req.end_lr),
        ));
    }
    // fastai sweeps 100 steps; a million would run for days at a rate that barely moves.
    if !(10..=MAX_STEPS).contains(&req.steps) {
        return Err(Error::invalid(Setting::Steps, format!("must be 10 to {MAX_STEPS}, got {}", req.steps)));
    }
    crate::data::scan::refuse_output_inside(&req.recipe.data.path, req.recipe.data.format, &req.out, "the sweep's plot")?;
    crate::data::scan::refuse_other_output(&req.out, "an lr-find folder", "the sweep's CSV and plot", &["lr-find.csv", "lr-find.png"])?;
    // Before the sweep (minutes at 224 px): a folder that cannot be made fails at once.
    fsutil::check_creatable(&req.out)?;
    // A sweep sets no threshold and calibrates nothing: the recipe's inner fits are not run, nor announced.
    let mut recipe = req.recipe.clone();
    recipe.train.threshold = ThresholdChoice::Off;
    recipe.probe.threshold = ThresholdChoice::Off;
    recipe.train.calibrate = CalibrateChoice::Off;
    let session = Session::open(&recipe, req.recipe.data.clone(), req.recipe.train.seed, None, reporter)?;
    let (mut model, _) = session.fresh_model(req.recipe.train.seed as i64, true)?;
    session.advise(reporter);
    let recipe_lr_measured = req.recipe.auto_freeze && req.recipe.probe.lr.is_none() && session.long_probe();
    let p = session.prepared;
    // One stage from the deepest freeze point, on the training images without
    // augmentation (the sweep measures the rate, not generalisation), so the
    // frozen prefix is cached once; the sweep hook sets each step's rate.
    let mut cfg = session.config.train.clone();
    let from = cfg.stages.iter().map(|s| s.from).min().unwrap_or(Block::Head);
    let per_epoch = batches(&p.data.train, cfg.batch_size).len().max(1);
    cfg.stages = vec![Stage { from, epochs: req.steps.div_ceil(per_epoch) }];
    cfg.augment = Augment::preset("none")?;
    cfg.patience = 0;
    let data = TrainData { val: vec![], ..p.data };
    let trainer = Trainer::throwaway(&cfg, &req.recipe.data.preprocess, &data, session.device, &[]);
    let mut sweep = LrSweep::new(req.start_lr, req.end_lr, req.steps);
    let mut ctx = Ctx::new(&mut model, reporter, Default::default());
    trainer.fit(&mut ctx, &mut [&mut sweep], false)?;
    let points = sweep.points;
    let (suggested, method) = suggest(&points);
    let mut s = String::from("lr,loss,smoothed_loss\n");
    for (lr, l, sm) in &points {
        s.push_str(&format!("{lr:.6e},{l:.6},{sm:.6}\n"));
    }
    // lr-find.csv and lr-find.png of one sweep, written together: not one of each of two, nor a new CSV
    // beside an earlier plot where the disk filled.
    fsutil::write_set(
        &req.out,
        |_, _| {},
        |stage| {
            fsutil::write_atomic(&stage.join("lr-find.csv"), s.as_bytes())?;
            plot::lr_curve(&stage.join("lr-find.png"), &points, suggested)
        },
    )?;
    let (csv, png) = (req.out.join("lr-find.csv"), req.out.join("lr-find.png"));
    Ok(Found { points, suggested, method, csv, png, recipe_lr: session.config.train.lr, recipe_lr_measured })
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggests_a_rate_in_the_valley() {
        // Loss flat, then falling fastest around 1e-3, then exploding.
        let pts: Vec<(f64, f64, f64)> = (0..60)
            .map(|i| {
                let lr = 1e-6 * 10f64.powf(i as f64 / 10.0);
                let x = lr.log10();
                let loss = 1.0 - 0.5 * ((x + 3.0) * 2.0).tanh() + if x > -1.0 { (x + 1.0) * 5.0 } else { 0.0 };
                (lr, loss, loss)
            })
            .collect();
        let (lr, method) = super::suggest(&pts);
        assert!(lr > 1e-5 && lr < 1e-2, "{lr} lies in the descent");
        assert!(method.contains("valley"));
        // A noisy start (a dip then a bump) does not capture the suggestion.
        let mut noisy = pts.clone();
        noisy[2].2 = 0.2;
        noisy[3].2 = 1.3;
        assert!(super::suggest(&noisy).0 > 1e-5);
    }
}

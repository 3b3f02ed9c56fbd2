//! `vggft lr-find`: an exponential learning-rate sweep (Smith, "Cyclical
//! Learning Rates for Training Neural Networks", 2017; fastai's lr_find)
//! from the configured freeze point, and a suggested rate.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::model::{Block, Vgg16};
use crate::optim::{Group, Optimizer};
use crate::run::{model_config, prepare, resolve_weights};
use crate::train::{class_weights, Reporter};
use crate::{fsutil, plot, weights};

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
}

/// fastai's "valley": the longest decreasing run (subsequence) of the
/// smoothed loss, and the point half-way (in steps) along it — robust to the
/// noisy start of the sweep that fools a plain steepest-slope pick.
pub fn suggest(points: &[(f64, f64, f64)]) -> (f64, String) {
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

pub fn run(req: &Request, reporter: &mut dyn Reporter) -> Result<Found> {
    if !(req.start_lr > 0.0 && req.end_lr > req.start_lr) || req.steps < 10 {
        return Err(Error::config("lr-find needs 0 < --start-lr < --end-lr and --steps ≥ 10"));
    }
    req.recipe.train.validate()?;
    let device = crate::run::parse_device(&req.recipe.device)?;
    let p = prepare(&req.recipe.data, req.recipe.train.seed, reporter)?;
    tch::manual_seed(req.recipe.train.seed as i64);
    let mut model = Vgg16::new(&model_config(&req.recipe.model, p.labels.classes.len()), device)?;
    if !req.recipe.random_init {
        let w = resolve_weights(req.recipe.weights.as_deref(), req.recipe.model.bn.has_bn())?;
        weights::load_pretrained(&mut model, &w)?;
    }
    // The sweep trains from the deepest stage's freeze point.
    let from = req.recipe.train.stages.iter().map(|s| s.from).min().unwrap_or(Block::Head);
    model.set_trainable_from(from);
    let pre = &req.recipe.data.preprocess;
    let train = &p.data.train;
    // Frozen prefix computed once (no augmentation: the sweep measures the rate, not generalisation).
    let feats = tch::no_grad(|| {
        let parts: Vec<Tensor> =
            train.chunks(32).map(|c| model.features(&pre.normalise(&crate::data::select(&p.data.gray, c, device)), Block::Conv1, from, false)).collect();
        Tensor::cat(&parts, 0)
    });
    let groups = model
        .param_groups()
        .into_iter()
        .map(|g| Group {
            name: g.block.to_string(),
            lr_mult: req.recipe.train.block_lr_factor.powi((Block::Head.index() - g.block.index()) as i32),
            weight_decay: if g.decay { req.recipe.train.weight_decay } else { 0.0 },
            params: g.params,
        })
        .collect();
    let mut opt = Optimizer::new(req.recipe.train.optimizer, groups, req.recipe.train.momentum);
    let cw = Tensor::from_slice(&class_weights(&req.recipe.train, &p.data)).to_kind(Kind::Float).to_device(device);
    let targets: Vec<i64> = train.iter().map(|&i| p.data.targets[i]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(req.recipe.train.seed);
    let mut order: Vec<usize> = Vec::new();
    let ratio = (req.end_lr / req.start_lr).powf(1.0 / (req.steps - 1) as f64);
    let (mut avg, mut best) = (0.0, f64::INFINITY);
    let mut points = Vec::new();
    for step in 0..req.steps {
        if order.len() < req.recipe.train.batch_size {
            let mut o: Vec<usize> = (0..train.len()).collect();
            o.shuffle(&mut rng);
            order.extend(o);
        }
        let b: Vec<usize> = order.drain(..req.recipe.train.batch_size.min(order.len()).max(2.min(train.len()))).collect();
        let lr = req.start_lr * ratio.powi(step as i32);
        let idx = Tensor::from_slice(&b.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
        let x = feats.index_select(0, &idx);
        let y = Tensor::from_slice(&b.iter().map(|&i| targets[i]).collect::<Vec<_>>()).to_device(device);
        let loss = model.forward_from(&x, from, true).cross_entropy_loss(&y, Some(&cw), Reduction::Mean, -100, req.recipe.train.label_smoothing);
        opt.zero_grad();
        loss.backward();
        opt.step(lr);
        let l = f64::try_from(&loss).unwrap_or(f64::NAN);
        avg = 0.98 * avg + 0.02 * l;
        let smooth = avg / (1.0 - 0.98f64.powi(step as i32 + 1));
        points.push((lr, l, smooth));
        best = best.min(smooth);
        if !l.is_finite() || (step > 10 && smooth > 4.0 * best) {
            reporter.message(&format!("lr-find: loss diverged at rate {lr:.2e}, stopping the sweep"));
            break;
        }
    }
    let (suggested, method) = suggest(&points);
    fsutil::create_dir(&req.out)?;
    let csv = req.out.join("lr-find.csv");
    let mut s = String::from("lr,loss,smoothed_loss\n");
    for (lr, l, sm) in &points {
        s.push_str(&format!("{lr:.6e},{l:.6},{sm:.6}\n"));
    }
    fsutil::write_atomic(&csv, s.as_bytes())?;
    let png = req.out.join("lr-find.png");
    plot::lr_curve(&png, &points, suggested)?;
    Ok(Found { points, suggested, method, csv, png })
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

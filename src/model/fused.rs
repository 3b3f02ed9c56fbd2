//! The bn head's training step on inputs that need no gradient (cached
//! pooled features, or a trunk's that does not train), on a CPU in
//! float32, without autograd.
//!
//! A cached probe's time is almost all this step: BatchNorm on the batch's
//! statistics, dropout and a linear layer over a B × D batch (D ≈ 11 000 for
//! the default probe's pooled conv4 + conv5 features), five ensemble members
//! and the single-image head per batch. Through autograd it took about twenty
//! passes over the batch, each into a fresh temporary, and BatchNorm's
//! backward still worked out the input's gradient, which nobody needs here.
//! Here the forward is the batch statistics and one pass (normalise × mask)
//! and the backward one pass (the BatchNorm scale and shift gradients), in
//! loops that the compiler vectorises: for AVX2 where the CPU has it, with no
//! fused multiply-add, so these loops give the same numbers either way. The
//! products with the C × D weights stay libtorch's (MKL): a hand-written
//! version, tiled for the first-level cache and without FMA, measured slower
//! inside cv's parallel folds (16 s a fold against 12.6 s). The dropout mask
//! is `super::dropout`'s, drawn from the same stream in the same order, so a
//! fit draws what it drew through autograd and differs from it only by
//! rounding.

use super::raw::{cpu_f32, values, values_mut};
use tch::{nn, Device, Kind, Tensor};

/// tch's BatchNorm defaults, which the head's BatchNorm is built with (`bn_config`).
const MOMENTUM: f32 = 0.1;
const EPS: f32 = super::BN_EPS as f32;

/// What one head's backward needs from its forward.
pub(crate) struct Step {
    /// The input (B × D, contiguous).
    x: Tensor,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    /// The dropout mask (0 or the keep scale), B × D; none without dropout.
    mask: Option<Vec<f32>>,
    /// The linear layer's input (B × D).
    h: Tensor,
}

/// Whether the fused step can train this head on `x`: a B × D batch (B ≥ 2)
/// that needs no gradient, everything float32 on the CPU and contiguous,
/// BatchNorm affine.
fn applies(norm: &nn::BatchNorm, fc: &nn::Linear, x: &Tensor) -> bool {
    let (Some(w), Some(b)) = (&norm.ws, &norm.bs) else {
        return false;
    };
    let size = x.size();
    size.len() == 2
        && size[0] >= 2
        && !x.requires_grad()
        && cpu_f32(x)
        && [w, b, &norm.running_mean, &norm.running_var, &fc.ws].into_iter().chain(&fc.bs).all(|t| cpu_f32(t) && t.is_contiguous())
        && fc.ws.size().get(1) == Some(&size[1])
}

/// Runs a kernel compiled for AVX2 where the CPU has it (8 lanes instead of
/// SSE2's 4). Neither build fuses multiply-adds, and every sum has a fixed
/// order, so both give the same numbers.
fn wide(k: Kernel) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(k: Kernel) {
            k.run()
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(k) };
    }
    k.run()
}

/// Training-mode logits of `fc(dropout(norm(x)))` (no autograd graph), the
/// running statistics updated as libtorch updates them. `mask` draws the
/// dropout mask for B·D elements (`None`: no dropout). `None` (and nothing
/// drawn) where the step does not apply: autograd must train the head.
pub(crate) fn forward(norm: &nn::BatchNorm, fc: &nn::Linear, x: &Tensor, mask: impl FnOnce(usize) -> Option<Vec<f32>>) -> Option<(Tensor, Step)> {
    let (Some(gamma), Some(beta)) = (&norm.ws, &norm.bs) else {
        return None;
    };
    if !applies(norm, fc, x) {
        return None;
    }
    let x = x.contiguous();
    let (rows, d) = (x.size()[0] as usize, x.size()[1] as usize);
    let (mut mean, mut var) = (vec![0f32; d], vec![0f32; d]);
    wide(Kernel::Stats(Stats(values(&x), &mut mean, &mut var)));
    let invstd: Vec<f32> = var.iter().map(|&s| 1.0 / (s / rows as f32 + EPS).sqrt()).collect();
    let unbiased = rows as f32 / (rows - 1) as f32;
    for (r, &m) in values_mut(&norm.running_mean).iter_mut().zip(&mean) {
        *r = (1.0 - MOMENTUM) * *r + MOMENTUM * m;
    }
    for (r, &s) in values_mut(&norm.running_var).iter_mut().zip(&var) {
        *r = (1.0 - MOMENTUM) * *r + MOMENTUM * (s / rows as f32) * unbiased;
    }
    // y = x·α + β' with α = γ/σ, β' = β − μ·α (libtorch's form), times the mask.
    let alpha: Vec<f32> = invstd.iter().zip(values(gamma)).map(|(&s, &g)| s * g).collect();
    let shift: Vec<f32> = values(beta).iter().zip(&mean).zip(&alpha).map(|((&b, &m), &a)| b - m * a).collect();
    let mask = mask(rows * d);
    let h = Tensor::empty([rows as i64, d as i64], (Kind::Float, Device::Cpu));
    wide(Kernel::Normalise(Normalise(values(&x), &alpha, &shift, mask.as_deref(), values_mut(&h))));
    let z = tch::no_grad(|| h.linear(&fc.ws, fc.bs.as_ref()));
    Some((z, Step { x, mean, invstd, mask, h }))
}

/// Adds the gradients of the head's parameters for `dz`, the loss's gradient
/// with respect to `forward`'s logits (the input's is not needed).
pub(crate) fn backward(norm: &nn::BatchNorm, fc: &nn::Linear, step: &Step, dz: &Tensor) {
    let dz = dz.to_kind(Kind::Float).contiguous();
    let (dw, db, dh) = tch::no_grad(|| (dz.tr().mm(&step.h).contiguous(), dz.sum_dim_intlist([0].as_slice(), false, Kind::Float), dz.mm(&fc.ws).contiguous()));
    let d = step.mean.len();
    let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
    wide(Kernel::Scale(Scale(values(&step.x), step, values(&dh), &mut dgamma, &mut dbeta)));
    if let (Some(w), Some(b)) = (&norm.ws, &norm.bs) {
        add_grad(w, &dgamma);
        add_grad(b, &dbeta);
    }
    add_grad(&fc.ws, values(&dw));
    if let Some(b) = &fc.bs {
        add_grad(b, values(&db));
    }
}

/// Adds `g` to parameter `p`'s gradient, defining it on the first step (the
/// optimizer reads and zeroes `p.grad()`; tch cannot assign one).
fn add_grad(p: &Tensor, g: &[f32]) {
    let grad = p.grad();
    if grad.defined() && cpu_f32(&grad) && grad.is_contiguous() && grad.numel() == g.len() {
        values_mut(&grad).iter_mut().zip(g).for_each(|(a, &b)| *a += b);
    } else {
        // The gradient of Σ p·g with respect to p is g.
        (p * Tensor::from_slice(g).view_as(p)).sum(Kind::Float).backward();
    }
}

/// The kernels, each a struct of its arguments so that one `run` serves the AVX2 and the baseline build.
enum Kernel<'a> {
    Stats(Stats<'a>),
    Normalise(Normalise<'a>),
    Scale(Scale<'a>),
}

impl Kernel<'_> {
    #[inline(always)]
    fn run(self) {
        match self {
            Kernel::Stats(k) => k.run(),
            Kernel::Normalise(k) => k.run(),
            Kernel::Scale(k) => k.run(),
        }
    }
}

/// Per feature: the batch mean, and the sum of squared deviations from it (libtorch's two passes).
struct Stats<'a>(&'a [f32], &'a mut [f32], &'a mut [f32]);

impl Stats<'_> {
    #[inline(always)]
    fn run(self) {
        let Stats(x, mean, var) = self;
        let d = mean.len();
        let rows = x.len() / d;
        for row in x.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= rows as f32);
        for row in x.chunks_exact(d) {
            var.iter_mut().zip(row).zip(mean.iter()).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
        }
    }
}

/// h = (x·α + β')·mask.
struct Normalise<'a>(&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>, &'a mut [f32]);

impl Normalise<'_> {
    #[inline(always)]
    fn run(self) {
        let Normalise(x, alpha, shift, mask, h) = self;
        let d = alpha.len();
        for (r, (hrow, xrow)) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
            let normalised = hrow.iter_mut().zip(xrow.iter().zip(alpha.iter().zip(shift)));
            match mask {
                Some(mask) => normalised.zip(&mask[r * d..(r + 1) * d]).for_each(|((o, (&v, (&a, &b))), &k)| *o = (v * a + b) * k),
                None => normalised.for_each(|(o, (&v, (&a, &b)))| *o = v * a + b),
            }
        }
    }
}

/// From dh = dz·W through the mask and the normalisation: dγ += dy·x̂, dβ += dy, row by row.
struct Scale<'a>(&'a [f32], &'a Step, &'a [f32], &'a mut [f32], &'a mut [f32]);

impl Scale<'_> {
    #[inline(always)]
    fn run(self) {
        let Scale(x, step, dh, dgamma, dbeta) = self;
        let d = step.mean.len();
        let mut dy = vec![0f32; d];
        for (r, (xrow, dhrow)) in x.chunks_exact(d).zip(dh.chunks_exact(d)).enumerate() {
            match &step.mask {
                Some(mask) => dy.iter_mut().zip(dhrow).zip(&mask[r * d..(r + 1) * d]).for_each(|((o, &g), &k)| *o = g * k),
                None => dy.copy_from_slice(dhrow),
            }
            let stats = xrow.iter().zip(step.mean.iter().zip(&step.invstd));
            for (((g, b), &dy), (&v, (&m, &s))) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(&dy).zip(stats) {
                *b += dy;
                *g += dy * (v - m) * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A tensor of `shape` drawn from a local stream (libtorch's generator is shared with the tests beside this one).
    fn draw(rng: &mut rand_chacha::ChaCha8Rng, shape: &[i64]) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        Tensor::from_slice(&(0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect::<Vec<_>>()).view(shape)
    }

    /// A bn head (BatchNorm1d → linear) with drawn parameters and running statistics.
    fn head(rng: &mut rand_chacha::ChaCha8Rng, d: i64, c: i64) -> (nn::VarStore, nn::BatchNorm, nn::Linear) {
        let vs = nn::VarStore::new(Device::Cpu);
        // The layers' own initialisation draws from libtorch's generator (then
        // overwritten below): under its lock, as another test checks that
        // nothing draws between its seeding and its draws.
        let (norm, fc) = {
            let _g = crate::model::lock_generator();
            (nn::batch_norm1d(vs.root() / "norm", d, Default::default()), nn::linear(vs.root() / "fc", d, c, Default::default()))
        };
        tch::no_grad(|| {
            for t in [norm.ws.as_ref().unwrap(), norm.bs.as_ref().unwrap(), &norm.running_mean, &fc.ws, fc.bs.as_ref().unwrap()] {
                t.shallow_clone().copy_(&draw(rng, &t.size()));
            }
            norm.running_var.shallow_clone().copy_(&(draw(rng, &[d]).abs() + 0.5));
        });
        (vs, norm, fc)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    /// Two steps of the fused head against autograd's BatchNorm → mask →
    /// linear: the same logits, parameter gradients (also added to ones a
    /// first step defined) and running statistics, with and without dropout,
    /// at a width that is no multiple of 8 (the dot products' tail).
    #[test]
    fn the_fused_step_is_autograds_step() {
        let (rows, d, c) = (5, 37, 3);
        for dropout in [true, false] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let (vs_a, norm_a, fc_a) = head(&mut rng, d, c);
            let (mut vs_f, norm_f, fc_f) = head(&mut rng, d, c);
            vs_f.copy(&vs_a).unwrap();
            // An input that needs a gradient, or is not float32, is left to autograd, and no mask is drawn for it.
            for x in [Tensor::zeros([rows, d], (Kind::Float, Device::Cpu)).set_requires_grad(true), Tensor::zeros([rows, d], (Kind::Double, Device::Cpu))] {
                assert!(forward(&norm_f, &fc_f, &x, |_| panic!("a mask drawn for a step not taken")).is_none());
            }
            for step in 0..2 {
                let x = draw(&mut rng, &[rows, d]);
                let mask: Vec<f32> = (0..rows * d)
                    .map(|_| {
                        if dropout && rng.gen_bool(0.5) {
                            0.0
                        } else if dropout {
                            2.0
                        } else {
                            1.0
                        }
                    })
                    .collect();
                let dz = draw(&mut rng, &[rows, c]);
                for vs in [&vs_a, &vs_f] {
                    for t in vs.trainable_variables() {
                        let mut g = t.grad();
                        if g.defined() {
                            let _ = g.zero_();
                        }
                    }
                }
                let z_a = (x.apply_t(&norm_a, true) * Tensor::from_slice(&mask).view([rows, d])).apply(&fc_a);
                (&z_a * &dz).sum(Kind::Float).backward();
                let (z_f, saved) = forward(&norm_f, &fc_f, &x, |n| {
                    assert_eq!(n, (rows * d) as usize);
                    dropout.then(|| mask.clone())
                })
                .expect("the fused step applies");
                assert!(max_diff(&z_a, &z_f) < 1e-4, "step {step}: logits differ by {}", max_diff(&z_a, &z_f));
                backward(&norm_f, &fc_f, &saved, &dz);
                let (a, f) = (vs_a.variables(), vs_f.variables());
                for (name, t) in &a {
                    let u = &f[name];
                    assert!(max_diff(t, u) < 1e-4, "step {step}: {name} differs by {}", max_diff(t, u));
                    if t.requires_grad() {
                        assert!(max_diff(&t.grad(), &u.grad()) < 1e-4, "step {step}: the gradient of {name} differs by {}", max_diff(&t.grad(), &u.grad()));
                    }
                }
            }
        }
    }
}

//! Optimizers over explicit parameter groups (SGD with momentum, Adam,
//! AdamW, RMSprop; PyTorch's update rules) and learning-rate schedules.
//!
//! Written here rather than taken from libtorch so that only trainable
//! parameters are ever held, each group has its own rate and weight decay,
//! and the state (momentum buffers, moments) can be checkpointed for an exact
//! `--resume`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    Sgd,
    Adam,
    Adamw,
    Rmsprop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// One-cycle: 30 % rising from lr/25 to lr, then cosine down to lr/10⁴.
    Onecycle,
    /// Warm-up, then ×0.1 at 50 % and 75 % of the stage.
    Step,
    /// Warm-up, then constant.
    Constant,
}

impl Schedule {
    /// Multiplier of the base rate at `step` of `total` (warm-up: first `warmup` steps).
    pub(crate) fn factor(self, step: usize, total: usize, warmup: usize) -> f64 {
        let total = total.max(1);
        let t = step as f64 / total as f64;
        if self == Schedule::Onecycle {
            let up = 0.3;
            return if t < up {
                let f = t / up;
                (1.0 / 25.0) + (1.0 - 1.0 / 25.0) * (1.0 - (std::f64::consts::PI * f).cos()) / 2.0
            } else {
                let f = (t - up) / (1.0 - up);
                1e-4 + (1.0 - 1e-4) * (1.0 + (std::f64::consts::PI * f).cos()) / 2.0
            };
        }
        if step < warmup {
            return 0.1 + 0.9 * step as f64 / warmup as f64;
        }
        let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        match self {
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Schedule::Step => {
                if t < 0.5 {
                    1.0
                } else if t < 0.75 {
                    0.1
                } else {
                    0.01
                }
            }
            Schedule::Constant | Schedule::Onecycle => 1.0,
        }
    }
}

/// Parameters sharing a rate multiplier and a weight decay.
pub struct Group {
    pub params: Vec<(String, Tensor)>,
    pub lr_mult: f64,
    pub weight_decay: f64,
}

pub struct Optimizer {
    pub kind: OptimKind,
    pub groups: Vec<Group>,
    pub momentum: f64,
    state: BTreeMap<String, Tensor>,
    steps: i64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
const RMS_ALPHA: f64 = 0.99;

impl Optimizer {
    pub fn new(kind: OptimKind, groups: Vec<Group>, momentum: f64) -> Self {
        Optimizer { kind, groups, momentum, state: BTreeMap::new(), steps: 0 }
    }

    pub fn zero_grad(&self) {
        for g in &self.groups {
            for (_, p) in &g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.detach_().zero_();
                }
            }
        }
    }

    /// One update at base rate `lr` (each group scales it by its multiplier).
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            for g in &self.groups {
                let lr = lr * g.lr_mult;
                let wd = g.weight_decay;
                for (name, p) in &g.params {
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let p = p.shallow_clone();
                    let state = &mut self.state;
                    match self.kind {
                        OptimKind::Sgd => sgd(p, &grad, state, name, (lr, wd), self.momentum),
                        OptimKind::Adam => adam(p, &grad, state, name, (lr, wd), t, false),
                        OptimKind::Adamw => adam(p, &grad, state, name, (lr, wd), t, true),
                        OptimKind::Rmsprop => rmsprop(p, &grad, state, name, (lr, wd)),
                    }
                }
            }
        });
    }

    /// State tensors for a checkpoint (`optim.<param>.<buffer>`, plus the step count).
    pub(crate) fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.state.iter().map(|(k, t)| (format!("optim.{k}"), t.shallow_clone())).collect();
        v.push(("optim.steps".into(), Tensor::from_slice(&[self.steps])));
        v
    }

    /// Restores what `state_tensors` saved.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.steps =
            tensors.get("optim.steps").and_then(|t| i64::try_from(t).ok()).ok_or_else(|| Error::internal("checkpoint lacks the optimizer step count"))?;
        self.state =
            tensors.iter().filter_map(|(k, t)| k.strip_prefix("optim.").filter(|k| *k != "steps").map(|k| (k.to_string(), t.shallow_clone()))).collect();
        Ok(())
    }
}

/// One parameter's SGD step (PyTorch's rule: weight decay added to the
/// gradient, then momentum). In place and fused (addcmul with a scalar
/// tensor): no temporaries the size of the parameters, which cost more than
/// the arithmetic on a CPU.
fn sgd(mut p: Tensor, grad: &Tensor, state: &mut BTreeMap<String, Tensor>, name: &str, (lr, wd): (f64, f64), momentum: f64) {
    let mut d = grad.shallow_clone();
    if wd != 0.0 {
        let _ = d.addcmul_(&p, &Tensor::from(wd as f32));
    }
    let d = if momentum != 0.0 {
        match state.get_mut(&format!("{name}.momentum")) {
            Some(buf) => {
                let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                buf.shallow_clone()
            }
            None => {
                let buf = d.copy();
                state.insert(format!("{name}.momentum"), buf.shallow_clone());
                buf
            }
        }
    } else {
        d
    };
    let _ = p.addcmul_(&d, &Tensor::from(-lr as f32));
}

/// One parameter's Adam step; `decoupled` is AdamW (decay applied to the
/// weights, not added to the gradient).
fn adam(mut p: Tensor, grad: &Tensor, state: &mut BTreeMap<String, Tensor>, name: &str, (lr, wd): (f64, f64), t: f64, decoupled: bool) {
    let d = if !decoupled && wd != 0.0 { grad + &p * wd } else { grad.shallow_clone() };
    if decoupled && wd != 0.0 {
        let _ = p.g_mul_scalar_(1.0 - lr * wd);
    }
    let m = state.entry(format!("{name}.exp_avg")).or_insert_with(|| p.zeros_like());
    let _ = m.g_mul_scalar_(BETA1).g_add_(&(&d * (1.0 - BETA1)));
    let m = m.shallow_clone();
    let v = state.entry(format!("{name}.exp_avg_sq")).or_insert_with(|| p.zeros_like());
    let _ = v.g_mul_scalar_(BETA2).g_add_(&(d.square() * (1.0 - BETA2)));
    let bc1 = 1.0 - BETA1.powf(t);
    let bc2 = 1.0 - BETA2.powf(t);
    let denom = (v.shallow_clone() / bc2).sqrt() + ADAM_EPS;
    let _ = p.g_sub_(&(m / denom * (lr / bc1)));
}

/// One parameter's RMSprop step (PyTorch's defaults: alpha 0.99, no momentum).
fn rmsprop(mut p: Tensor, grad: &Tensor, state: &mut BTreeMap<String, Tensor>, name: &str, (lr, wd): (f64, f64)) {
    let d = if wd != 0.0 { grad + &p * wd } else { grad.shallow_clone() };
    let sq = state.entry(format!("{name}.square_avg")).or_insert_with(|| p.zeros_like());
    let _ = sq.g_mul_scalar_(RMS_ALPHA).g_add_(&(d.square() * (1.0 - RMS_ALPHA)));
    let denom = sq.sqrt() + ADAM_EPS;
    let _ = p.g_sub_(&(d / denom * lr));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_and_decay() {
        let s = Schedule::Cosine;
        assert!((s.factor(0, 100, 10) - 0.1).abs() < 1e-12);
        assert!((s.factor(10, 100, 10) - 1.0).abs() < 1e-12);
        assert!(s.factor(99, 100, 10) < 0.01);
        assert_eq!(Schedule::Constant.factor(50, 100, 10), 1.0);
        assert_eq!(Schedule::Step.factor(80, 100, 0), 0.01);
        let one = Schedule::Onecycle;
        assert!((one.factor(0, 100, 0) - 0.04).abs() < 1e-12);
        assert!((one.factor(30, 100, 0) - 1.0).abs() < 1e-9);
        assert!(one.factor(99, 100, 0) < 0.01);
    }

    #[test]
    fn sgd_with_momentum_matches_pytorch_rule() {
        // p = 1, grad = 2 each step, momentum 0.9, wd 0: buf 2, then 3.8; p 1 − 0.1·2 − 0.1·3.8.
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Optimizer::new(OptimKind::Sgd, vec![Group { params: vec![("p".into(), p.shallow_clone())], lr_mult: 1.0, weight_decay: 0.0 }], 0.9);
        for _ in 0..2 {
            opt.zero_grad();
            (&p * 2.0).sum(tch::Kind::Float).backward();
            opt.step(0.1);
        }
        assert!((f64::try_from(&p).unwrap() - (1.0 - 0.2 - 0.38)).abs() < 1e-6);
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    fn one_step(kind: OptimKind, wd: f64) -> f64 {
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = Optimizer::new(kind, vec![Group { params: vec![("p".into(), p.shallow_clone())], lr_mult: 1.0, weight_decay: wd }], 0.0);
        opt.zero_grad();
        (&p * 3.0).sum(tch::Kind::Double).backward();
        opt.step(0.1);
        f64::try_from(&p).unwrap()
    }

    #[test]
    fn first_steps_match_pytorch() {
        // Adam's first step moves by lr·sign(g) (bias-corrected m/√v = 1).
        assert!((one_step(OptimKind::Adam, 0.0) - 0.9).abs() < 1e-6);
        // AdamW decays the weight first: 1·(1 − 0.1·0.5) − 0.1.
        assert!((one_step(OptimKind::Adamw, 0.5) - 0.85).abs() < 1e-6);
        // RMSprop: v = 0.01·9, step = 0.1·3/√0.09 = 1.
        assert!((one_step(OptimKind::Rmsprop, 0.0) - 0.0).abs() < 1e-6);
    }
}

//! Machine measurements behind `vggft speed` (and so `make bench`): the
//! libtorch matmul peak of this machine and the network's forward throughput,
//! timed in one process with one thread setting so their ratio is fair.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::model::{Block, CpuBf16, ModelConfig, Precision, Vgg16, CONVS};

/// Forward throughput of one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Forward {
    pub precision: Precision,
    /// `direct` (libtorch's convolution) or `winograd` (a frozen pass on a
    /// CPU: every conv layer but the first by Winograd, `Vgg16::frozen`).
    pub convolution: &'static str,
    pub batch: i64,
    pub image_size: i64,
    /// Best of the timed repetitions, seconds per batch.
    pub seconds_per_batch: f64,
    pub images_per_s: f64,
    /// The direct convolution's FLOPs per second taken: above the matmul
    /// peak where Winograd does fewer multiplications.
    pub gflops: f64,
}

/// Floating-point operations (multiply and add counted separately) of one
/// image's forward pass through the conv trunk and the bn head.
pub fn forward_flops(cfg: &ModelConfig, size: i64) -> f64 {
    let mut side = size;
    let mut c_in = 3;
    let mut total = 0.0;
    for (l, spec) in CONVS.iter().enumerate() {
        let c_out = cfg.channels(l);
        total += 2.0 * (c_in * c_out * 9) as f64 * (side * side) as f64;
        if spec.last_in_block {
            side /= 2;
        }
        c_in = c_out;
    }
    total + 2.0 * (2 * cfg.trunk_out() * cfg.num_classes) as f64
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Best GFLOP/s of an n×n×n matrix product in `kind` over `reps` timed runs (after one warm-up).
pub(crate) fn matmul_peak(kind: Kind, device: Device, n: i64, reps: usize) -> f64 {
    tch::no_grad(|| {
        let a = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
        let b = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
        let _ = a.matmul(&b);
        sync(device);
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t0 = Instant::now();
            let c = a.matmul(&b);
            sync(device);
            best = best.min(t0.elapsed().as_secs_f64());
            drop(c);
        }
        2.0 * (n * n * n) as f64 / best / 1e9
    })
}

/// Eval-mode, no-grad forward passes of the whole network on random images;
/// with `winograd` all inside one frozen pass, as a cache build runs them
/// (its Winograd forms made in the untimed warm-up: ~0.06 s, once a pass).
pub fn forward(model: &Vgg16, batch: i64, size: i64, reps: usize, winograd: bool) -> Forward {
    let device = model.device();
    let x = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let time = || {
        let _ = model.forward_from(&x, Block::Conv1, false);
        sync(device);
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t0 = Instant::now();
            let y = model.forward_from(&x, Block::Conv1, false);
            sync(device);
            best = best.min(t0.elapsed().as_secs_f64());
            drop(y);
        }
        best
    };
    let best = if winograd { model.frozen(time) } else { tch::no_grad(time) };
    let flops = forward_flops(&model.cfg, size) * batch as f64;
    let convolution = if winograd { "winograd" } else { "direct" };
    Forward {
        precision: model.cfg.precision,
        convolution,
        batch,
        image_size: size,
        seconds_per_batch: best,
        images_per_s: batch as f64 / best,
        gflops: flops / best / 1e9,
    }
}

/// Everything `vggft speed` measures.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub threads: i32,
    pub matmul_f32_gflops: f64,
    /// Measured when bf16 is timed (null otherwise).
    pub matmul_bf16_gflops: Option<f64>,
    pub forward: Vec<Forward>,
}

/// The precisions `vggft speed` times unless told: float32, and bfloat16
/// where the device has bf16 arithmetic — not on a CPU where libtorch
/// emulates it, whose 2048³ product alone takes about a minute there.
pub fn default_precisions(device: Device, cpu: CpuBf16) -> Vec<Precision> {
    match (device, cpu) {
        (Device::Cpu, CpuBf16::Emulated) => vec![Precision::F32],
        _ => vec![Precision::F32, Precision::Bf16],
    }
}

/// Measures the matmul peaks and forward throughput at `batch` and at batch 1 (once
/// where `batch` is 1), in each precision; on a CPU in float32 at `batch` both with
/// the direct convolution and with Winograd.
pub fn measure(model: &mut Vgg16, batch: i64, size: i64, reps: usize, precisions: &[Precision]) -> Report {
    let device = model.device();
    let matmul_f32_gflops = matmul_peak(Kind::Float, device, 2048, 10);
    let matmul_bf16_gflops = precisions.contains(&Precision::Bf16).then(|| matmul_peak(Kind::BFloat16, device, 2048, 10));
    let mut fw = Vec::new();
    for &p in precisions {
        model.cfg.precision = p;
        for b in if batch == 1 { vec![1] } else { vec![batch, 1] } {
            fw.push(forward(model, b, size, reps, false));
            // A single image takes the direct path inside a frozen pass too.
            if device == Device::Cpu && p == Precision::F32 && b > 1 {
                fw.push(forward(model, b, size, reps, true));
            }
        }
    }
    Report { device: format!("{device:?}"), threads: tch::get_num_threads(), matmul_f32_gflops, matmul_bf16_gflops, forward: fw }
}

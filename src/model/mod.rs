//! VGG16 and VGG16-BN (Simonyan & Zisserman, "Very Deep Convolutional
//! Networks for Large-Scale Image Recognition", 2014; BN variant as in
//! torchvision) with a new classification head.
//!
//! This module owns the network: torchvision-compatible parameter names
//! (`features.N.weight`, `classifier.6.bias`), the five conv blocks
//! addressable by name, the freeze point, the BatchNorm mode held per layer
//! (so "head in train mode, BN in eval mode" is possible), exact BN
//! recalibration (AdaBN) and precise BN statistics for `--bn train`, and the
//! optimizer's parameter groups.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

use crate::error::{Error, Result, Setting};

mod fused;
mod raw;
pub mod weights;
mod winograd;

/// The same values with NHWC strides ("channels last"): oneDNN then runs
/// every following convolution, ReLU and pooling in that layout, measured
/// ~1.4× faster for a VGG16 forward on a 2-core AVX-512 CPU (float32 and bfloat16).
pub(crate) fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 || x.stride()[1] == 1 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// One conv layer of VGG16: the single description of the trunk from which
/// widths, block boundaries, torchvision indices, freezing and FLOP counts
/// are derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub block: Block,
    /// Output channels at full width.
    pub channels: i64,
    /// A 2×2 max-pool follows (the block ends here).
    pub last_in_block: bool,
    /// torchvision `features.N` index in plain VGG16 (conv, ReLU; pool after a block).
    pub plain_idx: usize,
    /// torchvision `features.N` index in VGG16-BN (conv, BN at N+1, ReLU; pool after a block).
    pub bn_idx: usize,
}

impl ConvSpec {
    /// The `features.N` index of this conv for the plain or the BN network.
    pub(crate) fn idx(&self, bn: bool) -> usize {
        if bn {
            self.bn_idx
        } else {
            self.plain_idx
        }
    }
}

/// torchvision's configuration "D": (convs, channels) per block.
const BLOCKS: [(usize, i64); 5] = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)];

/// Why `--members` above 1 is refused for a head that is not one affine map.
pub(crate) const MEMBERS_NEED_AFFINE: &str = "above 1 needs the linear head or the bn head without a hidden layer (their members average into one head)";

/// VGG16's 13 conv layers, in order.
pub const CONVS: [ConvSpec; 13] = conv_specs();

const fn conv_specs() -> [ConvSpec; 13] {
    let mut out = [ConvSpec { block: Block::Conv1, channels: 0, last_in_block: false, plain_idx: 0, bn_idx: 0 }; 13];
    let (mut l, mut plain, mut bn, mut b) = (0, 0, 0, 0);
    while b < BLOCKS.len() {
        let (n, channels) = BLOCKS[b];
        let mut k = 0;
        while k < n {
            out[l] = ConvSpec { block: Block::ALL[b], channels, last_in_block: k + 1 == n, plain_idx: plain, bn_idx: bn };
            plain += 2;
            bn += 3;
            l += 1;
            k += 1;
        }
        plain += 1;
        bn += 1;
        b += 1;
    }
    out
}

/// BatchNorm epsilon used by torchvision.
pub const BN_EPS: f64 = 1e-5;

/// A freeze point / stage boundary: the conv blocks, then the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Block {
    Conv1,
    Conv2,
    Conv3,
    Conv4,
    Conv5,
    Head,
}

impl Block {
    pub const ALL: [Block; 6] = [Block::Conv1, Block::Conv2, Block::Conv3, Block::Conv4, Block::Conv5, Block::Head];
    pub fn index(self) -> usize {
        self as usize
    }
    pub(crate) fn from_index(i: usize) -> Block {
        Block::ALL[i.min(5)]
    }
    pub fn name(self) -> &'static str {
        ["conv1", "conv2", "conv3", "conv4", "conv5", "head"][self.index()]
    }
    /// A block by name, for the setting that names it.
    pub fn parse(s: &str, setting: Setting) -> Result<Block> {
        Block::ALL
            .iter()
            .copied()
            .find(|b| b.name() == s.trim())
            .ok_or_else(|| Error::invalid(setting, format!("unknown block `{s}` (allowed: conv1, conv2, conv3, conv4, conv5, head)")))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How BatchNorm is handled while fine-tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Plain VGG16, no BN (BN weights, if given, are folded into the convs).
    Drop,
    /// VGG16-BN with ImageNet statistics, BN always in eval mode.
    Frozen,
    /// VGG16-BN whose statistics are re-estimated on the training images first (AdaBN).
    Recalibrate,
    /// Ordinary train-mode BN: statistics updated every batch.
    Train,
}

impl BnMode {
    pub fn has_bn(self) -> bool {
        self != BnMode::Drop
    }
}

/// The classification head put on the conv trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Global average pool → dropout → linear.
    Linear,
    /// Concatenated average+max pool → BatchNorm1d → dropout → linear, fastai-style (`--hidden N`: a hidden layer before the linear one).
    Bn,
    /// Pretrained fc6/fc7 (`classifier.0/3`) kept, new final layer `classifier.6`.
    Vgg,
}

/// Arithmetic of the trunk's convolutions, autocast-style: weights, BN
/// statistics, the head, optimizer state and the loss stay float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (the default).
    #[default]
    F32,
    /// bfloat16 convolutions: faster on CPUs with AMX (~4×) and on recent GPUs; on
    /// AVX512-BF16 CPUs without AMX it depends on the CPU (measured ~1.5× slower to ~2×
    /// faster than float32: `vggft speed` says which), and ~10× slower on a CPU without
    /// bf16 arithmetic (a training run warns of it).
    // (`CpuBf16` tells the three apart.)
    Bf16,
}

impl Precision {
    /// The low-precision kind convolutions run in, if any.
    pub fn low(self) -> Option<Kind> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
        }
    }
}

/// What this CPU does with bfloat16, by the kernel's flags (Linux's
/// `/proc/cpuinfo`): bf16 convolutions ran ~4× faster than float32 with AMX,
/// ~1.5× slower to ~2× faster with AVX512-BF16 alone (two CPUs, README
/// "Speed"), and ~10× slower where libtorch
/// emulates them (a 2-core AVX2 EPYC, 2026-12-03: vggft's 224 px cache pass
/// of 21 photos 156 s against 15 s; a bare 2048³ bf16 matmul 0.28 against
/// 94 GFLOP/s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuBf16 {
    /// AMX-BF16 tiles.
    Amx,
    /// bf16 instructions without AMX (x86 `avx512_bf16`, Arm `bf16`).
    Native,
    /// No bf16 arithmetic: libtorch emulates it in software.
    Emulated,
    /// No flags to read (not Linux, or unreadable).
    Unknown,
}

impl CpuBf16 {
    /// This machine's, read once per call.
    pub fn detect() -> CpuBf16 {
        std::fs::read_to_string("/proc/cpuinfo").map_or(CpuBf16::Unknown, |info| CpuBf16::from_cpuinfo(&info))
    }

    /// From the text of `/proc/cpuinfo`: x86's `flags` line or Arm's
    /// `Features` line (names elsewhere, e.g. in the model name, do not count).
    pub fn from_cpuinfo(cpuinfo: &str) -> CpuBf16 {
        let mut seen = false;
        let (mut amx, mut native) = (false, false);
        for line in cpuinfo.lines() {
            let Some((key, values)) = line.split_once(':') else { continue };
            if !matches!(key.trim(), "flags" | "Features") {
                continue;
            }
            seen = true;
            for f in values.split_whitespace() {
                amx |= f == "amx_bf16";
                native |= f == "avx512_bf16" || f == "bf16";
            }
        }
        match (seen, amx, native) {
            (false, ..) => CpuBf16::Unknown,
            (true, true, _) => CpuBf16::Amx,
            (true, false, true) => CpuBf16::Native,
            (true, false, false) => CpuBf16::Emulated,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub bn_mode: BnMode,
    pub head: HeadKind,
    pub num_classes: i64,
    pub dropout: f64,
    /// Hidden layer width of the `bn` head (0: none).
    #[serde(default)]
    pub hidden: i64,
    /// Channel divisor: 1 is VGG16; tests use narrower nets to stay fast.
    #[serde(default = "one")]
    pub width_div: i64,
    #[serde(default)]
    pub precision: Precision,
    /// Blocks whose outputs are pooled into the head, ascending (`--features`).
    #[serde(default = "conv5_only")]
    pub features: Vec<Block>,
    /// Per-subject normalisation of the pooled features (`--subject-norm`):
    /// the head reads person-normalised features, and a second head
    /// (`head_global.*`) reads the raw pooled ones for single images.
    #[serde(default)]
    pub subject_norm: bool,
    /// Cells each feature block's output is also averaged over (`--pool-grid`;
    /// 1x1: global pooling only). Expressions are local (brows, eyes, mouth):
    /// a global average keeps what fired but not where.
    #[serde(default)]
    pub pool_grid: PoolGrid,
    /// The task class of each raw label when the single-image head
    /// (`head_global.*`) learns the task's classes directly while the main
    /// head learns the raw labels (`--single-labels task`); empty: it learns
    /// what the main head learns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub single_to_task: Vec<usize>,
}

/// A grid of `rows` × `cols` cells over a feature map (`--pool-grid RxC`),
/// written `2x2` in flags and config.json; 1x1 adds nothing to global pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolGrid {
    pub rows: i64,
    pub cols: i64,
}

impl PoolGrid {
    /// More cells a side than conv5 has rows at 224 px would only repeat them.
    pub const MAX_SIDE: i64 = 7;
    pub const GLOBAL: PoolGrid = PoolGrid { rows: 1, cols: 1 };

    pub fn parse(s: &str) -> Result<PoolGrid> {
        let bad = || Error::invalid(Setting::PoolGrid, format!("`{s}`: expected ROWSxCOLS, each 1 to {}, e.g. 2x2", Self::MAX_SIDE));
        let (r, c) = s.trim().split_once(['x', '×']).ok_or_else(bad)?;
        let side = |t: &str| t.trim().parse::<i64>().ok().filter(|n| (1..=Self::MAX_SIDE).contains(n));
        Ok(PoolGrid { rows: side(r).ok_or_else(bad)?, cols: side(c).ok_or_else(bad)? })
    }
    /// Cells beyond the global pooling (0 for 1x1).
    pub fn cells(self) -> i64 {
        if self == Self::GLOBAL {
            0
        } else {
            self.rows * self.cols
        }
    }
}

impl Default for PoolGrid {
    fn default() -> Self {
        Self::GLOBAL
    }
}

impl std::fmt::Display for PoolGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl From<PoolGrid> for String {
    fn from(g: PoolGrid) -> String {
        g.to_string()
    }
}

impl TryFrom<String> for PoolGrid {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        PoolGrid::parse(&s).map_err(|e| e.to_string())
    }
}

fn one() -> i64 {
    1
}

/// The classic head input: the last block's output alone.
pub fn conv5_only() -> Vec<Block> {
    vec![Block::Conv5]
}

impl ModelConfig {
    pub fn new(bn_mode: BnMode, head: HeadKind, num_classes: i64) -> Self {
        ModelConfig {
            bn_mode,
            head,
            num_classes,
            dropout: 0.5,
            hidden: 0,
            width_div: 1,
            precision: Precision::F32,
            features: conv5_only(),
            subject_norm: false,
            pool_grid: PoolGrid::GLOBAL,
            single_to_task: Vec::new(),
        }
    }
    /// Channels of block `b`'s output.
    pub(crate) fn block_out(&self, b: Block) -> i64 {
        self.channels(CONVS.iter().rposition(|c| c.block == b).unwrap_or(12))
    }
    /// Width of the pooled features that enter the `linear` or `bn` head:
    /// per feature block its global average, for the bn head its global
    /// maximum, and each grid cell's average (`Vgg16::pool`).
    pub fn pooled_width(&self) -> i64 {
        let per_channel = 1 + i64::from(self.head == HeadKind::Bn) + self.pool_grid.cells();
        per_channel * self.features.iter().map(|&b| self.block_out(b)).sum::<i64>()
    }
    /// Width of what the head reads: the pooled features, or the `vgg`
    /// head's 7 × 7 conv5 map, flattened.
    pub(crate) fn head_in_width(&self) -> i64 {
        if self.head == HeadKind::Vgg {
            self.trunk_out() * 49
        } else {
            self.pooled_width()
        }
    }
    pub fn channels(&self, layer: usize) -> i64 {
        (CONVS[layer].channels / self.width_div).max(1)
    }
    /// Width of the trunk's final feature map.
    pub(crate) fn trunk_out(&self) -> i64 {
        self.channels(12)
    }
    /// fc6/fc7 width of the `vgg` head (4096 in VGG16).
    pub(crate) fn fc_width(&self) -> i64 {
        (4096 / self.width_div).max(1)
    }
}

/// Per-channel count, mean and sum of squared deviations of an NCHW batch,
/// merged into `acc` in double (Chan et al.): statistics over many chunks
/// without a double copy of any chunk.
fn merge_moments(acc: Option<(i64, Tensor, Tensor)>, y: &Tensor) -> (i64, Tensor, Tensor) {
    let s = y.size();
    let n = s[0] * s[2] * s[3];
    let (v, m) = y.var_mean_correction([0, 2, 3].as_slice(), 0, false);
    let (v, m) = (v.to_kind(Kind::Double), m.to_kind(Kind::Double));
    match acc {
        None => (n, m, v * n as f64),
        Some((na, ma, m2a)) => {
            let total = na + n;
            let delta = &m - &ma;
            let mean = &ma + &delta * (n as f64 / total as f64);
            let m2 = m2a + v * n as f64 + delta.square() * (na as f64 * n as f64 / total as f64);
            (total, mean, m2)
        }
    }
}

struct ConvLayer {
    conv: nn::Conv2D,
    bn: Option<nn::BatchNorm>,
    spec: ConvSpec,
}

#[allow(clippy::large_enum_variant)] // one per model
enum Head {
    Linear { fc: nn::Linear },
    Bn { norm: nn::BatchNorm, hidden: Option<(nn::Linear, nn::BatchNorm)>, fc: nn::Linear },
    Vgg { fc6: nn::Linear, fc7: nn::Linear, fc8: nn::Linear },
}

/// libtorch's random generator is one for the whole process. Whatever seeds it
/// and then draws from it (a model's initialisation) holds this lock, so that
/// fits running on several threads at once (`cv`'s parallel folds) draw what
/// they would alone; such threads draw their dropout masks from a stream of
/// their own instead (`own_stream`).
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Unit tests that run the Winograd forward (its workers set libtorch's
/// thread count, which a new thread inherits) or check that setting hold
/// this, so that one does not see the other's setting.
#[cfg(test)]
pub(crate) static THREAD_SETTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Calls each elementwise function that libtorch hands to MKL's vector math
/// (VML) once, in float32 and float64, on this thread alone (once a
/// process), before any parallel work: every path that trains or scores
/// goes through `Session::open`, `Session::reopen` (resume, rerun) or
/// `run::load_run` (predict, evaluate, explain), and each calls it first. VML sets itself up on its
/// first call of each function, and a first call made by two threads at
/// once (libtorch splits a tensor of more than 2048 elements across its
/// threads) was seen to give the second thread a less exact result for that
/// call only: `sqrt` of 2816 person-variance entries came out ~3e-11 off on
/// the half the second thread took, in about one finetune of 150 on a busy
/// 2-core machine, so two runs of the same recipe gave different models.
pub fn settle_vector_math() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tch::no_grad(|| {
            for kind in [Kind::Float, Kind::Double] {
                let x = Tensor::from_slice(&[0.25f32, 0.5, 0.75]).to_kind(kind);
                let fs: [fn(&Tensor) -> Tensor; 20] = [
                    Tensor::sqrt,
                    Tensor::exp,
                    Tensor::log,
                    Tensor::log1p,
                    Tensor::expm1,
                    Tensor::log10,
                    Tensor::log2,
                    Tensor::tanh,
                    Tensor::sin,
                    Tensor::cos,
                    Tensor::tan,
                    Tensor::asin,
                    Tensor::acos,
                    Tensor::atan,
                    Tensor::erf,
                    Tensor::erfc,
                    Tensor::erfinv,
                    Tensor::trunc,
                    Tensor::lgamma,
                    Tensor::abs,
                ];
                for f in fs {
                    let _ = f(&x);
                }
            }
        })
    });
}

/// Holds libtorch's generator until dropped: for whatever seeds it and draws
/// from it (a test that draws, too). Not re-entrant: while it is held, this
/// thread must not call `dropout` without a stream of its own.
fn lock_generator() -> std::sync::MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` right after `tch::manual_seed(seed)`, with no other thread's draws
/// in between (`f` must not call `dropout`, which takes the same lock).
pub(crate) fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _only = lock_generator();
    tch::manual_seed(seed);
    f()
}

/// A 64-bit seed as libtorch takes it (non-negative).
fn torch_seed(seed: u64) -> i64 {
    (seed & 0x7FFF_FFFF_FFFF) as i64
}

thread_local! {
    /// This thread's own random stream (`own_stream`), reseeded by `seed_epoch`.
    static OWN_STREAM: std::cell::RefCell<Option<rand_chacha::ChaCha8Rng>> = const { std::cell::RefCell::new(None) };
}

/// Gives this thread a random stream of its own for the CPU dropout masks and
/// for what `draw` draws: a fit on it no longer depends on what other threads
/// draw from libtorch's generator. (A thread without one continues libtorch's
/// generator, as everything on one thread always has: same numbers as before.)
/// The stream lasts as long as the returned guard.
pub(crate) fn own_stream() -> OwnStream {
    use rand::SeedableRng;
    OWN_STREAM.with(|d| *d.borrow_mut() = Some(rand_chacha::ChaCha8Rng::seed_from_u64(0)));
    OwnStream(std::marker::PhantomData)
}

/// This thread's own random stream (`own_stream`); dropping it returns the
/// thread to libtorch's generator.
pub(crate) struct OwnStream(std::marker::PhantomData<*const ()>);

impl Drop for OwnStream {
    fn drop(&mut self) {
        OWN_STREAM.with(|d| *d.borrow_mut() = None);
    }
}

fn has_own_stream() -> bool {
    OWN_STREAM.with(|d| d.borrow().is_some())
}

/// Seeds an epoch's random draws (its dropout masks): this thread's own
/// stream where it has one, else libtorch's generator.
pub(crate) fn seed_epoch(seed: u64) {
    use rand::SeedableRng;
    if has_own_stream() {
        OWN_STREAM.with(|d| *d.borrow_mut() = Some(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
    } else {
        seeded(torch_seed(seed), || ());
    }
}

/// Runs `f`, which initialises from libtorch's generator: on a thread with its
/// own stream right after seeding the generator with `seed` (under the lock),
/// else where the generator stands.
pub(crate) fn draw<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    if has_own_stream() {
        seeded(torch_seed(seed), f)
    } else {
        f()
    }
}

/// Inverted dropout. On the CPU its mask comes from a ChaCha8 stream seeded by
/// one draw of libtorch's generator (so `tch::manual_seed` still fixes it), or
/// of the thread's own stream (`own_stream`): libtorch's CPU Bernoulli sampler
/// draws each element in turn from its global generator on one thread, and was
/// most of a probe's training time (profiled on a cached 5-head probe: ~30 % of
/// the samples, with the second core spinning idle beside it). Each element is
/// kept with probability 1 − ⌊p·2¹⁶⌉/2¹⁶ (p itself for p = 0.5) and scaled to
/// keep its mean.
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu {
        return x.dropout(p, true);
    }
    x * Tensor::from_slice(&dropout_mask(x.numel(), p)).view(x.size().as_slice()).to_kind(x.kind())
}

/// A CPU dropout mask of `n` elements (0 or the keep scale), from the next
/// seed of this thread's stream or libtorch's generator (`dropout`).
fn dropout_mask(n: usize, p: f64) -> Vec<f32> {
    use rand::{Rng, RngCore, SeedableRng};
    let seed = OWN_STREAM.with(|d| d.borrow_mut().as_mut().map(RngCore::next_u64)).unwrap_or_else(|| {
        let _only = lock_generator();
        i64::try_from(Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))).unwrap_or(0) as u64
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cut = (p * 65536.0).round().clamp(1.0, 65535.0) as u16;
    let scale = (65536.0 / (65536 - u32::from(cut)) as f64) as f32;
    // 16 random bits per element, filled in one go (the stream's 64-bit words split low half first).
    let mut bits = vec![0u16; n];
    rng.fill(&mut bits[..]);
    bits.iter().map(|&b| if b >= cut { scale } else { 0.0 }).collect()
}

/// One of a model's heads: the main one (0) or an ensemble member (1..), or the single-image head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadRef {
    Member(usize),
    Global,
}

/// A head's training step taken without autograd (`Vgg16::fused_forward`), for its backward.
pub(crate) struct FusedStep(fused::Step);

impl Head {
    /// Training-mode logits on `f`, which needs no gradient, by `fused`; `None` where autograd must train this head.
    fn fused_forward(&self, f: &Tensor, p: f64) -> Option<(Tensor, FusedStep)> {
        let Head::Bn { norm, hidden: None, fc } = self else {
            return None;
        };
        let (z, step) = fused::forward(norm, fc, f, |n| (p > 0.0).then(|| dropout_mask(n, p)))?;
        Some((z, FusedStep(step)))
    }

    fn fused_backward(&self, step: &FusedStep, dz: &Tensor) {
        if let Head::Bn { norm, hidden: None, fc } = self {
            fused::backward(norm, fc, &step.0, dz);
        }
    }

    fn forward(&self, f: &Tensor, p: f64, train: bool) -> Tensor {
        match self {
            Head::Linear { fc } => dropout(f, p, train).apply(fc),
            Head::Bn { norm, hidden, fc } => {
                let mut x = dropout(&f.apply_t(norm, train), p, train);
                if let Some((lin, bn)) = hidden {
                    x = dropout(&x.apply(lin).relu().apply_t(bn, train), p, train);
                }
                x.apply(fc)
            }
            Head::Vgg { fc6, fc7, fc8 } => dropout(&dropout(&f.apply(fc6).relu(), p, train).apply(fc7).relu(), p, train).apply(fc8),
        }
    }

    /// The evaluation-mode head as `x ↦ x·Wᵀ + b` (W, b), where it is one
    /// affine map: BatchNorm's `(x − mean)/√(var + ε)·γ + β` folds into the
    /// linear layer after it.
    fn affine(&self) -> Option<(Tensor, Tensor)> {
        let bias = |fc: &nn::Linear| fc.bs.as_ref().map_or_else(|| Tensor::zeros([fc.ws.size()[0]], (Kind::Float, fc.ws.device())), Tensor::shallow_clone);
        match self {
            Head::Linear { fc } => Some((fc.ws.shallow_clone(), bias(fc))),
            Head::Bn { norm, hidden: None, fc } => {
                let gamma = norm.ws.as_ref().map_or_else(|| Tensor::ones_like(&norm.running_mean), Tensor::shallow_clone);
                let beta = norm.bs.as_ref().map_or_else(|| Tensor::zeros_like(&norm.running_mean), Tensor::shallow_clone);
                let scale = gamma / (&norm.running_var + BN_EPS).sqrt();
                let shift = beta - &norm.running_mean * &scale;
                let w = &fc.ws * scale.unsqueeze(0);
                let b = bias(fc) + fc.ws.matmul(&shift.unsqueeze(1)).squeeze_dim(1);
                Some((w, b))
            }
            _ => None,
        }
    }
}

/// tch's BatchNorm defaults (scales drawn uniformly from [0, 1)), or for a
/// network about to be overwritten (`random` false) scales of 1: that draws
/// nothing from libtorch's one generator, which a fit on another thread may
/// hold seeded (`seeded`): an ensemble's folding builds such a network while
/// other cv folds train beside it (`--parallel-folds`), and its draws made
/// their heads' starts depend on timing.
fn bn_config(random: bool) -> nn::BatchNormConfig {
    if random {
        Default::default()
    } else {
        nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() }
    }
}

/// A new head of `cfg`'s kind under `h` (`root` holds the vgg head's `classifier`).
fn make_head(cfg: &ModelConfig, root: &nn::Path, h: nn::Path, random: bool) -> Head {
    let zero = nn::Init::Const(0.0);
    let lin = || if random { nn::LinearConfig::default() } else { nn::LinearConfig { ws_init: zero, bs_init: Some(zero), bias: true } };
    let c = cfg.pooled_width();
    match cfg.head {
        HeadKind::Linear => Head::Linear { fc: nn::linear(&h / "fc", c, cfg.num_classes, lin()) },
        HeadKind::Bn => {
            let norm = nn::batch_norm1d(&h / "norm", c, bn_config(random));
            let (hidden, width) = if cfg.hidden > 0 {
                let lin = nn::linear(&h / "hidden", c, cfg.hidden, lin());
                let bn = nn::batch_norm1d(&h / "hidden_norm", cfg.hidden, bn_config(random));
                (Some((lin, bn)), cfg.hidden)
            } else {
                (None, c)
            };
            let fc = nn::linear(&h / "fc", width, cfg.num_classes, lin());
            Head::Bn { norm, hidden, fc }
        }
        HeadKind::Vgg => {
            let cl = root / "classifier";
            let w = cfg.fc_width();
            Head::Vgg { fc6: nn::linear(&cl / 0, c * 49, w, lin()), fc7: nn::linear(&cl / 3, w, w, lin()), fc8: nn::linear(&cl / 6, w, cfg.num_classes, lin()) }
        }
    }
}

/// The name of `Vgg16::person_var` in the variable store and in model files.
pub(crate) const PERSON_VAR: &str = "head.person_var";
/// The name of `Vgg16::feature_stats` in the variable store and in model files.
pub(crate) const FEATURE_STATS: &str = "head.feature_stats";

type Forms = std::cell::RefCell<Option<Vec<Option<winograd::Winograd>>>>;

/// VGG16 (plain or BN) with a classification head, its variables in `vs`.
pub struct Vgg16 {
    pub vs: nn::VarStore,
    pub cfg: ModelConfig,
    layers: Vec<ConvLayer>,
    head: Head,
    /// The single-image head of a subject-normalised model.
    global: Option<Head>,
    /// For a single-image head on the task's classes: the class of each raw
    /// label (index) and the log of that class's raw-label count (`classify_global`).
    global_to_raw: Option<(Tensor, Tensor)>,
    /// Heads trained beside `head` as an ensemble (`add_members`), until folded.
    members: Vec<Head>,
    /// A subject-normalised model's `head.person_var` (D): its training
    /// people's pooled within-person variance of the pooled features, which a
    /// new person's few-image variance is shrunk towards (`person_prior`).
    person_var: Option<Tensor>,
    /// `head.feature_stats` (4 × D): the mean and variance of the training
    /// photos' pooled features as the main head reads them (before any
    /// person normalisation), then as the single-image head reads them
    /// (a subject-normalised model's; else the same again) — what an input
    /// answered without person statistics is compared with to see that it
    /// is unlike them (`feature_distance`; a person's photo is compared with
    /// that person's others, `SubjectNorm::spread_distance`).
    /// All zeros until a run sets them, and in a run saved before vggft kept them.
    feature_stats: Tensor,
    /// While a `frozen` pass runs, per conv layer its Winograd form once made; `None` outside one.
    winograd: Forms,
}

/// Parameters of one block that share a learning-rate factor and weight-decay choice.
pub struct ParamGroup {
    pub block: Block,
    pub decay: bool,
    pub params: Vec<(String, Tensor)>,
}

impl Vgg16 {
    /// Builds the network with seeded random initialisation (call
    /// `tch::manual_seed` first for reproducibility), everything trainable.
    pub fn new(cfg: &ModelConfig, device: Device) -> Result<Self> {
        Self::build(cfg, device, true)
    }

    /// Builds the network with zeroed weights, for loading a complete checkpoint
    /// right after (skips ~90 ms of random initialisation in `predict`).
    pub(crate) fn for_loading(cfg: &ModelConfig, device: Device) -> Result<Self> {
        Self::build(cfg, device, false)
    }

    fn build(cfg: &ModelConfig, device: Device, random: bool) -> Result<Self> {
        if cfg.num_classes < 2 {
            return Err(Error::invalid(Setting::Classes, format!("needs at least 2 classes, got {}", cfg.num_classes)));
        }
        if cfg.width_div < 1 {
            return Err(Error::invalid(Setting::WidthDiv, "must be ≥ 1"));
        }
        if cfg.features.is_empty() || cfg.features.contains(&Block::Head) || !cfg.features.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::invalid(Setting::Features, format!("{:?}: expected conv blocks in ascending order, e.g. conv4,conv5", cfg.features)));
        }
        if cfg.head == HeadKind::Vgg && cfg.features != conv5_only() {
            return Err(Error::invalid(Setting::Features, ": the vgg head (fc6/fc7) takes the conv5 output only: use conv5 or another head"));
        }
        if cfg.head == HeadKind::Vgg && cfg.subject_norm {
            return Err(Error::invalid(Setting::SubjectNorm, "on applies to pooled features: use the bn or linear head"));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let feats = &root / "features";
        let zero = nn::Init::Const(0.0);
        let conv_cfg = if random {
            nn::ConvConfig { padding: 1, ..Default::default() }
        } else {
            nn::ConvConfig { padding: 1, ws_init: zero, bs_init: zero, ..Default::default() }
        };
        let has_bn = cfg.bn_mode.has_bn();
        let mut layers = Vec::with_capacity(13);
        let mut c_in = 3;
        for (l, spec) in CONVS.iter().enumerate() {
            let c_out = cfg.channels(l);
            let conv = nn::conv2d(&feats / spec.idx(has_bn), c_in, c_out, 3, conv_cfg);
            let bn = has_bn.then(|| nn::batch_norm2d(&feats / (spec.bn_idx + 1), c_out, bn_config(random)));
            layers.push(ConvLayer { conv, bn, spec: *spec });
            c_in = c_out;
        }
        let head = make_head(cfg, &root, &root / "head", random);
        let global_classes = cfg.single_to_task.iter().max().map_or(cfg.num_classes, |&m| m as i64 + 1);
        if !cfg.single_to_task.is_empty() && (cfg.single_to_task.len() as i64 != cfg.num_classes || global_classes < 2) {
            return Err(Error::invalid(Setting::RawLabels, "and the single-image head's classes do not match"));
        }
        let global = cfg.subject_norm.then(|| make_head(&ModelConfig { num_classes: global_classes, ..cfg.clone() }, &root, &root / "head_global", random));
        let map = &cfg.single_to_task;
        let global_to_raw = (!map.is_empty()).then(|| {
            let idx: Vec<i64> = map.iter().map(|&t| t as i64).collect();
            let shift: Vec<f32> = map.iter().map(|&t| (map.iter().filter(|&&u| u == t).count() as f32).ln()).collect();
            (Tensor::from_slice(&idx).to_device(device), Tensor::from_slice(&shift).to_device(device))
        });
        let person_var = cfg.subject_norm.then(|| (&root / "head").zeros_no_train("person_var", &[cfg.pooled_width()]));
        let feature_stats = (&root / "head").zeros_no_train("feature_stats", &[4, cfg.head_in_width()]);
        Ok(Vgg16 { vs, cfg: cfg.clone(), layers, head, global, global_to_raw, members: Vec::new(), person_var, feature_stats, winograd: Default::default() })
    }

    /// Heads in the ensemble the main head belongs to (`--members`): 1 unless
    /// `add_members` was called.
    pub fn member_count(&self) -> usize {
        1 + self.members.len()
    }

    /// Adds `n` more randomly initialised heads beside the main one
    /// (`head_member.K.*`), trained side by side on their own batches and
    /// averaged at evaluation, until `fold_members` makes them one head.
    /// Only heads that are one affine map at evaluation can be folded: the
    /// linear head and the bn head without a hidden layer.
    pub(crate) fn add_members(&mut self, n: usize) -> Result<()> {
        if n > 0 && self.head.affine().is_none() {
            return Err(Error::invalid(Setting::Members, MEMBERS_NEED_AFFINE));
        }
        let root = self.vs.root();
        for _ in 0..n {
            let k = self.member_count();
            self.members.push(make_head(&self.cfg, &root, &root / "head_member" / k, true));
        }
        Ok(())
    }

    /// Replaces the ensemble by one head computing the average of its
    /// members' evaluation-mode logits, exactly: each member is an affine map
    /// of the pooled features (the bn head's BatchNorm folds into its last
    /// layer), so their average is one; the bn head keeps an identity
    /// BatchNorm. The result has the plain model's variables only, so it
    /// saves and loads like any model.
    pub(crate) fn fold_members(&mut self) -> Result<()> {
        if self.members.is_empty() {
            return Ok(());
        }
        let (w, b) = tch::no_grad(|| {
            let maps: Vec<(Tensor, Tensor)> = std::iter::once(&self.head).chain(&self.members).filter_map(Head::affine).collect();
            let k = maps.len() as f64;
            let w = maps.iter().map(|m| m.0.shallow_clone()).reduce(|a, b| a + b).map(|t| t / k);
            let b = maps.iter().map(|m| m.1.shallow_clone()).reduce(|a, b| a + b).map(|t| t / k);
            w.zip(b)
        })
        .ok_or_else(|| Error::internal("the head has no affine form to fold"))?;
        let mut folded = Vgg16::for_loading(&self.cfg, self.device())?;
        folded.vs.copy(&self.vs).map_err(|e| Error::internal(format!("folding the ensemble: {e}")))?;
        // Frozen stays frozen (no parameter gradients in Grad-CAM of the folded model).
        let was = self.vs.variables();
        for (name, t) in folded.vs.variables() {
            let _ = t.set_requires_grad(was.get(&name).is_some_and(Tensor::requires_grad));
        }
        tch::no_grad(|| {
            let set = |t: &Tensor, v: &Tensor| {
                let mut t = t.shallow_clone();
                t.copy_(v);
            };
            // The bn head's BatchNorm becomes the identity; the last layer takes the averaged map.
            let fc = match &folded.head {
                Head::Linear { fc } => Some(fc),
                Head::Bn { norm, fc, .. } => {
                    let _ = norm.running_mean.shallow_clone().fill_(0.0);
                    let _ = norm.running_var.shallow_clone().fill_(1.0 - BN_EPS);
                    norm.ws.iter().for_each(|t| {
                        let _ = t.shallow_clone().fill_(1.0);
                    });
                    norm.bs.iter().for_each(|t| {
                        let _ = t.shallow_clone().fill_(0.0);
                    });
                    Some(fc)
                }
                Head::Vgg { .. } => None,
            };
            if let Some(fc) = fc {
                set(&fc.ws, &w);
                fc.bs.iter().for_each(|t| set(t, &b));
            }
        });
        *self = folded;
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Whether BN layers of the trunk run in train mode when `train` is set.
    fn trunk_bn_train(&self, train: bool) -> bool {
        train && self.cfg.bn_mode == BnMode::Train
    }

    /// Runs conv blocks `from..to` (e.g. `Conv1..Conv5` is blocks 1–4); the
    /// input is the image when `from` is conv1, else the previous block's output.
    /// With `--precision bf16` the convolutions take bfloat16 copies of the
    /// input and weights (the casts are differentiable, so gradients reach the
    /// float32 weights) and the output is float32 again.
    pub fn features(&self, x: &Tensor, from: Block, to: Block, train: bool) -> Tensor {
        self.walk(x, from, to, train, |_, _| {})
    }

    /// What a frozen-prefix cache at `to` holds for input `x` entering at
    /// `from` (eval mode): the output of the blocks `from..to`, or at the
    /// head the pooled features themselves — small, and all a head-only
    /// stage needs, whichever blocks `--features` pools.
    pub fn prefix(&self, x: &Tensor, from: Block, to: Block) -> Tensor {
        if to == Block::Head {
            self.pooled_from(x, from, false)
        } else {
            self.features(x, from, to, false)
        }
    }

    /// Runs `f` without gradients, as a pass in which the trunk's weights
    /// stay fixed: on a CPU in float32, every conv layer but the first then
    /// takes the Winograd path (`winograd`; ~2.4× faster than the direct
    /// convolution for a whole VGG16 forward at batch 8 on a 2-core AVX2
    /// CPU, measured by `vggft speed`). A layer's transformed weights are
    /// made when the pass first runs it on a batch (`winograd_form`) and
    /// dropped when the pass ends, so they are never stale, and a pass that
    /// starts at the head (a head-level cache) makes none. A nested call is
    /// part of the outer pass.
    pub fn frozen<T>(&self, f: impl FnOnce() -> T) -> T {
        let fresh = self.device() == Device::Cpu && self.cfg.precision.low().is_none() && self.winograd.borrow().is_none();
        if fresh {
            *self.winograd.borrow_mut() = Some((0..self.layers.len()).map(|_| None).collect());
        }
        struct End<'a>(&'a Forms, bool);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                if self.1 {
                    *self.0.borrow_mut() = None;
                }
            }
        }
        let _end = End(&self.winograd, fresh);
        tch::no_grad(f)
    }

    /// Layer `i`'s Winograd form for a batch of `n` when a frozen pass is
    /// running and the layer is not the first (whose three input channels
    /// leave nothing to save: 0.24× the direct convolution's speed,
    /// measured; the direct one takes ~2 % of a forward). The form is made for a batch
    /// of two or more: a single image (one `predict`) does not repay making
    /// it (~0.06 s at full width; measured 4.06 → 3.65 images/s at batch 1
    /// when every image paid for its own).
    fn winograd_form(&self, i: usize, n: i64) -> Option<winograd::Winograd> {
        let layer = &self.layers[i];
        if i == 0 {
            return None;
        }
        let mut forms = self.winograd.borrow_mut();
        let slot = &mut forms.as_mut()?[i];
        if slot.is_none() && n < 2 {
            return None;
        }
        let form = slot.get_or_insert_with(|| tch::no_grad(|| winograd::Winograd::new(&layer.conv.ws, layer.conv.bs.as_ref())));
        Some(form.shallow())
    }

    /// `features`, calling `tap` with each block's output as it is produced.
    fn walk(&self, x: &Tensor, from: Block, to: Block, train: bool, mut tap: impl FnMut(Block, &Tensor)) -> Tensor {
        let bn_train = self.trunk_bn_train(train);
        let low = self.cfg.precision.low();
        let mut x = channels_last(x);
        for (i, layer) in self.layers.iter().enumerate().filter(|(_, l)| l.spec.block >= from && l.spec.block < to) {
            // Without BatchNorm between them, the Winograd path does the ReLU and the pool in its output transform.
            let mut fused = winograd::Post::default();
            x = match low {
                None => match self.winograd_form(i, x.size()[0]) {
                    Some(w) => {
                        if layer.bn.is_none() {
                            // (A side under 2 px is left to libtorch's pool, which refuses it.)
                            let poolable = x.size()[2] >= 2 && x.size()[3] >= 2;
                            fused = winograd::Post { relu: true, pool: layer.spec.last_in_block && poolable };
                        }
                        w.forward(&x, fused)
                    }
                    None => layer.conv.forward(&x),
                },
                Some(k) => {
                    let bias = layer.conv.bs.as_ref().map(|b| b.to_kind(k));
                    x.to_kind(k).conv2d(&layer.conv.ws.to_kind(k), bias.as_ref(), [1, 1], [1, 1], [1, 1], 1)
                }
            };
            if let Some(bn) = &layer.bn {
                x = bn.forward_t(&x, bn_train);
            }
            if !fused.relu {
                // In place: x is always a fresh conv/BN output here, and neither backward needs it.
                x = x.relu_();
            }
            if layer.spec.last_in_block {
                if !fused.pool {
                    x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                }
                tap(layer.spec.block, &x);
            }
        }
        if low.is_some() {
            x = x.to_kind(Kind::Float);
        }
        x
    }

    /// The head's input from the feature blocks' outputs (`maps`, one per
    /// `cfg.features`, ascending): per block avg (+ max for the bn head, + the
    /// average of each cell of `cfg.pool_grid`, channel-major, cells row by
    /// row), the 7×7 average of conv5 for the vgg head.
    pub(crate) fn pool(&self, maps: &[Tensor]) -> Tensor {
        let flat = |t: Tensor| t.flatten(1, -1).to_kind(Kind::Float);
        let max = match &self.head {
            Head::Vgg { .. } => return maps[maps.len() - 1].adaptive_avg_pool2d([7, 7]).flatten(1, -1),
            Head::Bn { .. } => true,
            Head::Linear { .. } => false,
        };
        let grid = self.cfg.pool_grid;
        let parts: Vec<Tensor> = maps
            .iter()
            .flat_map(|m| {
                let mut p = vec![flat(m.adaptive_avg_pool2d([1, 1]))];
                if max {
                    p.push(flat(m.adaptive_max_pool2d([1, 1]).0));
                }
                if grid.cells() > 0 {
                    p.push(flat(m.adaptive_avg_pool2d([grid.rows, grid.cols])));
                }
                p
            })
            .collect();
        Tensor::cat(&parts, 1)
    }

    /// The head on pooled features; with ensemble members (`add_members`),
    /// the average of their logits in evaluation mode and the main head's alone
    /// in training mode (`classify_member` trains the others).
    pub(crate) fn classify(&self, f: &Tensor, train: bool) -> Tensor {
        if train || self.members.is_empty() {
            return self.head.forward(f, self.cfg.dropout, train);
        }
        let sum = self.members.iter().fold(self.head.forward(f, self.cfg.dropout, false), |acc, h| acc + h.forward(f, self.cfg.dropout, false));
        sum / self.member_count() as f64
    }

    /// The training people's within-person variance (D) that a new person's
    /// statistics are shrunk towards; `None` before a fit set it, and for a
    /// run saved before vggft kept it (all zeros: its people are then shrunk
    /// towards the pooled variance of those scored together, as it was).
    pub(crate) fn person_prior(&self) -> Option<Tensor> {
        let v = self.person_var.as_ref()?;
        (f64::try_from(v.abs().max()).unwrap_or(0.0) > 0.0).then(|| v.shallow_clone())
    }

    /// Keeps `var` (D), the training people's within-person variance under the
    /// current trunk, with the model (`head.person_var`).
    pub(crate) fn set_person_prior(&self, var: &Tensor) {
        if let Some(v) = &self.person_var {
            tch::no_grad(|| v.shallow_clone().copy_(&var.to_kind(v.kind()).to_device(v.device())));
        }
    }

    /// Keeps the mean and variance over rows of the training photos' pooled
    /// features as the main head reads them (`main`, before any person
    /// normalisation) and as the single-image head does (`single`) with the
    /// model (`head.feature_stats`, for `feature_distance`).
    pub(crate) fn set_feature_stats(&self, main: &Tensor, single: &Tensor) {
        if main.size()[0] < 2 || single.size()[0] < 2 {
            return;
        }
        tch::no_grad(|| {
            let moments = |f: &Tensor| {
                let f = f.to_kind(Kind::Float);
                [f.mean_dim(0, false, Kind::Float), f.var_dim(0, false, false)]
            };
            let [a, b] = moments(main);
            let [c, d] = moments(single);
            let stats = Tensor::stack(&[a, b, c, d], 0).to_device(self.feature_stats.device());
            if stats.size() == self.feature_stats.size() {
                self.feature_stats.shallow_clone().copy_(&stats);
            }
        });
    }

    /// Ensemble member `k` (0: the main head) on pooled features.
    pub(crate) fn classify_member(&self, k: usize, f: &Tensor, train: bool) -> Tensor {
        let h = if k == 0 { &self.head } else { &self.members[k - 1] };
        h.forward(f, self.cfg.dropout, train)
    }

    /// The single-image head of a subject-normalised model on (globally) pooled features.
    /// Its logits are in the main head's raw labels either way: a head trained
    /// on the task's classes gives each raw label its class's logit less the
    /// log of the class's raw-label count, so that summing the raw softmax
    /// probabilities gives back the head's own (and a cross-entropy on raw
    /// targets is the task's cross-entropy plus a constant; label smoothing
    /// still spreads over the raw labels).
    pub(crate) fn classify_global(&self, f: &Tensor, train: bool) -> Option<Tensor> {
        let z = self.global.as_ref()?.forward(f, self.cfg.dropout, train);
        Some(match &self.global_to_raw {
            None => z,
            Some((class, log_count)) => z.index_select(1, class) - log_count.to_kind(z.kind()),
        })
    }

    /// How far each row of pooled features `f` lies from the training
    /// photos' (`head.feature_stats`; `single`: as the single-image head
    /// reads them, else as the main head does before any person
    /// normalisation): the root mean square over the features of their
    /// z-scores. Training photos average about 1 by construction; a picture
    /// unlike any of them (a blank frame, a chart) far more
    /// (`predict::UNUSUAL`). `None` for a run saved before vggft kept them.
    pub(crate) fn feature_distance(&self, f: &Tensor, single: bool) -> Option<Tensor> {
        let row = if single { 2 } else { 0 };
        let (mean, var) = (self.feature_stats.get(row), self.feature_stats.get(row + 1));
        let fits = f.dim() == 2 && f.size()[1] == var.size()[0];
        (fits && f64::try_from(var.max()).unwrap_or(0.0) > 0.0)
            .then(|| tch::no_grad(|| ((f.to_kind(Kind::Float) - mean) / (var + BN_EPS).sqrt()).square().mean_dim(1, false, Kind::Float).sqrt()))
    }

    /// Whether this model gives `feature_distance`s (a run saved with its
    /// training photos' statistics), known before any input is answered.
    pub fn measures_distance(&self) -> bool {
        let row = if self.cfg.subject_norm { 3 } else { 1 };
        f64::try_from(self.feature_stats.get(row).max()).unwrap_or(0.0) > 0.0
    }

    fn head_ref(&self, h: HeadRef) -> Option<&Head> {
        match h {
            HeadRef::Member(0) => Some(&self.head),
            HeadRef::Member(k) => self.members.get(k - 1),
            HeadRef::Global => self.global.as_ref(),
        }
    }

    /// Training-mode logits of head `h` on pooled features `f` that need no
    /// gradient (a head-level cache's, or a trunk's that does not train), taken without autograd
    /// (`model::fused`): a leaf that requires a gradient, and the step for
    /// `fused_backward` once the loss's backward has given the leaf its
    /// gradient. The single-image head's logits come mapped to the raw
    /// labels, as `classify_global` gives them (the mapping on the leaf).
    /// `None` where autograd must train it: a head other than a bn head
    /// without a hidden layer, or other than float32 on the CPU.
    pub(crate) fn fused_forward(&self, h: HeadRef, f: &Tensor) -> Option<(Tensor, Tensor, FusedStep)> {
        let (z, step) = self.head_ref(h)?.fused_forward(f, self.cfg.dropout)?;
        let leaf = z.set_requires_grad(true);
        let logits = match (h, &self.global_to_raw) {
            (HeadRef::Global, Some((class, log_count))) => leaf.index_select(1, class) - log_count.to_kind(leaf.kind()),
            _ => leaf.shallow_clone(),
        };
        Some((logits, leaf, step))
    }

    /// Adds head `h`'s parameter gradients for `fused_forward`'s step, given its leaf's gradient `dz`.
    pub(crate) fn fused_backward(&self, h: HeadRef, step: &FusedStep, dz: &Tensor) {
        if let Some(head) = self.head_ref(h) {
            head.fused_backward(step, dz);
        }
    }

    /// The head on the feature blocks' outputs.
    pub fn head_forward(&self, maps: &[Tensor], train: bool) -> Tensor {
        self.classify(&self.pool(maps), train)
    }

    /// Continues from the output of the blocks before `from` to the logits
    /// (`from` = `Head`: `x` is the pooled features, as a head-level cache holds them).
    pub fn forward_from(&self, x: &Tensor, from: Block, train: bool) -> Tensor {
        self.classify(&self.pooled_from(x, from, train), train)
    }

    /// The head's input (pooled features) from the output of the blocks
    /// before `from` (`from` = `Head`: `x` already is the pooled features).
    pub(crate) fn pooled_from(&self, x: &Tensor, from: Block, train: bool) -> Tensor {
        self.pooled_tapped(x, from, train, None).0
    }

    /// `pooled_from`, also returning the output of block `tap` (a tensor of
    /// the autograd graph, for Grad-CAM's gradient with respect to it).
    pub(crate) fn pooled_tapped(&self, x: &Tensor, from: Block, train: bool, tap: Option<Block>) -> (Tensor, Option<Tensor>) {
        if from == Block::Head {
            return (x.shallow_clone(), None);
        }
        let wanted = |b: Block| self.cfg.features.contains(&b);
        let mut maps: Vec<Tensor> = Vec::with_capacity(self.cfg.features.len());
        let mut tapped = None;
        if from > Block::Conv1 && wanted(Block::from_index(from.index() - 1)) {
            // In the trunk's memory layout, as the walk would have produced it (pooling sums in that order).
            maps.push(channels_last(x));
        }
        // Through the last block the features or the tap read: blocks after it would be computed for nothing.
        let end = self.cfg.features.iter().copied().chain(tap).max().unwrap_or(Block::Conv5);
        let last = self.walk(x, from, Block::from_index(end.index() + 1), train, |b, t| {
            if Some(b) == tap {
                tapped = Some(t.shallow_clone());
            }
            if wanted(b) && b != Block::Conv5 {
                maps.push(t.shallow_clone());
            }
        });
        if from <= Block::Conv5 && wanted(Block::Conv5) {
            maps.push(last);
        }
        (self.pool(&maps), tapped)
    }

    /// Image batch (N,3,H,W), normalised → logits (N, classes).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_from(x, Block::Conv1, train)
    }

    /// Which block a variable belongs to, from its torchvision name.
    pub fn block_of_name(&self, name: &str) -> Option<Block> {
        if name.starts_with("head.") || name.starts_with("head_global.") || name.starts_with("head_member.") || name.starts_with("classifier.") {
            return Some(Block::Head);
        }
        let n: usize = name.strip_prefix("features.")?.split('.').next()?.parse().ok()?;
        let bn = self.cfg.bn_mode.has_bn();
        CONVS.iter().find(|c| c.idx(bn) == n || (bn && c.bn_idx + 1 == n)).map(|c| c.block)
    }

    /// Running statistics are buffers, never trained.
    pub fn is_buffer(name: &str) -> bool {
        name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked") || name == PERSON_VAR || name == FEATURE_STATS
    }

    /// Freezes every parameter before `block` (no gradient, and so not in
    /// the optimizer); `Head` freezes the whole trunk, `Conv1` nothing.
    pub fn set_trainable_from(&mut self, block: Block) {
        for (name, t) in self.vs.variables() {
            if Self::is_buffer(&name) {
                continue;
            }
            let b = self.block_of_name(&name).unwrap_or(Block::Head);
            let _ = t.set_requires_grad(b >= block);
        }
    }

    /// Trainable parameters grouped by block and by whether weight decay
    /// applies (conv/linear weights only: never biases or BN parameters).
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<ParamGroup> = Vec::new();
        for (name, t) in vars {
            if Self::is_buffer(&name) || !t.requires_grad() {
                continue;
            }
            let block = self.block_of_name(&name).unwrap_or(Block::Head);
            let head_bn = ["head.norm", "head.hidden_norm", "head_global.norm", "head_global.hidden_norm"].iter().any(|p| name.starts_with(p));
            let is_bn = head_bn || (t.dim() == 1 && self.is_bn_param(&name));
            let decay = t.dim() > 1 && !is_bn;
            match groups.iter_mut().find(|g| g.block == block && g.decay == decay) {
                Some(g) => g.params.push((name, t)),
                None => groups.push(ParamGroup { block, decay, params: vec![(name, t)] }),
            }
        }
        groups.sort_by_key(|g| (g.block, g.decay));
        groups
    }

    fn is_bn_param(&self, name: &str) -> bool {
        if !self.cfg.bn_mode.has_bn() {
            return false;
        }
        name.strip_prefix("features.")
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|n| CONVS.iter().any(|c| c.bn_idx + 1 == n))
    }

    /// AdaBN, exactly: layer by layer in order, sets each BN layer's running
    /// mean and (biased) variance to the per-channel statistics of its input
    /// over all `images`, then feeds the images on with the new statistics.
    /// Keeping every image's input to each layer would cost N × 12.8 MB at
    /// 224 px in block 1 (64 channels at full size), so the first two blocks
    /// are recomputed from their own input for each of their layers instead
    /// (N × 3.2 MB at most): 170 photos at 224 px peaked at 1.4 GB instead of
    /// 2.8 GB, in the same time on a 2-core CPU (123 s and 124 s).
    pub fn recalibrate(&mut self, images: &[Tensor]) -> Result<()> {
        self.recalibrate_with(images, 2)
    }

    /// [`Self::recalibrate`], recomputing the first `recompute_blocks` blocks
    /// from their input for each of their layers (0: every layer's input
    /// kept, the plain definition its test compares with).
    pub fn recalibrate_with(&mut self, images: &[Tensor], recompute_blocks: usize) -> Result<()> {
        if !self.cfg.bn_mode.has_bn() {
            return Err(Error::invalid(Setting::Bn, "recalibrate needs a VGG16-BN model (BN weights)"));
        }
        if images.is_empty() {
            return Err(Error::internal("BN recalibration needs at least one training image"));
        }
        // A BN model has a BN layer after every conv (checked above).
        let layer = |l: &ConvLayer, x: &Tensor| {
            let y = l.conv.forward(x);
            let y = l.bn.as_ref().map_or(y.shallow_clone(), |bn| bn.forward_t(&y, false)).relu();
            if l.spec.last_in_block {
                y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            } else {
                y
            }
        };
        let set = |l: &ConvLayer, m: Option<(i64, Tensor, Tensor)>| {
            if let (Some(bn), Some((n, mean, m2))) = (&l.bn, m) {
                bn.running_mean.shallow_clone().copy_(&mean.to_kind(Kind::Float));
                bn.running_var.shallow_clone().copy_(&(m2 / n as f64).to_kind(Kind::Float));
            }
        };
        tch::no_grad(|| {
            // Every image's input to the current block (recomputed blocks) or
            // layer, in chunks of 8: a chunk's temporaries at 224 px are then
            // ~100 MB a tensor, not the 400 MB of the callers' chunks of 32.
            let mut acts: Vec<Tensor> = images.iter().flat_map(|t| t.split(8, 0)).map(|t| t.to_device(self.device())).collect();
            let mut first = 0;
            for (b, last) in (0..self.layers.len()).filter(|&l| self.layers[l].spec.last_in_block).enumerate() {
                let block = &self.layers[first..=last];
                if b < recompute_blocks {
                    for j in 0..block.len() {
                        let mut m = None;
                        for a in &acts {
                            let x = block[..j].iter().fold(a.shallow_clone(), |x, l| layer(l, &x));
                            m = Some(merge_moments(m, &block[j].conv.forward(&x)));
                        }
                        set(&block[j], m);
                    }
                    for a in acts.iter_mut() {
                        *a = block.iter().fold(a.shallow_clone(), |x, l| layer(l, &x));
                    }
                } else {
                    for l in block {
                        let mut m = None;
                        for a in &acts {
                            m = Some(merge_moments(m, &l.conv.forward(a)));
                        }
                        set(l, m);
                        for a in acts.iter_mut() {
                            *a = layer(l, a);
                        }
                    }
                }
                first = last + 1;
            }
        });
        Ok(())
    }

    /// Precise BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021):
    /// sets each trunk BN layer's running mean and (biased) variance to the
    /// statistics of its input over all `images` with the current weights,
    /// in one streamed pass — each chunk normalised with its own batch
    /// statistics on the way, as in training — so that eval mode uses the
    /// population's statistics, not an exponential average of small, noisy
    /// batches taken while the weights moved. Memory: one chunk's forward
    /// (chunks of 16 at 224 px: ~200 MB at conv1).
    pub fn precise_bn(&mut self, images: &[Tensor]) -> Result<()> {
        if !self.cfg.bn_mode.has_bn() {
            return Err(Error::invalid(Setting::Bn, "precise BN statistics need a VGG16-BN model (BN weights)"));
        }
        if images.is_empty() {
            return Err(Error::internal("precise BN statistics need at least one training image"));
        }
        let device = self.device();
        tch::no_grad(|| {
            // Per layer: count, mean and sum of squared deviations, merged chunk by
            // chunk in double (Chan et al.): no double copy of a chunk's activations.
            let mut moments: Vec<Option<(i64, Tensor, Tensor)>> = self.layers.iter().filter(|l| l.bn.is_some()).map(|_| None).collect();
            for img in images {
                let mut x = img.to_device(device);
                let mut k = 0;
                for layer in &self.layers {
                    let mut y = layer.conv.forward(&x);
                    if let Some(bn) = &layer.bn {
                        moments[k] = Some(merge_moments(moments[k].take(), &y));
                        y = Tensor::batch_norm(&y, bn.ws.as_ref(), bn.bs.as_ref(), None::<&Tensor>, None::<&Tensor>, true, 0.0, BN_EPS, false);
                        k += 1;
                    }
                    y = y.relu();
                    if layer.spec.last_in_block {
                        y = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                    }
                    x = y;
                }
            }
            for (bn, (n, mean, m2)) in self.layers.iter().filter_map(|l| l.bn.as_ref()).zip(moments.into_iter().flatten()) {
                bn.running_mean.shallow_clone().copy_(&mean.to_kind(Kind::Float));
                bn.running_var.shallow_clone().copy_(&(m2 / n as f64).to_kind(Kind::Float));
            }
        });
        Ok(())
    }

    /// The BN layers' running statistics, in order (for tests and reports).
    pub fn bn_layers(&self) -> Vec<(Tensor, Tensor)> {
        self.layers.iter().filter_map(|l| l.bn.as_ref().map(|b| (b.running_mean.shallow_clone(), b.running_var.shallow_clone()))).collect()
    }

    /// For tests: each BN layer's input over `images` (conv output), with the
    /// layers before it run in eval mode.
    pub fn bn_inputs(&self, images: &Tensor) -> Vec<Tensor> {
        tch::no_grad(|| {
            let mut x = images.shallow_clone();
            let mut out = Vec::new();
            for layer in &self.layers {
                let y = layer.conv.forward(&x);
                if let Some(bn) = &layer.bn {
                    out.push(y.shallow_clone());
                    x = bn.forward_t(&y, false).relu();
                } else {
                    x = y.relu();
                }
                if layer.spec.last_in_block {
                    x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                }
            }
            out
        })
    }

    /// Named tensors in a stable (sorted) order, ready to save.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived table against torchvision's `vgg16()` / `vgg16_bn()` module lists.
    #[test]
    fn conv_table_matches_torchvision() {
        let plain: Vec<usize> = CONVS.iter().map(|c| c.plain_idx).collect();
        let bn: Vec<usize> = CONVS.iter().map(|c| c.bn_idx).collect();
        assert_eq!(plain, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
        assert_eq!(bn, [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]);
        let channels: Vec<i64> = CONVS.iter().map(|c| c.channels).collect();
        assert_eq!(channels, [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]);
        let ends: Vec<usize> = (0..13).filter(|&l| CONVS[l].last_in_block).collect();
        assert_eq!(ends, [1, 3, 6, 9, 12]);
        assert_eq!(CONVS[12].block, Block::Conv5);
    }

    #[test]
    fn bf16_support_is_read_from_the_flags_line_only() {
        let flags = |f: &str| format!("processor\t: 0\nmodel name\t: Xeon amx_bf16 bf16 in a name\nflags\t\t: fpu sse2 {f} avx512f\n");
        assert_eq!(CpuBf16::from_cpuinfo(&flags("amx_bf16 amx_tile")), CpuBf16::Amx);
        assert_eq!(CpuBf16::from_cpuinfo(&flags("amx_int8 amx_tile avx512_bf16")), CpuBf16::Native, "avx512_bf16 is not AMX");
        assert_eq!(CpuBf16::from_cpuinfo(&flags("avx avx2 fma")), CpuBf16::Emulated, "the model name's words do not count");
        let arm = |f: &str| format!("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd {f} atomics\n");
        assert_eq!(CpuBf16::from_cpuinfo(&arm("bf16 i8mm")), CpuBf16::Native);
        assert_eq!(CpuBf16::from_cpuinfo(&arm("sve")), CpuBf16::Emulated);
        assert_eq!(CpuBf16::from_cpuinfo(""), CpuBf16::Unknown);
        assert_eq!(CpuBf16::from_cpuinfo("processor\t: 0\nmodel name\t: something\n"), CpuBf16::Unknown);
    }

    /// A single-image head on the task's classes answers in the raw labels:
    /// summed, its raw softmax probabilities are its own; a cross-entropy on
    /// a raw target is the task's plus the log of the class's raw-label count.
    #[test]
    fn a_task_class_single_image_head_answers_in_raw_labels() {
        // Held while drawing: a test checking the generator's position must see no draw of this one.
        let _g = lock_generator();
        tch::manual_seed(3);
        let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Linear, 4);
        (cfg.width_div, cfg.subject_norm, cfg.single_to_task) = (16, true, vec![1, 0, 1, 1]);
        let m = Vgg16::new(&cfg, Device::Cpu).unwrap();
        let shape = |n: &str| m.named_tensors().into_iter().find(|(k, _)| k == n).map(|(_, t)| t.size());
        assert_eq!((shape("head.fc.bias"), shape("head_global.fc.bias")), (Some(vec![4]), Some(vec![2])));
        let f = Tensor::randn([5, cfg.pooled_width()], (Kind::Float, Device::Cpu));
        let raw = m.classify_global(&f, false).unwrap();
        assert_eq!(raw.size(), [5, 4]);
        let own = m.global.as_ref().unwrap().forward(&f, 0.0, false).softmax(1, Kind::Double);
        let summed = crate::eval::task_probs(&raw, &cfg.single_to_task, 2);
        assert!(f64::try_from((summed - &own).abs().max()).unwrap() < 1e-6);
        // Raw target 2 (task class 1, one of 3 raw labels): −log p_raw = −log p_task + ln 3.
        let lp = raw.to_kind(Kind::Double).log_softmax(1, Kind::Double);
        let d = -lp.double_value(&[0, 2]) + own.double_value(&[0, 1]).ln();
        assert!((d - 3f64.ln()).abs() < 1e-6, "{d}");
        // The map must cover every raw label.
        cfg.single_to_task = vec![1, 0];
        assert!(Vgg16::new(&cfg, Device::Cpu).is_err());
    }

    /// A subject-normalised model keeps its training people's within-person
    /// variance in its file, untrained; a file saved without it still loads.
    #[test]
    fn the_person_prior_is_saved_with_the_model_and_never_trained() {
        let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2);
        (cfg.width_div, cfg.subject_norm) = (16, true);
        let m = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        assert!(m.person_prior().is_none(), "none before a fit sets it");
        let var = Tensor::arange(cfg.pooled_width(), (Kind::Float, Device::Cpu)) + 0.5;
        m.set_person_prior(&var);
        assert!(m.person_prior().unwrap().equal(&var));
        let mut m = m;
        m.set_trainable_from(Block::Conv1);
        assert!(m.param_groups().iter().all(|g| g.params.iter().all(|(n, _)| n != PERSON_VAR)), "never in the optimizer");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        weights::save_atomic(&m.named_tensors(), &path).unwrap();
        let mut back = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        weights::load_checkpoint(&mut back, &path).unwrap();
        assert!(back.person_prior().unwrap().equal(&var));
        // A run saved before the prior was kept.
        let old: Vec<(String, Tensor)> = m.named_tensors().into_iter().filter(|(n, _)| n != PERSON_VAR).collect();
        weights::save_atomic(&old, &path).unwrap();
        let mut back = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        weights::load_checkpoint(&mut back, &path).unwrap();
        assert!(back.person_prior().is_none());
        // Models without person statistics have no such tensor.
        cfg.subject_norm = false;
        assert!(Vgg16::for_loading(&cfg, Device::Cpu).unwrap().named_tensors().iter().all(|(n, _)| n != PERSON_VAR));
    }

    /// The training photos' feature statistics go with the model, untrained,
    /// and say how far an input lies from them: about 1 for the photos
    /// themselves, each head's own; a file saved without them still loads
    /// and is not checked.
    #[test]
    fn feature_statistics_measure_how_far_an_input_lies_from_the_training_photos() {
        let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2);
        (cfg.width_div, cfg.subject_norm) = (16, true);
        let d = cfg.pooled_width();
        let m = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        let some = Tensor::ones([3, d], (Kind::Float, Device::Cpu));
        assert!(m.feature_distance(&some, false).is_none(), "none before a run sets them");
        // The main head's photos around 2 with spread 0.5; the single-image head's around 10 with spread 3.
        let (main, single) =
            seeded(5, || (Tensor::randn([400, d], (Kind::Float, Device::Cpu)) * 0.5 + 2.0, Tensor::randn([400, d], (Kind::Float, Device::Cpu)) * 3.0 + 10.0));
        m.set_feature_stats(&main, &single);
        let mean_sq = |t: Tensor| f64::try_from(t.square().mean(Kind::Float)).unwrap();
        // By construction the photos' squared distances average 1.
        assert!((mean_sq(m.feature_distance(&main, false).unwrap()) - 1.0).abs() < 1e-3);
        assert!((mean_sq(m.feature_distance(&single, true).unwrap()) - 1.0).abs() < 1e-3);
        // A row four spreads from the main photos' mean in every feature: 4 from them, and far closer to the single's.
        let far = Tensor::full([1, d], 4.0, (Kind::Float, Device::Cpu));
        let (dm, ds) = (m.feature_distance(&far, false).unwrap().double_value(&[0]), m.feature_distance(&far, true).unwrap().double_value(&[0]));
        assert!((dm - 4.0).abs() < 0.2 && (ds - 2.0).abs() < 0.2, "{dm} {ds}");
        let mut m = m;
        m.set_trainable_from(Block::Conv1);
        assert!(m.param_groups().iter().all(|g| g.params.iter().all(|(n, _)| n != FEATURE_STATS)), "never in the optimizer");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        weights::save_atomic(&m.named_tensors(), &path).unwrap();
        let mut back = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        weights::load_checkpoint(&mut back, &path).unwrap();
        assert_eq!(back.feature_distance(&far, false).unwrap().double_value(&[0]), dm);
        // A run saved before the statistics were kept.
        let old: Vec<(String, Tensor)> = m.named_tensors().into_iter().filter(|(n, _)| n != FEATURE_STATS).collect();
        weights::save_atomic(&old, &path).unwrap();
        let mut back = Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
        weights::load_checkpoint(&mut back, &path).unwrap();
        assert!(back.feature_distance(&far, false).is_none() && back.feature_distance(&far, true).is_none());
    }

    /// Folding an ensemble gives exactly the average of its members'
    /// evaluation-mode logits, and leaves a model with the plain variables.
    #[test]
    fn folded_members_equal_the_average_of_their_logits() {
        // Held while drawing: a test checking the generator's position must see no draw of this one.
        let _g = lock_generator();
        for head in [HeadKind::Bn, HeadKind::Linear] {
            tch::manual_seed(5);
            let mut cfg = ModelConfig::new(BnMode::Drop, head, 3);
            cfg.width_div = 16;
            let plain: Vec<String> = Vgg16::new(&cfg, Device::Cpu).unwrap().named_tensors().into_iter().map(|(n, _)| n).collect();
            let mut m = Vgg16::new(&cfg, Device::Cpu).unwrap();
            m.set_trainable_from(Block::Head);
            m.add_members(2).unwrap();
            assert_eq!(m.member_count(), 3);
            // Trained-looking BatchNorm statistics and affine parameters, different per member.
            tch::no_grad(|| {
                for (n, t) in m.vs.variables() {
                    if n.contains("norm.") {
                        let r = Tensor::rand_like(&t);
                        t.shallow_clone().copy_(&if n.ends_with("running_var") { r + 0.5 } else { r * 2.0 - 1.0 });
                    }
                }
            });
            let width = cfg.pooled_width();
            let f = Tensor::randn([6, width], (Kind::Float, Device::Cpu));
            let members: Vec<Tensor> = (0..3).map(|k| m.classify_member(k, &f, false)).collect();
            let mean = (&members[0] + &members[1] + &members[2]) / 3.0;
            assert!(f64::try_from((&members[0] - &members[1]).abs().max()).unwrap() > 1e-3, "the members differ");
            let before = m.classify(&f, false);
            m.fold_members().unwrap();
            let after = m.classify(&f, false);
            assert_eq!(m.member_count(), 1);
            let diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
            assert!(diff(&before, &mean) < 1e-6, "{head:?}: eval logits are the members' average");
            assert!(diff(&after, &mean) < 1e-4, "{head:?}: folded {}", diff(&after, &mean));
            assert_eq!(m.named_tensors().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), plain, "{head:?}");
            let vars = m.vs.variables();
            assert!(!vars["features.28.weight"].requires_grad() && vars["head.fc.weight"].requires_grad(), "the trunk stays frozen");
        }
        let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Bn, 3);
        (cfg.width_div, cfg.hidden) = (16, 8);
        let err = Vgg16::new(&cfg, Device::Cpu).unwrap().add_members(1).unwrap_err().to_string();
        assert!(err.contains("members") && err.contains("hidden layer"), "{err}");
    }

    /// With a grid, each block's pooled features are its global average (and
    /// maximum, bn head) followed by the averages of the grid's cells,
    /// channel-major, cells row by row, as wide as `pooled_width` says; cells
    /// that split the map evenly are the plain means of their pixels.
    #[test]
    fn a_grid_averages_each_cell_of_each_block() {
        // Held while drawing: a test checking the generator's position must see no draw of this one.
        let _g = lock_generator();
        for (head, rows, cols) in [(HeadKind::Bn, 2, 2), (HeadKind::Linear, 3, 1), (HeadKind::Bn, 2, 1), (HeadKind::Bn, 1, 1)] {
            let mut cfg = ModelConfig::new(BnMode::Drop, head, 2);
            (cfg.width_div, cfg.pool_grid, cfg.features) = (64, PoolGrid { rows, cols }, vec![Block::Conv4, Block::Conv5]);
            let m = Vgg16::new(&cfg, Device::Cpu).unwrap();
            // conv4 (8 channels, 6×6) and conv5 (8 channels, 6×4: not square).
            let maps = [Tensor::randn([3, 8, 6, 6], (Kind::Float, Device::Cpu)), Tensor::randn([3, 8, 6, 4], (Kind::Float, Device::Cpu))];
            let f = m.pool(&maps);
            assert_eq!(f.size(), [3, cfg.pooled_width()]);
            let cells = if rows * cols > 1 { rows * cols } else { 0 };
            assert_eq!(cfg.pooled_width(), (if head == HeadKind::Bn { 2 } else { 1 } + cells) * 16);
            let close = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap() < 1e-5;
            let mut at = 0;
            for map in &maps {
                assert!(close(&f.narrow(1, at, 8), &map.mean_dim(&[2i64, 3][..], false, Kind::Float)), "global average first");
                at += 8;
                if head == HeadKind::Bn {
                    assert!(close(&f.narrow(1, at, 8), &map.amax(&[2i64, 3][..], false)), "then the maximum");
                    at += 8;
                }
                if cells > 0 {
                    let (h, w) = (6 / rows, map.size()[3] / cols);
                    let got = f.narrow(1, at, 8 * cells).view([3, 8, cells]);
                    for (k, (i, j)) in (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j))).enumerate() {
                        let want = map.narrow(2, i * h, h).narrow(3, j * w, w).mean_dim(&[2i64, 3][..], false, Kind::Float);
                        assert!(close(&got.select(2, k as i64), &want), "cell ({i}, {j}) of {rows}x{cols}");
                    }
                    at += 8 * cells;
                }
            }
            assert_eq!(at, cfg.pooled_width(), "nothing else in the head's input");
        }
        assert_eq!(PoolGrid::parse("2x2").unwrap(), PoolGrid { rows: 2, cols: 2 });
        assert_eq!(PoolGrid::parse(" 3×1 ").unwrap().to_string(), "3x1");
        for bad in ["2", "0x2", "8x1", "2x", "axb"] {
            assert!(PoolGrid::parse(bad).unwrap_err().to_string().contains("expected ROWSxCOLS"), "{bad}");
        }
    }

    /// Features that end before conv5 are what the head reads: each wanted
    /// block's pooled output and nothing after it (the conv5 output once
    /// came along and the head, sized by `pooled_width`, refused it), and a
    /// Grad-CAM tap past the last feature block still reaches its block.
    #[test]
    fn features_without_conv5_are_the_head_s_input() {
        let _g = lock_generator();
        tch::manual_seed(3);
        for features in [vec![Block::Conv4], vec![Block::Conv3], vec![Block::Conv2, Block::Conv4], vec![Block::Conv4, Block::Conv5]] {
            let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2);
            (cfg.width_div, cfg.features) = (16, features.clone());
            let m = Vgg16::new(&cfg, Device::Cpu).unwrap();
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            let f = m.pooled_from(&x, Block::Conv1, false);
            assert_eq!(f.size(), [2, cfg.pooled_width()], "{features:?}");
            assert_eq!(m.forward_t(&x, false).size(), [2, 2], "{features:?}");
            // The same features from each wanted block's own output.
            let maps: Vec<Tensor> = features.iter().map(|&b| m.pooled_tapped(&x, Block::Conv1, false, Some(b)).1.unwrap()).collect();
            assert!(f64::try_from((m.pool(&maps) - &f).abs().max()).unwrap() < 1e-5, "{features:?}");
            let (g, tapped) = m.pooled_tapped(&x, Block::Conv1, false, Some(Block::Conv5));
            assert!(tapped.is_some() && f64::try_from((g - &f).abs().max()).unwrap() < 1e-5, "{features:?}: a tap past the features changes nothing");
        }
    }

    /// The bn heads' training step without autograd (`fused_forward` /
    /// `fused_backward`, as the trainer takes it on cached features) against
    /// autograd's: the main head, two ensemble members and the single-image
    /// head on the task's classes (its logits mapped to the raw labels), with
    /// dropout drawn from one seeded stream in the same order, give the same
    /// logits, parameter gradients and running statistics.
    #[test]
    fn the_heads_fused_step_draws_and_trains_as_autograds() {
        let _g = lock_generator();
        tch::manual_seed(11);
        let mut cfg = ModelConfig::new(BnMode::Drop, HeadKind::Bn, 3);
        (cfg.width_div, cfg.subject_norm, cfg.single_to_task, cfg.dropout) = (64, true, vec![0, 1, 1], 0.5);
        let mut a = Vgg16::new(&cfg, Device::Cpu).unwrap();
        a.add_members(2).unwrap();
        let mut f = Vgg16::new(&cfg, Device::Cpu).unwrap();
        f.add_members(2).unwrap();
        f.vs.copy(&a.vs).unwrap();
        let d = cfg.pooled_width();
        let xs: Vec<Tensor> = (0..4).map(|_| Tensor::randn([6, d], (Kind::Float, Device::Cpu))).collect();
        let r: Vec<Tensor> = (0..4).map(|_| Tensor::randn([6, 3], (Kind::Float, Device::Cpu))).collect();
        let _own = own_stream();
        seed_epoch(9);
        let mut want = Vec::new();
        for k in 0..3 {
            want.push(a.classify_member(k, &xs[k], true));
            if k == 0 {
                want.push(a.classify_global(&xs[3], true).unwrap());
            }
        }
        seed_epoch(9);
        let (mut got, mut steps) = (Vec::new(), Vec::new());
        for k in 0..3 {
            for (h, x) in std::iter::once((HeadRef::Member(k), &xs[k])).chain((k == 0).then_some((HeadRef::Global, &xs[3]))) {
                let (logits, leaf, step) = f.fused_forward(h, x).expect("a bn head on float32 CPU features takes the fused step");
                got.push(logits);
                steps.push((h, leaf, step));
            }
        }
        let order = [0, 3, 1, 2]; // want/got hold member 0, the single-image head, members 1 and 2
        let loss = |z: &[Tensor]| z.iter().zip(order).map(|(z, i)| (z * &r[i]).sum(Kind::Float)).fold(Tensor::from(0f32), |s, t| s + t);
        for (w, g) in want.iter().zip(&got) {
            assert!(f64::try_from((w - g).abs().max()).unwrap() < 1e-4, "logits differ");
        }
        loss(&want).backward();
        loss(&got).backward();
        for (h, leaf, step) in &steps {
            f.fused_backward(*h, step, &leaf.grad());
        }
        let (va, vf) = (a.vs.variables(), f.vs.variables());
        let mut grads = 0;
        for (name, t) in &va {
            let u = &vf[name];
            assert!(f64::try_from((t - u).abs().max()).unwrap() < 1e-4, "{name} differs");
            if t.requires_grad() && t.grad().defined() {
                let diff = f64::try_from((t.grad() - u.grad()).abs().max()).unwrap();
                assert!(diff < 1e-4, "the gradient of {name} differs by {diff}");
                grads += 1;
            }
        }
        assert_eq!(grads, 4 * 4, "γ, β, W and b of four heads");
    }

    /// The CPU dropout keeps each element with probability 1 − p, scales the
    /// kept ones by 1/(1 − p), draws a new mask per call, repeats its masks
    /// under the same seed, and is the identity in evaluation mode;
    /// gradients flow through the kept elements only.
    #[test]
    fn dropout_masks_are_fair_seeded_and_scaled() {
        let x = Tensor::ones([64, 1000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        for p in [0.5, 0.2] {
            // This thread's own stream: libtorch's generator is shared with the tests running beside this one.
            let _own = own_stream();
            seed_epoch(3);
            let a = dropout(&x, p, true);
            let b = dropout(&x, p, true);
            seed_epoch(3);
            let a2 = dropout(&x, p, true);
            let kept = f64::try_from(a.gt(0.0).to_kind(Kind::Float).mean(Kind::Float)).unwrap();
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
            let max = f64::try_from(a.max()).unwrap();
            assert!((max - 1.0 / (1.0 - p)).abs() < 1e-3, "p {p}: kept elements scaled to {max}");
            assert!((f64::try_from(a.mean(Kind::Float)).unwrap() - 1.0).abs() < 0.02, "the mean is kept");
            assert!(a.equal(&a2), "the same seed, the same mask");
            assert!(!a.equal(&b), "a new mask per call");
        }
        assert!(dropout(&x, 0.5, false).equal(&x) && dropout(&x, 0.0, true).equal(&x));
        let y = dropout(&x, 0.5, true);
        y.sum(Kind::Float).backward();
        assert!(x.grad().equal(&y.detach()), "the gradient is the mask");
    }

    /// A network built to be overwritten (an ensemble's folding, a saved
    /// model's loading) draws nothing from libtorch's generator: cv's folds
    /// side by side seed it for their models' starts (`seeded`) while another
    /// fold folds its ensemble, and a draw in between changed their starts.
    #[test]
    fn building_a_network_to_load_into_draws_nothing_from_libtorchs_generator() {
        for (bn, head) in [(BnMode::Drop, HeadKind::Bn), (BnMode::Train, HeadKind::Bn), (BnMode::Drop, HeadKind::Linear)] {
            let cfg = ModelConfig { hidden: 8, width_div: 16, subject_norm: head == HeadKind::Bn, ..ModelConfig::new(bn, head, 2) };
            let (plain, after) = seeded(11, || {
                let plain = Tensor::rand([8], (Kind::Float, Device::Cpu));
                tch::manual_seed(11);
                Vgg16::for_loading(&cfg, Device::Cpu).unwrap();
                (plain, Tensor::rand([8], (Kind::Float, Device::Cpu)))
            });
            assert!(plain.equal(&after), "{bn:?} {head:?}: building to load drew from the generator");
        }
        // (A random start does draw: the check above can see a draw.)
        let cfg = ModelConfig { width_div: 16, ..ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2) };
        let (plain, after) = seeded(11, || {
            let plain = Tensor::rand([8], (Kind::Float, Device::Cpu));
            tch::manual_seed(11);
            Vgg16::new(&cfg, Device::Cpu).unwrap();
            (plain, Tensor::rand([8], (Kind::Float, Device::Cpu)))
        });
        assert!(!plain.equal(&after));
    }

    #[test]
    fn a_threads_dropout_stream_ignores_libtorchs_generator_and_other_threads() {
        // Seeded streams on threads of their own, with and without libtorch's generator reseeded and drawn from between the masks.
        let masks = |seed: u64, disturb: bool| {
            std::thread::spawn(move || {
                let x = Tensor::ones([16, 100], (Kind::Float, Device::Cpu));
                let disturb = || {
                    if disturb {
                        let _drawn = seeded(99, || Tensor::randint(9, [100], (Kind::Int64, Device::Cpu)));
                    }
                };
                let _own = own_stream();
                seed_epoch(seed);
                disturb();
                let a = dropout(&x, 0.5, true);
                disturb();
                let b = dropout(&x, 0.5, true);
                (Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(b.flatten(0, -1)).unwrap())
            })
        };
        let (one, two, other) = (masks(4, false), masks(4, true), masks(5, false));
        let (one, two, other) = (one.join().unwrap(), two.join().unwrap(), other.join().unwrap());
        assert_eq!(one, two, "the same seed, the same masks, whatever else draws");
        assert!(one.0 != one.1 && one.0 != other.0, "a new mask per call and per seed");
    }
}

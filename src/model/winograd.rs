//! Winograd F(4×4, 3×3) convolution (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016) for the trunk's frozen passes on a
//! CPU. Each 4×4 output tile of a 3×3, stride-1, padding-1 convolution costs
//! 36 multiplications per channel pair instead of 144, done as 36 batched
//! matrix products; the tile transforms around them are two small dense
//! products and two copies. In VGG16's blocks conv3–conv5 (≥ 128 channels,
//! ≤ 56 px at 224 px input) that saves far more than the transforms cost;
//! in conv1–conv2 it does not, so those keep libtorch's direct convolution
//! (`Vgg16::frozen` decides). Results equal the direct convolution's to
//! float32 rounding (the pretrained trunk's conv5 output at 224 px: ~1e-6
//! relative).

use tch::{Device, Kind, Tensor};

/// Input transform Bᵀ (6×6).
const BT: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// Filter transform G (6×3).
const G: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Output transform Aᵀ (4×6).
const AT: [[f32; 6]; 4] = [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 2.0, -2.0, 0.0], [0.0, 1.0, 1.0, 4.0, 4.0, 0.0], [0.0, 1.0, -1.0, 8.0, -8.0, 1.0]];

/// Output tile side.
const M: i64 = 4;

/// M ⊗ M as a row-major (r²)×(c²) matrix: the 2-D transform X ↦ M X Mᵀ acting on a flattened (row-major) tile.
fn kron<const R: usize, const C: usize>(m: &[[f32; C]; R], device: Device) -> Tensor {
    let mut k = Vec::with_capacity(R * R * C * C);
    for i in 0..R {
        for j in 0..R {
            for p in 0..C {
                for q in 0..C {
                    k.push(m[i][p] * m[j][q]);
                }
            }
        }
    }
    Tensor::from_slice(&k).view([(R * R) as i64, (C * C) as i64]).to_device(device)
}

/// A conv layer's weights in the Winograd domain, with the transforms its
/// forward applies; made at most once per frozen pass (`Vgg16::frozen`).
pub(crate) struct Winograd {
    /// G w Gᵀ per channel pair: (36, C_in, C_out).
    u: Tensor,
    bias: Option<Tensor>,
    /// Bᵀ ⊗ Bᵀ (36×36) and Aᵀ ⊗ Aᵀ (16×36).
    bk: Tensor,
    ak: Tensor,
}

impl Winograd {
    /// From float32 weights (C_out, C_in, 3, 3) and bias (C_out).
    pub(crate) fn new(w: &Tensor, bias: Option<&Tensor>) -> Winograd {
        let device = w.device();
        let (c_out, c_in) = (w.size()[0], w.size()[1]);
        // (G ⊗ G) · vec(w) per channel pair, as one product: (36, 9) × (9, C_in·C_out) → (36, C_in, C_out).
        let w = w.to_kind(Kind::Float).permute([2, 3, 1, 0]).reshape([9, c_in * c_out]);
        let u = kron(&G, device).matmul(&w).view([36, c_in, c_out]);
        Winograd { u, bias: bias.map(Tensor::shallow_clone), bk: kron(&BT, device), ak: kron(&AT, device) }
    }

    /// The same tensors, shared.
    pub(crate) fn shallow(&self) -> Winograd {
        Winograd { u: self.u.shallow_clone(), bias: self.bias.as_ref().map(Tensor::shallow_clone), bk: self.bk.shallow_clone(), ak: self.ak.shallow_clone() }
    }

    /// The convolution (3×3, stride 1, padding 1) of `x` (N, C_in, H, W),
    /// returned in channels-last layout as the trunk keeps its activations.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let [n, _, h, w] = x.size()[..] else { unreachable!("a conv layer's input is 4-D") };
        let (c_in, c_out) = (self.u.size()[1], self.u.size()[2]);
        let (th, tw) = ((h + M - 1) / M, (w + M - 1) / M);
        let tiles = n * th * tw;
        // NHWC (free when x is channels-last), zero-padded by 1 and up to whole tiles.
        let xp = x.permute([0, 2, 3, 1]).contiguous().constant_pad_nd([0, 0, 1, 1 + tw * M - w, 1, 1 + th * M - h]);
        // Overlapping 6×6 windows at stride 4, gathered as (36, tiles·C_in) with channels innermost.
        let d = xp.unfold(1, M + 2, M).unfold(2, M + 2, M).permute([4, 5, 0, 1, 2, 3]).reshape([36, tiles * c_in]);
        let v = self.bk.matmul(&d).view([36, tiles, c_in]);
        let m = v.bmm(&self.u);
        let y = self.ak.matmul(&m.view([36, tiles * c_out])).view([M, M, n, th, tw, c_out]).permute([2, 3, 0, 4, 1, 5]).reshape([n, th * M, tw * M, c_out]);
        let mut y = if th * M == h && tw * M == w { y } else { y.narrow(1, 0, h).narrow(2, 0, w) };
        if let Some(b) = &self.bias {
            y += b;
        }
        y.permute([0, 3, 1, 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
    }

    #[test]
    fn equals_the_direct_convolution_on_whole_and_partial_tiles() {
        tch::manual_seed(3);
        // 8×8: whole tiles; 7×10: partial tiles in both directions; 1×1: a single padded pixel.
        for (n, c_in, c_out, h, w) in [(2, 5, 3, 8, 8), (3, 4, 6, 7, 10), (1, 2, 2, 1, 1)] {
            let x = Tensor::randn([n, c_in, h, w], (Kind::Float, Device::Cpu));
            let wt = Tensor::randn([c_out, c_in, 3, 3], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([c_out], (Kind::Float, Device::Cpu));
            let direct = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1);
            let y = Winograd::new(&wt, Some(&b)).forward(&x);
            assert_eq!(y.size(), direct.size());
            let e = rel_err(&y, &direct);
            assert!(e < 1e-5, "{n}×{c_in}→{c_out} at {h}×{w}: relative error {e}");
            // A channels-last input gives the same, and the output is channels-last.
            let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            let y2 = Winograd::new(&wt, None).forward(&cl);
            assert!(rel_err(&(y2 + b.view([1, -1, 1, 1])), &direct) < 1e-5);
            assert_eq!(y.stride()[1], 1, "channels-last output");
        }
    }
}

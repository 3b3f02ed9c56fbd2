//! Winograd F(4×4, 3×3) convolution (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016) for the trunk's frozen passes on a
//! CPU. Each 4×4 output tile of a 3×3, stride-1, padding-1 convolution costs
//! 36 multiplications per channel pair instead of 144, done as 36 matrix
//! products (MKL's). The tile transforms around them are a few additions
//! per value, written here as loops over the channels (contiguous in the
//! trunk's channels-last activations) that the compiler vectorises, and the
//! tiles go through in blocks small enough to stay in cache from the input
//! transform to the output one. The output transform also does the ReLU and
//! the 2×2 max-pool that follow a layer without BatchNorm, so the full-size
//! output is never written.
//!
//! An earlier version did the transforms as dense products over the whole
//! batch with libtorch's copies around them: worth it in conv3–conv5 alone.
//! Done this way every layer but the first (three input channels) gains,
//! conv1_2 included (per layer at batch 2, 224 px, ReLU and pool included,
//! 2-core AMX Xeon: 1.6–2.5× the direct convolution in conv1_2–conv2_2,
//! 1.4–3.1× in conv3–conv5; the first layer 0.24×). Results equal the direct
//! convolution's to float32 rounding (the pretrained trunk's conv5 output at
//! 224 px: ~2e-6 relative).

use super::raw::{values, values_mut};
use tch::{Device, Kind, Tensor};

/// Filter transform G (6×3).
const G: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

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

/// A conv layer's weights in the Winograd domain; made at most once per
/// frozen pass (`Vgg16::frozen`).
pub(crate) struct Winograd {
    /// G w Gᵀ per channel pair: (36, C_in, C_out).
    u: Tensor,
    /// The bias (C_out) as numbers, added in the output transform.
    bias: Option<Vec<f32>>,
}

impl Winograd {
    /// From float32 weights (C_out, C_in, 3, 3) and bias (C_out).
    pub(crate) fn new(w: &Tensor, bias: Option<&Tensor>) -> Winograd {
        let device = w.device();
        let (c_out, c_in) = (w.size()[0], w.size()[1]);
        // (G ⊗ G) · vec(w) per channel pair, as one product: (36, 9) × (9, C_in·C_out) → (36, C_in, C_out).
        let w = w.to_kind(Kind::Float).permute([2, 3, 1, 0]).reshape([9, c_in * c_out]);
        let u = kron(&G, device).matmul(&w).view([36, c_in, c_out]).contiguous();
        let bias = bias.map(|b| values(&b.to_kind(Kind::Float).to_device(Device::Cpu).contiguous()).to_vec());
        Winograd { u, bias }
    }

    /// The same tensors, shared.
    pub(crate) fn shallow(&self) -> Winograd {
        Winograd { u: self.u.shallow_clone(), bias: self.bias.clone() }
    }

    /// The convolution (3×3, stride 1, padding 1) of `x` (N, C_in, H, W, on
    /// the CPU in float32), returned in channels-last layout as the trunk
    /// keeps its activations.
    ///
    /// The tiles go through in blocks of `BLOCK`, so that a block's
    /// transformed tiles stay in cache from the input transform through the
    /// 36 products to the output transform; the blocks are shared among
    /// libtorch's threads, each running its products on one.
    pub(crate) fn forward(&self, x: &Tensor, post: Post) -> Tensor {
        let [n, _, h, w] = x.size()[..] else { unreachable!("a conv layer's input is 4-D") };
        let (c_in, c_out) = (self.u.size()[1] as usize, self.u.size()[2] as usize);
        let (th, tw) = ((h + M - 1) / M, (w + M - 1) / M);
        let geo = Geo { h: h as usize, w: w as usize, th: th as usize, tw: tw as usize, c_in, c_out, bias: self.bias.as_deref(), post };
        let tiles = n as usize * geo.th * geo.tw;
        // NHWC (free when x is channels-last).
        let xs = x.to_kind(Kind::Float).permute([0, 2, 3, 1]).contiguous();
        let (oh, ow) = if post.pool { (h / 2, w / 2) } else { (h, w) };
        let y = Tensor::empty([n, oh, ow, c_out as i64], (Kind::Float, Device::Cpu));
        let own = tch::get_num_threads().max(1);
        let block = BLOCK.min(tiles.div_ceil(own as usize)).max(1);
        let blocks = tiles.div_ceil(block);
        let threads = (own as usize).min(blocks);
        let input = values(&xs);
        let out = Out(y.data_ptr() as *mut f32);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = |u: Tensor| {
            let v = Tensor::empty([(36 * block * c_in) as i64], (Kind::Float, Device::Cpu));
            let m = Tensor::empty([(36 * block * c_out) as i64], (Kind::Float, Device::Cpu));
            let mut scratch = vec![0f32; 36 * c_in.max(c_out)];
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= blocks {
                    break;
                }
                let (t0, bt) = (b * block, block.min(tiles - b * block));
                let vb = v.narrow(0, 0, (36 * bt * c_in) as i64).view([36, bt as i64, c_in as i64]);
                let mb = m.narrow(0, 0, (36 * bt * c_out) as i64).view([36, bt as i64, c_out as i64]);
                transform_in_wide(input, &geo, t0, bt, values_mut(&vb), &mut scratch);
                let _ = vb.bmm_out(&mb, &u);
                transform_out_wide(values(&mb), &geo, t0, bt, &out, &mut scratch);
            }
        };
        if threads < 2 {
            work(self.u.shallow_clone());
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let u = self.u.shallow_clone();
                    let work = &work;
                    s.spawn(move || {
                        // One thread each: libtorch's own threads would otherwise share the cores again.
                        tch::set_num_threads(1);
                        work(u)
                    });
                }
            });
            // As cv's folds do: libtorch's thread setting is partly process-wide.
            tch::set_num_threads(own);
        }
        y.permute([0, 3, 1, 2])
    }
}

/// Tiles per block: enough rows for the 36 products to run near MKL's
/// peak, few enough that a block's transformed tiles (36 × 96 × C values)
/// mostly stay in cache between the transforms and the products (measured
/// at 32, 64, 96 and 128 on the 2-core AVX2 EPYC: 64–128 alike, 32 slower
/// at 64 and 512 channels).
const BLOCK: usize = 96;

/// What follows the convolution in the same pass: ReLU, then a 2×2 max-pool
/// (stride 2, rounding down as VGG's pools do).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Post {
    pub relu: bool,
    pub pool: bool,
}

/// The layer's shape (input H × W, tiles per column and row, channels) and
/// what its output transform adds.
struct Geo<'a> {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    c_in: usize,
    c_out: usize,
    bias: Option<&'a [f32]>,
    post: Post,
}

/// The output's elements, written by the workers at disjoint tiles.
struct Out(*mut f32);
// SAFETY: each worker writes only its own blocks' pixels (`Winograd::forward`).
unsafe impl Sync for Out {}

/// `transform_in`, compiled for AVX2 where the CPU has it (8 lanes instead
/// of SSE2's 4). The transforms are element-wise over channels with no fused
/// multiply-add, so both builds give the same numbers.
fn transform_in_wide(x: &[f32], g: &Geo, t0: usize, bt: usize, v: &mut [f32], scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32], g: &Geo, t0: usize, bt: usize, v: &mut [f32], scratch: &mut [f32]) {
            transform_in(x, g, t0, bt, v, scratch)
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(x, g, t0, bt, v, scratch) };
    }
    transform_in(x, g, t0, bt, v, scratch)
}

/// `transform_out`, compiled for AVX2 where the CPU has it (as `transform_in_wide`).
fn transform_out_wide(m: &[f32], g: &Geo, t0: usize, bt: usize, out: &Out, scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(m: &[f32], g: &Geo, t0: usize, bt: usize, out: &Out, scratch: &mut [f32]) {
            transform_out(m, g, t0, bt, out, scratch)
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(m, g, t0, bt, out, scratch) };
    }
    transform_out(m, g, t0, bt, out, scratch)
}

/// Row `k` of Bᵀ applied to six channel vectors: `o = Σ_j Bᵀ[k][j] d_j`.
#[inline(always)]
fn bt_row(k: usize, d: [&[f32]; 6], o: &mut [f32]) {
    let n = o.len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let o = &mut o[..n];
    match k {
        0 => (0..n).for_each(|c| o[c] = 4.0 * d0[c] - 5.0 * d2[c] + d4[c]),
        1 => (0..n).for_each(|c| o[c] = -4.0 * d1[c] - 4.0 * d2[c] + d3[c] + d4[c]),
        2 => (0..n).for_each(|c| o[c] = 4.0 * d1[c] - 4.0 * d2[c] - d3[c] + d4[c]),
        3 => (0..n).for_each(|c| o[c] = -2.0 * d1[c] - d2[c] + 2.0 * d3[c] + d4[c]),
        4 => (0..n).for_each(|c| o[c] = 2.0 * d1[c] - d2[c] - 2.0 * d3[c] + d4[c]),
        _ => (0..n).for_each(|c| o[c] = 4.0 * d1[c] - 5.0 * d3[c] + d5[c]),
    }
}

/// Row `k` of Aᵀ applied to six channel vectors, plus `bias`.
#[inline(always)]
fn at_row(k: usize, m: [&[f32]; 6], bias: Option<&[f32]>, o: &mut [f32]) {
    let n = o.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let o = &mut o[..n];
    match k {
        0 => (0..n).for_each(|c| o[c] = m0[c] + m1[c] + m2[c] + m3[c] + m4[c]),
        1 => (0..n).for_each(|c| o[c] = m1[c] - m2[c] + 2.0 * m3[c] - 2.0 * m4[c]),
        2 => (0..n).for_each(|c| o[c] = m1[c] + m2[c] + 4.0 * m3[c] + 4.0 * m4[c]),
        _ => (0..n).for_each(|c| o[c] = m1[c] - m2[c] + 8.0 * m3[c] - 8.0 * m4[c] + m5[c]),
    }
    if let Some(b) = bias {
        let b = &b[..n];
        (0..n).for_each(|c| o[c] += b[c]);
    }
}

/// Bᵀ d B of tiles `t0..t0 + bt` of the NHWC input `x`, written as the
/// block's (36, bt, C_in) matrix `v`. `scratch` holds 36 channel vectors.
#[inline(always)]
fn transform_in(x: &[f32], g: &Geo, t0: usize, bt: usize, v: &mut [f32], scratch: &mut [f32]) {
    let c = g.c_in;
    let zeros = vec![0f32; c];
    let per_image = g.th * g.tw;
    for tt in 0..bt {
        let t = t0 + tt;
        let (img, ty, tx) = (t / per_image, t % per_image / g.tw, t % g.tw);
        let pixel = |i: usize, j: usize| -> &[f32] {
            // The 6×6 window starts one pixel above and left of the 4×4 output tile (the zero padding).
            let (y, xcol) = ((ty * 4 + i).wrapping_sub(1), (tx * 4 + j).wrapping_sub(1));
            if y < g.h && xcol < g.w {
                let at = ((img * g.h + y) * g.w + xcol) * c;
                &x[at..at + c]
            } else {
                &zeros
            }
        };
        // Rows: scratch[i·6 + k] = Σ_j Bᵀ[k][j] d[i][j].
        for i in 0..6 {
            let d = [pixel(i, 0), pixel(i, 1), pixel(i, 2), pixel(i, 3), pixel(i, 4), pixel(i, 5)];
            for k in 0..6 {
                bt_row(k, d, &mut scratch[(i * 6 + k) * c..][..c]);
            }
        }
        // Columns: v[(k'·6 + k), tt] = Σ_i Bᵀ[k'][i] scratch[i·6 + k].
        for k in 0..6 {
            let s = |i: usize| &scratch[(i * 6 + k) * c..][..c];
            let col = [s(0), s(1), s(2), s(3), s(4), s(5)];
            for kp in 0..6 {
                bt_row(kp, col, &mut v[((kp * 6 + k) * bt + tt) * c..][..c]);
            }
        }
    }
}

/// Aᵀ m A (+ bias) of the block's products `m` (36, bt, C_out) for tiles
/// `t0..t0 + bt`, then `post`, written into the NHWC output (the parts
/// inside it). A tile starts at a multiple of 4, so it holds whole 2×2
/// pooling windows.
#[inline(always)]
fn transform_out(m: &[f32], g: &Geo, t0: usize, bt: usize, out: &Out, scratch: &mut [f32]) {
    let (bias, post) = (g.bias, g.post);
    let c = g.c_out;
    let per_image = g.th * g.tw;
    // The tile's 16 output pixels, row-major.
    let mut tile = vec![0f32; 16 * c];
    let (oh, ow) = if post.pool { (g.h / 2, g.w / 2) } else { (g.h, g.w) };
    for tt in 0..bt {
        let t = t0 + tt;
        let (img, ty, tx) = (t / per_image, t % per_image / g.tw, t % g.tw);
        // Rows: scratch[i·4 + j] = Σ_k Aᵀ[j][k] m[i·6 + k].
        for i in 0..6 {
            let p = |k: usize| &m[((i * 6 + k) * bt + tt) * c..][..c];
            let row = [p(0), p(1), p(2), p(3), p(4), p(5)];
            for j in 0..4 {
                at_row(j, row, None, &mut scratch[(i * 4 + j) * c..][..c]);
            }
        }
        // Columns: tile[r·4 + j] = Σ_i Aᵀ[r][i] scratch[i·4 + j] + bias.
        for r in 0..4 {
            for j in 0..4 {
                let s = |i: usize| &scratch[(i * 4 + j) * c..][..c];
                at_row(r, [s(0), s(1), s(2), s(3), s(4), s(5)], bias, &mut tile[(r * 4 + j) * c..][..c]);
            }
        }
        if post.relu {
            tile.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        // Output pixel (r, j) of this tile: the tile's pixel, or the maximum of its 2×2 window.
        let (side, origin) = if post.pool { (2, (ty * 2, tx * 2)) } else { (4, (ty * 4, tx * 4)) };
        for r in 0..side {
            let y = origin.0 + r;
            if y >= oh {
                break;
            }
            for j in 0..side {
                let xcol = origin.1 + j;
                if xcol >= ow {
                    break;
                }
                let pix = if post.pool {
                    let (top, bottom) = tile.split_at_mut((2 * r + 1) * 4 * c);
                    let (a, b) = top[(2 * r * 4 + 2 * j) * c..].split_at_mut(c);
                    let (cc, d) = (&bottom[2 * j * c..][..c], &bottom[(2 * j + 1) * c..][..c]);
                    let (a, b) = (&mut a[..c], &b[..c]);
                    (0..c).for_each(|k| a[k] = a[k].max(b[k]).max(cc[k].max(d[k])));
                    &*a
                } else {
                    &tile[(r * 4 + j) * c..][..c]
                };
                let at = ((img * oh + y) * ow + xcol) * c;
                // SAFETY: output pixel (img, y, xcol) comes from tile t alone, which only this block writes; `at + c` is
                // within the N·oh·ow·C_out output.
                unsafe { std::ptr::copy_nonoverlapping(pix.as_ptr(), out.0.add(at), c) };
            }
        }
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
        let _threads = crate::model::THREAD_SETTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let own = tch::get_num_threads();
        // 8×8: whole tiles; 7×10: partial tiles in both directions; 1×1: a single padded pixel;
        // 5×29×31: 320 tiles, in blocks of 96 (the last one partial), shared among the threads.
        for (n, c_in, c_out, h, w) in [(2, 5, 3, 8, 8), (3, 4, 6, 7, 10), (1, 2, 2, 1, 1), (5, 4, 6, 29, 31)] {
            // Drawn under the generator's lock: another test checks that nothing draws between its own seeding and draws.
            let (x, wt, b) = crate::model::seeded(3, || {
                let f = (Kind::Float, Device::Cpu);
                (Tensor::randn([n, c_in, h, w], f), Tensor::randn([c_out, c_in, 3, 3], f), Tensor::randn([c_out], f))
            });
            let direct = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1);
            let y = Winograd::new(&wt, Some(&b)).forward(&x, Post::default());
            assert_eq!(y.size(), direct.size());
            let e = rel_err(&y, &direct);
            assert!(e < 1e-5, "{n}×{c_in}→{c_out} at {h}×{w}: relative error {e}");
            // A channels-last input gives the same, and the output is channels-last.
            let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            let y2 = Winograd::new(&wt, None).forward(&cl, Post::default());
            assert!(rel_err(&(y2 + b.view([1, -1, 1, 1])), &direct) < 1e-5);
            assert_eq!(y.stride()[1], 1, "channels-last output");
            // ReLU, and ReLU then the 2×2 pool (odd sides round down), done in the output transform.
            let relu = Winograd::new(&wt, Some(&b)).forward(&x, Post { relu: true, pool: false });
            // (Measured against the convolution's scale: a ReLU output can be all zeros.)
            let off = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / direct.norm().double_value(&[]);
            assert!(off(&relu, &direct.relu()) < 1e-5, "{n}×{c_in}→{c_out} at {h}×{w}: ReLU");
            if h >= 2 && w >= 2 {
                let pooled = Winograd::new(&wt, Some(&b)).forward(&x, Post { relu: true, pool: true });
                let want = direct.relu().max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                assert_eq!(pooled.size(), want.size(), "{n}×{c_in}→{c_out} at {h}×{w}: pooled size");
                assert!(off(&pooled, &want) < 1e-5, "{n}×{c_in}→{c_out} at {h}×{w}: pooled");
                assert_eq!(pooled.stride()[1], 1, "channels-last pooled output");
            }
        }
        // libtorch starts a new thread with the last setting made anywhere: the workers' one thread each is undone.
        assert_eq!(std::thread::spawn(tch::get_num_threads).join().unwrap(), own, "the thread setting is restored");
    }
}

//! Seeded training-set augmentation on batches of gray images (N,1,H,W):
//! horizontal flip, rotation, zoom, translation (one affine warp through
//! libtorch's grid sampler) and brightness / contrast.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    pub flip: bool,
    /// Maximum rotation, degrees (uniform in ±).
    pub rotate: f64,
    /// Maximum zoom, as a fraction (scale uniform in 1 ± zoom).
    pub zoom: f64,
    /// Maximum shift, as a fraction of the side.
    pub translate: f64,
    /// Maximum brightness shift (added to [0,1] pixels).
    pub brightness: f64,
    /// Maximum contrast change (factor uniform in 1 ± contrast).
    pub contrast: f64,
}

impl Augment {
    pub fn preset(name: &str) -> Result<Augment> {
        match name {
            "none" => Ok(Augment {
                flip: false,
                rotate: 0.0,
                zoom: 0.0,
                translate: 0.0,
                brightness: 0.0,
                contrast: 0.0,
            }),
            "flip" => Ok(Augment {
                flip: true,
                ..Augment::preset("none")?
            }),
            "light" => Ok(Augment {
                flip: true,
                rotate: 10.0,
                zoom: 0.1,
                translate: 0.05,
                brightness: 0.1,
                contrast: 0.1,
            }),
            "strong" => Ok(Augment {
                flip: true,
                rotate: 20.0,
                zoom: 0.2,
                translate: 0.1,
                brightness: 0.2,
                contrast: 0.25,
            }),
            other => Err(Error::config(format!(
                "--augment `{other}`: expected none, flip, light or strong"
            ))),
        }
    }

    pub fn is_identity(&self) -> bool {
        !self.flip
            && self.rotate == 0.0
            && self.zoom == 0.0
            && self.translate == 0.0
            && self.brightness == 0.0
            && self.contrast == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..=180.0).contains(&self.rotate)
            && (0.0..0.9).contains(&self.zoom)
            && (0.0..=0.5).contains(&self.translate)
            && (0.0..=1.0).contains(&self.brightness)
            && (0.0..0.95).contains(&self.contrast);
        if ok {
            Ok(())
        } else {
            Err(Error::config("augmentation out of range: rotate 0–180°, zoom 0–0.9, translate 0–0.5, brightness 0–1, contrast 0–0.95"))
        }
    }

    /// One random view of each image; draws all parameters from `rng`.
    pub fn apply(&self, gray: &Tensor, rng: &mut ChaCha8Rng) -> Tensor {
        if self.is_identity() {
            return gray.shallow_clone();
        }
        let size = gray.size();
        let n = size[0] as usize;
        let mut theta = Vec::with_capacity(n * 6);
        let mut gain = Vec::with_capacity(n);
        let mut shift = Vec::with_capacity(n);
        let sym = |rng: &mut ChaCha8Rng, m: f64| if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 };
        for _ in 0..n {
            let flip = if self.flip && rng.gen_bool(0.5) {
                -1.0
            } else {
                1.0
            };
            let a = sym(rng, self.rotate).to_radians();
            let s = 1.0 / (1.0 + sym(rng, self.zoom));
            let (tx, ty) = (
                2.0 * sym(rng, self.translate),
                2.0 * sym(rng, self.translate),
            );
            // Output→input sampling matrix; the flip mirrors the output x axis.
            theta.extend_from_slice(&[
                s * a.cos() * flip,
                -s * a.sin(),
                tx,
                s * a.sin() * flip,
                s * a.cos(),
                ty,
            ]);
            gain.push(1.0 + sym(rng, self.contrast));
            shift.push(sym(rng, self.brightness));
        }
        let dev = gray.device();
        let theta = Tensor::from_slice(&theta)
            .view([n as i64, 2, 3])
            .to_kind(Kind::Float)
            .to_device(dev);
        let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
        // bilinear (0), border padding (1): no black corners on rotated faces.
        let warped = gray.grid_sampler(&grid, 0, 1, false);
        let gain = Tensor::from_slice(&gain)
            .to_kind(Kind::Float)
            .to_device(dev)
            .view([-1, 1, 1, 1]);
        let shift = Tensor::from_slice(&shift)
            .to_kind(Kind::Float)
            .to_device(dev)
            .view([-1, 1, 1, 1]);
        let mean = warped.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        ((warped - &mean) * gain + mean + shift).clamp(0.0, 1.0)
    }
}

//! Seeded training-set augmentation on batches of gray images (N,1,H,W):
//! horizontal flip, rotation, zoom, translation (one affine warp through
//! libtorch's grid sampler) and brightness / contrast.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result, Setting};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    pub flip: bool,
    /// Maximum rotation, degrees (uniform in ±).
    pub rotate: f64,
    /// Maximum zoom, as a fraction (scale uniform in 1 ± zoom).
    pub zoom: f64,
    /// Maximum shift, as a fraction of the side.
    pub translate: f64,
    /// Maximum brightness shift (added to pixels in \[0, 1\]).
    pub brightness: f64,
    /// Maximum contrast change (factor uniform in 1 ± contrast).
    pub contrast: f64,
}

impl Augment {
    pub fn preset(name: &str) -> Result<Augment> {
        match name {
            "none" => Ok(Augment { flip: false, rotate: 0.0, zoom: 0.0, translate: 0.0, brightness: 0.0, contrast: 0.0 }),
            "flip" => Ok(Augment { flip: true, ..Augment::preset("none")? }),
            "light" => Ok(Augment { flip: true, rotate: 10.0, zoom: 0.1, translate: 0.05, brightness: 0.1, contrast: 0.1 }),
            "strong" => Ok(Augment { flip: true, rotate: 20.0, zoom: 0.2, translate: 0.1, brightness: 0.2, contrast: 0.25 }),
            other => Err(Error::invalid(Setting::Augment, format!("`{other}`: expected none, flip, light or strong"))),
        }
    }

    pub(crate) fn is_identity(&self) -> bool {
        !self.flip && self.rotate == 0.0 && self.zoom == 0.0 && self.translate == 0.0 && self.brightness == 0.0 && self.contrast == 0.0
    }

    /// Each amount within its range; the first that is not is named by its flag.
    pub(crate) fn validate(&self) -> Result<()> {
        // (setting, value, upper bound, whether the bound itself is allowed)
        let limits = [
            (Setting::Rotate, self.rotate, 180.0, true),
            (Setting::Zoom, self.zoom, 0.9, false),
            (Setting::Translate, self.translate, 0.5, true),
            (Setting::Brightness, self.brightness, 1.0, true),
            (Setting::Contrast, self.contrast, 0.95, false),
        ];
        for (setting, v, hi, closed) in limits {
            // NaN fails both comparisons.
            if !(v >= 0.0 && if closed { v <= hi } else { v < hi }) {
                return Err(Error::invalid(setting, format!("must be in [0, {hi}{}, got {v}", if closed { "]" } else { ")" })));
            }
        }
        Ok(())
    }

    /// One random view of each image; draws all parameters from `rng`, image after image.
    pub fn apply(&self, gray: &Tensor, rng: &mut ChaCha8Rng) -> Tensor {
        if self.is_identity() {
            return gray.shallow_clone();
        }
        let n = gray.size()[0] as usize;
        let params: Vec<[f64; 8]> = (0..n).map(|_| self.draw(rng)).collect();
        self.warp(gray, &params)
    }

    /// One random view of each image, image i drawn from its own `seeds[i]`
    /// (so a view depends on the image, not on the batch it is in).
    pub(crate) fn apply_seeded(&self, gray: &Tensor, seeds: &[u64]) -> Tensor {
        if self.is_identity() {
            return gray.shallow_clone();
        }
        let params: Vec<[f64; 8]> = seeds.iter().map(|&s| self.draw(&mut ChaCha8Rng::seed_from_u64(s))).collect();
        self.warp(gray, &params)
    }

    /// θ (six affine coefficients), contrast gain, brightness shift.
    fn draw(&self, rng: &mut ChaCha8Rng) -> [f64; 8] {
        let sym = |rng: &mut ChaCha8Rng, m: f64| if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 };
        let flip = if self.flip && rng.gen_bool(0.5) { -1.0 } else { 1.0 };
        let a = sym(rng, self.rotate).to_radians();
        let s = 1.0 / (1.0 + sym(rng, self.zoom));
        let (tx, ty) = (2.0 * sym(rng, self.translate), 2.0 * sym(rng, self.translate));
        let gain = 1.0 + sym(rng, self.contrast);
        let shift = sym(rng, self.brightness);
        // Output→input sampling matrix; the flip mirrors the output x axis.
        [s * a.cos() * flip, -s * a.sin(), tx, s * a.sin() * flip, s * a.cos(), ty, gain, shift]
    }

    fn warp(&self, gray: &Tensor, params: &[[f64; 8]]) -> Tensor {
        let size = gray.size();
        let n = params.len() as i64;
        let dev = gray.device();
        let col = |k: usize| Tensor::from_slice(&params.iter().map(|p| p[k]).collect::<Vec<_>>()).to_kind(Kind::Float).to_device(dev);
        let theta = Tensor::from_slice(&params.iter().flat_map(|p| p[..6].to_vec()).collect::<Vec<_>>()).view([n, 2, 3]).to_kind(Kind::Float).to_device(dev);
        let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
        // bilinear (0), border padding (1): no black corners on rotated faces.
        let warped = gray.grid_sampler(&grid, 0, 1, false);
        let mean = warped.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        ((warped - &mean) * col(6).view([-1, 1, 1, 1]) + mean + col(7).view([-1, 1, 1, 1])).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Augment;
    use crate::error::{Error, Setting};

    /// The amount out of range is named (the first, in flag order); the bounds of a closed range are allowed.
    #[test]
    fn an_amount_out_of_range_is_named() {
        let light = Augment::preset("light").unwrap();
        let refused = |a: Augment| match a.validate() {
            Err(Error::Invalid { setting, problem }) => Some((setting, problem)),
            _ => None,
        };
        assert_eq!(refused(Augment { zoom: 1.0, ..light.clone() }), Some((Setting::Zoom, "must be in [0, 0.9), got 1".into())));
        assert_eq!(refused(Augment { rotate: -5.0, ..light.clone() }), Some((Setting::Rotate, "must be in [0, 180], got -5".into())));
        assert_eq!(refused(Augment { contrast: 0.95, brightness: 2.0, ..light.clone() }), Some((Setting::Brightness, "must be in [0, 1], got 2".into())));
        assert_eq!(refused(Augment { contrast: 0.95, ..light.clone() }).map(|r| r.0), Some(Setting::Contrast));
        assert_eq!(refused(Augment { translate: f64::NAN, ..light.clone() }).map(|r| r.0), Some(Setting::Translate));
        assert_eq!(refused(Augment { rotate: 180.0, translate: 0.5, brightness: 1.0, zoom: 0.0, contrast: 0.0, ..light.clone() }), None);
        assert_eq!(refused(light), None);
    }
}

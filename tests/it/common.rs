//! Helpers shared by the integration tests: small weight files with the real
//! key layout, images in every format the loader must read, datasets in
//! temporary folders, and the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use vggft::model::{BnMode, HeadKind, ModelConfig, Precision, Vgg16};

/// Channel divisor of the test networks (VGG16 / 16: 4…32 channels).
pub const DIV: i64 = 16;

pub fn small_cfg(bn: BnMode, head: HeadKind, classes: i64) -> ModelConfig {
    ModelConfig {
        bn_mode: bn,
        head,
        num_classes: classes,
        dropout: 0.0,
        hidden: 0,
        width_div: DIV,
        precision: Precision::F32,
        features: vggft::model::conv5_only(),
        subject_norm: false,
        pool_grid: vggft::model::PoolGrid::GLOBAL,
        single_to_task: Vec::new(),
    }
}

/// Writes a torchvision-layout file (trunk + classifier.0/3/6, BN with
/// `num_batches_tracked` when `bn`), random values, narrower widths.
pub fn torchvision_like(path: &Path, bn: bool, seed: i64) -> Vec<(String, Tensor)> {
    // Seeding and drawing must not interleave with another test's seeding.
    let _rng = torch_rng();
    tch::manual_seed(seed);
    let mode = if bn { BnMode::Frozen } else { BnMode::Drop };
    let m = Vgg16::new(&small_cfg(mode, HeadKind::Vgg, 10), Device::Cpu).unwrap();
    // Not in a torchvision file: what a run keeps of its training photos.
    let mut named: Vec<(String, Tensor)> = m.named_tensors().into_iter().filter(|(n, _)| n != "head.feature_stats").collect();
    for (n, t) in named.iter_mut() {
        // Non-trivial BN statistics and affine parameters, so folding is tested for real.
        if n.ends_with("running_var") || (bn && n.ends_with(".weight") && t.dim() == 1) {
            *t = Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5;
        } else if n.ends_with("running_mean") || (bn && n.ends_with(".bias") && t.dim() == 1) {
            *t = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2;
        }
    }
    if bn {
        for i in vggft::model::CONVS.iter().map(|c| c.bn_idx) {
            named.push((format!("features.{}.num_batches_tracked", i + 1), Tensor::from_slice(&[100i64])));
        }
    }
    vggft::model::weights::save_atomic(&named, path).unwrap();
    named
}

/// A trunk-only file (like the HED stand-in): plain convs, no classifier.
pub fn trunk_only(path: &Path, seed: i64) {
    let _rng = torch_rng();
    tch::manual_seed(seed);
    let m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Linear, 2), Device::Cpu).unwrap();
    let named: Vec<(String, Tensor)> = m.named_tensors().into_iter().filter(|(n, _)| n.starts_with("features.")).collect();
    vggft::model::weights::save_atomic(&named, path).unwrap();
}

/// A copy of folder `from` (and its folders) at `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A scratch folder whose random name holds no `nan` in any case: tests
/// assert that outputs, which name their files, hold no `NaN`, and a name
/// such as `.tmpYNaNKI` made one of them fail on a clean clone. (Only the
/// random part is redrawn: a `TMPDIR` spelt with `nan` is left to the tests.)
pub fn tmp() -> tempfile::TempDir {
    loop {
        let d = tempfile::tempdir().unwrap();
        if !d.path().file_name().is_some_and(|n| n.to_string_lossy().to_lowercase().contains("nan")) {
            return d;
        }
    }
}

/// Minimal uncompressed TIFF writer: one strip; `colormap` makes it a palette TIFF.
pub fn tiff(w: u32, h: u32, bits: u16, pixels: &[u8], colormap: Option<&[u16]>, big_endian: bool) -> Vec<u8> {
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut tags: Vec<(u16, u16, u32, u32)> = Vec::new(); // tag, type (3 short / 4 long), count, value
    let n_tags = if colormap.is_some() { 10 } else { 9 };
    let ifd_len = 2 + n_tags * 12 + 4;
    let cmap_off = 8 + ifd_len as u32;
    let cmap_len = colormap.map(|c| c.len() as u32 * 2).unwrap_or(0);
    let data_off = cmap_off + cmap_len;
    let photometric = if colormap.is_some() { 3 } else { 1 };
    tags.push((256, 4, 1, w));
    tags.push((257, 4, 1, h));
    tags.push((258, 3, 1, bits as u32));
    tags.push((259, 3, 1, 1));
    tags.push((262, 3, 1, photometric));
    tags.push((273, 4, 1, data_off));
    tags.push((277, 3, 1, 1));
    tags.push((278, 4, 1, h));
    tags.push((279, 4, 1, pixels.len() as u32));
    if let Some(c) = colormap {
        tags.push((320, 3, c.len() as u32, cmap_off));
    }
    let mut out = Vec::new();
    out.extend_from_slice(if big_endian { b"MM\0*" } else { b"II*\0" });
    out.extend_from_slice(&u32b(8));
    out.extend_from_slice(&u16b(tags.len() as u16));
    for (tag, ty, count, value) in tags {
        out.extend_from_slice(&u16b(tag));
        out.extend_from_slice(&u16b(ty));
        out.extend_from_slice(&u32b(count));
        if ty == 3 && count == 1 {
            out.extend_from_slice(&u16b(value as u16));
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&u32b(value));
        }
    }
    out.extend_from_slice(&u32b(0));
    if let Some(c) = colormap {
        for &v in c {
            out.extend_from_slice(&u16b(v));
        }
    }
    out.extend_from_slice(pixels);
    out
}

/// A gray ramp colour map (the JAFFE kind of palette TIFF).
pub fn gray_ramp() -> Vec<u16> {
    let ramp: Vec<u16> = (0..256u32).map(|i| (i * 257) as u16).collect();
    [ramp.clone(), ramp.clone(), ramp].concat()
}

/// A `w`×`h` gray PNG whose pixels are `f(x, y)`.
pub fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
    img.save(path).unwrap();
}

/// A trivially separable two-class dataset in class folders: `a` images
/// bright on the left, `b` bright on the right, with a little seeded noise.
pub fn separable_folders(root: &Path, per_class: usize, size: u32) {
    for (class, left) in [("a", true), ("b", false)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            gray_png(&root.join(class).join(format!("{i:02}.png")), size, size, |x, y| {
                let bright = (x < size / 2) == left;
                let noise = ((x * 7 + y * 13 + i as u32 * 31) % 17) as u8;
                if bright {
                    200 + noise
                } else {
                    30 + noise
                }
            });
        }
    }
}

/// A CSV-manifest dataset with subjects: `subjects` people × classes `neutral`/`smiling`.
pub fn subject_dataset(root: &Path, subjects: usize, size: u32) -> PathBuf {
    let mut csv = String::from("path,label,subject\n");
    for s in 0..subjects {
        for (label, left) in [("neutral", true), ("smiling", false)] {
            let name = format!("s{s:02}_{label}.png");
            gray_png(&root.join(&name), size, size, |x, y| {
                let bright = (x < size / 2) == left;
                let noise = ((x * 5 + y * 11 + s as u32 * 29) % 23) as u8;
                if bright {
                    190 + noise
                } else {
                    40 + noise
                }
            });
            csv.push_str(&format!("{name},{label},P{s:02}\n"));
        }
    }
    let p = root.join("manifest.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

/// The first `n` people of the shared London faces, as a manifest in `dir`.
/// `../shared/data/london-faces`, or None when it is absent. Under CI
/// (`CI` set) its absence fails the test instead: a test that needs it must
/// not pass without checking anything.
pub fn london_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/london-faces");
    if p.join("manifest.csv").is_file() {
        return Some(p);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing: under CI the tests that need it must run", p.display());
    None
}

pub fn london_slice(dir: &Path, n_subjects: usize) -> Option<PathBuf> {
    let src = london_dir()?;
    let manifest = std::fs::read_to_string(src.join("manifest.csv")).ok()?;
    let mut out = String::from("path,label,subject\n");
    let rows: Vec<Vec<&str>> = manifest.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let subjects: std::collections::BTreeSet<&str> =
        rows.iter().map(|f| f[2]).collect::<std::collections::BTreeSet<_>>().into_iter().take(n_subjects).collect();
    for f in rows.iter().filter(|f| subjects.contains(f[2])) {
        let abs = src.join(f[0]).canonicalize().ok()?;
        out.push_str(&format!("{},{},{}\n", abs.display(), f[1], f[2]));
    }
    let p = dir.join("london.csv");
    std::fs::write(&p, out).ok()?;
    Some(p)
}

/// The binary, with the feature cache off (`--feature-cache` gives one):
/// no test reads what another left in the user's cache folder. Its OpenMP
/// threads wait passively (unless the environment says otherwise), as
/// `make test` sets it: tests run side by side, and libgomp's default
/// spinning at each barrier halves the suite's speed on 2 cores.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vggft"));
    c.env("VGGFT_FEATURE_CACHE", "off");
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        c.env("OMP_WAIT_POLICY", "passive");
    }
    c
}

/// Runs the binary, returning (exit code, stdout, stderr).
pub fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = bin().args(args).current_dir(cwd).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// libtorch's random generator is global to the process: tests that seed it
/// and then depend on its draws (dropout) hold this lock.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static HOLDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The lock on libtorch's generator, re-entrant within one thread (the
/// weight-file helpers take it too, and tests holding it call them).
pub struct RngGuard(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for RngGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDING.with(|h| h.set(false));
        }
    }
}

pub fn torch_rng() -> RngGuard {
    if HOLDING.with(|h| h.get()) {
        return RngGuard(None);
    }
    let g = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    HOLDING.with(|h| h.set(true));
    RngGuard(Some(g))
}

/// A JSON file the binary wrote.
pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Small-network options every binary run here uses.
pub fn small(weights: &Path) -> Vec<String> {
    ["--weights", &weights.display().to_string(), "--width-div", "16", "--image-size", "32", "--device", "cpu", "--threads", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A small random trunk (`trunk_only`, `seed`) written into `dir`, and the
/// options that run vggft on it at 32 px on the CPU (`small`).
pub fn small_trunk(dir: &Path, seed: i64) -> Vec<String> {
    let w = dir.join("trunk.safetensors");
    trunk_only(&w, seed);
    small(&w)
}

/// A trained tiny run `runs/NAME` in `dir`, for the commands that read a
/// model: one head-only epoch, multiclass, no validation, on
/// `separable_folders(dir/data, per_class, 32)` and a `small_trunk(seed)`.
/// Returns the trunk's options.
pub fn separable_run(dir: &Path, seed: i64, per_class: usize, name: &str) -> Vec<String> {
    let s = small_trunk(dir, seed);
    separable_folders(&dir.join("data"), per_class, 32);
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", "data", "--task", "multiclass", "--stages", "head:1", "--val", "none", "--name", name, "--quiet"]), dir);
    assert_eq!(code, 0, "{err}");
    s
}

pub fn args<'a>(v: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    extra.iter().copied().chain(v.iter().map(String::as_str)).collect()
}

/// A CSV dataset where identity dominates, as in JAFFE: every person has a
/// strong pattern and brightness of their own; `expressive` adds a faint
/// bright bar at a fixed place ("the mouth"). Each person has `per_class`
/// neutral and `per_class` expressive images (per-image noise differs).
pub fn identity_dominated(root: &Path, subjects: usize, per_class: usize, size: u32) -> PathBuf {
    identity_dominated_labels(root, subjects, per_class, size, &["neutral", "expressive"])
}

/// `identity_dominated` with more labels: the first without a bar, the second
/// with the mouth bar, the third with a brow bar across the top.
pub fn identity_dominated_labels(root: &Path, subjects: usize, per_class: usize, size: u32, labels: &[&str]) -> PathBuf {
    let mut csv = String::from("path,label,subject\n");
    for s in 0..subjects as u32 {
        // Person-specific blob pattern and offset (a fixed pseudo-random function of s).
        let h = |x: u32, y: u32, k: u32| ((x / 4 * 73 + y / 4 * 151 + k * 977 + 13).wrapping_mul(2_654_435_761) >> 24) as i32;
        let offset = (s as i32 * 37 % 90) - 45;
        for (k, label) in labels.iter().enumerate() {
            for i in 0..per_class as u32 {
                let name = format!("p{s:02}_{label}_{i}.png");
                gray_png(&root.join(&name), size, size, |x, y| {
                    let person = h(x, y, s) / 2 - 64 + offset;
                    let noise = ((x * 7 + y * 13 + i * 31 + s * 5) % 11) as i32 - 5;
                    let mouth = if k == 1 && y >= size * 3 / 4 && y < size * 3 / 4 + size / 8 && x >= size / 4 && x < size * 3 / 4 { 28 } else { 0 };
                    let brow = if k == 2 && y >= size / 8 && y < size / 4 && x >= size / 4 && x < size * 3 / 4 { 28 } else { 0 };
                    (128 + person + noise + mouth + brow).clamp(0, 255) as u8
                });
                csv.push_str(&format!("{name},{label},P{s:02}\n"));
            }
        }
    }
    let p = root.join("manifest.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

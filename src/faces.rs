//! `vggft faces`: the face crops of a folder as images, `faces.csv` with
//! every box, and a contact sheet (a grid of crops with file names) to check
//! the detector at a glance.

use std::path::{Path, PathBuf};

use crate::data::face::{FaceBox, FaceFinder};
use crate::data::image::{load_gray, prepare};
use crate::error::{Error, Result};
use crate::eval::explain;
use crate::fsutil;

/// Writes `path,x,y,w,h,score` ("fallback" for the centred crop).
pub(crate) fn write_csv(path: &Path, paths: &[PathBuf], boxes: &[Option<FaceBox>]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| Error::file(path, e.to_string());
    w.write_record(["path", "x", "y", "w", "h", "score"]).map_err(err)?;
    for (p, b) in paths.iter().zip(boxes) {
        if let Some(b) = b {
            let score = b.score.map(|s| format!("{s:.2}")).unwrap_or_else(|| "fallback".into());
            w.write_record([p.display().to_string(), b.x.to_string(), b.y.to_string(), b.w.to_string(), b.h.to_string(), score]).map_err(err)?;
        }
    }
    fsutil::write_atomic(path, &w.into_inner().map_err(|e| Error::file(path, e.to_string()))?)
}

pub struct FacesReport {
    pub images: usize,
    pub fallbacks: Vec<PathBuf>,
    pub seconds_per_image: f64,
    /// The contact sheet's pages (at most `explain::SHEET_PAGE` crops each), in order.
    pub sheets: Vec<PathBuf>,
    /// Pictures of the folder in a format vggft does not read (not cropped).
    pub unread: Vec<PathBuf>,
    /// Images left out with --skip-bad, each with its problem.
    pub skipped: Vec<(PathBuf, String)>,
    /// What the layout's reading left out or assumed (`Dataset::notes`).
    pub notes: Vec<String>,
}

/// Detects the face in every image of `dir` (any dataset layout), writes crops, CSV and contact sheet.
/// An unreadable image stops it before anything is written, unless `skip_bad`
/// leaves it out (named in `skipped`).
/// `pattern`: each photo's person from its file name (`--subject-pattern`),
/// over what the layout gives, for the crops' manifest.
pub fn run(dir: &Path, out: &Path, tile: u32, (skip_bad, pattern): (bool, Option<&crate::data::scan::SubjectPattern>)) -> Result<FacesReport> {
    let ds = dataset(dir, out, pattern)?;
    // Every image is read, found and cropped in memory before anything is
    // written: an unreadable one (stopping the run, or left out with
    // --skip-bad) leaves a previous run's folder as it was, not a mix.
    let Detected { crops, skipped, seconds } = detect_all(&ds, tile, skip_bad)?;
    let (paths, fallbacks, sheets) = write_crops(&ds, out, crops)?;
    let mut notes = ds.notes;
    if ds.samples.iter().all(|s| s.subject.is_none()) {
        // Training on the crops would split photos, not people, as finetune warns then.
        notes.push(format!(
            "note: {} gives no person for its photos, so the crops' manifest lists none: --subject-pattern REGEX takes each from its file name (e.g. '^([^_]+)_' for 002_03.jpg)",
            dir.display()
        ));
    }
    Ok(FacesReport { images: paths.len(), fallbacks, seconds_per_image: seconds / paths.len().max(1) as f64, sheets, unread: ds.unread, notes, skipped })
}

/// The dataset in `dir` (its people by `pattern` where given), refused
/// where the crops in `out` would be written into it or over another
/// command's output.
fn dataset(dir: &Path, out: &Path, pattern: Option<&crate::data::scan::SubjectPattern>) -> Result<crate::data::scan::Dataset> {
    use crate::data::scan::{scan, DataFormat};
    let mut ds = scan(dir, DataFormat::Auto).map_err(|e| match e {
        // Loose photos without labels: faces reads a dataset, and one folder inside makes them one.
        Error::Dataset { path, problem } if problem == crate::data::scan::LOOSE_IMAGES => Error::Dataset {
            problem: format!("{problem}; to crop unlabelled photos, move them into one folder inside it ({}/photos/…)", dir.display()),
            path,
        },
        other => other,
    })?;
    if let Some(p) = pattern {
        p.apply(&mut ds)?;
    }
    // The crops are images and the manifest is `manifest.csv`: written into
    // the data folder they would become part of it (class folders read
    // `faces/` as a class; `manifest.csv` would replace the data's own).
    let root = if ds.format == DataFormat::Csv { ds.root.parent().unwrap_or(Path::new(".")) } else { ds.root.as_path() };
    if fsutil::absolute(out) == fsutil::absolute(root) {
        return Err(Error::file(out, "is the data folder itself: the crops and their manifest.csv would be mixed with the data; choose an --out outside it"));
    }
    crate::data::scan::refuse_output_in(&ds, out, "its crops")?;
    crate::data::scan::refuse_other_output(
        out,
        "a faces folder",
        "the crops, faces.csv and their manifest",
        &["manifest.csv", "faces.csv", "contact_sheet.png"],
    )?;
    Ok(ds)
}

/// A photo's face: its index in the dataset, the box found, the crop.
type Crop = (usize, FaceBox, image::GrayImage);

/// What `detect_all` found.
struct Detected {
    crops: Vec<Crop>,
    /// The photos that could not be read, each with its problem.
    skipped: Vec<(PathBuf, String)>,
    /// The detector's time over all photos.
    seconds: f64,
}

/// Every photo's face box and crop, and the photos that could not be read
/// (an error, unless `skip_bad` and some were read).
fn detect_all(ds: &crate::data::scan::Dataset, tile: u32, skip_bad: bool) -> Result<Detected> {
    // On every core, a face detector each (`data::par_map`, as training decodes).
    let found = crate::data::par_map(&ds.samples, |_, s, finder| -> Result<(FaceBox, image::GrayImage, f64)> {
        let g = load_gray(&s.path)?;
        let finder = match finder {
            Some(f) => f,
            None => finder.insert(FaceFinder::new()?),
        };
        let t0 = std::time::Instant::now();
        let b = finder.detect(&g).unwrap_or_else(|| crate::data::face::fallback(&g));
        let seconds = t0.elapsed().as_secs_f64();
        let px = prepare(&g, &b.crop(), tile).map_err(|e| e.at(&s.path))?;
        let img = image::GrayImage::from_raw(tile, tile, px.iter().map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect())
            .ok_or_else(|| Error::image(&s.path, "crop has the wrong size"))?;
        Ok((b, img, seconds))
    });
    if found.len() != ds.samples.len() {
        return Err(Error::internal("a face-finding thread failed"));
    }
    let mut crops = Vec::new();
    let mut skipped = Vec::new();
    let mut first_error = None;
    let mut detect_time = 0.0;
    for (i, r) in found.into_iter().enumerate() {
        match r {
            Ok((b, img, seconds)) => {
                detect_time += seconds;
                crops.push((i, b, img));
            }
            Err(e) => {
                skipped.push((ds.samples[i].path.clone(), e.problem()));
                first_error.get_or_insert(e);
            }
        }
    }
    // With --skip-bad too when every image failed: leaving them out would leave nothing.
    if let Some(e) = first_error.filter(|_| !skip_bad || crops.is_empty()) {
        let hint = crate::data::unreadable_hint(skipped.len(), ds.samples.len(), skip_bad);
        return Err(Error::Picture(format!("{e} ({hint}); nothing was written")));
    }
    Ok(Detected { crops, skipped, seconds: detect_time })
}

/// Writes the crops, `faces.csv`, the crops' `manifest.csv` and the
/// contact sheet(s) into `out`, and removes an earlier run's crops that
/// this one did not write. Returns the photos cropped, those the detector
/// found no face in, and the sheets.
fn write_crops(ds: &crate::data::scan::Dataset, out: &Path, crops: Vec<Crop>) -> Result<(Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>)> {
    let stems: Vec<String> = ds.samples.iter().map(|s| crate::fsutil::output_stem(&s.path)).collect();
    let names = crop_names(&stems);
    let write = |stage: &Path| -> Result<Written> {
        fsutil::create_dir(&stage.join("crops"))?;
        let mut w = Written::default();
        let mut boxes = Vec::new();
        let mut tiles = Vec::new();
        let mut manifest = csv::Writer::from_writer(Vec::new());
        let _ = manifest.write_record(["path", "label", "subject"]);
        for (i, b, img) in crops {
            let s = &ds.samples[i];
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| Error::file(&s.path, e.to_string()))?;
            if b.score.is_none() {
                w.fallbacks.push(s.path.clone());
            }
            fsutil::write_atomic(&stage.join("crops").join(&names[i]), &png)?;
            let crop = format!("crops/{}", names[i]);
            let _ = manifest.write_record([crop.clone(), s.label.clone(), s.subject.clone().unwrap_or_default()]);
            w.crops.insert(crop);
            tiles.push((stems[i].clone(), img, b.score.is_none()));
            w.paths.push(s.path.clone());
            boxes.push(Some(b));
        }
        write_csv(&stage.join("faces.csv"), &w.paths, &boxes)?;
        // The crops as a dataset: `vggft finetune --data OUT/manifest.csv`.
        let m = stage.join("manifest.csv");
        fsutil::write_atomic(&m, &manifest.into_inner().map_err(|e| Error::file(&m, e.to_string()))?)?;
        let sheets = explain::save_sheets(stage, "contact_sheet", &tiles, sheet_tile)?;
        w.sheets = sheets.iter().filter_map(|p| p.file_name()).map(|n| out.join(n)).collect();
        Ok(w)
    };
    // A second run into the same folder (other data, or images removed)
    // would leave the first run's crops beside the new ones: remove the
    // crops the previous manifest listed and this one does not, and the
    // contact sheet's later pages (read under the lock, before the new
    // manifest replaces the earlier one).
    let clear = |dir: &Path, w: &Written| {
        fsutil::remove_stale_temps(&dir.join("crops"));
        for old in earlier_crops(dir).iter().filter(|c| !w.crops.contains(*c)) {
            let _ = std::fs::remove_file(dir.join(old));
        }
        explain::remove_later_pages(dir, "contact_sheet", w.sheets.len());
    };
    // Written together, one writer at a time (a second faces into the same folder would mix its crops
    // with this one's): a disk that fills part-way leaves an earlier run's set whole, not new crops
    // listed by nothing or under its manifest.
    let w = fsutil::write_set(out, clear, write)?;
    Ok((w.paths, w.fallbacks, w.sheets))
}

/// What `write_crops` wrote: the photos cropped, those cropped by the
/// fallback, the crops' names (`crops/NAME.png`) and the contact sheet's pages.
#[derive(Default)]
struct Written {
    paths: Vec<PathBuf>,
    fallbacks: Vec<PathBuf>,
    crops: std::collections::HashSet<String>,
    sheets: Vec<PathBuf>,
}

/// Each photo's crop file name: its own name as PNG (`KA.HA1.29.tiff` →
/// `KA.HA1.29.png`), so that the crops' names say what the photos' did —
/// JAFFE's, KDEF's or a `--subject-pattern`'s person, read by `predict` and
/// the checks of a manifest's subject column — unless two photos would
/// share one (`neutral/1.jpg`, `happy/1.jpg`): then every crop is numbered
/// in the dataset's order (`0000_1.png`, …). Names are compared without
/// case, as a Mac's or Windows's file system does.
fn crop_names(stems: &[String]) -> Vec<String> {
    let own: Vec<String> = stems.iter().map(|s| format!("{s}.png")).collect();
    let mut seen = std::collections::HashSet::new();
    if own.iter().all(|n| seen.insert(n.to_lowercase())) {
        own
    } else {
        stems.iter().enumerate().map(|(i, s)| format!("{i:04}_{s}.png")).collect()
    }
}

/// The crops a previous `vggft faces` run listed in `out/manifest.csv`
/// (only `crops/NAME.png` entries: nothing else of the folder is touched).
fn earlier_crops(out: &Path) -> Vec<String> {
    let Ok(mut r) = csv::Reader::from_path(out.join("manifest.csv")) else { return vec![] };
    r.records()
        .filter_map(|rec| rec.ok()?.get(0).map(str::to_owned))
        .filter(|p| p.strip_prefix("crops/").is_some_and(|n| !n.contains(['/', '\\']) && n.ends_with(".png")))
        .collect()
}

/// A crop with its name underneath, framed in red where it is a fallback:
/// a tile of the contact sheet.
fn sheet_tile((name, img, fallback): &(String, image::GrayImage, bool)) -> Result<image::RgbImage> {
    let mut rgb = image::DynamicImage::ImageLuma8(img.clone()).to_rgb8();
    if *fallback {
        let (w, h) = rgb.dimensions();
        for (x, y, px) in rgb.enumerate_pixels_mut() {
            if x < 3 || y < 3 || x + 3 >= w || y + 3 >= h {
                *px = image::Rgb([220, 0, 0]);
            }
        }
    }
    explain::captioned(&rgb, std::slice::from_ref(name))
}

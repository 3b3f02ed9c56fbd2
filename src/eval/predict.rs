//! Predicting with a finished run: the same preprocessing the model was
//! trained with (read from the run's config), batched, with optional
//! flip test-time augmentation. A file that fails is reported, not fatal.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::config::RunConfig;
use crate::data::image;
use crate::data::scan::is_image;
use crate::error::Error;
use crate::model::{Block, Vgg16};

/// One image's outcome: class probabilities, or why it failed.
pub struct Prediction {
    pub path: PathBuf,
    /// Task-class probabilities.
    pub probs: crate::error::Result<Vec<f64>>,
    /// Raw-label probabilities, when the head was trained on raw labels (else empty).
    pub raw: Vec<f64>,
    /// Which head of a subject-normalised model answered (`None` for other models).
    pub mode: Option<Mode>,
    /// The face box the input was cropped to (models trained with `--face`).
    pub face: Option<crate::data::face::FaceBox>,
    /// How far the input's features lie from the training photos' (alone:
    /// `Vgg16::feature_distance`; with person statistics, from its person's
    /// others: `SubjectNorm::spread_distance`); about 1 for training photos,
    /// above [`UNUSUAL`] for a picture unlike them. `None` for a run saved
    /// without the statistics.
    pub distance: Option<f64>,
}

/// Feature distance (`Prediction::distance`) above which an input is said
/// to be unlike the training photos. A training photo's features average a
/// distance of about 1 (the statistics are theirs); 4 means each feature
/// four training standard deviations off on average. Measured
/// (docs/results/unusual-inputs.md, six runs): of 242 held-out faces of the
/// runs' own kind one lay above 3 (3.41, a plain conv5 fine-tune), none
/// above 3.5; pictures without a face (blank frames, noise, a gradient, a
/// chart) at 5.1–377 alone, 5.1–49 among a person's photos.
pub const UNUSUAL: f64 = 4.0;

/// Whether a feature distance is beyond [`UNUSUAL`]: the one rule behind
/// `predict`'s and `explain`'s warning, `evaluate`'s count and `cv`'s.
pub fn is_unusual(distance: f64) -> bool {
    distance > UNUSUAL
}

/// How a subject-normalised model predicted one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Normalised with the statistics of this person's images among the inputs.
    Person,
    /// Too few images of this person (or no subject id): the single-image head.
    Single,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Person => "person",
            Mode::Single => "single-image",
        }
    }
}

/// Where `predict` reads each input's subject from.
#[derive(Clone, Debug, PartialEq)]
pub enum SubjectFrom {
    /// The file names (`scan::person_in_name`: JAFFE's `KA.AN1.39.tiff` →
    /// `KA`, and KDEF's, RaFD's and CK+'s); other names have none.
    Names,
    /// One subject for every input (`--subject ID`).
    All(String),
    /// The image's folder (`--subject-from parent`: one folder per person).
    Parent,
    /// No person statistics: every input alone (`--subject-from none`), for
    /// inputs that mostly show one expression (see docs/results/accuracy).
    Nobody,
    /// Known per path (a run's split.csv).
    Table(std::collections::HashMap<PathBuf, String>),
    /// The run's `--subject-pattern` on the file names, then `Names` for
    /// names it does not match.
    Pattern(crate::data::scan::SubjectPattern),
}

/// The `--subject-pattern` given to `predict` or `explain`, else the run's
/// own, for the photos `predict`, `explain` and `evaluate` are given (named
/// as its training photos were).
pub fn run_pattern(given: Option<&str>, cfg: &RunConfig) -> crate::error::Result<Option<crate::data::scan::SubjectPattern>> {
    given.or(cfg.data.subject_pattern.as_deref()).map(crate::data::scan::SubjectPattern::new).transpose()
}

/// The people `subjects` groups by that hold photos whose JAFFE names give
/// them to several people, each as `(group, those people)`: `--subject-from
/// parent` on one flat JAFFE folder, or `--subject ID` over many people's
/// photos, would mix them in one person's statistics.
pub fn groups_of_several_named_people(subjects: &SubjectFrom, paths: &[PathBuf]) -> Vec<(String, Vec<String>)> {
    crate::subject::several(subjects.keys(paths).into_iter().zip(paths).filter_map(|(group, path)| Some((group?, SubjectFrom::Names.subject(path)?))))
}

/// A path's folder; `x.png` and `./x.png` have none in the path itself: the working folder.
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// One image of a run's validation side.
pub struct HeldOut {
    pub path: PathBuf,
    pub class: String,
    pub subject: String,
}

/// The validation images of a run, from its `split.csv`: people the model
/// never trained on (images only, where the data named no people); and
/// whether the file differs from the one the run wrote (its SHA-256 is
/// `cfg.data_sha256`): edited, e.g. paths moved with the data.
pub fn held_out(dir: &Path, cfg: &RunConfig) -> crate::error::Result<(Vec<HeldOut>, bool)> {
    let p = dir.join("split.csv");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    let edited = !cfg.data_sha256.is_empty() && crate::run::sha256_hex(&bytes) != cfg.data_sha256;
    let bad = |e: csv::Error| Error::file(&p, format!("is not a vggft split.csv: {e}"));
    let mut r = csv::Reader::from_reader(&bytes[..]);
    // What `run::split_csv` writes (was: "lists no validation images (the run was trained with --val none)" of any file).
    const HEADER: [&str; 6] = ["path", "label", "class", "subject", "side", "bytes"];
    let header = r.headers().map_err(bad)?.clone();
    // Runs before 2026-11-29 wrote no `bytes` column.
    if header.iter().ne(HEADER) && header.iter().ne(HEADER[..5].iter().copied()) {
        return Err(Error::file(
            &p,
            format!("is not a vggft split.csv: its header is `{}`, where vggft writes `{}`", header.iter().collect::<Vec<_>>().join(","), HEADER.join(",")),
        ));
    }
    let mut out = Vec::new();
    // The line a row starts on, as a manifest's (a quoted path may hold a line break).
    let starts = crate::data::scan::line_starts(&bytes);
    for (k, row) in r.records().enumerate() {
        let row = row.map_err(bad)?;
        let field = |i: usize| row.get(i).unwrap_or_default().to_string();
        let line = row.position().map_or(k + 2, |at| crate::data::scan::line_of(&bytes, &starts, at));
        match row.get(4).unwrap_or_default() {
            "val" => {}
            "train" => continue,
            side => return Err(Error::file(&p, format!("line {line}: side `{side}`, where each image is on the `train` or the `val` side"))),
        }
        let class = field(2);
        if !cfg.classes.contains(&class) {
            return Err(Error::file(&p, format!("line {line}: class `{class}`, none of the run's classes ({})", cfg.classes.join(", "))));
        }
        out.push(HeldOut { path: PathBuf::from(field(0)), class, subject: field(3) });
    }
    if out.is_empty() {
        let why = if cfg.data.val == crate::data::split::ValSpec::None {
            " (the run was trained with --val none)"
        } else if edited {
            " (and is not the split.csv this run wrote: its SHA-256 differs from config.json's data_sha256)"
        } else {
            ""
        };
        return Err(Error::file(&p, format!("lists no validation images{why}")));
    }
    // Not one error per photo: the data itself has gone from where the run read it.
    if out.iter().all(|h| !crate::fsutil::exists(&h.path).unwrap_or(true)) {
        return Err(Error::file(
            &p,
            format!(
                "none of its {} validation images is where the run read it (the first: {}): the data was moved or deleted; put it back, or score it where it is now with `vggft evaluate --model {} --data DIR --exclude-train` (it knows the run's training photos by their bytes)",
                out.len(),
                out[0].path.display(),
                dir.display()
            ),
        ));
    }
    Ok((out, edited))
}

impl SubjectFrom {
    /// Each input's subject. With `Parent`, two different folders of one
    /// name (`alice/2020/`, `bob/2020/`) are two people, each then named by
    /// its path as first given, where the name alone would make them one.
    pub fn keys(&self, paths: &[PathBuf]) -> Vec<Option<String>> {
        let named: Vec<Option<String>> = paths.iter().map(|p| self.subject(p)).collect();
        if *self != SubjectFrom::Parent {
            return named;
        }
        let dir = |p: &Path| folder_of(p).to_path_buf();
        let mut folders: std::collections::HashMap<&str, std::collections::HashMap<PathBuf, String>> = std::collections::HashMap::new();
        let ids: Vec<PathBuf> = paths.iter().map(|p| std::fs::canonicalize(dir(p)).unwrap_or_else(|_| dir(p))).collect();
        for ((p, name), id) in paths.iter().zip(&named).zip(&ids) {
            if let Some(name) = name {
                folders.entry(name).or_default().entry(id.clone()).or_insert_with(|| dir(p).display().to_string());
            }
        }
        named
            .iter()
            .zip(&ids)
            .map(|(name, id)| {
                let name = name.as_deref()?;
                let same = &folders[name];
                Some(if same.len() > 1 { same[id].clone() } else { name.to_string() })
            })
            .collect()
    }

    pub fn subject(&self, path: &Path) -> Option<String> {
        match self {
            SubjectFrom::Names => crate::data::scan::person_in_path(path),
            SubjectFrom::All(s) => Some(s.clone()),
            // `x.png` and `./x.png` have no folder name in the path itself: the working folder's.
            SubjectFrom::Parent => {
                let dir = folder_of(path);
                let name = match dir.file_name() {
                    Some(n) => n.to_os_string(),
                    None => std::fs::canonicalize(dir).ok()?.file_name()?.to_os_string(),
                };
                Some(name.to_string_lossy().into_owned())
            }
            SubjectFrom::Nobody => None,
            SubjectFrom::Table(t) => t.get(path).cloned(),
            SubjectFrom::Pattern(p) => p.subject(path).or_else(|| crate::data::scan::person_in_path(path)),
        }
    }
}

/// The folders `--subject-from parent` would take for people that are named
/// as expressions (the model's classes or raw labels, `scan::EXPRESSION_WORDS`:
/// JAFFE's seven and their other spellings, `smiling`): class folders, most
/// likely, where each "person" would be one expression and that person's
/// statistics would remove it.
pub fn folders_named_as_labels(cfg: &RunConfig, paths: &[PathBuf]) -> Vec<String> {
    let words = crate::data::scan::EXPRESSION_WORDS.iter().copied();
    let labels: Vec<&str> = cfg.classes.iter().chain(&cfg.raw_classes).map(String::as_str).chain(words).collect();
    let folders: std::collections::BTreeSet<String> = paths.iter().filter_map(|p| SubjectFrom::Parent.subject(p)).collect();
    folders.into_iter().filter(|f| labels.iter().any(|l| l.eq_ignore_ascii_case(f))).collect()
}

/// The images `expand_inputs` found, and the sub-folders it left out.
#[derive(Debug, Default)]
pub struct Inputs {
    pub paths: Vec<PathBuf>,
    /// Sub-folders met while recursing that vggft wrote itself (runs, cv
    /// folders, face crops, heatmaps): `predict -r data` would otherwise
    /// answer for `explain`'s heatmaps and the crops as if they were photos.
    pub skipped: Vec<PathBuf>,
    /// Pictures in the folders in a format vggft does not read (GIF, HEIC,
    /// …), and photo names there that are no regular file (a FIFO).
    pub unread: Vec<PathBuf>,
    /// Each image's person, where a CSV manifest named it (its `subject` column).
    pub subjects: std::collections::HashMap<PathBuf, String>,
    /// Manifests given that label their images (`evaluate` would score them).
    pub labelled: Vec<PathBuf>,
    /// The `manifest.csv` of a folder given, which listed its images.
    pub manifests: Vec<PathBuf>,
    /// Folders given (`-r`) in two levels, a folder per person of class
    /// folders or the reverse (`scan::nested_people`), and how each was read:
    /// their photos' people are the person folders.
    pub nested: Vec<(PathBuf, String)>,
}

use crate::data::image::UNREAD;

impl Inputs {
    /// Each input's person as `predict` and `explain` take it: `--subject`
    /// (every input one person), `--subject-from parent` or `none`, else a
    /// manifest's subject column, else the file name — by the run's
    /// `--subject-pattern` (`pattern`) first where it has one.
    pub fn subjects(&self, subject: Option<&str>, from: &str, pattern: Option<&crate::data::scan::SubjectPattern>) -> SubjectFrom {
        let names = pattern.map_or(SubjectFrom::Names, |p| SubjectFrom::Pattern(p.clone()));
        match (subject, from) {
            (Some(s), _) => SubjectFrom::All(s.to_string()),
            (None, "parent") => SubjectFrom::Parent,
            (None, "none") => SubjectFrom::Nobody,
            _ if !self.subjects.is_empty() => {
                SubjectFrom::Table(self.paths.iter().filter_map(|p| Some((p.clone(), self.subjects.get(p).cloned().or_else(|| names.subject(p))?))).collect())
            }
            _ => names,
        }
    }
}

/// A file a folder gives as a photo: named as an image vggft reads, and not
/// hidden (macOS's `._photo.jpg` metadata twins), as the dataset scan has it.
fn is_photo(path: &Path) -> bool {
    !crate::data::scan::hidden(path) && path.is_file() && is_image(path)
}

/// The paths that `-` reads from standard input (`find … | vggft predict -`;
/// one call, so a subject-normalised model sees each person's photos
/// together, where `xargs` may split them over calls): one per line, or
/// NUL-separated as `find -print0` writes them; blank lines and a Windows
/// line end's `\r` are dropped. Each is an input as on the command line
/// (a file, folder or manifest). A picture piped in whole is refused.
pub fn listed_inputs(mut from: impl std::io::Read) -> crate::error::Result<Vec<PathBuf>> {
    const STDIN: &str = "standard input (-)";
    let mut bytes = Vec::new();
    from.read_to_end(&mut bytes).map_err(|e| crate::error::Error::io(STDIN, e))?;
    // A picture's magic can begin a path too (`BMW.jpg` is a BMP's `BM`,
    // `P5/x.png` a PGM's `P5`): only binary data (no UTF-8 text) is one.
    let head = &bytes[..bytes.len().min(512)];
    let binary = std::str::from_utf8(head).is_err_and(|e| e.error_len().is_some());
    if binary && (::image::guess_format(&bytes).is_ok() || crate::data::image::archive_kind(&bytes).is_some()) {
        return Err(crate::error::Error::file(
            STDIN,
            "holds a picture or archive, not a list of paths: give the picture's path, or pipe in the paths one per line",
        ));
    }
    let sep = if bytes.contains(&0) { 0 } else { b'\n' };
    let paths: Vec<PathBuf> =
        bytes.split(|&b| b == sep).map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.iter().all(u8::is_ascii_whitespace)).map(path_of_bytes).collect();
    if paths.is_empty() {
        return Err(crate::error::Error::file(STDIN, "lists no paths (give them one per line)"));
    }
    Ok(paths)
}

#[cfg(unix)]
fn path_of_bytes(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

#[cfg(not(unix))]
fn path_of_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(b).into_owned())
}

/// Files and folders → image paths: a folder's images sorted, one level deep,
/// or with `recursive` every sub-folder's too (depth first, sorted), except
/// sub-folders of vggft's own output (a folder named on the command line is
/// always read). A folder without images stays in the list, so it is
/// reported ("holds no images"), as does one that cannot be listed, at any
/// depth ("cannot read"). A `.csv` file is a manifest: its `path` column's
/// images (no label needed), each with its `subject` where it has one; a
/// folder holding `manifest.csv` is read through it, as a dataset's is.
pub fn expand_inputs(inputs: &[PathBuf], recursive: bool) -> crate::error::Result<Inputs> {
    fn folder(p: &Path, recursive: bool, out: &mut Inputs) -> usize {
        let Ok(listing) = std::fs::read_dir(p) else {
            out.paths.push(p.to_path_buf());
            return 1;
        };
        let mut entries: Vec<PathBuf> = listing.flatten().map(|e| e.path()).collect();
        entries.sort();
        let mut found = 0;
        for q in entries {
            // Hidden entries (files and folders) are skipped as the dataset scan skips them.
            if crate::data::scan::hidden(&q) {
                continue;
            }
            if is_photo(&q) {
                out.paths.push(q);
                found += 1;
            } else if crate::data::scan::is_unread_picture(&q) || crate::data::scan::is_photo_name_not_file(&q) {
                out.unread.push(q);
            } else if recursive && q.is_dir() && !q.is_symlink() {
                if crate::data::scan::is_vggft_output(&q) {
                    out.skipped.push(q);
                } else {
                    found += folder(&q, true, out);
                }
            }
        }
        found
    }
    let mut out = Inputs::default();
    let manifest = |m: &Path, out: &mut Inputs| -> crate::error::Result<()> {
        let listed = crate::data::scan::read_manifest(m, false)?.samples;
        if !listed.is_empty() && listed.iter().all(|s| !s.label.is_empty()) {
            out.labelled.push(m.to_path_buf());
        }
        for s in listed {
            if let Some(subject) = s.subject {
                out.subjects.insert(s.path.clone(), subject);
            }
            out.paths.push(s.path);
        }
        Ok(())
    };
    for p in inputs {
        refuse_model_folder(p)?;
        if p.is_dir() && p.join("manifest.csv").is_file() {
            // As a dataset folder is read: its manifest lists the images (and their people).
            manifest(&p.join("manifest.csv"), &mut out)?;
            out.manifests.push(p.join("manifest.csv"));
        } else if p.is_dir() {
            if folder(p, recursive, &mut out) == 0 {
                out.paths.push(p.clone());
            }
            // As a dataset folder in two levels is read: the person folders give the people.
            if let Some((people, how)) = recursive.then(|| crate::data::scan::nested_people(p)).flatten() {
                out.subjects.extend(people);
                out.nested.push((p.clone(), how));
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            manifest(p, &mut out)?;
        } else {
            out.paths.push(p.clone());
        }
    }
    Ok(out)
}

/// Refuses an input folder that vggft wrote and that holds its plots, not
/// photos: `vggft predict RUN face.jpg` would otherwise answer the run's
/// learning curves as a face, with the default model. Face crops and
/// heatmap folders stay readable (their images are faces).
fn refuse_model_folder(p: &Path) -> crate::error::Result<()> {
    if crate::data::scan::is_run_output(p) {
        return Err(Error::file(p, format!("is a trained model (a run folder), not photos: give it as --model {}", p.display())));
    }
    match crate::data::scan::output_kind(p) {
        Some(kind @ ("a cv folder" | "an lr-find folder" | "an evaluate folder")) => {
            Err(Error::file(p, format!("is {kind} that vggft wrote (its plots and records), not photos")))
        }
        _ => Ok(()),
    }
}

/// Whether a folder of vggft's output that `-r` skipped is read when named
/// (face crops, heatmaps) rather than refused (runs, cv, evaluate, lr-find).
pub fn readable_when_named(p: &Path) -> bool {
    refuse_model_folder(p).is_ok()
}

/// Decodes and prepares one input as the run's preprocessing says (gray S×S,
/// and the face box used); `given`: its box chosen beforehand (`--face
/// person`: its person's).
pub fn prepare_one(path: &Path, cfg: &RunConfig, finder: &mut Option<crate::data::face::FaceFinder>, given: Option<&crate::data::face::FaceBox>) -> Prepared {
    prepare_with(path, &cfg.data.preprocess, finder, given)
}

/// Refuses a `vggft preprocess --out` that would replace something it did
/// not write: the file must be named `.safetensors` (so a slip such as
/// `--out face.tiff` cannot overwrite the photo with tensors), and an existing
/// file must be an earlier preprocess output (one tensor, `input`), not a
/// weights file or a model.
fn check_input_file(out: &Path) -> crate::error::Result<()> {
    use crate::error::Error;
    if out.extension().is_none_or(|e| e != "safetensors") {
        return Err(Error::file(out, "the network input is written as safetensors: give --out a name ending in .safetensors"));
    }
    if std::fs::symlink_metadata(out).is_ok() && crate::model::weights::header_names(out).is_none_or(|names| names != ["input"]) {
        return Err(Error::file(
            out,
            "exists and is not an earlier `vggft preprocess` output (one tensor named `input`): it is left as it is; give another --out",
        ));
    }
    Ok(())
}

/// `vggft preprocess`: writes `image`'s exact network input as `run`'s
/// single-image path prepares it — crop, gray → RGB and normalisation, a
/// 1×3×S×S float32 tensor `input` — to `out` (safetensors, atomically),
/// for other tools (ONNX, PyTorch) to feed. Returns S.
pub fn preprocess(image: &Path, run: &Path, out: &Path) -> crate::error::Result<i64> {
    check_input_file(out)?;
    // A folder reached the per-photo reader, which took it for an empty one.
    if image.is_dir() {
        return Err(crate::error::Error::file(
            image,
            "is a folder: preprocess writes one image's network input, give one image (predict and explain take folders)",
        ));
    }
    let cfg = crate::run::read_config(run)?;
    let px = prepare_alone(image, &cfg, &mut None)?.0;
    let s = cfg.data.preprocess.image_size as i64;
    let x = cfg.data.preprocess.normalise(&Tensor::from_slice(&px).view([1, 1, s, s]));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir(dir)?;
    }
    crate::model::weights::save_atomic(&[("input".to_string(), x)], out)?;
    Ok(s)
}

/// `prepare_one` for a photo the single-image head answers (no other photo
/// of its person): the whole frame where that head reads it
/// (`RunConfig::single_frame`), else as the run prepares every photo.
pub fn prepare_alone(path: &Path, cfg: &RunConfig, finder: &mut Option<crate::data::face::FaceFinder>) -> Prepared {
    prepare_with(path, &single_preprocess(cfg), finder, None)
}

/// How the single-image head's photos are prepared (`prepare_alone`).
pub(crate) fn single_preprocess(cfg: &RunConfig) -> crate::data::Preprocess {
    let pre = &cfg.data.preprocess;
    if cfg.single_frame {
        crate::data::Preprocess { face: crate::data::face::FaceMode::None, ..pre.clone() }
    } else {
        pre.clone()
    }
}

fn prepare_with(
    path: &Path,
    pre: &crate::data::Preprocess,
    finder: &mut Option<crate::data::face::FaceFinder>,
    given: Option<&crate::data::face::FaceBox>,
) -> Prepared {
    if path.is_dir() {
        // A folder that cannot be listed is not an empty one.
        return Err(match std::fs::read_dir(path) {
            Err(e) => Error::io(path, e),
            Ok(listing) => {
                // Class folders (`data/neutral/…`) given without -r: say where the images are.
                let mut with_images: Vec<String> = listing
                    .flatten()
                    .map(|e| e.path())
                    .filter(|q| q.is_dir() && !crate::data::scan::hidden(q) && !crate::data::scan::is_vggft_output(q))
                    .filter(|q| std::fs::read_dir(q).into_iter().flatten().flatten().any(|e| is_photo(&e.path())))
                    .map(|q| q.file_name().unwrap_or_default().to_string_lossy().into_owned())
                    .collect();
                with_images.sort();
                if with_images.is_empty() {
                    Error::file(path, "folder holds no images")
                } else {
                    Error::file(
                        path,
                        format!(
                            "folder holds no images itself, its sub-folders do ({}): -r (--recursive) reads them",
                            crate::error::short_list(&with_images, 5)
                        ),
                    )
                }
            }
        });
    }
    let g = image::load_gray(path)?;
    crate::data::prepare_image_in(&g, pre, finder, given).map_err(|e| e.at(path))
}

/// With `--face person`, each input's box from the faces found in its
/// person's inputs (as `keys` groups them; a lone photo keeps its own); none
/// for the inputs `alone` marks, which are framed whole.
pub(crate) fn person_boxes(
    cfg: &RunConfig,
    paths: &[PathBuf],
    (keys, alone): (&[Option<String>], &[bool]),
    finder: &mut Option<crate::data::face::FaceFinder>,
) -> Vec<Option<crate::data::face::FaceBox>> {
    use crate::data::face;
    if cfg.data.preprocess.face != face::FaceMode::Person || keys.iter().all(Option::is_none) {
        return vec![None; paths.len()];
    }
    let found: Vec<Option<(face::FaceBox, (u32, u32))>> = paths
        .iter()
        .zip(alone)
        .map(|(p, &alone)| {
            if alone {
                return None;
            }
            let g = image::load_gray(p).ok()?;
            Some((face::locate(finder, &g, &cfg.data.preprocess.face).ok()??, g.source_size()))
        })
        .collect();
    face::per_person(&found, keys)
}

/// Predicts every path, in batches of `batch`. A subject-normalised model
/// normalises each person with ≥ `subject::PERSON_MIN` inputs by that
/// person's statistics and answers the others with its single-image head;
/// an input that repeats an earlier one of its person (the same file, or
/// the same bytes) counts once there and gets that one's answer, so that
/// `a.jpg a.jpg` is one photo, not a person with nothing to tell apart.
pub fn predict(
    cfg: &RunConfig,
    model: &Vgg16,
    paths: &[PathBuf],
    subjects: &SubjectFrom,
    options: (bool, usize),
    device: Device,
    reporter: &mut dyn crate::train::Reporter,
) -> Vec<Prediction> {
    predict_each(cfg, model, paths, subjects, options, device, reporter, &mut |_| {})
}

/// `predict`, handing each answer to `each` in input order as soon as it is
/// known (`reporter.suspend` around it, so a progress bar stays whole): an
/// input answered alone with its batch, a person's photos once that
/// person's last input is in (their features are then let go), so a long
/// `predict -r` prints as it goes and holds the features of the people
/// under way (one at a time when their inputs come together), not of every
/// input. A model saved before `head.person_var` pools
/// the people's spread over all of them (its old rule) and answers its
/// people at the end.
#[allow(clippy::too_many_arguments)]
pub fn predict_each(
    cfg: &RunConfig,
    model: &Vgg16,
    paths: &[PathBuf],
    subjects: &SubjectFrom,
    (tta_flip, batch): (bool, usize),
    device: Device,
    reporter: &mut dyn crate::train::Reporter,
    each: &mut dyn FnMut(&Prediction),
) -> Vec<Prediction> {
    let keys = subjects.keys(paths);
    let first = if model.cfg.subject_norm { repeats(paths, &keys) } else { (0..paths.len()).collect() };
    let distinct: Vec<usize> = (0..paths.len()).filter(|&i| first[i] == i).collect();
    if let Some(r) = (0..paths.len()).find(|&i| first[i] != i) {
        reporter.message(&format!(
            "{} input(s) repeat an earlier one of the same person (the same file, or identical bytes; first: {}): each is answered as that one and counted once in its person's statistics",
            paths.len() - distinct.len(),
            paths[r].display()
        ));
    }
    let unique: Vec<PathBuf> = distinct.iter().map(|&i| paths[i].clone()).collect();
    let unique_keys: Vec<Option<String>> = distinct.iter().map(|&i| keys[i].clone()).collect();
    let mut out: Vec<Prediction> = Vec::with_capacity(paths.len());
    // A repeat's first comes before it, so its answer is already in `out`.
    let repeat = |out: &[Prediction], i: usize| {
        let f = &out[first[i]];
        Prediction {
            path: paths[i].clone(),
            probs: f.probs.as_ref().map(Clone::clone).map_err(|e| Error::image(&paths[i], e.problem())),
            raw: f.raw.clone(),
            mode: f.mode,
            face: f.face.clone(),
            distance: f.distance,
        }
    };
    // Hands on the repeats before the next distinct input, then that input.
    let mut take = |out: &mut Vec<Prediction>, next: Option<Prediction>| {
        while out.len() < paths.len() && first[out.len()] != out.len() {
            let r = repeat(out, out.len());
            each(&r);
            out.push(r);
        }
        if let Some(p) = next {
            each(&p);
            out.push(p);
        }
    };
    predict_distinct(cfg, model, (&unique, &unique_keys), (tta_flip, batch), device, reporter, &mut |p| take(&mut out, Some(p)));
    take(&mut out, None);
    out
}

/// A face set as distributed (KDEF, RaFD, CK+) given whole to `predict`,
/// which answers every picture in it (KDEF's profiles, RaFD's other
/// cameras, every CK+ frame) where a run trained on it reads fewer: which
/// ones, and the command that scores those against their labels.
pub fn distributed_set_note(dir: &Path, paths: &[PathBuf]) -> Option<String> {
    let ds = crate::data::scan::scan(dir, crate::data::scan::DataFormat::Auto).ok()?;
    let (set, reads) = crate::data::scan::layout_reads(ds.format)?;
    let here = paths.iter().filter(|p| p.starts_with(dir)).count();
    (here > ds.samples.len()).then(|| {
        format!(
            "{} is {set} as distributed: predict answers all {here} pictures given here, where a run trained on it reads its {} {reads}; `vggft evaluate --data {}` scores those against their labels",
            dir.display(),
            ds.samples.len(),
            dir.display()
        )
    })
}

/// For each input, the index of the first input that is the same photo of
/// the same person (`keys`): a regular file with the same bytes (SHA-256 of
/// its contents; the same file named twice is one). An input without a
/// person (answered alone anyway) or that cannot be read is its own (its
/// error is reported where it is decoded).
pub(crate) fn repeats(paths: &[PathBuf], keys: &[Option<String>]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<(&str, String), usize> = std::collections::HashMap::new();
    paths
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(i, (p, key))| {
            let Some(person) = key.as_deref() else { return i };
            let file = std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= image::MAX_ALLOC);
            let Some(sha) = file.then(|| crate::model::weights::sha256_file(p).ok()).flatten() else { return i };
            *seen.entry((person, sha)).or_insert(i)
        })
        .collect()
}

/// A photo waiting for the rest of its person: its pooled features (and their mirror image's), one row each.
type Waiting = (Tensor, Option<Tensor>);

/// An input as `predict` prepared it: its pixels (the network's gray input) and face box, or why not.
pub type Prepared = crate::error::Result<(Vec<f32>, Option<crate::data::face::FaceBox>)>;

/// An answer's task-class probabilities and (a head trained on raw labels) raw-label probabilities.
type TaskRaw = (Vec<f64>, Vec<f64>);

/// `predict` of inputs none of which repeats another; `keys`: each one's
/// person. Each answer goes to `emit`, in input order, once it is known.
fn predict_distinct(
    cfg: &RunConfig,
    model: &Vgg16,
    (paths, keys): (&[PathBuf], &[Option<String>]),
    (tta_flip, batch): (bool, usize),
    device: Device,
    reporter: &mut dyn crate::train::Reporter,
    emit: &mut dyn FnMut(Prediction),
) {
    let mut finder = None;
    // Each input's answer until it is handed on; `None` once handed on (or not yet made).
    let mut out: Vec<Option<Prediction>> = Vec::with_capacity(paths.len());
    let mut handed = 0;
    // A subject-normalised model: the pooled features of each decoded input with other photos of its
    // person, kept until that person's last input is in. An input alone from the start (no subject id,
    // or its person's only photo) is answered with its chunk, and nothing of it kept.
    let mut waiting: std::collections::BTreeMap<usize, Waiting> = std::collections::BTreeMap::new();
    let plan = Plan::new(cfg, model, keys);
    // Progress only when there is more than one batch to do.
    let show = paths.len() > batch.max(1);
    if show {
        reporter.progress("predicting", "image(s)", 0, paths.len());
    }
    // Each person's face box (`--face person`), found when the person's first input comes up.
    let mut given: Vec<Option<crate::data::face::FaceBox>> = vec![None; paths.len()];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); plan.last.len()];
    for (i, &g) in plan.groups.iter().enumerate() {
        members[g].push(i);
    }
    for chunk in paths.chunks(batch.max(1)) {
        if show && !out.is_empty() {
            reporter.progress("predicting", "image(s)", out.len(), paths.len());
        }
        let base = out.len();
        find_boxes(cfg, (paths, keys), &plan, base..base + chunk.len(), (&mut members, &mut given), &mut finder);
        let prepared: Vec<(PathBuf, Prepared)> = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let r = if plan.alone[base + j] { prepare_alone(p, cfg, &mut finder) } else { prepare_one(p, cfg, &mut finder, given[base + j].as_ref()) };
                (p.clone(), r)
            })
            .collect();
        let answered = chunk_forward(cfg, model, &prepared, (base, &plan.alone_from_start), (tta_flip, device), &mut waiting);
        out.extend(chunk_answers(cfg, model, prepared, (base, &plan), answered).into_iter().map(Some));
        // The people whose last input was in this chunk.
        let end = out.len();
        let ready: Vec<usize> = waiting.keys().copied().filter(|&i| plan.last[plan.groups[i]] < end).collect();
        if !ready.is_empty() {
            let rows: Vec<(usize, Waiting)> = ready.iter().filter_map(|i| waiting.remove_entry(i)).collect();
            answer_people(cfg, model, (keys, plan.framed, &plan.alone), rows, (tta_flip, device), &mut out);
        }
        if show && end == paths.len() {
            reporter.progress("predicting", "image(s)", end, paths.len());
        }
        // Hand on every answer up to the first input still waiting for its person.
        while handed < out.len() && !waiting.contains_key(&handed) {
            let mut p = out[handed].take();
            reporter.suspend(&mut || p.take().into_iter().for_each(&mut *emit));
            handed += 1;
        }
    }
}

/// What `predict_distinct` knows of its inputs before it reads one.
struct Plan {
    /// Each input's person (`subject::groups`).
    groups: Vec<usize>,
    /// The input after which each person's photos are all in (a model
    /// without `head.person_var` pools the people's spread over everyone it
    /// answers: its people wait for the last input).
    last: Vec<usize>,
    /// Inputs alone from the start (no subject id, or their person's only
    /// photo): answered with their chunk, nothing of them kept.
    alone_from_start: Vec<bool>,
    /// Whether the single-image head reads the whole frame (`--face person`).
    framed: bool,
    /// Inputs the single-image head will answer (too few photos of their
    /// person), where it reads the whole frame.
    alone: Vec<bool>,
}

impl Plan {
    fn new(cfg: &RunConfig, model: &Vgg16, keys: &[Option<String>]) -> Plan {
        let single: Vec<bool> = modes_of(keys).into_iter().map(|m| m == Mode::Single).collect();
        let groups = crate::subject::groups(keys);
        let own = model.person_prior().is_some();
        let mut last = vec![0usize; groups.iter().max().map_or(0, |m| m + 1)];
        for (i, &g) in groups.iter().enumerate() {
            last[g] = if own { i } else { keys.len() - 1 };
        }
        let framed = cfg.single_frame && model.cfg.subject_norm;
        let alone = single.iter().map(|&s| framed && s).collect();
        Plan { groups, last, alone_from_start: single, framed, alone }
    }
}

/// The face box (`--face person`) of every input of each person whose
/// first input lies in `range`, found from all that person's photos
/// (`members`: each person's inputs still without one; taken here).
fn find_boxes(
    cfg: &RunConfig,
    (paths, keys): (&[PathBuf], &[Option<String>]),
    plan: &Plan,
    range: std::ops::Range<usize>,
    (members, given): (&mut [Vec<usize>], &mut [Option<crate::data::face::FaceBox>]),
    finder: &mut Option<crate::data::face::FaceFinder>,
) {
    for i in range {
        let rows = std::mem::take(&mut members[plan.groups[i]]);
        if rows.is_empty() {
            continue;
        }
        let pick = |v: &[Option<String>]| rows.iter().map(|&k| v[k].clone()).collect::<Vec<_>>();
        let found = person_boxes(
            cfg,
            &rows.iter().map(|&k| paths[k].clone()).collect::<Vec<_>>(),
            (&pick(keys), &rows.iter().map(|&k| plan.alone[k]).collect::<Vec<_>>()),
            finder,
        );
        for (k, b) in rows.into_iter().zip(found) {
            given[k] = b;
        }
    }
}

/// The answers of one chunk's inputs (`prepared`; input `base + j` is the
/// chunk's `j`) from what `chunk_forward` answered, in order: an input
/// waiting for the rest of its person gets an empty answer, made in
/// `answer_people`; one that did not decode, its error.
fn chunk_answers(
    cfg: &RunConfig,
    model: &Vgg16,
    prepared: Vec<(PathBuf, Prepared)>,
    (base, plan): (usize, &Plan),
    (probs, distances): (Vec<TaskRaw>, Vec<f64>),
) -> Vec<Prediction> {
    let (mut probs, mut distances) = (probs.into_iter(), distances.into_iter());
    prepared
        .into_iter()
        .enumerate()
        .map(|(j, (path, r))| match r {
            // Subject-normalised and waiting for the rest of its person: answered in `answer_people`.
            Ok((_, face)) if model.cfg.subject_norm && !plan.alone_from_start[base + j] => {
                Prediction { path, probs: Ok(vec![]), raw: vec![], mode: None, face, distance: None }
            }
            Ok((_, face)) => {
                let (task, raw) = probs.next().unwrap_or_default();
                let mut p = Prediction { path, probs: Ok(vec![]), raw: vec![], mode: None, face, distance: distances.next() };
                if model.cfg.subject_norm {
                    p.answer(cfg, model, (task, raw), Mode::Single);
                } else {
                    (p.probs, p.raw) = (Ok(task), raw);
                }
                p
            }
            Err(e) => Prediction { path, probs: Err(e), raw: vec![], mode: None, face: None, distance: None },
        })
        .collect()
}

/// One chunk of `predict`'s inputs through the network (those of
/// `prepared` that decoded; input `base + j` is the chunk's `j`): the
/// answers, in order, of those answered alone from the start (every input
/// of a model without person statistics), task and raw probabilities, and
/// their distances from the training photos; the others' pooled features
/// (and their mirror images') go into `waiting` for the rest of their person.
fn chunk_forward(
    cfg: &RunConfig,
    model: &Vgg16,
    prepared: &[(PathBuf, Prepared)],
    (base, alone_from_start): (usize, &[bool]),
    (tta_flip, device): (bool, Device),
    waiting: &mut std::collections::BTreeMap<usize, Waiting>,
) -> (Vec<TaskRaw>, Vec<f64>) {
    let decoded: Vec<usize> = (0..prepared.len()).filter(|&j| prepared[j].1.is_ok()).collect();
    if decoded.is_empty() {
        return (vec![], vec![]);
    }
    let s = cfg.data.preprocess.image_size as i64;
    let flat: Vec<f32> = prepared.iter().filter_map(|(_, r)| r.as_ref().ok()).flat_map(|(px, _)| px.iter().copied()).collect();
    let gray = Tensor::from_slice(&flat).view([decoded.len() as i64, 1, s, s]).to_device(device);
    let x = cfg.data.preprocess.normalise(&gray);
    if !model.cfg.subject_norm {
        let (p, d) = model.frozen(|| {
            let f = model.pooled_from(&x, Block::Conv1, false);
            let mut p = model.classify(&f, false).softmax(1, tch::Kind::Double);
            if tta_flip {
                p = (p + model.forward_t(&x.flip([3]), false).softmax(1, tch::Kind::Double)) / 2.0;
            }
            (p, model.feature_distance(&f, false))
        });
        return (split_raw(cfg, &p), per_row(d));
    }
    let (f, flipped) = model.frozen(|| (model.pooled_from(&x, Block::Conv1, false), tta_flip.then(|| model.pooled_from(&x.flip([3]), Block::Conv1, false))));
    // Each decoded input of the chunk: answered alone now, or kept for its person.
    let mut now = Vec::new();
    for (r, &j) in decoded.iter().enumerate() {
        if alone_from_start[base + j] {
            now.push(r as i64);
        } else {
            let row = |t: &Tensor| t.narrow(0, r as i64, 1);
            waiting.insert(base + j, (row(&f), flipped.as_ref().map(row)));
        }
    }
    if now.is_empty() {
        return (vec![], vec![]);
    }
    let at = Tensor::from_slice(&now).to_device(f.device());
    let (p, _, d) =
        person_or_single::<String>(model, &f.index_select(0, &at), flipped.as_ref().map(|g| g.index_select(0, &at)).as_ref(), &vec![None; now.len()]);
    (split_raw(cfg, &p), per_row(d))
}

/// Answers the decoded inputs `rows` (index, features) that waited for
/// their person, with all of those people's photos among them: each person
/// by that person's statistics, or — left with too few decoded inputs
/// (some did not decode) — alone, framed as the single-image head reads.
fn answer_people(
    cfg: &RunConfig,
    model: &Vgg16,
    (keys, framed, alone): (&[Option<String>], bool, &[bool]),
    rows: Vec<(usize, Waiting)>,
    (tta_flip, device): (bool, Device),
    out: &mut [Option<Prediction>],
) {
    let (rows, feats): (Vec<usize>, Vec<Waiting>) = rows.into_iter().unzip();
    let f = Tensor::cat(&feats.iter().map(|p| p.0.shallow_clone()).collect::<Vec<_>>(), 0);
    let flipped = feats.iter().map(|p| p.1.as_ref().map(Tensor::shallow_clone)).collect::<Option<Vec<_>>>().map(|v| Tensor::cat(&v, 0));
    drop(feats);
    let keys: Vec<Option<String>> = rows.iter().map(|&i| keys[i].clone()).collect();
    let path = |i: usize| out[i].as_ref().map(|p| p.path.clone()).unwrap_or_default();
    let late: Vec<usize> = modes_of(&keys).iter().enumerate().filter(|&(k, &m)| framed && m == Mode::Single && !alone[rows[k]]).map(|(k, _)| k).collect();
    let (f, flipped) = match reframed(cfg, model, &late.iter().map(|&k| path(rows[k])).collect::<Vec<_>>(), tta_flip, device) {
        Some((lf, lg)) => {
            let at = Tensor::from_slice(&late.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(f.device());
            for &k in &late {
                if let Some(p) = out[rows[k]].as_mut() {
                    p.face = None;
                }
            }
            (f.index_copy(0, &at, &lf), flipped.zip(lg).map(|(g, lg)| g.index_copy(0, &at, &lg)))
        }
        None => (f, flipped),
    };
    let (p, modes, distance) = person_or_single(model, &f, flipped.as_ref(), &keys);
    let distance = per_row(distance);
    for (k, ((answer, &i), mode)) in split_raw(cfg, &p).into_iter().zip(&rows).zip(modes).enumerate() {
        if let Some(p) = out[i].as_mut() {
            p.distance = distance.get(k).copied();
            p.answer(cfg, model, answer, mode);
        }
    }
}

/// Head probabilities → per row (task-class probabilities, raw-label probabilities or empty).
fn split_raw(cfg: &RunConfig, head: &Tensor) -> Vec<TaskRaw> {
    let task = crate::run::rows(&crate::eval::sum_to_task(head, &cfg.raw_to_task, cfg.classes.len()));
    let raw = if cfg.raw_to_task.is_empty() { vec![vec![]; task.len()] } else { crate::run::rows(head) };
    task.into_iter().zip(raw).collect()
}

/// Each input's mode by how many inputs its person has (`subject::PERSON_MIN`).
pub(crate) fn modes_of<T: PartialEq + Clone>(subjects: &[Option<T>]) -> Vec<Mode> {
    let groups = crate::subject::groups(subjects);
    let mut count = vec![0usize; groups.iter().max().map_or(0, |m| m + 1)];
    for &g in &groups {
        count[g] += 1;
    }
    subjects.iter().zip(&groups).map(|(s, &g)| if s.is_some() && count[g] >= crate::subject::PERSON_MIN { Mode::Person } else { Mode::Single }).collect()
}

/// The pooled features (and with `tta_flip` their mirror images') of
/// `paths` prepared as the single-image head reads them (`prepare_alone`);
/// `None` when there are none, or one no longer decodes.
fn reframed(cfg: &RunConfig, model: &Vgg16, paths: &[PathBuf], tta_flip: bool, device: Device) -> Option<(Tensor, Option<Tensor>)> {
    if paths.is_empty() {
        return None;
    }
    let s = cfg.data.preprocess.image_size as i64;
    // 32 at a time, as every other pass: one forward over hundreds of photos would hold all their activations.
    let mut parts = Vec::new();
    for chunk in paths.chunks(32) {
        let px: Vec<f32> = chunk.iter().map(|p| prepare_alone(p, cfg, &mut None).ok().map(|(px, _)| px)).collect::<Option<Vec<_>>>()?.concat();
        let x = cfg.data.preprocess.normalise(&Tensor::from_slice(&px).view([chunk.len() as i64, 1, s, s]).to_device(device));
        parts.push(model.frozen(|| (model.pooled_from(&x, Block::Conv1, false), tta_flip.then(|| model.pooled_from(&x.flip([3]), Block::Conv1, false)))));
    }
    let f = Tensor::cat(&parts.iter().map(|p| p.0.shallow_clone()).collect::<Vec<_>>(), 0);
    let g = parts.iter().map(|p| p.1.as_ref().map(Tensor::shallow_clone)).collect::<Option<Vec<_>>>().map(|v| Tensor::cat(&v, 0));
    Some((f, g))
}

/// Head probabilities (float64) from pooled features `f` (and their flipped
/// twins, averaged in): person-normalised for subjects with enough rows (each
/// by that person's rows alone, their variance shrunk towards the training
/// people's), the single-image head for the rest. Also each row's feature
/// distance (`None` for a run saved without the statistics): a photo
/// answered alone from the training photos as the single-image head read
/// them (`Vgg16::feature_distance`), a person's photo from that person's
/// others (`SubjectNorm::spread_distance`).
pub(crate) fn person_or_single<T: PartialEq + Clone>(
    model: &Vgg16,
    f: &Tensor,
    flipped: Option<&Tensor>,
    subjects: &[Option<T>],
) -> (Tensor, Vec<Mode>, Option<Tensor>) {
    let groups = crate::subject::groups(subjects);
    let modes = modes_of(subjects);
    let prior = model.person_prior();
    let use_person = Tensor::from_slice(&modes.iter().map(|&m| m == Mode::Person).collect::<Vec<_>>()).to_device(f.device());
    let probs = |f: &Tensor| {
        tch::no_grad(|| {
            let norm = crate::subject::SubjectNorm::fit_towards(f, &groups, prior.as_ref());
            let person = model.classify(&norm.apply(f, &groups), false).softmax(1, tch::Kind::Double);
            let single = model.classify_global(f, false).unwrap_or_else(|| model.classify(f, false)).softmax(1, tch::Kind::Double);
            (person.where_self(&use_person.unsqueeze(1), &single), norm)
        })
    };
    let (mut p, norm) = probs(f);
    if let Some(g) = flipped {
        p = (p + probs(g).0) / 2.0;
    }
    // A person's photo against that person's others, in the training people's within-person spread; a photo
    // answered alone against the training photos.
    let distance = model.feature_distance(f, true).map(|s| tch::no_grad(|| norm.spread_distance(f, &groups).where_self(&use_person, &s)));
    (p, modes, distance)
}

impl Prediction {
    /// Sets a subject-normalised model's answer made in `mode`: its (task,
    /// raw-label) probabilities as reported, the single-image head's calibrated.
    fn answer(&mut self, cfg: &RunConfig, model: &Vgg16, (mut task, mut raw): TaskRaw, mode: Mode) {
        cfg.calibrate_row(Some(mode), &mut task, &mut raw);
        self.probs = Ok(task);
        // A single-image head that learnt the task's classes has no raw-label answer to give.
        self.raw = if mode == Mode::Single && !model.cfg.single_to_task.is_empty() { Vec::new() } else { raw };
        self.mode = Some(mode);
    }

    /// The class index the run answers for this image (at its threshold), when it was predicted.
    pub fn class(&self, cfg: &RunConfig) -> Option<usize> {
        self.probs.as_ref().ok().map(|p| crate::eval::threshold::decide(p, cfg.threshold_for(self.mode)))
    }
}

/// The most probable class.
pub fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
}

/// `vggft evaluate`: a finished run on a labelled dataset.
pub struct Evaluation {
    /// At the run's threshold (two-class runs that set one), else by the larger probability.
    pub metrics: crate::eval::Metrics,
    /// The larger probability's metrics, when the run decides at a threshold.
    pub at_half: Option<crate::eval::Metrics>,
    /// How each image was predicted (subject-normalised models).
    pub modes: Vec<Option<Mode>>,
    pub paths: Vec<PathBuf>,
    /// Each image's label as the data gives it (before any label map).
    pub labels: Vec<String>,
    pub y: Vec<i64>,
    pub probs: Vec<Vec<f64>>,
    pub skipped: Vec<(PathBuf, String)>,
    /// The scored images as the network saw them (N,1,S,S), for heatmaps.
    pub gray: Tensor,
    /// Each scored image's person (a subject-normalised model's statistics).
    pub subjects: Vec<Option<String>>,
    /// Each scored image's pooled features (N, D), as the head read them before any person statistics.
    pub features: Tensor,
    /// Images of the data that were this run's training images (its split.csv).
    pub overlap: usize,
    /// Of those, how many were left out (`--exclude-train`).
    pub excluded: usize,
    /// Where the data is the run's own: the scored images that are other
    /// photos of people it trained on, and those people (sorted).
    pub trained_people: (usize, Vec<String>),
    /// What the data's subject ids may get wrong for person statistics
    /// (ids differing only in case), for a subject-normalised model.
    pub warnings: Vec<String>,
    /// Each scored image's feature distance from the training photos
    /// (`Prediction::distance`; empty for a run without their statistics).
    pub distances: Vec<f64>,
}

/// What the data's labels may get wrong for a score: labels the run never
/// trained on that the binary rule reads as the rest (folders `a/` and `b/`
/// for a neutral-vs-rest model), and classes of the model the data lacks.
fn label_warnings(cfg: &RunConfig, (ds, names): (&crate::data::scan::Dataset, &[(String, String)]), y: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.data.task == crate::data::split::Task::Binary && cfg.data.label_map.is_empty() && !cfg.raw_classes.is_empty() {
        let known = |l: &str| l.eq_ignore_ascii_case("ne") || cfg.raw_classes.iter().any(|r| r.eq_ignore_ascii_case(l));
        let new: std::collections::BTreeSet<&str> =
            ds.samples.iter().map(|s| crate::data::split::mapped_label(names, &s.label).unwrap_or(&s.label)).filter(|l| !known(l)).collect();
        if !new.is_empty() {
            out.push(format!(
                "warning: label(s) {} are not among the run's training labels ({}): the binary task reads them as `{}` (--label-map {}=LABEL reads one as a training label)",
                new.iter().copied().collect::<Vec<_>>().join(", "),
                cfg.raw_classes.join(", "),
                crate::data::split::BINARY_CLASSES[1],
                new.first().copied().unwrap_or_default()
            ));
        }
    }
    let absent: Vec<&str> = cfg.classes.iter().enumerate().filter(|&(k, _)| !y.contains(&(k as i64))).map(|(_, c)| c.as_str()).collect();
    if !absent.is_empty() {
        out.push(format!(
            "warning: the data holds no image of class {}: its scores cover the other class(es) alone (balanced accuracy is their recall, ROC AUC undefined)",
            absent.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// A warning when people scored with their own statistics show one class
/// only in the data: those statistics assume a mix of expressions and, for
/// such a person, remove the expression itself (a JAFFE-format set's happy
/// and neutral photos, each person one class: 0.47 balanced accuracy where
/// the same photos mixed per person score 0.95).
fn one_class_people(subjects: &[Option<String>], modes: &[Option<Mode>], y: &[i64]) -> Option<String> {
    let scored = subjects.iter().zip(modes).zip(y).filter_map(|((s, m), &c)| (*m == Some(Mode::Person)).then_some((s.as_deref()?, c as usize)));
    let (one, people) = crate::subject::one_class_people(scored);
    let one: Vec<String> = one.into_iter().map(|(p, _)| p.to_string()).collect();
    (!one.is_empty()).then(|| {
        format!(
            "warning: {} of the {people} people scored with their own statistics show one class only here ({}): those statistics assume a mix of expressions and remove a single one, so these scores understate the model on such people and are not what it does on mixed photos; a manifest without its subject column scores every photo by the single-image head",
            one.len(),
            crate::error::short_list(&one, 3)
        )
    })
}

/// Feature distances (`Vgg16::feature_distance`) as numbers, one per row;
/// none for a run without statistics.
fn per_row(distance: Option<Tensor>) -> Vec<f64> {
    distance.and_then(|d| Vec::<f64>::try_from(d.to_kind(tch::Kind::Double)).ok()).unwrap_or_default()
}

/// The warning for inputs whose features lie far from the training photos'
/// (distance above [`UNUSUAL`]): the model answers anything it is given,
/// with full confidence for a blank frame, so the answer alone does not
/// show that the picture was nothing like what it learnt.
pub fn unusual_warning(names: &[String], distance: &[f64]) -> Option<String> {
    let mut far: Vec<(&String, f64)> = names.iter().zip(distance).filter(|&(_, &d)| is_unusual(d)).map(|(n, &d)| (n, d)).collect();
    if far.is_empty() {
        return None;
    }
    far.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed: Vec<String> = far.iter().map(|(n, d)| format!("{n} ({d:.1})")).collect();
    Some(format!(
        "warning: {} image(s) look unlike every photo the model was trained on (feature distance above {UNUSUAL}, where training photos score about 1: a blank or dark frame, no face, or a very different kind of picture), and their answers mean little: {}",
        far.len(),
        crate::error::short_list(&listed, 8)
    ))
}

/// A run's training images (its split.csv; none without one), to tell an
/// input that is one of them: by its path however it is spelt, or as a
/// byte-identical copy elsewhere (a dataset folder copied or moved, then
/// predicted or evaluated on, would otherwise pass for new photos).
#[derive(Default)]
pub struct Training {
    paths: std::collections::HashSet<PathBuf>,
    /// The training files by size (split.csv's `bytes`): only an input of
    /// one of these sizes can be a copy. Each with its SHA-256 where the run
    /// recorded it (`run::HASHES`), else hashed from the file on first need.
    by_size: std::collections::HashMap<u64, Vec<(PathBuf, Option<String>)>>,
    /// SHA-256 of the training files of each size asked about.
    hashes: std::cell::RefCell<std::collections::HashMap<u64, std::collections::HashSet<String>>>,
    /// The subject ids of the training side (ids of the run's own data).
    people: std::collections::HashSet<String>,
}

impl Training {
    /// The training images of run `dir`: its split.csv's `train` rows; the
    /// error of a split.csv that cannot be opened (missing, or unreadable to
    /// this user), for the caller to say or refuse on: nothing is known then.
    /// A run before 2026-12-08 recorded no hashes: its photos moved away are
    /// not known.
    pub fn of_run(dir: &Path) -> std::io::Result<Training> {
        let mut r = csv::Reader::from_reader(std::fs::File::open(dir.join("split.csv"))?);
        let recorded: std::collections::HashMap<String, String> = std::fs::File::open(dir.join(crate::run::HASHES))
            .map(|f| csv::Reader::from_reader(f).records().flatten().filter_map(|row| Some((row.get(0)?.to_string(), row.get(1)?.to_string()))).collect())
            .unwrap_or_default();
        let mut t = Training::default();
        for row in r.records().flatten().filter(|row| row.get(4) == Some("train")) {
            let Some(path) = row.get(0) else { continue };
            let real = std::fs::canonicalize(path).ok();
            let size = row.get(5).and_then(|b| b.parse().ok()).or_else(|| std::fs::metadata(path).ok().map(|m| m.len()));
            if let Some(size) = size {
                t.by_size.entry(size).or_default().push((PathBuf::from(path), recorded.get(path).cloned()));
            }
            t.paths.extend(real);
            t.people.extend(row.get(3).filter(|p| !p.is_empty()).map(str::to_string));
        }
        Ok(t)
    }

    /// The warning for `of_run`'s error `e` (of `inputs`: "inputs", "images"):
    /// none where run `dir` has no split.csv (a model copied with its
    /// config.json alone is not checked, as before).
    pub fn unchecked(dir: &Path, e: &std::io::Error, inputs: &str) -> Option<String> {
        (e.kind() != std::io::ErrorKind::NotFound).then(|| {
            format!("warning: {}: cannot read: {e}; whether these {inputs} were the run's training images is not checked", dir.join("split.csv").display())
        })
    }

    /// Whether `p` is one of the training images or a copy of one.
    pub fn has(&self, p: &Path) -> bool {
        let Ok(c) = std::fs::canonicalize(p) else { return false };
        if self.paths.contains(&c) {
            return true;
        }
        let Some((size, same)) = std::fs::metadata(&c).ok().and_then(|m| Some((m.len(), self.by_size.get(&m.len())?))) else { return false };
        let Ok(h) = crate::model::weights::sha256_file(&c) else { return false };
        let mut hashes = self.hashes.borrow_mut();
        let known = |(t, h): &(PathBuf, Option<String>)| h.clone().or_else(|| crate::model::weights::sha256_file(t).ok());
        hashes.entry(size).or_insert_with(|| same.iter().filter_map(known).collect()).contains(&h)
    }
}

/// Scans `data` (labels mapped as the run was trained), predicts every image, scores it.
/// `names`: the data's own labels read as the run's (`evaluate --label-map`,
/// `smiling=happy`), before the run's rule. `pattern`: each photo's person
/// from its file name (`evaluate --subject-pattern`), instead of the run's
/// own pattern; a name it does not match keeps what the layout gives.
pub fn evaluate(
    cfg: &RunConfig,
    model: &Vgg16,
    data: &Path,
    (format, names, pattern): (crate::data::scan::DataFormat, &[(String, String)], Option<&str>),
    skip_bad: bool,
    (training, exclude): (&Training, bool),
    (tta_flip, device): (bool, Device),
) -> crate::error::Result<Evaluation> {
    let mut ds = crate::data::scan::scan(data, format)?;
    if let Some(p) = run_pattern(pattern, cfg)? {
        p.apply_where_named(&mut ds);
    }
    // Once per image: a copy is known by hashing it.
    let seen: std::collections::HashSet<PathBuf> = ds.samples.iter().filter(|s| training.has(&s.path)).map(|s| s.path.clone()).collect();
    let overlap = ds.samples.iter().filter(|s| seen.contains(&s.path)).count();
    if exclude {
        ds.samples.retain(|s| !seen.contains(&s.path));
        if ds.samples.is_empty() {
            return Err(Error::dataset(data, format!("every one of its {overlap} images was a training image of this run (--exclude-train)")));
        }
    }
    let class_of = |label: &str| run_class(cfg, names, label);
    refuse_unknown_classes(cfg, &ds, &class_of)?;
    let loaded = crate::data::load_images(&ds.samples, &cfg.data.preprocess, skip_bad)?;
    ds.samples = loaded.kept.iter().map(|&i| ds.samples[i].clone()).collect();
    let mut y = Vec::with_capacity(ds.samples.len());
    for smp in &ds.samples {
        let name = class_of(&smp.label);
        match cfg.classes.iter().position(|c| *c == name) {
            Some(k) => y.push(k as i64),
            None => return Err(Error::file(&smp.path, format!("class `{name}` is not one the model was trained on ({})", cfg.classes.join(", ")))),
        }
    }
    let subjects: Vec<Option<String>> = ds.samples.iter().map(|s| s.subject.clone()).collect();
    // Only in the run's own data do its subject ids name the same people as its split.csv's.
    let own_data = data_folder(data).is_some_and(|f| data_folder(&cfg.data.path) == Some(f));
    let of_trained: Vec<&str> = ds
        .samples
        .iter()
        .filter(|s| own_data && !seen.contains(&s.path))
        .filter_map(|s| s.subject.as_deref().filter(|p| training.people.contains(*p)))
        .collect();
    let trained_people = (of_trained.len(), of_trained.iter().map(|p| p.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect());
    // Images the single-image head answers, as it reads them (`RunConfig::single_frame`: the whole frame).
    // In place, and the whole frames dropped once copied: a dataset of
    // thousands is held once (0.2 MB an image at 224 px), not three times.
    let mut gray = loaded.gray;
    if let (Some(lone), true) = (loaded.lone, cfg.single_frame && model.cfg.subject_norm) {
        let rows: Vec<i64> = modes_of(&subjects).iter().enumerate().filter(|&(_, &m)| m == Mode::Single).map(|(i, _)| i as i64).collect();
        if !rows.is_empty() {
            let at = Tensor::from_slice(&rows);
            let _ = gray.index_copy_(0, &at, &lone.index_select(0, &at));
        }
    }
    let Scores { features: f, probs, modes, distance } = score_all(cfg, model, &gray, &subjects, (tta_flip, device));
    let distance = per_row(distance);
    // At the run's threshold (each image's mode's), and at the larger probability beside it.
    let metrics = crate::eval::metrics_at(&y, &probs, &cfg.classes, |i| cfg.threshold_for(modes[i]));
    // Only where some image was decided off 0.5: otherwise the same figures twice.
    let off_half = (0..y.len()).any(|i| cfg.threshold_off_half(modes[i]).is_some());
    let at_half = off_half.then(|| crate::eval::metrics(&y, &probs, &cfg.classes));
    // First what the layout's reading left out (KDEF's profiles), as finetune says it.
    let warnings = ds
        .notes
        .iter()
        .cloned()
        .chain(label_warnings(cfg, (&ds, names), &y))
        .chain(if model.cfg.subject_norm { crate::data::scan::case_warning(&ds) } else { None })
        .chain(if model.cfg.subject_norm {
            crate::data::scan::unnamed_people_warning(&ds, "every photo is answered alone, by the single-image head")
        } else {
            None
        })
        .chain(one_class_people(&subjects, &modes, &y))
        .chain(unusual_warning(&ds.samples.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>(), &distance))
        .collect();
    let distances = distance;
    Ok(Evaluation {
        metrics,
        at_half,
        modes,
        paths: ds.samples.iter().map(|s| s.path.clone()).collect(),
        labels: ds.samples.iter().map(|s| s.label.clone()).collect(),
        y,
        probs,
        // Pictures the scan left out (a format vggft does not read, no regular file) are skipped too, and said.
        skipped: loaded
            .skipped
            .into_iter()
            .chain(ds.unread.iter().map(|p| (p.clone(), if p.is_file() { UNREAD } else { crate::data::scan::NOT_A_FILE }.to_string())))
            .collect(),
        gray,
        subjects: subjects.clone(),
        features: f,
        overlap,
        excluded: if exclude { overlap } else { 0 },
        trained_people,
        warnings,
        distances,
    })
}

/// The folder a dataset path names (a manifest's own folder), resolved.
fn data_folder(p: &Path) -> Option<PathBuf> {
    let c = std::fs::canonicalize(p).ok()?;
    if c.is_file() {
        c.parent().map(Path::to_path_buf)
    } else {
        Some(c)
    }
}

/// A raw label of evaluated data as the run's class: `names` (the data's
/// own labels read as the run's) first, then the run's own rule (its label
/// map as training read it, or neutral vs the rest).
fn run_class(cfg: &RunConfig, names: &[(String, String)], label: &str) -> String {
    use crate::data::split::mapped_label;
    let label = mapped_label(names, label).unwrap_or(label);
    if !cfg.data.label_map.is_empty() {
        mapped_label(&cfg.data.label_map, label).unwrap_or(label).to_string()
    } else if cfg.data.task == crate::data::split::Task::Binary {
        let neutral = label.eq_ignore_ascii_case("neutral") || label.eq_ignore_ascii_case("ne");
        crate::data::split::BINARY_CLASSES[if neutral { 0 } else { 1 }].to_string()
    } else {
        label.to_string()
    }
}

/// Refuses data with a class the model never learnt (CK+'s contempt for a
/// JAFFE model), before any image is decoded: the first such image, how
/// many there are, and the `--label-map` that would read it.
fn refuse_unknown_classes(cfg: &RunConfig, ds: &crate::data::scan::Dataset, class_of: &dyn Fn(&str) -> String) -> crate::error::Result<()> {
    let Some(first) = ds.samples.iter().find(|s| !cfg.classes.contains(&class_of(&s.label))) else { return Ok(()) };
    let name = class_of(&first.label);
    let n = ds.samples.iter().filter(|s| class_of(&s.label) == name).count();
    // Another spelling of an expression the run knows (`happiness` for `happy`): that one suggested.
    let spelt = crate::data::split::expression_name(&first.label).filter(|e| cfg.classes.contains(&class_of(e)) && *e != first.label);
    let map = match spelt {
        Some(e) => format!("`--label-map {}={e}` reads that label as the run's `{e}`", first.label),
        // Folders of people (`S005/S005_001_00000001.png`) are no labels to map.
        None if crate::data::scan::people_as_classes_warning(ds).is_some() => {
            return Err(Error::dataset(
                &ds.root,
                format!(
                    "its class folders hold one person each, as the file names tell (`{}` holds {}'s photos): they are people, not the classes the model was trained on ({}); give the photos in class folders or in a manifest.csv with a label column",
                    first.label,
                    first.subject.as_deref().unwrap_or_default(),
                    cfg.classes.join(", ")
                ),
            ))
        }
        None => format!("`--label-map {}=CLASS` reads that label as one of them", first.label),
    };
    Err(Error::file(
        &first.path,
        format!(
            "class `{name}` ({n} image(s) of the data, this the first) is not one the model was trained on ({}): {map}, or leave those images out, e.g. with a manifest.csv that lists the others",
            cfg.classes.join(", "),
        ),
    ))
}

/// What `score_all` gives: each image's pooled features, task
/// probabilities (calibrated), mode and distance from the training photos.
struct Scores {
    features: Tensor,
    probs: Vec<Vec<f64>>,
    modes: Vec<Option<Mode>>,
    /// None where the model has no training statistics to measure against.
    distance: Option<Tensor>,
}

/// Scores every image of `gray` (normalised a chunk of 32 at a time, as
/// the network reads them): with person statistics each person of
/// `subjects` normalised by their own images (transductive) or answered by
/// the single-image head.
fn score_all(cfg: &RunConfig, model: &Vgg16, gray: &Tensor, subjects: &[Option<String>], (tta_flip, device): (bool, Device)) -> Scores {
    let on_device = gray.to_device(device);
    let n = on_device.size()[0];
    let chunks = |f: &dyn Fn(&Tensor) -> Tensor| -> Tensor {
        let chunk = |s: i64| cfg.data.preprocess.normalise(&on_device.narrow(0, s, (n - s).min(32)));
        Tensor::cat(&model.frozen(|| (0..n).step_by(32).map(|s| f(&chunk(s))).collect::<Vec<_>>()), 0)
    };
    let features = chunks(&|x| model.pooled_from(x, Block::Conv1, false));
    let task = |p: &Tensor| crate::run::rows(&crate::eval::sum_to_task(p, &cfg.raw_to_task, cfg.classes.len()));
    if model.cfg.subject_norm {
        let g = tta_flip.then(|| chunks(&|x| model.pooled_from(&x.flip([3]), Block::Conv1, false)));
        let (p, modes, distance) = person_or_single(model, &features, g.as_ref(), subjects);
        let mut probs = task(&p);
        for (row, &mode) in probs.iter_mut().zip(&modes) {
            cfg.calibrate(Some(mode), std::slice::from_mut(row));
        }
        Scores { features, probs, modes: modes.into_iter().map(Some).collect(), distance }
    } else {
        let mut p = model.frozen(|| model.classify(&features, false)).softmax(1, tch::Kind::Double);
        if tta_flip {
            p = (p + chunks(&|x| model.forward_t(&x.flip([3]), false)).softmax(1, tch::Kind::Double)) / 2.0;
        }
        let distance = model.feature_distance(&features, false);
        Scores { probs: task(&p), modes: vec![None; n as usize], distance, features }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only inputs above the limit are named, the farthest first, each with its distance.
    #[test]
    fn the_unusual_warning_names_the_inputs_beyond_the_limit() {
        let names: Vec<String> = ["face.png", "black.png", "chart.png", "edge.png"].iter().map(|s| s.to_string()).collect();
        let w = unusual_warning(&names, &[0.9, 5.24, 11.0, UNUSUAL]).unwrap();
        assert!(w.contains("(feature distance above 4, where training photos score about 1"), "{w}");
        assert!(w.starts_with("warning: 2 image(s) look unlike every photo the model was trained on"), "{w}");
        assert!(w.ends_with("chart.png (11.0), black.png (5.2)"), "{w}");
        assert!(unusual_warning(&names, &[0.9, 1.2, 3.9, UNUSUAL]).is_none(), "at the limit or below: no warning");
        assert!(unusual_warning(&names, &[]).is_none(), "a run without statistics: no warning");
    }
}

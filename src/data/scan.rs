//! Finding the images of a dataset and their raw labels and subjects, in a
//! deterministic (sorted) order. Three layouts: JAFFE file names, class
//! folders, and a CSV manifest (`path,label[,subject]`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};

/// `jfif` and `jpe`: JPEGs as Windows saves them from a browser.
pub(crate) const IMAGE_EXTENSIONS: [&str; 10] = ["tif", "tiff", "png", "jpg", "jpeg", "jfif", "jpe", "webp", "bmp", "pgm"];

/// JAFFE expression codes and their names.
pub(crate) const JAFFE_CODES: [(&str, &str); 7] =
    [("AN", "angry"), ("DI", "disgust"), ("FE", "fear"), ("HA", "happy"), ("NE", "neutral"), ("SA", "sad"), ("SU", "surprise")];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Told from the folder's contents.
    Auto,
    /// A flat folder of JAFFE-named photos (`KA.AN1.39.tiff`: person, expression), or a folder per person of them.
    Jaffe,
    /// KDEF as distributed: a folder per person and session (`AF01/`) of
    /// photos whose names give person, expression and angle (`AF01ANS.JPG`).
    Kdef,
    /// RaFD as distributed: a flat folder of photos whose names give camera,
    /// person, expression and gaze (`Rafd090_01_Caucasian_female_angry_frontal.jpg`).
    Rafd,
    /// CK+ as distributed: `cohn-kanade-images/S005/001/` frames beside
    /// `Emotion/S005/001/…_emotion.txt` labels.
    Ckplus,
    /// Oulu-CASIA as distributed, one camera and lighting (`VL/Strong/`): a
    /// folder per person (`P001/`) of its six expression sequences (`Anger/`).
    Oulu,
    /// A folder per class (`neutral/`, `happy/`).
    Folders,
    /// A manifest: `path,label[,subject]`.
    Csv,
}

impl DataFormat {
    /// The value `--layout` takes for it (`jaffe`, `folders`, …).
    fn flag_value(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Raw label as found (JAFFE: the expression name, e.g. `neutral`).
    pub label: String,
    pub subject: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub format: DataFormat,
    pub samples: Vec<Sample>,
    /// Manifest rows whose path resolved outside the manifest's folder.
    #[serde(default)]
    pub outside_paths: Vec<PathBuf>,
    /// Pictures in the data's folders that vggft does not decode (GIF,
    /// HEIC, …), and photo names that are no regular file (a FIFO, a link
    /// to nothing): not samples, but said (`unread_warning`).
    #[serde(default)]
    pub unread: Vec<PathBuf>,
    /// What the layout's reading left out or assumed, said once (KDEF's
    /// photos at other angles than straight ahead).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A path's last component as text (empty for `/` or `..`): what the name
/// readers and messages look at.
fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(crate) fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Picture formats vggft does not decode, which a folder of photos often
/// holds (phones save HEIC, the web GIF and AVIF): left out of a folder's
/// images, but said, not silently.
const OTHER_PICTURE_EXTENSIONS: [&str; 11] = ["gif", "heic", "heif", "avif", "jxl", "jp2", "tga", "dng", "cr2", "nef", "arw"];

/// Whether `path` is a regular file named as a picture vggft does not read.
pub(crate) fn is_unread_picture(path: &Path) -> bool {
    path.is_file() && path.extension().and_then(|e| e.to_str()).is_some_and(|e| OTHER_PICTURE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether `path` is named as a photo vggft reads but is no regular file
/// (a FIFO, a device, a link to one or to nothing): left out, and said.
pub(crate) fn is_photo_name_not_file(path: &Path) -> bool {
    is_image(path) && !path.is_file() && !path.is_dir()
}

/// Why a photo-named entry that is no regular file was left out.
pub const NOT_A_FILE: &str = "not a regular file (a FIFO, a device, or a link to one or to nothing)";

/// The photos among `entries` that vggft decodes, in order; pictures in a
/// format it does not read, and photo names that are no regular file, go to
/// `unread` (said, not silently dropped).
fn photos_of(entries: Vec<PathBuf>, unread: &mut Vec<PathBuf>) -> Vec<PathBuf> {
    let mut photos = Vec::new();
    for p in entries {
        if is_unread_picture(&p) || is_photo_name_not_file(&p) {
            unread.push(p);
        } else if p.is_file() && is_image(&p) {
            photos.push(p);
        }
    }
    photos
}

/// What a list of pictures left out is told as (`unread`): those in a
/// format vggft does not read, and photo names that are no regular file.
pub fn unread_warning(unread: &[PathBuf]) -> Option<String> {
    let (pictures, others): (Vec<&PathBuf>, Vec<&PathBuf>) = unread.iter().partition(|p| p.is_file());
    let mut said = Vec::new();
    if let Some(first) = pictures.first() {
        said.push(format!(
            "{} picture(s) in a format vggft does not read (it reads TIFF, PNG, JPEG, WebP, BMP and PGM; first: {}): convert them to PNG or JPEG to use them",
            pictures.len(),
            first.display()
        ));
    }
    if let Some(first) = others.first() {
        said.push(format!(
            "{} entr{} named as a photo but {NOT_A_FILE} (first: {})",
            others.len(),
            if others.len() == 1 { "y" } else { "ies" },
            first.display()
        ));
    }
    (!said.is_empty()).then(|| format!("warning: left out {}", said.join("; and ")))
}

/// Subject ids that differ only in case (`ka` and `KA`): two people to every
/// split and statistic, though most likely one person spelt two ways, whose
/// photos a subject-grouped split could then put on both sides.
pub fn subjects_differing_in_case(ds: &Dataset) -> Vec<(String, String)> {
    let ids: BTreeSet<&str> = ds.samples.iter().filter_map(|s| s.subject.as_deref()).collect();
    let mut first: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for id in ids {
        match first.get(&id.to_lowercase()) {
            Some(&a) => out.push((a.to_string(), id.to_string())),
            None => {
                first.insert(id.to_lowercase(), id);
            }
        }
    }
    out
}

/// Class folders whose files mostly have names that give their person
/// (`person_in_name`), some not: the people come from the names only when
/// every file has one, so a stray file (a file manager's `KA.NE1.26
/// copy.tiff`, a `portrait.png`) silently turns the subject-grouped split
/// into an image split. Says which files, and `consequence` (what losing the
/// people costs where it is called).
pub fn unnamed_people_warning(ds: &Dataset, consequence: &str) -> Option<String> {
    if ds.format != DataFormat::Folders || ds.samples.iter().any(|s| s.subject.is_some()) {
        return None;
    }
    let people: Vec<Option<String>> = ds.samples.iter().map(|s| person_in_name(&file_name(&s.path))).collect();
    let named = people.iter().flatten().count();
    let unnamed: Vec<&Sample> = ds.samples.iter().zip(&people).filter(|(_, p)| p.is_none()).map(|(s, _)| s).collect();
    if people.iter().flatten().collect::<std::collections::BTreeSet<_>>().len() < 2 || named < unnamed.len() {
        return None;
    }
    let list: Vec<String> = unnamed
        .iter()
        .map(|s| match copy_of(&file_name(&s.path)) {
            Some(original) => format!("{} (a copy of {original}?)", s.path.display()),
            None => s.path.display().to_string(),
        })
        .collect();
    Some(format!(
        "warning: {} of {} images lack a name that gives their person, as JAFFE's, KDEF's, RaFD's and CK+'s give it for the other {}: {}; people are read from the names only when every file has one, so {consequence} — rename or remove those files, or list the images in a manifest.csv with a subject column",
        unnamed.len(),
        ds.samples.len(),
        named,
        crate::error::short_list(&list, 3)
    ))
}

/// Class folders that are people: each holds the photos of one person (as
/// their names give it: `S005/S005_001_00000001.png`, `--layout folders` on
/// `KA/KA.AN1.39.tiff`), each another. A model would learn who is in a
/// photo, not the expression, and a subject-grouped split puts each class
/// on one side only. JAFFE names sorted so are read by name instead
/// (`jaffe_person_folders`); this says it where no name gives the label.
pub fn people_as_classes_warning(ds: &Dataset) -> Option<String> {
    if ds.format != DataFormat::Folders {
        return None;
    }
    let mut people: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for s in &ds.samples {
        people.entry(s.label.as_str()).or_default().insert(s.subject.as_deref()?);
    }
    let distinct: BTreeSet<&str> = people.values().flatten().copied().collect();
    if people.len() < 2 || people.values().any(|p| p.len() != 1) || distinct.len() != people.len() {
        return None;
    }
    let shown: Vec<String> = people.iter().map(|(class, p)| format!("{class}/: {}", p.iter().next().copied().unwrap_or_default())).collect();
    Some(format!(
        "warning: each class folder holds the photos of one person, as their names tell ({}): these look like a folder per person, not classes, and a model would learn who is in a photo; give the classes as folders (neutral/, happy/; a folder per person of class folders, KA/neutral/, is read too) or in a manifest.csv with a subject column",
        crate::error::short_list(&shown, 3)
    ))
}

/// What `subjects_differing_in_case` finds is told as, if anything.
pub fn case_warning(ds: &Dataset) -> Option<String> {
    let cased: Vec<String> = subjects_differing_in_case(ds).iter().map(|(a, b)| format!("`{a}` and `{b}`")).collect();
    (!cased.is_empty()).then(|| {
        format!(
            "warning: subject ids {} differ only in case: each is a person of its own here; if they are one person, spell the id one way (a subject-grouped split can put one person on both sides)",
            crate::error::short_list(&cased, 3)
        )
    })
}

/// A warning when JAFFE-named images sorted into class folders disagree
/// with their folder (`happy/KA.NE1.26.tiff`): a sorting mistake labels
/// them by the folder. Only folders named as an expression count (`happy`,
/// `Happiness`, `HA`, …); a folder of another name (`smiling`, `pos`) is a
/// label of the user's own.
pub fn jaffe_folder_warning(ds: &Dataset) -> Option<String> {
    if ds.format != DataFormat::Folders {
        return None;
    }
    // Each JAFFE expression and the folder names that mean it.
    let names: [(&str, &[&str]); 7] = [
        ("angry", &["an", "angry", "anger"]),
        ("disgust", &["di", "disgust", "disgusted"]),
        ("fear", &["fe", "fear", "fearful", "afraid", "scared"]),
        ("happy", &["ha", "happy", "happiness", "joy"]),
        ("neutral", &["ne", "neutral"]),
        ("sad", &["sa", "sad", "sadness"]),
        ("surprise", &["su", "surprise", "surprised"]),
    ];
    let meaning = |folder: &str| names.iter().find(|(_, n)| n.iter().any(|x| x.eq_ignore_ascii_case(folder))).map(|(e, _)| *e);
    let odd: Vec<String> = ds
        .samples
        .iter()
        .filter_map(|s| {
            let (_, named) = parse_jaffe_name(s.path.file_name()?.to_str()?)?.ok()?;
            let folder = meaning(&s.label)?;
            (folder != named).then(|| format!("{} ({named} by its name)", s.path.display()))
        })
        .collect();
    (!odd.is_empty()).then(|| {
        format!(
            "warning: {} JAFFE-named image(s) sit in a class folder of another expression, and are labelled by the folder: {}; if they were sorted by mistake, move them",
            odd.len(),
            crate::error::short_list(&odd, 3)
        )
    })
}

/// The name that gives a person (`person_in_name`) a file manager's
/// duplicate was made from: `KA.NE1.26 copy.tiff`, `… copy 2.tiff` (macOS),
/// `… - Copy.tiff`, `… - Copy (2).tiff`, `… (1).tiff` (Windows, browsers);
/// None for any other name.
pub fn copy_of(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    let mut base = stem.trim_end();
    let numbered = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    loop {
        let before = base;
        if let Some(b) = base.strip_suffix(')').and_then(|b| b.rsplit_once(" (")).filter(|(_, n)| numbered(n)) {
            base = b.0;
        }
        if let Some(b) = base.rsplit_once(" copy ").filter(|(_, n)| numbered(n)) {
            base = b.0;
        }
        for suffix in [" copy", " - Copy", " - copy"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        if base == before {
            break;
        }
    }
    let original = format!("{base}.{ext}");
    (base != stem && person_in_name(&original).is_some()).then_some(original)
}

/// The person a photo's path gives: its name's (`person_in_name`), or for
/// an Oulu-CASIA frame (`P001/Anger/000.jpeg`) its person's folder.
pub fn person_in_path(path: &Path) -> Option<String> {
    if let Some(p) = path.file_name().and_then(|n| person_in_name(&n.to_string_lossy())) {
        return Some(p);
    }
    let sequence = path.parent()?;
    let person = sequence.parent()?;
    (OULU_CODES.iter().any(|(folder, _)| file_name(sequence).eq_ignore_ascii_case(folder)) && oulu_person(person)).then(|| file_name(person).to_uppercase())
}

/// How a dataset without people gets them (the end of the sentence that says it has none).
pub const NO_SUBJECTS: &str =
    "; --subject-pattern REGEX takes each photo's person from its file name ('^([^_]+)_' for 002_03.jpg), or a manifest.csv with a subject column lists them";

/// `--subject-pattern`: each photo's person from its file name, where the
/// names follow no face set's convention (`002_03.jpg` → `002` with
/// `^([^_]+)_`) — without a person per photo the split is of images, and the
/// same person sits on both sides of it.
#[derive(Clone, Debug)]
pub struct SubjectPattern(regex::Regex);

/// Patterns are equal when written alike.
impl PartialEq for SubjectPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl SubjectPattern {
    /// The pattern, or why it is not one: a regular expression with at most
    /// one group (the person's part of the name; none: the whole match).
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern.is_empty() {
            return Err(Error::invalid(
                Setting::SubjectPattern,
                "is empty: give a regular expression around the person's part of the file name (`^([^_]+)_` for 002_03.jpg)",
            ));
        }
        let re = regex::Regex::new(pattern).map_err(|e| {
            // The parser's own message spans lines (the pattern, a caret, the error): its last line says what is wrong.
            let why = e.to_string();
            let why = why.lines().last().unwrap_or_default().trim_start_matches("error: ").to_string();
            Error::invalid(Setting::SubjectPattern, format!("`{pattern}` is not a regular expression: {why}"))
        })?;
        if re.captures_len() > 2 {
            return Err(Error::invalid(
                Setting::SubjectPattern,
                format!(
                    "`{pattern}` has {} groups: give one, around the person's part of the file name (`^([^_]+)_` for 002_03.jpg; `(?:…)` groups without capturing), or none to take the whole match",
                    re.captures_len() - 1
                ),
            ));
        }
        Ok(SubjectPattern(re))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The person in `path`'s file name: the group's text (or the whole
    /// match); None where the name does not match or the person is empty.
    pub fn subject(&self, path: &Path) -> Option<String> {
        let name = path.file_name()?.to_string_lossy();
        let c = self.0.captures(&name)?;
        let m = c.get(1).or_else(|| c.get(0))?;
        (!m.as_str().is_empty()).then(|| m.as_str().to_string())
    }

    /// Sets every sample's person from its name; a name that gives none is
    /// an error naming it (a training set needs the person of every photo).
    pub fn apply(&self, ds: &mut Dataset) -> Result<()> {
        for s in &mut ds.samples {
            s.subject = Some(self.subject(&s.path).ok_or_else(|| {
                Error::file(
                    &s.path,
                    format!(
                        "its name gives no person by --subject-pattern `{}`: every photo's name must, where the pattern sets the people (or list the photos in a manifest.csv with a subject column)",
                        self.0.as_str()
                    ),
                )
            })?);
        }
        Ok(())
    }

    /// Sets the person of each sample whose name gives one (a run's pattern
    /// on other data: the others keep what their layout gives).
    pub fn apply_where_named(&self, ds: &mut Dataset) {
        for s in &mut ds.samples {
            if let Some(id) = self.subject(&s.path) {
                s.subject = Some(id);
            }
        }
    }
}

/// The person a face set's file name gives: JAFFE's `KA.AN1.39.tiff` → `KA`,
/// KDEF's `AF01ANS.JPG` → `F01` (`parse_kdef_name`), RaFD's
/// `Rafd090_01_Caucasian_female_angry_frontal.jpg` → `01`, or CK+'s
/// `S010_004_00000017.png` (subject, sequence, frame, as CK+ and its shared
/// copies such as CK+48 name their frames) → `S010`; None for other names.
/// Several frames of one CK+ sequence are near-identical: split by image,
/// they sit on both sides.
pub fn person_in_name(name: &str) -> Option<String> {
    if let Some(Ok((person, _))) = parse_jaffe_name(name) {
        return Some(person);
    }
    if let Some((person, _, _)) = parse_kdef_name(name) {
        return Some(person);
    }
    if let Some((person, _, _)) = parse_rafd_name(name) {
        return Some(person);
    }
    let (stem, _) = name.rsplit_once('.')?;
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    match stem.split('_').collect::<Vec<_>>()[..] {
        [subject, sequence, frame]
            if is_image(Path::new(name))
                && subject.len() == 4
                && subject.starts_with(['S', 's'])
                && digits(&subject[1..], 3..=3)
                && digits(sequence, 3..=3)
                && digits(frame, 1..=8) =>
        {
            Some(subject.to_ascii_uppercase())
        }
        _ => None,
    }
}

/// Parses a JAFFE name `SS.EEn.NNN.tiff` → (subject, expression name).
pub fn parse_jaffe_name(name: &str) -> Option<std::result::Result<(String, String), String>> {
    let parts: Vec<&str> = name.split('.').collect();
    // ASCII only: `split_at(2)` below must not cut a multi-byte character (found by fuzzing).
    if parts.len() != 4
        || !is_image(Path::new(name))
        || parts[0].is_empty()
        || !parts[1].is_ascii()
        || parts[1].len() < 3
        || !parts[2].chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let (code, sample) = parts[1].split_at(2);
    if !sample.chars().all(|c| c.is_ascii_digit()) || !code.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    // Case-blind, as copies of the set renamed to lower case read the same
    // (`ka.ne1.26.tiff` is KA's neutral photo, and KA is one person however spelt).
    let code = code.to_ascii_uppercase();
    Some(match JAFFE_CODES.iter().find(|(c, _)| *c == code) {
        Some((_, n)) => Ok((parts[0].to_uppercase(), n.to_string())),
        None => Err(format!("unknown JAFFE expression code `{code}` (known: AN, DI, FE, HA, NE, SA, SU)")),
    })
}

/// A hidden entry (`.DS_Store`, macOS's `._photo.jpg` metadata files, `.git`)
/// or the `__MACOSX` folder of resource forks that a zip made on a Mac
/// unpacks beside the photos: never a photo or a class.
pub(crate) fn hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with('.') || n == "__MACOSX"
    })
}

/// Sorted entries of a folder. An entry that cannot be resolved (a broken
/// link, a symlink loop) is an error, never silently skipped; hidden entries
/// are ignored.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if hidden(&p) {
            continue;
        }
        let meta = std::fs::metadata(&p).map_err(|e| Error::file(&p, format!("cannot read: {e}")))?;
        // A link back up (`data/loop -> data`) would read the data again as a class of itself.
        if meta.is_dir() && p.is_symlink() {
            if let (Ok(to), Ok(here)) = (p.canonicalize(), dir.canonicalize()) {
                if here.starts_with(&to) {
                    return Err(Error::file(&p, format!("is a link to {}, a folder that holds it (a loop): remove the link", to.display())));
                }
            }
        }
        v.push(p);
    }
    v.sort();
    Ok(v)
}

/// Scans `path` in the given (or detected) layout.
pub fn scan(path: &Path, format: DataFormat) -> Result<Dataset> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        // (was the OS's "cannot read: No such file or directory (os error 2)")
        std::io::ErrorKind::NotFound => Error::dataset(path, format!("not found: no folder or file of that name{}", wildcard_hint(path))),
        _ => Error::io(path, e),
    })?;
    // A folder vggft wrote (not the crops' manifest of `faces`), before its PNGs are read as photos.
    let manifest = format == DataFormat::Csv || (format == DataFormat::Auto && path.join("manifest.csv").is_file());
    if meta.is_dir() && !manifest {
        if let Some(kind) = output_kind(path) {
            // A run's or cv's own record of the data it read.
            let read = |file: &str, at: &str| {
                let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join(file)).ok()?).ok()?;
                c.pointer(at)?.as_str().map(|d| format!(" (its data: {d})"))
            };
            let trained_on = read("config.json", "/data/path").or_else(|| read("cv-config.json", "/run/data/path")).unwrap_or_default();
            return Err(Error::dataset(path, format!("is {kind} that vggft wrote, not a folder of photos: give the photos' folder{trained_on}")));
        }
    }
    let format = match format {
        DataFormat::Auto => detect(path, meta.is_dir())?,
        // Every layout but a manifest is a folder (was: "cannot read: Not a directory (os error 20)").
        f if f != DataFormat::Csv && !meta.is_dir() => {
            return Err(Error::dataset(
                path,
                format!("is a file, but --layout {} reads a folder (a CSV manifest: --layout csv, or leave --layout out)", f.flag_value()),
            ));
        }
        f => f,
    };
    let ds = match format {
        DataFormat::Csv => {
            let csv = if meta.is_dir() { path.join("manifest.csv") } else { path.to_path_buf() };
            // (was the OS's "manifest.csv: cannot read: No such file or directory (os error 2)")
            if meta.is_dir() && !csv.exists() {
                return Err(Error::dataset(path, "holds no manifest.csv, which --layout csv reads (leave --layout out to have the layout told)"));
            }
            let ds = read_manifest(&csv, true)?;
            if ds.samples.is_empty() {
                return Err(Error::dataset(&csv, "lists no images: no rows below its header"));
            }
            ds
        }
        DataFormat::Jaffe => scan_jaffe(path)?,
        DataFormat::Kdef => scan_kdef(path)?,
        DataFormat::Rafd => scan_rafd(path)?,
        DataFormat::Ckplus => scan_ckplus(path)?,
        DataFormat::Oulu => scan_oulu(path)?,
        DataFormat::Folders => scan_folders(path)?,
        DataFormat::Auto => unreachable!("detect() returns a concrete format"),
    };
    if ds.samples.is_empty() {
        // Photos lying in the folder itself are no classes (was: "contains no images").
        let entries = if meta.is_dir() { sorted_entries(path).unwrap_or_default() } else { vec![] };
        let images = |list: &[PathBuf]| list.iter().filter(|p| p.is_file() && is_image(p)).count();
        let loose = images(&entries);
        if loose > 0 && format == DataFormat::Folders {
            return Err(Error::dataset(
                path,
                format!("holds {loose} image(s) but no class folders: --layout folders reads one sub-folder per class (leave --layout out to read JAFFE-named files, or give a CSV manifest)"),
            ));
        }
        if loose > 0 {
            return Err(Error::dataset(
                path,
                format!("holds {loose} image(s), none laid out or named as --layout {} reads them (leave --layout out to have it told)", format.flag_value()),
            ));
        }
        // Class folders given another layout (was: "contains no images").
        let folders: Vec<String> = entries
            .iter()
            .filter(|p| format != DataFormat::Folders && p.is_dir() && sorted_entries(p).is_ok_and(|e| images(&e) > 0))
            .map(|p| file_name(p))
            .collect();
        if !folders.is_empty() {
            return Err(Error::dataset(
                path,
                format!(
                    "holds folders of images ({}), none laid out or named as --layout {} reads them (class folders: --layout folders, or leave --layout out to have it told)",
                    crate::error::short_list(&folders, 4),
                    format.flag_value()
                ),
            ));
        }
        // A level deeper (a folder per person of class folders, `KA/neutral/…`) (was: "contains no images").
        let nested: Vec<String> = entries
            .iter()
            .filter(|p| format != DataFormat::Folders && p.is_dir())
            .flat_map(|p| sorted_entries(p).unwrap_or_default())
            .filter(|p| p.is_dir() && sorted_entries(p).is_ok_and(|e| images(&e) > 0))
            .map(|p| format!("{}/{}", p.parent().map(file_name).unwrap_or_default(), file_name(&p)))
            .collect();
        if !nested.is_empty() {
            return Err(Error::dataset(
                path,
                format!(
                    "holds its images two folders down ({}), which --layout {} does not read (leave --layout out to have the layout told)",
                    crate::error::short_list(&nested, 4),
                    format.flag_value()
                ),
            ));
        }
        return Err(Error::dataset(path, "contains no images (looked for .tiff, .png, .jpg, .webp, .bmp)"));
    }
    // A tab or line break in a label or subject id would break predict's
    // tab-separated lines, split.csv's readers and every table that names it.
    for s in &ds.samples {
        for (what, v) in [("label", Some(&s.label)), ("subject id", s.subject.as_ref())] {
            if let Some(v) = v.filter(|v| v.chars().any(char::is_control)) {
                return Err(Error::dataset(
                    path,
                    format!(
                        "{what} `{}` ({}) holds a tab, line break or other control character: name it with printable characters",
                        v.escape_debug(),
                        s.path.display()
                    ),
                ));
            }
        }
    }
    // `Neutral` and `neutral` would be two classes (and two raw labels of the
    // binary task, whose `neutral` ignores case): a typo, not a distinction.
    let mut seen: std::collections::HashMap<String, &Sample> = std::collections::HashMap::new();
    for s in &ds.samples {
        match seen.get(&s.label.to_lowercase()) {
            Some(first) if first.label != s.label => {
                return Err(Error::dataset(
                    path,
                    format!(
                        "labels `{}` ({}) and `{}` ({}) differ only in case: spell each class one way",
                        first.label,
                        first.path.display(),
                        s.label,
                        s.path.display()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(s.label.to_lowercase(), s);
            }
        }
    }
    Ok(ds)
}

/// For a path with a shell's wildcard in it (`jaffe/*.tiff`, quoted so no
/// shell expanded it): that vggft does not expand it, and the folder above.
fn wildcard_hint(path: &Path) -> String {
    // (Not `[`: a folder named `photos [2024]` is more likely than a bracket pattern.)
    let wild = |c: &std::path::Component| c.as_os_str().to_string_lossy().contains(['*', '?']);
    if !path.components().any(|c| wild(&c)) {
        return String::new();
    }
    let above: PathBuf = path.components().take_while(|c| !wild(c)).collect();
    let above = if above.as_os_str().is_empty() { ".".into() } else { above.display().to_string() };
    format!(" (vggft does not expand `*` or `?`: give the folder that holds the photos, --data {above})")
}

/// The archive format a file's first bytes show, if any.
fn archive_kind(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path).ok()?.take(512).read_to_end(&mut head).ok()?;
    super::image::archive_kind(&head)
}

fn detect(path: &Path, is_dir: bool) -> Result<DataFormat> {
    if !is_dir {
        return if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            Ok(DataFormat::Csv)
        } else {
            Err(Error::dataset(
                path,
                match archive_kind(path) {
                    // JAFFE and most face sets come as an archive.
                    Some(kind) => format!("is a {kind} archive, not a folder of photos or a CSV manifest: unpack it and give the folder"),
                    None => "is a file but not a CSV manifest: give a folder or a .csv".into(),
                },
            ))
        };
    }
    if path.join("manifest.csv").is_file() {
        return Ok(DataFormat::Csv);
    }
    let entries = sorted_entries(path)?;
    let images: Vec<&PathBuf> = entries.iter().filter(|p| p.is_file() && is_image(p)).collect();
    let jaffe = images.iter().filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(parse_jaffe_name).is_some()).count();
    if jaffe > 0 && jaffe * 2 >= images.len() {
        return Ok(DataFormat::Jaffe);
    }
    let rafd = images.iter().filter(|p| p.file_name().is_some_and(|n| parse_rafd_name(&n.to_string_lossy()).is_some())).count();
    if rafd > 0 && rafd * 2 >= images.len() {
        return Ok(DataFormat::Rafd);
    }
    if kdef_layout(&entries) {
        return Ok(DataFormat::Kdef);
    }
    if jaffe_person_folders(&entries) {
        return Ok(DataFormat::Jaffe);
    }
    if ckplus_root(path).is_some() {
        return Ok(DataFormat::Ckplus);
    }
    if let Some(e) = ckplus_without_labels(path) {
        return Err(e);
    }
    if oulu_layout(&entries) {
        return Ok(DataFormat::Oulu);
    }
    if let Some(e) = oulu_above(path) {
        return Err(e);
    }
    if entries.iter().any(|p| p.is_dir()) {
        return Ok(DataFormat::Folders);
    }
    if images.is_empty() {
        return Err(Error::dataset(path, "is empty: no images, class folders or manifest.csv"));
    }
    Err(Error::dataset(path, LOOSE_IMAGES))
}

/// A folder of photos straight inside it, in no layout a label can be read
/// from (`faces` adds how to crop such photos).
pub const LOOSE_IMAGES: &str = "holds loose images that are not JAFFE-named (SS.EEn.NNN.tiff): put them in class folders or list them in a manifest.csv";

/// KDEF's expression codes and their names (JAFFE's, `AF` afraid = fear).
pub(crate) const KDEF_CODES: [(&str, &str); 7] =
    [("AF", "fear"), ("AN", "angry"), ("DI", "disgust"), ("HA", "happy"), ("NE", "neutral"), ("SA", "sad"), ("SU", "surprise")];

/// A KDEF person-and-session code: `AF01` (session A or B, F or M, two digits).
fn kdef_person_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 4 && b"ABab".contains(&b[0]) && b"FMfm".contains(&b[1]) && b[2..].iter().all(u8::is_ascii_digit)
}

/// Parses a KDEF name `AF01ANS.JPG` (session, sex, number, expression,
/// angle: S straight, HL/HR half, FL/FR full left/right) → (person,
/// expression name, angle). The person is sex and number (`F01`): sessions A
/// and B photographed the same people.
pub fn parse_kdef_name(name: &str) -> Option<(String, String, String)> {
    let (stem, _) = name.rsplit_once('.')?;
    if !is_image(Path::new(name)) || !stem.is_ascii() || !(7..=8).contains(&stem.len()) || !kdef_person_code(&stem[..4]) {
        return None;
    }
    let stem = stem.to_ascii_uppercase();
    let (code, angle) = stem[4..].split_at(2);
    let (_, label) = KDEF_CODES.iter().find(|(c, _)| *c == code)?;
    ["S", "HL", "HR", "FL", "FR"].contains(&angle).then(|| (stem[1..4].to_string(), label.to_string(), angle.to_string()))
}

/// Whether a folder's entries are KDEF's: sub-folders named by person and
/// session (`AF01`), none other, holding KDEF-named photos.
fn kdef_layout(entries: &[PathBuf]) -> bool {
    let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    !dirs.is_empty()
        && dirs.iter().all(|d| kdef_person_code(&file_name(d)))
        && dirs.iter().any(|d| std::fs::read_dir(d).into_iter().flatten().flatten().any(|e| parse_kdef_name(&file_name(&e.path())).is_some()))
}

/// RaFD's expression words and their names (JAFFE's, and contempt).
const RAFD_WORDS: [(&str, &str); 8] = [
    ("angry", "angry"),
    ("contemptuous", "contempt"),
    ("disgusted", "disgust"),
    ("fearful", "fear"),
    ("happy", "happy"),
    ("neutral", "neutral"),
    ("sad", "sad"),
    ("surprised", "surprise"),
];

/// Parses a RaFD name `Rafd090_01_Caucasian_female_angry_frontal.jpg`
/// (camera angle, person, group, sex, expression, gaze) → (person,
/// expression name, camera angle).
pub fn parse_rafd_name(name: &str) -> Option<(String, String, String)> {
    let (stem, _) = name.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match stem.split('_').collect::<Vec<_>>()[..] {
        [camera, person, group, sex, expression, gaze]
            if is_image(Path::new(name))
                && camera.len() == 7
                && camera.is_ascii()
                && camera[..4].eq_ignore_ascii_case("rafd")
                && digits(&camera[4..])
                && digits(person)
                && person.len() <= 3
                && !group.is_empty()
                && group.chars().all(char::is_alphabetic)
                && ["female", "male"].iter().any(|s| s.eq_ignore_ascii_case(sex))
                && ["frontal", "left", "right"].iter().any(|g| g.eq_ignore_ascii_case(gaze)) =>
        {
            let (_, label) = RAFD_WORDS.iter().find(|(w, _)| w.eq_ignore_ascii_case(expression))?;
            Some((person.to_string(), label.to_string(), camera[4..].to_string()))
        }
        _ => None,
    }
}

const RAFD_READ: &str = "photos of the frontal camera (Rafd090_…, all three gaze directions)";
const KDEF_READ: &str = "straight-ahead photos (…S.JPG)";

/// A face set read from its own layout (KDEF, RaFD, CK+) and what of it a
/// run reads, where the folder holds more (profiles, other cameras, every
/// frame of a sequence): `predict` given the whole folder answers it all.
pub fn layout_reads(format: DataFormat) -> Option<(&'static str, &'static str)> {
    match format {
        DataFormat::Kdef => Some(("KDEF", KDEF_READ)),
        DataFormat::Rafd => Some(("RaFD", RAFD_READ)),
        DataFormat::Ckplus => Some(("CK+", "frames (each labelled sequence's first and the 3 up to its peak)")),
        DataFormat::Oulu => Some(("Oulu-CASIA", OULU_READ)),
        _ => None,
    }
}

/// RaFD's own layout: labels and people from the names; the frontal
/// camera's photos only (`Rafd090_…`, all three gaze directions), as
/// expression studies on RaFD use them.
fn scan_rafd(dir: &Path) -> Result<Dataset> {
    let set = NamedSet {
        format: DataFormat::Rafd,
        name: "RaFD",
        pattern: "Rafd090_01_Caucasian_female_angry_frontal.jpg: camera, person, group, sex, expression, gaze",
        parse: parse_rafd_name,
        view: "090",
        read: RAFD_READ,
        none_read: "none from the frontal camera (Rafd090_…)",
        others: "from the other cameras",
        how: "RaFD layout: each photo's expression and person from its name (Rafd090_01_Caucasian_female_angry_frontal.jpg: person 01, angry)",
    };
    scan_named(dir, sorted_entries(dir)?, &set)
}

/// A file in a face set's layout whose name is none of the set's: which
/// names it takes, and where the file is a file manager's copy of one of
/// them, that.
fn not_a_name(path: &Path, set: &str, pattern: &str) -> Error {
    let name = file_name(path);
    let copy = copy_of(&name)
        .map(|o| format!(": it looks like a file manager's copy of {o}; remove it (a photo counted twice can land on both sides of a split)"))
        .unwrap_or_default();
    Error::file(path, format!("is not a {set} file name ({pattern}){copy}"))
}

/// A face set whose file names give person, expression and view (KDEF,
/// RaFD), and how its layout is read: one view, the others counted.
struct NamedSet {
    format: DataFormat,
    name: &'static str,
    /// An example name and what its parts are.
    pattern: &'static str,
    /// Name → (person, expression, view).
    parse: fn(&str) -> Option<(String, String, String)>,
    /// The view read.
    view: &'static str,
    read: &'static str,
    none_read: &'static str,
    others: &'static str,
    how: &'static str,
}

/// The photos among `entries` of a `NamedSet`, its one view read; a file
/// that is no such name is refused (named as a copy where it is one).
fn scan_named(dir: &Path, entries: Vec<PathBuf>, set: &NamedSet) -> Result<Dataset> {
    let (mut samples, mut unread, mut other_views) = (Vec::new(), Vec::new(), 0usize);
    for p in photos_of(entries, &mut unread) {
        let name = file_name(&p);
        match (set.parse)(&name) {
            Some((person, label, view)) if view == set.view => samples.push(Sample { path: p, label, subject: Some(person) }),
            Some(_) => other_views += 1,
            None => return Err(not_a_name(&p, set.name, set.pattern)),
        }
    }
    if samples.is_empty() && other_views > 0 {
        return Err(Error::dataset(
            dir,
            format!("holds {other_views} {} photos, {}, which are the ones read: list the others in a manifest.csv to use them", set.name, set.none_read),
        ));
    }
    let mut notes = vec![set.how.to_string()];
    if other_views > 0 {
        notes.push(format!(
            "{}: read the {} {}; {other_views} {} left out — list them in a manifest.csv to use them",
            set.name,
            samples.len(),
            set.read,
            set.others
        ));
    }
    Ok(Dataset { root: dir.to_path_buf(), format: set.format, samples, outside_paths: vec![], unread, notes })
}

/// CK+'s emotion codes (`Emotion/…_emotion.txt`: 0–7) and their names
/// (JAFFE's, and contempt).
const CK_CODES: [&str; 8] = ["neutral", "angry", "contempt", "disgust", "fear", "happy", "sad", "surprise"];

/// How many frames up to a sequence's peak (the frame its emotion file
/// names) carry its emotion, as CK+48 takes them; its first frame is neutral.
pub const CK_PEAK_FRAMES: usize = 3;

/// CK+'s emotion labels beside its `cohn-kanade-images/` in `root`:
/// `Emotion/` as distributed, or as `Emotion_labels.zip` unpacks into a
/// folder of its own (`Emotion_labels/Emotion/`, or `Emotion_labels/`
/// holding the people's folders) — any folder whose name starts with
/// "emotion", in any case.
fn ckplus_labels(root: &Path) -> Option<PathBuf> {
    let emotion = |p: &PathBuf| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with("emotion"));
    let mut found: Vec<PathBuf> = sorted_entries(root).ok()?.into_iter().filter(emotion).collect();
    // `Emotion` itself first.
    found.sort_by_key(|p| p.file_name().is_none_or(|n| n != "Emotion"));
    let outer = found.into_iter().next()?;
    let inner = sorted_entries(&outer).ok().and_then(|e| e.into_iter().find(emotion));
    Some(inner.unwrap_or(outer))
}

/// The folder holding CK+'s `cohn-kanade-images/` and its labels
/// (`ckplus_labels`), given itself or as its images folder.
fn ckplus_root(path: &Path) -> Option<PathBuf> {
    let both = |d: &Path| d.join("cohn-kanade-images").is_dir() && ckplus_labels(d).is_some();
    if both(path) {
        return Some(path.to_path_buf());
    }
    let path = path.canonicalize().ok()?;
    let parent = path.parent()?;
    (path.file_name()? == "cohn-kanade-images" && both(parent)).then(|| parent.to_path_buf())
}

/// CK+'s frames without its labels (`cohn-kanade-images/` given, or a
/// folder holding it, with no emotion folder beside it): said, where the
/// class-folder reader would call each person a class.
fn ckplus_without_labels(path: &Path) -> Option<Error> {
    let named = |p: &Path| p.file_name().is_some_and(|n| n == "cohn-kanade-images");
    let images = if named(path) { path.to_path_buf() } else { path.join("cohn-kanade-images") };
    let root = if named(path) { path.canonicalize().ok()?.parent()?.to_path_buf() } else { path.to_path_buf() };
    let what = if named(path) { "is CK+'s frames without its labels beside it" } else { "holds CK+'s frames (cohn-kanade-images/) but not its labels" };
    (images.is_dir() && ckplus_labels(&root).is_none()).then(|| {
        Error::dataset(
            path,
            format!(
                "{what}: unpack Emotion_labels.zip into {} (it makes Emotion/S005/001/…_emotion.txt), or give the labelled frames as class folders or a manifest.csv",
                root.display()
            ),
        )
    })
}

/// CK+ as distributed: each sequence with an emotion file gives its first
/// frame as neutral and the `CK_PEAK_FRAMES` frames up to its peak as its
/// emotion; the person is the sequence's folder (`S005`). Sequences without
/// an emotion file (CK+ labels 327 of 593) are counted in a note.
fn scan_ckplus(path: &Path) -> Result<Dataset> {
    let root = ckplus_root(path).ok_or_else(|| Error::dataset(path, "is not CK+ as distributed: no cohn-kanade-images/ and Emotion/ folders"))?;
    let images = root.join("cohn-kanade-images");
    let emotions = ckplus_labels(&root).unwrap_or_else(|| root.join("Emotion"));
    let (mut samples, mut unread, mut sequences, mut unlabelled) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for person in sorted_entries(&images)?.into_iter().filter(|p| p.is_dir()) {
        let subject = person.file_name().map(|n| n.to_string_lossy().to_uppercase()).unwrap_or_default();
        for seq in sorted_entries(&person)?.into_iter().filter(|p| p.is_dir()) {
            let labels = emotions.join(seq.strip_prefix(&images).unwrap_or(&seq));
            let emotion = if labels.is_dir() {
                sorted_entries(&labels)?.into_iter().find(|p| p.is_file() && p.to_string_lossy().ends_with("_emotion.txt"))
            } else {
                None
            };
            let Some(emotion) = emotion else {
                unlabelled += 1;
                continue;
            };
            let text = std::fs::read_to_string(&emotion).map_err(|e| Error::io(&emotion, e))?;
            let code = text.trim().parse::<f64>().ok().filter(|c| c.fract() == 0.0 && (0.0..CK_CODES.len() as f64).contains(c));
            let Some(code) = code else {
                return Err(Error::file(&emotion, format!("is not a CK+ emotion file (one number, 0 to 7): it holds \"{}\"", text.trim().escape_debug())));
            };
            let frames = photos_of(sorted_entries(&seq)?, &mut unread);
            // The peak: the frame the emotion file is named after (`S005_001_00000011_emotion.txt`).
            let peak_name = emotion.file_name().map(|n| n.to_string_lossy().trim_end_matches("_emotion.txt").to_string()).unwrap_or_default();
            let Some(peak) = frames.iter().position(|f| f.file_stem().is_some_and(|s| s.to_string_lossy() == peak_name)) else {
                return Err(Error::file(&emotion, format!("names frame {peak_name}, which {} does not hold", seq.display())));
            };
            if peak < CK_PEAK_FRAMES {
                return Err(Error::file(&emotion, format!("names frame {peak_name}, frame {} of its sequence: a CK+ sequence needs a neutral first frame and {CK_PEAK_FRAMES} frames up to its peak", peak + 1)));
            }
            samples.push(Sample { path: frames[0].clone(), label: CK_CODES[0].to_string(), subject: Some(subject.clone()) });
            for f in &frames[peak + 1 - CK_PEAK_FRAMES..=peak] {
                samples.push(Sample { path: f.clone(), label: CK_CODES[code as usize].to_string(), subject: Some(subject.clone()) });
            }
            sequences += 1;
        }
    }
    let from = emotions.strip_prefix(&root).unwrap_or(&emotions).display().to_string();
    let mut notes = vec![format!(
        "CK+ layout: {sequences} sequence(s) with an emotion file ({from}/); each one's first frame is read as neutral and the {CK_PEAK_FRAMES} frames up to its peak as its emotion (as CK+48 takes them); the person from its folder (S005)"
    )];
    if unlabelled > 0 {
        notes.push(format!("CK+: {unlabelled} sequence(s) without an emotion file ({from}/…/…_emotion.txt) left out"));
    }
    Ok(Dataset { root, format: DataFormat::Ckplus, samples, outside_paths: vec![], unread, notes })
}

/// Oulu-CASIA's six expression folders in each person's (`P001/Anger/`)
/// and the names vggft gives them (JAFFE's).
const OULU_CODES: [(&str, &str); 6] =
    [("Anger", "angry"), ("Disgust", "disgust"), ("Fear", "fear"), ("Happiness", "happy"), ("Sadness", "sad"), ("Surprise", "surprise")];

const OULU_READ: &str = "frames (each sequence's first, and its last 3)";

/// A folder of Oulu-CASIA's people, one camera and lighting: every
/// sub-folder a person (`P001`) holding expression folders (`Anger/`).
fn oulu_layout(entries: &[PathBuf]) -> bool {
    let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    !dirs.is_empty() && dirs.iter().all(|d| oulu_person(d)) && dirs.iter().any(|d| !oulu_sequences(d).is_empty())
}

/// A person folder's expression sequences (`Anger/`, in any case) and the
/// label each gives, in `OULU_CODES`' order.
fn oulu_sequences(person: &Path) -> Vec<(PathBuf, &'static str)> {
    let dirs: Vec<PathBuf> = sorted_entries(person).unwrap_or_default().into_iter().filter(|p| p.is_dir()).collect();
    OULU_CODES.iter().filter_map(|&(folder, label)| Some((dirs.iter().find(|d| file_name(d).eq_ignore_ascii_case(folder))?.clone(), label))).collect()
}

/// An Oulu-CASIA person folder's name (`P001`).
fn oulu_person(d: &Path) -> bool {
    let n = file_name(d);
    n.len() == 4 && n.starts_with(['P', 'p']) && n[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Oulu-CASIA given above one camera and lighting (`OriginalImg/`, or
/// `VL/`): the folder to give, where the class-folder reader would take
/// the cameras or lightings for classes.
fn oulu_above(path: &Path) -> Option<Error> {
    // Each folder one or two levels down that is one camera and lighting.
    let mut found = Vec::new();
    for a in sorted_entries(path).unwrap_or_default().into_iter().filter(|p| p.is_dir()) {
        let entries = sorted_entries(&a).unwrap_or_default();
        if oulu_layout(&entries) {
            found.push(a);
            continue;
        }
        found.extend(entries.into_iter().filter(|b| b.is_dir() && sorted_entries(b).is_ok_and(|e| oulu_layout(&e))));
    }
    // Studies read the visible-light camera under strong lighting.
    let pick = found.iter().find(|p| p.ends_with("VL/Strong")).or_else(|| found.iter().find(|p| p.ends_with("Strong"))).or(found.first())?;
    let names: Vec<String> = found.iter().map(|p| p.strip_prefix(path).unwrap_or(p).display().to_string()).collect();
    Some(Error::dataset(
        path,
        match &names[..] {
            [one] => {
                format!("holds Oulu-CASIA as distributed in `{one}`, which would be read as one class: give that folder itself (--data {})", pick.display())
            }
            _ => format!(
                "holds Oulu-CASIA for {} camera and lighting conditions ({}): give one, as studies read it (--data {})",
                names.len(),
                crate::error::short_list(&names, 6),
                pick.display()
            ),
        },
    ))
}

/// Oulu-CASIA as distributed, one camera and lighting: each person's six
/// sequences run from a neutral face to the expression's apex, so each
/// gives its first frame as neutral and its last `CK_PEAK_FRAMES` as its
/// expression (as CK+'s are read); the person from its folder (`P001`).
fn scan_oulu(dir: &Path) -> Result<Dataset> {
    let (mut samples, mut unread, mut sequences, mut short) = (Vec::new(), Vec::new(), 0usize, Vec::new());
    for person in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let subject = file_name(&person).to_uppercase();
        for (seq, label) in oulu_sequences(&person) {
            let frames = photos_of(sorted_entries(&seq)?, &mut unread);
            if frames.len() <= CK_PEAK_FRAMES {
                short.push(seq.strip_prefix(dir).unwrap_or(&seq).display().to_string());
                continue;
            }
            samples.push(Sample { path: frames[0].clone(), label: "neutral".to_string(), subject: Some(subject.clone()) });
            for f in &frames[frames.len() - CK_PEAK_FRAMES..] {
                samples.push(Sample { path: f.clone(), label: label.to_string(), subject: Some(subject.clone()) });
            }
            sequences += 1;
        }
    }
    let mut notes = vec![format!(
        "Oulu-CASIA layout: {sequences} sequence(s); each one's first frame is read as neutral and its last {CK_PEAK_FRAMES} (the apex) as its expression, as CK+'s are; the person from its folder (P001)"
    )];
    if !short.is_empty() {
        notes.push(format!(
            "warning: Oulu-CASIA: {} sequence(s) with {CK_PEAK_FRAMES} frames or fewer left out ({})",
            short.len(),
            crate::error::short_list(&short, 4)
        ));
    }
    Ok(Dataset { root: dir.to_path_buf(), format: DataFormat::Oulu, samples, outside_paths: vec![], unread, notes })
}

/// KDEF's own layout: labels and people from the names; the straight-ahead
/// photos only, as expression studies on KDEF use them (a profile shows
/// half a face, and five angles of one pose would weigh it five times).
fn scan_kdef(dir: &Path) -> Result<Dataset> {
    let set = NamedSet {
        format: DataFormat::Kdef,
        name: "KDEF",
        pattern: "AF01ANS.JPG: session, sex, number, expression, angle",
        parse: parse_kdef_name,
        view: "S",
        read: KDEF_READ,
        none_read: "none of them straight ahead (…S.JPG)",
        others: "at other angles (half and full profiles)",
        how: "KDEF layout: each photo's expression and person from its name (AF01ANS.JPG: person F01, angry; sessions A and B are one person)",
    };
    let mut entries = Vec::new();
    for folder in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        entries.extend(sorted_entries(&folder)?);
    }
    let mut ds = scan_named(dir, entries, &set)?;
    // A photo moved into another person's folder (`AF01/AM02NES.JPG`) is read by its name: said.
    let misfiled: Vec<String> = ds
        .samples
        .iter()
        .filter_map(|s| {
            let folder = s.path.parent()?.file_name()?.to_string_lossy().to_uppercase();
            let code = file_name(&s.path).get(..4)?.to_uppercase();
            (kdef_person_code(&folder) && code != folder).then(|| format!("{folder}/{}", file_name(&s.path)))
        })
        .collect();
    if !misfiled.is_empty() {
        ds.notes.push(format!(
            "warning: KDEF: {} photo(s) lie in another person's folder ({}): each is read as the person its name gives, not as its folder's",
            misfiled.len(),
            crate::error::short_list(&misfiled, 4)
        ));
    }
    Ok(ds)
}

/// JAFFE-named photos in a flat folder, or — where the folder holds no
/// photos itself — one folder down (`KA/KA.AN1.39.tiff`: a folder per
/// person, `jaffe_person_folders`; with `--layout jaffe` any folders, the
/// expression always from the name).
fn scan_jaffe(dir: &Path) -> Result<Dataset> {
    let mut samples = Vec::new();
    let mut unread = Vec::new();
    let entries = sorted_entries(dir)?;
    let mut photos = photos_of(entries.clone(), &mut unread);
    let mut notes = vec![];
    if photos.is_empty() {
        let folders: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
        let mut read = vec![];
        for folder in folders {
            let inner = photos_of(sorted_entries(folder)?, &mut unread);
            if !inner.is_empty() {
                read.push(file_name(folder));
            }
            photos.extend(inner);
        }
        if !read.is_empty() {
            notes.push(format!(
                "JAFFE-named photos in {} folder(s) ({}): each photo's person and expression from its name, not from its folder",
                read.len(),
                crate::error::short_list(&read, 4)
            ));
        }
    }
    for p in photos {
        let name = file_name(&p);
        match parse_jaffe_name(&name) {
            Some(Ok((subject, label))) => samples.push(Sample { path: p, label, subject: Some(subject) }),
            Some(Err(problem)) => return Err(Error::file(&p, problem)),
            None => return Err(not_a_name(&p, "JAFFE", "SS.EEn.NNN.tiff")),
        }
    }
    Ok(Dataset { root: dir.to_path_buf(), format: DataFormat::Jaffe, samples, outside_paths: vec![], unread, notes })
}

/// Whether a folder's entries are JAFFE-named photos sorted into a folder
/// per person (`KA/KA.AN1.39.tiff`, or `alice/…`): no photos of its own, and
/// every sub-folder that holds photos holds mostly JAFFE-named ones, all of
/// one person, under a name that is no expression's. Read as class folders,
/// the people would be the classes: a 7-way task would learn who is in the
/// photo, not the expression the names give.
fn jaffe_person_folders(entries: &[PathBuf]) -> bool {
    if entries.iter().any(|p| p.is_file() && is_image(p)) {
        return false;
    }
    let mut people = 0;
    for dir in entries.iter().filter(|p| p.is_dir()) {
        let Ok(inner) = sorted_entries(dir) else { return false };
        let images: Vec<String> = inner.iter().filter(|p| p.is_file() && is_image(p)).map(|p| file_name(p)).collect();
        if images.is_empty() {
            continue;
        }
        // A JAFFE-shaped name with an unknown code counts as named (`scan_jaffe` then says what is wrong with it).
        let named: Vec<_> = images.iter().filter_map(|n| parse_jaffe_name(n)).collect();
        let persons: BTreeSet<&String> = named.iter().filter_map(|r| r.as_ref().ok()).map(|(person, _)| person).collect();
        if named.len() * 2 < images.len() || persons.len() != 1 || EXPRESSION_WORDS.contains(&file_name(dir).to_lowercase().as_str()) {
            return false;
        }
        people += 1;
    }
    people > 0
}

/// Whether `dir` itself is a folder vggft wrote: a runs folder, a run, a cv
/// folder, `faces --out`, `explain --out`, `lr-find --out` or `evaluate
/// --out` (`output_kind`).
pub fn is_vggft_output(dir: &Path) -> bool {
    output_kind(dir).is_some()
}

/// Whether `dir` is a run folder or a folder of runs (`runs/`): a trained
/// model, which a command that wants photos should name as `--model`.
pub fn is_run_output(dir: &Path) -> bool {
    matches!(output_kind(dir), Some("a run folder" | "a folder of runs"))
}

/// What vggft output folder `dir` is, by the files each command leaves
/// (evaluate's by `metrics.json` beside `confusion.png`, as `metrics.json`
/// alone is a common name). A command stopped between its first two files
/// left one of them: faces' `faces.csv` and evaluate's `metrics.json` are
/// then known by what they hold, so the same command runs there again.
pub(crate) fn output_kind(dir: &Path) -> Option<&'static str> {
    let has = |m: &str| dir.join(m).exists();
    let read = |m: &str| {
        use std::io::Read;
        let mut buf = Vec::new();
        let read = std::fs::File::open(dir.join(m)).and_then(|f| f.take(1 << 20).read_to_end(&mut buf));
        read.map(|_| buf).unwrap_or_default()
    };
    // `faces::write_csv`'s header; evaluate's record names its model, data and metrics.
    let faces_csv = || read("faces.csv").starts_with(b"path,x,y,w,h,score");
    let evaluate_json =
        || serde_json::from_slice::<serde_json::Value>(&read("metrics.json")).is_ok_and(|v| ["model", "data", "metrics"].iter().all(|k| v.get(k).is_some()));
    // A run writes config.json and split.csv first: config.json alone is a
    // common name (a project's own settings).
    if has("config.json") && has("split.csv") {
        Some("a run folder")
    } else if has("cv-config.json") {
        Some("a cv folder")
    } else if dir.join("latest").is_symlink() || has("latest/config.json") {
        Some("a folder of runs")
    } else if has("faces.csv") && (has("manifest.csv") || faces_csv()) {
        Some("a faces folder")
    } else if has("explain.csv") {
        Some("a folder of heatmaps")
    } else if has("lr-find.csv") {
        Some("an lr-find folder")
    } else if has("metrics.json") && (has("confusion.png") || evaluate_json()) {
        Some("an evaluate folder")
    } else {
        None
    }
}

/// Refuses an `out` folder that the next scan of the data at `data` would
/// read as part of it: inside (or equal to) a class-folder dataset's folder,
/// where what vggft writes there (`what`) becomes a class. A JAFFE folder
/// reads only its images and a manifest only its rows: no refusal. Data
/// that does not scan is left to the command's own error.
pub fn refuse_output_inside(data: &Path, format: DataFormat, out: &Path, what: &str) -> Result<()> {
    match scan(data, format) {
        Ok(ds) => refuse_output_in(&ds, out, what),
        Err(_) => Ok(()),
    }
}

/// Refuses an `--out` folder that another vggft command wrote (a run, a cv
/// folder, face crops, …), or that holds a file of a name this command
/// writes (`writes`) without being this command's output: `own` is what
/// its output reads as (`output_kind`), `what` what it would write. Written
/// in, files of the same name would be replaced (an evaluation's
/// `metrics.json` over the run's own record, the crops' `manifest.csv` over
/// another dataset's).
pub fn refuse_other_output(out: &Path, own: &str, what: &str, writes: &[&str]) -> Result<()> {
    match output_kind(out) {
        Some(kind) if kind != own => Err(Error::file(
            out,
            format!("is {kind} that vggft wrote: {what} would be mixed with its files (and replace those of the same name); give another --out"),
        )),
        Some(_) => Ok(()),
        None => match writes.iter().find(|f| out.join(f).exists()) {
            Some(f) => Err(Error::file(out, format!("holds a {f} that this command did not write: {what} would replace it; give another --out"))),
            None => Ok(()),
        },
    }
}

/// `refuse_output_inside` for a scanned dataset.
pub(crate) fn refuse_output_in(ds: &Dataset, out: &Path, what: &str) -> Result<()> {
    if ds.format != DataFormat::Folders || !crate::fsutil::absolute(out).starts_with(crate::fsutil::absolute(&ds.root)) {
        return Ok(());
    }
    Err(Error::file(out, format!("is inside the data folder {}: {what} would be read as a class of that data; choose an --out outside it", ds.root.display())))
}

/// Whether `dir` or one of its sub-folders is vggft's output: put inside
/// class folders, such a folder would read as a class (of no images, or of
/// contact sheets and heatmaps).
fn vggft_output(dir: &Path) -> bool {
    is_vggft_output(dir) || std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.path().is_dir() && is_vggft_output(&e.path()))
}

/// Whether a folder holds images of its own (not in sub-folders).
fn holds_images(dir: &Path) -> bool {
    sorted_entries(dir).is_ok_and(|e| e.iter().any(|p| p.is_file() && is_image(p)))
}

/// Datasets shared split beforehand (`train/happy/…`, `test/happy/…`, as
/// RAF-DB and FER2013's image folders are): the split folders, each holding
/// the same class folders, and those classes; None when `dir` is not laid out
/// so (a folder with images of its own, or sub-folders with other names).
fn presplit(dir: &Path) -> Option<(Vec<PathBuf>, Vec<String>)> {
    let tops: Vec<PathBuf> = sorted_entries(dir).ok()?.into_iter().filter(|p| p.is_dir()).collect();
    // Named as splits are (train, test, val, validation, dev, eval, …), not
    // as a class sorted by person (`neutral/KA/…`) is.
    let split_name = |p: &PathBuf| {
        let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        ["train", "test", "val", "dev", "eval"].iter().any(|s| n.starts_with(s))
    };
    if !tops.iter().all(split_name) {
        return None;
    }
    let mut classes: Option<std::collections::BTreeSet<String>> = None;
    for top in &tops {
        if holds_images(top) {
            return None;
        }
        let names: std::collections::BTreeSet<String> = sorted_entries(top)
            .ok()?
            .iter()
            .filter(|d| d.is_dir() && holds_images(d))
            .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
            .collect();
        classes = Some(match classes {
            None => names,
            Some(c) => c.intersection(&names).cloned().collect(),
        });
    }
    let classes: Vec<String> = classes?.into_iter().collect();
    (tops.len() >= 2 && classes.len() >= 2).then_some((tops, classes))
}

/// Folder names read as expressions (JAFFE's seven, their other spellings,
/// the binary task's `expressive`, `smiling`): telling a folder per person
/// from a folder per class, and folders that `predict --subject-from parent`
/// would take for people.
pub(crate) const EXPRESSION_WORDS: [&str; 20] = [
    "neutral",
    "expressive",
    "angry",
    "anger",
    "disgust",
    "disgusted",
    "fear",
    "fearful",
    "afraid",
    "happy",
    "happiness",
    "smile",
    "smiling",
    "sad",
    "sadness",
    "surprise",
    "surprised",
    "contempt",
    "contemptuous",
    "calm",
];

/// Which level of a two-level folder layout holds the classes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Nested {
    /// `KA/neutral/*.png`: a folder per person, of class folders.
    PersonThenClass,
    /// `neutral/KA/*.png`: a folder per class, of person folders.
    ClassThenPerson,
}

/// A two-level layout of `dir` — every sub-folder holds no images itself
/// but folders of them — and which level is the class: the one whose names
/// are all expressions (`EXPRESSION_WORDS`), where the other's are not.
/// `None` otherwise (one level of class folders, or names that do not tell).
fn nested_layout(dir: &Path) -> Option<Nested> {
    let tops: Vec<PathBuf> = sorted_entries(dir).ok()?.into_iter().filter(|p| p.is_dir()).collect();
    if tops.len() < 2 {
        return None;
    }
    let mut inner = std::collections::BTreeSet::new();
    for t in &tops {
        let entries = sorted_entries(t).ok()?;
        let found: Vec<String> = entries.iter().filter(|d| d.is_dir() && holds_images(d)).map(|d| file_name(d)).collect();
        if found.is_empty() || entries.iter().any(|p| p.is_file() && is_image(p)) {
            return None;
        }
        inner.extend(found);
    }
    let word = |n: &String| EXPRESSION_WORDS.contains(&n.to_lowercase().as_str());
    match (tops.iter().map(|t| file_name(t)).all(|n| word(&n)), inner.iter().all(word)) {
        (false, true) => Some(Nested::PersonThenClass),
        (true, false) => Some(Nested::ClassThenPerson),
        _ => None,
    }
}

/// The people a two-level folder layout gives (`nested_layout`): each
/// image's path and person, and how the layout was read (its note); `None`
/// for other folders. `predict -r` groups such a folder's photos so.
pub fn nested_people(dir: &Path) -> Option<(Vec<(PathBuf, String)>, String)> {
    let ds = scan_nested(dir, nested_layout(dir)?).ok()?;
    let note = ds.notes.first().cloned().unwrap_or_default();
    Some((ds.samples.into_iter().filter_map(|s| Some((s.path, s.subject?))).collect(), note))
}

/// A two-level layout (`nested_layout`): each image's class and person
/// from its two folders, said in a note.
fn scan_nested(dir: &Path, how: Nested) -> Result<Dataset> {
    let (mut samples, mut unread) = (Vec::new(), Vec::new());
    for top in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        for inner in sorted_entries(&top)?.into_iter().filter(|p| p.is_dir()) {
            let (person, label) = match how {
                Nested::PersonThenClass => (file_name(&top), file_name(&inner)),
                Nested::ClassThenPerson => (file_name(&inner), file_name(&top)),
            };
            samples.extend(photos_of(sorted_entries(&inner)?, &mut unread).into_iter().map(|p| Sample {
                path: p,
                label: label.clone(),
                subject: Some(person.clone()),
            }));
        }
    }
    let (people, classes) = match how {
        Nested::PersonThenClass => ("a folder per person", "its class folders (KA/neutral/…): the person from the outer folder, the class from the inner"),
        Nested::ClassThenPerson => ("a folder per class", "its person folders (neutral/KA/…): the class from the outer folder, the person from the inner"),
    };
    let notes = vec![format!("two levels of folders: {people}, each of {classes}, as their names tell (the class folders are named as expressions)")];
    Ok(Dataset { root: dir.to_path_buf(), format: DataFormat::Folders, samples, outside_paths: vec![], unread, notes })
}

fn scan_folders(dir: &Path) -> Result<Dataset> {
    // A folder this user cannot list is said first, as what it is: the layout is told from what every
    // folder holds, and one left out read a folder per class of person folders as classes without images.
    // Those inside a folder with images of its own are never read (only a class folder's own images are).
    for top in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let inside = sorted_entries(&top)?;
        if inside.iter().any(|p| p.is_file() && is_image(p)) {
            continue;
        }
        for d in inside.iter().filter(|d| d.is_dir()) {
            std::fs::read_dir(d).map_err(|e| {
                Error::file(d, format!("cannot read: {e} (`{}` has no images of its own; this folder inside it may hold them)", file_name(&top)))
            })?;
        }
    }
    if let Some((tops, classes)) = presplit(dir) {
        let is_train = |p: &&PathBuf| ["train", "training"].contains(&file_name(p).to_lowercase().as_str());
        let train = tops.iter().find(is_train).unwrap_or(&tops[0]);
        let other = tops.iter().find(|t| *t != train).unwrap_or(&tops[0]);
        return Err(Error::dataset(
            dir,
            format!(
                "holds the folders {}, each of the same class folders ({}): a split made beforehand, not classes; train on one (--data {}) and score the other with `vggft evaluate --data {}`",
                tops.iter().map(|t| format!("`{}`", file_name(t))).collect::<Vec<_>>().join(", "),
                classes.join(", "),
                train.display(),
                other.display()
            ),
        ));
    }
    if let Some(how) = nested_layout(dir) {
        return scan_nested(dir, how);
    }
    let mut samples = Vec::new();
    let mut unread = Vec::new();
    for class_dir in sorted_entries(dir)? {
        if !class_dir.is_dir() {
            continue;
        }
        let label = file_name(&class_dir);
        if vggft_output(&class_dir) {
            return Err(Error::dataset(&class_dir, format!("is vggft's output (runs, cv, face crops or heatmaps), read here as a class `{label}` of the data: move it out of the data folder and keep --out outside it")));
        }
        let before = samples.len();
        let unread_before = unread.len();
        samples.extend(photos_of(sorted_entries(&class_dir)?, &mut unread).into_iter().map(|p| Sample { path: p, label: label.clone(), subject: None }));
        if samples.len() == before {
            // A face set's own layout one level down (`KDEF_and_AKDEF/KDEF/`, a folder above CK+'s): give it itself.
            let inner = sorted_entries(&class_dir)
                .ok()
                .filter(|e| kdef_layout(e))
                .map(|_| "KDEF")
                .or_else(|| (ckplus_root(&class_dir).is_some() || ckplus_without_labels(&class_dir).is_some()).then_some("CK+"));
            if let Some(set) = inner {
                return Err(Error::dataset(
                    dir,
                    format!(
                        "holds {set} as distributed in `{label}`, which would be read as one class: give that folder itself (--data {})",
                        class_dir.display()
                    ),
                ));
            }
            // People often sort a class by person: `neutral/KA/…`.
            let nested = sorted_entries(&class_dir)?.into_iter().find(|d| d.is_dir() && holds_images(d));
            let left = &unread[unread_before..];
            let pictures: Vec<&PathBuf> = left.iter().filter(|p| p.is_file()).collect();
            let hint = match (nested, left.first()) {
                (_, Some(u)) => match pictures.first() {
                    Some(first) => format!(" vggft reads ({} picture(s) in other formats, first {}: convert them to PNG or JPEG)", pictures.len(), first.display()),
                    None => format!(" vggft reads ({} photo name(s) {NOT_A_FILE}, first {})", left.len(), u.display()),
                },
                (Some(d), None) => format!(
                    " directly inside it ({} holds some): only a class folder's own images are read; move them up, or list them in a manifest.csv with a subject column (two levels of folders are read where two or more top folders hold no images of their own and one level's folders are all named as expressions: KA/neutral/… or neutral/KA/…)",
                    d.display()
                ),
                (None, None) => String::new(),
            };
            return Err(Error::dataset(&class_dir, format!("class `{label}` has no images{hint}")));
        }
    }
    // JAFFE is often shared sorted into expression folders with its names
    // kept (`happy/KA.HA1.29.tiff`), CK+ always (`anger/S010_004_00000017.png`):
    // the person is in the name, and without it the split would put one
    // person on both sides. The folder stays the label.
    let people: Option<Vec<String>> = samples.iter().map(|s| person_in_name(&file_name(&s.path))).collect();
    // `--data data` where data/jaffe/ is the JAFFE folder: one "class" named after the folder.
    if let Some(first) = samples.first().filter(|_| samples.iter().all(|s| matches!(parse_jaffe_name(&file_name(&s.path)), Some(Ok(_))))) {
        if samples.iter().all(|s| s.label == first.label) {
            let folder = first.path.parent().unwrap_or(dir);
            return Err(Error::dataset(
                dir,
                format!(
                    "holds one folder, `{}`, of JAFFE-named images, which would be one class: give that folder itself (--data {}) to read each image's expression from its name",
                    first.label,
                    folder.display()
                ),
            ));
        }
    }
    if let Some(people) = people.filter(|p| p.iter().collect::<std::collections::BTreeSet<_>>().len() >= 2) {
        for (s, id) in samples.iter_mut().zip(people) {
            s.subject = Some(id);
        }
    }
    Ok(Dataset { root: dir.to_path_buf(), format: DataFormat::Folders, samples, outside_paths: vec![], unread, notes: vec![] })
}

/// The manifest's field separator, from its header line: a comma, else a
/// semicolon (what a spreadsheet saves as CSV where the comma is the decimal
/// mark) or a tab, whichever the header holds.
fn delimiter(text: &[u8]) -> u8 {
    let header = text.split(|&b| b == b'\n').next().unwrap_or_default();
    [b',', b';', b'\t'].into_iter().find(|d| header.contains(d)).unwrap_or(b',')
}

/// Where each line of `text` starts, as csv reads line ends: `\n`, `\r\n`
/// or a lone `\r` (old Mac files).
pub(crate) fn line_starts(text: &[u8]) -> Vec<usize> {
    let ends = (0..text.len()).filter(|&i| text[i] == b'\n' || (text[i] == b'\r' && text.get(i + 1) != Some(&b'\n')));
    std::iter::once(0).chain(ends.map(|i| i + 1)).collect()
}

/// The 1-based line a CSV record starts on (`starts`: `line_starts(text)`).
/// Not `Position::line`: in a file with Windows line ends (Excel's, Python's
/// `csv`) a record's position is taken before the `\n` that ends the line
/// above, so it named one line early.
pub(crate) fn line_of(text: &[u8], starts: &[usize], at: &csv::Position) -> usize {
    let start = (at.byte() as usize).min(text.len());
    // The record's first byte: past the line end above and any blank lines.
    let first = start + text[start..].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    starts.partition_point(|&s| s <= first)
}

/// The names a manifest's path, label and subject columns go by, in order of
/// preference, any case: vggft's own, then those of Keras's
/// `flow_from_dataframe` (`filename`, `class`) and common spreadsheets.
pub const MANIFEST_COLUMNS: [&[&str]; 3] = [
    &["path", "filename", "file", "image", "image_path", "filepath"],
    &["label", "class", "expression", "emotion"],
    &["subject", "person", "subject_id", "person_id", "participant", "identity"],
];

/// A manifest saved as UTF-16 with its byte-order mark (what Windows
/// PowerShell 5's `>` and `Out-File` write, and Excel's "Unicode Text") as
/// the UTF-8 text it holds; any other bytes as they are.
fn utf16_as_utf8(bytes: Vec<u8>) -> Vec<u8> {
    let unit: fn([u8; 2]) -> u16 = match bytes.get(..2) {
        Some([0xFF, 0xFE]) => u16::from_le_bytes,
        Some([0xFE, 0xFF]) => u16::from_be_bytes,
        _ => return bytes,
    };
    if !bytes.len().is_multiple_of(2) {
        return bytes;
    }
    let units: Vec<u16> = bytes[2..].chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
    String::from_utf16(&units).map(String::into_bytes).unwrap_or(bytes)
}

/// Reads a CSV manifest: `path` (relative to the manifest's folder),
/// `label` (required where `labelled`; else read where present, `""` where
/// not: `predict` takes a manifest of unlabelled photos) and an optional
/// `subject` column, each under any of its `MANIFEST_COLUMNS` names.
pub fn read_manifest(csv_path: &Path, labelled: bool) -> Result<Dataset> {
    let bytes = utf16_as_utf8(std::fs::read(csv_path).map_err(|e| Error::io(csv_path, e))?);
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut rdr = csv::ReaderBuilder::new().delimiter(delimiter(text)).trim(csv::Trim::All).from_reader(text);
    let starts = line_starts(text);
    let headers = rdr
        .headers()
        .map_err(|e| {
            // A picture or other binary file given as the manifest, or a header in another encoding.
            let problem = match e.kind() {
                csv::ErrorKind::Utf8 { .. } if bytes.contains(&0) || image::guess_format(&bytes).is_ok() => {
                    "is not a CSV manifest (it holds binary data: a picture?): give a folder or a .csv text file".to_string()
                }
                csv::ErrorKind::Utf8 { .. } => "line 1 (the header) is not UTF-8 text: save the manifest as UTF-8".to_string(),
                _ => format!("bad CSV header: {e}"),
            };
            Error::file(csv_path, problem)
        })?
        .clone();
    let (pc, lc, sc) = manifest_columns(csv_path, &headers, labelled)?;
    // A bare file name's parent is the empty path: the current folder.
    let base = csv_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base_abs = base.canonicalize().map_err(|e| Error::io(base, e))?;
    let mut samples = Vec::new();
    let mut outside = Vec::new();
    let mut seen = BTreeSet::new();
    let mut blank_subject_lines = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| {
            let at = e.position().map_or(i + 2, |p| line_of(text, &starts, p));
            Error::file(csv_path, format!("line {at}: {}", record_problem(&e)))
        })?;
        // The record's own line (blank lines and quoted line breaks count).
        let line = rec.position().map_or(i + 2, |p| line_of(text, &starts, p));
        let rel = rec.get(pc).unwrap_or("");
        let label = lc.and_then(|c| rec.get(c)).unwrap_or("").to_string();
        if rel.is_empty() || (labelled && label.is_empty()) {
            return Err(Error::file(csv_path, format!("line {line}: empty path{}", if labelled { " or label" } else { "" })));
        }
        // A web address (a CSV made for a hosted set): not a file here.
        if crate::error::web_address(Path::new(rel)) {
            return Err(Error::file(
                csv_path,
                format!("line {line}: {rel} is a web address: vggft reads local files; download the images and list their local paths"),
            ));
        }
        let (p, abs) = manifest_file(base, rel).map_err(|problem| Error::file(csv_path, format!("line {line}: {problem}")))?;
        if !abs.starts_with(&base_abs) {
            outside.push(abs.clone());
        }
        if !seen.insert(abs.clone()) {
            return Err(Error::file(csv_path, format!("line {line}: {} is listed twice", p.display())));
        }
        let subject = sc.and_then(|c| rec.get(c)).filter(|s| !s.is_empty()).map(str::to_string);
        if sc.is_some() && subject.is_none() {
            blank_subject_lines.push(line);
        }
        samples.push(Sample { path: p, label, subject });
    }
    // A partly filled subject column would silently drop subject grouping for everyone.
    if samples.iter().any(|s| s.subject.is_some()) {
        let empty: Vec<String> = blank_subject_lines.iter().map(|l| l.to_string()).collect();
        if !empty.is_empty() {
            return Err(Error::file(
                csv_path,
                format!("the subject column is empty on line(s) {}: give every image a subject id, or none", crate::error::short_list(&empty, 8)),
            ));
        }
    }
    samples.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Dataset { root: csv_path.to_path_buf(), format: DataFormat::Csv, samples, outside_paths: outside, unread: vec![], notes: vec![] })
}

/// A manifest's columns (`MANIFEST_COLUMNS`, each under the first of its
/// names the header has): path, label (required where `labelled`) and
/// subject; their absence said with the header's names.
fn manifest_columns(csv_path: &Path, headers: &csv::StringRecord, labelled: bool) -> Result<(usize, Option<usize>, Option<usize>)> {
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let col_of = |names: &[&str]| names.iter().find_map(|n| col(n));
    let [path_names, label_names, subject_names] = MANIFEST_COLUMNS;
    let (pc, lc) = (col_of(path_names), col_of(label_names));
    let Some(pc) = pc.filter(|_| lc.is_some() || !labelled) else {
        let needs = if labelled {
            "columns `path` and `label` (or `filename` and `class`, as Keras's flow_from_dataframe names them)"
        } else {
            "a column `path` (or `filename`)"
        };
        let found = headers.iter().collect::<Vec<_>>().join(", ");
        // FER-2013 and its kin hold each face as a `pixels` string of numbers.
        let pixels = if col("pixels").is_some() {
            "; its `pixels` column holds pictures as numbers (FER-2013's format), which vggft does not read: save each row as a PNG in a folder named by its class and give that folder"
        } else {
            ""
        };
        return Err(Error::file(csv_path, format!("needs {needs} (found: {found}){pixels}")));
    };
    Ok((pc, lc, col_of(subject_names)))
}

/// What is wrong with a manifest's record that the CSV reader refused.
fn record_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("has {len} field(s) where the header has {expected_len} (a comma missing or extra? quote a field that holds a comma)")
        }
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not UTF-8 text (the manifest was saved in another encoding, e.g. Windows-1252 by Excel): save it as UTF-8", err.field() + 1)
        }
        _ => e.to_string(),
    }
}

/// A manifest row's path `rel` from the manifest's folder `base`: as
/// joined, and resolved (links followed); or why not (no such file — with a
/// hint where a Windows path would name one —, or not a regular file).
fn manifest_file(base: &Path, rel: &str) -> std::result::Result<(PathBuf, PathBuf), String> {
    let p = base.join(rel);
    let abs = p.canonicalize().map_err(|e| {
        // A manifest written on Windows: `neutral\001.png` names no file here.
        let slashed = base.join(rel.replace('\\', "/"));
        let hint = if rel.contains('\\') && slashed.exists() {
            format!(" ({} exists: write paths with / between folders, not \\ as Windows does)", slashed.display())
        } else {
            String::new()
        };
        format!("{}: {e}{hint}", p.display())
    })?;
    // A FIFO would block the reader forever and /dev/zero would read until memory runs out.
    if !abs.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{} is not a regular file", p.display()));
    }
    Ok((p, abs))
}

#[cfg(test)]
mod tests {
    use super::parse_jaffe_name;

    #[test]
    fn a_subject_pattern_reads_its_group_or_its_whole_match_from_the_file_name() {
        use super::SubjectPattern;
        use std::path::Path;
        let group = SubjectPattern::new(r"^([^_]+)_").unwrap();
        assert_eq!(group.subject(Path::new("faces/smiling/002_08.jpg")).as_deref(), Some("002"), "the name, not the folders");
        assert_eq!(group.subject(Path::new("faces_x/002.jpg")), None);
        let whole = SubjectPattern::new(r"[A-Z]{2}\d").unwrap();
        assert_eq!(whole.subject(Path::new("img-AB1-smile.png")).as_deref(), Some("AB1"));
        // An empty person is none (`^(\d*)` matches every name).
        assert_eq!(SubjectPattern::new(r"^(\d*)").unwrap().subject(Path::new("x.png")), None);
        assert!(SubjectPattern::new("(?:a)(b)").is_ok(), "groups that do not capture are not counted");
    }

    #[test]
    fn jaffe_names_parse_and_odd_ones_are_not_jaffe() {
        assert_eq!(parse_jaffe_name("KA.NE1.26.tiff"), Some(Ok(("KA".into(), "neutral".into()))));
        // Lower case (a renamed copy) and other image extensions read the same.
        assert_eq!(parse_jaffe_name("ka.ne1.26.tiff"), Some(Ok(("KA".into(), "neutral".into()))));
        assert_eq!(parse_jaffe_name("Ka.Ha2.7.TIF"), Some(Ok(("KA".into(), "happy".into()))));
        assert!(parse_jaffe_name("ka.xx1.158.tiff").unwrap().unwrap_err().contains("XX"));
        assert!(parse_jaffe_name("KL.XX1.158.tiff").unwrap().unwrap_err().contains("XX"));
        assert_eq!(parse_jaffe_name("photo.jpg"), None);
        // A multi-byte character where the expression code is (a libFuzzer find: it used to panic).
        assert_eq!(parse_jaffe_name("@.N\u{14b}EK.216.tiff"), None);
    }

    #[test]
    fn the_person_is_read_from_jaffe_and_ck_names() {
        use super::person_in_name;
        assert_eq!(person_in_name("KA.NE1.26.tiff").as_deref(), Some("KA"));
        assert_eq!(person_in_name("S010_004_00000017.png").as_deref(), Some("S010"));
        assert_eq!(person_in_name("s505_002_7.JPG").as_deref(), Some("S505"));
        use super::person_in_path;
        let path = |s: &str| std::path::PathBuf::from(s);
        assert_eq!(person_in_path(&path("VL/Strong/P012/Happiness/007.jpeg")).as_deref(), Some("P012"));
        assert_eq!(person_in_path(&path("x/KA.NE1.26.tiff")).as_deref(), Some("KA"));
        assert_eq!(person_in_path(&path("VL/Strong/P012/happy/007.jpeg")), None, "not an Oulu expression folder");
        assert_eq!(person_in_path(&path("VL/Strong/Anna/Anger/007.jpeg")), None, "not an Oulu person folder");
        for other in [
            "S010_004_00000017_emotion.txt",
            "S010_004_00000017.txt",
            "S10_004_00000017.png",
            "S010_04_00000017.png",
            "X010_004_00000017.png",
            "S010_004_000000170.png",
            "S010_004.png",
            "photo.jpg",
            "KA.XX1.1.tiff",
        ] {
            assert_eq!(person_in_name(other), None, "{other}");
        }
    }

    #[test]
    fn kdef_names_give_person_expression_and_angle() {
        use super::{parse_kdef_name, person_in_name};
        let p = |n: &str| parse_kdef_name(n).map(|(a, b, c)| format!("{a} {b} {c}"));
        assert_eq!(p("AF01ANS.JPG").as_deref(), Some("F01 angry S"));
        assert_eq!(p("BM35AFHL.jpg").as_deref(), Some("M35 fear HL"));
        assert_eq!(p("bf07nefr.JPEG").as_deref(), Some("F07 neutral FR"));
        // Sessions A and B are one person; the name gives it in class folders too.
        assert_eq!(person_in_name("BF01HAS.JPG"), person_in_name("AF01SUS.JPG"));
        for other in ["AF01XXS.JPG", "AF01ANX.JPG", "CF01ANS.JPG", "AX01ANS.JPG", "AF1ANS.JPG", "AF01ANS.txt", "AF01ANSS.JPG", "AF01AN.JPG", "KA.NE1.26.tiff"] {
            assert_eq!(parse_kdef_name(other), None, "{other}");
        }
    }

    #[test]
    fn rafd_names_give_person_expression_and_camera() {
        use super::{parse_rafd_name, person_in_name};
        let p = |n: &str| parse_rafd_name(n).map(|(a, b, c)| format!("{a} {b} {c}"));
        assert_eq!(p("Rafd090_01_Caucasian_female_angry_frontal.jpg").as_deref(), Some("01 angry 090"));
        assert_eq!(p("Rafd045_49_Moroccan_male_contemptuous_left.JPG").as_deref(), Some("49 contempt 045"));
        assert_eq!(p("rafd180_12_Kid_female_surprised_right.png").as_deref(), Some("12 surprise 180"));
        assert_eq!(person_in_name("Rafd090_07_Caucasian_male_fearful_frontal.jpg").as_deref(), Some("07"));
        for other in [
            "Rafd090_01_Caucasian_female_bored_frontal.jpg",
            "Rafd090_01_Caucasian_female_angry_up.jpg",
            "Rafd090_01_Caucasian_other_angry_frontal.jpg",
            "Rafd90_01_Caucasian_female_angry_frontal.jpg",
            "Rafx090_01_Caucasian_female_angry_frontal.jpg",
            "Rafd090_01_Caucasian_female_angry_frontal.txt",
            "Rafd090_01_female_angry_frontal.jpg",
            "Rafd090_x1_Caucasian_female_angry_frontal.jpg",
            "R\u{e4}fd090_01_Caucasian_female_angry_frontal.jpg",
        ] {
            assert_eq!(parse_rafd_name(other), None, "{other}");
        }
    }

    /// The name readers slice by byte: any name, multi-byte characters
    /// anywhere (as fuzzing found for JAFFE's), gives an answer, never a panic.
    #[test]
    fn name_readers_never_panic_on_near_miss_names() {
        use super::{copy_of, parse_kdef_name, parse_rafd_name, person_in_name};
        let seeds = ["KA.NE1.26.tiff", "AF01ANS.JPG", "Rafd090_01_Caucasian_female_angry_frontal.jpg", "S010_004_00000017.png", "KA.NE1.26 - Copy (2).tiff"];
        let extra = ['ä', 'ŋ', '_', '.', ' ', '(', ')', '0', 'S', 'a'];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % n.max(1)
        };
        for _ in 0..20_000 {
            let mut chars: Vec<char> = seeds[next(seeds.len())].chars().collect();
            for _ in 0..1 + next(3) {
                let at = next(chars.len() + 1);
                match next(3) {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 if at < chars.len() => chars[at] = extra[next(extra.len())],
                    _ => chars.insert(at, extra[next(extra.len())]),
                }
            }
            let name: String = chars.into_iter().collect();
            let _ = (person_in_name(&name), copy_of(&name), parse_kdef_name(&name), parse_rafd_name(&name), parse_jaffe_name(&name));
        }
    }

    #[test]
    fn a_file_managers_copy_of_a_jaffe_photo_is_told() {
        use super::copy_of;
        for copy in [
            "KA.NE1.26 copy.tiff",
            "KA.NE1.26 copy 2.tiff",
            "KA.NE1.26 - Copy.tiff",
            "KA.NE1.26 - Copy (3).tiff",
            "KA.NE1.26 (1).tiff",
            "KA.NE1.26 copy (1).tiff",
        ] {
            assert_eq!(copy_of(copy).as_deref(), Some("KA.NE1.26.tiff"), "{copy}");
        }
        // The JAFFE name itself, another name, or a copy of a name that is no JAFFE name: none.
        for other in ["KA.NE1.26.tiff", "photo copy.jpg", "KA.NE1 copy.tiff", "KA.NE1.26 (x).tiff", "KA.NE1.26copy.tiff", "copy"] {
            assert_eq!(copy_of(other), None, "{other}");
        }
    }

    #[test]
    fn jaffe_names_in_a_folder_of_another_expression_are_warned_of() {
        use super::{DataFormat, Dataset, Sample};
        let sample = |path: &str, label: &str| Sample { path: path.into(), label: label.into(), subject: Some("KA".into()) };
        let mut ds = Dataset {
            root: "d".into(),
            format: DataFormat::Folders,
            samples: vec![
                sample("d/Happiness/KA.HA1.29.tiff", "Happiness"),
                sample("d/NE/KA.NE1.26.tiff", "NE"),
                sample("d/smiling/KA.SU1.36.tiff", "smiling"),
            ],
            outside_paths: vec![],
            unread: vec![],
            notes: vec![],
        };
        // Every image in its expression's folder, or in a folder of the user's own naming: nothing to say.
        assert_eq!(super::jaffe_folder_warning(&ds), None);
        ds.samples.push(sample("d/happy/KA.NE2.27.tiff", "happy"));
        let w = super::jaffe_folder_warning(&ds).unwrap();
        assert!(
            w.starts_with("warning: 1 JAFFE-named image(s) sit in a class folder of another expression")
                && w.contains("d/happy/KA.NE2.27.tiff (neutral by its name)"),
            "{w}"
        );
    }

    #[test]
    fn manifest_errors_name_the_line_whatever_its_line_ends() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.png", "b.png"] {
            image::GrayImage::new(8, 8).save(d.path().join(f)).unwrap();
        }
        for (name, eol) in [("unix.csv", "\n"), ("windows.csv", "\r\n"), ("old-mac.csv", "\r")] {
            let p = d.path().join(name);
            // Line 4 (after a blank line 3) has no label; then line 5 names a missing file.
            std::fs::write(&p, ["path,label", "a.png,x", "", "b.png,", "c.png,y", ""].join(eol)).unwrap();
            let e = super::read_manifest(&p, true).unwrap_err().to_string();
            assert!(e.ends_with("line 4: empty path or label"), "{name}: {e}");
            std::fs::write(&p, ["path,label", "a.png,x", "", "b.png,y", "c.png,y", ""].join(eol)).unwrap();
            let e = super::read_manifest(&p, true).unwrap_err().to_string();
            assert!(e.contains("line 5: ") && e.contains("c.png: No such file"), "{name}: {e}");
            std::fs::write(&p, ["path,label", "a.png,x", "b.png,y,z", ""].join(eol)).unwrap();
            let e = super::read_manifest(&p, true).unwrap_err().to_string();
            assert!(e.contains("line 3: has 3 field(s)"), "{name}: {e}");
        }
        // Saved as UTF-16 (Windows PowerShell's `>`), either byte order: read as its text, lines counted alike.
        let utf16 = |text: &str, le: bool| -> Vec<u8> {
            let bom: [u8; 2] = if le { [0xFF, 0xFE] } else { [0xFE, 0xFF] };
            bom.into_iter().chain(text.encode_utf16().flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })).collect()
        };
        for le in [true, false] {
            let p = d.path().join("utf16.csv");
            std::fs::write(&p, utf16("path,label,subject\r\na.png,x,P1\r\nb.png,y,P2\r\n", le)).unwrap();
            let data = super::read_manifest(&p, true).unwrap();
            let read: Vec<(&str, Option<&str>)> = data.samples.iter().map(|s| (s.label.as_str(), s.subject.as_deref())).collect();
            assert_eq!(read, [("x", Some("P1")), ("y", Some("P2"))], "le {le}");
            std::fs::write(&p, utf16(&["path,label", "a.png,x", "", "b.png,", ""].join("\r\n"), le)).unwrap();
            let e = super::read_manifest(&p, true).unwrap_err().to_string();
            assert!(e.ends_with("line 4: empty path or label"), "le {le}: {e}");
        }
    }

    /// The face sets' own words for the expressions (RaFD's, Oulu-CASIA's
    /// folders) name what `evaluate` suggests for those spellings: one vocabulary.
    #[test]
    fn each_readers_expression_words_agree_with_the_spellings_evaluate_suggests() {
        use super::{EXPRESSION_WORDS, OULU_CODES, RAFD_WORDS};
        for (word, name) in RAFD_WORDS.iter().chain(&OULU_CODES) {
            assert_eq!(crate::data::split::expression_name(word).unwrap_or(word), *name, "{word}");
            assert!(EXPRESSION_WORDS.contains(&word.to_lowercase().as_str()), "{word}");
        }
    }

    #[test]
    fn a_label_or_subject_with_a_control_character_is_refused() {
        let d = tempfile::tempdir().unwrap();
        image::GrayImage::new(8, 8).save(d.path().join("a.png")).unwrap();
        for (row, what) in [("a.png,\"neu\ttral\",k", "label `neu\\ttral`"), ("a.png,neutral,\"K\nA\"", "subject id `K\\nA`")] {
            let p = d.path().join("m.csv");
            std::fs::write(&p, format!("path,label,subject\n{row}\n")).unwrap();
            let e = super::scan(&p, super::DataFormat::Csv).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("a.png) holds a tab, line break or other control character"), "{e}");
        }
    }

    #[test]
    fn vggft_output_is_known_by_the_files_each_command_leaves() {
        let d = tempfile::tempdir().unwrap();
        let dir = |name: &str, files: &[&str]| {
            let p = d.path().join(name);
            std::fs::create_dir(&p).unwrap();
            for f in files {
                std::fs::write(p.join(f), "").unwrap();
            }
            super::is_vggft_output(&p)
        };
        assert!(dir("lr", &["lr-find.csv", "lr-find.png"]));
        assert!(dir("eval", &["metrics.json", "confusion.png"]));
        assert!(dir("run", &["config.json", "split.csv"]));
        assert!(dir("faces", &["faces.csv", "manifest.csv", "contact_sheet.png"]));
        // A project folder with its own settings, or a file named latest, is not a run.
        assert!(!dir("project", &["config.json", "a.png"]));
        assert!(!dir("notes", &["latest", "a.png"]));
        // A photo folder with a file of a common name is still photos.
        assert!(!dir("photos", &["metrics.json", "a.png"]));
        assert!(!dir("plain", &["a.png"]));
        // A command stopped between its first two files: the one it wrote is
        // known by what it holds (a run's own metrics.json is not an evaluation).
        let one = |name: &str, file: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join(file), text).unwrap();
            super::output_kind(&p)
        };
        assert_eq!(one("e1", "metrics.json", r#"{"data": "d", "metrics": {}, "model": "runs/x", "tta": "none"}"#), Some("an evaluate folder"));
        assert_eq!(one("e2", "metrics.json", r#"{"best_epoch": 3, "validation": {}}"#), None);
        assert_eq!(one("e3", "metrics.json", "not json"), None);
        assert_eq!(one("f1", "faces.csv", "path,x,y,w,h,score\na.jpg,1,2,3,4,0.9\n"), Some("a faces folder"));
        assert_eq!(one("f2", "faces.csv", "name,smile\n"), None);
    }

    #[test]
    fn a_dataset_that_is_not_there_is_said_to_be_missing() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("jaffe");
        use super::{scan, DataFormat};
        let e = scan(&gone, DataFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("jaffe") && e.contains("not found") && !e.contains("os error"), "{e}");
        // A link to nothing is missing too.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&gone, d.path().join("link")).unwrap();
            let e = scan(&d.path().join("link"), DataFormat::Csv).unwrap_err().to_string();
            assert!(e.contains("link") && e.contains("not found"), "{e}");
        }
    }
}

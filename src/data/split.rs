//! Labels (binary neutral-vs-rest, multiclass, custom map) and
//! subject-grouped splits: no person on both sides, stratified where the
//! groups allow, with a stratified image split when subjects are unknown.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::scan::Dataset;
use crate::error::{Error, Result, Setting};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `neutral` vs `expressive` (everything else).
    Binary,
    /// Every label its own class.
    Multiclass,
}

pub(crate) const BINARY_CLASSES: [&str; 2] = ["neutral", "expressive"];

/// Which labels the head is trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainLabels {
    /// `raw` when the data has more raw labels than the task has classes, else `task`.
    #[default]
    Auto,
    /// Every raw label (JAFFE code, folder name, CSV label) is an output; a
    /// task class's probability is the sum of its raw labels' probabilities.
    Raw,
    /// The task's classes directly.
    Task,
}

/// Class names and each sample's class index, for the task and for the raw labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    pub classes: Vec<String>,
    pub targets: Vec<i64>,
    /// The distinct raw labels, sorted.
    pub raw_classes: Vec<String>,
    pub raw_targets: Vec<i64>,
    /// The task class of each raw label.
    pub raw_to_task: Vec<usize>,
}

impl Labels {
    /// Whether the head trains on the raw labels under `choice`.
    pub fn train_on_raw(&self, choice: TrainLabels) -> bool {
        match choice {
            TrainLabels::Auto => self.raw_classes.len() > self.classes.len(),
            TrainLabels::Raw => true,
            TrainLabels::Task => false,
        }
    }

    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &t in &self.targets {
            c[t as usize] += 1;
        }
        c
    }
}

/// Parses `raw=class,raw2=class2`.
pub fn parse_label_map(s: &str) -> Result<Vec<(String, String)>> {
    let map: Vec<(String, String)> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| Error::invalid(Setting::LabelMap, format!("entry `{p}`: expected raw=class")))
        })
        .collect::<Result<_>>()?;
    // The first entry for a label would win silently.
    for (i, (raw, class)) in map.iter().enumerate() {
        if let Some((_, first)) = map[..i].iter().find(|(r, c)| r == raw && c != class) {
            return Err(Error::invalid(Setting::LabelMap, format!("maps `{raw}` twice, to `{first}` and to `{class}`")));
        }
    }
    Ok(map)
}

/// The expression a JAFFE code (`AN`, `ne`, …) names: a label map may use either.
fn jaffe_name(code: &str) -> Option<&'static str> {
    crate::data::scan::JAFFE_CODES.iter().find(|(c, _)| c.eq_ignore_ascii_case(code)).map(|&(_, n)| n)
}

/// Other spellings of the expressions JAFFE's reader names (as CK+, RaFD,
/// Oulu-CASIA and class folders spell them), each with that name.
const SPELLINGS: [(&str, &str); 11] = [
    ("anger", "angry"),
    ("disgusted", "disgust"),
    ("fearful", "fear"),
    ("afraid", "fear"),
    ("happiness", "happy"),
    ("smile", "happy"),
    ("smiling", "happy"),
    ("sadness", "sad"),
    ("surprised", "surprise"),
    ("contemptuous", "contempt"),
    ("calm", "neutral"),
];

/// The expression name (`happy`) a spelling of it (`happiness`, `Smiling`,
/// `Happy`) or its JAFFE code (`HA`) stands for; None for other words.
pub fn expression_name(word: &str) -> Option<&'static str> {
    let names = crate::data::scan::JAFFE_CODES.iter().map(|&(_, n)| (n, n)).chain([("contempt", "contempt")]);
    jaffe_name(word).or_else(|| SPELLINGS.iter().copied().chain(names).find(|(w, _)| w.eq_ignore_ascii_case(word)).map(|(_, n)| n))
}

/// The class a label map gives `label`: the entry naming it (in any case)
/// or, for one of JAFFE's expressions, its code (`HA=smile` maps `happy`,
/// the name JAFFE's reader gives). Training and `evaluate` read a map so.
pub fn mapped_label<'a>(map: &'a [(String, String)], label: &str) -> Option<&'a str> {
    map.iter().find(|(raw, _)| names_label(raw, label)).map(|(_, c)| c.as_str())
}

/// Whether a label map's entry `raw` names `label` (`mapped_label`).
fn names_label(raw: &str, label: &str) -> bool {
    raw.eq_ignore_ascii_case(label) || jaffe_name(raw) == Some(label)
}

/// Turns raw labels into classes. A label map, when given, defines the classes.
pub fn assign_labels(ds: &Dataset, task: Task, map: &[(String, String)]) -> Result<Labels> {
    let mapped: Vec<String> = ds
        .samples
        .iter()
        .map(|s| {
            if map.is_empty() {
                return Ok(s.label.clone());
            }
            mapped_label(map, &s.label).map(str::to_string).ok_or_else(|| {
                let labels: Vec<String> = ds.samples.iter().map(|s| s.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
                // All that is missing at once, and the entries that name no label here (a typo, another set's codes).
                let unmapped: Vec<String> = labels.iter().filter(|l| mapped_label(map, l).is_none()).cloned().collect();
                let unused: Vec<String> = map.iter().filter(|(raw, _)| !labels.iter().any(|l| names_label(raw, l))).map(|(raw, _)| raw.clone()).collect();
                let unused = if unused.is_empty() { String::new() } else { format!("; entries that match no label: {}", crate::error::short_list(&unused, 8)) };
                Error::file(
                    &s.path,
                    format!(
                        "label `{}` is not in --label-map (the data's labels: {}): every label needs a class (not mapped: {}){unused}; to leave labels out, list the other photos in a manifest.csv",
                        s.label,
                        crate::error::short_list(&labels, 12),
                        crate::error::short_list(&unmapped, 12)
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    let classes: Vec<String> = if !map.is_empty() || task == Task::Multiclass {
        mapped.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()
    } else {
        BINARY_CLASSES.iter().map(|s| s.to_string()).collect()
    };
    let targets: Vec<i64> = mapped
        .iter()
        .map(|l| {
            if map.is_empty() && task == Task::Binary {
                if l.eq_ignore_ascii_case("neutral") || l.eq_ignore_ascii_case("ne") {
                    0
                } else {
                    1
                }
            } else {
                classes.iter().position(|c| c == l).unwrap_or(0) as i64
            }
        })
        .collect();
    let raw_classes: Vec<String> = ds.samples.iter().map(|s| s.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let raw_targets: Vec<i64> = ds.samples.iter().map(|s| raw_classes.iter().position(|c| *c == s.label).unwrap_or(0) as i64).collect();
    let mut raw_to_task = vec![0usize; raw_classes.len()];
    for (&r, &t) in raw_targets.iter().zip(&targets) {
        raw_to_task[r as usize] = t as usize;
    }
    let labels = Labels { classes, targets, raw_classes, raw_targets, raw_to_task };
    let counts = labels.counts();
    let present: Vec<&String> = labels.classes.iter().zip(&counts).filter(|(_, &n)| n > 0).map(|(c, _)| c).collect();
    if present.len() < 2 {
        let which = present.first().map(|s| s.as_str()).unwrap_or("none");
        let hint = if task == Task::Binary && map.is_empty() && which == "neutral" {
            " (the binary task is `neutral` against the rest, and only `neutral` was found)".to_string()
        } else if task == Task::Binary && map.is_empty() {
            // Say what was found and what the binary task needs (the happy/sad folder case).
            format!(
                ". The binary task is the label `neutral` (or `NE`) against all the others; labels found: {}, none of them `neutral`. Use --task multiclass to classify these labels, or --label-map raw=class,… to choose the classes",
                // Quoted, so that a space in a folder's name (`neutral `) shows.
                crate::error::short_list(&labels.raw_classes.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>(), 8)
            )
        } else {
            String::new()
        };
        return Err(Error::dataset(&ds.root, format!("has only one class ({which}): a classifier needs at least two{hint}")));
    }
    if let Some((c, _)) = labels.classes.iter().zip(&counts).find(|(_, &n)| n == 0) {
        return Err(Error::dataset(&ds.root, format!("class `{c}` has no images")));
    }
    Ok(labels)
}

/// How to hold out validation data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ValSpec {
    None,
    /// A fraction of the subjects (of the images when subjects are unknown).
    Subjects {
        fraction: f64,
    },
    /// These subjects.
    Named {
        subjects: Vec<String>,
    },
}

impl ValSpec {
    /// `none`, `subjects:F`, or a bare fraction `F`.
    pub fn parse(s: &str) -> Result<ValSpec> {
        let s = s.trim();
        if s == "none" {
            return Ok(ValSpec::None);
        }
        let f = s.strip_prefix("subjects:").unwrap_or(s);
        let fraction: f64 = f.parse().map_err(|_| {
            // People's ids where a fraction goes: --val-subjects names them.
            let named = if f.chars().any(char::is_alphabetic) { format!(" (to hold out these people: --val-subjects {f})") } else { String::new() };
            Error::invalid(Setting::Val, format!("`{s}`: expected none or subjects:F with 0 < F < 1{named}"))
        })?;
        if !(fraction > 0.0 && fraction < 1.0) {
            let hint = match fraction {
                0.0 => " (--val none: no validation)",
                f if f >= 1.0 && f.fract() == 0.0 => " of the people, not a count (--val-subjects ID,… names the people to hold out)",
                _ => "",
            };
            return Err(Error::invalid(Setting::Val, format!("fraction must be between 0 and 1, got {fraction}{hint}")));
        }
        Ok(ValSpec::Subjects { fraction })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub val_subjects: Vec<String>,
    /// A note for the user (e.g. the fallback to an image split).
    pub note: Option<String>,
}

/// Splits into train and validation according to `spec`.
pub fn holdout(ds: &Dataset, labels: &Labels, spec: &ValSpec, seed: u64) -> Result<Split> {
    let n = ds.samples.len();
    let has_subjects = ds.samples.iter().all(|s| s.subject.is_some());
    let split = match spec {
        ValSpec::None => return Ok(Split { train: (0..n).collect(), val: vec![], val_subjects: vec![], note: None }),
        ValSpec::Named { subjects } => {
            if !has_subjects {
                return Err(Error::dataset(&ds.root, "--val-subjects needs subject ids, and this dataset has none"));
            }
            let known: BTreeSet<&str> = ds.samples.iter().filter_map(|s| s.subject.as_deref()).collect();
            let subjects = named_subjects(subjects, &known).map_err(|s| {
                Error::dataset(
                    &ds.root,
                    format!(
                        "--val-subjects: no subject `{s}` (subjects: {})",
                        // An id that holds a comma is quoted, so the list reads as its ids.
                        crate::error::short_list(&known.iter().map(|k| if k.contains(',') { format!("`{k}`") } else { k.to_string() }).collect::<Vec<_>>(), 10)
                    ),
                )
            })?;
            if subjects.is_empty() {
                // `--val-subjects=` or `--val-subjects ,`: no id at all.
                // An id that holds a comma is quoted, as the unknown-id message quotes it.
                let ids: Vec<String> = known.iter().take(3).map(|k| if k.contains(',') { format!("\"{k}\"") } else { k.to_string() }).collect();
                return Err(Error::dataset(&ds.root, format!("--val-subjects names no person: give their ids, e.g. --val-subjects {}", ids.join(","))));
            }
            let set: BTreeSet<&str> = subjects.iter().map(String::as_str).collect();
            let (val, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| set.contains(ds.samples[i].subject.as_deref().unwrap_or("")));
            Split { train, val, val_subjects: subjects, note: None }
        }
        ValSpec::Subjects { fraction } if has_subjects => {
            let groups = subject_groups(ds, labels);
            let val_subjects = pick_subjects(&groups, *fraction, seed);
            let set: BTreeSet<&str> = val_subjects.iter().map(String::as_str).collect();
            let (val, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| set.contains(ds.samples[i].subject.as_deref().unwrap_or("")));
            Split { train, val, val_subjects, note: None }
        }
        ValSpec::Subjects { fraction } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut val = Vec::new();
            for (c, name) in labels.classes.iter().enumerate() {
                let mut idx: Vec<usize> = (0..n).filter(|&i| labels.targets[i] == c as i64).collect();
                if idx.len() < 2 {
                    return Err(Error::dataset(&ds.root, format!("class `{name}` has a single image; a train/validation split needs at least two")));
                }
                idx.shuffle(&mut rng);
                let k = ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1);
                val.extend_from_slice(&idx[..k]);
            }
            val.sort_unstable();
            let train = (0..n).filter(|i| val.binary_search(i).is_err()).collect();
            Split {
                train,
                val,
                val_subjects: vec![],
                note: Some(format!(
                    "no subject ids in this dataset: using a stratified image split (the same person may be on both sides){}",
                    crate::data::scan::NO_SUBJECTS
                )),
            }
        }
    };
    check_sides(ds, labels, &split)?;
    Ok(split)
}

/// The people `--val-subjects` names, read against the dataset's ids
/// (`known`). The list is comma-separated, yet an id may hold a comma itself
/// (`Doe, J` from a manifest or a `--subject-pattern`): at each place the
/// longest run of pieces that joins into a known id is taken, so `Doe, J,AK`
/// names `Doe, J` and `AK`. Empty pieces (`AK,,BK`, a trailing comma) are
/// skipped; a piece that starts no id is returned as the error.
fn named_subjects(given: &[String], known: &BTreeSet<&str>) -> std::result::Result<Vec<String>, String> {
    let pieces: Vec<&str> = given.iter().flat_map(|g| g.split(',')).collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        match (i + 1..=pieces.len()).rev().map(|j| (j, pieces[i..j].join(","))).find(|(_, id)| known.contains(id.as_str())) {
            Some((j, id)) => {
                if !out.contains(&id) {
                    out.push(id);
                }
                i = j;
            }
            None if pieces[i].is_empty() => i += 1,
            None => return Err(pieces[i].to_string()),
        }
    }
    Ok(out)
}

/// Every class must be on both sides, or the split is useless.
pub(crate) fn check_sides(ds: &Dataset, labels: &Labels, split: &Split) -> Result<()> {
    if split.train.is_empty() && !split.val.is_empty() {
        // One person (or every person named by --val-subjects): nobody is left to train on.
        return Err(Error::dataset(
            &ds.root,
            format!(
                "cannot make this split: the people held out for validation ({}) are all the people there are, so none are left to train on; a subject-grouped validation needs at least two people, --val none trains on all",
                crate::error::short_list(&split.val_subjects, 5)
            ),
        ));
    }
    for (side, idx) in [("training", &split.train), ("validation", &split.val)] {
        for (c, name) in labels.classes.iter().enumerate() {
            if !idx.iter().any(|&i| labels.targets[i] == c as i64) {
                return Err(Error::dataset(
                    &ds.root,
                    format!(
                        "cannot make this split: the {side} side has no `{name}` image{}; use more data, another --val, or --val none",
                        // An image split (no people) holds out no one by name.
                        if split.val_subjects.is_empty() { String::new() } else { format!(" (held out: {})", split.val_subjects.join(",")) }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Subjects grouped by the multiset of classes they have, sorted, so that
/// taking the same fraction of each group stratifies the split.
pub(crate) fn subject_groups(ds: &Dataset, labels: &Labels) -> BTreeMap<Vec<i64>, Vec<String>> {
    let mut per_subject: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (s, &t) in ds.samples.iter().zip(&labels.targets) {
        per_subject.entry(s.subject.clone().unwrap_or_default()).or_default().push(t);
    }
    let mut groups: BTreeMap<Vec<i64>, Vec<String>> = BTreeMap::new();
    for (subj, mut ts) in per_subject {
        ts.sort_unstable();
        groups.entry(ts).or_default().push(subj);
    }
    groups
}

/// Takes `fraction` of each group's subjects (seeded), at least one overall.
fn pick_subjects(groups: &BTreeMap<Vec<i64>, Vec<String>>, fraction: f64, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = Vec::new();
    let mut leftovers = Vec::new();
    for subjects in groups.values() {
        let mut s = subjects.clone();
        s.shuffle(&mut rng);
        let exact = s.len() as f64 * fraction;
        let k = exact.floor() as usize;
        picked.extend_from_slice(&s[..k]);
        if k < s.len() {
            leftovers.push((exact - k as f64, s[k].clone()));
        }
    }
    let total: usize = groups.values().map(Vec::len).sum();
    let want = ((total as f64 * fraction).round() as usize).max(1).min(total.saturating_sub(1).max(1));
    leftovers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, s) in leftovers {
        if picked.len() >= want {
            break;
        }
        picked.push(s);
    }
    picked.sort();
    picked
}

/// Subject-grouped k folds (stratified by group signature), or stratified
/// image folds without subjects. Returns each fold's held-out indices.
pub fn kfold(ds: &Dataset, labels: &Labels, k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        return Err(Error::invalid(Setting::Folds, format!("must be at least 2, got {k}")));
    }
    let n = ds.samples.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Allocated after the count checks: `--folds 18446744073709551615` is an error, not an allocation.
    let mut folds = Vec::new();
    if ds.samples.iter().all(|s| s.subject.is_some()) {
        let groups = subject_groups(ds, labels);
        let total: usize = groups.values().map(Vec::len).sum();
        if total < 2 {
            return Err(Error::dataset(
                &ds.root,
                "holds one subject: subject-grouped folds need at least 2 (each fold holds out people none of its training photos show)",
            ));
        }
        if total < k {
            return Err(Error::dataset(
                &ds.root,
                format!("{total} subjects cannot make {k} subject-grouped folds (at most {total}: --folds loso leaves out one subject at a time)"),
            ));
        }
        folds.resize(k, Vec::new());
        let mut next = 0;
        let mut fold_of: BTreeMap<String, usize> = BTreeMap::new();
        for subjects in groups.values() {
            let mut s = subjects.clone();
            s.shuffle(&mut rng);
            for subj in s {
                fold_of.insert(subj, next % k);
                next += 1;
            }
        }
        for i in 0..n {
            folds[fold_of[ds.samples[i].subject.as_deref().unwrap_or("")]].push(i);
        }
    } else {
        if n < k {
            return Err(Error::dataset(
                &ds.root,
                format!("{n} images cannot make {k} folds (at most {n}; this data has no subject ids, so its folds are of images)"),
            ));
        }
        folds.resize(k, Vec::new());
        let mut next = 0;
        for c in 0..labels.classes.len() {
            let mut idx: Vec<usize> = (0..n).filter(|&i| labels.targets[i] == c as i64).collect();
            idx.shuffle(&mut rng);
            for i in idx {
                folds[next % k].push(i);
                next += 1;
            }
        }
    }
    for f in folds.iter_mut() {
        f.sort_unstable();
    }
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use super::{named_subjects, parse_label_map, ValSpec};

    /// `--val-subjects` names ids that hold a comma, beside plain ones, however the shell split them.
    #[test]
    fn val_subjects_names_ids_that_hold_a_comma() {
        let known = ["Doe, J", "Doe", "AK", "a,b,c"].into_iter().collect();
        let named = |given: &[&str]| named_subjects(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &known);
        assert_eq!(named(&["Doe, J,AK"]).unwrap(), ["Doe, J", "AK"]);
        // As clap's delimiter hands them over, and as repeated flags.
        assert_eq!(named(&["Doe", " J", "AK"]).unwrap(), ["Doe, J", "AK"]);
        assert_eq!(named(&["Doe", "AK"]).unwrap(), ["Doe", "AK"]);
        assert_eq!(named(&["a,b,c", "Doe,AK"]).unwrap(), ["a,b,c", "Doe", "AK"]);
        assert_eq!(named(&["AK,,Doe,", "AK"]).unwrap(), ["AK", "Doe"]);
        assert_eq!(named(&["AK,BK"]).unwrap_err(), "BK");
        assert_eq!(named(&["a,b"]).unwrap_err(), "a");
    }

    /// What a user may mean by a `--val` that is not a fraction is said.
    #[test]
    fn a_val_that_is_no_fraction_says_what_was_meant() {
        assert_eq!(ValSpec::parse("subjects:0.25").unwrap(), ValSpec::Subjects { fraction: 0.25 });
        assert_eq!(ValSpec::parse(" none ").unwrap(), ValSpec::None);
        for (given, says) in [
            ("0", "got 0 (--val none: no validation)"),
            ("subjects:2", "got 2 of the people, not a count (--val-subjects ID,… names the people to hold out)"),
            ("subjects:AK,BK", "(to hold out these people: --val-subjects AK,BK)"),
            ("1.5", "got 1.5"),
        ] {
            let e = ValSpec::parse(given).unwrap_err().to_string();
            assert!(e.contains(says), "{given}: {e}");
        }
    }

    #[test]
    fn a_label_map_entry_matches_its_label_in_any_case_or_by_jaffe_code() {
        use super::mapped_label;
        let map = parse_label_map("HA=smile,neutral=calm").unwrap();
        // JAFFE's reader names the expression (`happy`); a map may give its code.
        assert_eq!(mapped_label(&map, "happy"), Some("smile"));
        assert_eq!(mapped_label(&map, "ha"), Some("smile"));
        assert_eq!(mapped_label(&map, "Neutral"), Some("calm"));
        assert_eq!(mapped_label(&map, "surprise"), None);
        assert_eq!(mapped_label(&[], "happy"), None);
    }

    #[test]
    fn other_spellings_of_an_expression_give_its_name() {
        use super::expression_name;
        assert_eq!(expression_name("Happiness"), Some("happy"));
        assert_eq!(expression_name("smiling"), Some("happy"));
        assert_eq!(expression_name("ha"), Some("happy"));
        assert_eq!(expression_name("surprised"), Some("surprise"));
        assert_eq!(expression_name("Happy"), Some("happy"));
        assert_eq!(expression_name("zebra"), None);
        // One vocabulary: every spelling, and the name it stands for, is a word the folder readers know as an expression.
        for (word, name) in super::SPELLINGS {
            assert!(crate::data::scan::EXPRESSION_WORDS.contains(&word) && crate::data::scan::EXPRESSION_WORDS.contains(&name), "{word} → {name}");
        }
    }

    #[test]
    fn a_label_map_names_each_raw_label_once() {
        assert_eq!(parse_label_map("neutral=calm, HA=smile,").unwrap(), [("neutral".to_string(), "calm".to_string()), ("HA".into(), "smile".into())]);
        // The same entry twice is harmless; two classes for one label are a mistake the first would hide.
        assert_eq!(parse_label_map("a=x,a=x").unwrap().len(), 2);
        let e = parse_label_map("neutral=a,smiling=c,neutral=b").unwrap_err().to_string();
        assert!(e.contains("maps `neutral` twice, to `a` and to `b`"), "{e}");
        assert!(parse_label_map("smiling=").unwrap_err().to_string().contains("expected raw=class"));
    }
}

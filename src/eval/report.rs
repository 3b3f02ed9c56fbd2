//! `vggft report`: runs, cross-validations and evaluations side by side as a
//! Markdown table — the recipe settings that differ between them, and each
//! metric (mean ± std for a cross-validation) with the protocol it was
//! measured by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Flattens JSON into `a.b.c` → scalar text.
pub(crate) fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.insert(prefix.to_string(), a.iter().map(|x| x.to_string().trim_matches('"').to_string()).collect::<Vec<_>>().join(","));
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out);
            }
        }
        // Not set (e.g. `threads`: libtorch's own choice): shown as a setting a run lacks, not as `null`.
        Value::Null => {
            out.insert(prefix.to_string(), "–".to_string());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string().trim_matches('"').to_string());
        }
    }
}

fn read_json(p: &Path) -> Result<Value> {
    let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&s).map_err(|e| Error::file(p, format!("is not valid JSON: {e}")))
}

/// One column of the report: its recipe and its metrics as text.
struct Entry {
    name: String,
    recipe: BTreeMap<String, String>,
    metrics: BTreeMap<String, String>,
}

fn entry(dir: &Path) -> Result<Entry> {
    let mut name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    // `runs/latest` and other links: which run they name today.
    if let Some(target) = std::fs::read_link(dir).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())) {
        name = format!("{name} → {target}");
    }
    let mut recipe = BTreeMap::new();
    let mut metrics = BTreeMap::new();
    if dir.join("cv.json").is_file() {
        let cfg = read_json(&dir.join("cv-config.json"))?;
        flatten("", &cfg["run"], &mut recipe);
        // As given on the command line: `--folds loso` / `--folds 5`, `--seeds 0,1,2`.
        let folds = match (cfg["folds"]["kind"].as_str(), cfg["folds"]["k"].as_u64()) {
            (Some("k"), Some(k)) => k.to_string(),
            (Some(kind), _) => kind.to_string(),
            _ => cfg["folds"].to_string(),
        };
        recipe.insert("cv.folds".into(), folds);
        flatten("cv.seeds", &cfg["seeds"], &mut recipe);
        let cv = read_json(&dir.join("cv.json"))?;
        for s in cv["stats"].as_array().into_iter().flatten() {
            // `null`: no fold could compute it (or one fold, for the std).
            let f = |k: &str| crate::eval::fig(s[k].as_f64().unwrap_or(f64::NAN));
            metrics.insert(s["metric"].as_str().unwrap_or("?").to_string(), format!("{} ± {}", f("mean"), f("std")));
        }
        // A cv over images (no subject ids) is not one over people: said, as its cv.md says it.
        let images = cv["protocol"].as_str().is_some_and(|p| p.contains(crate::eval::cv::IMAGE_FOLDS));
        metrics.insert("protocol".into(), if images { "cv (image folds)" } else { "cv, subject-grouped" }.into());
    } else if dir.join("config.json").is_file() {
        flatten("", &read_json(&dir.join("config.json"))?, &mut recipe);
        // A run's `data_sha256` covers its split too; the report compares the images.
        let split = std::fs::read(dir.join("split.csv")).unwrap_or_default();
        if let Some(sha) = crate::run::images_sha256(&split) {
            recipe.insert("data_sha256".into(), sha);
        }
        if let Some(held) = held_out(&split) {
            recipe.insert(HELD_OUT.into(), held);
        }
        let m = read_json(&dir.join("metrics.json"))?;
        figures(&m["validation"], &mut metrics);
        metrics.insert("protocol".into(), m["protocol"].as_str().unwrap_or("holdout").to_string());
    } else if evaluation(dir) {
        let m = read_json(&dir.join("metrics.json"))?;
        // The run it scored: its recipe, where it is still there. Evaluations before 2026-12-07 recorded
        // the run as given (relative to where evaluate ran): then the folder above one in its default place.
        let given = m["model"].as_str().map(PathBuf::from);
        let run = given.iter().map(PathBuf::as_path).chain(dir.parent()).find(|r| r.join("config.json").is_file());
        if let Some(r) = run {
            flatten("", &read_json(&r.join("config.json"))?, &mut recipe);
        }
        let shown = given.as_ref().map(|g| g.display().to_string()).unwrap_or_else(|| "?".into());
        recipe.insert("evaluated_run".into(), if run.is_some() { shown } else { format!("{shown} (not found: its recipe is not shown)") });
        // The figures are on the data it scored, not the run's: its path, and no fingerprint of the run's images.
        recipe.insert("data.path".into(), m["data"].as_str().unwrap_or("?").to_string());
        recipe.remove("data_sha256");
        figures(&m["metrics"], &mut metrics);
        let mut protocol = match m["training_images"]["scored"].as_u64() {
            Some(0) => "evaluate: none of the run's training images".to_string(),
            Some(n) => format!("evaluate: {n} of the run's training images among them (not held out)"),
            None => "evaluate".to_string(),
        };
        if let Some(n @ 1..) = m["training_people"]["scored"].as_u64() {
            protocol += &format!("; {n} other photos of people it trained on (not subject-independent)");
        }
        metrics.insert("protocol".into(), protocol);
    } else {
        // `expand` gave it as a finished run, cv or evaluation; gone or changed since.
        return Err(Error::file(dir, "is no longer a finished run, cv or evaluate folder (config.json and metrics.json, cv.json, or metrics.json)"));
    }
    // Hashes are compared in full but shown short; the data's beside its path
    // (the images, labels, subjects and sizes, whatever the split).
    if let Some(v) = recipe.remove("data_sha256") {
        recipe.insert("data.sha256".into(), v);
    }
    for k in ["data.sha256", "weights.sha256"] {
        if let Some(v) = recipe.get_mut(k) {
            v.truncate(12);
        }
    }
    Ok(Entry { name, recipe, metrics })
}

/// A recipe value as shown: numbers that JSON wrote in full (a fitted
/// threshold's 0.47916666666666663) to 4 significant digits; rows are still
/// told apart by the full values.
fn show(v: &str) -> String {
    let short = |part: &str| -> String {
        let long = part.split_once('.').is_some_and(|(_, frac)| frac.trim_start_matches('-').len() > 6);
        match part.parse::<f64>() {
            Ok(x) if long && x.is_finite() && x != 0.0 => {
                let mag = x.abs().log10().floor() as i32;
                if (-3..6).contains(&mag) {
                    let t = format!("{x:.*}", (3 - mag).max(0) as usize);
                    if t.contains('.') {
                        t.trim_end_matches('0').trim_end_matches('.').to_string()
                    } else {
                        t
                    }
                } else {
                    format!("{x:.3e}")
                }
            }
            _ => part.to_string(),
        }
    };
    v.split(',').map(short).collect::<Vec<_>>().join(",")
}

/// What one `report` argument stands for (`expand`).
struct Expanded {
    /// Finished runs and cvs: the columns.
    done: Vec<PathBuf>,
    /// Runs still training, cvs with folds to run: named below the table.
    unfinished: Vec<PathBuf>,
    /// Folders of runs one level down: named, not read.
    folders_of_runs: Vec<PathBuf>,
}

/// Whether `d` is a run or cv folder, finished or not, or an evaluate folder.
fn started(d: &Path) -> bool {
    d.join("cv-config.json").is_file() || d.join("config.json").is_file() || evaluation(d)
}

/// Whether `d` is `vggft evaluate`'s folder, as the commands that refuse to
/// write over one know it. Its files are written as one set, so it is
/// finished where it is there.
fn evaluation(d: &Path) -> bool {
    crate::data::scan::output_kind(d) == Some("an evaluate folder")
}

/// The run and cv folders directly inside `dir` (not its `latest` link), sorted.
fn runs_in(dir: &Path) -> Vec<PathBuf> {
    let mut inside: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "latest") && started(p))
        .collect();
    inside.sort();
    inside
}

/// The folders a `report` argument stands for: itself when it is a run or a
/// cv folder, else (a folder of runs, `finetune --out DIR`'s) the run and cv
/// folders directly inside it by name, without its `latest` link (a second
/// column of the run it names). Those inside that have not finished (a run
/// still training, a cv with folds to run) are left out and named: one of
/// them would stop the report of the others. Named itself, an unfinished run
/// or cv is refused with what finishes it. Folders of runs inside it
/// (`runs/` of a project folder) are not read but named, so that `vggft
/// report .` says where the runs are.
fn expand(dir: &Path) -> Result<Expanded> {
    if started(dir) {
        return match unfinished(dir) {
            Some(why) => Err(Error::file(dir, why)),
            None => Ok(Expanded { done: vec![dir.to_path_buf()], unfinished: vec![], folders_of_runs: vec![] }),
        };
    }
    let (done, unfinished): (Vec<_>, Vec<_>) = runs_in(dir).into_iter().partition(|d| unfinished(d).is_none());
    let mut folders_of_runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !crate::data::scan::hidden(p) && p.file_name().is_some_and(|n| n != "latest") && !started(p) && !runs_in(p).is_empty())
        .collect();
    folders_of_runs.sort();
    Ok(Expanded { done, unfinished, folders_of_runs })
}

/// Why a run or cv folder has no figures yet, or None when it has them.
fn unfinished(dir: &Path) -> Option<String> {
    let d = dir.display();
    if dir.join("cv-config.json").is_file() && !dir.join("cv.json").is_file() {
        Some(format!(
            "is a cross-validation whose summary (cv.json) is not written yet: its folds are not all done; the same `vggft cv` command runs the rest, `vggft cv --collect {d} --partial` summarises those that are there"
        ))
    } else if dir.join("config.json").is_file() && !dir.join("metrics.json").is_file() {
        Some(format!("is a run that has not finished (no metrics.json yet): it may still be training; `vggft finetune --resume {d}` continues a stopped one"))
    } else {
        None
    }
}

/// The Markdown table for `dirs` (run folders, cv folders, folders of runs).
pub fn report(dirs: &[PathBuf]) -> Result<String> {
    let Gathered { paths, named, left_out, not_read } = gather(dirs)?;
    // The same folder twice (`runs/latest` beside the run it names, or a run
    // given and found again in its folder) is one column.
    let mut seen = std::collections::HashSet::new();
    let paths: Vec<PathBuf> = paths.into_iter().filter(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))).collect();
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    let mut kept = Vec::new();
    for d in paths {
        match entry(&d) {
            Ok(e) => {
                entries.push(e);
                kept.push(d);
            }
            Err(e) if !named.contains(&d) => unreadable.push(e),
            Err(e) => return Err(e),
        }
    }
    if entries.is_empty() && !unreadable.is_empty() {
        return Err(unreadable.swap_remove(0));
    }
    // Two folders of one name (`a/r1`, `b/r1`): each column named by its path instead.
    let column: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    for (e, d) in entries.iter_mut().zip(&kept) {
        if column.iter().filter(|n| **n == e.name).count() > 1 {
            e.name = e.name.replacen(&d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), &d.display().to_string(), 1);
        }
    }
    let mut out = table(&entries);
    if !left_out.is_empty() {
        out.push_str(&format!("\n(left out, not finished: {})\n", names(&left_out)));
    }
    if !unreadable.is_empty() {
        out.push_str(&format!("\n(left out, unreadable: {})\n", unreadable.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")));
    }
    for n in not_read {
        out.push_str(&format!("\n(not read, a folder of runs inside a folder given: {n})\n"));
    }
    Ok(out)
}

/// What the folders given to `report` hold.
struct Gathered {
    /// Finished runs and cvs, in order (the same one possibly twice).
    paths: Vec<PathBuf>,
    /// The folders given that are runs or cvs themselves: unreadable, they are an error.
    named: std::collections::HashSet<PathBuf>,
    /// Runs and cvs not finished.
    left_out: Vec<PathBuf>,
    /// Folders of runs one level down, each as a hint of the command that reads them.
    not_read: Vec<String>,
}

/// Expands each folder given (a run, a cv, a folder of them; a run's or
/// cv's own file stands for its folder); a folder with no finished run or
/// cv in it is an error that says what it is.
fn gather(dirs: &[PathBuf]) -> Result<Gathered> {
    let mut paths = Vec::new();
    // The folders named themselves: an unreadable one of these is an error, one found inside a folder is left out.
    let mut named = std::collections::HashSet::new();
    let mut left_out = Vec::new();
    let mut not_read = Vec::new();
    for d in dirs {
        // A run's or cv's own file (`runs/a/model.safetensors`, `cv/cv.md`) stands for its folder.
        let d = &match d.parent() {
            Some(folder) if d.is_file() && started(folder) => folder.to_path_buf(),
            _ => d.clone(),
        };
        let Expanded { done, unfinished, folders_of_runs } = expand(d)?;
        if started(d) {
            named.insert(d.clone());
        }
        let hint = |nested: &[PathBuf]| {
            let shown: Vec<String> = nested.iter().map(|p| p.strip_prefix(".").unwrap_or(p).display().to_string()).collect();
            format!("{} {} runs: `vggft report {}`", crate::error::short_list(&shown, 5), if shown.len() == 1 { "holds" } else { "hold" }, shown.join(" "))
        };
        if done.is_empty() && unfinished.is_empty() {
            if !crate::fsutil::exists(d)? {
                return Err(Error::file(d, "does not exist (give run or cv folders, or a folder of them: finetune and cv write theirs into `runs`)"));
            }
            // A folder this user cannot list (a run shared without read rights) is that, not "neither a run nor …".
            if d.is_dir() {
                std::fs::read_dir(d).map_err(|e| Error::io(d, e))?;
            }
            let also = if folders_of_runs.is_empty() { String::new() } else { format!("; {}", hint(&folders_of_runs)) };
            return Err(Error::file(
                d,
                format!("is neither a run folder (config.json), a cv folder (cv.json), an evaluate folder (metrics.json) nor a folder of them{also}"),
            ));
        }
        if done.is_empty() {
            return Err(Error::file(d, format!("holds no finished run or cross-validation (not finished: {})", names(&unfinished))));
        }
        if !folders_of_runs.is_empty() {
            not_read.push(hint(&folders_of_runs));
        }
        paths.extend(done);
        left_out.extend(unfinished);
    }
    Ok(Gathered { paths, named, left_out, not_read })
}

/// The table itself: a column per entry, a row per recipe setting that
/// differs between them, then the metrics.
fn table(entries: &[Entry]) -> String {
    // Data and weights are shown when they differ (paths, the data fingerprint, the weights' hash).
    let ignore = ["created", "model_sha256"];
    let keys: Vec<String> = entries
        .iter()
        .flat_map(|e| e.recipe.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| !ignore.contains(&k.as_str()))
        .filter(|k| {
            let vals: std::collections::BTreeSet<Option<&String>> = entries.iter().map(|e| e.recipe.get(k)).collect();
            vals.len() > 1
        })
        .collect();
    let cell = crate::eval::cell;
    let mut out = format!("| | {} |\n|---|{}\n", entries.iter().map(|e| cell(&e.name)).collect::<Vec<_>>().join(" | "), "---|".repeat(entries.len()));
    for k in &keys {
        out.push_str(&format!(
            "| {} | {} |\n",
            cell(k),
            entries.iter().map(|e| e.recipe.get(k).map_or("–".to_string(), |v| cell(&show(v)))).collect::<Vec<_>>().join(" | ")
        ));
    }
    for m in std::iter::once("protocol").chain(FIGURES) {
        out.push_str(&format!(
            "| **{m}** | {} |\n",
            entries.iter().map(|e| e.metrics.get(m).map(String::as_str).unwrap_or("–")).collect::<Vec<_>>().join(" | ")
        ));
    }
    if keys.is_empty() {
        out.push_str("\n(no recipe differences: the same settings throughout)\n");
    }
    let holdouts: std::collections::BTreeSet<&String> = entries.iter().filter_map(|e| e.recipe.get(HELD_OUT)).collect();
    if holdouts.len() > 1 {
        out.push_str(&format!(
            "\n(the runs' figures are on different held-out people or images ({HELD_OUT}): one holdout each, not comparable one to one; `vggft cv` scores recipes on the same folds)\n"
        ));
    }
    out
}

/// The figures a run's or an evaluation's metrics.json gives, in the table's order.
const FIGURES: [&str; 4] = ["balanced_accuracy", "accuracy", "roc_auc", "majority_baseline"];

/// `FIGURES` of one metrics.json block (a run's `validation`, an evaluation's `metrics`), to 3 decimals.
fn figures(v: &serde_json::Value, metrics: &mut BTreeMap<String, String>) {
    for k in FIGURES {
        if let Some(x) = v[k].as_f64() {
            metrics.insert(k.into(), format!("{x:.3}"));
        }
    }
}

/// The report's row of whom a run's validation side holds.
const HELD_OUT: &str = "validation.held_out";

/// Whom a run's validation side holds, from its split.csv: its people (in
/// an image split, its images), the first few named, and a short
/// fingerprint of the whole set, so that two runs' holdouts are told apart.
fn held_out(split: &[u8]) -> Option<String> {
    let mut r = csv::Reader::from_reader(split);
    let (mut people, mut paths) = (std::collections::BTreeSet::new(), Vec::new());
    for row in r.records().flatten().filter(|r| r.get(4) == Some("val")) {
        paths.push(row.get(0)?.to_string());
        people.extend(row.get(3).filter(|s| !s.is_empty()).map(str::to_string));
    }
    if paths.is_empty() {
        return None;
    }
    paths.sort();
    let set = &crate::run::sha256_hex(paths.join("\n").as_bytes())[..8];
    Some(if people.is_empty() {
        format!("{} images, set {set}", paths.len())
    } else {
        let first: Vec<&str> = people.iter().take(4).map(String::as_str).collect();
        format!("{} ({}{}), set {set}", crate::error::people(people.len()), first.join(", "), if people.len() > 4 { ", …" } else { "" })
    })
}

/// Folders by their last component, for a one-line list.
fn names(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().map(|d| d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
    crate::error::short_list(&v, 5)
}

#[cfg(test)]
mod tests {
    use super::show;

    #[test]
    fn a_setting_left_unset_shows_as_a_dash_and_a_pipe_stays_in_its_cell() {
        let d = tempfile::tempdir().unwrap();
        for (name, cfg) in
            [("a|run", r#"{"classes": ["neu|tral", "smiling"], "threads": null}"#), ("b", r#"{"classes": ["neutral", "smiling"], "threads": 2}"#)]
        {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("config.json"), cfg).unwrap();
            std::fs::write(dir.join("metrics.json"), r#"{"validation": {"balanced_accuracy": 0.75}}"#).unwrap();
        }
        let md = super::report(&[d.path().join("a|run"), d.path().join("b")]).unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], r"| | a\|run | b |", "{md}");
        assert!(lines.contains(&r"| classes | neu\|tral,smiling | neutral,smiling |"), "{md}");
        assert!(lines.contains(&"| threads | – | 2 |"), "{md}");
        // Every row has the same cells as the header: no `|` of a value split one.
        let cells = |l: &str| l.replace(r"\|", "").matches('|').count();
        assert!(lines.iter().take_while(|l| l.starts_with('|')).all(|l| cells(l) == cells(lines[0])), "{md}");
    }

    /// A cv over images (data without subject ids) is not reported as one over people.
    #[test]
    fn a_cv_says_whether_its_folds_held_out_people_or_images() {
        let d = tempfile::tempdir().unwrap();
        for (name, protocol) in [
            ("people", "leave-one-subject-out cross-validation"),
            ("images", "5-fold stratified image (no subject ids: the same person may be on both sides) cross-validation"),
        ] {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cv-config.json"), r#"{"run": {"lr": 0.01}, "folds": {"kind": "k", "k": 5}, "seeds": [0]}"#).unwrap();
            let stats = r#"[{"metric": "balanced_accuracy", "mean": 0.75, "std": 0.1}]"#;
            std::fs::write(dir.join("cv.json"), format!(r#"{{"protocol": "{protocol}", "stats": {stats}}}"#)).unwrap();
        }
        let md = super::report(&[d.path().join("people"), d.path().join("images")]).unwrap();
        assert!(md.contains("| **protocol** | cv, subject-grouped | cv (image folds) |"), "{md}");
    }

    /// An evaluation whose run is gone is shown with its figures and said to
    /// lack the run's recipe.
    #[test]
    fn an_evaluation_of_a_run_since_removed_says_so() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("config.json"), r#"{"train": {"lr": 0.01}}"#).unwrap();
        std::fs::write(run.join("metrics.json"), r#"{"validation": {"balanced_accuracy": 0.75}, "protocol": "holdout, subject-grouped"}"#).unwrap();
        let ev = d.path().join("ev");
        std::fs::create_dir(&ev).unwrap();
        let gone = d.path().join("gone");
        let record =
            serde_json::json!({"model": gone, "data": "/data/kdef", "metrics": {"balanced_accuracy": 0.6}, "training_images": {"in_data": 0, "scored": 0}});
        std::fs::write(ev.join("metrics.json"), record.to_string()).unwrap();
        let md = super::report(&[run, ev]).unwrap();
        assert!(md.contains(&format!("| evaluated_run | – | {} (not found: its recipe is not shown) |", gone.display())), "{md}");
        assert!(md.contains("| **protocol** | holdout, subject-grouped | evaluate: none of the run's training images |"), "{md}");
        assert!(md.contains("| **balanced_accuracy** | 0.750 | 0.600 |"), "{md}");
    }

    #[test]
    fn long_numbers_are_shown_to_four_significant_digits() {
        assert_eq!(show("0.47916666666666663,0.579861111111111"), "0.4792,0.5799");
        assert_eq!(show("-1.7799097863974713"), "-1.78");
        assert_eq!(show("0.000012345678"), "1.235e-5");
        assert_eq!(show("123.45678901"), "123.5");
        // Short numbers, integers and text stay as written.
        for v in ["0.003", "0.0001", "50", "best", "1e-5", "conv4,conv5", "0.5"] {
            assert_eq!(show(v), v);
        }
    }
}

//! Cross-validation, evaluation and reports through the real binary.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;

fn non_blank_png(p: &Path) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8();
    let coloured = img.pixels().filter(|px| px.0 != [255, 255, 255]).count();
    assert!(coloured > 500, "{} looks blank", p.display());
}

#[test]
fn cv_without_subject_ids_says_its_folds_are_of_images() {
    let d = tmp();
    let data = d.path().join("data");
    separable_folders(&data, 3, 32);
    let s = small_trunk(d.path(), 4);
    let cv = |folds: &str, out: &str| {
        let v = ["cv", "--data", "data", "--task", "multiclass", "--stages", "head:1", "--folds", folds, "--out", out];
        run(&args(&s, &v), d.path())
    };
    let (code, _, err) = cv("loso", "cvl");
    assert_eq!(code, 1);
    assert!(
        err.contains("data: --folds loso needs subject ids for every image (JAFFE file names, a `subject` column in a manifest.csv, or --subject-pattern"),
        "{err}"
    );
    let (code, _, err) = cv("7", "cv7");
    assert_eq!(code, 1);
    assert!(err.contains("data: 6 images cannot make 7 folds (at most 6; this data has no subject ids"), "{err}");
    let (code, _, err) = cv("18446744073709551615", "cvmax");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("data: 6 images cannot make 18446744073709551615 folds"), "{err}");
    // One image a fold: each fold's ROC AUC is undefined, and the summary says so instead of a zero.
    let (code, out, err) = cv("6", "cv6");
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(d.path().join("cv6/cv.md")).unwrap();
    assert_eq!(out.trim(), md.trim());
    assert!(md.contains("6-fold stratified image (no subject ids: the same person may be on both sides) cross-validation (a vs b)"), "{md}");
    assert!(md.contains("| roc_auc | – ± – | [–, –] | 0 |") && md.contains("| 0 | 0 | 1 | ") && !md.contains("NaN"), "{md}");
    assert!(!md.contains("subject-grouped") && !md.contains("## Per subject"), "{md}");
    assert!(!d.path().join("cv6/subjects.png").exists() && d.path().join("cv6/folds.png").exists());
    let stats = json(&d.path().join("cv6/cv.json"))["stats"].clone();
    let auc = stats.as_array().unwrap().iter().find(|st| st["metric"] == "roc_auc").unwrap().clone();
    assert_eq!((auc["mean"].is_null(), auc["n"].as_u64()), (true, Some(0)), "{auc}");
}

#[test]
fn cv_end_to_end_folds_collect_and_reproducibility() {
    let d = tmp();
    let Some(m) = london_slice(d.path(), 6) else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let s = small_trunk(d.path(), 1);
    let base = |out: &str| -> Vec<String> {
        let mut v: Vec<String> = ["cv", "--data", m.to_str().unwrap(), "--stages", "head:2,conv5:2", "--folds", "3", "--seeds", "0,1", "--out", out]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(s.iter().cloned());
        v
    };
    // A seed given twice would count the same folds twice: refused before anything is written.
    let twice: Vec<String> = base("cv-twice").into_iter().map(|x| if x == "0,1" { "0,1,0".into() } else { x }).collect();
    let (code, _, err) = run(&twice.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--seeds gives seed 0 twice") && !d.path().join("cv-twice").exists(), "{err}");
    let a: Vec<String> = base("cv-a");
    let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("balanced_accuracy") && out.contains("95 % interval") && out.contains("majority_baseline"), "{out}");
    assert!(err.contains("cached the frozen conv4 output (and the pooled features) once for every fold and seed"), "{err}");
    let dir = d.path().join("cv-a");
    for p in ["confusion.png", "roc.png", "folds.png"] {
        non_blank_png(&dir.join(p));
    }
    // Every image is tested exactly once per seed; no subject in two folds.
    for seed in [0, 1] {
        let mut tested = Vec::new();
        let mut subjects: Vec<BTreeSet<String>> = Vec::new();
        for fold in 0..3 {
            let r = json(&dir.join(format!("folds/seed{seed}-fold{fold}.json")));
            tested.extend(r["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()));
            subjects.push(r["subjects"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect());
            assert_eq!(r["n_train"].as_u64().unwrap() as usize + r["y"].as_array().unwrap().len(), 12);
        }
        tested.sort();
        let n = tested.len();
        tested.dedup();
        assert_eq!((n, tested.len()), (12, 12), "seed {seed}: each image once");
        for i in 0..3 {
            for j in i + 1..3 {
                assert!(subjects[i].is_disjoint(&subjects[j]), "seed {seed}: a subject in folds {i} and {j}");
            }
        }
    }
    let cv_a = json(&dir.join("cv.json"));
    // Each seed's mean over its folds, by hand from the fold files, and their spread.
    let seed_mean = |seed: u64| -> f64 {
        (0..3).map(|f| json(&dir.join(format!("folds/seed{seed}-fold{f}.json")))["metrics"]["balanced_accuracy"].as_f64().unwrap()).sum::<f64>() / 3.0
    };
    let (m0, m1) = (seed_mean(0), seed_mean(1));
    let seeds = cv_a["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    assert!((seeds[0]["balanced_accuracy"].as_f64().unwrap() - m0).abs() < 1e-12 && seeds[0]["folds"] == 3, "{seeds:?}");
    assert!((seeds[1]["balanced_accuracy"].as_f64().unwrap() - m1).abs() < 1e-12, "{seeds:?}");
    let spread = &cv_a["seed_spread"];
    assert_eq!(spread["n"], 2);
    assert!((spread["std"].as_f64().unwrap() - (m0 - m1).abs() / 2f64.sqrt()).abs() < 1e-12, "sample std of two means: {spread}");
    let md = std::fs::read_to_string(dir.join("cv.md")).unwrap();
    assert!(
        md.contains("## Per seed")
            && md.contains(&format!("spread over seeds: balanced accuracy {:.3} ± {:.3}", (m0 + m1) / 2.0, (m0 - m1).abs() / 2f64.sqrt())),
        "{md}"
    );
    assert!(md.contains("the seeds share one cache of the frozen trunk's outputs (the first seed's augmented views)"), "{md}");
    // Each test photo's feature distance from its fold's training photos, as predict gives it; the summary counts
    // those above predict's limit and names the farthest.
    let distances: Vec<f64> = (0..2)
        .flat_map(|seed| (0..3).map(move |f| (seed, f)))
        .flat_map(|(seed, f)| {
            let r = json(&dir.join(format!("folds/seed{seed}-fold{f}.json")));
            assert_eq!(r["distances"].as_array().unwrap().len(), r["paths"].as_array().unwrap().len());
            r["distances"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>()
        })
        .collect();
    let u = &cv_a["unusual"];
    assert_eq!((u["of"].as_u64(), u["limit"].as_f64()), (Some(24), Some(4.0)), "{u}");
    assert_eq!(u["count"].as_u64().unwrap() as usize, distances.iter().filter(|&&x| x > 4.0).count(), "{u}");
    assert_eq!(u["largest"].as_f64().unwrap(), distances.iter().copied().fold(0.0, f64::max), "{u}");
    assert!(
        distances.iter().all(|&x| x > 0.0) && md.contains(" of 24 test photos (pooled over seeds) lay farther than 4 from their fold's training photos"),
        "{md}"
    );
    // Same seeds again: the same numbers.
    let b = base("cv-b");
    assert_eq!(run(&b.iter().map(String::as_str).collect::<Vec<_>>(), d.path()).0, 0);
    assert_eq!(json(&d.path().join("cv-b/cv.json"))["stats"], cv_a["stats"]);
    // Stopped part-way (two fold results lost), the same command again runs only
    // what is missing, and the numbers are those of the whole run.
    std::fs::remove_file(d.path().join("cv-b/folds/seed0-fold0.json")).unwrap();
    std::fs::write(d.path().join("cv-b/folds/seed1-fold2.json"), "{\"seed\": 1, \"fol").unwrap();
    let (code, out, err) = run(&b.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming cv-b: 4 fold result(s) of this same cv are there already") && err.contains("; 2 to run"), "{err}");
    // Folds are named from 0, as their files, with their test people.
    let people = |seed: u64, fold: usize| -> String {
        let r = json(&d.path().join(format!("cv-b/folds/seed{seed}-fold{fold}.json")));
        let p: BTreeSet<&str> = r["subjects"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        format!("seed {seed} fold {fold} ({}): ", p.into_iter().collect::<Vec<_>>().join(", "))
    };
    assert!(err.contains(&people(0, 0)) && err.contains(&people(1, 2)) && !err.contains(&people(0, 1)), "{err}");
    assert_eq!(json(&d.path().join("cv-b/cv.json"))["stats"], cv_a["stats"], "{out}");
    // Nothing missing: no cache pass, no fold trained.
    let (code, _, err) = run(&b.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("; 0 to run") && !err.contains("cach") && !err.contains("seed 0 fold"), "{err}");
    // The same cv from another folder, its data path spelt from there: the same cv (its record holds the path resolved).
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let from_sub: Vec<String> = b
        .iter()
        .map(|x| {
            if x.as_str() == m.to_str().unwrap() {
                "../london.csv".into()
            } else if x == "cv-b" {
                "../cv-b".into()
            } else {
                x.clone()
            }
        })
        .collect();
    let (code, _, err) = run(&from_sub.iter().map(String::as_str).collect::<Vec<_>>(), &d.path().join("sub"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("; 0 to run"), "{err}");
    let recorded = json(&d.path().join("cv-b/cv-config.json"))["run"]["data"]["path"].as_str().unwrap().to_owned();
    assert_eq!(Path::new(&recorded), m.canonicalize().unwrap());
    // Another recipe into the same folder is refused: its folds would mix with these.
    let with = |out: &str, from: &str, to: &str| -> Vec<String> { base(out).into_iter().map(|x| if x == from { to.into() } else { x }).collect() };
    let (code, _, err) = run(&with("cv-b", "head:2,conv5:2", "head:3,conv5:2").iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("cv-b: holds another cross-validation (its cv-config.json differs in run.train.stages"), "{err}");
    // Seeds can be added after the earlier ones; fewer, or another order, are another cv.
    for seeds in ["0", "1,0", "1,0,2"] {
        let (code, _, err) = run(&with("cv-b", "0,1", seeds).iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 1, "{seeds}");
        assert!(err.contains("cv-b: holds this cross-validation with --seeds 0,1: to add seeds give that list first (--seeds 0,1,"), "{seeds}: {err}");
    }
    // A cv of seed 0, then seeds 0,1 into the same folder: only seed 1's folds
    // run, and the summary is that of both seeds run from the start.
    assert_eq!(run(&with("cv-s", "0,1", "0").iter().map(String::as_str).collect::<Vec<_>>(), d.path()).0, 0);
    let (code, _, err) = run(&base("cv-s").iter().map(String::as_str).collect::<Vec<_>>(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming cv-s: 3 fold result(s) of this same cv are there already") && err.contains("; 3 to run"), "{err}");
    assert!(!err.contains("seed 0 fold"), "{err}");
    assert_eq!(json(&d.path().join("cv-s/cv.json"))["stats"], cv_a["stats"]);
    assert_eq!(json(&d.path().join("cv-s/cv-config.json"))["seeds"], serde_json::json!([0, 1]));
    // Folds one process at a time, then --collect: the same numbers.
    for fold in 0..3 {
        let mut c = base("cv-c");
        c.extend(["--fold".to_string(), fold.to_string()]);
        let (code, out, err) = run(&c.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("--collect"), "{out}");
    }
    // One process at a time per cv folder: a second start of the whole cv is
    // refused while another holds the folder (here the test itself, as a
    // whole cv would), and a `--fold` run shares it only with other folds.
    {
        let lock = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(d.path().join("cv-c/.lock")).unwrap();
        lock.try_lock().unwrap();
        let mut c = base("cv-c");
        c.extend(["--fold".to_string(), "0".to_string()]);
        let (code, _, err) = run(&c.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 1);
        assert!(err.contains("cv-c: is being written by another vggft process"), "{err}");
        lock.unlock().unwrap();
        lock.lock_shared().unwrap();
        let (code, _, err) = run(&base("cv-c").iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 1);
        assert!(err.contains("is being written by another vggft process"), "{err}");
        let (code, _, err) = run(&c.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 0, "a fold beside another fold: {err}");
    }
    // Options that merging has no use for are refused, not silently ignored.
    let (code, _, err) = run(&["cv", "--collect", "cv-c", "--lr", "5", "data"], d.path());
    assert!(
        code == 2 && err.contains("--collect summarises the folds already in its folder") && err.contains("`data`, --lr would be ignored: drop them"),
        "{err}"
    );
    let (code, out, _) = run(&["cv", "--collect", "cv-c", "--quiet"], d.path());
    assert_eq!(code, 0);
    assert!(out.contains("balanced_accuracy"));
    assert_eq!(json(&d.path().join("cv-c/cv.json"))["stats"], cv_a["stats"]);
    // A fold file edited, or of another cv, is refused naming what does not fit (a true class past the
    // classes panicked the summary; rows of another length were pooled as they were).
    let fold0 = d.path().join("cv-c/folds/seed0-fold0.json");
    let good = std::fs::read_to_string(&fold0).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(Edit, &str); 6] = [
        (|f| f["y"][0] = 7.into(), "a true class 7, where this cv's classes are 0 to 1"),
        (|f| f["metrics"]["balanced_accuracy"] = 5.0.into(), "metrics: balanced_accuracy 5, where each metric lies in [0, 1]"),
        (|f| f["metrics"]["n"] = 1000.into(), "metrics: metrics of 1000 images, where the fold holds "),
        (|f| f["probs"].as_array_mut().unwrap().truncate(1), "true classes and 1 rows of probabilities, where each image has one of each"),
        (|f| f["probs"][0].as_array_mut().unwrap().push(0.5.into()), "probs: a row of probabilities ["),
        (|f| f["probs"][0][0] = 2.0.into(), "where each row holds this cv's 2 classes' probabilities, each in [0, 1]"),
    ];
    for (edit, says) in edits {
        let mut f: serde_json::Value = serde_json::from_str(&good).unwrap();
        edit(&mut f);
        std::fs::write(&fold0, f.to_string()).unwrap();
        let (code, _, err) = run(&["cv", "--collect", "cv-c"], d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("seed0-fold0.json: is not a fold result of this cv: ") && err.contains(says) && !err.contains("panicked"), "{err}");
    }
    std::fs::write(&fold0, good).unwrap();
    // A cv folder from before its folds were counted (no `n_folds`) is merged as it is.
    let cfg_path = d.path().join("cv-c/cv-config.json");
    let mut cfg = json(&cfg_path);
    cfg.as_object_mut().unwrap().remove("n_folds");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, _, err) = run(&["cv", "--collect", "cv-c", "--quiet"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&d.path().join("cv-c/cv.json"))["stats"], cv_a["stats"]);
    let (code, _, err) = run(
        &[&["cv", "--data", m.to_str().unwrap(), "--folds", "3", "--fold", "7", "--out", "cv-d"][..], &s.iter().map(String::as_str).collect::<Vec<_>>()[..]]
            .concat(),
        d.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--fold 7: there are 3 folds"), "{err}");
    // Folds the people cannot make fail before the cache pass, and leave no folder.
    let (code, _, err) = run(
        &[&["cv", "--data", m.to_str().unwrap(), "--folds", "7", "--out", "cv-e"][..], &s.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat(),
        d.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("6 subjects cannot make 7 subject-grouped folds") && !err.contains("cach"), "{err}");
    assert!(!d.path().join("cv-e").exists());
    // So are more folds than memory holds (u64::MAX panicked allocating them).
    let (code, _, err) = run(
        &[
            &["cv", "--data", m.to_str().unwrap(), "--folds", "18446744073709551615", "--out", "cv-e"][..],
            &s.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
        d.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("6 subjects cannot make 18446744073709551615 subject-grouped folds") && !err.contains("panicked"), "{err}");
    // Nor is a folder named that was never made.
    assert!(!err.contains("cv folder"), "{err}");
    // One person: no subject-grouped folds at all, said so (was "1 subjects cannot make 2 … (at most 1 …)").
    let one_dir = d.path().join("one");
    std::fs::create_dir_all(&one_dir).unwrap();
    let one = subject_dataset(&one_dir, 1, 32);
    let (code, _, err) = run(
        &[&["cv", "--data", one.to_str().unwrap(), "--folds", "2", "--out", "cv-e"][..], &s.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat(),
        d.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds one subject: subject-grouped folds need at least 2"), "{err}");

    // report: a run and a cv side by side, the differing recipe keys listed.
    let (code, _, err) = run(
        &[
            &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--name", "r", "--bn", "drop"][..],
            &s.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["report", "runs/r", "cv-a"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("| train.stages.0.epochs | 1 | 2 |") && out.contains("**balanced_accuracy**") && out.contains("±"), "{out}");
    // runs/latest is named with the run it points at.
    let (code, out, err) = run(&["report", "runs/latest", "cv-a"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | latest → r | cv-a |"), "{out}");
    // A runs folder stands for its runs; a typo and a run folder for a cv are each named for what they are not.
    let (code, out, err) = run(&["report", "runs", "cv-a"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | r | cv-a |"), "{out}");
    let (code, _, err) = run(&["report", "runs/typo"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs/typo: does not exist"), "{err}");
    let (code, _, err) = run(&["cv", "--collect", "runs/r"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs/r: is not a vggft cv folder") && err.lines().count() == 1, "{err}");
    let (code, _, err) = run(&["cv", "--collect", "cv-typo"], d.path());
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: cv-typo: does not exist: give the folder a cv wrote into (its --out)", "it said cv-typo/cv-config.json: cannot read");

    // evaluate: metrics and a confusion matrix for a labelled set.
    let (code, out, err) = run(&["evaluate", "--model", "runs/r", "--data", m.to_str().unwrap(), "--out", "ev"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("balanced accuracy") && out.contains("majority baseline") && out.contains("precision"), "{out}");
    let ev = json(&d.path().join("ev/metrics.json"));
    assert_eq!(ev["metrics"]["n"], 12);
    non_blank_png(&d.path().join("ev/confusion.png"));
}

#[test]
fn evaluate_refuses_classes_the_model_never_saw() {
    let d = tmp();
    let s = small_trunk(d.path(), 2);
    separable_folders(&d.path().join("train"), 4, 32);
    let (code, _, err) = run(
        &[
            &["finetune", "--data", "train", "--task", "multiclass", "--val", "none", "--stages", "head:1", "--name", "m"][..],
            &s.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    std::fs::create_dir_all(d.path().join("other/zebra")).unwrap();
    std::fs::create_dir_all(d.path().join("other/a")).unwrap();
    gray_png(&d.path().join("other/zebra/1.png"), 32, 32, |_, _| 3);
    gray_png(&d.path().join("other/zebra/2.png"), 32, 32, |_, _| 9);
    // Said before any image is decoded: a broken one of a known class does not speak first.
    std::fs::write(d.path().join("other/a/broken.png"), b"not a picture").unwrap();
    let (code, _, err) = run(&["evaluate", "--model", "runs/m", "--data", "other"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "zebra/1.png: class `zebra` (2 image(s) of the data, this the first) is not one the model was trained on (a, b): `--label-map zebra=CLASS` reads that label as one of them, or leave those images out"
        ),
        "{err}"
    );
    // Read as the run's `b`, the data scores (the broken image skipped); metrics.json says how the labels were read.
    let (code, out, err) = run(&["evaluate", "--model", "runs/m", "--data", "other", "--label-map", "zebra=b", "--skip-bad", "--out", "ev"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let ev = json(&d.path().join("ev/metrics.json"));
    assert_eq!((ev["metrics"]["n"].as_u64(), &ev["label_map"]), (Some(2), &serde_json::json!(["zebra=b"])), "{ev}");
    let support: Vec<u64> = ev["metrics"]["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).collect();
    assert_eq!(support, [0, 2], "both images scored as class b: {ev}");
}

/// A run trained with a label map in JAFFE's codes (`HA=smile`) is scored
/// on JAFFE-named data as it was trained: the reader names the expressions
/// (`happy`), and `evaluate` reads the map's codes for them, as training did.
#[test]
fn evaluate_reads_a_runs_label_map_as_training_read_it() {
    let d = tmp();
    let s = small_trunk(d.path(), 4);
    std::fs::create_dir_all(d.path().join("jaffe")).unwrap();
    let mut serial = 0;
    for person in ["KA", "KL"] {
        for (k, code) in ["HA", "NE", "SU"].iter().enumerate() {
            for i in 1..=2 {
                serial += 1;
                gray_png(&d.path().join(format!("jaffe/{person}.{code}{i}.{serial}.png")), 32, 32, |x, y| {
                    if x * 3 / 32 == k as u32 {
                        200
                    } else {
                        30 + ((x + y + serial) % 9) as u8
                    }
                });
            }
        }
    }
    let train = [
        &["finetune", "--data", "jaffe", "--label-map", "HA=smile,SU=smile,NE=calm", "--val", "none", "--stages", "head:1", "--name", "m"][..],
        &args(&s, &[])[..],
    ]
    .concat();
    let (code, out, err) = run(&train, d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(json(&d.path().join("runs/m/config.json"))["classes"], serde_json::json!(["calm", "smile"]));
    let (code, out, err) = run(&["evaluate", "--model", "runs/m", "--data", "jaffe", "--out", "ev"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let ev = json(&d.path().join("ev/metrics.json"));
    let support: Vec<u64> = ev["metrics"]["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).collect();
    assert_eq!(support, [4, 8], "calm: the 4 NE photos, smile: the 8 HA and SU: {ev}");
    // Another spelling of an expression the run knows: the error suggests the map that reads it.
    std::fs::write(d.path().join("other.csv"), "path,label\njaffe/KA.HA1.1.png,happiness\njaffe/KA.NE1.3.png,neutral\n").unwrap();
    let (code, _, err) = run(&["evaluate", "--model", "runs/m", "--data", "other.csv", "--out", "ev2"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("class `happiness` (1 image(s) of the data, this the first) is not one the model was trained on (calm, smile): `--label-map happiness=happy` reads that label as the run's `happy`"), "{err}");
    let (code, out, err) = run(&["evaluate", "--model", "runs/m", "--data", "other.csv", "--out", "ev2", "--label-map", "happiness=happy"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    // A folder per person of CK+ frames (no expression in their names): people, not classes to map.
    for who in ["S005", "S010"] {
        std::fs::create_dir_all(d.path().join("people").join(who)).unwrap();
        gray_png(&d.path().join(format!("people/{who}/{who}_001_00000001.png")), 32, 32, |x, _| x as u8);
    }
    let (code, _, err) = run(&["evaluate", "--model", "runs/m", "--data", "people", "--out", "ev3"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.trim().ends_with(
            "people: its class folders hold one person each, as the file names tell (`S005` holds S005's photos): they are people, not the classes the model was trained on (calm, smile); give the photos in class folders or in a manifest.csv with a label column"
        ) && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn leave_one_subject_out_has_one_person_per_fold() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 3);
    let loso =
        [&["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--repeats", "1", "--stages", "head:1", "--out", "loso"][..], &args(&s, &[])[..]].concat();
    let (code, out, err) = run(&loso, d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("leave-one-subject-out"), "{out}");
    for fold in 0..4 {
        let r = json(&d.path().join(format!("loso/folds/seed0-fold{fold}.json")));
        let subjects: BTreeSet<String> = r["subjects"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(subjects.len(), 1, "fold {fold}: {subjects:?}");
        assert_eq!(r["n_train"], 6);
    }
    assert!(!d.path().join("loso/folds/seed0-fold4.json").exists());
    let summary = json(&d.path().join("loso/cv.json"));
    assert!(summary.get("seeds").is_none() && summary.get("seed_spread").is_none(), "one seed: no spread to report");
    assert!(!out.contains("## Per seed") && !out.contains("the seeds share"), "{out}");
    // Resumed with folds trained side by side (a head-only recipe): the same numbers.
    assert!(err.contains("fold(s) at a time"), "{err}");
    std::fs::remove_file(d.path().join("loso/folds/seed0-fold1.json")).unwrap();
    std::fs::remove_file(d.path().join("loso/folds/seed0-fold2.json")).unwrap();
    let (code, _, err) = run(&loso, d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("; 2 to run"), "{err}");
    assert_eq!(json(&d.path().join("loso/cv.json"))["stats"], summary["stats"]);
    // One person only: said as that, not as missing subject ids.
    let one: String = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", l.replace(",P01", ",P00").replace(",P02", ",P00").replace(",P03", ",P00")))
        .collect();
    std::fs::write(d.path().join("one.csv"), one).unwrap();
    let mut one_person = loso.clone();
    one_person[2] = "one.csv";
    one_person[10] = "one-out";
    let (code, _, err) = run(&one_person, d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--folds loso needs at least two subjects, and every image is of `P00`"), "{err}");
    // Two people, one photo each: each leave-one-out fold would train on one photo (was "invalid option:
    // --data holds fewer than 2 training images", from inside the first fold).
    let text = std::fs::read_to_string(&m).unwrap();
    let header = text.lines().next().unwrap();
    let pick = |person: &str, label: &str| text.lines().find(|l| l.ends_with(&format!(",{person}")) && l.contains(&format!(",{label},"))).unwrap().to_string();
    std::fs::write(d.path().join("two.csv"), format!("{header}\n{}\n{}\n", pick("P00", "neutral"), pick("P01", "smiling"))).unwrap();
    let mut two = loso.clone();
    two[2] = "two.csv";
    two[10] = "two-out";
    let (code, _, err) = run(&two, d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("seed 0 fold 0 (P00) leaves 1 training image(s), and a fold trains on at least 2: use fewer folds, or more photos"), "{err}");
    assert!(!d.path().join("two-out").exists(), "refused before its folder is made");
}

/// A person photographed with one class only leaves their leave-one-out fold
/// without a ROC AUC (undefined: written as `null`): the fold results are
/// read back, and the summary's AUC is over the folds that have one.
#[test]
fn a_person_with_one_class_only_gets_a_fold_without_roc_auc_and_a_fold_without_the_class_is_warned_of() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    // Two more people, neutral only.
    let mut csv = std::fs::read_to_string(&m).unwrap();
    for s in 4..6 {
        std::fs::copy(d.path().join(format!("s0{}_neutral.png", s - 4)), d.path().join(format!("s0{s}_neutral.png"))).unwrap();
        csv.push_str(&format!("s0{s}_neutral.png,neutral,P0{s}\n"));
    }
    std::fs::write(&m, csv).unwrap();
    let s = small_trunk(d.path(), 3);
    let cmd = [&["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--threshold", "inner", "--out", "one"][..], &args(&s, &[])[..]]
        .concat();
    let (code, out, err) = run(&cmd, d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    // The inner threshold is chosen on the training people shown with both classes: the neutral-only
    // ones are counted out (both of them, or the one left in training).
    let one_sided: Vec<u64> =
        (0..6).map(|f| json(&d.path().join(format!("one/folds/seed0-fold{f}.json")))["threshold"]["inner"]["one_sided"].as_u64().unwrap_or(0)).collect();
    assert_eq!(one_sided, [2, 2, 2, 2, 1, 1]);
    let md = std::fs::read_to_string(d.path().join("one/cv.md")).unwrap();
    assert!(md.contains("people shown with one class only left out of the choice in 6 fold(s)"), "{md}");
    // Every person has a neutral photo: no fold's training images lack a class.
    assert!(!err.contains("hold no image of a class"), "{err}");
    let undefined = (0..6).filter(|f| json(&d.path().join(format!("one/folds/seed0-fold{f}.json")))["metrics"]["roc_auc"].is_null()).count();
    assert_eq!(undefined, 2, "the two one-class people's folds have no ROC AUC");
    // cv.md names each fold's test person.
    let md = std::fs::read_to_string(d.path().join("one/cv.md")).unwrap();
    assert!(md.contains("| seed | fold | test people | n |") && md.contains("| 0 | 4 | P04 | 1 |"), "{md}");
    let summary = json(&d.path().join("one/cv.json"));
    let n = |metric: &str| summary["stats"].as_array().unwrap().iter().find(|s| s["metric"] == metric).unwrap()["n"].as_u64().unwrap();
    assert_eq!((n("balanced_accuracy"), n("roc_auc")), (6, 4), "{summary}");
    assert!(summary["pooled"]["roc_auc"].as_f64().is_some_and(f64::is_finite), "pooled over folds both classes are there");
    // Resumed: the folds without a ROC AUC count as done.
    let (code, _, err) = run(&cmd, d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("6 fold result(s) of this same cv are there already") && err.contains("; 0 to run"), "{err}");
    // Only one person photographed smiling: their fold trains on no expressive image, said before the training.
    let mut csv = String::from("path,label,subject\n");
    for s in 0..4 {
        csv.push_str(&format!("s0{s}_neutral.png,neutral,P0{s}\n"));
    }
    csv.push_str("s00_smiling.png,smiling,P00\n");
    std::fs::write(&m, csv).unwrap();
    let cmd = [&["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--out", "lone"][..], &args(&s, &[])[..]].concat();
    let (code, _, err) = run(&cmd, d.path());
    assert_eq!(code, 0, "{err}");
    let warning = err.lines().position(|l| l.starts_with("warning: in 1 fold(s) the training images hold no image of a class"));
    assert!(warning.is_some() && err.contains("(seed 0 fold 0 (P00): no expressive)"), "{err}");
    assert!(warning < err.lines().position(|l| l.starts_with("seed 0 fold ")), "before the folds train: {err}");
}

#[test]
fn cv_top_losses_and_per_subject_plot_merge_across_separately_run_folds() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 4);
    let s = small(&w);
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--top-losses", "3", "--out", "top"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v.extend(s.iter().cloned());
        v
    };
    // --fold needs the shared --out folder (a usage error otherwise).
    let (code, _, err) = run(&["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--fold", "0"], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out"), "{err}");
    // Folds run one by one (as a cluster would), then merged.
    for fold in 0..4 {
        if fold == 2 {
            // Half the folds: --collect refuses, naming what is missing; --partial merges and says so.
            let (code, out, err) = run(&["cv", "--collect", "top"], d.path());
            assert_eq!(code, 1, "{out}{err}");
            assert!(err.contains("holds 2 of 4 fold results") && err.contains("seed 0 fold 2, seed 0 fold 3") && err.contains("--partial"), "{err}");
            let (code, out, err) = run(&["cv", "--collect", "top", "--partial"], d.path());
            assert_eq!(code, 0, "{err}");
            assert!(out.contains("PARTIAL") && !out.contains("NaN"), "{out}");
        }
        let f = fold.to_string();
        let a = base(&["--fold", &f]);
        let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert_eq!(code, 0, "{out}\n{err}");
        let r = json(&d.path().join(format!("top/folds/seed0-fold{fold}.json")));
        assert_eq!(r["top"].as_array().unwrap().len(), 2, "each LOSO fold tests 2 images, so both are candidates");
    }
    let (code, out, err) = run(&["cv", "--collect", "top"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    for f in ["top_losses.png", "top_losses.csv", "subjects.png"] {
        assert!(d.path().join("top").join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(d.path().join("top/top_losses.csv")).unwrap();
    let losses: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(4).unwrap().parse().unwrap()).collect();
    assert_eq!(losses.len(), 3, "{csv}");
    assert!(losses.windows(2).all(|w| w[0] >= w[1]), "worst first: {losses:?}");
    // The worst over all folds: no image left out of the ranking has a higher loss.
    let mut all = Vec::new();
    for fold in 0..4 {
        let r = json(&d.path().join(format!("top/folds/seed0-fold{fold}.json")));
        let y: Vec<usize> = r["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        for (p, &t) in r["probs"].as_array().unwrap().iter().zip(&y) {
            all.push(-p[t].as_f64().unwrap().max(1e-12).ln());
        }
    }
    all.sort_by(|a, b| b.total_cmp(a));
    for (got, want) in losses.iter().zip(&all) {
        assert!((got - want).abs() < 1e-3, "{losses:?} vs {all:?}");
    }
    // A fold file of another plan (here: a seed this cv did not run) is not merged.
    let mut stray = json(&d.path().join("top/folds/seed0-fold1.json"));
    stray["seed"] = 7.into();
    std::fs::write(d.path().join("top/folds/seed7-fold1.json"), stray.to_string()).unwrap();
    let (code, _, err) = run(&["cv", "--collect", "top"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("holds fold results that are not of this cv (seeds [0], 4 folds): seed 7 fold 1"), "{err}");
    // A copy of a fold's file is not merged as a fold more (it was: its fold counted twice).
    std::fs::remove_file(d.path().join("top/folds/seed7-fold1.json")).unwrap();
    std::fs::copy(d.path().join("top/folds/seed0-fold1.json"), d.path().join("top/folds/seed0-fold1 (copy).json")).unwrap();
    let (code, _, err) = run(&["cv", "--collect", "top"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds seed 0 fold 1, as") && err.contains("one of them is a copy; remove it"), "{err}");
}

#[test]
fn the_slurm_script_runs_one_task_per_fold_then_collects_the_same_summary() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 5);
    // A stand-in sbatch: runs each job here and now (array tasks in order), prints a job id.
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("sbatch");
    std::fs::write(
        &fake,
        r#"#!/usr/bin/env bash
array="" wrap="" dep=""
for a in "$@"; do case $a in --array=*) array=${a#--array=};; --wrap=*) wrap=${a#--wrap=};; --dependency=*) dep=${a#--dependency=};; esac; done
n=$(( $(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0) + 100 ))
echo "job $n array=$array dependency=$dep" >> "$SBATCH_LOG"
if [[ -n $array ]]; then
  for i in $(seq "${array%-*}" "${array#*-}"); do SLURM_ARRAY_TASK_ID=$i bash -c "$wrap" >> "$SBATCH_LOG.out" 2>&1 || exit 1; done
else
  bash -c "$wrap" >> "$SBATCH_LOG.out" 2>&1 || exit 1
fi
echo "$n"
"#,
    )
    .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cv-slurm.sh");
    let log = d.path().join("sbatch.log");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg("slurm").arg("4").args(["--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--seeds", "0,1"]).args(&s);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = cmd
        .current_dir(d.path())
        .env("PATH", path)
        .env("VGGFT", env!("CARGO_BIN_EXE_vggft"))
        .env("VGGFT_FEATURE_CACHE", "off")
        .env("SBATCH_LOG", &log)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}\n{}", std::fs::read_to_string(d.path().join("sbatch.log.out")).unwrap_or_default());
    assert!(stdout.contains("array job 100 (0-3)") && stdout.contains("collect as job 101"), "{stdout}");
    let jobs = std::fs::read_to_string(&log).unwrap();
    assert!(jobs.contains("job 100 array=0-3 dependency=") && jobs.contains("job 101 array= dependency=afterok:100"), "{jobs}");
    // The same numbers as one cv process.
    let direct = [
        &["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--seeds", "0,1", "--out", "direct"][..],
        &s.iter().map(String::as_str).collect::<Vec<_>>()[..],
    ]
    .concat();
    let (code, _, err) = run(&direct, d.path());
    assert_eq!(code, 0, "{err}");
    let (a, b) = (json(&d.path().join("slurm/cv.json")), json(&d.path().join("direct/cv.json")));
    assert_eq!(a["stats"], b["stats"]);
    assert_eq!(a["pooled"], b["pooled"]);
}

/// A fold result's `probs` (rows of class probabilities), flattened.
fn flat_probs(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
}

/// The largest absolute difference between two equally long lists.
fn largest_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// People × {neutral, expressive} × 2 photos, 32 px; `mirror_symmetric`
/// makes every image its own mirror image, else each carries a one-sided mark.
fn mirror_set(root: &Path, mirror_symmetric: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(root).unwrap();
    let mut csv = String::from("path,label,subject\n");
    for s in 0..6u32 {
        for (label, bar) in [("neutral", false), ("expressive", true)] {
            for i in 0..2u32 {
                let name = format!("p{s}_{label}_{i}.png");
                gray_png(&root.join(&name), 32, 32, |x, y| {
                    let x = if mirror_symmetric { x.min(31 - x) } else { x };
                    let mark = if x < 8 && y < 8 { 60 } else { 0 };
                    let mouth = if bar && (22..26).contains(&y) && (8..24).contains(&x) { 90 } else { 0 };
                    let noise = ((x * 7 + y * 13 + i * 31 + s * 5) % 11) as u8;
                    40 + (s * 12) as u8 + noise + mark + mouth
                });
                csv.push_str(&format!("{name},{label},P{s}\n"));
            }
        }
    }
    let p = root.join("manifest.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

#[test]
fn cv_flip_tta_averages_each_image_with_its_mirror_image() {
    let d = tmp();
    let s = small_trunk(d.path(), 5);
    // Probabilities of every test image, per fold file, of one cv.
    let probs = |dir: &Path| -> Vec<f64> {
        let mut files: Vec<_> =
            std::fs::read_dir(dir.join("folds")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        files.sort();
        files.iter().flat_map(|f| flat_probs(&json(f)["probs"])).collect()
    };
    let mut gap = Vec::new();
    for (name, symmetric) in [("sym", true), ("asym", false)] {
        let m = mirror_set(&d.path().join(name), symmetric);
        let cv = |out: &str, extra: &[&str]| -> Vec<f64> {
            let dir = d.path().join(out);
            let mut a = vec![
                "cv",
                "--data",
                m.to_str().unwrap(),
                "--folds",
                "3",
                "--seeds",
                "0",
                "--stages",
                "head:3",
                "--augment",
                "none",
                "--out",
                dir.to_str().unwrap(),
            ];
            a.extend_from_slice(extra);
            let (code, out, err) = run(&args(&s, &a), d.path());
            assert_eq!(code, 0, "{out}\n{err}");
            probs(&dir)
        };
        let plain = cv(&format!("{name}-plain"), &["--tta", "none"]);
        let tta = cv(&format!("{name}-tta"), &["--tta", "flip"]);
        assert_eq!(plain.len(), tta.len());
        gap.push(largest_gap(&plain, &tta));
        if name == "asym" {
            let md = std::fs::read_to_string(d.path().join("asym-tta/cv.md")).unwrap();
            assert!(md.contains("flip test-time augmentation"), "{md}");
            // Without a cache the mirror images come from the images themselves: the same numbers.
            let uncached = cv("asym-tta-nocache", &["--tta", "flip", "--no-cache"]);
            let diff = largest_gap(&tta, &uncached);
            assert!(diff < 1e-4, "cached vs uncached flip TTA differ by {diff}");
        }
    }
    eprintln!("largest probability change from flip TTA: mirror-symmetric {:.2e}, one-sided {:.2e}", gap[0], gap[1]);
    // An image that is its own mirror image gets the same probabilities; a one-sided one does not.
    assert!(gap[0] < 1e-5, "mirror-symmetric images moved by {}", gap[0]);
    assert!(gap[1] > 1e-3, "one-sided images unchanged by flip TTA ({})", gap[1]);
}

#[test]
fn the_probe_baseline_is_the_probe_recipe_on_the_same_folds() {
    let d = tmp();
    let s = small_trunk(d.path(), 6);
    let m = mirror_set(&d.path().join("data"), false);
    let said = std::cell::RefCell::new(String::new());
    let cv = |out: &str, extra: &[&str]| -> serde_json::Value {
        let dir = d.path().join(out);
        let mut a = vec!["cv", "--data", m.to_str().unwrap(), "--folds", "3", "--seeds", "0", "--out", dir.to_str().unwrap()];
        a.extend_from_slice(extra);
        let (code, out, err) = run(&args(&s, &a), d.path());
        assert_eq!(code, 0, "{out}\n{err}");
        *said.borrow_mut() = err;
        json(&dir.join("folds/seed0-fold1.json"))
    };
    let repeats = "note: the recipe trains the head alone, as the probe does: --baseline probe repeats its scores";
    // A fine-tune with a 3-epoch probe beside it (at the probe's rate; 5 heads
    // averaged, as with several photos of every person), and that probe as the recipe itself.
    let tuned = cv("tuned", &["--stages", "head:2,conv5:1", "--baseline", "probe", "--probe-epochs", "3"]);
    assert!(!said.borrow().contains(repeats), "{}", said.borrow());
    let probe = cv("probe", &["--stages", "head:3", "--lr", "0.01", "--members", "5"]);
    // The default with person statistics is the probe: --baseline probe beside it reuses its scores, and stderr says so.
    let default = cv("default", &["--baseline", "probe"]);
    assert!(said.borrow().contains(repeats), "{}", said.borrow());
    assert_eq!(default["baseline"]["probs"], default["probs"]);
    let (a, b) = (flat_probs(&tuned["baseline"]["probs"]), flat_probs(&probe["probs"]));
    assert_eq!(a.len(), b.len());
    let diff = largest_gap(&a, &b);
    assert!(diff < 1e-3, "the baseline probe and the probe recipe differ by {diff}");
    // Both train on the clean views (several photos of everyone, head only), the fine-tune itself does not.
    let clean = |out: &str| json(&d.path().join(out).join("cv-config.json"))["run"]["train"]["clean_views"].clone();
    assert_eq!((clean("probe"), clean("tuned")), (serde_json::json!(true), serde_json::json!(false)));
    assert!(flat_probs(&tuned["probs"]).iter().zip(&a).any(|(x, y)| (x - y).abs() > 1e-3), "the fine-tune's own scores are not the probe's");
    let md = |out: &str| std::fs::read_to_string(d.path().join(out).join("cv.md")).unwrap();
    assert!(md("tuned").contains("Probe baseline (head only, 3 epochs at learning rate 0.01, 5 heads averaged into one,"), "{}", md("tuned"));
    assert!(md("probe").contains(&vggft::eval::cv::members_sentence(5)), "{}", md("probe"));
    // One head: other scores, and cv.md says nothing of members.
    let one = cv("one", &["--stages", "head:3", "--lr", "0.01", "--members", "1"]);
    assert!(flat_probs(&one["probs"]).iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3), "five heads score as one");
    assert_eq!(json(&d.path().join("one/cv-config.json"))["run"]["train"]["members"], 1);
    assert!(!md("one").contains("heads trained side by side"), "{}", md("one"));
}

/// A leave-one-subject-out probe cv (`head:3`) of `m` in `dir`, with the
/// small-network options `s` and `extra`, into `out`.
fn probe_cv(dir: &Path, m: &Path, s: &[String], extra: &[&str], out: &str) -> (i32, String, String) {
    let mut v = vec!["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:3", "--out", out];
    v.extend(s.iter().map(String::as_str));
    v.extend(extra);
    run(&v, dir)
}

/// A fold result without its time.
fn without_time(p: std::path::PathBuf) -> serde_json::Value {
    let mut v = json(&p);
    v.as_object_mut().unwrap().remove("seconds");
    v
}

/// `--dump-features` / `--load-features` (study scripts): a probe run on the
/// loaded cache scores exactly as the run that computed it; a dump made for
/// other pooling is refused with one sentence naming the file.
#[test]
fn a_dumped_feature_cache_reproduces_the_probe_and_refuses_other_pooling() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 3);
    let cv = |extra: &[&str], out: &str| probe_cv(d.path(), &m, &s, extra, out);
    let (code, out, err) = cv(&["--dump-features", "f.safetensors"], "a");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(d.path().join("f.safetensors").exists() && d.path().join("f.json").exists());
    let (code, out, err) = cv(&["--load-features", "f.safetensors"], "b");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("pooled features from f.safetensors (not recomputed)"), "{err}");
    assert!(!err.contains("caching the frozen"), "{err}");
    for fold in 0..4 {
        let (a, b) = (json(&d.path().join(format!("a/folds/seed0-fold{fold}.json"))), json(&d.path().join(format!("b/folds/seed0-fold{fold}.json"))));
        assert_eq!(a["probs"], b["probs"], "fold {fold}");
    }
    // A head-only recipe's folds train side by side, --threads at a time, one core each: every fold result
    // (all but its time) is the one a single fold at a time on one core gives (`--threads 1`, or
    // `--parallel-folds false` on one thread).
    assert!(err.contains("training 2 fold(s) at a time, each on one core"), "{err}");
    assert_eq!(s[s.len() - 2..], ["--threads", "2"]);
    for (name, extra) in [("t1", &["--threads", "1"][..]), ("t3", &["--threads", "3"]), ("off", &["--threads", "1", "--parallel-folds", "false"])] {
        let mut v = vec!["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:3", "--out", name];
        v.extend(extra);
        v.extend(s[..s.len() - 2].iter().map(String::as_str));
        v.extend(["--load-features", "f.safetensors", "--seeds", "0,1"]);
        let (code, _, err) = run(&v, d.path());
        assert_eq!(code, 0, "{err}");
        assert_eq!(err.contains("training 3 fold(s) at a time"), name == "t3", "{err}");
        assert_eq!(err.contains("fold(s) at a time"), name == "t3", "no message for one at a time: {err}");
    }
    for (seed, fold) in (0..2).flat_map(|s| (0..4).map(move |f| (s, f))) {
        let name = format!("folds/seed{seed}-fold{fold}.json");
        let t1 = without_time(d.path().join("t1").join(&name));
        assert_eq!(t1, without_time(d.path().join("t3").join(&name)), "{name}");
        assert_eq!(t1, without_time(d.path().join("off").join(&name)), "{name}");
    }
    let (code, _, err) = cv(&["--load-features", "f.safetensors", "--head", "linear"], "c");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("f.safetensors: was dumped for other images, weights, preprocessing, views or pooling"), "{err}");
    let (code, _, err) = cv(&["--load-features", "gone.safetensors"], "g");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("gone.safetensors") && err.contains("No such file") && !err.contains("IoError") && err.lines().count() == 1, "{err}");
    assert!(!d.path().join("g").exists(), "refused before the cv folder is made");
    // A folder, and a dump cut short, in one sentence each (not the safetensors reader's debug form).
    std::fs::create_dir(d.path().join("dir.safetensors")).unwrap();
    let (code, _, err) = cv(&["--load-features", "dir.safetensors"], "h");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("dir.safetensors: is a folder: give the .safetensors file that `cv --dump-features` wrote") && err.lines().count() == 1, "{err}");
    let whole = std::fs::read(d.path().join("f.safetensors")).unwrap();
    std::fs::write(d.path().join("cut.safetensors"), &whole[..whole.len() / 2]).unwrap();
    std::fs::copy(d.path().join("f.json"), d.path().join("cut.json")).unwrap();
    let (code, _, err) = cv(&["--load-features", "cut.safetensors"], "i");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cut.safetensors: is truncated or corrupt (its header lists") && err.lines().count() == 1, "{err}");
    assert!(!d.path().join("h").exists() && !d.path().join("i").exists(), "refused before the cv folder is made");
}

/// The feature cache (`--feature-cache DIR`): a second cv on the same images
/// and settings reads the pooled features back and scores every fold exactly
/// as the first; other pooling or a changed image computes them again (a new
/// entry); `off`, or the variable set to `off`, keeps none.
#[test]
fn a_second_cv_reads_its_features_from_the_cache_until_the_images_change() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 3);
    let cache = d.path().join("fc");
    let cv = |extra: &[&str], out: &str| probe_cv(d.path(), &m, &s, extra, out);
    let with_cache = ["--feature-cache", cache.to_str().unwrap()];
    let entries = || std::fs::read_dir(&cache).map_or(0, |r| r.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "safetensors")).count());
    let (code, out, err) = cv(&with_cache, "a");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("caching the frozen") && err.contains("kept them in the feature cache for the next cv"), "{err}");
    assert_eq!(entries(), 1);
    let (code, out, err) = cv(&with_cache, "b");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("pooled features from the feature cache, not recomputed"), "{err}");
    assert!(!err.contains("caching the frozen"), "{err}");
    for fold in 0..4 {
        let name = format!("folds/seed0-fold{fold}.json");
        assert_eq!(without_time(d.path().join("a").join(&name)), without_time(d.path().join("b").join(&name)), "{name}");
    }
    // Other pooling: another entry.
    let (code, _, err) = cv(&[&with_cache[..], &["--head", "linear"]].concat(), "c");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("caching the frozen"), "{err}");
    assert_eq!(entries(), 2);
    // The same file names, one image's pixels changed: computed again.
    let img = d.path().join("s01_smiling.png");
    gray_png(&img, 32, 32, |x, y| ((x * 7 + y * 3) % 251) as u8);
    let (code, _, err) = cv(&with_cache, "e");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("caching the frozen") && !err.contains("from the feature cache"), "{err}");
    assert_eq!(entries(), 3);
    // Off: neither read nor written.
    let (code, _, err) = cv(&["--feature-cache", "off"], "f");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("caching the frozen") && !err.contains("feature cache"), "{err}");
    let out = bin()
        .args(["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:3", "--out", "g"])
        .args(&s)
        .current_dir(d.path())
        .env("VGGFT_FEATURE_CACHE", &cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("pooled features from the feature cache"), "the variable names the folder: {err}");
    assert_eq!(entries(), 3);
    // A damaged entry is computed again and replaced; a folder that cannot be made costs only the reuse.
    let newest = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    std::fs::write(&newest, b"not safetensors").unwrap();
    let (code, _, err) = cv(&with_cache, "h");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("feature cache: ") && err.contains(".safetensors: is not a safetensors file (bad header); computing the features again"), "{err}");
    assert!(err.contains("kept them in the feature cache"), "{err}");
    let (code, _, err) = cv(&with_cache, "i");
    assert!(code == 0 && err.contains("pooled features from the feature cache"), "{err}");
    // A bit flipped in the features themselves leaves a valid file: its SHA-256 says so, and the folds are as the last cv's.
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&newest, &bytes).unwrap();
    let (code, _, err) = cv(&with_cache, "k");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(".safetensors: is damaged: its SHA-256 is not the one written beside it when it was kept; computing the features again"), "{err}");
    let name = "folds/seed0-fold0.json";
    assert_eq!(without_time(d.path().join("i").join(name)), without_time(d.path().join("k").join(name)), "{name}");
    // Its .json gone (or unreadable to this user) is said as such, not as one written for other settings.
    std::fs::remove_file(newest.with_extension("json")).unwrap();
    let (code, _, err) = cv(&with_cache, "l");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(".json: cannot read: No such file or directory (os error 2); computing the features again") && !err.contains("differs"), "{err}");
    let blocked = d.path().join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let (code, _, err) = cv(&["--feature-cache", blocked.join("fc").to_str().unwrap()], "j");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("feature cache: ") && err.contains("going on without it"), "{err}");
}

/// `finetune --feature-cache`: a head-only finetune whose inner fits share
/// one cache keeps it; the next finetune on the same images, split and
/// settings reads it back and trains exactly the same model, while another
/// split (seed) computes its own; `--rerun` takes the flag too.
#[test]
fn a_second_finetune_reads_its_features_from_the_cache_and_trains_the_same_model() {
    let d = tmp();
    let m = identity_dominated(d.path(), 4, 3, 32);
    let s = small_trunk(d.path(), 3);
    let cache = d.path().join("fc");
    let entries = || std::fs::read_dir(&cache).map_or(0, |r| r.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "safetensors")).count());
    let fc = cache.to_str().unwrap();
    let finetune = |name: &str, fc: &str, extra: &[&str]| {
        let mut v = vec!["finetune", "--data", m.to_str().unwrap(), "--stages", "head:3", "--subject-norm", "on", "--name", name];
        if !extra.contains(&"--threshold") {
            v.extend(["--threshold", "inner"]);
        }
        v.extend(s.iter().map(String::as_str));
        v.extend(["--feature-cache", fc]);
        v.extend(extra);
        run(&v, d.path())
    };
    let (code, out, err) = finetune("a", fc, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("caching the frozen") && err.contains("kept them in the feature cache for the next finetune"), "{err}");
    assert_eq!(entries(), 1);
    let (code, out, err) = finetune("b", fc, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("pooled features from the feature cache, not recomputed"), "{err}");
    assert!(!err.contains("caching the frozen"), "{err}");
    let run_dir = |n: &str| d.path().join("runs").join(n);
    let same_model =
        |a: &str, b: &str| std::fs::read(run_dir(a).join("model.safetensors")).unwrap() == std::fs::read(run_dir(b).join("model.safetensors")).unwrap();
    // (It failed in about one run of 12 beside a busy suite until MKL's vector math was set up before any parallel
    // work, `model::settle_vector_math`: the person head's tensors differed by ~1e-9. Should it fail again: which tensors.)
    let differing = |a: &str, b: &str| {
        let read = |n: &str| tch::Tensor::read_safetensors(run_dir(n).join("model.safetensors")).unwrap();
        let other: std::collections::BTreeMap<String, tch::Tensor> = read(b).into_iter().collect();
        read(a)
            .into_iter()
            .filter(|(n, t)| other.get(n).is_none_or(|o| o.size() != t.size() || max_abs_diff(t, o) > 0.0))
            .map(|(n, t)| format!("{n} {:?}", other.get(&n).map(|o| max_abs_diff(&t, o))))
            .collect::<Vec<_>>()
    };
    assert!(same_model("a", "b"), "the same model; differing: {:?}", differing("a", "b"));
    let metrics = |n: &str| {
        let mut v = json(&run_dir(n).join("metrics.json"));
        v.as_object_mut().unwrap().retain(|k, _| k.starts_with("val"));
        v
    };
    assert_eq!(metrics("a"), metrics("b"));
    // Another seed splits and draws otherwise: its own entry. A rerun of it reads that.
    let (code, _, err) = finetune("c", fc, &["--seed", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("caching the frozen"), "{err}");
    assert_eq!(entries(), 2);
    let (code, _, err) = run(&["finetune", "--rerun", run_dir("c").to_str().unwrap(), "--name", "c2", "--feature-cache", fc], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("pooled features from the feature cache"), "{err}");
    assert!(same_model("c", "c2"), "the rerun's model");
    // Off: neither read nor written.
    let (code, _, err) = finetune("e", "off", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("caching the frozen") && !err.contains("feature cache"), "{err}");
    assert_eq!(entries(), 2);
    // A head-only recipe without inner fits (the London pairs' default) keeps and reads its features too.
    // (A folder of its own: the features are those of run `a`, whose entry it would read.)
    let plain = ["--threshold", "off", "--calibrate", "off"];
    let fc2 = d.path().join("fc2");
    let (code, _, err) = finetune("f", fc2.to_str().unwrap(), &plain);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("inner fits") && err.contains("kept them in the feature cache for the next finetune"), "{err}");
    for cache in [fc, fc2.to_str().unwrap()] {
        let (code, _, err) = finetune("g", cache, &plain);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("pooled features from the feature cache, not recomputed") && !err.contains("caching the frozen"), "{err}");
        assert!(same_model("f", "g"), "the same model from the cache");
        std::fs::remove_dir_all(run_dir("g")).unwrap();
    }
    let (code, _, err) = finetune("h", "off", &plain);
    assert_eq!(code, 0, "{err}");
    assert!(same_model("f", "h"), "the same model as without the cache");
}

#[test]
fn a_pipe_in_a_class_name_or_subject_id_stays_in_its_markdown_cell() {
    let d = tmp();
    let m = identity_dominated_labels(d.path(), 4, 2, 32, &["neutral", "ha|ppy"]);
    // Subject ids with a pipe too: P00 → P|00.
    let text = std::fs::read_to_string(&m).unwrap().replace(",P", ",P|");
    std::fs::write(&m, text).unwrap();
    let s = small_trunk(d.path(), 41);
    let v = ["cv", "--data", m.to_str().unwrap(), "--task", "multiclass", "--stages", "head:1", "--folds", "2", "--seeds", "0", "--out", "cv"];
    let (code, out, err) = run(&args(&s, &v), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let md = std::fs::read_to_string(d.path().join("cv/cv.md")).unwrap();
    assert!(md.contains(r"| true \ predicted | ha\|ppy | neutral |") && md.contains(r"| ha\|ppy | "), "{md}");
    assert!(md.contains(r"P\|0"), "the test people of each fold: {md}");
    // In every table, each row has as many cells as its header.
    let cells = |l: &str| l.replace(r"\|", "").matches('|').count();
    for table in md.split("\n\n").filter(|b| b.starts_with('|')) {
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows.iter().all(|r| cells(r) == cells(rows[0])), "{table}");
    }
}

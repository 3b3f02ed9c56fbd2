//! The accuracy recipe's parts. Fine-label training: the head learns every
//! raw label, and everything a user sees (metrics, predict, evaluate, cv) is
//! in the task's classes, each task probability the sum of its raw labels'
//! probabilities. Multi-layer features: several blocks' pooled outputs feed
//! the head, and the frozen-prefix cache stops below the lowest of them.

use std::path::Path;

use tch::{Kind, Tensor};
use vggft::data::scan::{scan, DataFormat};
use vggft::data::split::{assign_labels, Task, TrainLabels};

use crate::common::*;

/// Class folders `happy`, `neutral`, `sad`: three raw labels, two binary classes.
fn three_labels(root: &Path, per_class: usize, size: u32) {
    for (k, class) in ["happy", "neutral", "sad"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            gray_png(&root.join(class).join(format!("{i:02}.png")), size, size, |x, y| {
                // A bright vertical band whose position is the label.
                let band = x * 3 / size == k as u32;
                let noise = ((x * 7 + y * 13 + i as u32 * 31) % 17) as u8;
                if band {
                    200 + noise
                } else {
                    30 + noise
                }
            });
        }
    }
}

#[test]
fn raw_labels_and_their_task_classes() {
    let d = tmp();
    three_labels(d.path(), 2, 16);
    let ds = scan(d.path(), DataFormat::Auto).unwrap();
    let l = assign_labels(&ds, Task::Binary, &[]).unwrap();
    assert_eq!(l.classes, ["neutral", "expressive"]);
    assert_eq!(l.raw_classes, ["happy", "neutral", "sad"]);
    assert_eq!(l.raw_to_task, [1, 0, 1]);
    for (r, t) in l.raw_targets.iter().zip(&l.targets) {
        assert_eq!(l.raw_to_task[*r as usize] as i64, *t);
    }
    assert!(l.train_on_raw(TrainLabels::Auto) && l.train_on_raw(TrainLabels::Raw) && !l.train_on_raw(TrainLabels::Task));
    // Multiclass: raw labels are the classes, so auto trains on the task.
    let m = assign_labels(&ds, Task::Multiclass, &[]).unwrap();
    assert!(!m.train_on_raw(TrainLabels::Auto));
}

#[test]
fn task_probabilities_are_sums_of_raw_probabilities() {
    let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.0, 3.0, -2.0]).view([2, 3]);
    let raw = logits.softmax(1, Kind::Double);
    let task = vggft::eval::task_probs(&logits, &[1, 0, 1], 2);
    assert_eq!(task.size(), [2, 2]);
    for i in 0..2 {
        let r = |j: i64| raw.double_value(&[i, j]);
        assert!((task.double_value(&[i, 0]) - r(1)).abs() < 1e-12);
        assert!((task.double_value(&[i, 1]) - (r(0) + r(2))).abs() < 1e-12);
    }
    // Without a map: the plain softmax.
    assert_eq!(max_abs_diff(&vggft::eval::task_probs(&logits, &[], 3), &raw), 0.0);
}

#[test]
fn finetune_on_raw_labels_reports_task_classes_everywhere() {
    let d = tmp();
    let data = d.path().join("data");
    three_labels(&data, 6, 32);
    let s = small_trunk(d.path(), 21);
    let data_s = data.to_str().unwrap();
    let (code, out, err) = run(&args(&s, &["finetune", "--data", data_s, "--stages", "head:3", "--name", "raw", "--seed", "1"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("raw labels"), "the summary names the raw-label head: {err}");
    let run_dir = d.path().join("runs/raw");
    let cfg = json(&run_dir.join("config.json"));
    assert_eq!(cfg["classes"], serde_json::json!(["neutral", "expressive"]));
    assert_eq!(cfg["raw_classes"], serde_json::json!(["happy", "neutral", "sad"]));
    assert_eq!(cfg["raw_to_task"], serde_json::json!([1, 0, 1]));
    // The head has one output per raw label.
    let (code, out, _) = run(&["weights", "inspect", "--json", run_dir.join("model.safetensors").to_str().unwrap()], d.path());
    assert_eq!(code, 0);
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bias = inspected["tensors"].as_array().unwrap().iter().find(|t| t[0] == "head.fc.bias").cloned();
    assert_eq!(bias.map(|t| t[1].clone()), Some(serde_json::json!([3])), "{out}");
    let metrics = json(&run_dir.join("metrics.json"));
    assert_eq!(metrics["validation"]["confusion"].as_array().unwrap().len(), 2, "validation metrics in task classes: {metrics}");

    // predict: task probabilities are the sums of the raw ones.
    let img = data.join("sad/00.png");
    let (code, out, err) = run(&["predict", img.to_str().unwrap(), "--format", "json", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (p, r) = (&v[0]["probabilities"], &v[0]["raw_probabilities"]);
    let f = |x: &serde_json::Value| x.as_f64().unwrap();
    assert!((f(&p["neutral"]) - f(&r["neutral"])).abs() < 1e-9, "{v}");
    assert!((f(&p["expressive"]) - f(&r["happy"]) - f(&r["sad"])).abs() < 1e-9, "{v}");
    assert!((f(&p["neutral"]) + f(&p["expressive"]) - 1.0).abs() < 1e-9);

    // evaluate scores in task classes; its worst photos also say which expression each was.
    let (code, out, err) =
        run(&["evaluate", "--data", data_s, "--out", d.path().join("ev").to_str().unwrap(), "--device", "cpu", "--top-losses", "6"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("neutral") && out.contains("expressive") && !out.contains("happy"), "{out}");
    let ev = json(&d.path().join("ev/metrics.json"));
    assert_eq!(ev["metrics"]["confusion"].as_array().unwrap().len(), 2);
    let top = std::fs::read_to_string(d.path().join("ev/top_losses.csv")).unwrap();
    assert!(top.lines().next().unwrap().ends_with(",p_neutral,p_expressive,label"), "{top}");
    for row in top.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let folder = std::path::Path::new(f[1]).parent().unwrap().file_name().unwrap().to_str().unwrap();
        // The class folders are the labels: `neutral` is its class's name (no label), happy and sad are expressive.
        let want = if folder == "neutral" { "" } else { folder };
        assert_eq!((f[2], f[f.len() - 1]), (if folder == "neutral" { "neutral" } else { "expressive" }, want), "{row}");
    }

    // explain: a raw label is explained alone (tests/it/explain.rs), named with its share of its class.
    let (code, out, err) =
        run(&["explain", img.to_str().unwrap(), "--class", "sad", "--out", d.path().join("ex").to_str().unwrap(), "--device", "cpu"], d.path());
    assert!(code == 0 && out.contains("\tsad 0."), "{out}{err}");
    assert_eq!(std::fs::read_to_string(d.path().join("ex/explain.csv")).unwrap().lines().nth(1).unwrap().split(',').nth(1), Some("sad"));

    // --train-labels task: a two-output head, no raw probabilities.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data_s, "--stages", "head:1", "--name", "task", "--train-labels", "task"]), d.path());
    assert_eq!(code, 0, "{err}");
    let cfg = json(&d.path().join("runs/task/config.json"));
    assert!(cfg.get("raw_classes").is_none(), "{cfg}");
    let (_, out, _) = run(&["predict", img.to_str().unwrap(), "--format", "json", "--device", "cpu"], d.path());
    assert!(!out.contains("raw_probabilities"), "{out}");
}

/// JAFFE-named photos of `people` persons, `per_code` each of NE, HA and SU:
/// three raw labels, two binary classes, a subject id per photo.
fn jaffe_three_labels(root: &Path, people: usize, per_code: usize, size: u32) {
    std::fs::create_dir_all(root).unwrap();
    let mut serial = 0;
    for p in 0..people {
        for (k, code) in ["HA", "NE", "SU"].iter().enumerate() {
            for i in 0..per_code {
                serial += 1;
                gray_png(&root.join(format!("P{p}.{code}{}.{serial}.png", i + 1)), size, size, |x, y| {
                    let noise = ((x * 7 + y * 13 + serial as u32 * 31) % 17) as u8;
                    (if x * 3 / size == k as u32 { 180 } else { 30 }) + 10 * p as u8 + noise
                });
            }
        }
    }
}

#[test]
fn the_single_image_head_learns_the_task_classes_where_the_main_head_learns_raw_labels() {
    let d = tmp();
    let data = d.path().join("jaffe");
    jaffe_three_labels(&data, 4, 2, 32);
    let s = small_trunk(d.path(), 25);
    let data_s = data.to_str().unwrap();
    let shapes = |name: &str| {
        let (code, out, _) = run(&["weights", "inspect", "--json", d.path().join("runs").join(name).join("model.safetensors").to_str().unwrap()], d.path());
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let shape = |t: &str| v["tensors"].as_array().unwrap().iter().find(|r| r[0] == t).map(|r| r[1].clone());
        (shape("head.fc.bias"), shape("head_global.fc.bias"))
    };
    let train = |name: &str, extra: &[&str]| {
        let mut a = vec!["finetune", "--data", data_s, "--stages", "head:3", "--val", "none", "--threshold", "off", "--name", name];
        a.extend_from_slice(extra);
        let (code, out, err) = run(&args(&s, &a), d.path());
        assert_eq!(code, 0, "{out}\n{err}");
        (json(&d.path().join("runs").join(name).join("config.json")), err)
    };
    // Default: 6 photos a person (per-subject normalisation on), 3 raw labels for 2 classes.
    let (cfg, err) = train("task", &[]);
    assert!(err.contains("the single-image head learns the classes themselves"), "{err}");
    assert_eq!((cfg["model"]["subject_norm"].as_str(), cfg["model"]["single_labels"].as_str()), (Some("on"), Some("task")), "{cfg}");
    assert_eq!(shapes("task"), (Some(serde_json::json!([3])), Some(serde_json::json!([2]))), "main head: raw labels; single-image head: the task's classes");
    // One photo alone is the single-image head's: task probabilities, no raw ones; with the
    // person's other photos, the main head's: raw probabilities summing to the task's.
    let one = data.join("P0.SU1.5.png");
    let predict = |files: &[&Path]| {
        let mut a = vec!["predict", "--device", "cpu", "--format", "json"];
        a.extend(files.iter().map(|p| p.to_str().unwrap()));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let v = predict(&[&one]);
    let f = |x: &serde_json::Value| x.as_f64().unwrap();
    assert_eq!(v[0]["mode"], "single-image", "{v}");
    assert!(v[0].get("raw_probabilities").is_none(), "{v}");
    assert!((f(&v[0]["probabilities"]["neutral"]) + f(&v[0]["probabilities"]["expressive"]) - 1.0).abs() < 1e-9, "{v}");
    let person: Vec<std::path::PathBuf> = ["P0.HA1.1.png", "P0.NE1.3.png", "P0.SU1.5.png"].iter().map(|n| data.join(n)).collect();
    let v = predict(&person.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let (p, r) = (&v[2]["probabilities"], &v[2]["raw_probabilities"]);
    assert_eq!(v[2]["mode"], "person", "{v}");
    assert!((f(&p["expressive"]) - f(&r["happy"]) - f(&r["surprise"])).abs() < 1e-9, "{v}");

    // --single-labels raw: the single-image head learns the raw labels, as before the flag.
    let (cfg, err) = train("raw", &["--single-labels", "raw"]);
    assert_eq!(cfg["model"]["single_labels"], "raw");
    assert!(!err.contains("single-image head learns"), "{err}");
    assert_eq!(shapes("raw"), (Some(serde_json::json!([3])), Some(serde_json::json!([3]))));
    assert!(predict(&[&one])[0]["raw_probabilities"].is_object());
    // A run folder from before the flag (no single_labels in its config.json) loads with a raw-label single-image head.
    let path = d.path().join("runs/raw/config.json");
    let mut old = json(&path);
    old["model"].as_object_mut().unwrap().remove("single_labels");
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let (code, _, err) = run(&["predict", "--device", "cpu", "--model", d.path().join("runs/raw").to_str().unwrap(), one.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
}

#[test]
fn multi_layer_features_train_from_the_conv4_cache_and_predict() {
    let d = tmp();
    let data = d.path().join("data");
    three_labels(&data, 5, 32);
    let s = small_trunk(d.path(), 22);
    let (code, out, err) =
        run(&args(&s, &["finetune", "--data", data.to_str().unwrap(), "--features", "conv4,conv5", "--stages", "head:2,conv5:1", "--name", "ml"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    // The conv5 stage starts from conv4's output; the head-only stage trains
    // from the pooled conv4 and conv5 features, derived from that cache.
    assert!(err.contains("cached the frozen conv4 output"), "{err}");
    assert!(err.contains("stage 1 (head+): extended the cache to the pooled features"), "{err}");
    let cfg = json(&d.path().join("runs/ml/config.json"));
    assert_eq!(cfg["model"]["features"], serde_json::json!(["conv4", "conv5"]));
    let history = std::fs::read_to_string(d.path().join("runs/ml/history.csv")).unwrap();
    assert_eq!(history.lines().count(), 4, "{history}");
    let (code, out, err) = run(&["predict", data.join("happy/00.png").to_str().unwrap(), "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("neutral=") && out.contains("expressive="), "{out}");
    // The vgg head cannot take several blocks: a usage error naming the flag.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data.to_str().unwrap(), "--features", "conv4,conv5", "--head", "vgg"]), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--features"), "{err}");
}

/// Balanced accuracy of a leave-one-subject-out cv through the binary: (person-normalised, single-image head).
fn loso(d: &Path, manifest: &Path, s: &[String], extra: &[&str], name: &str) -> (f64, Option<f64>) {
    let out_dir = d.join(name);
    let mut a = vec!["cv", "--data", manifest.to_str().unwrap(), "--folds", "loso", "--seeds", "0", "--out", out_dir.to_str().unwrap()];
    a.extend_from_slice(extra);
    let (code, out, err) = run(&args(s, &a), d);
    assert_eq!(code, 0, "{out}\n{err}");
    let cv = json(&out_dir.join("cv.json"));
    let bacc = |v: &serde_json::Value| v["stats"][0]["mean"].as_f64().unwrap();
    (bacc(&cv), cv.get("single").map(bacc))
}

#[test]
fn per_subject_normalisation_lifts_accuracy_when_identity_dominates() {
    let d = tmp();
    let m = identity_dominated(d.path(), 8, 3, 32);
    let s = small_trunk(d.path(), 23);
    let probe = ["--stages", "head:8", "--augment", "none", "--lr", "0.01"];
    let (global, none) = loso(d.path(), &m, &s, &[&probe[..], &["--subject-norm", "off"]].concat(), "off");
    let (person, single) =
        loso(d.path(), &m, &s, &[&probe[..], &["--subject-norm", "on", "--members", "5", "--baseline", "probe", "--probe-epochs", "8"]].concat(), "on");
    eprintln!("LOSO balanced accuracy: global {global:.3}, per-subject {person:.3}, single-image head {single:?}");
    assert!(none.is_none() && single.is_some());
    assert!(person > global + 0.2, "per-subject {person} vs global {global}");
    // The probe baseline is reported on the same folds; here the recipe is that probe, whose scores it reuses.
    let cv = json(&d.path().join("on/cv.json"));
    let probe_bacc = cv["baseline"]["stats"][0]["mean"].as_f64().unwrap();
    assert!((probe_bacc - person).abs() < 1e-9, "probe {probe_bacc} vs recipe {person}");
    let md = std::fs::read_to_string(d.path().join("on/cv.md")).unwrap();
    assert!(
        md.contains("## Probe baseline (head only, 8 epochs")
            && md.contains("heads averaged into one, deciding at its own threshold, same folds")
            && md.contains("## Single-image head")
            && md.contains("each test person's unlabelled images")
            && md.contains("## Each test person shown with one class only"),
        "{md}"
    );
    // The same models with each test person's statistics taken from one class of
    // that person's photos at a time: the person's average is then that class's
    // face, and person statistics fall below the single-image head (measured
    // 0.479 against 0.938 balanced and 0.500 single-image, each at its fold's inner threshold).
    let one_class = cv["one_class"]["stats"][0]["mean"].as_f64().unwrap();
    let single = single.unwrap();
    eprintln!("one class per person: {one_class:.3}");
    assert!(one_class < person - 0.2 && one_class < single, "one class per person {one_class} vs balanced {person}, single-image {single}");
}

#[test]
fn subject_normalised_runs_report_both_heads_and_predict_groups_by_person() {
    let d = tmp();
    let m = identity_dominated(d.path(), 6, 2, 32);
    let s = small_trunk(d.path(), 24);
    let (code, out, err) = run(
        &args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:3", "--augment", "none", "--name", "sn", "--val", "subjects:0.34"]),
        d.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // auto: every person has 4 images, so per-subject normalisation is on, and said.
    assert!(out.contains("each test person's unlabelled images set that person's normalisation") && out.contains("single-image head"), "{out}");
    let run_dir = d.path().join("runs/sn");
    assert_eq!(json(&run_dir.join("config.json"))["model"]["subject_norm"], "on");
    let metrics = json(&run_dir.join("metrics.json"));
    assert!(metrics["validation"]["balanced_accuracy"].is_f64() && metrics["validation_single_image"]["balanced_accuracy"].is_f64(), "{metrics}");
    assert!(metrics["tta"].as_str().is_some_and(|t| t.starts_with("flip")), "{metrics}");

    // evaluate says how many images had their person's statistics: all of them with the manifest's
    // subject ids (4 photos each), none in class folders without ids.
    let (code, out, err) = run(&["evaluate", "--device", "cpu", "--data", m.to_str().unwrap(), "--out", "ev-people"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("24 scored with their person's statistics, 0 by the single-image head\n") && err.contains("each test person's unlabelled images"),
        "{out}\n{err}"
    );
    assert_eq!(json(&d.path().join("ev-people/metrics.json"))["modes"], serde_json::json!({"person": 24, "single-image": 0}));
    assert!(!err.contains("differ only in case") && !err.contains("one class only"), "{err}");
    // Each person's photos of one class (the id split by label): person statistics would remove it, said.
    let split = d.path().join("split-people.csv");
    let rows: Vec<String> = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 0 { l.to_string() } else { format!("{l}-{}", l.split(',').nth(1).unwrap()) })
        .collect();
    std::fs::write(&split, rows.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&["evaluate", "--device", "cpu", "--data", split.to_str().unwrap(), "--out", "ev-split"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: 12 of the 12 people scored with their own statistics show one class only here (P00-expressive, P00-neutral, P01-expressive, and 9 more)"
        ),
        "{err}"
    );
    // Trained on such people, `auto` leaves person statistics off (they would remove each person's class); `on` warns.
    for (choice, said) in [
        ("auto", "per-subject normalisation is off (--subject-norm auto): every person here shows one class only (P00-expressive: expressive, P00-neutral: neutral, P01-expressive: expressive, and 9 more)"),
        ("on", "warning: every person here shows one class only (P00-expressive: expressive"),
    ] {
        let name = format!("split-{choice}");
        let (code, out, err) =
            run(&args(&s, &["finetune", "--data", split.to_str().unwrap(), "--stages", "head:1", "--subject-norm", choice, "--name", &name]), d.path());
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(said) || err.contains(said), "{choice}: {out}\n{err}");
        let expected = if choice == "on" { "on" } else { "off" };
        assert_eq!(json(&d.path().join("runs").join(&name).join("config.json"))["model"]["subject_norm"], expected);
    }
    // One person's id spelt two ways splits that person's statistics in two: said.
    let cased = d.path().join("cased.csv");
    std::fs::write(&cased, std::fs::read_to_string(&m).unwrap().replace("p01_expressive_1.png,expressive,P01", "p01_expressive_1.png,expressive,p01")).unwrap();
    let (code, _, err) = run(&["evaluate", "--device", "cpu", "--data", cased.to_str().unwrap(), "--out", "ev-cased"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: subject ids `P01` and `p01` differ only in case"), "{err}");
    for (i, label) in ["neutral", "expressive"].iter().enumerate() {
        let dir = d.path().join("folders").join(label);
        std::fs::create_dir_all(&dir).unwrap();
        for p in 0..2 {
            std::fs::copy(d.path().join(format!("p{p:02}_{label}_0.png")), dir.join(format!("{i}{p}.png"))).unwrap();
        }
    }
    let (code, out, err) = run(&["evaluate", "--device", "cpu", "--data", d.path().join("folders").to_str().unwrap(), "--out", "ev-folders"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("0 scored with their person's statistics, 4 by the single-image head (no subject id") && !err.contains("unlabelled images"),
        "{out}\n{err}"
    );
    // KDEF's layout: the names give people and expressions, and the profiles left out are said.
    for (p, who) in ["AF01", "AM02"].iter().enumerate() {
        let dir = d.path().join("kdef").join(who);
        std::fs::create_dir_all(&dir).unwrap();
        for (label, code) in [("neutral", "NE"), ("expressive", "HA")] {
            for angle in ["S", "HL"] {
                std::fs::copy(d.path().join(format!("p{p:02}_{label}_{}.png", (angle == "HL") as usize)), dir.join(format!("{who}{code}{angle}.JPG"))).unwrap();
            }
        }
    }
    let (code, out, err) = run(&["evaluate", "--device", "cpu", "--data", d.path().join("kdef").to_str().unwrap(), "--out", "ev-kdef"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("KDEF: read the 4 straight-ahead photos (…S.JPG); 4 at other angles"), "{err}");
    assert!(out.contains("4 scored with their person's statistics, 0 by the single-image head"), "{out}\n{err}");
    // predict given the whole folder answers the profiles too, and says which photos a run reads and how to score them.
    let kdef = d.path().join("kdef");
    let (code, out, err) = run(&["predict", "--device", "cpu", "-r", kdef.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 8, "{out}");
    let said = format!(
        "note: {} is KDEF as distributed: predict answers all 8 pictures given here, where a run trained on it reads its 4 straight-ahead photos (…S.JPG); `vggft evaluate --data {}` scores those",
        kdef.display(),
        kdef.display()
    );
    assert!(err.contains(&said), "{err}");
    // One person's folder is no KDEF: nothing said.
    let (code, _, err) = run(&["predict", "--device", "cpu", "-r", kdef.join("AF01").to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("as distributed"), "{err}");

    let img = |s: usize, label: &str, i: usize| d.path().join(format!("p{s:02}_{label}_{i}.png"));
    let lines = |out: &str| out.lines().map(|l| l.to_string()).collect::<Vec<_>>();
    // --subject: three images of one person → person statistics; one alone → the single-image head.
    let three = [img(0, "neutral", 0), img(0, "expressive", 0), img(0, "expressive", 1)];
    let mut a: Vec<&str> = vec!["predict", "--device", "cpu", "--subject", "P00"];
    a.extend(three.iter().map(|p| p.to_str().unwrap()));
    let (code, out, err) = run(&a, d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines(&out).len(), 3);
    assert!(lines(&out).iter().all(|l| l.ends_with("mode=person")), "{out}");
    // A subject-normalised model predicts with flip TTA unless told otherwise, and says so.
    assert!(err.contains("flip test-time augmentation"), "{err}");
    let flipped = out.clone();
    a.extend(["--tta", "flip"]);
    let (_, out, _) = run(&a, d.path());
    assert_eq!(out, flipped, "auto is flip for this model");
    a.truncate(a.len() - 2);
    a.extend(["--tta", "none"]);
    let (_, out, err) = run(&a, d.path());
    assert!(out != flipped && !err.contains("test-time augmentation"), "{out}\n{err}");
    assert!(!err.contains("no file name here names its person"), "{err}");
    let (_, out, _) = run(&["predict", "--device", "cpu", "--subject", "P00", three[0].to_str().unwrap()], d.path());
    assert!(out.trim_end().ends_with("mode=single-image"), "{out}");
    // The same photos without --subject: names that give no person, each alone, and how to give one said.
    let (code, out, err) = run(&["predict", "--device", "cpu", three[0].to_str().unwrap(), three[1].to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(lines(&out).iter().all(|l| l.ends_with("mode=single-image")), "{out}");
    assert!(err.contains("note: no file name here names its person as JAFFE's do") && err.contains("--subject ID (all one person)"), "{err}");
    // A photo given twice is one photo: not a person whose photos cannot be told apart.
    let twice = |extra: &[&Path]| {
        let mut a: Vec<&str> = vec!["predict", "--device", "cpu", "--subject", "P00"];
        a.extend(extra.iter().map(|p| p.to_str().unwrap()));
        run(&a, d.path())
    };
    let (code, out, err) = twice(&[&three[0], &three[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(lines(&out).len() == 2 && lines(&out).iter().all(|l| l.ends_with("mode=single-image")), "{out}");
    assert!(err.contains("1 input(s) repeat an earlier one of the same person"), "{err}");
    assert_eq!(lines(&out)[0], lines(&out)[1]);
    // Repeats (the same path, and a byte-identical copy under another name) change nothing
    // for the person's other photos, and each gets its first's answer under its own name.
    let copy = d.path().join("copy-of-third.png");
    std::fs::copy(&three[2], &copy).unwrap();
    let (code, out, err) = twice(&[&three[0], &three[1], &three[1], &three[2], &copy]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 input(s) repeat an earlier one"), "{err}");
    let got = lines(&out);
    assert_eq!(vec![got[0].clone(), got[1].clone(), got[3].clone()], lines(&flipped));
    assert_eq!(got[2], got[1]);
    assert_eq!(got[4], got[3].replace(three[2].to_str().unwrap(), copy.to_str().unwrap()));

    // --subject-from parent: a folder per person; the one with a single image gets the single-image head.
    for (person, n) in [("anna", 4), ("ben", 1)] {
        let dir = d.path().join("people").join(person);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            std::fs::copy(img(if person == "anna" { 1 } else { 2 }, ["neutral", "expressive"][i % 2], i / 2), dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let people = d.path().join("people");
    let (code, out, err) = run(
        &[
            "predict",
            "--device",
            "cpu",
            "--subject-from",
            "parent",
            "--format",
            "json",
            people.join("anna").to_str().unwrap(),
            people.join("ben").to_str().unwrap(),
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let modes: Vec<(&str, &str)> = v.as_array().unwrap().iter().map(|p| (p["path"].as_str().unwrap(), p["mode"].as_str().unwrap())).collect();
    assert_eq!(modes.len(), 5);
    // Class folders taken for people: each "person" one expression, which their statistics would remove.
    let by_class = d.path().join("by-class");
    for (class, i) in [("neutral", 0), ("Happy", 1)] {
        std::fs::create_dir_all(by_class.join(class)).unwrap();
        std::fs::copy(&three[i], by_class.join(class).join("0.png")).unwrap();
        std::fs::copy(&three[i + 1], by_class.join(class).join("1.png")).unwrap();
    }
    let (code, _, err) = run(
        &["predict", "--device", "cpu", "--subject-from", "parent", by_class.join("neutral").to_str().unwrap(), by_class.join("Happy").to_str().unwrap()],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: --subject-from parent takes each photo's folder for its person, and folders are named as expressions (Happy, neutral)"),
        "{err}"
    );
    for (path, mode) in &modes {
        assert_eq!(*mode, if path.contains("anna") { "person" } else { "single-image" }, "{path}");
    }
    // A person's answers are their own: the same without ben beside them (each
    // person's statistics are shrunk towards the model's training people's spread).
    let probs = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["path"].as_str().unwrap().contains("anna"))
            .map(|p| (p["path"].to_string(), p["probabilities"].to_string()))
            .collect()
    };
    let (code, alone, err) =
        run(&["predict", "--device", "cpu", "--subject-from", "parent", "--format", "json", people.join("anna").to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(probs(&serde_json::from_str(&alone).unwrap()), probs(&v));
    // Two people's folders of one name (`anna/2020/`, `ben/2020/`) are two people, not one "2020".
    for (person, n) in [("anna", 4), ("ben", 1)] {
        let dir = d.path().join("sessions").join(person).join("2020");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            std::fs::copy(people.join(person).join(format!("{i}.png")), dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let (code, out, err) = run(&["predict", "--device", "cpu", "--subject-from", "parent", "--format", "json", "-r", "sessions"], d.path());
    assert_eq!(code, 0, "{err}");
    let sessions: serde_json::Value = serde_json::from_str(&out).unwrap();
    let modes: Vec<(&str, &str)> = sessions.as_array().unwrap().iter().map(|p| (p["path"].as_str().unwrap(), p["mode"].as_str().unwrap())).collect();
    assert_eq!(modes.len(), 5, "{out}");
    for (path, mode) in &modes {
        assert_eq!(*mode, if path.contains("anna") { "person" } else { "single-image" }, "{path}");
    }
    let answers = |v: &serde_json::Value| -> Vec<String> { v.as_array().unwrap().iter().map(|p| p["probabilities"].to_string()).collect() };
    assert_eq!(answers(&sessions), answers(&v), "{out}");
    // One flat folder of two people by their JAFFE names: --subject-from parent would make them one.
    let flat = d.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for (i, name) in ["KA.HA1.1.png", "KA.NE1.2.png", "KM.HA1.3.png", "KM.NE1.4.png"].iter().enumerate() {
        std::fs::copy(people.join("anna").join(format!("{i}.png")), flat.join(name)).unwrap();
    }
    let (code, _, err) = run(&["predict", "--device", "cpu", "--subject-from", "parent", "flat"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --subject-from parent makes one person of photos whose file names give them to 2 people (flat: KA, KM)"), "{err}");
    let (code, _, err) = run(&["predict", "--device", "cpu", "flat"], d.path());
    assert!(code == 0 && !err.contains("makes one person"), "{err}");
    // Files named from inside the person's folder (`0.png`, `./1.png`) belong to that folder's person.
    let model = d.path().join("runs/sn");
    let (code, out, err) =
        run(&["predict", "--device", "cpu", "--model", model.to_str().unwrap(), "--subject-from", "parent", "0.png", "./1.png", "2.png"], &people.join("anna"));
    assert_eq!(code, 0, "{err}");
    assert!(lines(&out).len() == 3 && lines(&out).iter().all(|l| l.ends_with("mode=person")), "{out}");
    // A manifest given as the input: its subject column groups the photos (no
    // label needed), the same answers as the folder per person.
    std::fs::write(people.join("m.csv"), "path,subject\nanna/0.png,A\nanna/1.png,A\nanna/2.png,A\nanna/3.png,A\nben/0.png,B\n").unwrap();
    let (code, out, err) = run(&["predict", "--device", "cpu", "--format", "json", people.join("m.csv").to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(probs(&listed), probs(&v), "{out}");
    let modes: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["person", "person", "person", "person", "single-image"]);
    assert!(!err.contains("labels its images"), "{err}");
    // A labelled manifest: predicted the same, and evaluate named.
    std::fs::write(people.join("l.csv"), "path,label,subject\nanna/0.png,neutral,A\nben/0.png,smiling,B\n").unwrap();
    let (code, _, err) = run(&["predict", "--device", "cpu", people.join("l.csv").to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("l.csv labels its images: `vggft evaluate --data ") && err.contains("l.csv` scores the model on them"), "{err}");
    // A folder holding manifest.csv is read through it, as a dataset folder is.
    std::fs::copy(people.join("m.csv"), people.join("manifest.csv")).unwrap();
    let (code, out, err) = run(&["predict", "--device", "cpu", "--format", "json", people.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: read the images ") && err.contains("manifest.csv lists"), "{err}");
    let through: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(probs(&through), probs(&v), "{out}");
    std::fs::remove_file(people.join("manifest.csv")).unwrap();
    // --subject-from none still answers each alone; a manifest naming a missing file is an error.
    let (code, out, _) = run(&["predict", "--device", "cpu", "--subject-from", "none", people.join("m.csv").to_str().unwrap()], d.path());
    assert!(code == 0 && lines(&out).iter().all(|l| l.ends_with("mode=single-image")), "{out}");
    std::fs::write(people.join("bad.csv"), "path\ngone.png\n").unwrap();
    let (code, _, err) = run(&["predict", "--device", "cpu", people.join("bad.csv").to_str().unwrap()], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("bad.csv: line 2: ") && err.contains("gone.png: No such file"), "{err}");

    // JAFFE names (the default): the subject is the name's first part.
    let jaffe = d.path().join("jaffe");
    std::fs::create_dir_all(&jaffe).unwrap();
    for (i, (code, label)) in [("NE", "neutral"), ("HA", "expressive"), ("SU", "expressive")].iter().enumerate() {
        std::fs::copy(img(3, label, i / 2), jaffe.join(format!("KA.{code}1.{i}.png"))).unwrap();
    }
    std::fs::copy(img(4, "neutral", 0), jaffe.join("KL.NE1.9.png")).unwrap();
    let (code, out, err) = run(&["predict", "--device", "cpu", jaffe.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    for l in lines(&out) {
        assert!(l.ends_with(if l.contains("KA.") { "mode=person" } else { "mode=single-image" }), "{l}");
    }
}

/// Share of `lines` (predict's text output) whose class matches the file name's label.
fn right(out: &str) -> (usize, usize) {
    let lines: Vec<&str> = out.lines().collect();
    let ok = lines.iter().filter(|l| l.split('\t').nth(1).is_some_and(|class| l.contains(&format!("_{class}_")))).count();
    (ok, lines.len())
}

#[test]
fn a_person_shown_with_one_expression_only() {
    // Trained on 8 people; then two new people predicted as a person (statistics from
    // their own inputs) and as single images, with a balanced and a one-sided set of photos.
    let d = tmp();
    let train = d.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    let m = identity_dominated(&train, 8, 3, 32);
    let new = d.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    identity_dominated(&new, 10, 3, 32);
    let s = small_trunk(d.path(), 23);
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:8", "--augment", "none", "--lr", "0.01", "--val", "none"]), d.path());
    assert_eq!(code, 0, "{err}");
    let predict = |files: &[String], how: &[&str]| {
        let mut a: Vec<&str> = vec!["predict", "--device", "cpu"];
        a.extend_from_slice(how);
        a.extend(files.iter().map(String::as_str));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        out
    };
    let photos = |p: usize, labels: &[&str]| -> Vec<String> {
        let mut v = Vec::new();
        for l in labels {
            for i in 0..3 {
                v.push(new.join(format!("p{p:02}_{l}_{i}.png")).display().to_string());
            }
        }
        v
    };
    let mut report = Vec::new();
    for (what, labels) in [("balanced", &["neutral", "expressive"][..]), ("neutral only", &["neutral"][..]), ("expressive only", &["expressive"][..])] {
        let (mut person, mut single) = ((0, 0), (0, 0));
        for p in [8, 9] {
            let files = photos(p, labels);
            let id = format!("P{p}");
            let out = predict(&files, &["--subject", &id]);
            assert!(out.lines().all(|l| l.ends_with("mode=person")), "{out}");
            let r = right(&out);
            person = (person.0 + r.0, person.1 + r.1);
            let out = predict(&files, &["--subject-from", "none"]);
            assert!(out.lines().all(|l| l.ends_with("mode=single-image")), "{out}");
            let r = right(&out);
            single = (single.0 + r.0, single.1 + r.1);
        }
        report.push(format!("{what}: person statistics {}/{}, single-image head {}/{}", person.0, person.1, single.0, single.1));
        if what == "balanced" {
            // Measured 12/12 (single-image head 9/12).
            assert!(person.0 >= 10, "{report:?}");
        }
    }
    eprintln!("two new people: {}", report.join("; "));
}

/// With per-subject normalisation on and no --stages / --freeze-until, the
/// head is trained alone, and without --features / --pool-grid it takes conv4
/// and conv5, each also averaged over a 3x3 grid, and trains on the clean
/// views too (the measured default); --freeze-until, --features, --pool-grid
/// and --clean-views still choose.
#[test]
fn default_stages_are_a_probe_when_person_statistics_are_on() {
    let d = tmp();
    let m = identity_dominated(d.path(), 4, 2, 32);
    let s = small_trunk(d.path(), 25);
    let config = |name: &str| json(&d.path().join("runs").join(name).join("config.json"));
    let stages = |name: &str| config(name)["train"]["stages"].clone();
    let features = |name: &str| config(name)["model"]["features"].clone();
    let grid = |name: &str| config(name)["model"]["pool_grid"].clone();
    let base = ["finetune", "--data", m.to_str().unwrap(), "--augment", "none", "--epochs", "2", "--freeze-epochs", "1"];
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "auto"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(stages("auto"), serde_json::json!([{"from": "head", "epochs": 3}]), "{err}");
    assert_eq!(features("auto"), serde_json::json!(["conv4", "conv5"]), "{err}");
    assert_eq!(grid("auto"), "3x3", "{err}");
    assert!(
        err.contains("training the head alone (head:3 at --lr 0.01 with --weight-decay 0.01, 5 heads averaged into one, every epoch trained and the last kept (--keep best: the epoch of lowest validation loss); --freeze-until conv5 fine-tunes)")
            && err.contains("on the pooled conv4 and conv5 outputs")
            && err.contains("each block also averaged over a 3x3 grid of the face (--pool-grid 1x1: global pooling only)")
            && err.contains("unaugmented view and mirror image beside its augmented views (--clean-views false"),
        "{out}\n{err}"
    );
    let clean = |name: &str| config(name)["train"]["clean_views"].clone();
    assert_eq!(clean("auto"), true);
    assert_eq!(config("auto")["train"]["lr"], 0.01, "the probe's rate");
    assert_eq!(config("auto")["train"]["members"], 5, "the long probe averages 5 heads");
    assert_eq!(config("auto")["train"]["weight_decay"], 0.01, "the long probe's weight decay");
    let saved = tch::Tensor::read_safetensors(d.path().join("runs/auto/model.safetensors")).unwrap();
    assert!(saved.iter().all(|(n, _)| !n.starts_with("head_member")), "the members were folded into one head");
    // No epochs given: the long probe's 50 (several photos of every person); --lr given: that rate.
    let bare =
        ["finetune", "--data", m.to_str().unwrap(), "--augment", "none", "--name", "bare", "--lr", "0.002", "--members", "2", "--weight-decay", "0.0005"];
    let (code, out, err) = run(&args(&s, &bare), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(stages("bare"), serde_json::json!([{"from": "head", "epochs": 50}]), "{err}");
    assert_eq!(config("bare")["train"]["lr"], 0.002);
    assert_eq!(config("bare")["train"]["members"], 2);
    assert_eq!(config("bare")["train"]["weight_decay"], 0.0005, "--weight-decay given: that one");
    assert!(!err.contains("with --weight-decay"), "{err}");
    // The long probe trains every epoch and keeps the last (what cv measures); a fine-tune keeps the best.
    assert_eq!((config("bare")["train"]["patience"].clone(), config("bare")["train"]["keep"].clone()), (serde_json::json!(0), serde_json::json!("last")));
    let metrics = json(&d.path().join("runs/bare/metrics.json"));
    assert_eq!((metrics["epochs_run"].clone(), metrics["kept_epoch"].clone()), (serde_json::json!(50), serde_json::json!(50)), "{metrics}");
    assert!(err.contains("every epoch trained and the last kept (--keep best: the epoch of lowest validation loss)"), "{err}");
    // A head with a hidden layer cannot average several heads into one: the default is one head there
    // (it was refused, naming --members, which the user had not given); --members asked for is refused.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "hidden", "--hidden", "16"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(config("hidden")["train"]["members"], 1, "{err}");
    assert!(err.contains("training the head alone (head:3 at --lr 0.01 with --weight-decay 0.01, every epoch"), "{err}");
    let (code, _, err) = run(&args(&s, &[&base[..], &["--name", "hidden2", "--hidden", "16", "--members", "3"]].concat()), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--members above 1 needs the linear head or the bn head without a hidden layer"), "{err}");
    assert!(!err.contains("cached the frozen"), "refused before the photos' pass: {err}");
    // --patience alone there asks for early stopping, which keeps the best epoch.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "patient", "--patience", "2"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!((config("patient")["train"]["patience"].clone(), config("patient")["train"]["keep"].clone()), (serde_json::json!(2), serde_json::json!("best")));
    assert!(!err.contains("the last kept"), "{err}");
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "dirty", "--clean-views", "false"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(clean("dirty"), false, "--clean-views false is kept");
    assert!(!err.contains("unaugmented view"), "{err}");
    // The clean views are cache rows: off without the cache, and refused when asked for there.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "uncached", "--no-cache"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(clean("uncached"), false, "no cache, no clean views");
    let (code, _, err) = run(&args(&s, &[&base[..], &["--name", "uncached2", "--no-cache", "--clean-views"]].concat()), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--clean-views trains on cached views") && err.contains("--no-cache"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    // A fine-tune trains the trunk under the heads: --members is refused, in one sentence.
    let (code, _, err) = run(&args(&s, &[&base[..], &["--name", "ftm", "--subject-norm", "off", "--members", "3"]].concat()), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("members") && err.contains("head-only stages, got head:1 → conv5:2"), "{err}");
    let (code, out, err) =
        run(&args(&s, &[&base[..], &["--name", "ft", "--freeze-until", "conv5", "--features", "conv5", "--pool-grid", "1x1"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(stages("ft"), serde_json::json!([{"from": "head", "epochs": 1}, {"from": "conv5", "epochs": 2}]));
    assert_eq!(features("ft"), serde_json::json!(["conv5"]));
    assert_eq!(grid("ft"), "1x1");
    assert_eq!(clean("ft"), false, "measured with the probe only");
    assert_eq!((config("ft")["train"]["patience"].clone(), config("ft")["train"]["keep"].clone()), (serde_json::json!(5), serde_json::json!("best")));
    assert!(!err.contains("per-subject normalisation is on:"), "nothing left to choose: {err}");
    // Pairs (2 photos per person) forced on: the probe, on conv5 (conv4 + conv5 measured worse there).
    let pairs_dir = d.path().join("pairs");
    std::fs::create_dir_all(&pairs_dir).unwrap();
    let pairs = identity_dominated(&pairs_dir, 4, 1, 32);
    let (code, out, err) = run(
        &args(
            &s,
            &[
                "finetune",
                "--data",
                pairs.to_str().unwrap(),
                "--augment",
                "none",
                "--epochs",
                "2",
                "--freeze-epochs",
                "1",
                "--subject-norm",
                "on",
                "--name",
                "pairs",
            ],
        ),
        d.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(stages("pairs"), serde_json::json!([{"from": "head", "epochs": 3}]));
    assert_eq!(features("pairs"), serde_json::json!(["conv5"]), "{err}");
    assert_eq!(grid("pairs"), "1x1", "the grid was measured with several photos per person");
    assert_eq!(clean("pairs"), false);
    assert_eq!(config("pairs")["train"]["lr"], 0.003, "pairs keep the recipe's rate (the long probe measured worse there)");
    assert_eq!(config("pairs")["train"]["members"], 1, "and one head (the members were measured on several photos per person)");
    assert_eq!(config("pairs")["train"]["weight_decay"], 1e-4, "and the recipe's weight decay");
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "off", "--subject-norm", "off"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(features("off"), serde_json::json!(["conv5"]));
    assert_eq!(grid("off"), "1x1");
    assert_eq!(clean("off"), false);
    // Such a model answers every photo alone: a person given to predict is said to change nothing.
    let photo = d.path().join("p00_neutral_0.png");
    let off = d.path().join("runs/off");
    for given in [&["--subject", "P00"][..], &["--subject-from", "parent"]] {
        let (code, out, err) = run(&[&["predict", "--device", "cpu", "--model", off.to_str().unwrap(), photo.to_str().unwrap()][..], given].concat(), d.path());
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("note: {} changes nothing here: this model was trained without per-subject normalisation", given[0])), "{err}");
        assert!(!out.contains("mode="), "{out}");
        // explain, which takes the same options, says the same.
        let (code, out, err) =
            run(&[&["explain", "--device", "cpu", "--model", off.to_str().unwrap(), "--out", "ex-off", photo.to_str().unwrap()][..], given].concat(), d.path());
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("note: {} changes nothing here", given[0])) && !out.contains("mode="), "{err}{out}");
    }
    let (_, _, err) = run(&["predict", "--device", "cpu", "--model", off.to_str().unwrap(), photo.to_str().unwrap()], d.path());
    assert!(!err.contains("changes nothing"), "{err}");
    // A grid on a fine-tune without person statistics, where it is asked for; refused where it cannot apply.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "ob", "--subject-norm", "off", "--pool-grid", "3x1"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(grid("ob"), "3x1");
    for (bad, code_wanted, says) in
        [(&["--pool-grid", "0x2"][..], 2, "expected ROWSxCOLS"), (&["--pool-grid", "2x2", "--head", "vgg"][..], 1, "applies to pooled features")]
    {
        let (code, _, err) = run(&args(&s, &[&base[..], &["--name", "bad"], bad].concat()), d.path());
        assert_eq!(code, code_wanted, "{bad:?}: {err}");
        assert!(err.contains("--pool-grid") && err.contains(says) && !err.contains("panicked"), "{bad:?}: {err}");
    }
    assert_eq!(stages("off"), serde_json::json!([{"from": "head", "epochs": 1}, {"from": "conv5", "epochs": 2}]));
    assert_eq!(config("off")["train"]["lr"], 0.003, "a fine-tune keeps the fine-tune's head rate");
    assert_eq!(config("ft")["train"]["weight_decay"], 1e-4, "and its weight decay");
}

/// `--subject-norm auto` needs 2 photos of every person: one person with 2
/// photos among people with 4 keeps person statistics on (it used to turn
/// them off for everyone), and so do pairs (off until 2026-12-04), with the
/// pairs' recipe (conv5, one grid cell); a person with a single photo turns
/// them off, and the run says why, naming the people with one photo.
#[test]
fn pairs_keep_person_statistics_on_and_a_person_with_one_photo_turns_them_off() {
    let d = tmp();
    let m = identity_dominated(d.path(), 5, 2, 32);
    // P04 keeps one photo of each class.
    let csv = std::fs::read_to_string(&m).unwrap();
    let kept: Vec<&str> = csv.lines().filter(|l| !(l.contains(",P04") && l.contains("_1.png"))).collect();
    assert_eq!(kept.len(), 1 + 4 * 4 + 2);
    std::fs::write(&m, kept.join("\n") + "\n").unwrap();
    let s = small_trunk(d.path(), 8);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "mixed"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&d.path().join("runs/mixed/config.json"))["model"]["subject_norm"], "on", "{err}");
    assert!(!err.contains("per-subject normalisation is off"), "{err}");
    std::fs::create_dir(d.path().join("pairs")).unwrap();
    let pairs = subject_dataset(&d.path().join("pairs"), 4, 32);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", pairs.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "pairs"]), d.path());
    assert_eq!(code, 0, "{err}");
    let c = json(&d.path().join("runs/pairs/config.json"));
    assert_eq!(c["model"]["subject_norm"], "on", "{err}");
    assert!(!err.contains("per-subject normalisation is off"), "{err}");
    assert_eq!(c["model"]["features"], serde_json::json!(["conv5"]), "the multi-layer features need several photos per person");
    assert_eq!(c["model"]["pool_grid"], "1x1");
    // Some people with 1 photo: named.
    let csv = std::fs::read_to_string(&pairs).unwrap();
    let kept: Vec<&str> = csv.lines().filter(|l| !l.starts_with("s00_smiling") && !l.starts_with("s02_smiling")).collect();
    std::fs::write(&pairs, kept.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", pairs.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "ones"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&d.path().join("runs/ones/config.json"))["model"]["subject_norm"], "off");
    assert!(
        err.contains("per-subject normalisation is off (--subject-norm auto: on where every person has at least 2 photos; here 2 of 4 people have fewer: P00: 1, P02: 1); --subject-norm on turns it on"),
        "{err}"
    );
    // A manifest's ids that the files' JAFFE names contradict: two people under one id, one person under two.
    let named = d.path().join("named");
    std::fs::create_dir(&named).unwrap();
    for (i, person) in ["AA", "BB", "CC", "DD"].iter().enumerate() {
        for (code, label) in [("NE", "neutral"), ("HA", "smiling")] {
            std::fs::copy(d.path().join("pairs").join(format!("s{:02}_{label}.png", i % 4)), named.join(format!("{person}.{code}1.{i}.png"))).unwrap();
        }
    }
    let manifest = |ids: [&str; 8]| {
        let mut csv = String::from("path,label,subject\n");
        for (k, id) in ids.iter().enumerate() {
            let (person, code, label) = (["AA", "BB", "CC", "DD"][k / 2], ["NE", "HA"][k % 2], ["neutral", "smiling"][k % 2]);
            csv.push_str(&format!("{person}.{code}1.{}.png,{label},{id}\n", k / 2));
        }
        std::fs::write(named.join("manifest.csv"), csv).unwrap();
    };
    manifest(["X", "X", "X", "X", "Y", "Y", "Y", "Y"]);
    let (code, _, err) = run(&args(&s, &["finetune", named.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "two-in-one"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: the subject column puts several people, by the file names, under one id (X: AA, BB)"), "{err}");
    manifest(["A1", "A2", "B", "B", "C", "C", "D", "D"]);
    let (code, _, err) = run(&args(&s, &["finetune", named.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "one-in-two"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: the subject column gives one person, by the file names, several ids (AA: A1, A2)"), "{err}");
    manifest(["A", "A", "B", "B", "C", "C", "D", "D"]);
    let (code, _, err) = run(&args(&s, &["finetune", named.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "agree"]), d.path());
    assert!(code == 0 && !err.contains("by the file names"), "{err}");
    // A subject column that names each photo (a file id) is no person's: warned.
    let csv = std::fs::read_to_string(&pairs).unwrap();
    let own: Vec<String> =
        csv.lines().enumerate().map(|(i, l)| if i == 0 { l.to_string() } else { format!("{},photo{i}", l.rsplit_once(',').unwrap().0) }).collect();
    std::fs::write(&pairs, own.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", pairs.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "own"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: each of the 6 photos has a subject id of its own: a subject id should name the person") && !err.contains("have fewer"),
        "{err}"
    );
}

/// A subject-normalised run (`runs/sn`, head:3 on a small trunk drawn with
/// `seed`) on 4 identity-dominated people of 4 photos each, and their manifest.
fn person_run(seed: i64) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tmp();
    let m = identity_dominated(d.path(), 4, 2, 32);
    let s = small_trunk(d.path(), seed);
    let (code, out, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:3", "--val", "none", "--name", "sn", "--quiet"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    (d, m)
}

/// What `predict_each` saw, in order: the progress it reported and the answers it handed on.
#[derive(Default)]
struct Events(std::rc::Rc<std::cell::RefCell<Vec<String>>>);

impl vggft::train::Reporter for Events {
    fn message(&mut self, _: &str) {}
    fn progress(&mut self, _: &str, _: &str, done: usize, _: usize) {
        self.0.borrow_mut().push(format!("progress {done}"));
    }
}

#[test]
fn predict_hands_on_each_person_once_their_last_photo_is_in() {
    use vggft::eval::predict::{predict, predict_each, Mode, SubjectFrom};
    let (d, _) = person_run(31);
    let (cfg, model) = vggft::run::load_run(&d.path().join("runs/sn"), tch::Device::Cpu).unwrap();
    assert!(model.cfg.subject_norm);
    // P00's four photos, then P01's and P02's interleaved, one of P03's (alone), and P00's first again.
    let photo = |s: usize, label: &str, i: usize| d.path().join(format!("p{s:02}_{label}_{i}.png"));
    let mut paths: Vec<std::path::PathBuf> = ["neutral", "expressive"].iter().flat_map(|l| (0..2).map(move |i| (l, i))).map(|(l, i)| photo(0, l, i)).collect();
    for (l, i) in [("neutral", 0), ("expressive", 0), ("neutral", 1), ("expressive", 1)] {
        paths.push(photo(1, l, i));
        paths.push(photo(2, l, i));
    }
    paths.push(photo(3, "expressive", 1));
    paths.push(paths[0].clone());
    let table: std::collections::HashMap<_, _> = paths.iter().map(|p| (p.clone(), p.file_name().unwrap().to_string_lossy()[..3].to_uppercase())).collect();
    let subjects = SubjectFrom::Table(table);
    let events = Events::default();
    let log = events.0.clone();
    let mut reporter = events;
    let preds = predict_each(&cfg, &model, &paths, &subjects, (true, 1), tch::Device::Cpu, &mut reporter, &mut |p| {
        log.borrow_mut().push(format!("answer {}", p.path.file_name().unwrap().to_string_lossy()))
    });
    let log = log.borrow().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap_or_else(|| panic!("{e} not in {log:?}"));
    // Every answer handed on once, in input order.
    let answers: Vec<String> = log.iter().filter_map(|l| l.strip_prefix("answer ").map(String::from)).collect();
    assert_eq!(answers, paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>());
    // P00's four answers before the fifth input is read, not at the end.
    assert!(log[..at("progress 4")].iter().filter(|l| l.starts_with("answer p00")).count() == 4, "{log:?}");
    // P01's photos wait for P01's last (input 10); P02's, interleaved with them, for P02's last (input 11).
    let read = |i: usize| at(&format!("progress {i}"));
    assert!(read(10) < at("answer p01_neutral_0.png") && at("answer p01_neutral_0.png") < read(11), "{log:?}");
    assert!(at("answer p02_neutral_0.png") > read(11), "{log:?}");
    // The same answers as all inputs in one batch, each person answered with everyone else present.
    let all = predict(&cfg, &model, &paths, &subjects, (true, paths.len()), tch::Device::Cpu, &mut vggft::train::Collect::default());
    for (a, b) in preds.iter().zip(&all) {
        assert_eq!((&a.path, a.mode), (&b.path, b.mode));
        let (pa, pb) = (a.probs.as_ref().unwrap(), b.probs.as_ref().unwrap());
        assert!(pa.iter().zip(pb).all(|(x, y)| (x - y).abs() < 1e-5), "{}: {pa:?} against {pb:?}", a.path.display());
    }
    let modes: Vec<Mode> = preds.iter().filter_map(|p| p.mode).collect();
    assert_eq!(modes.iter().filter(|&&m| m == Mode::Single).count(), 1, "P03's one photo alone");
    assert_eq!(preds[0].probs.as_ref().unwrap(), preds[paths.len() - 1].probs.as_ref().unwrap(), "the repeat answered as its first");
}

#[test]
fn predict_groups_a_folder_per_person_of_class_folders_by_person() {
    let (d, m) = person_run(32);
    // The same photos as a folder per person of class folders: P00/neutral/p00_neutral_0.png.
    for s in 0..4 {
        for label in ["neutral", "expressive"] {
            let dir = d.path().join(format!("people/P{s:02}/{label}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2 {
                let name = format!("p{s:02}_{label}_{i}.png");
                std::fs::copy(d.path().join(&name), dir.join(&name)).unwrap();
            }
        }
    }
    let answers = |out: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = out
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (std::path::Path::new(f[0]).file_name().unwrap().to_string_lossy().into_owned(), f[1..].join("\t"))
            })
            .collect();
        v.sort();
        v
    };
    let (code, nested, err) = run(&["predict", "--model", "runs/sn", "--device", "cpu", "-r", "people"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: people is read as a dataset is: two levels of folders: a folder per person"), "{err}");
    assert_eq!(nested.lines().filter(|l| l.ends_with("mode=person")).count(), 16, "{nested}");
    // The answers the manifest's subject column gives.
    let (code, listed, err) = run(&["predict", "--model", "runs/sn", "--device", "cpu", m.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(answers(&nested), answers(&listed));
    // One person's class folders given alone: answered alone, and the note does not send them to --subject-from parent.
    let (code, out, err) = run(&["predict", "--model", "runs/sn", "--device", "cpu", "-r", "people/P00"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().all(|l| l.ends_with("mode=single-image")), "{out}");
    assert!(err.contains("--subject-from parent (a folder per person; not here, where the folders are expressions: expressive, neutral)"), "{err}");
}

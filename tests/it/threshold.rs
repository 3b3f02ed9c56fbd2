//! The decision threshold of a two-class task (`--threshold`): set after
//! training by an inner subject-grouped cross-validation over the training
//! people alone, saved in the run's config, and used by every place that
//! turns probabilities into a class (cv's metrics, validation, predict,
//! evaluate), with the larger probability reported beside it.

use std::path::Path;

use crate::common::*;

/// Balanced accuracy of a two-class fold: neutral (0) where P(neutral) ≥ `t`, else the larger probability.
fn bacc_at(y: &[i64], probs: &[Vec<f64>], t: Option<f64>) -> f64 {
    let pred: Vec<i64> = probs
        .iter()
        .map(|p| match t {
            Some(t) => i64::from(p[0] < t),
            None => i64::from(p[1] >= p[0]),
        })
        .collect();
    let recall = |c: i64| {
        let n = y.iter().filter(|&&v| v == c).count();
        y.iter().zip(&pred).filter(|(&v, &p)| v == c && p == c).count() as f64 / n as f64
    };
    (recall(0) + recall(1)) / 2.0
}

fn vec_i64(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn probs(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// The same manifest with person `P00`'s labels swapped (neutral ↔ expressive).
fn swapped_manifest(m: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(m).unwrap();
    let out: String = text
        .lines()
        .map(|l| {
            if l.ends_with(",P00") {
                if l.contains(",neutral,") {
                    l.replace(",neutral,", ",expressive,")
                } else {
                    l.replace(",expressive,", ",neutral,")
                }
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let p = m.with_file_name("swapped.csv");
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn cv_sets_each_folds_threshold_from_its_training_people_alone() {
    let d = tmp();
    let m = identity_dominated(d.path(), 6, 3, 32);
    let s = small_trunk(d.path(), 31);
    let cv = |manifest: &Path, name: &str, extra: &[&str]| {
        let out = d.path().join(name);
        let mut a =
            vec!["cv", "--data", manifest.to_str().unwrap(), "--folds", "loso", "--seeds", "0", "--augment", "none", "--epochs", "4", "--freeze-epochs", "1"];
        a.extend_from_slice(&["--out", out.to_str().unwrap()]);
        a.extend_from_slice(extra);
        let (code, o, err) = run(&args(&s, &a), d.path());
        assert_eq!(code, 0, "{o}\n{err}");
        (out, err)
    };
    // The default recipe here (person statistics, 3 photos of every person in each class, two classes): inner thresholds.
    let (out, err) = cv(&m, "all", &[]);
    assert!(err.contains("the threshold on P(neutral) is set after training by a 3-fold subject-grouped cross-validation"), "{err}");
    let fold = |dir: &Path, f: usize| json(&dir.join(format!("folds/seed0-fold{f}.json")));
    let mut at_half = Vec::new();
    for f in 0..6 {
        let r = fold(&out, f);
        let t = &r["threshold"];
        let person = t["person"].as_f64().unwrap();
        assert!((0.1..=0.9).contains(&person), "{t}");
        assert_eq!(t["inner"]["folds"], 3, "{t}");
        assert_eq!(t["inner"]["people"], 5, "the fold's training people: {t}");
        let (y, p) = (vec_i64(&r["y"]), probs(&r["probs"]));
        // The fold's metrics are decided at its threshold; its single-image head at that head's own.
        let bacc = r["metrics"]["balanced_accuracy"].as_f64().unwrap();
        assert!((bacc - bacc_at(&y, &p, Some(person))).abs() < 1e-12, "fold {f}: {bacc} vs {}", bacc_at(&y, &p, Some(person)));
        assert_eq!(r["single"]["threshold"], t["single"], "fold {f}");
        assert!(r["calibration"]["scale"].as_f64().unwrap() > 0.0, "the single-image head's probabilities are calibrated: {r}");
        let single = r["single"]["metrics"]["balanced_accuracy"].as_f64().unwrap();
        assert!((single - bacc_at(&y, &probs(&r["single"]["probs"]), t["single"].as_f64())).abs() < 1e-12);
        at_half.push(bacc_at(&y, &p, None));
    }
    // Beside it, the same models by the larger probability.
    let summary = json(&out.join("cv.json"));
    let half = summary["at_half"]["stats"][0]["mean"].as_f64().unwrap();
    assert!((half - at_half.iter().sum::<f64>() / 6.0).abs() < 1e-12, "{half} vs {at_half:?}");
    let md = std::fs::read_to_string(out.join("cv.md")).unwrap();
    assert!(
        md.contains("neutral is answered where P(neutral) reaches a threshold set for each fold by an inner 3-fold subject-grouped cross-validation over that fold's training people alone (median ")
            && md.contains("; the single-image head's probabilities are calibrated on the same inner held-out scores")
            && md.contains("## The same models deciding by the larger probability (threshold 0.5)"),
        "{md}"
    );
    // No label of the test person reaches its fold's threshold: with P00's labels swapped, fold 0
    // (P00 held out) has the same threshold and probabilities, and other scores.
    let (swapped, _) = cv(&swapped_manifest(&m), "swapped", &["--fold", "0"]);
    let (a, b) = (fold(&out, 0), fold(&swapped, 0));
    assert_eq!(a["subjects"][0], "P00");
    assert_eq!(a["threshold"], b["threshold"], "the test person's labels changed the threshold");
    assert_eq!(a["probs"], b["probs"]);
    assert_ne!(a["y"], b["y"]);
    // --threshold off: the larger probability, nothing beside it; a given threshold: that one on every fold.
    let (off, _) = cv(&m, "off", &["--threshold", "off"]);
    assert!(fold(&off, 0).get("threshold").is_none() && json(&off.join("cv.json")).get("at_half").is_none());
    let r = fold(&off, 2);
    let bacc = r["metrics"]["balanced_accuracy"].as_f64().unwrap();
    assert!((bacc - bacc_at(&vec_i64(&r["y"]), &probs(&r["probs"]), None)).abs() < 1e-12);
    let (fixed, _) = cv(&m, "fixed", &["--threshold", "0.3", "--fold", "1"]);
    let r = fold(&fixed, 1);
    assert_eq!(r["threshold"]["person"], 0.3);
    assert!(r["threshold"].get("inner").is_none());
    let bacc = r["metrics"]["balanced_accuracy"].as_f64().unwrap();
    assert!((bacc - bacc_at(&vec_i64(&r["y"]), &probs(&r["probs"]), Some(0.3))).abs() < 1e-12);
    // A threshold of 0.5 is the larger probability: nothing is repeated beside it.
    let (half, _) = cv(&m, "half", &["--threshold", "0.5"]);
    assert_eq!(fold(&half, 1)["threshold"]["person"], 0.5);
    assert!(json(&half.join("cv.json")).get("at_half").is_none());
    assert!(!std::fs::read_to_string(half.join("cv.md")).unwrap().contains("deciding by the larger probability"));
}

/// `predict --format json` of the model in `dir` on `photos`, each alone (`--subject-from none`: the single-image head).
fn predict_alone(dir: &Path, photos: &[String], cwd: &Path) -> Vec<serde_json::Value> {
    let mut a = vec!["predict", "--model", dir.to_str().unwrap(), "--subject-from", "none", "--format", "json"];
    a.extend(photos.iter().map(String::as_str));
    let (code, out, err) = run(&a, cwd);
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn a_run_keeps_its_threshold_and_predict_and_evaluate_decide_at_it() {
    let d = tmp();
    let m = identity_dominated(d.path(), 5, 3, 32);
    let s = small_trunk(d.path(), 32);
    let base = ["finetune", "--data", m.to_str().unwrap(), "--augment", "none", "--epochs", "4", "--freeze-epochs", "1", "--val", "subjects:0.4"];
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "inner"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let finetune_err = err;
    let dir = d.path().join("runs/inner");
    let cfg = json(&dir.join("config.json"));
    assert_eq!(cfg["train"]["threshold"], "inner");
    let t = &cfg["threshold"];
    let person = t["person"].as_f64().unwrap();
    assert!((0.1..=0.9).contains(&person) && t["single"].as_f64().is_some(), "{t}");
    assert_eq!(t["inner"]["folds"], 3);
    // 0.5 is one of the candidates: the chosen thresholds do at least as well on the held-out people, both heads.
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(f(&t["inner"]["at_threshold"]) >= f(&t["inner"]["at_half"]), "{t}");
    let single = &t["inner"]["single"];
    assert!(f(&single[1]) >= f(&single[0]), "{t}");
    assert_eq!(t["inner"]["people"], 3, "3 of 5 people train, 2 validate: {t}");
    assert!(out.contains("the model answers neutral where P(neutral) ≥") && out.contains("3-fold subject-grouped"), "{out}");
    let metrics = json(&dir.join("metrics.json"));
    assert!(metrics["threshold"].as_str().unwrap().starts_with("answers neutral where P(neutral) ≥"), "{metrics}");
    // predict: each class decided at the run's threshold (person mode here: 3 photos of each person).
    let (code, out, err) = run(&["predict", "--model", dir.to_str().unwrap(), "--held-out", "--format", "json"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("the model answers neutral where P(neutral) ≥"), "{err}");
    let preds: serde_json::Value = serde_json::from_str(&out).unwrap();
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 12);
    for p in preds {
        assert_eq!(p["mode"], "person");
        assert_eq!(p["threshold"].as_f64(), Some(person));
        let pn = p["probabilities"]["neutral"].as_f64().unwrap();
        assert_eq!(p["class"], if pn >= person { "neutral" } else { "expressive" }, "{p}");
    }
    let held_out: Vec<String> = preds.iter().map(|p| p["path"].as_str().unwrap().to_string()).collect();
    // explain answers the same class, at the same threshold, and says so (the class asked for: no need).
    let (code, out, err) = run(&["explain", "--model", dir.to_str().unwrap(), &held_out[0], "--out", "ex"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("the model answers neutral where P(neutral) ≥"), "{err}");
    // Its line names the single-image head's threshold where that is not 0.5,
    // with the probability it is set on.
    let t_alone = f(&t["single"]);
    // (Below it, with as many decimals as tell the two apart.)
    let below = out.split(" < threshold ").nth(1).and_then(|r| r.split(')').next()).and_then(|t| t.parse::<f64>().ok());
    let said = out.contains(&format!(" (P(neutral) ≥ threshold {t_alone:.3})\t")) || below.is_some_and(|t| (t - t_alone).abs() < 5e-4);
    assert_eq!(said, t_alone != 0.5, "{out}");
    if let Some(line) = out.lines().find(|l| l.contains("\texpressive ")) {
        assert!(line.contains(" (P(neutral) 0.") || t_alone == 0.5, "{line}");
    }
    let (code, out, err) = run(&["explain", "--model", dir.to_str().unwrap(), &held_out[0], "--out", "ex2", "--class", "neutral"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("the model answers"), "{err}");
    // Alone (--subject-from none) each photo gets the single-image head, its probabilities calibrated by the
    // scale and shift the inner fits set, at the threshold carried to them: the same decisions as the head's own
    // probabilities at its own threshold (the run without the calibration, below).
    let c = &cfg["calibration"];
    let (a, b, t_single) = (f(&c["scale"]), f(&c["shift"]), f(&t["single"]));
    assert!(a > 0.0 && a <= 10.0 && b.abs() <= 10.0, "{t}");
    let logit = |p: f64| p.max(1e-300).ln() - (1.0 - p).max(1e-300).ln();
    let alone = |dir: &Path| predict_alone(dir, &held_out, d.path());
    let raw_dir = d.path().join("runs/uncalibrated");
    copy_dir(&dir, &raw_dir);
    let mut raw_cfg = cfg.clone();
    raw_cfg.as_object_mut().unwrap().remove("calibration");
    raw_cfg["threshold"]["single"] = serde_json::json!(1.0 / (1.0 + (-(logit(t_single) - b) / a).exp()));
    std::fs::write(raw_dir.join("config.json"), serde_json::to_string_pretty(&raw_cfg).unwrap()).unwrap();
    let (cal, uncal) = (alone(&dir), alone(&raw_dir));
    assert_eq!(cal.len(), 12);
    for (p, q) in cal.iter().zip(&uncal) {
        assert_eq!(p["mode"], "single-image", "{p}");
        assert_eq!(p["threshold"].as_f64(), Some(t_single));
        let (pn, qn) = (f(&p["probabilities"]["neutral"]), f(&q["probabilities"]["neutral"]));
        assert_eq!(p["class"], if pn >= t_single { "neutral" } else { "expressive" }, "{p}");
        assert_eq!(p["class"], q["class"], "calibrated {p} vs the head's own {q}");
        assert!((pn - 1.0 / (1.0 + (-(a * logit(qn) + b)).exp())).abs() < 1e-9, "{pn} vs σ({a}·logit({qn}) + {b})");
    }
    // A config written on 2026-12-03 kept the calibration under `threshold`: still read, the same answers.
    let mut legacy = cfg.clone();
    let moved = legacy.as_object_mut().unwrap().remove("calibration").unwrap();
    legacy["threshold"]["calibration"] = moved;
    std::fs::write(raw_dir.join("config.json"), serde_json::to_string_pretty(&legacy).unwrap()).unwrap();
    assert_eq!(alone(&raw_dir), cal, "the calibration's earlier place");
    // A single-image head the inner cross-validation found near chance is said to be, by finetune
    // and by predict where it answers a photo alone (not where a person's photos answer together).
    let near = |v: &serde_json::Value| f(&v[0]).max(f(&v[1])) < vggft::eval::threshold::SINGLE_NEAR_CHANCE;
    assert_eq!(finetune_err.contains("note: the model's single-image head reached"), near(single), "{single}: {finetune_err}");
    for (measured, said) in [([0.5, 0.52], true), ([0.9, 0.85], false)] {
        let mut edited = cfg.clone();
        edited["threshold"]["inner"]["single"] = serde_json::json!(measured);
        std::fs::write(raw_dir.join("config.json"), serde_json::to_string_pretty(&edited).unwrap()).unwrap();
        let (code, out, err) = run(&["predict", "--model", raw_dir.to_str().unwrap(), "--subject-from", "none", &held_out[0]], d.path());
        assert_eq!(code, 0, "{out}{err}");
        let note = "note: 1 photo(s) here were answered alone; the model's single-image head reached 0.52 balanced accuracy on held-out training people";
        assert_eq!(err.contains(note), said, "{measured:?}: {err}");
        let (code, out, err) = run(&["predict", "--model", raw_dir.to_str().unwrap(), "--held-out"], d.path());
        assert_eq!(code, 0, "{out}{err}");
        assert!(!err.contains("answered alone;"), "a person's photos together: {err}");
    }
    // A hand-edited calibration that would reverse the head's order (or erase it) is refused, naming the file.
    for (scale, shift) in [(-0.5, 0.0), (0.0, 0.0)] {
        let mut bad = cfg.clone();
        bad["calibration"] = serde_json::json!({"scale": scale, "shift": shift});
        std::fs::write(raw_dir.join("config.json"), serde_json::to_string_pretty(&bad).unwrap()).unwrap();
        let (code, out, err) = run(&["predict", "--model", raw_dir.to_str().unwrap(), "--subject-from", "none", &held_out[0]], d.path());
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("config.json: holds a setting its flag would refuse") && err.contains("positive, finite scale"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // evaluate: at the threshold, and by the larger probability beside it.
    let (code, out, err) = run(&["evaluate", "--model", dir.to_str().unwrap(), "--data", m.to_str().unwrap(), "--exclude-train"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("the model answers neutral where") && out.contains("by the larger probability instead (threshold 0.5): balanced accuracy"), "{out}");
    let ev = json(&dir.join("eval-manifest/metrics.json"));
    assert!(ev["metrics_at_half"]["balanced_accuracy"].is_number() && ev["threshold"].is_string(), "{ev}");
    // A given threshold is kept as given; off keeps none.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "fixed", "--threshold", "0.3"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let cfg = json(&d.path().join("runs/fixed/config.json"));
    assert_eq!(cfg["threshold"]["person"], 0.3);
    assert!(cfg["threshold"].get("inner").is_none());
    // Its text lines name the threshold each answer was decided at.
    let fixed = d.path().join("runs/fixed");
    for extra in [&[][..], &["--subject-from", "none"][..]] {
        let a = [&["predict", "--model", fixed.to_str().unwrap(), "--held-out"][..], extra].concat();
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{out}\n{err}");
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("\ttrue ")).collect();
        assert!(lines.len() == 12 && lines.iter().all(|l| l.contains("\tthreshold=0.300\tmode=")), "{out}");
    }
    // At 0.5 (both heads) evaluate has nothing to add by the larger probability: the same figures.
    let half = d.path().join("runs/half");
    copy_dir(&d.path().join("runs/fixed"), &half);
    let mut at_half = cfg.clone();
    at_half["threshold"] = serde_json::json!({"person": 0.5});
    std::fs::write(half.join("config.json"), serde_json::to_string_pretty(&at_half).unwrap()).unwrap();
    let (code, out, err) = run(&["evaluate", "--model", half.to_str().unwrap(), "--data", m.to_str().unwrap(), "--exclude-train"], d.path());
    assert_eq!(
        code, 0,
        "{out}
{err}"
    );
    assert!(out.contains("the model answers neutral where P(neutral) ≥ 0.500") && !out.contains("by the larger probability instead"), "{out}");
    let (code, out, err) = run(&["predict", "--model", half.to_str().unwrap(), "--held-out"], d.path());
    assert!(code == 0 && out.contains("\tmode=person") && !out.contains("threshold="), "{out}\n{err}");
    assert!(json(&half.join("eval-manifest/metrics.json")).get("metrics_at_half").is_none_or(|v| v.is_null()));
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "off", "--threshold", "off"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let cfg = json(&d.path().join("runs/off/config.json"));
    assert!(cfg.get("threshold").is_none() && cfg["train"]["threshold"] == "off", "{cfg}");
    assert!(!out.contains("the model answers neutral where"), "{out}");
    // The probe's single-image head is still calibrated (--calibrate auto), its decisions the larger probability.
    assert!(
        cfg["calibration"]["scale"].is_number()
            && out.contains("the model answers the most probable class; its single-image head's probabilities are calibrated"),
        "{out}"
    );
    // A fine-tune decides by the larger probability unless told (auto is measured on the probe only).
    let (code, out, err) = run(&args(&s, &[&base[..], &["--name", "ft", "--freeze-until", "conv5"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(json(&d.path().join("runs/ft/config.json"))["train"]["threshold"], "off");
    // Bad values: one sentence naming the flag.
    let (code, _, err) = run(&args(&s, &[&base[..], &["--name", "bad", "--threshold", "1.5"]].concat()), d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threshold") && err.contains("between 0 and 1"), "{err}");
    let three = d.path().join("three");
    for (k, class) in ["happy", "neutral", "sad"].iter().enumerate() {
        std::fs::create_dir_all(three.join(class)).unwrap();
        for i in 0..4 {
            gray_png(&three.join(class).join(format!("{i}.png")), 32, 32, |x, y| ((x * 3 / 32 == k as u32) as u8) * 200 + ((x + y + i) % 7) as u8);
        }
    }
    let (code, _, err) = run(
        &args(&s, &["finetune", "--data", three.to_str().unwrap(), "--task", "multiclass", "--threshold", "inner", "--epochs", "1", "--freeze-epochs", "0"]),
        d.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--threshold") && err.contains("two-class tasks") && err.contains("3 classes"), "{err}");
}

#[test]
fn a_seven_way_style_probe_calibrates_its_single_image_head_by_a_temperature() {
    let d = tmp();
    let m = identity_dominated_labels(d.path(), 5, 3, 32, &["neutral", "happy", "angry"]);
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 33);
    let s = small(&w);
    let base = ["--data", m.to_str().unwrap(), "--task", "multiclass", "--augment", "none", "--epochs", "6", "--freeze-epochs", "0"];
    // The long probe on person statistics (3 classes, every person 9 photos): calibrated by default, in cv too.
    let out = d.path().join("cv");
    let (code, o, err) = run(&args(&s, &[&["cv", "--folds", "loso", "--seeds", "0", "--out", out.to_str().unwrap()][..], &base[..]].concat()), d.path());
    assert_eq!(code, 0, "{o}\n{err}");
    assert!(err.contains("the single-image head's probabilities are calibrated after training on a 3-fold subject-grouped cross-validation"), "{err}");
    let r = json(&out.join("folds/seed0-fold0.json"));
    let c = &r["calibration"];
    assert!(c["shift"] == 0.0 && c["scale"].as_f64().is_some_and(|a| a > 0.0 && a <= 10.0), "{r}");
    assert!(r.get("threshold").is_none(), "no threshold for three classes: {r}");
    let md = std::fs::read_to_string(out.join("cv.md")).unwrap();
    assert!(md.contains("the single-image head's probabilities are calibrated on an inner 3-fold subject-grouped cross-validation over each fold's training people (temperature scaling, median temperature"), "{md}");
    // A run: its config holds the temperature, predict reports P ∝ p^scale for a photo alone — the same classes
    // as the head's own probabilities (the run without it).
    let (code, o, err) = run(&args(&s, &[&["finetune", "--val", "subjects:0.4", "--name", "t"][..], &base[..]].concat()), d.path());
    assert_eq!(code, 0, "{o}\n{err}");
    assert!(o.contains("the model answers the most probable class; its single-image head's probabilities are calibrated") && o.contains("temperature"), "{o}");
    let dir = d.path().join("runs/t");
    let cfg = json(&dir.join("config.json"));
    let a = cfg["calibration"]["scale"].as_f64().unwrap();
    assert!(cfg["calibration"]["shift"] == 0.0 && cfg.get("threshold").is_none() && cfg["train"]["calibrate"] == "inner", "{cfg}");
    assert!(json(&dir.join("metrics.json"))["calibration"].as_str().unwrap().contains("temperature"));
    let raw_dir = d.path().join("runs/uncalibrated");
    copy_dir(&dir, &raw_dir);
    let mut raw_cfg = cfg.clone();
    raw_cfg.as_object_mut().unwrap().remove("calibration");
    std::fs::write(raw_dir.join("config.json"), serde_json::to_string_pretty(&raw_cfg).unwrap()).unwrap();
    let photos: Vec<String> =
        (0..3).map(|i| d.path().join(format!("p04_{}_{i}.png", ["neutral", "happy", "angry"][i])).to_str().unwrap().to_string()).collect();
    let alone = |dir: &Path| predict_alone(dir, &photos, d.path());
    let classes: Vec<String> = cfg["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    for (p, q) in alone(&dir).iter().zip(&alone(&raw_dir)) {
        assert_eq!(p["mode"], "single-image", "{p}");
        assert_eq!(p["class"], q["class"], "calibrated {p} vs the head's own {q}");
        let own: Vec<f64> = classes.iter().map(|c| q["probabilities"][c].as_f64().unwrap()).collect();
        let w: Vec<f64> = own.iter().map(|p| (a * p.max(1e-300).ln()).exp()).collect();
        for (k, c) in classes.iter().enumerate() {
            let want = w[k] / w.iter().sum::<f64>();
            assert!((p["probabilities"][c].as_f64().unwrap() - want).abs() < 1e-6, "{c}: {p} vs {want}");
        }
    }
    // --calibrate off: none fitted; inner without person statistics: refused, naming the flag.
    let (code, o, err) = run(&args(&s, &[&["finetune", "--val", "none", "--name", "off", "--calibrate", "off"][..], &base[..]].concat()), d.path());
    assert_eq!(code, 0, "{o}\n{err}");
    assert!(json(&d.path().join("runs/off/config.json")).get("calibration").is_none() && !err.contains("calibrated after training"), "{err}");
    let (code, _, err) =
        run(&args(&s, &[&["finetune", "--val", "none", "--name", "no", "--calibrate", "inner", "--subject-norm", "off"][..], &base[..]].concat()), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--calibrate") && err.contains("single-image head") && err.contains("--subject-norm on"), "{err}");
}

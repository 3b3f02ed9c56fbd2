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

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn finetune_on_raw_labels_reports_task_classes_everywhere() {
    let d = tmp();
    let data = d.path().join("data");
    three_labels(&data, 6, 32);
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 21);
    let s = small(&w);
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

    // evaluate scores in task classes.
    let (code, out, err) = run(&["evaluate", "--data", data_s, "--out", d.path().join("ev").to_str().unwrap(), "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("neutral") && out.contains("expressive") && !out.contains("happy"), "{out}");
    let ev = json(&d.path().join("ev/metrics.json"));
    assert_eq!(ev["metrics"]["confusion"].as_array().unwrap().len(), 2);

    // --train-labels task: a two-output head, no raw probabilities.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data_s, "--stages", "head:1", "--name", "task", "--train-labels", "task"]), d.path());
    assert_eq!(code, 0, "{err}");
    let cfg = json(&d.path().join("runs/task/config.json"));
    assert!(cfg.get("raw_classes").is_none(), "{cfg}");
    let (_, out, _) = run(&["predict", img.to_str().unwrap(), "--format", "json", "--device", "cpu"], d.path());
    assert!(!out.contains("raw_probabilities"), "{out}");
}

#[test]
fn multi_layer_features_train_from_the_conv4_cache_and_predict() {
    let d = tmp();
    let data = d.path().join("data");
    three_labels(&data, 5, 32);
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 22);
    let s = small(&w);
    let (code, out, err) =
        run(&args(&s, &["finetune", "--data", data.to_str().unwrap(), "--features", "conv4,conv5", "--stages", "head:2,conv5:1", "--name", "ml"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    // The head needs conv4's output, so the cache stops there and the head-only stage is not extended.
    assert!(err.contains("cached the frozen conv4 output"), "{err}");
    assert!(!err.contains("extended the cache"), "{err}");
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

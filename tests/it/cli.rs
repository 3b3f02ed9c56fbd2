//! The real binary end to end: weights inspect, finetune → predict on real
//! London faces (small images, small weights), output formats, partial
//! failures, and option / input errors with their exit codes.

use std::path::Path;

use crate::common::*;

#[test]
fn weights_inspect_names_the_architecture() {
    let d = tmp();
    let p = d.path().join("vgg16_bn.safetensors");
    torchvision_like(&p, true, 1);
    let (code, out, err) = run(&["weights", "inspect", p.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("VGG16-BN"), "{out}");
    assert!(out.contains("features.1.running_var"));
    assert!(out.lines().any(|l| l.starts_with("sha256:") && l.split_whitespace().nth(1).unwrap().len() == 64));
    let (code, out, _) = run(&["weights", "inspect", "--json", p.to_str().unwrap()], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["arch"], "Vgg16Bn");
    let bad = d.path().join("bad.safetensors");
    std::fs::write(&bad, b"nonsense").unwrap();
    let (code, _, err) = run(&["weights", "inspect", bad.to_str().unwrap()], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("bad.safetensors") && err.lines().count() == 1, "{err}");
}

#[test]
fn finetune_then_predict_on_london_faces() {
    let d = tmp();
    let Some(manifest) = london_slice(d.path(), 10) else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let s = small_trunk(d.path(), 2);
    let (code, out, err) =
        run(&args(&s, &["finetune", "--data", manifest.to_str().unwrap(), "--stages", "head:2,conv5:2", "--name", "r1", "--seed", "3"]), d.path());
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("balanced accuracy") && out.contains("majority baseline"), "{out}");
    let run_dir = d.path().join("runs/r1");
    for f in ["config.json", "history.csv", "metrics.json", "model.safetensors", "learning_curves.png", "split.csv", "sha256.csv", "COMPLETE"] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    assert!(!run_dir.join("checkpoint.json").exists(), "checkpoint removed once complete");
    assert_eq!(std::fs::read_link(d.path().join("runs/latest")).unwrap(), Path::new("r1"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["classes"], serde_json::json!(["neutral", "expressive"]));
    assert_eq!(cfg["weights"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(cfg["train"]["seed"], 3);
    assert_eq!(cfg["libtorch_version"], "2.13.0");
    let history = std::fs::read_to_string(run_dir.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 5, "header + 4 epochs:\n{history}");
    // The split is subject-grouped.
    let split = std::fs::read_to_string(run_dir.join("split.csv")).unwrap();
    let mut sides: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for l in split.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        sides.entry(f[3].to_string()).or_default().insert(f[4].to_string());
    }
    assert!(sides.values().all(|s| s.len() == 1), "a subject on both sides: {sides:?}");

    // predict: text, json, csv, flip TTA, from runs/latest (the default).
    let img1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/london-faces/neutral/172_03.jpg");
    let img2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/london-faces/smiling/172_08.jpg");
    let (i1, i2) = (img1.to_str().unwrap(), img2.to_str().unwrap());
    let (code, out, err) = run(&["predict", i1, i2, "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2);
    assert!(out.contains("172_03.jpg") && out.contains("neutral=") && out.contains("expressive="), "{out}");
    let (code, out, _) = run(&["predict", i1, "--format", "json", "--tta", "flip", "--model", "runs/r1"], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v[0]["probabilities"];
    let total = p["neutral"].as_f64().unwrap() + p["expressive"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 1e-6);
    let (code, out, _) = run(&["predict", i1, i2, "--format", "csv"], d.path());
    assert_eq!(code, 0);
    // Pairs train person statistics (`--subject-norm auto`): each line says which head answered.
    // And how far each photo lies from the training photos (`feature_distance`).
    assert_eq!(out.lines().next().unwrap(), "path,class,p_neutral,p_expressive,mode,feature_distance");
    let far: f64 = out.lines().nth(1).unwrap().rsplit(',').next().unwrap().parse().unwrap();
    assert!(far > 0.0, "{out}");
    assert_eq!(out.lines().count(), 3);
    // The runs folder itself (`finetune --out`) stands for its latest run; a
    // folder that holds no run says so.
    let (code, from_runs, err) = run(&["predict", i1, i2, "--format", "csv", "--model", "runs"], d.path());
    assert_eq!((code, from_runs.as_str()), (0, out.as_str()), "{err}");
    std::fs::create_dir(d.path().join("not-a-run")).unwrap();
    let (code, _, err) = run(&["predict", i1, "--model", "not-a-run"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("not-a-run/config.json: is missing: not a vggft run folder") && err.lines().count() == 1, "{err}");
    // A cross-validation folder keeps no model: said as such, not as a missing config.json.
    std::fs::write(d.path().join("not-a-run/cv-config.json"), "{}").unwrap();
    let (code, _, err) = run(&["predict", i1, "--model", "not-a-run"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("not-a-run: is a cross-validation folder, and cv keeps no model") && err.lines().count() == 1, "{err}");
    // A `latest` link whose run was deleted: said as such, given as the link or as its runs folder.
    std::fs::create_dir(d.path().join("old-runs")).unwrap();
    std::os::unix::fs::symlink("gone", d.path().join("old-runs/latest")).unwrap();
    for model in ["old-runs/latest", "old-runs"] {
        let (code, _, err) = run(&["predict", i1, "--model", model], d.path());
        assert_eq!(code, 1);
        assert!(err.contains("old-runs/latest: names gone, which is not there any more (moved or deleted)") && err.lines().count() == 1, "{model}: {err}");
    }

    // Partial failure: the bad file is named on stderr, the good one still predicted, exit 1.
    let bad = d.path().join("broken.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    let (code, out, err) = run(&["predict", i1, bad.to_str().unwrap()], d.path());
    assert_eq!(code, 1);
    assert!(out.contains("172_03.jpg") && !out.contains("broken.jpg"), "{out}");
    assert!(err.contains("broken.jpg") && err.contains("not a recognised image format"), "{err}");
}

#[test]
fn bundled_sample_is_used_without_data() {
    let d = tmp();
    let s = small_trunk(d.path(), 4);
    let out_dir = d.path().join("runs");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run(&args(&s, &["finetune", "--stages", "head:1", "--out", out_dir.to_str().unwrap(), "--quiet"]), repo);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("run: "), "{out}");
    let cfg_path = std::fs::read_dir(&out_dir).unwrap().flatten().find(|e| e.path().is_dir() && e.file_name() != "latest").unwrap().path().join("config.json");
    let cfg = std::fs::read_to_string(cfg_path).unwrap();
    assert!(cfg.contains("data/sample/manifest.csv"), "{cfg}");
}

#[test]
fn bad_options_and_inputs_fail_clearly() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let w = d.path().join("plain.safetensors");
    torchvision_like(&w, false, 5);
    let s = small(&w);
    let data = m.to_str().unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--freeze-until", "conv9"]), d.path());
    assert_eq!(code, 2);
    assert!(err.contains("conv9") && err.contains("conv5") && err.contains("head"), "{err}");
    for (opt, val, want) in [
        ("--epochs", "0", "--epochs must be at least 1"),
        ("--lr", "-1", "--lr must be in (0, 10)"),
        ("--batch-size", "1", "--batch-size must be at least 2"),
        // A million views would be a million passes of every image through the trunk.
        ("--cache-views", "1000000", "--cache-views must be 1 to 64, got 1000000"),
        // Pairs with person statistics: the session's probe takes --members, checked as a fine-tune's is.
        ("--members", "0", "--members must be in 1..=32, got 0"),
        ("--members", "1000", "--members must be in 1..=32, got 1000"),
        // 10^8 asked libtorch for 25 GB and panicked inside it.
        ("--hidden", "100000000", "--hidden must be 0 to 8192, got 100000000"),
    ] {
        let (code, _, err) = run(&args(&s, &["finetune", "--data", data, opt, val]), d.path());
        assert_eq!(code, 1, "{opt} {val}");
        assert!(err.contains(want), "{opt} {val}: {err}");
    }
    // A --name that is not one plain folder name: refused before the photos are read or --out is made
    // (a line break made a run folder of two lines; `../x` left an empty --out).
    for name in ["a\nb", "../x", "latest", ""] {
        let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--name", name, "--out", "named", "--face", "auto"]), d.path());
        assert_eq!(code, 1, "{name:?}: {err}");
        assert!(err.contains("a run name must be a plain folder name (no `/`, line break or other control character; not `latest`)"), "{err}");
        assert!(!err.contains("face") && !d.path().join("named").exists(), "{name:?}: {err}");
    }
    // Longer than a folder name may be: said before the photos are read, no empty --out left (it was "File name too long" after).
    let long = "n".repeat(251);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--name", &long, "--out", "named", "--face", "auto"]), d.path());
    assert!(code == 1 && err.contains("a run name of 251 bytes is longer than a folder name may be (250 bytes"), "{err}");
    assert!(!err.contains("face") && !d.path().join("named").exists(), "{err}");
    let (code, _, err) = run(&["finetune", "--rerun", "nowhere", "--name", "a\tb"], d.path());
    assert!(code == 1 && err.contains("`a\\tb`: a run name must be a plain folder name"), "{err}");
    // Features that end before conv5: a conv5 stage would train what the head never reads; the probe trains.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--features", "conv4", "--subject-norm", "off"]), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--stages") && err.contains("`conv5:12`") && err.contains("ends at conv4") && err.lines().count() == 1, "{err}");
    // A conv5 stage enters at the conv4 output: conv3's features are gone by then (with conv4 among them, they are not).
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--features", "conv3,conv5", "--stages", "head:1,conv5:1"]), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`conv5:1`") && err.contains("conv4 output") && err.contains("conv3") && err.lines().count() == 1, "{err}");
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--features", "conv3,conv5", "--stages", "head:1,conv4:1", "--out", "c35"]), d.path());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--features", "conv3,conv4", "--stages", "head:2", "--out", "c4"]), d.path());
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["predict", data, "--run", "c4/latest", "--threads", "2"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().filter(|l| l.contains(".png")).count(), 8, "{out}");
    // Grad-CAM takes the last block the head reads; a later one has no gradient and is refused before any output.
    let one = d.path().join("s00_neutral.png");
    let (code, _, err) = run(&["explain", one.to_str().unwrap(), "--run", "c4/latest", "--out", "cam"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(d.path().join("cam/sheet.png").exists());
    let (code, _, err) = run(&["explain", one.to_str().unwrap(), "--run", "c4/latest", "--out", "cam5", "--layer", "conv5"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--layer conv5") && err.contains("end at conv4") && !d.path().join("cam5").exists(), "{err}");
    let (code, _, err) = run(&["evaluate", "--data", data, "--run", "c4/latest", "--out", "ev", "--top-losses", "2"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(d.path().join("ev/top_losses.png").exists());
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--bn", "recalibrate"]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("plain.safetensors") && err.contains("vgg16-bn"), "{err}");
    assert!(!d.path().join("runs/latest").exists(), "no run marked finished");
    // Weights that cannot be loaded fail before the run folder is made.
    let narrow = d.path().join("narrow.safetensors");
    torchvision_like(&narrow, false, 5);
    let mut t = tch::Tensor::read_safetensors(&narrow).unwrap();
    t.iter_mut().find(|(n, _)| n == "features.0.weight").unwrap().1 = tch::Tensor::zeros([5, 3, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&t, &narrow).unwrap();
    let not_st = d.path().join("photo.safetensors");
    std::fs::write(&not_st, b"a photo, not weights").unwrap();
    // Both precisions: the CPU's bf16 tip (AMX, f32) or warning (emulated bf16) comes only once the weights have
    // loaded, so the error stays the one line on any CPU.
    for (w, precision) in [(&narrow, "f32"), (&not_st, "f32"), (&narrow, "bf16")] {
        let (code, _, err) = run(&args(&small(w), &["finetune", "--data", data, "--stages", "head:1", "--out", "wruns", "--precision", precision]), d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(w.file_name().unwrap().to_str().unwrap()) && err.lines().count() == 1, "{precision}: {err}");
        assert!(!d.path().join("wruns").exists(), "a run folder was left behind for {}", w.display());
    }
    let (code, _, err) = run(&["predict", data, "--model", "runs/none"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs/none") && err.contains("not found"), "{err}");
    // --run, what the help calls it, names the run folder too.
    for cmd in [&["predict", data][..], &["evaluate", "--data", data], &["explain", data, "--out", "x"]] {
        let (code, _, err) = run(&[cmd, &["--run", "runs/none"]].concat(), d.path());
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("runs/none") && err.contains("not found"), "{cmd:?}: {err}");
    }
    let (code, _, err) = run(&args(&s, &["finetune", "--data", d.path().join("nowhere").to_str().unwrap()]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("nowhere"), "{err}");
    let bad = d.path().join("bad");
    std::fs::create_dir_all(bad.join("a")).unwrap();
    std::fs::create_dir_all(bad.join("b")).unwrap();
    std::fs::write(bad.join("a/x.png"), b"garbage").unwrap();
    gray_png(&bad.join("b/y.png"), 32, 32, |_, _| 5);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", bad.to_str().unwrap()]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("x.png") && err.contains("cannot decode"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

/// Without --weights and with none in weights/ (a copy of the binary, so that the repository's own are not
/// found), that is said before the photos are read: a broken photo (read first until now) is not reached.
#[test]
fn missing_default_weights_are_said_before_the_photos_are_read() {
    let d = tmp();
    let m = subject_dataset(d.path(), 3, 32);
    std::fs::write(d.path().join("s00_neutral.png"), "not a picture").unwrap();
    let exe = d.path().join("t/release/vggft");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vggft"), &exe).unwrap();
    for (bn, says) in [("drop", "weights/ holds no pretrained weights"), ("recalibrate", "weights/ holds no VGG16-BN weights")] {
        let out = std::process::Command::new(&exe)
            .args(["finetune", "--data", m.to_str().unwrap(), "--bn", bn, "--device", "cpu", "--face", "auto"])
            .env("VGGFT_FEATURE_CACHE", "off")
            .current_dir(d.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says) && !err.contains("s00_neutral.png") && !err.contains("face"), "{bn}: {err}");
    }
    // With --random-init no weights are needed: the photos are read, and the broken one is said.
    let out = std::process::Command::new(&exe)
        .args(["finetune", "--data", m.to_str().unwrap(), "--random-init", "--width-div", "16", "--image-size", "32", "--device", "cpu"])
        .env("VGGFT_FEATURE_CACHE", "off")
        .current_dir(d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("s00_neutral.png") && !err.contains("weights/"), "{err}");
}

#[test]
fn lr_find_writes_csv_png_and_a_suggestion() {
    let d = tmp();
    let m = subject_dataset(d.path(), 6, 32);
    let s = small_trunk(d.path(), 6);
    let (code, out, err) = run(&args(&s, &["lr-find", "--data", m.to_str().unwrap(), "--steps", "60", "--out", "lr"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("suggested learning rate"), "{out}");
    // The rate the recipe trains at, and the sweep's loss there.
    assert!(out.contains("this recipe trains at --lr 3.0e-3: smoothed loss ") && out.contains(", lowest "), "{out}");
    let (code, out, err) = run(&args(&s, &["lr-find", "--data", m.to_str().unwrap(), "--steps", "60", "--lr", "3", "--out", "lr3"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("this recipe trains at --lr 3.0e0: smoothed loss – (outside the sweep)"), "{out}");
    // Several photos per person: the long probe, whose rate was chosen by cross-validated accuracy, says so.
    std::fs::create_dir_all(d.path().join("many")).unwrap();
    let many = identity_dominated(&d.path().join("many"), 4, 2, 32);
    let (code, out, err) = run(&args(&s, &["lr-find", "--data", many.to_str().unwrap(), "--steps", "30", "--out", "lr-many"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("this recipe trains at --lr 1.0e-2 (the default of the probe on person statistics, chosen by cross-validated accuracy"), "{out}");
    // A sweep sets no threshold: the recipe's inner fits are not announced (they were).
    assert!(err.contains("lr-find sweep: 30 step(s)…") && !err.contains("threshold") && !err.contains("calibrated"), "{err}");
    // A sweep of u64::MAX steps ran as asked (an estimate of 10^16 s left); refused before any image is read.
    let (code, _, err) = run(&args(&s, &["lr-find", "--data", m.to_str().unwrap(), "--steps", "18446744073709551615", "--out", "lr-max"]), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--steps must be 10 to 10000, got 18446744073709551615") && !d.path().join("lr-max").exists(), "{err}");
    // An infinite rate (or a ratio that overflows to one) left the plot's axis without an end: the sweep stopped, then spun until killed.
    for (start, end) in [("1e-6", "inf"), ("1e-6", "1e308"), ("1e-6", "NaN")] {
        let (code, _, err) = run(&args(&s, &["lr-find", "--data", m.to_str().unwrap(), "--start-lr", start, "--end-lr", end, "--out", "lr-inf"]), d.path());
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--start-lr must be > 0 and below --end-lr, and --end-lr / --start-lr a finite number") && !d.path().join("lr-inf").exists(),
            "{err}"
        );
    }
    let csv = std::fs::read_to_string(d.path().join("lr/lr-find.csv")).unwrap();
    assert!(csv.lines().count() > 11);
    let png = image::open(d.path().join("lr/lr-find.png")).unwrap().to_rgb8();
    let non_white = png.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(non_white > 1000, "plot is not blank");
}

#[test]
fn skip_bad_warns_and_counts() {
    let d = tmp();
    let m = subject_dataset(d.path(), 5, 32);
    std::fs::write(d.path().join("broken.png"), b"garbage").unwrap();
    let mut csv = std::fs::read_to_string(&m).unwrap();
    csv.push_str("broken.png,smiling,P00\n");
    std::fs::write(&m, csv).unwrap();
    let s = small_trunk(d.path(), 7);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1"]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("broken.png") && err.contains("(1 of 11 images cannot be read; --skip-bad leaves them out, naming each)"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    let (code, out, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--skip-bad"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("skipped 1 unreadable image(s)") && err.contains("broken.png"), "{err}");
    // Every image unreadable: the first one's problem, not an empty dataset's "only one class (none)".
    for n in [2, 1] {
        let bad = d.path().join(format!("bad{n}"));
        for (k, class) in ["neutral", "smiling"].iter().enumerate().take(n) {
            std::fs::create_dir_all(bad.join(class)).unwrap();
            std::fs::write(bad.join(class).join(format!("{k}.png")), b"garbage").unwrap();
        }
        let (code, _, err) = run(&args(&s, &["finetune", "--data", bad.to_str().unwrap(), "--stages", "head:1", "--skip-bad"]), d.path());
        assert_eq!(code, 1, "{err}");
        let says = if n == 2 {
            "none of the 2 images can be used, this the first, so --skip-bad would leave nothing"
        } else {
            "the only image, so --skip-bad would leave nothing"
        };
        assert!(err.contains("0.png: cannot decode image: not a recognised image format") && err.contains(says), "{err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    }
}

/// `--val-subjects` names a person whose id holds a comma (a manifest's quoted field) beside a plain one.
#[test]
fn val_subjects_names_a_person_whose_id_holds_a_comma() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let csv = std::fs::read_to_string(&m).unwrap().replace(",P01\n", ",\"Doe, J\"\n");
    std::fs::write(&m, csv).unwrap();
    let s = small_trunk(d.path(), 8);
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val-subjects", "Doe, J,P03", "--name", "a"]), d.path());
    assert_eq!(code, 0, "{err}");
    let split = std::fs::read_to_string(d.path().join("runs/a/split.csv")).unwrap();
    let val: Vec<&str> = split.lines().filter(|l| l.contains(",val,")).collect();
    assert_eq!(val.len(), 4, "{split}");
    assert_eq!(val.iter().filter(|l| l.contains(",\"Doe, J\",val,")).count(), 2, "{split}");
    assert_eq!(val.iter().filter(|l| l.contains(",P03,val,")).count(), 2, "{split}");
    // A piece that starts no id is named, with the ids there are.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val-subjects", "Doe,P03"]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--val-subjects: no subject `Doe` (subjects: `Doe, J`, P00, P02, P03)"), "{err}");
    // With --val too: one of the two, said (the named people used to win silently).
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--val", "subjects:0.5", "--val-subjects", "P03"]), d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'--val <VAL>' cannot be used with '--val-subjects <VAL_SUBJECTS>'"), "{err}");
    // No id at all (`--val-subjects=`): said as such, with ids to give.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val-subjects="]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--val-subjects names no person: give their ids, e.g. --val-subjects \"Doe, J\",P00,P02"), "{err}");
}

#[test]
fn a_lopsided_split_is_warned_of_and_preprocess_makes_its_folder() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 8);
    let data = m.to_str().unwrap();
    // --val 0.75 read as "train on 75 %": one person of four trains.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--val", "subjects:0.75", "--name", "few"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: this split trains on 2 image(s) and validates on 6: --val F is the fraction held out"), "{err}");
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--val", "subjects:0.25", "--name", "ok"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("this split trains on"), "{err}");
    // Every person held out: said as such, not as a class missing on the training side.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--val-subjects", "P00,P01,P02,P03", "--name", "all"]), d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the people held out for validation (P00, P01, P02, P03) are all the people there are") && !err.contains("side has no"), "{err}");
    // preprocess writes the network input, making the folder it names.
    let (code, out, err) = run(&["preprocess", "s00_neutral.png", "--model", "runs/ok", "--out", "new/dir/x.safetensors"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("network input 1×3×32×32"), "{out}");
    let t = tch::Tensor::read_safetensors(d.path().join("new/dir/x.safetensors")).unwrap();
    assert_eq!((t.len(), t[0].0.as_str(), t[0].1.size()), (1, "input", vec![1, 3, 32, 32]));
    // Its own earlier output is replaced; the photo itself, an image name, the
    // run's model and the weights are never written over.
    let (code, _, err) = run(&["preprocess", "s00_neutral.png", "--model", "runs/ok", "--out", "new/dir/x.safetensors"], d.path());
    assert_eq!(code, 0, "{err}");
    let before: Vec<Vec<u8>> = ["s00_neutral.png", "runs/ok/model.safetensors", "trunk.safetensors"].map(|f| std::fs::read(d.path().join(f)).unwrap()).into();
    for (out, why) in [
        ("s00_neutral.png", "give --out a name ending in .safetensors"),
        ("x.tiff", "give --out a name ending in .safetensors"),
        ("runs/ok/model.safetensors", "exists and is not an earlier `vggft preprocess` output"),
        ("trunk.safetensors", "exists and is not an earlier `vggft preprocess` output"),
    ] {
        let (code, _, err) = run(&["preprocess", "s00_neutral.png", "--model", "runs/ok", "--out", out], d.path());
        assert_eq!(code, 1, "{out}");
        assert!(err.starts_with(&format!("error: {out}: ")) && err.contains(why), "{err}");
    }
    let after: Vec<Vec<u8>> = ["s00_neutral.png", "runs/ok/model.safetensors", "trunk.safetensors"].map(|f| std::fs::read(d.path().join(f)).unwrap()).into();
    assert!(before == after && !d.path().join("x.tiff").exists());
    // A folder of photos is one image too many (it said "folder holds no images").
    let (code, _, err) = run(&["preprocess", ".", "--model", "runs/ok", "--out", "y.safetensors"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: .: is a folder: preprocess writes one image's network input") && !err.contains("holds no images"), "{err}");
    assert!(!d.path().join("y.safetensors").exists());
    // `weights inspect` takes a run folder as --model does.
    let (code, out, err) = run(&["weights", "inspect", "runs/ok"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runs/ok/model.safetensors") && out.contains("a vggft checkpoint"), "{out}");
    // … and the runs folder as its `latest`; a run without a model is named as unfinished (it said "is a folder, not a weights file").
    let (code, out, err) = run(&["weights", "inspect", "runs"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runs/latest/model.safetensors") && out.contains("a vggft checkpoint"), "{out}");
    std::fs::create_dir(d.path().join("runs/half")).unwrap();
    std::fs::copy(d.path().join("runs/ok/config.json"), d.path().join("runs/half/config.json")).unwrap();
    let (code, _, err) = run(&["weights", "inspect", "runs/half"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: runs/half: has no model.safetensors: the run did not finish"), "{err}");
}

#[test]
fn runs_and_data_that_are_broken_get_clear_errors() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 8);
    let data = m.to_str().unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--name", "ok", "--val", "none"]), d.path());
    assert_eq!(code, 0, "{err}");
    let img = d.path().join("s00_neutral.png");
    let im = img.to_str().unwrap();
    // A weights path that is a device or a folder is named for what it is (nothing read, no run made).
    for (path, says) in [("/dev/zero", "/dev/zero: is not a regular file"), ("runs", "runs: is a folder, not a weights file")] {
        let (code, _, err) = run(&["finetune", "--data", data, "--weights", path, "--device", "cpu", "--name", "bad"], d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says) && !d.path().join("runs/bad").exists(), "{err}");
    }
    // A run folder, or the folder of runs, given as the data: named for what it is, not read as photos.
    for (data, says) in
        [("runs/ok", "runs/ok: is a run folder that vggft wrote, not a folder of photos"), ("runs", "runs: is a folder of runs that vggft wrote")]
    {
        let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--name", "bad"]), d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says) && !d.path().join("runs/bad").exists(), "{err}");
    }
    let (code, _, err) = run(&["evaluate", "--model", "runs/ok", "--data", "runs/ok", "--device", "cpu"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("give the photos' folder (its data: {}", m.display())), "{err}");
    // A weights file, or a model copied away from its run, given as the model: what --model takes.
    std::fs::copy(d.path().join("runs/ok/model.safetensors"), d.path().join("alone.safetensors")).unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "alone.safetensors", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(err.starts_with("error: alone.safetensors: is a file, not a run folder: give the run's folder, or the model.safetensors inside it"), "{err}");
    for flag in ["--resume", "--rerun"] {
        let (code, _, err) = run(&["finetune", flag, "alone.safetensors"], d.path());
        assert!(code == 1 && err.starts_with("error: alone.safetensors: is a file, not a run folder"), "{flag}: {err}");
    }
    // Another run's model copied over this one's (the same network): refused, as its threshold and
    // calibration were set for this run's own; a run from before config.json kept the hash loads as it did.
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--stages", "head:1", "--name", "other", "--val", "none", "--seed", "1"]), d.path());
    assert_eq!(code, 0, "{err}");
    let sha = |run: &str| {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join(run).join("config.json")).unwrap()).unwrap();
        cfg["model_sha256"].as_str().map(str::to_string)
    };
    let (ok_sha, other_sha) = (sha("runs/ok"), sha("runs/other"));
    assert!(ok_sha.is_some() && ok_sha != other_sha, "{ok_sha:?} {other_sha:?}");
    let own = std::fs::read(d.path().join("runs/ok/model.safetensors")).unwrap();
    std::fs::copy(d.path().join("runs/other/model.safetensors"), d.path().join("runs/ok/model.safetensors")).unwrap();
    for cmd in [&["predict", im, "--model", "runs/ok"][..], &["evaluate", "--model", "runs/ok", "--data", data, "--out", "ev-swapped"]] {
        let (code, _, err) = run(cmd, d.path());
        assert!(
            code == 1 && err.contains("runs/ok/model.safetensors: is not the model this run trained (its SHA-256 differs from the one in config.json)"),
            "{err}"
        );
    }
    std::fs::write(d.path().join("runs/ok/model.safetensors"), &own).unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "runs/ok"], d.path());
    assert_eq!(code, 0, "{err}");
    let cfg_other = d.path().join("runs/other/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_other).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("model_sha256");
    std::fs::write(&cfg_other, cfg.to_string()).unwrap();
    std::fs::copy(d.path().join("runs/ok/model.safetensors"), d.path().join("runs/other/model.safetensors")).unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "runs/other"], d.path());
    assert_eq!(code, 0, "no hash to check: {err}");
    // A rerun records its own model's hash, not the one of the run whose recipe it trains.
    let (code, _, err) = run(&["finetune", "--rerun", "runs/ok", "--name", "again", "--seed", "2"], d.path());
    assert_eq!(code, 0, "{err}");
    let again = sha("runs/again");
    assert!(again.is_some() && again != ok_sha, "{again:?}");
    // Edited config.json.
    std::fs::copy(d.path().join("runs/ok/config.json"), d.path().join("config.bak")).unwrap();
    std::fs::write(d.path().join("runs/ok/config.json"), "{\"classes\": 3").unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "runs/ok"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("config.json") && err.contains("not a valid vggft run config"), "{err}");
    // A model with another class count than the config says.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("config.bak")).unwrap()).unwrap();
    cfg["classes"] = serde_json::json!(["a", "b", "c"]);
    std::fs::write(d.path().join("runs/ok/config.json"), cfg.to_string()).unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "runs/ok"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("model.safetensors") && err.contains("wrong shape head.fc"), "{err}");
    // Missing config.json.
    std::fs::remove_file(d.path().join("runs/ok/config.json")).unwrap();
    let (code, _, err) = run(&["predict", im, "--model", "runs/ok"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs/ok/config.json: is missing: not a vggft run folder"), "{err}");
    // An output "folder" that is a file.
    std::fs::write(d.path().join("blocked"), "x").unwrap();
    // Said before the photos are read and their faces looked for (finetune and cv said it after), and --rerun alike.
    for cmd in ["finetune", "cv"] {
        let (code, _, err) = run(&args(&s, &[cmd, "--data", data, "--out", "blocked", "--face", "auto"]), d.path());
        assert_eq!(code, 1);
        assert!(err.contains("blocked: cannot create folder: a file of that name is in the way") && !err.contains("no face found"), "{cmd}: {err}");
    }
    let (code, _, err) = run(&args(&s, &["finetune", "--data", data, "--out", "blocked/runs"]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("blocked/runs: cannot create folder: blocked is a file, not a folder"), "{err}");
    // A symlink loop in a class folder is named, not skipped.
    let f = d.path().join("loop");
    separable_folders(&f, 2, 32);
    #[cfg(unix)]
    std::os::unix::fs::symlink("x.png", f.join("a/x.png")).unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", f.to_str().unwrap()]), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("x.png") && err.contains("cannot read"), "{err}");
    // The same bytes under two classes: a warning naming both.
    let dup = d.path().join("dup");
    separable_folders(&dup, 3, 32);
    std::fs::copy(dup.join("a/00.png"), dup.join("b/99.png")).unwrap();
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", dup.to_str().unwrap(), "--task", "multiclass", "--stages", "head:1", "--val", "none"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 identical file(s) carry different classes") && err.contains("00.png (a)") && err.contains("99.png (b)"), "{err}");
    assert!(!err.contains("subject ids"), "{err}");
    // A copy within one class, without subject ids: an image split can put one copy on each side.
    std::fs::copy(dup.join("a/01.png"), dup.join("a/98.png")).unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", dup.to_str().unwrap(), "--task", "multiclass", "--stages", "head:1"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: 1 file(s) are byte-identical copies of another of the same class: ")
            && err.contains("a/01.png = ")
            && err.contains("a/98.png; without subject ids a split or cv fold can put a copy on each side"),
        "{err}"
    );
    std::fs::remove_file(dup.join("a/98.png")).unwrap();
    // The same bytes filed under two people: a subject-grouped split could put that photo on both sides.
    let two = d.path().join("two");
    std::fs::create_dir_all(&two).unwrap();
    let m = subject_dataset(&two, 3, 32);
    std::fs::copy(two.join("s00_neutral.png"), two.join("s01_neutral.png")).unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--quiet"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: 1 identical file(s) carry different subject ids: ")
            && err.contains("s00_neutral.png (P00) = ")
            && err.contains("s01_neutral.png (P01); a subject-grouped split or cv fold can put the same photo on both sides"),
        "{err}"
    );
    assert!(!err.contains("different classes") && !err.contains("differ only in case"), "{err}");
    // One person's id spelt two ways: two people to the split, said.
    let csv = std::fs::read_to_string(&m).unwrap().replace("s02_smiling.png,smiling,P02", "s02_smiling.png,smiling,p02");
    std::fs::write(&m, csv).unwrap();
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--quiet"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: subject ids `P02` and `p02` differ only in case: each is a person of its own here"), "{err}");
    // Runs written inside class folders are refused before anything is written
    // (reliability.rs); a runs folder moved there reads as a class: the error
    // says what the folder is (not just "class `runs` has no images").
    let inside = ["finetune", "--data", "dup", "--out", "dup/runs", "--task", "multiclass", "--stages", "head:1", "--val", "none"];
    let (code, _, err) = run(&args(&s, &inside), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("dup/runs: is inside the data folder"), "{err}");
    let outside = ["finetune", "--data", "dup", "--out", "elsewhere", "--task", "multiclass", "--stages", "head:1", "--val", "none"];
    let (code, _, err) = run(&args(&s, &outside), d.path());
    assert_eq!(code, 0, "{err}");
    std::fs::rename(d.path().join("elsewhere"), dup.join("runs")).unwrap();
    let (code, _, err) = run(&args(&s, &outside), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("dup/runs: is vggft's output") && err.contains("keep --out outside"), "{err}");
    // Heatmaps of `explain --out` there would be a class of pictures: refused too.
    std::fs::remove_dir_all(dup.join("runs")).unwrap();
    std::fs::create_dir(dup.join("ex")).unwrap();
    std::fs::copy(dup.join("a/00.png"), dup.join("ex/0000_00.png")).unwrap();
    std::fs::write(dup.join("ex/explain.csv"), "path\n").unwrap();
    let (code, _, err) = run(&args(&s, &outside), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("dup/ex: is vggft's output"), "{err}");
}

#[test]
fn predict_held_out_shows_only_people_the_model_never_saw() {
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let s = small_trunk(d.path(), 31);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:2", "--name", "h"]), d.path());
    assert_eq!(code, 0, "{err}");
    let split = std::fs::read_to_string(d.path().join("runs/h/split.csv")).unwrap();
    let rows: Vec<Vec<String>> = split.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect();
    let train_people: std::collections::BTreeSet<&str> = rows.iter().filter(|r| r[4] == "train").map(|r| r[3].as_str()).collect();
    // Photos it trained on are named as such when predicted; its validation people's are not.
    let side = |s: &str| rows.iter().find(|r| r[4] == s).map(|r| r[0].clone()).unwrap();
    let (code, _, err) = run(&["predict", "--model", "runs/h", "--device", "cpu", &side("train"), &side("val")], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: 1 of these 2 input(s) were training images of this run (its split.csv, by path or identical bytes)"), "{err}");
    let (code, _, err) = run(&["predict", "--model", "runs/h", "--device", "cpu", &side("val")], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("training images"), "{err}");
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let (preds, tally) = lines.split_at(lines.len() - 1);
    let val: Vec<&Vec<String>> = rows.iter().filter(|r| r[4] == "val").collect();
    assert_eq!(preds.len(), val.len(), "{out}");
    let mut right = 0;
    for (l, r) in preds.iter().zip(&val) {
        assert!(l.starts_with(&r[0]) && l.contains(&format!("true {}", r[2])), "{l} vs {r:?}");
        // Every class's probability beside the answer.
        let probs: f64 = l.split('\t').nth(3).unwrap().split(' ').map(|kv| kv.split_once('=').unwrap().1.parse::<f64>().unwrap()).sum();
        assert!((probs - 1.0).abs() <= 0.011, "{l}");
        assert!(!train_people.contains(r[3].as_str()), "{} was trained on", r[3]);
        right += usize::from(l.ends_with("right"));
    }
    let people: std::collections::BTreeSet<&str> = val.iter().map(|r| r[3].as_str()).collect();
    let who = if people.len() == 1 { "1 person".to_string() } else { format!("{} people", people.len()) };
    // Pairs train person statistics: the tally says which head answered, and that head's validation figure.
    let metrics = json(&d.path().join("runs/h/metrics.json"));
    let bacc = |key: &str| format!("{:.3}", metrics[key]["balanced_accuracy"].as_f64().unwrap());
    assert_eq!(
        tally[0],
        format!(
            "{right} of {} right on {who} the model never saw, each person's photos scored together (validation balanced accuracy {}, metrics.json)",
            val.len(),
            bacc("validation")
        ),
        "{out}"
    );
    // CSV and JSON carry each photo's truth and person too; the tally goes to stderr, out of their records.
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu", "--format", "csv"], d.path());
    assert_eq!(code, 0, "{err}");
    let mut csv = csv::Reader::from_reader(out.as_bytes());
    let header = csv.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("{name}: {out}"));
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), val.len(), "{out}");
    for (rec, r) in records.iter().zip(&val) {
        assert_eq!((&rec[col("path")], &rec[col("true_class")], &rec[col("subject")]), (r[0].as_str(), r[2].as_str(), r[3].as_str()), "{out}");
    }
    let csv_right = records.iter().filter(|rec| rec[col("class")] == rec[col("true_class")]).count();
    assert!(csv_right == right && err.contains(&format!("{right} of {} right on {who} the model never saw", val.len())), "{err}");
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu", "--format", "json"], d.path());
    assert_eq!(code, 0, "{err}");
    let objs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(objs.iter().zip(&val).all(|(o, r)| o["true_class"] == r[2].as_str() && o["subject"] == r[3].as_str()), "{out}");
    let (code, out, err) = run(&["predict", "--held-out", "--subject-from", "none", "--model", "runs/h", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[..lines.len() - 1].iter().all(|l| l.contains("mode=single-image")), "{out}");
    let tally = lines[lines.len() - 1];
    assert!(
        tally.ends_with(&format!(
            "the model never saw, each photo alone (the single-image head) (validation balanced accuracy {} of that head, metrics.json)",
            bacc("validation_single_image")
        )),
        "{out}"
    );
    let (code, _, err) = run(&["predict", "--held-out", "--subject-from", "parent", "--model", "runs/h", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--held-out takes each image's person from the run's split.csv") && err.lines().count() == 1, "{err}");
    // A run without validation images says so.
    let (code, _, _) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--name", "nv", "--val", "none"]), d.path());
    assert_eq!(code, 0);
    let (code, _, err) = run(&["predict", "--held-out", "--model", "runs/nv", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("split.csv: lists no validation images (the run was trained with --val none)"), "{err}");
    // An edited split.csv: one that is not a split says so (was "lists no validation images (the run was
    // trained with --val none)" of any file); a side or class it cannot have is named by its line; paths
    // moved with the data are taken as listed, with a warning that the file is not the run's own.
    let split = d.path().join("runs/h/split.csv");
    let good = std::fs::read_to_string(&split).unwrap();
    // The first validation row edited by `f`, and its line.
    let line = good.lines().position(|l| l.contains(",val,")).unwrap();
    let first_val = |f: &dyn Fn(&str) -> String| good.lines().enumerate().map(|(i, l)| if i == line { f(l) } else { l.to_string() } + "\n").collect::<String>();
    let side = |l: &str| l.replace(",val,", ",test,");
    let class = |l: &str| {
        let mut f: Vec<&str> = l.split(',').collect();
        f[2] = "zebra";
        f.join(",")
    };
    let cases: [(String, &str); 4] = [
        ("garbage\n".into(), "split.csv: is not a vggft split.csv: its header is `garbage`, where vggft writes `path,label,class,subject,side,bytes`"),
        (first_val(&side), &format!("split.csv: line {}: side `test`, where each image is on the `train` or the `val` side", line + 1)),
        (first_val(&class), &format!("split.csv: line {}: class `zebra`, none of the run's classes (neutral, expressive)", line + 1)),
        (good.replace(",val,", ",train,"), "split.csv: lists no validation images (and is not the split.csv this run wrote: its SHA-256 differs"),
    ];
    for (text, says) in cases {
        std::fs::write(&split, text).unwrap();
        let (code, _, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu"], d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says) && err.lines().filter(|l| l.starts_with("error")).count() == 1, "{err}");
    }
    // A run from before split.csv had its `bytes` column: read as it was.
    let old_split: String = good.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n").collect();
    assert!(old_split.starts_with("path,label,class,subject,side\n"), "{old_split}");
    std::fs::write(&split, old_split).unwrap();
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{right} of {} right on {who} the model never saw", val.len())), "{out}");
    let moved = d.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for r in &val {
        let from = std::path::Path::new(&r[0]);
        std::fs::rename(from, moved.join(from.file_name().unwrap())).unwrap();
    }
    let at = |p: &std::path::Path| format!("{}{}", p.display(), std::path::MAIN_SEPARATOR);
    assert!(good.contains(&at(d.path())), "{good}");
    std::fs::write(&split, good.replace(&at(d.path()), &at(&moved))).unwrap();
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/h", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("split.csv is not the split.csv this run wrote (its SHA-256 differs from config.json's data_sha256)"), "{err}");
    assert!(out.contains(&format!("{right} of {} right on {who} the model never saw", val.len())), "{out}");
}

#[test]
fn every_bad_option_value_is_a_usage_error_with_exit_2_naming_the_flag() {
    let d = tmp();
    let cases: [(&[&str], &str); 38] = [
        (&["finetune", "--val", "x"], "--val"),
        (&["finetune", "--subject-pattern", ""], "--subject-pattern is empty: give a regular expression"),
        (&["finetune", "--crop", "1,2"], "--crop"),
        // A negative corner is the value's problem, not an unknown flag `-1`.
        (&["finetune", "--crop", "-1,0,10,10"], "--crop `-1,0,10,10`: expected x,y,w,h, four whole numbers"),
        // A box of a pixel or two trained on that pixel blown up.
        (&["finetune", "--crop", "10,10,1,1"], "--crop `10,10,1,1`: a 1×1 box is smaller than 8×8 pixels"),
        (&["finetune", "--face", "crop:0,0,4,40"], "--face `0,0,4,40`: a 4×40 box is smaller than 8×8 pixels"),
        (&["finetune", "--augment", "wild"], "--augment"),
        (&["finetune", "--device", "gpu"], "--device"),
        (&["finetune", "--stages", "conv9:3"], "--stages"),
        (&["finetune", "--face", "maybe"], "--face"),
        (&["finetune", "--features", "head"], "--features"),
        (&["finetune", "--features", "conv4,conv6"], "--features unknown block `conv6` (allowed: conv1, conv2, conv3, conv4, conv5)"),
        // --stages replaces the three: given with one, that one would be silently ignored.
        (&["finetune", "--stages", "head:2", "--epochs", "5"], "--epochs"),
        (&["cv", "--folds", "one"], "--folds"),
        // The dataset as a word or as --data: one of the two.
        (&["finetune", "d", "--data", "d"], "--data"),
        (&["evaluate", "d", "--data", "d"], "--data"),
        (&["finetune", "--lr", "0,001"], "`0,001`: write decimals with a point (0.001)"),
        (&["cv", "--seeds", "0-4"], "`0-4` is a range: list the seeds (0,1,2) or give --repeats N"),
        // --repeats u64::MAX panicked allocating its seeds; 10^6 ran as asked.
        (&["cv", "--repeats", "18446744073709551615"], "--repeats"),
        (&["cv", "--repeats", "0"], "--repeats"),
        // Given with --seeds, --repeats silently won.
        (&["cv", "--repeats", "3", "--seeds", "5"], "--seeds"),
        (&["predict", "x.png", "--device", "tpu"], "--device"),
        (&["explain", "x.png", "--out", "o", "--layer", "head"], "--layer"),
        (&["evaluate", "--data", "d", "--layer", "conv9"], "--layer"),
        (&["cv", "--fold", "1"], "--out"),
        (&["faces", "d", "--out", "o", "--tile", "5000"], "--tile"),
        // `faces` takes its dataset as a word or as `--data`, as finetune and cv do: one of the two.
        (&["faces", "d", "--data", "d", "--out", "o"], "--data"),
        (&["faces", "--out", "o"], "<DIR>"),
        (&["predict", "x.png", "--subject", " "], "--subject"),
        (&["predict", "x.png", "--batch-size", "0"], "--batch-size"),
        // `speed` at 5 px panicked in libtorch's pooling (conv5's output has no pixel left).
        (&["speed", "--image-size", "5"], "--image-size"),
        (&["speed", "--batch-size", "0"], "--batch-size"),
        (&["speed", "--reps", "0"], "--reps"),
        // Huge epoch counts wrapped when the warm-up was added (u64::MAX trained 2 epochs).
        (&["finetune", "--epochs", "18446744073709551615"], "--epochs"),
        (&["finetune", "--freeze-epochs", "10001"], "--freeze-epochs"),
        (&["finetune", "--stages", "head:1,conv5:18446744073709551615"], "--stages"),
        (&["cv", "--probe-epochs", "10001"], "--probe-epochs"),
        // Random initialisation would silently ignore the weights file.
        (&["finetune", "--random-init", "--weights", "w.safetensors"], "--weights"),
    ];
    for (a, flag) in cases {
        let (code, out, err) = run(a, d.path());
        assert_eq!(code, 2, "{a:?}: {out}{err}");
        assert!(err.starts_with("error:") && err.contains(flag) && !err.contains("panicked"), "{a:?}: {err}");
        // The message inside names the option given, not another.
        assert!(flag == "--layer" || !err.contains("--layer"), "{a:?}: {err}");
    }
}

#[test]
fn evaluate_warns_about_training_images_and_can_leave_them_out() {
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let s = small_trunk(d.path(), 51);
    // The dataset given as a word, as `--data` (finetune, evaluate below).
    let (code, _, err) = run(&args(&s, &["finetune", m.to_str().unwrap(), "--stages", "head:1", "--name", "e"]), d.path());
    assert_eq!(code, 0, "{err}");
    let split = std::fs::read_to_string(d.path().join("runs/e/split.csv")).unwrap();
    let n_train = split.lines().filter(|l| l.contains(",train,")).count();
    let n_val = split.lines().filter(|l| l.contains(",val,")).count();
    assert!(n_train > 0 && n_val > 0);
    let (code, out, err) = run(&["evaluate", "--model", "runs/e", "--data", m.to_str().unwrap(), "--device", "cpu", "--out", "ev1"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("warning: {n_train} of these {} images were training images of this run", n_train + n_val)), "{err}");
    assert!(out.contains(&format!("{} images from", n_train + n_val)), "{out}");
    let (code, out, err) = run(&["evaluate", "--model", "runs/e", m.to_str().unwrap(), "--device", "cpu", "--exclude-train", "--out", "ev2"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("left out {n_train} image(s)")) && !err.contains("warning"), "{err}");
    assert!(out.contains(&format!("{n_val} images from")), "{out}");
    // A copy of the dataset folder elsewhere: its training photos are still known, by their bytes (the
    // validation photos, of the same sizes, are not counted).
    let copy = d.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(d.path()).unwrap().flatten().filter(|e| e.path().is_file()) {
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let copied = copy.join("manifest.csv");
    // Evaluated where the photos are now: its training photos counted, then left out.
    let known_by_bytes = |manifest: &Path, outs: [&str; 2]| {
        let (code, _, err) = run(&["evaluate", "--model", "runs/e", "--data", manifest.to_str().unwrap(), "--device", "cpu", "--out", outs[0]], d.path());
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("warning: {n_train} of these {} images were training images of this run", n_train + n_val)), "{err}");
        let (code, out, err) =
            run(&["evaluate", "--model", "runs/e", "--data", manifest.to_str().unwrap(), "--device", "cpu", "--exclude-train", "--out", outs[1]], d.path());
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("left out {n_train} image(s)")) && out.contains(&format!("{n_val} images from")), "{err}{out}");
    };
    known_by_bytes(&copied, ["ev3", "ev4"]);
    let trained = split.lines().find(|l| l.contains(",train,")).unwrap().split(',').next().unwrap();
    let val = split.lines().find(|l| l.contains(",val,")).unwrap().split(',').next().unwrap();
    let name = |p: &str| copy.join(std::path::Path::new(p).file_name().unwrap());
    let (code, _, err) = run(&["predict", name(trained).to_str().unwrap(), name(val).to_str().unwrap(), "--model", "runs/e"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: 1 of these 2 input(s) were training images of this run"), "{err}");
    // A new photo of a person the run trained on, added to its own data: scored, and said not to be
    // subject-independent (in metrics.json and report too).
    let person = split.lines().find(|l| l.contains(",train,")).unwrap().split(',').nth(3).unwrap().to_string();
    let manifest = std::fs::read_to_string(&m).unwrap();
    gray_png(&d.path().join("again.png"), 32, 32, |x, y| if x < 16 { 200 } else { 30 + ((x + y) % 7) as u8 });
    std::fs::write(&m, format!("{manifest}again.png,neutral,{person}\n")).unwrap();
    let (code, out, err) =
        run(&["evaluate", "--model", "runs/e", "--data", m.to_str().unwrap(), "--device", "cpu", "--exclude-train", "--out", "ev7"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{} images from", n_val + 1)), "{out}");
    assert!(
        err.contains(&format!(
            "warning: 1 of the scored images are other photos of 1 person this run trained on ({person}): the score over them is not subject-independent"
        )),
        "{err}"
    );
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("ev7/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["training_people"], serde_json::json!({"scored": 1, "people": [person]}));
    let (code, out, err) = run(&["report", "ev7"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("evaluate: none of the run's training images; 1 other photos of people it trained on (not subject-independent)"), "{out}");
    // Not where the data is another's (its subject ids name other people): the copy made above.
    std::fs::write(copy.join("manifest.csv"), format!("{manifest}again.png,neutral,{person}\n")).unwrap();
    std::fs::copy(d.path().join("again.png"), copy.join("again.png")).unwrap();
    let (code, _, err) =
        run(&["evaluate", "--model", "runs/e", "--data", copied.to_str().unwrap(), "--device", "cpu", "--exclude-train", "--out", "ev8"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("other photos of"), "{err}");
    std::fs::write(&m, manifest).unwrap();
    std::fs::remove_file(d.path().join("again.png")).unwrap();
    // Top losses, then fewer, then none into the same folder: only this evaluation's are there.
    let tiles = |dir: &str| std::fs::read_dir(d.path().join(dir).join("top_losses")).map(|r| r.count()).unwrap_or(0);
    for (n, want) in [("4", 4), ("2", 2), ("0", 0)] {
        let (code, out, err) =
            run(&["evaluate", "--model", "runs/e", "--data", m.to_str().unwrap(), "--device", "cpu", "--out", "ev1", "--top-losses", n], d.path());
        assert_eq!(code, 0, "{err}");
        assert_eq!(tiles("ev1"), want, "--top-losses {n}: {out}");
        let csv = std::fs::read_to_string(d.path().join("ev1/top_losses.csv")).unwrap_or_default();
        assert_eq!(csv.lines().count().saturating_sub(1), want, "{csv}");
        assert_eq!(d.path().join("ev1/top_losses.png").is_file(), want > 0);
    }
    // The dataset moved (not copied): its training photos are known by the bytes the run recorded
    // (runs/e/sha256.csv), and --held-out says where the data went instead of one error per photo.
    let moved = d.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for e in std::fs::read_dir(d.path()).unwrap().flatten().filter(|e| e.path().is_file()) {
        std::fs::rename(e.path(), moved.join(e.file_name())).unwrap();
    }
    known_by_bytes(&moved.join("manifest.csv"), ["ev5", "ev6"]);
    let (code, out, err) = run(&["predict", "--model", "runs/e", "--held-out"], d.path());
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "error: runs/e/split.csv: none of its {n_val} validation images is where the run read it (the first: {val}): the data was moved or deleted; put it back, or score it where it is now with `vggft evaluate --model runs/e --data DIR --exclude-train` (it knows the run's training photos by their bytes)"
        )
    );
    assert!(out.is_empty(), "{out}");
    // One of them back: the tally counts the one person whose photo was answered, not every person listed.
    let val_people: std::collections::HashSet<&str> = split.lines().filter(|l| l.contains(",val,")).filter_map(|l| l.split(',').nth(3)).collect();
    assert!(val_people.len() > 1, "{split}");
    std::fs::rename(moved.join(std::path::Path::new(val).file_name().unwrap()), val).unwrap();
    let (code, out, err) = run(&["predict", "--model", "runs/e", "--held-out"], d.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("of 1 right on 1 person the model never saw"), "{out}");
    assert!(err.contains(&format!("{} of {n_val} image(s) could not be predicted", n_val - 1)), "{err}");
}

#[test]
fn evaluate_warns_of_labels_the_run_never_saw_and_classes_the_data_lacks() {
    let d = tmp();
    let m = subject_dataset(d.path(), 6, 32);
    // Three raw labels for the two classes: the head learns the raw labels.
    let mut csv = std::fs::read_to_string(&m).unwrap();
    for p in ["s00", "s02", "s04"] {
        csv = csv.replace(&format!("{p}_smiling.png,smiling"), &format!("{p}_smiling.png,laughing"));
    }
    std::fs::write(&m, csv).unwrap();
    let s = small_trunk(d.path(), 52);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "e"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&d.path().join("runs/e/config.json"))["raw_classes"], serde_json::json!(["laughing", "neutral", "smiling"]));
    // Smiles filed as `grinning`, and no neutral photo: both said, and still scored.
    let other = d.path().join("other.csv");
    std::fs::write(&other, "path,label\ns01_smiling.png,grinning\ns03_smiling.png,smiling\n").unwrap();
    let (code, out, err) = run(&["evaluate", "--model", "runs/e", "--data", "other.csv", "--device", "cpu", "--out", "ev"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: label(s) grinning are not among the run's training labels (laughing, neutral, smiling): the binary task reads them as `expressive` (--label-map grinning=LABEL reads one as a training label)"
        ),
        "{err}"
    );
    // Read as the run's `smiling`: no such warning, and the same two images scored.
    let (code, _, err) =
        run(&["evaluate", "--model", "runs/e", "--data", "other.csv", "--device", "cpu", "--out", "ev3", "--label-map", "grinning=smiling"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("training labels") && err.contains("holds no image of class `neutral`"), "{err}");
    assert_eq!(json(&d.path().join("ev3/metrics.json"))["metrics"]["n"], 2);
    assert!(err.contains("warning: the data holds no image of class `neutral`: its scores cover the other class(es) alone"), "{err}");
    assert!(out.contains("2 images from") && out.contains("ROC AUC                       –") && !out.contains("NaN"), "{out}");
    // The run's own labels: neither warning.
    let (code, _, err) = run(&["evaluate", "--model", "runs/e", "--data", m.to_str().unwrap(), "--device", "cpu", "--out", "ev2"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("training labels") && !err.contains("holds no image of class"), "{err}");
}

/// Every visible option of every subcommand, with its help text (None: missing).
fn all_options() -> Vec<(String, String, Option<String>)> {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
        for a in cmd.get_arguments() {
            if a.is_hide_set() || matches!(a.get_id().as_str(), "help" | "version") {
                continue;
            }
            let name = a.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| format!("<{}>", a.get_id()));
            out.push((path.to_string(), name, a.get_help().map(|h| h.to_string())));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&vggft::cli::Cli::command(), "vggft", &mut out);
    out
}

#[test]
fn every_option_has_a_description_and_finetune_help_has_headings() {
    let missing: Vec<String> =
        all_options().into_iter().filter(|(_, _, h)| h.as_deref().is_none_or(|h| h.trim().is_empty())).map(|(c, n, _)| format!("{c} {n}")).collect();
    assert!(missing.is_empty(), "options without a description: {missing:?}");
    let (code, out, _) = run(&["finetune", "--help"], Path::new("."));
    assert_eq!(code, 0);
    for heading in ["Data:", "Model:", "Training:", "Augmentation:", "Cache and speed:"] {
        assert!(out.lines().any(|l| l == heading), "finetune --help lacks the heading {heading}:\n{out}");
    }
    let (_, out, _) = run(&["cv", "--help"], Path::new("."));
    assert!(out.contains("Training:") && out.contains("--top-losses"), "{out}");
}

#[test]
fn predict_recurses_streams_jsonl_and_takes_the_model_file() {
    let d = tmp();
    separable_run(d.path(), 71, 3, "p");
    std::fs::create_dir_all(d.path().join("in/deeper/deepest")).unwrap();
    std::fs::create_dir_all(d.path().join("in/empty")).unwrap();
    std::fs::copy(d.path().join("data/a/00.png"), d.path().join("in/top.png")).unwrap();
    // macOS's metadata twin of a photo on a shared drive: hidden, no photo, not read.
    std::fs::write(d.path().join("in/._top.png"), b"\x00\x05\x16\x07Mac OS X").unwrap();
    std::fs::copy(d.path().join("data/b/00.png"), d.path().join("in/deeper/mid.png")).unwrap();
    std::fs::copy(d.path().join("data/b/01.png"), d.path().join("in/deeper/deepest/low.png")).unwrap();
    // explain's heatmaps written inside the folder: -r leaves them out, naming them; named, they are read.
    std::fs::create_dir_all(d.path().join("in/heat")).unwrap();
    std::fs::copy(d.path().join("data/a/01.png"), d.path().join("in/heat/top_a.png")).unwrap();
    std::fs::write(d.path().join("in/heat/explain.csv"), "path,class\n").unwrap();
    // One level by default; -r takes every sub-folder.
    let (code, out, err) = run(&["predict", "--model", "runs/p/model.safetensors", "--device", "cpu", "in"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, out, err) = run(&["predict", "--model", "runs/p/model.safetensors", "--device", "cpu", "-r", "--format", "jsonl", "in"], d.path());
    assert_eq!(code, 0, "{err}");
    let objs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objs.len(), 3, "{out}");
    assert!(objs.iter().any(|o| o["path"].as_str().unwrap().ends_with("deepest/low.png")), "{out}");
    assert!(objs.iter().all(|o| o["probabilities"].as_object().unwrap().len() == 2), "{out}");
    assert!(
        err.contains("skipped in/heat: vggft's own output") && err.contains("name it on the command line to read it") && !out.contains("top_a.png"),
        "{err}\n{out}"
    );
    let (code, out, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "-r", "in/heat"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() == 1 && out.contains("top_a.png") && !err.contains("skipped"), "{err}\n{out}");
    // `-` takes the paths piped in (one per line, or NUL-separated as
    // `find -print0` writes them) beside those given, in one call.
    let piped = |stdin: &[u8], extra: &[&str]| {
        use std::io::Write;
        let mut c = bin()
            .args(["predict", "--model", "runs/p", "--device", "cpu"])
            .args(extra)
            .current_dir(d.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = c.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, out, err) = piped(b"in/deeper/mid.png\r\n\nin/deeper\n", &["in/top.png", "-"]);
    assert_eq!(code, 0, "{err}");
    let named: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(named, ["in/top.png", "in/deeper/mid.png", "in/deeper/mid.png"], "{out}");
    // A first name that begins as a picture's magic does (`BM…`, a BMP's; `P5…`, a PGM's) is a name.
    std::fs::copy(d.path().join("in/top.png"), d.path().join("BMW.png")).unwrap();
    std::fs::copy(d.path().join("in/top.png"), d.path().join("P5.png")).unwrap();
    let (code, out, err) = piped(b"BMW.png\nP5.png\n", &["-"]);
    assert!(code == 0 && out.lines().count() == 2, "{err}");
    let (code, out, err) = piped(b"P5.png\n", &["-"]);
    assert!(code == 0 && out.starts_with("P5.png\t"), "{err}");
    let (code, out, err) = piped(b"in/top.png\0in/deeper/deepest/low.png\0", &["-"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() == 2 && out.contains("deepest/low.png\t"), "{out}");
    let photo = std::fs::read(d.path().join("in/top.png")).unwrap();
    for (stdin, said) in [(&photo[..], "holds a picture or archive, not a list of paths"), (b"\n\n", "lists no paths")] {
        let (code, out, err) = piped(stdin, &["-"]);
        assert!(code == 1 && out.is_empty() && err.contains(&format!("error: standard input (-): {said}")), "{code} {err}");
    }
    // A line break or tab in a file name stays inside its one text line, escaped.
    std::fs::create_dir_all(d.path().join("odd")).unwrap();
    std::fs::copy(d.path().join("data/a/00.png"), d.path().join("odd/fake\nline\tb.png")).unwrap();
    let (code, out, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "odd"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() == 1 && out.starts_with("odd/fake\\nline\\tb.png\t") && out.split('\t').count() == 3, "{out}");
    // So does its error on stderr: one line per problem, the name escaped.
    std::fs::write(d.path().join("odd/broken\nerror: fake.png"), b"not an image").unwrap();
    let (code, _, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "odd/broken\nerror: fake.png"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("odd/broken\\nerror: fake.png: ") && !err.lines().any(|l| l.starts_with("error: fake")), "{err}");
    // A folder without images is said to be one, not counted as a broken image.
    let (code, _, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "in/empty"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("in/empty: folder holds no images") && err.contains("1 folder(s) held no images") && !err.contains("image(s) could not be predicted"),
        "{err}"
    );
    // The model given as an input (`predict RUN photo`): refused before any
    // answer, not its learning curves predicted as a face by runs/latest.
    for (cmd, model) in [("predict", "runs/p"), ("predict", "runs"), ("explain", "runs/p")] {
        let mut argv = vec![cmd, model, "in/top.png", "--device", "cpu"];
        if cmd == "explain" {
            argv.extend(["--out", "heat2"]);
        }
        let (code, out, err) = run(&argv, d.path());
        assert!(code == 1 && out.is_empty() && !d.path().join("heat2").exists(), "{cmd} {model}: {code} {out} {err}");
        assert!(err.starts_with(&format!("error: {model}: is a trained model (a run folder), not photos: give it as --model {model}")), "{err}");
    }
    // Met by -r, a run is skipped without the offer to name it.
    std::fs::create_dir_all(d.path().join("in2/run")).unwrap();
    std::fs::copy(d.path().join("in/top.png"), d.path().join("in2/top.png")).unwrap();
    for f in ["config.json", "split.csv", "learning_curves.png"] {
        std::fs::copy(d.path().join("runs/p").join(f), d.path().join("in2/run").join(f)).unwrap();
    }
    let (code, out, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "-r", "in2"], d.path());
    assert!(code == 0 && out.lines().count() == 1, "{err}\n{out}");
    assert!(err.contains("skipped in2/run: vggft's own output") && !err.contains("name it"), "{err}");
    let (code, _, err) = run(&["evaluate", "runs/p", "--device", "cpu"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: runs/p: is a trained model (a run folder), not a labelled dataset: `vggft evaluate --model runs/p DATA`"), "{err}");
    // A web address: said to be one, the other input still answered.
    let (code, out, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "https://example.com/a.jpg", "in/top.png"], d.path());
    assert!(code == 1 && out.lines().count() == 1, "{err}");
    assert!(err.contains("https://example.com/a.jpg: is a web address: vggft reads local files"), "{err}");
    // Class folders given without -r: where the images are is said.
    let (code, _, err) = run(&["predict", "--model", "runs/p", "--device", "cpu", "data"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("data: folder holds no images itself, its sub-folders do (a, b): -r (--recursive) reads them"), "{err}");
}

#[test]
fn cv_refuses_options_it_would_ignore_and_predict_takes_threads() {
    let d = tmp();
    for (flag, value) in [("--val", "subjects:0.3"), ("--val-subjects", "P01"), ("--patience", "3"), ("--keep", "best")] {
        let (code, _, err) = run(&["cv", "--data", "x.csv", flag, value], d.path());
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(&format!("{flag} does not apply")), "{flag}: {err}");
    }
    // Nor does cv --help offer them; finetune --help does.
    let (_, cv_help, _) = run(&["cv", "--help"], d.path());
    let (_, ft_help, _) = run(&["finetune", "--help"], d.path());
    for flag in ["--val ", "--val-subjects", "--patience", "--keep"] {
        assert!(!cv_help.contains(flag) && ft_help.contains(flag), "{flag}:\n{cv_help}");
    }
    let (code, _, err) = run(&["predict", "x.png", "--threads", "0"], d.path());
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["evaluate", "--data", "d", "--threads", "2000"], d.path());
    assert_eq!(code, 2, "{err}");
}

#[test]
fn report_shows_data_and_weights_when_they_differ() {
    let d = tmp();
    std::fs::create_dir_all(d.path().join("a")).unwrap();
    std::fs::create_dir_all(d.path().join("b")).unwrap();
    let a = subject_dataset(&d.path().join("a"), 3, 32);
    let b = subject_dataset(&d.path().join("b"), 4, 32);
    let w1 = d.path().join("w1.safetensors");
    let w2 = d.path().join("w2.safetensors");
    trunk_only(&w1, 81);
    trunk_only(&w2, 82);
    for (name, data, w) in [("ra", &a, &w1), ("rb", &b, &w2), ("rc", &a, &w1)] {
        let (code, _, err) =
            run(&args(&small(w), &["finetune", "--data", data.to_str().unwrap(), "--stages", "head:1", "--name", name, "--val", "subjects:0.34"]), d.path());
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&["report", "runs/ra", "runs/rb"], d.path());
    assert_eq!(code, 0, "{err}");
    for row in ["| data.path |", "| data.sha256 |", "| weights.path |", "| weights.sha256 |"] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    let (_, out, _) = run(&["report", "runs/ra", "runs/rc"], d.path());
    assert!(!out.contains("| data.path |") && !out.contains("| weights.sha256 |"), "the same data and weights are not rows:\n{out}");
    assert!(!out.contains("validation.held_out"), "the same holdout is no row, and no note:\n{out}");
    // Another split of the same images (another seed), and a cv of them, are the same data.
    let (code, _, err) = run(
        &args(&small(&w1), &["finetune", "--data", a.to_str().unwrap(), "--stages", "head:1", "--name", "rs", "--val", "subjects:0.34", "--seed", "2"]),
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let split = |r: &str| std::fs::read_to_string(d.path().join("runs").join(r).join("split.csv")).unwrap();
    assert_ne!(split("ra"), split("rs"), "seed 2 splits the people otherwise");
    let (code, _, err) = run(&args(&small(&w1), &["cv", "--data", a.to_str().unwrap(), "--stages", "head:1", "--folds", "3", "--out", "cv-a"]), d.path());
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["report", "runs/ra", "runs/rs", "cv-a"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("sha256") && !out.contains("| data.path |"), "one data fingerprint for all three:\n{out}");
    // The cv's folds and seeds as they are given on the command line.
    assert!(out.contains("| cv.folds | – | – | 3 |") && out.contains("| cv.seeds | – | – | 0 |"), "{out}");
    // What each figure measures: two holdouts of people and a cv over people.
    assert!(out.contains("| **protocol** | holdout, subject-grouped | holdout, subject-grouped | cv, subject-grouped |"), "{out}");
    // Whom each run held out: one person each, another one (the row and a note that says what it means).
    let held = out.lines().find(|l| l.starts_with("| validation.held_out |")).unwrap_or_default();
    let cells: Vec<&str> = held.split(" | ").collect();
    assert!(cells.len() == 4 && cells[1].starts_with("1 person (P0") && cells[2].starts_with("1 person (P0") && cells[1] != cells[2], "{out}");
    assert!(out.contains("\n(the runs' figures are on different held-out people or images (validation.held_out): one holdout each, not comparable one to one; `vggft cv` scores recipes on the same folds)\n"), "{out}");
    std::fs::remove_dir_all(d.path().join("runs/rs")).unwrap();
    // Evaluations beside their run: on other people's photos, and on its own training data (said to be not
    // held out); each on the data it scored, and named by the run it scored.
    std::fs::create_dir_all(d.path().join("c")).unwrap();
    let c = subject_dataset(&d.path().join("c"), 3, 40);
    for (data, out) in [(&c, "ev-c"), (&a, "ev-a")] {
        let (code, _, err) = run(&["evaluate", "--model", "runs/ra", "--data", data.to_str().unwrap(), "--out", out, "--device", "cpu"], d.path());
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&["report", "runs/ra", "ev-c", "ev-a/metrics.json"], d.path());
    assert_eq!(code, 0, "{err}");
    let row = |name: &str| out.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_default().to_string();
    assert!(out.starts_with("| | ra | ev-c | ev-a |\n"), "{out}");
    assert_eq!(row("**protocol**"), "| **protocol** | holdout, subject-grouped | evaluate: none of the run's training images | evaluate: 4 of the run's training images among them (not held out) |", "{out}");
    let (a_abs, c_abs) = (std::fs::canonicalize(&a).unwrap(), std::fs::canonicalize(&c).unwrap());
    assert_eq!(row("data.path"), format!("| data.path | {} | {} | {} |", a_abs.display(), c_abs.display(), a_abs.display()), "{out}");
    let ra = std::fs::canonicalize(d.path().join("runs/ra")).unwrap();
    assert_eq!(row("evaluated_run"), format!("| evaluated_run | – | {} | {} |", ra.display(), ra.display()), "{out}");
    assert!(row("**balanced_accuracy**").split('|').filter(|c| c.trim().parse::<f64>().is_ok()).count() == 3, "{out}");
    // A run's own file stands for its run.
    let (code, out, err) = run(&["report", "runs/ra/model.safetensors", "runs/rb/config.json"], d.path());
    assert!(code == 0 && out.starts_with("| | ra | rb |\n"), "{err}\n{out}");
    // The folder of runs: each run once (not again as `latest`).
    let (code, out, err) = run(&["report", "runs"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | ra | rb | rc |\n"), "{out}");
    // A run given again beside its folder, or by another path: one column.
    let (code, out, err) = run(&["report", "runs/rc", "runs", "./runs/../runs/rc"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | rc | ra | rb |\n"), "{out}");
    // A run still training (no metrics.json yet) beside them is left out and named; alone it is said to be unfinished.
    let copy = d.path().join("runs/rd");
    std::fs::create_dir(&copy).unwrap();
    for f in ["config.json", "split.csv"] {
        std::fs::copy(d.path().join("runs/rc").join(f), copy.join(f)).unwrap();
    }
    let (code, out, err) = run(&["report", "runs"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | ra | rb | rc |\n") && out.contains("\n(left out, not finished: rd)\n"), "{out}");
    let (code, _, err) = run(&["report", "runs/rd"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs/rd: is a run that has not finished (no metrics.json yet): ") && err.contains("vggft finetune --resume runs/rd"), "{err}");
    // A run whose metrics.json is broken: left out of its folder's report, named with the problem; named itself, an error.
    std::fs::write(copy.join("metrics.json"), "{\"val\": ").unwrap();
    let (code, out, err) = run(&["report", "runs"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | ra | rb | rc |\n") && out.contains("\n(left out, unreadable: runs/rd/metrics.json: is not valid JSON"), "{out}");
    let (code, _, err) = run(&["report", "runs/rd"], d.path());
    assert_eq!(code, 1);
    assert!(err.starts_with("error: runs/rd/metrics.json: is not valid JSON"), "{err}");
    std::fs::remove_file(copy.join("metrics.json")).unwrap();
    // A cv with folds still to run: what finishes it.
    std::fs::create_dir_all(d.path().join("cv-open/folds")).unwrap();
    std::fs::write(d.path().join("cv-open/cv-config.json"), "{}").unwrap();
    let (code, _, err) = run(&["report", "runs/ra", "cv-open"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("cv-open: is a cross-validation whose summary (cv.json) is not written yet") && err.contains("vggft cv --collect cv-open --partial"),
        "{err}"
    );
    let (code, _, err) = run(&["report", "a"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("a: is neither a run folder (config.json), a cv folder (cv.json), an evaluate folder (metrics.json) nor a folder of them"), "{err}");
    // Two runs of one name in different folders: each column named by its path.
    std::fs::create_dir(d.path().join("more")).unwrap();
    copy_dir(&d.path().join("runs/ra"), &d.path().join("more/ra"));
    let (code, out, err) = run(&["report", "runs/ra", "more/ra"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | runs/ra | more/ra |\n"), "{out}");
    std::fs::remove_dir_all(d.path().join("more")).unwrap();
    // No folder given: `runs`, where finetune and cv write.
    let (code, out, err) = run(&["report"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| | ra | rb | rc |\n"), "{out}");
    // The folder above the runs: its cv and evaluations are read, and the folder of runs inside it is named, not read.
    let (code, out, err) = run(&["report", "."], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("| | cv-a | ev-a | ev-c |\n")
            && out.contains("(not read, a folder of runs inside a folder given: runs holds runs: `vggft report runs`)"),
        "{out}"
    );
    // Without a run or cv of its own, the folder above the runs is refused with where they are.
    let up = d.path().join("project");
    std::fs::create_dir(&up).unwrap();
    std::fs::rename(d.path().join("runs"), up.join("runs")).unwrap();
    let (code, _, err) = run(&["report", "project"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "project: is neither a run folder (config.json), a cv folder (cv.json), an evaluate folder (metrics.json) nor a folder of them; project/runs holds runs: `vggft report project/runs`"
        ),
        "{err}"
    );
    let (code, _, err) = run(&["report"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("runs: does not exist (give run or cv folders, or a folder of them: finetune and cv write theirs into `runs`)"), "{err}");
}

#[test]
fn long_steps_say_so_when_stderr_is_not_a_terminal() {
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let s = small_trunk(d.path(), 91);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1,conv5:1", "--val", "none"]), d.path());
    assert_eq!(code, 0, "{err}");
    let line = err.lines().position(|l| l.starts_with("caching the frozen conv4 output: ") && l.ends_with("image(s)…"));
    let done = err.lines().position(|l| l.starts_with("cached the frozen conv4 output"));
    assert!(line.is_some() && done.is_some() && line < done, "a line before the cache pass and one after it:\n{err}");
    assert!(err.contains("epoch   1/2 [head+] lr") && err.contains("epoch   2/2 [conv5+] lr"), "each epoch line says of how many:\n{err}");
    // 128 px, so that 1 MiB holds fewer than the 64 views asked for.
    let w = d.path().join("trunk.safetensors");
    let big = ["--weights", w.to_str().unwrap(), "--width-div", "16", "--image-size", "128", "--device", "cpu", "--threads", "2"];
    let many = ["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1,conv5:1", "--val", "none", "--cache-views", "64", "--cache-mem", "1"];
    let (code, _, err) = run(&[&many[..], &big[..]].concat(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--cache-mem 1 MiB holds ") && err.contains(" of the 64 augmented views asked for"), "fewer views than asked for are said:\n{err}");
    // Said on a CPU with AMX-BF16 (where bf16 ran ~4x faster), never elsewhere or when bf16 is asked for.
    assert_eq!(err.contains("this CPU has AMX-BF16: --precision bf16"), (vggft::model::CpuBf16::detect() == vggft::model::CpuBf16::Amx), "{err}");
    assert!(!err.contains("no bfloat16 arithmetic"), "a float32 run is not warned: {err}");
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--precision", "bf16", "--name", "b16"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("this CPU has AMX-BF16"), "{err}");
    // Warned where libtorch emulates bf16 (~10x slower), never elsewhere.
    let emulated = vggft::model::CpuBf16::detect() == vggft::model::CpuBf16::Emulated;
    assert_eq!(err.contains("warning: this CPU has no bfloat16 arithmetic"), emulated, "{err}");
    let (code, _, err) = run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1,conv5:1", "--val", "none", "--quiet"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("caching"), "--quiet stays quiet: {err}");
    assert!(err.contains("weights: ") && err.contains("tensors loaded"), "--quiet still says which weights: {err}");
    let (code, _, err) = run(&args(&s, &["cv", "--data", m.to_str().unwrap(), "--folds", "loso", "--stages", "head:1", "--out", "cvp"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("seed 0 fold 0 (P00): 2 test images") && err.contains("left (3 fold(s))") && err.contains("left (1 fold(s))"),
        "cv says how long is left:\n{err}"
    );
    let (code, _, err) = run(&args(&s, &["lr-find", "--data", m.to_str().unwrap(), "--steps", "20", "--out", "lrf"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("lr-find sweep: 20 step(s)…"), "{err}");
    let (code, _, err) = run(&["predict", "--model", "runs/latest", "--device", "cpu", "--batch-size", "3", d.path().to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("predicting: 8 image(s)…").count(), 1, "one line for a folder of 8 in batches of 3: {err}");
}

/// `vggft finetune jaffe/*` — a shell's list of photos where one dataset
/// goes — is refused as a list, naming the folder (clap said "unexpected
/// argument 'jaffe/KA.AN2.40.tiff' found"); a quoted `*` is said not to be
/// expanded.
#[test]
fn a_list_of_photos_given_as_the_dataset_is_refused_as_one() {
    let d = tmp();
    separable_folders(&d.path().join("data"), 3, 16);
    let photos: Vec<String> = (0..3).map(|i| format!("data/a/{i:02}.png")).collect();
    let photos: Vec<&str> = photos.iter().map(String::as_str).collect();
    for (command, extra) in [("finetune", vec![]), ("cv", vec![]), ("lr-find", vec![]), ("evaluate", vec![]), ("faces", vec!["--out", "f"])] {
        for given in [&photos[..], &[&["--data"][..], &photos[..]].concat()[..]] {
            let (code, _, err) = run(&[&[command][..], given, &extra[..]].concat(), d.path());
            assert_eq!(code, 2, "{command} {given:?}: {err}");
            assert!(
                err.starts_with(&format!(
                    "error: {command} reads one dataset, a folder or a CSV manifest, and was given 3 paths (`data/a/00.png`, `data/a/01.png`, `data/a/02.png`): a shell expands an unquoted `*` into the files it matches; give the folder that holds the photos (--data data/a)"
                )),
                "{command} {given:?}: {err}"
            );
        }
    }
    // Two folders, or --data beside the dataset as a word: one of them.
    let (code, _, err) = run(&["cv", "data/a", "--data", "data/b"], d.path());
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "error: cv reads one dataset, a folder or a CSV manifest, and was given 2 paths (`data/b`, `data/a`): give one of them, as --data or as a word"
        ),
        "{err}"
    );
    // A `*` no shell expanded (quoted): vggft does not either, and says where the photos would be.
    let (code, _, err) = run(&["finetune", "data/a/*.png", "--random-init", "--width-div", "16", "--image-size", "32", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "/data/a/*.png: not found: no folder or file of that name (vggft does not expand `*` or `?`: give the folder that holds the photos, --data /"
        ) && err.trim().ends_with("/data/a)")
            && err.lines().count() == 1,
        "{err}"
    );
    // One dataset, as a word or as --data, still reads.
    for given in [&["data"][..], &["--data", "data"][..]] {
        let (code, _, err) = run(&[&["faces"][..], given, &["--out", "f1"][..]].concat(), d.path());
        assert_eq!(code, 0, "{given:?}: {err}");
        std::fs::remove_dir_all(d.path().join("f1")).unwrap();
    }
}

#[test]
fn flag_names_read_as_fastai_users_expect_and_old_names_still_work() {
    use clap::Parser;
    use vggft::cli::{Cli, Command};
    let parse = |a: &[&str]| match Cli::try_parse_from([&["vggft", "finetune"][..], a].concat()).unwrap().command {
        Command::Finetune(f) => f,
        _ => unreachable!(),
    };
    let f = parse(&["--layout", "folders", "--freeze-epochs", "2", "--epochs", "5", "--flip"]);
    assert_eq!(f.data.format, vggft::data::scan::DataFormat::Folders);
    assert_eq!(f.train.flip, Some(true), "--flip alone turns flips on");
    let stages = f.train.to_config().unwrap().stages;
    assert_eq!(vggft::train::describe_stages(&stages), "head:2 → conv5:5");
    let old = parse(&["--format", "folders", "--warmup-epochs", "2", "--flip", "false"]);
    assert_eq!(old.data.format, vggft::data::scan::DataFormat::Folders);
    assert_eq!(old.train.warmup_epochs, Some(2));
    assert_eq!(old.train.flip, Some(false));
    let (_, help, _) = run(&["finetune", "--help"], Path::new("."));
    let listed = |flag: &str| help.lines().any(|l| l.trim_start().starts_with(flag));
    assert!(listed("--layout") && listed("--freeze-epochs") && !listed("--warmup-epochs") && !listed("--format"), "old names stay hidden aliases:\n{help}");
}

/// Library errors name a setting; the binary writes it as a flag, which must
/// be a real option of some subcommand.
#[test]
fn every_setting_an_error_can_name_is_a_flag_or_a_config_field() {
    use clap::CommandFactory;
    use vggft::error::Setting;
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        out.extend(cmd.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")));
        cmd.get_subcommands().for_each(|s| walk(s, out));
    }
    let mut flags = std::collections::BTreeSet::new();
    walk(&vggft::cli::Cli::command(), &mut flags);
    for &s in Setting::ALL {
        let f = vggft::cli::flag(s);
        if f.starts_with("--") {
            assert!(flags.contains(&f), "{s:?} is rendered as {f}, which no subcommand has");
        } else {
            assert_eq!(f, s.name(), "{s:?}");
        }
    }
    let e = vggft::Error::invalid(Setting::BatchSize, "must be at least 2, got 0");
    assert_eq!(e.to_string(), "invalid batch_size must be at least 2, got 0");
    assert_eq!(vggft::cli::render(&e), "invalid option: --batch-size must be at least 2, got 0");
    let e = vggft::Error::invalid(Setting::Features, ": the vgg head takes conv5 only");
    assert_eq!(vggft::cli::render(&e), "invalid option: --features: the vgg head takes conv5 only");
}

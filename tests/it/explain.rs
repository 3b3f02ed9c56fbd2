//! `vggft explain`: Grad-CAM finds the one region that carries the label;
//! sheets, means and arrays are written; every head, BN mode and feature
//! option can be explained.

use std::path::Path;

use crate::common::*;

/// Square-in-the-lower-left task: class `square` has a bright square
/// somewhere in the lower-left quadrant, `plain` has none; backgrounds are a
/// random flat gray with faint noise, so the square is the only cue.
fn quadrant_task(root: &Path, per_class: usize, seed: u32, size: u32) {
    squares_task(root, per_class, seed, size, &[("square", &[(2, 250)]), ("plain", &[])]);
}

/// Class folders whose images each hold a square of each gray level its
/// class names, somewhere in the quadrant named with it (0 top-left, 1
/// top-right, 2 bottom-left, 3 bottom-right), on a random flat gray with
/// faint noise.
fn squares_task(root: &Path, per_class: usize, seed: u32, size: u32, classes: &[(&str, &[(u32, u8)])]) {
    for (class, quadrants) in classes {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class as u32 {
            let h = |k: u32| (i * 7919 + seed * 104_729 + k * 31).wrapping_mul(2_654_435_761) >> 16;
            let level = 60 + h(1) % 80;
            let k = size / 5;
            let at = |j: u32, q: u32| ((q % 2) * size / 2 + 2 + h(2 + 2 * j) % (size / 2 - k - 4), (q / 2) * size / 2 + 2 + h(3 + 2 * j) % (size / 2 - k - 4));
            let squares: Vec<((u32, u32), u8)> = quadrants.iter().enumerate().map(|(j, &(q, gray))| (at(j as u32, q), gray)).collect();
            gray_png(&root.join(class).join(format!("{i:02}.png")), size, size, |x, y| {
                match squares.iter().find(|&&((sx, sy), _)| x >= sx && x < sx + k && y >= sy && y < sy + k) {
                    Some(&(_, gray)) => gray,
                    None => (level + (x * 13 + y * 7 + i * 3) % 20) as u8 - 10,
                }
            });
        }
    }
}

/// Mean heat fraction per quadrant (top-left, top-right, bottom-left, bottom-right).
fn mean_quadrants(dir: &Path, size: usize) -> [f64; 4] {
    let mut sum = [0.0; 4];
    let mut n = 0.0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            let t = vggft::model::weights::read_tensors(&e.path()).unwrap();
            let heat = t.iter().find(|(k, _)| k == "heat").unwrap().1.shallow_clone();
            let v = Vec::<f32>::try_from(heat.view([-1])).unwrap();
            let q = vggft::eval::explain::quadrant_mass(&v, size);
            (0..4).for_each(|i| sum[i] += q[i]);
            n += 1.0;
        }
    }
    assert!(n > 0.0, "no arrays in {}", dir.display());
    sum.map(|s| s / n)
}

#[test]
fn grad_cam_puts_the_heat_on_the_region_that_carries_the_label() {
    let d = tmp();
    quadrant_task(&d.path().join("train"), 40, 0, 128);
    quadrant_task(&d.path().join("test"), 12, 1, 128);
    let (code, _, err) = run(
        &[
            "finetune",
            "--data",
            "train",
            "--task",
            "multiclass",
            "--random-init",
            "--width-div",
            "16",
            "--image-size",
            "128",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--stages",
            "head:2,conv1:15",
            "--lr",
            "0.03",
            "--augment",
            "none",
            "--val",
            "none",
            "--name",
            "q",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["evaluate", "--model", "runs/q", "--data", "test", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let bacc: f64 = out.lines().find_map(|l| l.trim().strip_prefix("balanced accuracy")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    assert!(bacc >= 0.9, "the model must have learnt the square first: {out}");
    // Measured on this data: conv5 (4×4 map) lower-left 0.386 vs at most 0.245
    // elsewhere; conv3 (16×16) 0.599 vs at most 0.170. Asserted with about
    // half of each margin to spare.
    for (layer, margin) in [("conv5", 0.08), ("conv3", 0.25)] {
        let ex = d.path().join(format!("ex-{layer}"));
        let (code, _, err) = run(
            &[
                "explain",
                "test/square",
                "--model",
                "runs/q",
                "--layer",
                layer,
                "--class",
                "square",
                "--out",
                ex.to_str().unwrap(),
                "--arrays",
                "--device",
                "cpu",
            ],
            d.path(),
        );
        assert_eq!(code, 0, "{err}");
        let q = mean_quadrants(&ex, 128);
        eprintln!("{layer}: heat per quadrant (TL, TR, BL, BR) {q:.3?}");
        let others = q[0].max(q[1]).max(q[3]);
        assert!(q[2] > others + margin, "{layer}: lower-left {:.3} vs the others' largest {others:.3}", q[2]);
    }
}

/// `--class` of a raw label (a head trained on raw labels): the heat is that
/// label's own, not its class's. Two raw labels make one class here
/// (`light`: a white square, `dark`: a black one; both `expressive` against
/// `neutral`'s none). Each label's heat differs from the other's and from
/// the class's, its probability is its share of the class's, and the label
/// names the lines, explain.csv and the mean. (That the heat is exactly
/// Grad-CAM of the label's logit, PyTorch checks: `scripts/gradcam_check.py`.)
#[test]
fn a_raw_label_is_explained_by_its_own_heat() {
    let d = tmp();
    let classes: [(&str, &[(u32, u8)]); 3] = [("neutral", &[]), ("light", &[(0, 250)]), ("dark", &[(3, 5)])];
    squares_task(&d.path().join("train"), 8, 0, 64, &classes);
    squares_task(&d.path().join("test"), 4, 1, 64, &[("both", &[(2, 250), (1, 5)])]);
    let (code, _, err) = run(
        &[
            "finetune",
            "--data",
            "train",
            "--random-init",
            "--width-div",
            "16",
            "--image-size",
            "64",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--stages",
            "head:2,conv3:4",
            "--augment",
            "none",
            "--val",
            "none",
            "--name",
            "r",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&d.path().join("runs/r/config.json"))["raw_classes"], serde_json::json!(["dark", "light", "neutral"]));
    // Each image's heat, the explained label's probability and the class probabilities.
    let explain = |class: &str| -> (String, Vec<(Vec<f32>, f64, Vec<f64>)>) {
        let ex = d.path().join(format!("ex-{class}"));
        let a = [
            "explain",
            "test/both",
            "--model",
            "runs/r",
            "--class",
            class,
            "--layer",
            "conv3",
            "--out",
            ex.to_str().unwrap(),
            "--arrays",
            "--mean",
            "--device",
            "cpu",
        ];
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        let csv = std::fs::read_to_string(ex.join("explain.csv")).unwrap();
        assert!(csv.lines().skip(1).all(|l| l.split(',').nth(1) == Some(class)), "explain.csv names what was explained: {csv}");
        assert!(ex.join(format!("mean_{class}.png")).exists());
        let mut files: Vec<_> =
            std::fs::read_dir(&ex).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "safetensors")).collect();
        files.sort();
        let arrays = files
            .iter()
            .map(|p| {
                let t = vggft::model::weights::read_tensors(p).unwrap();
                let get = |k: &str| t.iter().find(|(n, _)| n == k).map(|(_, t)| Vec::<f64>::try_from(t.view([-1]).to_kind(tch::Kind::Double)).unwrap());
                let heat = get("heat").unwrap().iter().map(|&v| v as f32).collect();
                let probs = get("probs").unwrap();
                (heat, get("raw_prob").map_or(probs[1], |p| p[0]), probs)
            })
            .collect();
        (out, arrays)
    };
    let (out, light) = explain("light");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("test/")).collect();
    assert!(lines.len() == 4 && lines.iter().all(|l| l.contains("\tlight 0.")), "each line names the raw label and its probability: {out}");
    let (_, dark) = explain("dark");
    let (_, class) = explain("expressive");
    let differ = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    for ((l, d), c) in light.iter().zip(&dark).zip(&class) {
        assert!((l.1 + d.1 - c.1).abs() < 1e-6, "P(light) {} + P(dark) {} = P(expressive) {}", l.1, d.1, c.1);
        assert_eq!(l.2, c.2, "the class probabilities are the same whatever is explained");
        eprintln!(
            "largest heat differences: light-dark {:.3}, light-class {:.3}, dark-class {:.3}; P(light) {:.3} P(dark) {:.3}",
            differ(&l.0, &d.0),
            differ(&l.0, &c.0),
            differ(&d.0, &c.0),
            l.1,
            d.1
        );
        assert!(differ(&l.0, &d.0) > 0.05 && differ(&l.0, &c.0) > 0.05 && differ(&d.0, &c.0) > 0.05, "three different heatmaps");
    }
    // JAFFE's and KDEF's codes name what their files were read as (`NE`: neutral), as --label-map takes them.
    let (code, out, err) = run(&["explain", "test/both", "--model", "runs/r", "--class", "ne", "--out", "ex-ne", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().filter(|l| l.starts_with("test/")).all(|l| l.contains("\tneutral 0.")), "{out}");
    // Neither a class nor a raw label: both lists said.
    let (code, _, err) = run(&["explain", "test/both", "--model", "runs/r", "--class", "grey", "--out", "ex-grey", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--class grey: the run's classes are neutral, expressive; its raw labels (each explained alone) are dark, light, neutral"), "{err}");
}

#[test]
fn explain_writes_heatmaps_a_sheet_means_and_works_for_every_model_option() {
    let d = tmp();
    let w = d.path().join("vgg16.safetensors");
    torchvision_like(&w, false, 41);
    let s = small(&w);
    let m = subject_dataset(d.path(), 4, 32);
    let variants: [&[&str]; 5] = [
        &["--head", "bn"],
        &["--head", "linear", "--features", "conv4,conv5"],
        &["--head", "vgg"],
        &["--head", "bn", "--subject-norm", "on"],
        &["--head", "bn", "--precision", "bf16"],
    ];
    for (k, v) in variants.iter().enumerate() {
        let name = format!("v{k}");
        let mut a = args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1,conv5:1", "--val", "none", "--name", &name, "--quiet"]);
        a.extend_from_slice(v);
        let (code, _, err) = run(&a, d.path());
        assert_eq!(code, 0, "{v:?}: {err}");
        let out = d.path().join(format!("ex{k}"));
        let (code, stdout, err) = run(
            &[
                "explain",
                d.path().join("s00_neutral.png").to_str().unwrap(),
                d.path().join("s00_smiling.png").to_str().unwrap(),
                d.path().join("s01_smiling.png").to_str().unwrap(),
                "--model",
                &format!("runs/{name}"),
                "--out",
                out.to_str().unwrap(),
                "--mean",
                "--device",
                "cpu",
            ],
            d.path(),
        );
        assert_eq!(code, 0, "{v:?}: {err}");
        assert!(stdout.contains("heatmaps of") && out.join("sheet.png").is_file() && out.join("explain.csv").is_file(), "{v:?}: {stdout}");
        let pngs = std::fs::read_dir(&out).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".png")).count();
        assert!(pngs >= 3, "{v:?}: per-image PNGs, a sheet and a mean: {pngs}");
        let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
        assert!(csv.lines().count() > 1 && !csv.contains("NaN"), "{csv}");
        if v.contains(&"on") {
            assert!(err.contains("single-image head") && err.contains("--tta none gives these"), "{err}");
            // The numbers it explains are predict's single-image answer without flip TTA.
            let photo = d.path().join("s00_neutral.png");
            let (code, out, err) = run(
                &["predict", photo.to_str().unwrap(), "--model", &format!("runs/{name}"), "--tta", "none", "--format", "json", "--device", "cpu"],
                d.path(),
            );
            assert_eq!(code, 0, "{err}");
            let p: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(p[0]["mode"], "single-image", "{out}");
            let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
            let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
            assert_eq!(header.iter().filter(|h| h.starts_with("p_")).count(), 2, "{csv}");
            for (i, h) in header.iter().enumerate().filter(|(_, h)| h.starts_with("p_")) {
                let want = p[0]["probabilities"][&h[2..]].as_f64().unwrap();
                let got: f64 = row[i].parse().unwrap();
                assert!((got - want).abs() < 1e-4, "{h}: explain {got} vs predict --tta none {want}");
            }
        }
    }
    // Batch BN modes explain too (--bn train keeps BatchNorm in the trunk).
    let bn = d.path().join("bn.safetensors");
    torchvision_like(&bn, true, 5);
    let (code, _, err) = run(
        &[
            "finetune",
            "--data",
            m.to_str().unwrap(),
            "--weights",
            bn.to_str().unwrap(),
            "--bn",
            "train",
            "--width-div",
            "16",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--stages",
            "head:1",
            "--val",
            "none",
            "--name",
            "bnt",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run(&["explain", d.path().join("s01_neutral.png").to_str().unwrap(), "--model", "runs/bnt", "--out", "exbn", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    // Errors name the problem.
    let (code, _, err) = run(
        &["explain", d.path().join("s01_neutral.png").to_str().unwrap(), "--model", "runs/v0", "--class", "nope", "--out", "x1", "--device", "cpu"],
        d.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--class nope") && err.contains("neutral"), "{err}");
    // A class in another case is that class.
    let photo = d.path().join("s01_neutral.png");
    let (code, _, err) = run(&["explain", photo.to_str().unwrap(), "--model", "runs/v0", "--class", "Neutral", "--out", "x3", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &["explain", d.path().join("s01_neutral.png").to_str().unwrap(), "--model", "runs/v0", "--layer", "head", "--out", "x2", "--device", "cpu"],
        d.path(),
    );
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("--layer"), "{err}");
    // A photo with the longest name a filesystem takes (255 bytes) gets its heatmap, its name cut to fit.
    let long = d.path().join("long");
    std::fs::create_dir(&long).unwrap();
    let name = format!("{}.png", "n".repeat(251));
    std::fs::copy(d.path().join("s01_neutral.png"), long.join(&name)).unwrap();
    let (code, out, err) = run(&["explain", long.join(&name).to_str().unwrap(), "--model", "runs/v0", "--out", "exlong", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    let heat = format!("0000_{}.png", "n".repeat(200));
    assert!(d.path().join("exlong").join(&heat).is_file() && out.contains(&heat), "{out}");
    // An unreadable photo among others: named, counted as predict counts them, exit 1, the others explained.
    std::fs::write(d.path().join("broken.png"), b"not a picture").unwrap();
    let (code, out, err) = run(&["explain", "broken.png", "s01_neutral.png", "--model", "runs/v0", "--out", "exbad", "--device", "cpu"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken.png: not a recognised image format") && err.contains("1 of 2 image(s) could not be explained"), "{err}");
    assert!(out.contains("heatmaps of 1 image(s)"), "{out}");
    // Nothing explained: no claim of heatmaps.
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let (code, out, err) = run(&["explain", "empty", "--model", "runs/v0", "--out", "x3", "--device", "cpu"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("empty: folder holds no images") && out.starts_with("no image could be explained") && !out.contains("heatmaps"), "{out}\n{err}");
}

#[test]
fn explain_into_an_earlier_explain_folder_replaces_it_and_never_writes_among_the_photos() {
    let d = tmp();
    let s = small_trunk(d.path(), 43);
    let m = subject_dataset(d.path(), 4, 32);
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:1", "--val", "none", "--name", "r", "--quiet"]), d.path());
    assert_eq!(code, 0, "{err}");
    let photo = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    let explain = |extra: &[&str], inputs: &[String]| {
        let mut a = vec!["explain", "--model", "runs/r", "--device", "cpu"];
        a.extend_from_slice(extra);
        a.extend(inputs.iter().map(String::as_str));
        run(&a, d.path())
    };
    let listing = |dir: &str| {
        // Without the folder's `.lock` (kept, as a run folder's is).
        let mut v: Vec<String> =
            std::fs::read_dir(d.path().join(dir)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != ".lock").collect();
        v.sort();
        v
    };
    let (code, _, err) = explain(&["--out", "ex", "--mean", "--arrays"], &[photo("s00_neutral.png"), photo("s00_smiling.png"), photo("s01_smiling.png")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing("ex").len(), 10, "3 heatmaps, 3 arrays, the sheet, the CSV and two means: {:?}", listing("ex"));
    // A second explain of one other photo: the folder is that explain's alone.
    std::fs::write(d.path().join("ex/notes.txt"), "mine").unwrap();
    let (code, _, err) = explain(&["--out", "ex"], &[photo("s02_neutral.png")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing("ex"), ["0000_s02_neutral.png", "explain.csv", "notes.txt", "sheet.png"], "a file explain did not write stays");
    // Nothing readable: no stale sheet or heatmap beside a CSV of errors.
    let (code, _, _) = explain(&["--out", "ex"], &[photo("gone.png")]);
    assert_eq!(code, 1);
    assert_eq!(listing("ex"), ["explain.csv", "notes.txt"]);
    // A file of the user's named as a heatmap of this call: refused, kept.
    std::fs::create_dir(d.path().join("mine")).unwrap();
    std::fs::write(d.path().join("mine/0001_s01_smiling.png"), "mine").unwrap();
    let (code, _, err) = explain(&["--out", "mine"], &[photo("s00_neutral.png"), photo("s01_smiling.png")]);
    assert_eq!(code, 1);
    assert!(err.contains("mine: holds a 0001_s01_smiling.png that this command did not write"), "{err}");
    assert_eq!(listing("mine"), ["0001_s01_smiling.png"]);
    // A call stopped after its first heatmap (its explain.csv lists what it was writing, and what an
    // earlier call left): the same call again replaces that heatmap and removes the earlier one's.
    let (code, _, err) = explain(&["--out", "ex"], &[photo("s03_neutral.png")]);
    assert_eq!(code, 0, "{err}");
    let plan = "path,explained,heatmap,error,p_neutral,p_expressive\n\
                a,,ex/0000_s00_neutral.png,not recorded: the call ended early (a stop or an error); the heatmap is there if it was written before that,,\n\
                b,,ex/0001_s01_smiling.png,not recorded: the call ended early (a stop or an error); the heatmap is there if it was written before that,,\n\
                ,,ex/0000_s03_neutral.png,left by an earlier explain,,\n";
    std::fs::write(d.path().join("ex/explain.csv"), plan).unwrap();
    std::fs::write(d.path().join("ex/0000_s00_neutral.png"), "half-written").unwrap();
    std::fs::remove_file(d.path().join("ex/sheet.png")).unwrap();
    let (code, _, err) = explain(&["--out", "ex"], &[photo("s00_neutral.png"), photo("s01_smiling.png")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing("ex"), ["0000_s00_neutral.png", "0001_s01_smiling.png", "explain.csv", "notes.txt", "sheet.png"]);
    // --out the folder of the photos: refused, nothing written there.
    let photos = std::fs::create_dir(d.path().join("photos")).map(|_| d.path().join("photos")).unwrap();
    std::fs::copy(d.path().join("s03_smiling.png"), photos.join("a.png")).unwrap();
    for (out, input) in [("photos", "photos"), ("photos", "photos/a.png"), ("photos/.", "./photos")] {
        let (code, _, err) = explain(&["--out", out], &[input.to_string()]);
        assert_eq!(code, 1, "{out} {input}");
        assert!(err.contains("holds photos being explained") && err.contains("heatmaps"), "{err}");
        assert_eq!(listing("photos"), ["a.png"], "{out} {input}");
    }
    let (code, _, err) = explain(&["--out", "photos/heatmaps"], &["photos".to_string()]);
    assert_eq!(code, 0, "the folder the error suggests: {err}");
}

/// A subject-normalised model is explained as `predict` answers: a person's
/// photos through the person-normalised head (the person's statistics held
/// fixed), a photo alone through the single-image head — each line's class,
/// probability and mode those of `predict --tta none`. It explained every
/// photo through the single-image head, which on identity-dominated faces
/// disagreed with predict's answers.
#[test]
fn a_subject_normalised_model_is_explained_as_predict_answers() {
    let d = tmp();
    let s = small_trunk(d.path(), 44);
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    let m = identity_dominated(&d.path().join("data"), 6, 3, 32);
    let (code, _, err) =
        run(&args(&s, &["finetune", "--data", m.to_str().unwrap(), "--stages", "head:5", "--val", "none", "--name", "sn", "--quiet"]), d.path());
    assert_eq!(code, 0, "{err}");
    // (path, class, its probability, mode) of each line.
    let explained = |out: &str| -> Vec<(String, String, String, String)> {
        out.lines()
            .filter(|l| l.contains("\tmode="))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let (class, p) = f[1].split_once(' ').unwrap();
                (f[0].to_string(), class.to_string(), p[..5].to_string(), f.last().unwrap().to_string())
            })
            .collect()
    };
    let predicted = |out: &str| -> Vec<(String, String, String, String)> {
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let p = f[2].split(' ').find_map(|kv| kv.strip_prefix(&format!("{}=", f[1]))).unwrap();
                // As explain prints it: predict gives more decimals where a probability rounds as its threshold does.
                let p: f64 = p.parse().unwrap();
                (f[0].to_string(), f[1].to_string(), format!("{p:.3}"), f.last().unwrap().to_string())
            })
            .collect()
    };
    // The manifest as the input: its subject column gives each photo's person, for both commands.
    let (code, out, err) = run(&["explain", "--model", "runs/sn", "--device", "cpu", "--out", "ex", m.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("explained as predict answers"), "{err}");
    let e = explained(&out);
    assert_eq!(e.len(), 36, "{out}");
    assert!(e.iter().all(|r| r.3 == "mode=person"), "{out}");
    let (code, out, err) = run(&["predict", "--model", "runs/sn", "--device", "cpu", "--tta", "none", m.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(e, predicted(&out));
    // The person's answers differ from the single-image head's (else this test would not tell them apart).
    let one = d.path().join("data/p00_neutral_0.png");
    // --threads as the other commands take it.
    let (code, out, err) = run(&["explain", "--model", "runs/sn", "--device", "cpu", "--threads", "1", "--out", "ex1", one.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    let alone = explained(&out);
    assert_eq!(alone.len(), 1);
    assert_eq!(alone[0].3, "mode=single-image", "{out}");
    let (code, out, err) = run(&["predict", "--model", "runs/sn", "--device", "cpu", "--tta", "none", one.to_str().unwrap()], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(alone, predicted(&out));
    // --subject and --subject-from as predict's: three photos given as one person, or each alone.
    let three: Vec<String> =
        ["p01_neutral_0.png", "p01_expressive_0.png", "p01_expressive_1.png"].iter().map(|n| d.path().join("data").join(n).display().to_string()).collect();
    for (opt, mode) in [(["--subject", "P01"], "mode=person"), (["--subject-from", "none"], "mode=single-image")] {
        let mut a = vec!["explain", "--model", "runs/sn", "--device", "cpu", "--out", "ex3", opt[0], opt[1]];
        a.extend(three.iter().map(String::as_str));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        let lines = explained(&out);
        assert!(lines.len() == 3 && lines.iter().all(|r| r.3 == mode), "{opt:?}: {out}");
        let mut a = vec!["predict", "--model", "runs/sn", "--device", "cpu", "--tta", "none", opt[0], opt[1]];
        a.extend(three.iter().map(String::as_str));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        assert_eq!(lines, predicted(&out), "{opt:?}");
    }
    // A photo given twice counts once in its person's statistics, as predict counts it: the answers of
    // a, a, b are those of a, b.
    let twice = [three[0].clone(), three[0].clone(), three[1].clone()];
    let lines = |inputs: &[String], out_dir: &str| {
        let mut a = vec!["explain", "--model", "runs/sn", "--device", "cpu", "--out", out_dir, "--subject", "P01"];
        a.extend(inputs.iter().map(String::as_str));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{err}");
        explained(&out)
    };
    let (with_repeat, once) = (lines(&twice, "ex4"), lines(&three[..2], "ex5"));
    assert_eq!(with_repeat.len(), 3);
    assert_eq!([&with_repeat[0], &with_repeat[2]], [&once[0], &once[1]]);
    assert_eq!(with_repeat[1], with_repeat[0]);
    assert!(once.iter().all(|r| r.3 == "mode=person"), "{once:?}");
    let in_person = e.iter().find(|r| r.0 == alone[0].0).unwrap();
    assert_ne!((&in_person.1, &in_person.2), (&alone[0].1, &alone[0].2), "the two heads gave the same answer");
    // evaluate's top losses take their heat through the head that scored them: each tile's picture (above
    // its caption) is explain's of the same photo among the same people.
    let (code, _, err) = run(
        &["evaluate", "--model", "runs/sn", "--device", "cpu", "--tta", "none", "--data", m.to_str().unwrap(), "--out", "ev", "--top-losses", "3"],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let csv = std::fs::read_to_string(d.path().join("ev/top_losses.csv")).unwrap();
    let picture = |p: &Path| {
        let img = image::open(p).unwrap().to_rgb8();
        let w = img.width();
        image::imageops::crop_imm(&img, 0, 0, w, w).to_image().into_raw()
    };
    let tiles: Vec<_> = std::fs::read_dir(d.path().join("ev/top_losses")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(tiles.len(), 3, "{tiles:?}");
    for (k, row) in csv.lines().skip(1).enumerate() {
        let path = row.split(',').nth(1).unwrap();
        let i = e.iter().position(|r| r.0 == path).unwrap_or_else(|| panic!("{path} not explained"));
        let explained = d.path().join("ex").join(format!("{i:04}_{}.png", Path::new(path).file_stem().unwrap().to_string_lossy()));
        let tile = d.path().join(format!("ev/top_losses/loss-{k:03}.png"));
        assert!(picture(&tile) == picture(&explained), "{} differs from {}", tile.display(), explained.display());
    }
}

/// Explain's sheet of many heatmaps comes in pages as faces' contact sheet
/// does, and a later call with fewer images leaves no page of the earlier one.
#[test]
fn a_sheet_of_many_heatmaps_comes_in_pages() {
    let d = tmp();
    separable_run(d.path(), 27, 101, "r");
    let (code, out, err) = run(&["explain", "-r", "data", "--model", "runs/r", "--device", "cpu", "--out", "ex"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("heatmaps of 202 image(s) in ex (sheet.png … sheet_2.png in 2 pages, explain.csv)"), "{out}");
    let size = |name: &str| image::image_dimensions(d.path().join("ex").join(name)).unwrap();
    assert_eq!(size("sheet.png"), size("sheet_2.png"), "two pages of 101");
    let (code, out, err) = run(&["explain", "data/a/00.png", "data/b/00.png", "--model", "runs/r", "--device", "cpu", "--out", "ex"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(sheet.png, explain.csv)"), "{out}");
    assert!(!d.path().join("ex/sheet_2.png").exists(), "the earlier call's second page is gone");
    assert_eq!(std::fs::read_dir(d.path().join("ex")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".png")).count(), 3);
}

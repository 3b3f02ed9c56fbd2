//! Face localisation: real faces are found and centred, blanks and non-faces
//! fall back (or fail when required), training records the boxes and
//! predict crops the same way.

use std::path::Path;

use vggft::data::face::{fallback, locate, FaceFinder, FaceMode};
use vggft::data::image::load_gray;

use crate::common::*;

fn london() -> Option<std::path::PathBuf> {
    london_dir()
}

#[test]
fn finds_a_centred_face_in_every_london_image() {
    let Some(dir) = london() else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let mut finder = FaceFinder::new().unwrap();
    let mut n = 0;
    for sub in ["neutral", "smiling"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            let g = load_gray(&p).unwrap();
            let b = finder.detect(&g).unwrap_or_else(|| panic!("no face in {}", p.display()));
            let (cx, cy) = (b.x + b.w / 2, b.y + b.h / 2);
            assert!(b.score.is_some() && b.w == b.h && b.x + b.w <= g.width && b.y + b.h <= g.height, "{}: {b:?}", p.display());
            assert!((64..192).contains(&cx) && (64..192).contains(&cy), "{}: box centre ({cx},{cy}) not central", p.display());
            assert!(b.w >= 96, "{}: face box {} px is implausibly small", p.display(), b.w);
            n += 1;
        }
    }
    assert_eq!(n, 204);
}

#[test]
fn blank_and_non_face_images_fall_back_or_fail_when_required() {
    let d = tmp();
    let blank = d.path().join("blank.png");
    gray_png(&blank, 200, 160, |_, _| 128);
    let stripes = d.path().join("stripes.png");
    gray_png(&stripes, 200, 200, |x, _| if (x / 10) % 2 == 0 { 20 } else { 230 });
    for p in [&blank, &stripes] {
        let g = load_gray(p).unwrap();
        let b = locate(&mut None, &g, &FaceMode::Auto { required: false }).unwrap().unwrap();
        assert_eq!(b, fallback(&g), "{}", p.display());
        assert_eq!((b.w, b.score), ((g.width.min(g.height) as f64 * 0.8).round() as u32, None), "80 % of the shorter side, centred");
        let e = locate(&mut None, &g, &FaceMode::Auto { required: true }).unwrap_err().to_string();
        assert!(e.contains("no face found"), "{e}");
    }
    assert_eq!(FaceMode::parse("crop:10,20,30,40", false).unwrap(), FaceMode::Fixed { x: 10, y: 20, w: 30, h: 40 });
    assert!(FaceMode::parse("sometimes", false).is_err());
}

#[test]
fn training_records_boxes_and_predict_crops_the_same_way() {
    let d = tmp();
    let Some(manifest) = london_slice(d.path(), 6) else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 3);
    let ws = w.to_str().unwrap();
    let small = ["--weights", ws, "--width-div", "16", "--image-size", "32", "--device", "cpu"];
    let (code, _, err) = run(
        &[&["finetune", "--data", manifest.to_str().unwrap(), "--face", "auto", "--stages", "head:1", "--name", "f", "--val", "none"][..], &small[..]].concat(),
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("runs/f/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["data"]["preprocess"]["face"]["kind"], "auto");
    let faces = std::fs::read_to_string(d.path().join("runs/f/faces.csv")).unwrap();
    assert_eq!(faces.lines().count(), 13, "header + 12 images:\n{faces}");
    assert!(!faces.contains("fallback"));
    // predict rebuilds the same preprocessing from the run: same box, same pixels.
    let first: Vec<&str> = faces.lines().nth(1).unwrap().split(',').collect();
    let (cfg, _) = vggft::run::load_run(&d.path().join("runs/f"), tch::Device::Cpu).unwrap();
    let g = load_gray(Path::new(first[0])).unwrap();
    let (px, b) = vggft::data::prepare_image(&g, &cfg.data.preprocess, &mut None).unwrap();
    let b = b.unwrap();
    assert_eq!([b.x, b.y, b.w, b.h].map(|v| v.to_string()).to_vec(), first[1..5].to_vec());
    assert_eq!(px.len(), 32 * 32);
    let (code, out, err) = run(&["predict", first[0], "--model", "runs/f"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("neutral="), "{out}");
    // --face-required turns a blank image into an error naming it.
    let blank_dir = d.path().join("blank");
    for (c, v) in [("a", 100u8), ("b", 150)] {
        std::fs::create_dir_all(blank_dir.join(c)).unwrap();
        for i in 0..2 {
            gray_png(&blank_dir.join(c).join(format!("{i}.png")), 64, 64, |_, _| v);
        }
    }
    let (code, _, err) =
        run(&[&["finetune", "--data", "blank", "--face", "auto", "--face-required", "--stages", "head:1", "--val", "none"][..], &small[..]].concat(), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("0.png") && err.contains("no face found"), "{err}");
    let (code, _, err) = run(
        &[&["finetune", "--data", "blank", "--face", "auto", "--stages", "head:1", "--val", "none", "--task", "multiclass"][..], &small[..]].concat(),
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no face found in 4 image(s)"), "{err}");
}

#[test]
fn faces_command_writes_crops_csv_and_a_contact_sheet() {
    let d = tmp();
    let Some(manifest) = london_slice(d.path(), 3) else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let (code, out, err) = run(&["faces", manifest.to_str().unwrap(), "--out", "fc", "--tile", "64"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 images, 0 without a detected face"), "{out}");
    assert_eq!(std::fs::read_dir(d.path().join("fc/crops")).unwrap().count(), 6);
    let sheet = image::open(d.path().join("fc/contact_sheet.png")).unwrap().to_rgb8();
    assert!(sheet.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 10_000, "contact sheet is not blank");
    // manifest.csv makes the crops a dataset, with the source's labels and subjects.
    let m = std::fs::read_to_string(d.path().join("fc/manifest.csv")).unwrap();
    let rows: Vec<&str> = m.lines().collect();
    assert_eq!(rows[0], "path,label,subject");
    assert_eq!(rows.len(), 7, "{m}");
    assert!(rows[1..].iter().all(|r| r.starts_with("crops/") && (r.contains(",neutral,") || r.contains(",smiling,"))), "{m}");
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 61);
    let (code, _, err) = run(&args(&small(&w), &["finetune", "--data", "fc/manifest.csv", "--stages", "head:1", "--val", "none"]), d.path());
    assert_eq!(code, 0, "{err}");
}

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
    assert!(!err.contains("no face found"), "{err}");
    // A picture without a face is still answered, and the answer is flagged.
    gray_png(&d.path().join("wall.png"), 64, 64, |_, _| 128);
    let (code, out, err) = run(&["predict", first[0], "wall.png", "--model", "runs/f"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("warning: no face found in 1 image(s), used a centred crop: wall.png"), "{err}");
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
    assert!(err.contains("0.png: no face found (--face-required) (none of the 4 images can be used, this the first)"), "{err}");
    // Not a decoding problem, and --skip-bad would leave nothing: neither is said.
    assert!(!err.contains("cannot decode") && !err.contains("--skip-bad"), "{err}");
    // Without --face auto it is refused, naming what to give (it said "applies to --face auto only" where no --face was given).
    for (face, says) in [(None, "applies to --face auto only: give --face auto with it"), (Some("person"), "applies to --face auto only: not --face person")] {
        let f: Vec<&str> = face.map_or(vec![], |f| vec!["--face", f]);
        let (code, _, err) = run(&[&["finetune", "--data", "blank", "--face-required", "--stages", "head:1"][..], &f[..], &small[..]].concat(), d.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("error: invalid option: --face-required {says}")), "{err}");
    }
    // A --crop box that fits no image is the box's problem, said so.
    let (code, _, err) =
        run(&[&["finetune", "--data", "blank", "--crop", "8,8,100,100", "--stages", "head:1", "--val", "none"][..], &small[..]].concat(), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("0.png: the --crop box 8,8,100,100 (x,y,width,height) does not fit inside this 64×64 image (none of the 4"), "{err}");
    assert!(!err.contains("cannot decode") && !err.contains("--skip-bad"), "{err}");
    // A centred fraction that leaves a few pixels of each image: said, as a box that small is.
    let (code, _, err) =
        run(&[&["finetune", "--data", "blank", "--crop", "center:0.05", "--stages", "head:1", "--val", "none"][..], &small[..]].concat(), d.path());
    assert_eq!(code, 1);
    assert!(err.contains("0.png: --crop center:0.05 leaves 3×3 pixels of this 64×64 image, fewer than the 8×8"), "{err}");
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
    // KDEF's layout: the crops carry the names' expressions and people, and the profiles left out are said.
    let kdef = d.path().join("kdef/AF01");
    std::fs::create_dir_all(&kdef).unwrap();
    let photos: Vec<String> = rows[1..].iter().map(|r| r.split(',').next().unwrap().to_string()).collect();
    for (photo, name) in photos.iter().zip(["AF01NES.JPG", "AF01HAS.JPG", "AF01HAFL.JPG"]) {
        std::fs::copy(d.path().join("fc").join(photo), kdef.join(name)).unwrap();
    }
    let (code, _, err) = run(&["faces", "kdef", "--out", "fk", "--tile", "64"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("KDEF: read the 2 straight-ahead photos (…S.JPG); 1 at other angles"), "{err}");
    let m = std::fs::read_to_string(d.path().join("fk/manifest.csv")).unwrap();
    assert_eq!(m.lines().skip(1).map(|r| r.split_once(',').unwrap().1).collect::<Vec<_>>(), ["happy,F01", "neutral,F01"], "{m}");
    // Class folders whose names give no person (001_03.png): said, and
    // --subject-pattern writes each crop's person into the manifest.
    for r in &rows[1..] {
        let f: Vec<&str> = r.split(',').collect();
        std::fs::create_dir_all(d.path().join("cls").join(f[1])).unwrap();
        std::fs::copy(d.path().join("fc").join(f[0]), d.path().join("cls").join(f[1]).join(f[0].trim_start_matches("crops/"))).unwrap();
    }
    let (code, _, err) = run(&["faces", "cls", "--out", "fn", "--tile", "64"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: cls gives no person for its photos, so the crops' manifest lists none: --subject-pattern REGEX"), "{err}");
    let (code, _, err) = run(&["faces", "cls", "--out", "fs", "--tile", "64", "--subject-pattern", "^([^_]+)_"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("gives no person"), "{err}");
    let people = |m: &str| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_to_string(d.path().join(m)).unwrap().lines().skip(1).map(|r| r.rsplit(',').next().unwrap().to_string()).collect();
        v.sort();
        v
    };
    let mut want: Vec<String> = rows[1..].iter().map(|r| r.split(',').nth(2).unwrap().to_string()).collect();
    want.sort();
    assert_eq!(people("fs/manifest.csv"), want, "each crop's person, as the London manifest lists them");
}

#[test]
fn with_person_statistics_faces_are_cropped_by_default() {
    let d = tmp();
    let Some(src) = london_dir() else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    // Three London people with four photos each (each photo and a copy): person
    // statistics turn on by default, and with them the face crop.
    let manifest = std::fs::read_to_string(src.join("manifest.csv")).unwrap();
    let mut rows = String::from("path,label,subject\n");
    let mut blank_rows = rows.clone();
    let lines: Vec<Vec<&str>> = manifest.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let people: std::collections::BTreeSet<&str> = lines.iter().map(|f| f[2]).take(3).collect();
    let mut chosen: Vec<&Vec<&str>> = lines.iter().filter(|f| people.contains(f[2])).collect();
    chosen.sort_by_key(|f| f[2]); // person by person
    for (i, f) in chosen.into_iter().enumerate() {
        for copy in 0..2 {
            let p = d.path().join(format!("{i}-{copy}.jpg"));
            std::fs::copy(src.join(f[0]), &p).unwrap();
            rows.push_str(&format!("{},{},{}\n", p.display(), f[1], f[2]));
            let b = d.path().join(format!("blank-{i}-{copy}.png"));
            gray_png(&b, 64, 64, |x, y| ((x * 3 + y * 5 + 40 * i as u32 + 17 * copy) % 256) as u8);
            blank_rows.push_str(&format!("{},{},{}\n", b.display(), f[1], f[2]));
        }
    }
    std::fs::write(d.path().join("faces.csv"), rows).unwrap();
    std::fs::write(d.path().join("blank.csv"), blank_rows).unwrap();
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 3);
    let s = small(&w);
    let face = |name: &str| json(&d.path().join("runs").join(name).join("config.json"))["data"]["preprocess"]["face"]["kind"].clone();
    let base = ["finetune", "--stages", "head:1", "--val", "none", "--augment", "none"];
    let (code, out, err) = run(&args(&s, &[&base[..], &["--data", "faces.csv", "--name", "auto"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(face("auto"), "person", "{err}");
    assert!(err.contains("cropped to each person's face, the single-image head reading the whole frame (--face none: the whole frame for both)"), "{err}");
    // A run's own validation says the same of its single-image head.
    let (code, out, err) =
        run(&args(&s, &["finetune", "--stages", "head:1", "--augment", "none", "--data", "faces.csv", "--name", "val", "--val", "subjects:0.34"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("validation, single-image head (no other photo of the person; each photo's whole frame, as predict frames a lone photo):"), "{out}");
    // And predict gives the held-out photos, each alone, the same answers: the same frames, head, calibration and threshold.
    let split = std::fs::read_to_string(d.path().join("runs/val/split.csv")).unwrap();
    let truth: std::collections::BTreeMap<String, String> =
        split.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()).filter(|r| r[4] == "val").map(|r| (r[0].to_string(), r[2].to_string())).collect();
    let (code, out, err) = run(&["predict", "--held-out", "--subject-from", "none", "--model", "runs/val", "--format", "json"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let preds: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let classes = ["neutral", "expressive"];
    let y: Vec<i64> = preds.iter().map(|p| classes.iter().position(|c| *c == truth[p["path"].as_str().unwrap()]).unwrap() as i64).collect();
    let said: Vec<i64> = preds.iter().map(|p| classes.iter().position(|c| p["class"] == *c).unwrap() as i64).collect();
    let p1: Vec<f64> = preds.iter().map(|p| p["probabilities"]["expressive"].as_f64().unwrap()).collect();
    assert!(preds.iter().all(|p| p["mode"] == "single-image" && p["face"].is_null()), "the whole frame: {out}");
    let val = &json(&d.path().join("runs/val/metrics.json"))["validation_single_image"];
    assert_eq!(preds.len() as u64, val["n"].as_u64().unwrap());
    let auc = vggft::eval::roc_auc(&y.iter().map(|&c| c == 1).collect::<Vec<_>>(), &p1);
    assert!((auc - val["roc_auc"].as_f64().unwrap()).abs() < 1e-9, "{auc} vs {val}");
    assert!((vggft::eval::balanced_accuracy(&y, &said, 2) - val["balanced_accuracy"].as_f64().unwrap()).abs() < 1e-9, "{said:?} vs {val}");
    // Boxes per person (file name → box) as faces.csv records them.
    let boxes = |run: &str| -> Vec<(String, String)> {
        let csv = std::fs::read_to_string(d.path().join("runs").join(run).join("faces.csv")).unwrap();
        assert_eq!((csv.lines().count(), csv.contains("fallback")), (13, false), "a face in each of 12 photos:\n{csv}");
        csv.lines().skip(1).map(|l| (l.split(',').next().unwrap().to_string(), l.split(',').skip(1).take(4).collect::<Vec<_>>().join(","))).collect()
    };
    let (code, out, err) = run(&args(&s, &[&base[..], &["--data", "faces.csv", "--name", "each", "--face", "auto"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    // Rows come person by person (4 each): with `auto` some person's photos differ, with `person` none do.
    let per_person =
        |b: &[(String, String)]| b.chunks(4).map(|c| c.iter().map(|(_, b)| b.clone()).collect::<std::collections::BTreeSet<_>>().len()).collect::<Vec<_>>();
    assert!(per_person(&boxes("each")).iter().any(|&n| n > 1), "the detector's boxes differ within a person: {:?}", boxes("each"));
    assert_eq!(per_person(&boxes("auto")), vec![1, 1, 1], "one box per person: {:?}", boxes("auto"));
    // predict frames a person's inputs alike (--subject groups them); alone, the single-image head reads the whole frame.
    let person: Vec<String> = boxes("auto").iter().take(4).map(|(p, _)| p.clone()).collect();
    let faces_of = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut a: Vec<&str> = vec!["predict", "--model", "runs/auto", "--format", "json"];
        a.extend(extra);
        a.extend(person.iter().map(String::as_str));
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap().iter().map(|p| p["face"].clone()).collect()
    };
    let together = faces_of(&["--subject", "p"]);
    assert!(together.iter().all(|f| f == &together[0] && f["w"].as_u64().is_some_and(|w| w >= 96)), "{together:?}");
    assert!(faces_of(&["--subject-from", "none"]).iter().all(serde_json::Value::is_null), "no face box alone");
    // A person's other input does not decode: the one left is answered alone, on its whole frame.
    std::fs::write(d.path().join("broken.jpg"), b"not a jpeg").unwrap();
    let (code, out, err) = run(&["predict", "--model", "runs/auto", "--format", "json", "--subject", "p", &person[0], "broken.jpg"], d.path());
    assert_eq!(code, 1, "{out}\n{err}");
    let left: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!((left.len(), &left[0]["mode"], left[0].get("face")), (1, &"single-image".into(), None), "{out}\n{err}");
    // A model from before the whole frames (no single_frame in its config): a lone photo gets its own box.
    let config = d.path().join("runs/auto/config.json");
    let mut c = json(&config);
    assert_eq!(c["single_frame"], true);
    c.as_object_mut().unwrap().remove("single_frame");
    std::fs::write(&config, serde_json::to_string(&c).unwrap()).unwrap();
    let each: Vec<String> = boxes("each").iter().take(4).map(|(_, b)| b.clone()).collect();
    let alone: Vec<String> = faces_of(&["--subject-from", "none"]).iter().map(|f| format!("{},{},{},{}", f["x"], f["y"], f["w"], f["h"])).collect();
    assert_eq!(alone, each, "a lone photo is framed as --face auto frames it");
    // cv's summary says that test persons' photos set their face box.
    let cv = ["cv", "--data", "faces.csv", "--folds", "loso", "--seeds", "0", "--stages", "head:1", "--augment", "none"];
    let (code, out, err) = run(&args(&s, &[&cv[..], &["--out", "cv", "--dump-features", "f.safetensors"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains(", and each one's whole frame for the single-image head (as predict frames a lone photo)"), "{err}");
    let md = std::fs::read_to_string(d.path().join("cv/cv.md")).unwrap();
    assert!(md.contains("face crop per person (--face person): each person's photos, a test person's included, set that person's face box"), "{md}");
    // The single-image head's figures come from each photo's whole frame, as a lone photo's in predict.
    assert!(md.contains("## Single-image head (no other photo of the person; same folds; each photo's whole frame, as predict frames a lone photo)"), "{md}");
    let summary = json(&d.path().join("cv/cv.json"));
    assert_eq!((summary["person_box"].as_bool(), summary["single_frame"].as_bool()), (Some(false), Some(true)), "{summary}");
    // The dump holds those crops' features; one without them (made before whole frames were kept, and so
    // before its .json held the file's SHA-256) is refused in one line.
    let dump = d.path().join("f.safetensors");
    let named = tch::Tensor::read_safetensors(&dump).unwrap();
    let names: Vec<&str> = named.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"lone") && names.contains(&"lone_flipped"), "{names:?}");
    let kept: Vec<(String, tch::Tensor)> = named.into_iter().filter(|(k, _)| !k.starts_with("lone")).collect();
    tch::Tensor::write_safetensors(&kept, &dump).unwrap();
    let meta = d.path().join("f.json");
    let mut old = json(&meta);
    assert!(old.as_object_mut().unwrap().remove("safetensors_sha256").is_some(), "a dump's .json holds its file's SHA-256");
    std::fs::write(&meta, old.to_string()).unwrap();
    let (code, out, err) = run(&args(&s, &[&cv[..], &["--out", "cv-old", "--load-features", "f.safetensors"]].concat()), d.path());
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("f.safetensors: holds no whole frames, which the single-image head of a --face person recipe reads (dump it again)"), "{err}");
    // Asked for: --face none, a --crop, or person statistics off keep the whole frame.
    for (name, extra) in [("none", &["--face", "none"][..]), ("crop", &["--crop", "center:0.9"]), ("off", &["--subject-norm", "off"])] {
        let (code, out, err) = run(&args(&s, &[&base[..], &["--data", "faces.csv", "--name", name], extra].concat()), d.path());
        assert_eq!(code, 0, "{name}: {out}\n{err}");
        assert_eq!(face(name), "none", "{name}: {err}");
        assert!(!err.contains("photo's face"), "{name}: {err}");
    }
    // Pairs (2 photos per person) with person statistics (on by default): cropped too,
    // the single-image head on the whole frame (docs/results/accuracy, "The single-image head").
    let pairs = london_slice(d.path(), 3).unwrap();
    let (code, out, err) = run(&args(&s, &[&base[..], &["--data", pairs.to_str().unwrap(), "--name", "pairs"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let config = json(&d.path().join("runs/pairs/config.json"));
    assert_eq!((&config["model"]["subject_norm"], &config["single_frame"]), (&"on".into(), &true.into()), "{err}");
    assert_eq!(face("pairs"), "person", "{err}");
    // Person statistics off: no single-image head, no whole frames kept for it.
    let (code, out, err) = run(
        &args(&s, &[&base[..], &["--data", pairs.to_str().unwrap(), "--name", "pairs-off", "--subject-norm", "off", "--face", "person"]].concat()),
        d.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(face("pairs-off"), "person", "{err}");
    assert!(json(&d.path().join("runs/pairs-off/config.json")).get("single_frame").is_none(), "{err}");
    // Pictures in which no face is found at all keep the whole frame, and say so.
    let (code, out, err) = run(&args(&s, &[&base[..], &["--data", "blank.csv", "--name", "blank"]].concat()), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(face("blank"), "none", "{err}");
    assert!(err.contains("no face found in any image: using the whole frame"), "{err}");
    assert!(!err.contains("photo's face") && !err.contains("used a centred crop"), "{err}");
    assert!(!d.path().join("runs/blank/faces.csv").exists());
}

#[test]
fn a_persons_photos_share_the_median_of_their_boxes() {
    use vggft::data::face::{per_person, FaceBox};
    let b = |x, y, side, score: Option<f64>| FaceBox { x, y, w: side, h: side, score };
    let boxes = [
        b(10, 10, 100, Some(5.0)),
        b(14, 20, 110, Some(7.0)),
        b(30, 30, 120, Some(9.0)),
        b(40, 40, 160, None),        // no face found: the person's median instead
        b(0, 0, 50, None),           // a person with no face found keeps the fallback
        b(5, 6, 70, Some(3.0)),      // no subject id: its own box
        b(0, 0, 90, Some(4.0)),      // a photo of the first person of another size: its own box, not in the median
        b(2, 4, 60, Some(2.0)),      // and another of that size: the two share their own median
        b(150, 150, 200, Some(8.0)), // a larger photo of the first person: its own box
    ];
    let sizes = [(256, 256), (256, 256), (256, 256), (256, 256), (256, 256), (256, 256), (100, 100), (100, 100), (1024, 768)];
    let mut found: Vec<Option<(FaceBox, (u32, u32))>> = boxes.iter().cloned().zip(sizes).map(Some).collect();
    found.push(None); // a photo that did not decode stays without a box
    let subjects = [Some("a"), Some("a"), Some("a"), Some("a"), Some("b"), None, Some("a"), Some("a"), Some("a"), Some("a")];
    let out: Vec<FaceBox> = per_person(&found, &subjects).into_iter().map(|o| o.unwrap_or_else(|| b(0, 0, 0, None))).collect();
    // The 256-px photos: centres (60,60) (69,75) (90,90): medians (69, 75); sides 100 110 120 → 110; scores 5 7 9 → 7.
    let median = b(14, 20, 110, Some(7.0));
    assert_eq!(out[..4], [median.clone(), median.clone(), median.clone(), median.clone()]);
    assert_eq!(out[4], boxes[4]);
    assert_eq!(out[5], boxes[5]);
    // The 100-px photos: centres (45,45) (32,34): (38.5, 39.5); sides 90 60 → 75; scores 4 2 → 3.
    assert_eq!(out[6..8], [b(1, 2, 75, Some(3.0)), b(1, 2, 75, Some(3.0))], "boxes of another size are not mixed in");
    assert_eq!(out[8], boxes[8]);
    assert_eq!(out[9], b(0, 0, 0, None), "no box for a photo that did not decode");
    // A median box larger than a photo (sides only of detections of its size, so only where the
    // photo's own box overhangs it) is shrunk and moved inside.
    let big = [Some((b(0, 0, 120, Some(1.0)), (100, 100))), Some((b(10, 10, 90, Some(1.0)), (100, 100)))];
    assert_eq!(per_person(&big, &[Some("c"), Some("c")]), vec![Some(b(0, 0, 100, Some(1.0))); 2], "shrunk and moved to fit the 100×100 photo");
}

#[test]
fn faces_refuses_an_output_inside_the_data_and_clears_its_own_stale_crops() {
    let d = tmp();
    separable_folders(&d.path().join("data"), 3, 48);
    // Inside class folders the crops would become a class `faces` of the data;
    // into a manifest's own folder they would replace its manifest.csv.
    let (code, _, err) = run(&["faces", "data", "--out", "data/faces", "--tile", "32"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("data/faces: is inside the data folder data") && err.contains("read as a class"), "{err}");
    assert!(!d.path().join("data/faces").exists(), "nothing written");
    let manifest = subject_dataset(&d.path().join("data/a"), 1, 40);
    let before = std::fs::read_to_string(&manifest).unwrap();
    let (code, _, err) = run(&["faces", "data/a/manifest.csv", "--out", "data/a", "--tile", "32"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("is the data folder itself"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), before, "the data's own manifest is untouched");
    // Loose unlabelled photos: how to crop them is said, and one folder inside does it.
    std::fs::create_dir_all(d.path().join("loose")).unwrap();
    std::fs::copy(d.path().join("data/a/s00_neutral.png"), d.path().join("loose/one.png")).unwrap();
    let (code, _, err) = run(&["faces", "loose", "--out", "lc", "--tile", "32"], d.path());
    assert!(
        code == 1 && err.contains("holds loose images") && err.contains("to crop unlabelled photos, move them into one folder inside it (loose/photos/…)"),
        "{err}"
    );
    std::fs::create_dir(d.path().join("loose/photos")).unwrap();
    std::fs::rename(d.path().join("loose/one.png"), d.path().join("loose/photos/one.png")).unwrap();
    let (code, _, err) = run(&["faces", "loose", "--out", "lc", "--tile", "32"], d.path());
    assert!(code == 0 && d.path().join("lc/faces.csv").exists(), "{err}");
    // Nor is another dataset's manifest, in a folder faces did not write.
    std::fs::create_dir(d.path().join("other")).unwrap();
    let other = subject_dataset(&d.path().join("other"), 1, 40);
    let theirs = std::fs::read_to_string(&other).unwrap();
    let (code, _, err) = run(&["faces", "data", "--out", "other", "--tile", "32"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("other: holds a manifest.csv that this command did not write: the crops, faces.csv and their manifest would replace it"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), theirs);
    assert!(!d.path().join("other/crops").exists(), "nothing written");
    std::fs::remove_file(&manifest).unwrap();
    for f in ["s00_neutral.png", "s00_smiling.png"] {
        std::fs::remove_file(d.path().join("data/a").join(f)).unwrap();
    }

    // A second run into the same folder with fewer images: the first run's
    // extra crops go, a file the user put there stays.
    let (code, _, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    let crops = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(d.path().join(dir)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(crops("fc/crops").len(), 6);
    std::fs::write(d.path().join("fc/crops/mine.png"), b"not a crop of vggft's").unwrap();
    for i in 1..3 {
        std::fs::remove_file(d.path().join(format!("data/a/{i:02}.png"))).unwrap();
    }
    // The dataset given as finetune and cv take it.
    let (code, out, err) = run(&["faces", "--data", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 images"), "{out}");
    let listed: Vec<String> = std::fs::read_to_string(d.path().join("fc/manifest.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().trim_start_matches("crops/").to_owned())
        .collect();
    let mut expected = listed.clone();
    expected.push("mine.png".into());
    expected.sort();
    assert_eq!(crops("fc/crops"), expected);
    // A run stopped between faces.csv and manifest.csv: the folder is still its own.
    std::fs::remove_file(d.path().join("fc/manifest.csv")).unwrap();
    let (code, _, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(d.path().join("fc/manifest.csv").exists());
}

/// The crops keep their photos' names where those are unique (JAFFE's are),
/// so what the names say survives: training on the crops' manifest is not
/// warned of several people under one id (`0000_KA.HA1.1.png` read as
/// person `0000_KA` was), and `predict` of the crops folder finds each
/// person by name and scores their photos together. Names that repeat
/// across class folders are numbered.
#[test]
fn crops_keep_their_photos_names_and_so_their_people() {
    let d = tmp();
    let data = d.path().join("jaffe");
    std::fs::create_dir(&data).unwrap();
    let mut serial = 0;
    for (k, person) in ["KA", "KL", "MK"].iter().enumerate() {
        for code in ["NE", "HA", "SU"] {
            for n in 1..=2 {
                serial += 1;
                gray_png(&data.join(format!("{person}.{code}{n}.{serial}.png")), 48, 48, |x, y| ((x * 3 + y * 5 + k as u32 * 40 + serial * 7) % 256) as u8);
            }
        }
    }
    let (code, _, err) = run(&["faces", "jaffe", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    let m = std::fs::read_to_string(d.path().join("fc/manifest.csv")).unwrap();
    assert!(m.contains("crops/KA.NE1.1.png,neutral,KA") && m.contains("crops/MK.SU2.18.png,surprise,MK"), "{m}");
    let s = small_trunk(d.path(), 28);
    let (code, _, err) = run(&args(&s, &["finetune", "--data", "fc/manifest.csv", "--stages", "head:1", "--val", "none", "--name", "r"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("several people"), "{err}");
    let (code, out, err) = run(&["predict", "fc/crops", "--model", "runs/r", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().filter(|l| l.ends_with("mode=person")).count(), 18, "every crop scored with its person's: {out}");
    // Class folders that repeat a name: numbered, in the dataset's order.
    separable_folders(&d.path().join("folders"), 2, 32);
    let (code, _, err) = run(&["faces", "folders", "--out", "ff", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    let mut names: Vec<String> = std::fs::read_dir(d.path().join("ff/crops")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["0000_00.png", "0001_01.png", "0002_00.png", "0003_01.png"]);
}

/// A large set's contact sheet comes in pages of equal size, at most
/// `SHEET_PAGE` crops each (one sheet of a KDEF-sized set was too tall to
/// open), and a later, smaller run into the folder removes the pages it no
/// longer has.
#[test]
fn a_large_sets_contact_sheet_comes_in_pages() {
    let d = tmp();
    // 2 × 101 = 202 photos: two pages of 101.
    separable_folders(&d.path().join("data"), 101, 32);
    let (code, out, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("contact sheets fc/contact_sheet.png … fc/contact_sheet_2.png (2 pages of up to 200 crops)"), "{out}");
    let size = |name: &str| image::image_dimensions(d.path().join("fc").join(name)).unwrap();
    assert_eq!(size("contact_sheet.png"), size("contact_sheet_2.png"), "pages of equal size");
    let page = size("contact_sheet.png");
    std::fs::write(d.path().join("fc/contact_sheet_1.png"), "mine").unwrap();
    for i in 50..101 {
        for c in ["a", "b"] {
            std::fs::remove_file(d.path().join(format!("data/{c}/{i:02}.png"))).unwrap();
        }
    }
    let (code, out, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("contact sheet fc/contact_sheet.png") && !out.contains("pages"), "{out}");
    assert!(!d.path().join("fc/contact_sheet_2.png").exists(), "the earlier run's second page is gone");
    // 100 crops in 8 columns are 13 rows, as 101 are: the pages held 101 each, not 200 and 2.
    assert_eq!(size("contact_sheet.png"), page);
    assert!(d.path().join("fc/contact_sheet_1.png").exists(), "a name faces never writes stays");
}

/// An unreadable image stops `faces` before it writes anything (a previous
/// run's folder stays whole: its manifest still matches its crops), and
/// `--skip-bad` leaves it out of the crops and their manifest, naming it once.
#[test]
fn faces_writes_nothing_for_an_unreadable_image_unless_told_to_skip_it() {
    let d = tmp();
    separable_folders(&d.path().join("data"), 3, 48);
    let (code, _, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    // Every file below `dir` (one level of folders: crops/) with its bytes.
    let snapshot = |dir: &Path| {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name() != ".lock") {
            let inner: Vec<_> = if e.path().is_dir() { std::fs::read_dir(e.path()).unwrap().flatten().map(|f| f.path()).collect() } else { vec![e.path()] };
            v.extend(inner.into_iter().map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap())));
        }
        v.sort();
        v
    };
    let before = snapshot(&d.path().join("fc"));
    assert_eq!(before.len(), 9, "6 crops, faces.csv, manifest.csv, contact_sheet.png");
    // Sorted after the readable ones of its class: a writer crop by crop would have written them already.
    let bytes = std::fs::read(d.path().join("data/b/00.png")).unwrap();
    std::fs::write(d.path().join("data/b/zz_cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = run(&["faces", "data", "--out", "fc", "--tile", "64"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("zz_cut.png") && err.contains("1 of 7 images cannot be read; --skip-bad leaves them out") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(snapshot(&d.path().join("fc")), before, "the previous run's crops, boxes, manifest and sheet are untouched");
    let (code, _, err) = run(&["faces", "data", "--out", "fresh", "--tile", "32"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(!d.path().join("fresh").exists(), "no folder of crops without a manifest");

    let (code, out, err) = run(&["faces", "data", "--out", "fc", "--tile", "32", "--skip-bad"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 images"), "{out}");
    let line = err.lines().find(|l| l.starts_with("skipped ")).unwrap_or_default();
    assert!(line.contains("zz_cut.png: ") && line.matches("zz_cut.png").count() == 1, "the file named once: {err}");
    assert!(err.contains("skipped 1 unreadable image(s) (--skip-bad)"), "{err}");
    let manifest = std::fs::read_to_string(d.path().join("fc/manifest.csv")).unwrap();
    assert_eq!(manifest.lines().count(), 7, "{manifest}");
    assert!(!manifest.contains("zz_cut"), "{manifest}");
    assert_eq!(std::fs::read_dir(d.path().join("fc/crops")).unwrap().count(), 6);
}

/// With `--face person` each photo's whole frame is kept beside its person's
/// face box — the frame `predict` gives a photo it answers alone — which the
/// single-image head reads (cv, a run's validation, the inner fits); other
/// face modes keep none.
#[test]
fn person_boxes_keep_each_photos_whole_frame_beside() {
    use vggft::config::DataConfig;
    use vggft::data::image::Crop;
    use vggft::data::scan::DataFormat;
    use vggft::data::split::{Task, TrainLabels, ValSpec};
    use vggft::data::Preprocess;
    let d = tmp();
    let Some(pairs) = london_slice(d.path(), 3) else {
        eprintln!("skipped: ../shared/data/london-faces is absent");
        return;
    };
    let dc = |face: FaceMode| DataConfig {
        path: pairs.clone(),
        format: DataFormat::Auto,
        task: Task::Binary,
        label_map: vec![],
        train_labels: TrainLabels::Auto,
        val: ValSpec::None,
        skip_bad: false,
        preprocess: Preprocess { face, ..Preprocess::new(Crop::Center { fraction: 0.9 }, 48) },
        subject_pattern: None,
    };
    let p = vggft::session::prepare(&dc(FaceMode::Person), 0, &mut vggft::train::Collect::default()).unwrap();
    let lone = p.data.lone.as_ref().expect("whole frames with --face person");
    assert_eq!(lone.size(), p.data.gray.size());
    let frame = dc(FaceMode::None).preprocess;
    let mut finder = None;
    for (i, s) in (0i64..).zip(&p.dataset.samples) {
        // --face none's frame (with the run's --crop): what predict gives a photo alone.
        let (px, b) = vggft::data::prepare_image(&load_gray(&s.path).unwrap(), &frame, &mut finder).unwrap();
        assert!(b.is_none());
        let whole = tch::Tensor::from_slice(&px).view([1, 48, 48]);
        assert!(max_abs_diff(&lone.get(i), &whole) < 1e-6, "{}", s.path.display());
        assert!(max_abs_diff(&p.data.gray.get(i), &whole) > 1e-2, "the face box is not the frame: {}", s.path.display());
    }
    for face in [FaceMode::None, FaceMode::Auto { required: false }] {
        let p = vggft::session::prepare(&dc(face.clone()), 0, &mut vggft::train::Collect::default()).unwrap();
        assert!(p.data.lone.is_none(), "{face:?}");
    }
}

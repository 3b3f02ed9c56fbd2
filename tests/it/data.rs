//! Data: decoding every format, refusing bad files with a clear reason,
//! scanning the three layouts, labels and subject-grouped splits.

use std::path::Path;

use vggft::data::image::{decode_gray, load_gray, prepare, Crop};
use vggft::data::scan::{people_as_classes_warning, scan, DataFormat};
use vggft::data::split::{assign_labels, holdout, kfold, Task, ValSpec};

use crate::common::*;

fn ramp(w: u32, h: u32) -> Vec<u8> {
    (0..w * h).map(|i| (i % 256) as u8).collect()
}

#[test]
fn decodes_gray_palette_and_16_bit_tiffs_both_endians() {
    let (w, h) = (16, 12);
    let px = ramp(w, h);
    for be in [false, true] {
        let g8 = decode_gray(&tiff(w, h, 8, &px, None, be)).unwrap();
        assert_eq!((g8.width, g8.height), (w, h));
        assert!((g8.pixels[5] - 5.0 / 255.0).abs() < 1e-6, "8-bit gray value");
        let pal = decode_gray(&tiff(w, h, 8, &px, Some(&gray_ramp()), be)).unwrap();
        for (a, b) in pal.pixels.iter().zip(&g8.pixels) {
            assert!((a - b).abs() < 1e-5, "palette gray ramp must equal plain gray: {a} vs {b}");
        }
        let px16: Vec<u8> = px.iter().flat_map(|&v| if be { (v as u16 * 257).to_be_bytes() } else { (v as u16 * 257).to_le_bytes() }).collect();
        let g16 = decode_gray(&tiff(w, h, 16, &px16, None, be)).unwrap();
        for (a, b) in g16.pixels.iter().zip(&g8.pixels) {
            assert!((a - b).abs() < 1e-4, "16-bit gray: {a} vs {b}");
        }
    }
}

#[test]
fn palette_with_colours_becomes_luma() {
    let mut cmap = vec![0u16; 768];
    cmap[1] = 65535; // index 1: pure red
    cmap[256 + 2] = 65535; // index 2: pure green
    let g = decode_gray(&tiff(8, 8, 8, &[[0u8, 1, 2, 0].repeat(16)].concat(), Some(&cmap), false)).unwrap();
    assert!((g.pixels[1] - 0.299).abs() < 1e-4 && (g.pixels[2] - 0.587).abs() < 1e-4, "{:?}", &g.pixels[..4]);
}

#[test]
fn decodes_rgb_jpeg_rgba_png_and_real_london_faces() {
    let d = tmp();
    let rgba = d.path().join("rgba.png");
    image::RgbaImage::from_fn(20, 20, |x, _| image::Rgba([255, 0, 0, if x < 10 { 0 } else { 255 }])).save(&rgba).unwrap();
    let g = load_gray(&rgba).unwrap();
    assert!((g.pixels[0] - 0.299).abs() < 1e-3, "alpha ignored, red → luma");
    let jpg = d.path().join("rgb.jpg");
    image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([(x * 8) as u8, (y * 10) as u8, 128])).save(&jpg).unwrap();
    assert_eq!(load_gray(&jpg).unwrap().width, 32);
    if let Some(dir) = london_dir() {
        let g = load_gray(&dir.join("neutral/001_03.jpg")).unwrap();
        assert_eq!((g.width, g.height), (256, 256));
        let mean: f32 = g.pixels.iter().sum::<f32>() / g.pixels.len() as f32;
        assert!(mean > 0.1 && mean < 0.9, "a real photo, mean {mean}");
    } else {
        eprintln!("skipped the London check: ../shared/data/london-faces is absent");
    }
}

#[test]
fn bad_images_get_one_clear_reason() {
    let d = tmp();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.tiff", vec![], "empty (0 bytes)"),
        ("text.tiff", b"this is a text file, not an image".to_vec(), "not a recognised image format"),
        ("truncated.tiff", tiff(64, 64, 8, &ramp(64, 64), None, false)[..300].to_vec(), "truncated"),
        (
            "cut_strip.tiff",
            {
                let t = tiff(64, 64, 8, &ramp(64, 64), None, false);
                t[..t.len() - 50].to_vec()
            },
            "truncated",
        ),
        ("tiny.tiff", tiff(1, 1, 8, &[7], None, false), "smaller than the minimum"),
        ("huge.tiff", tiff(100_000, 100_000, 8, &ramp(8, 8), None, false), "larger than the limit"),
        ("huge_palette.tiff", tiff(100_000, 100_000, 8, &ramp(8, 8), Some(&gray_ramp()), false), "larger than the limit"),
        ("truncated_palette.tiff", tiff(64, 64, 8, &ramp(8, 8), Some(&gray_ramp()), false), "truncated"),
    ];
    for (name, bytes, want) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = load_gray(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(want), "{name}: got `{e}`, wanted `{want}`");
    }
    let png = d.path().join("ok.png");
    gray_png(&png, 40, 40, |x, _| x as u8);
    let bytes = std::fs::read(&png).unwrap();
    let t = d.path().join("truncated.png");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_gray(&t).unwrap_err().to_string();
    assert!(e.contains("truncated.png"), "{e}");
    let jpg = d.path().join("ok.jpg");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 9])).save(&jpg).unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    let t = d.path().join("truncated.jpg");
    std::fs::write(&t, &bytes[..bytes.len() / 3]).unwrap();
    // A cut JPEG is refused (zune-jpeg alone would fill the rest with grey).
    let e = load_gray(&t).unwrap_err().to_string();
    assert!(e.contains("truncated.jpg") && e.contains("truncated JPEG"), "{e}");
    let missing = load_gray(&d.path().join("missing.png")).unwrap_err().to_string();
    assert!(missing.contains("missing.png") && missing.contains("cannot read"), "{missing}");
}

#[test]
fn crop_and_resize() {
    let g = decode_gray(&tiff(40, 20, 8, &ramp(40, 20), None, false)).unwrap();
    assert_eq!(prepare(&g, &Crop::None, 16).unwrap().len(), 256, "non-square → centre square → 16²");
    assert_eq!(prepare(&g, &Crop::Box { x: 0, y: 0, w: 10, h: 10 }, 10).unwrap()[3], 3.0 / 255.0);
    assert!(prepare(&g, &Crop::Box { x: 35, y: 0, w: 10, h: 10 }, 10).unwrap_err().to_string().contains("does not fit"));
    assert_eq!(Crop::parse("10,20,30,40").unwrap(), Crop::Box { x: 10, y: 20, w: 30, h: 40 });
    assert_eq!(Crop::parse("center:0.8").unwrap(), Crop::Center { fraction: 0.8 });
    assert!(Crop::parse("1.5").is_err() && Crop::parse("1,2,3").is_err());
}

fn jaffe_dir(root: &Path, subjects: &[&str], codes: &[&str]) {
    let mut serial = 1;
    let cmap = gray_ramp();
    for s in subjects {
        for c in codes {
            let name = format!("{s}.{c}1.{serial}.tiff");
            serial += 1;
            std::fs::write(root.join(name), tiff(16, 16, 8, &ramp(16, 16), if serial % 3 == 0 { Some(&cmap) } else { None }, serial % 2 == 0)).unwrap();
        }
    }
}

/// A layout that finds nothing says what is there instead of "contains no
/// images" or the OS's "No such file or directory" (found by a sweep of
/// random dataset trees).
#[test]
fn a_layout_that_finds_nothing_says_what_is_there() {
    // A folder per person of class folders (`KA/neutral/0.png`), given a flat layout.
    let d = tmp();
    for who in ["KA", "KL"] {
        for class in ["happy", "neutral"] {
            std::fs::create_dir_all(d.path().join(who).join(class)).unwrap();
            gray_png(&d.path().join(who).join(class).join("0.png"), 16, 16, |x, _| x as u8);
        }
    }
    assert_eq!(scan(d.path(), DataFormat::Auto).unwrap().samples.len(), 4, "read as it is");
    let e = scan(d.path(), DataFormat::Jaffe).unwrap_err().to_string();
    assert!(
        e.ends_with("holds its images two folders down (KA/happy, KA/neutral, KL/happy, KL/neutral), which --layout jaffe does not read (leave --layout out to have the layout told)"),
        "{e}"
    );
    // A link back up to a folder that holds it is a loop, said as one (was "class `loop` has no images
    // directly inside it (…/loop/KA holds some)"); a link to a folder elsewhere is read.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.path(), d.path().join("KA/loop")).unwrap();
        let e = scan(d.path(), DataFormat::Auto).unwrap_err().to_string();
        assert!(
            e.ends_with(&format!("KA/loop: is a link to {}, a folder that holds it (a loop): remove the link", d.path().canonicalize().unwrap().display())),
            "{e}"
        );
        std::fs::remove_file(d.path().join("KA/loop")).unwrap();
        let elsewhere = tmp();
        for class in ["happy", "neutral"] {
            std::fs::create_dir_all(elsewhere.path().join(class)).unwrap();
            gray_png(&elsewhere.path().join(class).join("1.png"), 16, 16, |_, y| y as u8);
        }
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("KM")).unwrap();
        assert_eq!(scan(d.path(), DataFormat::Auto).unwrap().samples.len(), 6, "a link to another folder is read");
        std::fs::remove_file(d.path().join("KM")).unwrap();
    }
    // A manifest layout for a folder without one.
    let e = scan(d.path(), DataFormat::Csv).unwrap_err().to_string();
    assert!(e.ends_with("holds no manifest.csv, which --layout csv reads (leave --layout out to have the layout told)"), "{e}");
    // A manifest of a header alone, told or found.
    std::fs::write(d.path().join("manifest.csv"), "path,label,subject\n").unwrap();
    for format in [DataFormat::Auto, DataFormat::Csv] {
        let e = scan(d.path(), format).unwrap_err().to_string();
        assert!(e.ends_with("manifest.csv: lists no images: no rows below its header"), "{e}");
    }
}

#[test]
fn scans_jaffe_folders_and_csv_in_sorted_order() {
    let d = tmp();
    jaffe_dir(d.path(), &["KA", "KL", "MK"], &["NE", "HA", "SU"]);
    let ds = scan(d.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Jaffe);
    assert_eq!(ds.samples.len(), 9);
    assert_eq!(ds.samples[0].subject.as_deref(), Some("KA"));
    assert!(ds.samples.windows(2).all(|w| w[0].path < w[1].path));
    let labels = assign_labels(&ds, Task::Binary, &[]).unwrap();
    assert_eq!(labels.counts(), vec![3, 6], "neutral vs expressive");
    let multi = assign_labels(&ds, Task::Multiclass, &[]).unwrap();
    assert_eq!(multi.classes, vec!["happy", "neutral", "surprise"]);
    // A file manager's duplicate in the flat folder is refused as what it is.
    std::fs::copy(&ds.samples[0].path, d.path().join("KA.HA1.2 (1).tiff")).unwrap();
    let e = scan(d.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(
        e.contains("KA.HA1.2 (1).tiff: is not a JAFFE file name (SS.EEn.NNN.tiff): it looks like a file manager's copy of KA.HA1.2.tiff; remove it"),
        "{e}"
    );
    std::fs::remove_file(d.path().join("KA.HA1.2 (1).tiff")).unwrap();
    // A layout that does not fit says what it reads (were "contains no images" and "Not a directory (os error 20)").
    let e = scan(d.path(), DataFormat::Folders).unwrap_err().to_string();
    assert!(e.contains("holds 9 image(s) but no class folders: --layout folders reads one sub-folder per class"), "{e}");
    let e = scan(d.path(), DataFormat::Oulu).unwrap_err().to_string();
    assert!(e.contains("holds 9 image(s), none laid out or named as --layout oulu reads them"), "{e}");
    let e = scan(&ds.samples[0].path, DataFormat::Jaffe).unwrap_err().to_string();
    assert!(e.ends_with("is a file, but --layout jaffe reads a folder (a CSV manifest: --layout csv, or leave --layout out)"), "{e}");

    let f = tmp();
    separable_folders(f.path(), 3, 16);
    // A zip made on a Mac unpacks `__MACOSX/` (AppleDouble `._` files) beside the class folders: not a class.
    std::fs::create_dir_all(f.path().join("__MACOSX/a")).unwrap();
    std::fs::write(f.path().join("__MACOSX/a/._0.png"), b"\0\x05\x16\x07").unwrap();
    let ds = scan(f.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Folders);
    let e = scan(f.path(), DataFormat::Rafd).unwrap_err().to_string();
    assert!(e.contains("holds folders of images (a, b), none laid out or named as --layout rafd reads them (class folders: --layout folders"), "{e}");
    assert!(ds.samples.iter().all(|s| s.subject.is_none()));
    let labels = assign_labels(&ds, Task::Multiclass, &[]).unwrap();
    assert_eq!(labels.classes, vec!["a", "b"]);

    // JAFFE sorted into expression folders: the folders label, the names give the person.
    let j = tmp();
    for (folder, code) in [("happy", "HA"), ("calm", "NE")] {
        for (k, who) in ["KA", "KL", "MK"].iter().enumerate() {
            let p = j.path().join(folder).join(format!("{who}.{code}1.{k}.tiff"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            gray_png(&p.with_extension("png"), 16, 16, |x, y| (x * 9 + y * k as u32) as u8);
            std::fs::rename(p.with_extension("png"), &p).unwrap();
        }
    }
    let ds = scan(j.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Folders);
    let found: Vec<(&str, &str)> = ds.samples.iter().map(|s| (s.label.as_str(), s.subject.as_deref().unwrap())).collect();
    assert_eq!(found, [("calm", "KA"), ("calm", "KL"), ("calm", "MK"), ("happy", "KA"), ("happy", "KL"), ("happy", "MK")]);
    assert_eq!(vggft::data::scan::unnamed_people_warning(&ds, "…"), None);
    // One file without a JAFFE name: no subjects for anyone (a partial grouping would mislead),
    // and a warning names it (a file manager's copy as such).
    gray_png(&j.path().join("calm/portrait.png"), 16, 16, |x, _| x as u8);
    std::fs::copy(j.path().join("happy/KA.HA1.0.tiff"), j.path().join("happy/KA.HA1.0 copy.tiff")).unwrap();
    let ds = scan(j.path(), DataFormat::Auto).unwrap();
    assert!(ds.samples.iter().all(|s| s.subject.is_none()));
    let w = vggft::data::scan::unnamed_people_warning(&ds, "SO").unwrap();
    assert!(w.starts_with("warning: 2 of 8 images lack a name that gives their person, as JAFFE's, KDEF's, RaFD's and CK+'s give it for the other 6: "), "{w}");
    assert!(w.contains("calm/portrait.png") && w.contains("happy/KA.HA1.0 copy.tiff (a copy of KA.HA1.0.tiff?)") && w.contains(", so SO — rename"), "{w}");
    // Mostly other names: a few JAFFE-like ones say nothing.
    for k in 0..6 {
        gray_png(&j.path().join(format!("calm/p{k}.png")), 16, 16, |x, _| x as u8);
    }
    assert_eq!(vggft::data::scan::unnamed_people_warning(&scan(j.path(), DataFormat::Auto).unwrap(), "…"), None);

    // CK+ as shared (CK+48: `anger/S010_004_00000017.png`): each name gives its person, the folder the label.
    let k = tmp();
    for (folder, seq) in [("anger", 1), ("happy", 4), ("neutral", 2)] {
        std::fs::create_dir(k.path().join(folder)).unwrap();
        for who in ["S005", "S010", "S011"] {
            for frame in 1..=3 {
                gray_png(&k.path().join(folder).join(format!("{who}_{seq:03}_{frame:08}.png")), 16, 16, |x, y| (x * 9 + y * frame) as u8);
            }
        }
    }
    let ds = scan(k.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Folders);
    assert_eq!(ds.samples.iter().filter(|s| s.subject.as_deref() == Some("S010")).count(), 9);
    assert!(ds.samples.iter().all(|s| s.subject.as_deref() == Some(&s.path.file_name().unwrap().to_str().unwrap()[..4])));

    // KDEF as distributed: a folder per person and session; labels and people from the names, straight-ahead photos only.
    let kd = tmp();
    for who in ["AF01", "BF01", "AM02"] {
        std::fs::create_dir(kd.path().join(who)).unwrap();
        for code in ["NE", "HA", "AF"] {
            for angle in ["S", "HL", "FR"] {
                gray_png(&kd.path().join(who).join(format!("{who}{code}{angle}.JPG")), 16, 16, |x, y| (x * 9 + y) as u8);
            }
        }
    }
    let ds = scan(kd.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Kdef);
    let found: Vec<String> = ds.samples.iter().map(|s| format!("{} {}", s.label, s.subject.as_deref().unwrap())).collect();
    assert_eq!(found, ["fear F01", "happy F01", "neutral F01", "fear M02", "happy M02", "neutral M02", "fear F01", "happy F01", "neutral F01"]);
    assert!(ds.notes.iter().any(|n| n.contains("read the 9 straight-ahead photos (…S.JPG); 18 at other angles")), "{:?}", ds.notes);
    assert!(!ds.notes.iter().any(|n| n.contains("another person's folder")), "{:?}", ds.notes);
    // A photo moved into another person's folder: read by its name, and said.
    std::fs::rename(kd.path().join("AM02/AM02HAS.JPG"), kd.path().join("AF01/AM02HAS.JPG")).unwrap();
    let ds = scan(kd.path(), DataFormat::Auto).unwrap();
    assert!(ds.samples.iter().any(|s| s.path.ends_with("AF01/AM02HAS.JPG") && s.subject.as_deref() == Some("M02") && s.label == "happy"));
    assert!(ds.notes.iter().any(|n| n.starts_with("warning: KDEF: 1 photo(s) lie in another person's folder (AF01/AM02HAS.JPG)")), "{:?}", ds.notes);
    std::fs::rename(kd.path().join("AF01/AM02HAS.JPG"), kd.path().join("AM02/AM02HAS.JPG")).unwrap();
    // Only profiles: said, not "no images".
    for who in ["AF01", "BF01", "AM02"] {
        for code in ["NE", "HA", "AF"] {
            std::fs::remove_file(kd.path().join(who).join(format!("{who}{code}S.JPG"))).unwrap();
        }
    }
    let e = scan(kd.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("holds 18 KDEF photos, none of them straight ahead"), "{e}");
    // KDEF_and_AKDEF/KDEF/… given from the folder above: named, not read as a class.
    let above = tmp();
    std::fs::create_dir_all(above.path().join("AKDEF")).unwrap();
    gray_png(&above.path().join("AKDEF/AFS.JPG"), 16, 16, |x, _| x as u8);
    let kdef_copy = above.path().join("KDEF");
    std::fs::create_dir_all(kdef_copy.join("AF01")).unwrap();
    gray_png(&kdef_copy.join("AF01/AF01NES.JPG"), 16, 16, |x, _| x as u8);
    let e = scan(above.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("holds KDEF as distributed in `KDEF`, which would be read as one class: give that folder itself (--data "), "{e}");
    // A stray file in a person's folder is named.
    gray_png(&kd.path().join("AF01/AF01NES (1).JPG"), 16, 16, |x, _| x as u8);
    let e = scan(kd.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("AF01NES (1).JPG: is not a KDEF file name") && e.contains("a file manager's copy of AF01NES.JPG"), "{e}");

    // RaFD as distributed: one flat folder; labels and people from the names, the frontal camera only.
    let rf = tmp();
    for (who, group, sex) in [("01", "Caucasian", "female"), ("02", "Moroccan", "male")] {
        for expression in ["neutral", "happy", "contemptuous"] {
            for (camera, gaze) in [("090", "frontal"), ("090", "left"), ("045", "frontal")] {
                gray_png(&rf.path().join(format!("Rafd{camera}_{who}_{group}_{sex}_{expression}_{gaze}.jpg")), 16, 16, |x, y| (x * 9 + y) as u8);
            }
        }
    }
    let ds = scan(rf.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Rafd);
    let found: Vec<String> = ds.samples.iter().map(|s| format!("{} {}", s.label, s.subject.as_deref().unwrap())).collect();
    assert_eq!(
        found,
        [
            "contempt 01",
            "contempt 01",
            "happy 01",
            "happy 01",
            "neutral 01",
            "neutral 01",
            "contempt 02",
            "contempt 02",
            "happy 02",
            "happy 02",
            "neutral 02",
            "neutral 02"
        ]
    );
    assert!(
        ds.notes.iter().any(|n| n.contains("read the 12 photos of the frontal camera (Rafd090_…, all three gaze directions); 6 from the other cameras")),
        "{:?}",
        ds.notes
    );

    // CK+ as distributed: frames in cohn-kanade-images/, labels in Emotion/ (one number, as CK+ writes it).
    let ck = tmp();
    let frames = |seq: &str, n: u32| {
        let dir = ck.path().join("cohn-kanade-images").join(seq);
        std::fs::create_dir_all(&dir).unwrap();
        let name = seq.replace('/', "_");
        for f in 1..=n {
            gray_png(&dir.join(format!("{name}_{f:08}.png")), 16, 16, |x, y| (x * 9 + y * f) as u8);
        }
    };
    let emotion = |seq: &str, peak: u32, text: &str| {
        let dir = ck.path().join("Emotion").join(seq);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}_{peak:08}_emotion.txt", seq.replace('/', "_"))), text).unwrap();
    };
    frames("S005/001", 5);
    emotion("S005/001", 5, "   3.0000000e+00\n");
    frames("S010/002", 6);
    emotion("S010/002", 4, "   5.0000000e+00\n");
    frames("S010/003", 4);
    for given in [ck.path().to_path_buf(), ck.path().join("cohn-kanade-images")] {
        let ds = scan(&given, DataFormat::Auto).unwrap();
        assert_eq!(ds.format, DataFormat::Ckplus);
        let found: Vec<String> =
            ds.samples.iter().map(|s| format!("{} {} {}", s.path.file_stem().unwrap().to_str().unwrap(), s.label, s.subject.as_deref().unwrap())).collect();
        assert_eq!(
            found,
            [
                "S005_001_00000001 neutral S005",
                "S005_001_00000003 disgust S005",
                "S005_001_00000004 disgust S005",
                "S005_001_00000005 disgust S005",
                "S010_002_00000001 neutral S010",
                "S010_002_00000002 happy S010",
                "S010_002_00000003 happy S010",
                "S010_002_00000004 happy S010"
            ]
        );
        assert!(
            ds.notes.iter().any(|n| n.contains("2 sequence(s) with an emotion file"))
                && ds.notes.iter().any(|n| n.contains("1 sequence(s) without an emotion file")),
            "{:?}",
            ds.notes
        );
    }
    // Given from the folder above, beside a folder of other photos: named, not read as a class.
    let above = tmp();
    std::fs::create_dir_all(above.path().join("ck/cohn-kanade-images/S005")).unwrap();
    std::fs::create_dir_all(above.path().join("ck/Emotion")).unwrap();
    std::fs::create_dir_all(above.path().join("other")).unwrap();
    gray_png(&above.path().join("other/a.png"), 16, 16, |x, _| x as u8);
    let e = scan(above.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("holds CK+ as distributed in `ck`, which would be read as one class"), "{e}");
    // Oulu-CASIA as distributed: a folder per camera and lighting, per person, per expression sequence.
    let ou = tmp();
    for light in ["Dark", "Strong"] {
        for who in ["P001", "P002"] {
            for (k, expression) in ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"].iter().enumerate() {
                let dir = ou.path().join("OriginalImg/VL").join(light).join(who).join(expression);
                std::fs::create_dir_all(&dir).unwrap();
                let n = if who == "P002" && *expression == "Fear" { 3 } else { 5 + k as u32 % 2 };
                for f in 0..n {
                    gray_png(&dir.join(format!("{f:03}.png")), 16, 16, |x, y| (x * 9 + y * f) as u8);
                }
            }
        }
    }
    let strong = ou.path().join("OriginalImg/VL/Strong");
    let ds = scan(&strong, DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Oulu);
    let found: Vec<String> =
        ds.samples.iter().map(|s| format!("{} {} {}", s.path.strip_prefix(&strong).unwrap().display(), s.label, s.subject.as_deref().unwrap())).collect();
    assert_eq!(found.len(), 11 * 4, "{found:?}");
    assert_eq!(
        found[..8],
        [
            "P001/Anger/000.png neutral P001",
            "P001/Anger/002.png angry P001",
            "P001/Anger/003.png angry P001",
            "P001/Anger/004.png angry P001",
            "P001/Disgust/000.png neutral P001",
            "P001/Disgust/003.png disgust P001",
            "P001/Disgust/004.png disgust P001",
            "P001/Disgust/005.png disgust P001"
        ]
    );
    assert!(found.iter().any(|f| f == "P002/Happiness/004.png happy P002") && !found.iter().any(|f| f.contains("P002/Fear")));
    assert!(ds.notes.iter().any(|n| n.contains("Oulu-CASIA: 1 sequence(s) with 3 frames or fewer left out (P002/Fear)")), "{:?}", ds.notes);
    // Expression folders renamed in lower case (a case-sensitive copy): the same reading.
    std::fs::rename(strong.join("P001/Anger"), strong.join("P001/anger")).unwrap();
    let ds = scan(&strong, DataFormat::Auto).unwrap();
    assert_eq!((ds.format, ds.samples.len()), (DataFormat::Oulu, 44));
    assert!(ds.samples.iter().any(|s| s.path.ends_with("P001/anger/004.png") && s.label == "angry"));
    // Given above one camera and lighting: the folder to give, not the lightings read as classes.
    for (given, want) in [("OriginalImg", "(VL/Dark, VL/Strong): give one, as studies read it (--data "), ("OriginalImg/VL", "(Dark, Strong): give one")] {
        let e = scan(&ou.path().join(given), DataFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("holds Oulu-CASIA for 2 camera and lighting conditions") && e.contains(want) && e.contains("VL/Strong)"), "{e}");
    }
    // A label file that is no CK+ code, and a peak too early, are named.
    emotion("S010/003", 4, "happy");
    let e = scan(ck.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("S010_003_00000004_emotion.txt: is not a CK+ emotion file (one number, 0 to 7): it holds \"happy\""), "{e}");
    std::fs::remove_file(ck.path().join("Emotion/S010/003/S010_003_00000004_emotion.txt")).unwrap();
    emotion("S010/003", 2, "1");
    let e = scan(ck.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("names frame S010_003_00000002, frame 2 of its sequence"), "{e}");
    // The labels as Emotion_labels.zip unpacks into a folder of its own: found, and named in the note.
    std::fs::remove_dir_all(ck.path().join("Emotion/S010/003")).unwrap();
    std::fs::create_dir_all(ck.path().join("Emotion_labels")).unwrap();
    std::fs::rename(ck.path().join("Emotion"), ck.path().join("Emotion_labels/Emotion")).unwrap();
    let ds = scan(ck.path(), DataFormat::Auto).unwrap();
    assert_eq!((ds.format, ds.samples.len()), (DataFormat::Ckplus, 8));
    assert!(ds.notes.iter().any(|n| n.contains("2 sequence(s) with an emotion file (Emotion_labels/Emotion/)")), "{:?}", ds.notes);
    // Without them: said, where the people would have been read as classes.
    std::fs::remove_dir_all(ck.path().join("Emotion_labels")).unwrap();
    for (given, what) in [(ck.path().to_path_buf(), "holds CK+'s frames"), (ck.path().join("cohn-kanade-images"), "is CK+'s frames")] {
        let e = scan(&given, DataFormat::Auto).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("unpack Emotion_labels.zip into"), "{e}");
    }

    let c = tmp();
    let manifest = subject_dataset(c.path(), 4, 16);
    let ds = scan(&manifest, DataFormat::Auto).unwrap();
    assert_eq!((ds.format, ds.samples.len()), (DataFormat::Csv, 8));
    let ds2 = scan(c.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds2.format, DataFormat::Csv, "a folder with manifest.csv uses it");
}

#[test]
fn csv_with_bom_quotes_and_errors() {
    let d = tmp();
    gray_png(&d.path().join("a b.png"), 16, 16, |x, _| x as u8);
    gray_png(&d.path().join("c.png"), 16, 16, |_, y| y as u8);
    let m = d.path().join("m.csv");
    std::fs::write(&m, "\u{feff}path,label,subject\n\"a b.png\",neutral,\"P1\"\nc.png,happy,P2\n").unwrap();
    let ds = scan(&m, DataFormat::Auto).unwrap();
    assert_eq!(ds.samples.len(), 2);
    assert_eq!(ds.samples[0].subject.as_deref(), Some("P1"));
    // A spreadsheet's export where the comma is the decimal mark (semicolons, CRLF), and a tab-separated one.
    for sheet in ["path;label;subject\r\na b.png;neutral;P1\r\nc.png;happy;P2\r\n", "path\tlabel\tsubject\na b.png\tneutral\tP1\nc.png\thappy\tP2\n"] {
        std::fs::write(&m, sheet).unwrap();
        let ds = scan(&m, DataFormat::Auto).unwrap();
        assert_eq!(ds.samples.iter().map(|s| (s.label.as_str(), s.subject.as_deref())).collect::<Vec<_>>(), [("neutral", Some("P1")), ("happy", Some("P2"))]);
    }
    std::fs::write(&m, "name,label\na b.png,neutral\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("m.csv") && e.contains("`path` and `label`"), "{e}");
    std::fs::write(&m, "path,label\nmissing.png,neutral\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("missing.png"), "{e}");
    // A manifest made on Windows: the path that does exist is named.
    std::fs::create_dir_all(d.path().join("sub")).unwrap();
    gray_png(&d.path().join("sub/w.png"), 16, 16, |x, _| x as u8);
    std::fs::write(&m, "path,label\nc.png,happy\nsub\\w.png,neutral\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("line 3: ") && e.contains("sub/w.png exists: write paths with / between folders"), "{e}");
    // An unquoted comma in a name: the row's field count, said plainly.
    std::fs::write(&m, "path,label,subject\nc.png,happy,P2\na, b.png,neutral,P1\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("line 3: has 4 field(s) where the header has 3") && e.contains("quote a field"), "{e}");
    // Saved by Excel in Windows-1252 (`José` as one byte é): the encoding is named.
    std::fs::write(&m, b"path,label\nc.png,happy\nJos\xe9.png,neutral\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("m.csv: line 3: field 1 is not UTF-8 text") && e.contains("save it as UTF-8"), "{e}");
    std::fs::write(&m, b"p\xe9th,label\nc.png,happy\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("m.csv: line 1 (the header) is not UTF-8 text: save the manifest as UTF-8"), "{e}");
    // A web address in the path column: not a missing file here, but an address.
    std::fs::write(&m, "path,label\nc.png,happy\nhttps://example.com/faces/a.jpg,neutral\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("line 3: https://example.com/faces/a.jpg is a web address: vggft reads local files"), "{e}");
    // A picture given (or named) as the manifest.
    std::fs::copy(d.path().join("c.png"), &m).unwrap();
    let e = scan(&m, DataFormat::Csv).unwrap_err().to_string();
    assert!(e.contains("m.csv: is not a CSV manifest (it holds binary data: a picture?)"), "{e}");
    // FER-2013's CSV (faces as strings of numbers) says what it is.
    std::fs::write(&m, "emotion,pixels,Usage\n0,\"1 2 3 4\",Training\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(
        e.contains("needs columns `path` and `label` (or `filename` and `class`, as Keras's flow_from_dataframe names them) (found: emotion, pixels, Usage); its `pixels` column holds pictures as numbers (FER-2013's format)"),
        "{e}"
    );
    // Keras's `flow_from_dataframe` names (`filename`, `class`) and a `Person` column are read as path, label and subject.
    std::fs::write(
        &m,
        "Person,filename,class
P2,c.png,happy
P1,sub/w.png,neutral
",
    )
    .unwrap();
    let ds = scan(&m, DataFormat::Auto).unwrap();
    let got: Vec<(String, &str, Option<&str>)> =
        ds.samples.iter().map(|s| (s.path.file_name().unwrap().to_string_lossy().into_owned(), s.label.as_str(), s.subject.as_deref())).collect();
    assert_eq!(got, [("c.png".to_string(), "happy", Some("P2")), ("w.png".to_string(), "neutral", Some("P1"))]);
    // vggft's own name comes first where a header has both.
    std::fs::write(
        &m,
        "filename,path,label,class
none.png,c.png,happy,sad
",
    )
    .unwrap();
    let ds = scan(&m, DataFormat::Auto).unwrap();
    assert!(ds.samples[0].path.ends_with("c.png") && ds.samples[0].label == "happy", "{:?}", ds.samples);
    // The archive a face set comes in, given as the data: unpack it first.
    let zip = d.path().join("jaffedbase.zip");
    std::fs::write(&zip, b"PK\x03\x04\x14\0\0\0\x08\0rest of a zip").unwrap();
    let e = scan(&zip, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("jaffedbase.zip: is a zip archive, not a folder of photos or a CSV manifest: unpack it"), "{e}");
    let tar = d.path().join("faces.tar");
    let mut header = vec![0u8; 512];
    header[257..262].copy_from_slice(b"ustar");
    std::fs::write(&tar, &header).unwrap();
    let e = scan(&tar, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("faces.tar: is a tar archive"), "{e}");
    let e = scan(&d.path().join("c.png"), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("c.png: is a file but not a CSV manifest: give a folder or a .csv"), "{e}");
    // Two spellings of one class differing only in case are a typo, not two classes.
    std::fs::write(&m, "path,label\nc.png,happy\n\"a b.png\",Happy\n").unwrap();
    let e = scan(&m, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("m.csv: labels `") && e.contains("`happy` (") && e.contains("`Happy` (") && e.contains("differ only in case"), "{e}");
    let outside = tmp();
    gray_png(&outside.path().join("o.png"), 16, 16, |_, _| 9);
    std::fs::write(&m, format!("path,label\n{}/o.png,neutral\nc.png,happy\n", outside.path().display())).unwrap();
    let ds = scan(&m, DataFormat::Auto).unwrap();
    assert_eq!(ds.outside_paths.len(), 1, "paths outside the folder are allowed but reported");
}

#[test]
fn dataset_errors_are_named() {
    let d = tmp();
    let e = scan(d.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    jaffe_dir(d.path(), &["KA"], &["XX"]);
    let e = scan(d.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("unknown JAFFE expression code `XX`"), "{e}");
    let one = tmp();
    jaffe_dir(one.path(), &["KA", "KB"], &["HA", "SU"]);
    let ds = scan(one.path(), DataFormat::Auto).unwrap();
    let e = assign_labels(&ds, Task::Binary, &[]).unwrap_err().to_string();
    assert!(e.contains("only one class (expressive)"), "{e}");
    // Say which labels were found, that none is `neutral`, and what to do instead.
    assert!(e.contains("labels found: `happy`, `surprise`, none of them `neutral`") && e.contains("--task multiclass") && e.contains("--label-map"), "{e}");
    // Quoted, a space at the end of a folder's name shows.
    let spaced = tmp();
    for (class, v) in [("neutral ", 40u8), ("happy", 200)] {
        std::fs::create_dir(spaced.path().join(class)).unwrap();
        for i in 0..2 {
            gray_png(&spaced.path().join(class).join(format!("{i}.png")), 16, 16, |x, _| v.wrapping_add((x + i) as u8));
        }
    }
    let e = assign_labels(&scan(spaced.path(), DataFormat::Auto).unwrap(), Task::Binary, &[]).unwrap_err().to_string();
    assert!(e.contains("labels found: `happy`, `neutral `, none of them `neutral`"), "{e}");
    // A label map may name JAFFE's expressions by their codes, as the file names do.
    let l = assign_labels(&ds, Task::Binary, &[("HA".into(), "smile".into()), ("su".into(), "surprise".into())]).unwrap();
    assert_eq!(l.classes, ["smile", "surprise"]);
    let f = tmp();
    separable_folders(f.path(), 2, 16);
    std::fs::create_dir(f.path().join("empty_class")).unwrap();
    let e = scan(f.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("empty_class") && e.contains("no images"), "{e}");
    let lm = tmp();
    separable_folders(lm.path(), 2, 16);
    let ds = scan(lm.path(), DataFormat::Auto).unwrap();
    let e = assign_labels(&ds, Task::Binary, &[("a".into(), "x".into())]).unwrap_err().to_string();
    assert!(
        e.contains("label `b` is not in --label-map (the data's labels: a, b): every label needs a class (not mapped: b)") && !e.contains("match no label"),
        "{e}"
    );
    // An entry that names no label (a typo) is named with the labels left unmapped.
    let e = assign_labels(&ds, Task::Binary, &[("a".into(), "x".into()), ("bb".into(), "y".into())]).unwrap_err().to_string();
    assert!(e.contains("(not mapped: b); entries that match no label: bb"), "{e}");
    // A class sorted by person one level deeper: said where its images are.
    let nest = tmp();
    separable_folders(nest.path(), 2, 16);
    std::fs::create_dir_all(nest.path().join("a/KA")).unwrap();
    for f in std::fs::read_dir(nest.path().join("a")).unwrap().flatten().filter(|f| f.path().is_file()) {
        std::fs::rename(f.path(), nest.path().join("a/KA").join(f.file_name())).unwrap();
    }
    let e = scan(nest.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("class `a` has no images directly inside it (") && e.contains("a/KA holds some)"), "{e}");
    // Both classes sorted by the same two people is still that, not a split.
    for c in ["a", "b"] {
        for p in ["KA", "KB"] {
            std::fs::create_dir_all(nest.path().join(c).join(p)).unwrap();
            gray_png(&nest.path().join(c).join(p).join("x.png"), 16, 16, |x, _| x as u8);
        }
    }
    for f in std::fs::read_dir(nest.path().join("b")).unwrap().flatten().filter(|f| f.path().is_file()) {
        std::fs::remove_file(f.path()).unwrap();
    }
    let e = scan(nest.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("has no images directly inside it"), "{e}");
    // Two levels whose names tell which is the class (the one named as expressions): read, the other the person.
    for (outer, inner, layout) in [(["KA", "Kb"], ["neutral", "Happy"], "a folder per person"), (["neutral", "Happy"], ["KA", "Kb"], "a folder per class")] {
        let two = tmp();
        for o in outer {
            for i in inner {
                std::fs::create_dir_all(two.path().join(o).join(i)).unwrap();
                for k in 0..2 {
                    gray_png(&two.path().join(o).join(i).join(format!("{k}.png")), 16, 16, |x, y| (x * 3 + y * k) as u8);
                }
            }
        }
        let ds = scan(two.path(), DataFormat::Auto).unwrap();
        assert_eq!((ds.format, ds.samples.len()), (DataFormat::Folders, 8));
        for sample in &ds.samples {
            let (o, i) = (sample.path.parent().unwrap().parent().unwrap().file_name().unwrap(), sample.path.parent().unwrap().file_name().unwrap());
            let (person, class) = if layout == "a folder per person" { (o, i) } else { (i, o) };
            assert_eq!((sample.subject.as_deref(), sample.label.as_str()), (person.to_str(), class.to_str().unwrap()), "{}", sample.path.display());
        }
        assert!(ds.notes.iter().any(|n| n.starts_with(&format!("two levels of folders: {layout}"))), "{:?}", ds.notes);
    }
    // A dataset shared split beforehand (train/ and test/ of the same classes): the split is named.
    let pre = tmp();
    for split in ["Test", "train"] {
        separable_folders(&pre.path().join(split), 2, 16);
    }
    let e = scan(pre.path(), DataFormat::Auto).unwrap_err().to_string();
    let root = pre.path().display();
    assert!(
        e.contains("holds the folders `Test`, `train`, each of the same class folders (a, b): a split made beforehand, not classes")
            && e.contains(&format!("(--data {root}/train) and score the other with `vggft evaluate --data {root}/Test`")),
        "{e}"
    );
    // The folder above a JAFFE folder: that folder is named.
    let wrap = tmp();
    std::fs::create_dir_all(wrap.path().join("jaffe")).unwrap();
    jaffe_dir(&wrap.path().join("jaffe"), &["KA", "KB"], &["HA", "NE"]);
    let e = scan(wrap.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("holds one folder, `jaffe`, of JAFFE-named images") && e.contains("jaffe) to read each image's expression"), "{e}");
}

/// JAFFE sorted into a folder per person (as `predict --subject-from parent`
/// takes new people): the names give expression and person. Read as class
/// folders, the people were the classes, and a 7-way task learnt who.
#[test]
fn jaffe_names_in_a_folder_per_person_are_read_by_name() {
    let d = tmp();
    for (folder, who) in [("KA", "KA"), ("KL", "KL"), ("mk-2024", "MK")] {
        let dir = d.path().join(folder);
        std::fs::create_dir(&dir).unwrap();
        jaffe_dir(&dir, &[who], &["NE", "HA", "SU"]);
    }
    let ds = scan(d.path(), DataFormat::Auto).unwrap();
    assert_eq!(ds.format, DataFormat::Jaffe);
    let found: Vec<(String, &str, &str)> =
        ds.samples.iter().map(|s| (s.path.strip_prefix(d.path()).unwrap().display().to_string(), s.label.as_str(), s.subject.as_deref().unwrap())).collect();
    assert_eq!(found.len(), 9);
    assert_eq!(found[0], ("KA/KA.HA1.2.tiff".to_string(), "happy", "KA"));
    assert_eq!(found[8], ("mk-2024/MK.SU1.3.tiff".to_string(), "surprise", "MK"));
    assert_eq!(assign_labels(&ds, Task::Multiclass, &[]).unwrap().classes, vec!["happy", "neutral", "surprise"]);
    assert_eq!(assign_labels(&ds, Task::Binary, &[]).unwrap().counts(), vec![3, 6], "neutral vs expressive");
    assert_eq!(ds.notes, ["JAFFE-named photos in 3 folder(s) (KA, KL, mk-2024): each photo's person and expression from its name, not from its folder"]);
    // `--layout folders` still reads the folders as classes, as told, and is warned of.
    let folders = scan(d.path(), DataFormat::Folders).unwrap();
    assert_eq!(assign_labels(&folders, Task::Multiclass, &[]).unwrap().classes, vec!["KA", "KL", "mk-2024"]);
    let w = people_as_classes_warning(&folders).unwrap();
    assert!(w.starts_with("warning: each class folder holds the photos of one person, as their names tell (KA/: KA, KL/: KL, mk-2024/: MK): these look like a folder per person"), "{w}");
    assert_eq!(people_as_classes_warning(&ds), None, "read by name");

    // A folder named as an expression is a class folder, even of one person's photos.
    std::fs::rename(d.path().join("mk-2024"), d.path().join("happy")).unwrap();
    assert_eq!(scan(d.path(), DataFormat::Auto).unwrap().format, DataFormat::Folders);
    std::fs::rename(d.path().join("happy"), d.path().join("mk-2024")).unwrap();
    // A folder of two people's photos is a class folder too (JAFFE sorted by expression), not warned of.
    std::fs::copy(d.path().join("KL/KL.NE1.1.tiff"), d.path().join("KA/KL.NE1.1.tiff")).unwrap();
    let folders = scan(d.path(), DataFormat::Auto).unwrap();
    assert_eq!(folders.format, DataFormat::Folders);
    assert_eq!(people_as_classes_warning(&folders), None);
    // `--layout jaffe` reads the names one folder down whatever the folders are.
    let ds = scan(d.path(), DataFormat::Jaffe).unwrap();
    assert_eq!((ds.samples.len(), ds.samples[3].label.as_str(), ds.samples[3].subject.as_deref()), (10, "neutral", Some("KL")));
    std::fs::remove_file(d.path().join("KA/KL.NE1.1.tiff")).unwrap();
    // A stray non-JAFFE photo in a person's folder: read as JAFFE, it is named (not a silent class).
    gray_png(&d.path().join("KL/portrait.png"), 16, 16, |x, _| x as u8);
    let e = scan(d.path(), DataFormat::Auto).unwrap_err().to_string();
    assert!(e.ends_with("KL/portrait.png: is not a JAFFE file name (SS.EEn.NNN.tiff)"), "{e}");
}

#[test]
fn subject_split_keeps_people_apart_and_stratifies() {
    let d = tmp();
    let m = subject_dataset(d.path(), 10, 16);
    let ds = scan(&m, DataFormat::Auto).unwrap();
    let labels = assign_labels(&ds, Task::Binary, &[]).unwrap();
    for seed in 0..5 {
        let s = holdout(&ds, &labels, &ValSpec::Subjects { fraction: 0.2 }, seed).unwrap();
        assert_eq!(s.val_subjects.len(), 2);
        let subj = |i: &usize| ds.samples[*i].subject.clone().unwrap();
        let tr: std::collections::BTreeSet<String> = s.train.iter().map(subj).collect();
        assert!(s.val.iter().map(subj).all(|v| !tr.contains(&v)), "no subject on both sides");
        assert_eq!(s.train.len() + s.val.len(), 20);
        let val_neutral = s.val.iter().filter(|&&i| labels.targets[i] == 0).count();
        assert_eq!(val_neutral * 2, s.val.len(), "stratified: both classes equally");
    }
    let named = holdout(&ds, &labels, &ValSpec::Named { subjects: vec!["P03".into()] }, 0).unwrap();
    assert_eq!(named.val.len(), 2);
    let e = holdout(&ds, &labels, &ValSpec::Named { subjects: vec!["ZZ".into()] }, 0).unwrap_err().to_string();
    assert!(e.contains("no subject `ZZ`"), "{e}");
    let folds = kfold(&ds, &labels, 5, 1).unwrap();
    for f in &folds {
        let neutral = f.iter().filter(|&&i| labels.targets[i] == 0).count();
        assert_eq!((f.len(), neutral), (4, 2), "each fold: 2 people, one image of each class per person");
    }
    let mut all: Vec<usize> = folds.concat();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "every image in exactly one fold");
}

#[test]
fn split_without_subjects_falls_back_and_impossible_splits_fail() {
    let f = tmp();
    separable_folders(f.path(), 5, 16);
    let ds = scan(f.path(), DataFormat::Auto).unwrap();
    let labels = assign_labels(&ds, Task::Multiclass, &[]).unwrap();
    let s = holdout(&ds, &labels, &ValSpec::Subjects { fraction: 0.2 }, 0).unwrap();
    assert!(s.note.as_deref().unwrap_or("").contains("no subject ids"));
    assert_eq!(s.val.len(), 2);
    // One subject has all neutral images, so a split with neutral on both sides is impossible.
    let d = tmp();
    gray_png(&d.path().join("n.png"), 16, 16, |_, _| 1);
    gray_png(&d.path().join("h1.png"), 16, 16, |_, _| 2);
    gray_png(&d.path().join("h2.png"), 16, 16, |_, _| 3);
    std::fs::write(d.path().join("manifest.csv"), "path,label,subject\nn.png,neutral,A\nh1.png,happy,A\nh2.png,happy,B\n").unwrap();
    let ds = scan(d.path(), DataFormat::Auto).unwrap();
    let labels = assign_labels(&ds, Task::Binary, &[]).unwrap();
    let e = holdout(&ds, &labels, &ValSpec::Subjects { fraction: 0.5 }, 0).unwrap_err().to_string();
    assert!(e.contains("cannot make this split"), "{e}");
    let single = tmp();
    gray_png(&single.path().join("x.png"), 16, 16, |_, _| 1);
    std::fs::create_dir(single.path().join("a")).unwrap();
    std::fs::create_dir(single.path().join("b")).unwrap();
    gray_png(&single.path().join("a/1.png"), 16, 16, |_, _| 1);
    gray_png(&single.path().join("b/1.png"), 16, 16, |_, _| 1);
    gray_png(&single.path().join("b/2.png"), 16, 16, |_, _| 1);
    let ds = scan(single.path(), DataFormat::Folders).unwrap();
    let labels = assign_labels(&ds, Task::Multiclass, &[]).unwrap();
    let e = holdout(&ds, &labels, &ValSpec::Subjects { fraction: 0.3 }, 0).unwrap_err().to_string();
    assert!(e.contains("class `a` has a single image"), "{e}");
}

#[test]
fn cmyk_jpeg_decodes_to_luma() {
    // tests/fixtures/cmyk.jpg: 24×16, cyan rising along x, magenta along y, black 40 (written by Pillow, Adobe CMYK).
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg");
    let g = load_gray(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((g.width, g.height), (24, 16));
    let at = |x: usize, y: usize| g.pixels[y * 24 + x];
    assert!(g.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(at(0, 0) > at(23, 0) + 0.2, "more cyan is darker: {} vs {}", at(0, 0), at(23, 0));
    assert!(at(0, 0) > at(0, 15) + 0.2, "more magenta is darker: {} vs {}", at(0, 0), at(0, 15));
}

/// WebP, as pictures saved from the web are: lossy and lossless, with and
/// without alpha, an animation's first frame; a class folder of them trains.
#[test]
fn webp_pictures_read_as_the_other_formats_do() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // Lossy (VP8), against Pillow's own decoding of the same file (tests/fixtures/make_webp.py).
    let g = load_gray(&fx.join("lossy.webp")).unwrap_or_else(|e| panic!("{e}"));
    let pillow = load_gray(&fx.join("lossy-pillow.png")).unwrap();
    assert_eq!((g.width, g.height), (40, 32));
    let diff = g.pixels.iter().zip(&pillow.pixels).map(|(a, b)| (a - b).abs()).sum::<f32>() / g.pixels.len() as f32;
    assert!(diff < 2.0 / 255.0, "mean difference from Pillow's decoding {:.2}/255", diff * 255.0);
    // Lossless, RGB and RGBA: exactly the gray of the same picture as PNG.
    let rgba = image::RgbaImage::from_fn(20, 12, |x, y| image::Rgba([(x * 12) as u8, (y * 20) as u8, 90, if x < 10 { 255 } else { 30 }]));
    let d = tmp();
    for (name, img) in
        [("rgb", image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(rgba.clone()).to_rgb8())), ("rgba", image::DynamicImage::ImageRgba8(rgba))]
    {
        img.save_with_format(d.path().join(format!("{name}.webp")), image::ImageFormat::WebP).unwrap();
        img.save_with_format(d.path().join(format!("{name}.png")), image::ImageFormat::Png).unwrap();
        assert_eq!(load_gray(&d.path().join(format!("{name}.webp"))).unwrap(), load_gray(&d.path().join(format!("{name}.png"))).unwrap(), "{name}");
    }
    // An animation: its first frame (dark, 40), not the second (220).
    let a = load_gray(&fx.join("anim.webp")).unwrap();
    assert!(a.pixels.iter().all(|v| (v * 255.0 - 40.0).abs() < 1.0), "{:?}", &a.pixels[..4]);
    // Cut short: one sentence; a 16383² WebP (10 KiB on disk) would need over the decoding bound.
    let lossy = std::fs::read(fx.join("lossy.webp")).unwrap();
    std::fs::write(d.path().join("cut.webp"), &lossy[..lossy.len() / 2]).unwrap();
    let e = load_gray(&d.path().join("cut.webp")).unwrap_err().to_string();
    assert!(e.contains("cut.webp: cannot decode image: corrupt or truncated"), "{e}");
    let e = load_gray(&fx.join("big.webp")).unwrap_err().to_string();
    assert!(e.contains("a 16383×16383 WebP needs more than the 1024 MiB limit to decode"), "{e}");
    // Class folders with WebP photos: read as samples, not left out.
    let f = d.path().join("data");
    separable_folders(&f, 2, 32);
    std::fs::copy(fx.join("lossy.webp"), f.join("a/web.webp")).unwrap();
    std::fs::copy(fx.join("lossy.webp"), f.join("b/web.WEBP")).unwrap();
    let ds = scan(&f, DataFormat::Auto).unwrap();
    assert_eq!((ds.samples.len(), ds.unread.len()), (6, 0));
}

#[test]
fn non_utf8_file_names_train_and_predict() {
    use std::os::unix::ffi::OsStrExt;
    let d = tmp();
    let f = d.path().join("data");
    separable_folders(&f, 3, 32);
    let odd = f.join("a").join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::rename(f.join("a/00.png"), &odd).unwrap();
    let s = small_trunk(d.path(), 15);
    let (code, out, err) =
        run(&args(&s, &["finetune", "--data", f.to_str().unwrap(), "--task", "multiclass", "--stages", "head:1", "--val", "none", "--name", "r"]), d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let split = std::fs::read_to_string(d.path().join("runs/r/split.csv")).unwrap();
    assert!(split.contains("caf\u{FFFD}.png"), "listed (lossily) in split.csv: {split}");
    let out = bin().arg("predict").arg(&odd).args(["--model", "runs/r"]).current_dir(d.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("caf"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn jpegs_named_jfif_or_jpe_are_read_as_photos() {
    let d = tmp();
    let f = d.path().join("data");
    separable_folders(&f, 2, 32);
    let img = image::GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 200 } else { 30 }]));
    for name in ["a/saved.jfif", "b/saved.JPE"] {
        img.save_with_format(f.join(name), image::ImageFormat::Jpeg).unwrap();
    }
    let ds = scan(&f, DataFormat::Auto).unwrap();
    assert_eq!((ds.samples.len(), ds.unread.len()), (6, 0));
    assert_eq!(load_gray(&f.join("a/saved.jfif")).unwrap().width, 32);
}

#[test]
fn pictures_in_formats_vggft_does_not_read_are_said_not_silently_left_out() {
    let d = tmp();
    let f = d.path().join("data");
    separable_folders(&f, 3, 32);
    // Not decodable by vggft whatever their bytes: the name says what they are.
    for name in ["a/phone.HEIC", "b/web.avif", "b/anim.gif"] {
        std::fs::copy(f.join("a/00.png"), f.join(name)).unwrap();
    }
    std::fs::write(f.join("a/notes.txt"), "not a picture").unwrap();
    let ds = scan(&f, DataFormat::Auto).unwrap();
    assert_eq!(ds.samples.len(), 6);
    let names: Vec<String> = ds.unread.iter().map(|p| p.strip_prefix(&f).unwrap().display().to_string()).collect();
    assert_eq!(names, ["a/phone.HEIC", "b/anim.gif", "b/web.avif"], "the text file is no picture");
    // Training, predict on the folder and evaluate on the data: each says so (faces below too).
    let [train, predict, evaluate] = train_predict_evaluate(d.path());
    assert!(train.contains("warning: left out 3 picture(s) in a format vggft does not read") && train.contains("data/a/phone.HEIC"), "{train}");
    // A run without validation says so where its figures' protocol goes (report reads it).
    assert_eq!(json(&d.path().join("runs/latest/metrics.json"))["protocol"], "no validation (--val none: every image trained)");
    assert!(predict.contains("left out 2 picture(s)") && predict.contains("data/b/anim.gif"), "{predict}");
    assert!(evaluate.contains("skipped data/b/web.avif: a picture format vggft does not read"), "{evaluate}");
    let (code, _, err) = run(&["faces", "data", "--out", "fc", "--tile", "32"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left out 3 picture(s)"), "{err}");
    // A class of such pictures alone: its error says why it has none.
    for p in ["b/00.png", "b/01.png", "b/02.png"] {
        std::fs::remove_file(f.join(p)).unwrap();
    }
    let e = scan(&f, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("class `b` has no images vggft reads (2 picture(s) in other formats, first ") && e.contains("convert them to PNG or JPEG"), "{e}");
}

/// Trains on `dir/data` (7-way, no validation), predicts `data/b` (its 3
/// readable photos) and evaluates on `data`, each succeeding: their
/// standard errors, for what each says of the entries it left out.
fn train_predict_evaluate(dir: &Path) -> [String; 3] {
    let s = small_trunk(dir, 17);
    let (code, _, train) = run(&args(&s, &["finetune", "--data", "data", "--task", "multiclass", "--stages", "head:1", "--val", "none", "--quiet"]), dir);
    assert_eq!(code, 0, "{train}");
    let (code, out, predict) = run(&["predict", "--device", "cpu", "data/b"], dir);
    assert_eq!(code, 0, "{predict}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, _, evaluate) = run(&["evaluate", "--device", "cpu", "--data", "data", "--out", "ev"], dir);
    assert_eq!(code, 0, "{evaluate}");
    [train, predict, evaluate]
}

/// An entry named as a photo that is no regular file (a FIFO, a link to a
/// device) is left out and said, by training, predict and evaluate alike;
/// a class of nothing else says what its entries are.
#[test]
fn photo_names_that_are_no_regular_file_are_said_not_silently_left_out() {
    let d = tmp();
    let f = d.path().join("data");
    separable_folders(&f, 3, 32);
    let made = std::process::Command::new("mkfifo").arg(f.join("a/pipe.png")).status().unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", f.join("b/zero.png")).unwrap();
    let ds = scan(&f, DataFormat::Auto).unwrap();
    assert_eq!(ds.samples.len(), 6);
    let [train, predict, evaluate] = train_predict_evaluate(d.path());
    assert!(train.contains("warning: left out 2 entries named as a photo but not a regular file (") && train.contains("data/a/pipe.png"), "{train}");
    assert!(predict.contains("warning: left out 1 entry named as a photo but not a regular file") && predict.contains("data/b/zero.png"), "{predict}");
    assert!(evaluate.contains("skipped data/b/zero.png: not a regular file"), "{evaluate}");
    for p in ["b/00.png", "b/01.png", "b/02.png"] {
        std::fs::remove_file(f.join(p)).unwrap();
    }
    let e = scan(&f, DataFormat::Auto).unwrap_err().to_string();
    assert!(e.contains("class `b` has no images vggft reads (1 photo name(s) not a regular file (") && e.contains("b/zero.png"), "{e}");
}

/// Class folders whose file names give the person by no face set's
/// convention (`003_08.png`): `--subject-pattern` makes the split and the
/// folds subject-grouped, is kept in config.json, and predict and evaluate
/// of the run group a person's photos by it; a name it does not match and a
/// pattern that is not one are said.
#[test]
fn a_subject_pattern_takes_each_photos_person_from_its_name() {
    let d = tmp();
    let data = d.path().join("data");
    for (class, code, left) in [("neutral", "03", true), ("smiling", "08", false)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for s in 0..10u32 {
            gray_png(&data.join(class).join(format!("{s:03}_{code}.png")), 32, 32, |x, y| {
                let noise = ((x * 5 + y * 11 + s * 29) % 23) as u8;
                if (x < 16) == left {
                    190 + noise
                } else {
                    40 + noise
                }
            });
        }
    }
    let s = small_trunk(d.path(), 21);
    let train = |extra: &[&str]| run(&args(&s, &[&["finetune", "--data", "data", "--stages", "head:2"], extra].concat()), d.path());
    // Without it: no people, an image split, and how to give them.
    let (code, out, err) = train(&["--name", "plain"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stratified image split") && err.contains("--subject-pattern REGEX takes each photo's person from its file name"), "{err}");
    // The summary's validation figures say what they measure.
    assert!(out.contains("validation (best epoch, an image split: the data names no people, so a person's other photos may be in training):"), "{out}");
    // And that one split's figure is one draw, with what to quote instead.
    let draw = |out: &str| out.lines().find(|l| l.starts_with("one holdout of ")).map(str::to_string).unwrap_or_default();
    assert!(draw(&out).ends_with(" images is one draw: another split can land well away from it; `vggft cv` with the same options gives the mean ± std over folds and seeds, the figure to quote"), "{out}");
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/plain", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" right on the run's validation images (an image split: the data names no people"), "not people never seen: {out}");
    let (code, out, err) = train(&["--name", "p", "--subject-pattern", r"^(\d+)_"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("stratified"), "{err}");
    assert!(out.contains("validation (best epoch, a subject-grouped holdout: people never trained on):"), "{out}");
    assert!(draw(&out).starts_with("one holdout of 2 people ("), "{out}");
    let (code, out, err) = run(&["predict", "--held-out", "--model", "runs/p", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" right on 2 people the model never saw"), "{out}");
    let run_dir = d.path().join("runs/p");
    let mut sides: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let mut rdr = csv::Reader::from_path(run_dir.join("split.csv")).unwrap();
    for r in rdr.deserialize::<std::collections::HashMap<String, String>>() {
        let r = r.unwrap();
        let name = Path::new(&r["path"]).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(r["subject"], name[..3], "{name}");
        sides.entry(r["subject"].clone()).or_default().insert(r["side"].clone());
    }
    assert_eq!(sides.len(), 10);
    assert!(sides.values().all(|v| v.len() == 1), "no person on both sides: {sides:?}");
    assert_eq!(json(&run_dir.join("config.json"))["data"]["subject_pattern"], r"^(\d+)_");
    // predict groups a person's two photos by the run's pattern; a photo alone stays alone.
    let photos = ["data/neutral/007_03.png", "data/smiling/007_08.png", "data/neutral/008_03.png"];
    let (code, out, err) = run(&[&["predict", "--model", "runs/p", "--device", "cpu"][..], &photos].concat(), d.path());
    assert_eq!(code, 0, "{err}");
    let modes: Vec<&str> = out.lines().map(|l| l.rsplit('\t').next().unwrap()).collect();
    assert_eq!(modes, ["mode=person", "mode=person", "mode=single-image"], "{out}");
    // One given to predict stands instead of the run's: the first digit (0 for all three) makes them one person.
    let (code, out, err) = run(&[&["predict", "--model", "runs/p", "--device", "cpu", "--subject-pattern", r"^(\d)"][..], &photos].concat(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().all(|l| l.ends_with("mode=person")), "{out}");
    // Names it does not match: each alone, and the note names the pattern.
    let (code, out, err) = run(&[&["predict", "--model", "runs/p", "--device", "cpu", "--subject-pattern", "^x(.)"][..], &photos].concat(), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().all(|l| l.ends_with("mode=single-image")) && err.contains("names its person by --subject-pattern `^x(.)`"), "{out}{err}");
    // evaluate too: every photo with its person's statistics.
    let (code, out, err) = run(&["evaluate", "--model", "runs/p", "--data", "data", "--device", "cpu"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(format!("{out}{err}").contains("20 scored with their person's statistics, 0 by the single-image head"), "{out}{err}");
    // evaluate's own pattern stands instead of the run's: one matching no name leaves every photo alone.
    let (code, out, err) = run(&["evaluate", "--model", "runs/p", "--data", "data", "--device", "cpu", "--subject-pattern", "^x(.)", "--out", "ev"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(format!("{out}{err}").contains("0 scored with their person's statistics, 20 by the single-image head"), "{out}{err}");
    // cv's folds by it: every fold names people.
    let (code, _, err) =
        run(&args(&s, &["cv", "--data", "data", "--stages", "head:1", "--folds", "2", "--out", "cv", "--subject-pattern", r"^(\d+)_"]), d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("stratified") && err.contains("seed 0 fold 0 (000,"), "{err}");
    // A name the pattern does not match, and patterns that are not one.
    gray_png(&data.join("neutral/extra.png"), 32, 32, |x, _| x as u8);
    let (code, _, err) = train(&["--subject-pattern", r"^(\d+)_"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("extra.png: its name gives no person by --subject-pattern `^(\\d+)_`"), "{err}");
    for (bad, why) in [("^([^_", "is not a regular expression: unclosed character class"), ("^(a)(b)", "has 2 groups: give one")] {
        let (code, _, err) = train(&["--subject-pattern", bad]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(why), "{err}");
    }
}

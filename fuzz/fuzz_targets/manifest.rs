//! Any bytes as a CSV manifest (and as a face set's file name) → scan → labels →
//! holdout and k-fold splits: an error naming the problem, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vggft::data::scan::{copy_of, parse_jaffe_name, parse_kdef_name, parse_rafd_name, person_in_name, person_in_path, scan, DataFormat};
use vggft::data::split::{assign_labels, holdout, kfold, Task, ValSpec};

/// A folder with a few real files the manifest may name (a.png … d.png, sub/e.png).
fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        for n in ["a.png", "b.png", "c.png", "d.png", "sub/e.png"] {
            std::fs::write(d.path().join(n), b"not decoded by scan").unwrap();
        }
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let _ = (parse_jaffe_name(&name), parse_kdef_name(&name), parse_rafd_name(&name), person_in_name(&name), copy_of(&name));
    // As a path too: an Oulu-CASIA frame's person comes from its folders.
    let _ = person_in_path(std::path::Path::new(&*name));
    let p = dir().path().join("manifest.csv");
    std::fs::write(&p, data).unwrap();
    let Ok(ds) = scan(&p, DataFormat::Csv) else { return };
    for task in [Task::Binary, Task::Multiclass] {
        let Ok(labels) = assign_labels(&ds, task, &[]) else { continue };
        let _ = holdout(&ds, &labels, &ValSpec::Subjects { fraction: 0.3 }, 1);
        let _ = kfold(&ds, &labels, 2, 1);
    }
});

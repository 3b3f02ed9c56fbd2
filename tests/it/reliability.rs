//! Nothing is lost: `kill -9` at random moments of training and saving,
//! 20 times; the last checkpoint always loads and `--resume` always finishes
//! with exactly the uninterrupted run's history.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

fn history_without_seconds(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
}

#[test]
fn kill_nine_at_random_moments_never_loses_a_run() {
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let w = d.path().join("trunk.safetensors");
    trunk_only(&w, 11);
    let (ms, ws) = (m.to_str().unwrap().to_string(), w.to_str().unwrap().to_string());
    let args = |name: &str| -> Vec<String> {
        [
            "finetune",
            "--data",
            &ms,
            "--weights",
            &ws,
            "--width-div",
            "16",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--stages",
            "head:3,conv5:5",
            "--name",
            name,
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // The reference run, timed from the moment its folder exists to its end.
    let mut child = bin().args(args("reference")).current_dir(d.path()).spawn().unwrap();
    let cfg = d.path().join("runs/reference/config.json");
    while !cfg.exists() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    assert!(child.wait().unwrap().success());
    let full = t0.elapsed();
    let reference = history_without_seconds(&d.path().join("runs/reference/history.csv"));
    let mut lcg: u64 = 0x2545_F491_4F6C_DD1D;
    let (mut resumed, mut finished, mut before_config) = (0, 0, 0);
    // The reference run's time is only a first guess (CI machines differ and other tests compete for the
    // cores): whenever a run outlives its kill time the window shrinks, so 20 kills land inside training.
    let mut window = full;
    let mut i = 0;
    while resumed < 20 {
        assert!(i < 80, "only {resumed} of {i} kills landed inside training ({finished} finished first, window {window:?})");
        lcg = lcg.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let at = window.mul_f64(0.9 * ((lcg >> 33) as f64 / (1u64 << 31) as f64));
        i += 1;
        let name = format!("k{i}");
        let dir = d.path().join("runs").join(&name);
        let mut child = bin().args(args(&name)).current_dir(d.path()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        // Start the clock once the run folder exists (libtorch start-up and decoding come first).
        let t = Instant::now();
        while !dir.join("config.json").exists() && child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if dir.join("COMPLETE").exists() {
            finished += 1;
            window = window.mul_f64(0.7);
        } else if !dir.join("config.json").exists() {
            before_config += 1;
            continue;
        } else {
            // Whatever the moment, the state names a complete, loadable tensor file.
            if let Ok(s) = std::fs::read_to_string(dir.join("checkpoint.json")) {
                let st: serde_json::Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("kill {i}: checkpoint.json corrupt: {e}"));
                let file = dir.join(st["checkpoint"].as_str().unwrap());
                let (code, _, err) = run(&["weights", "inspect", file.to_str().unwrap()], d.path());
                assert_eq!(code, 0, "kill {i} at {at:?}: {err}");
            }
            let (code, _, err) = run(&["finetune", "--resume", dir.to_str().unwrap(), "--quiet"], d.path());
            assert_eq!(code, 0, "kill {i} at {at:?}: resume failed: {err}");
            resumed += 1;
        }
        assert_eq!(history_without_seconds(&dir.join("history.csv")), reference, "kill {i} at {at:?}");
        assert!(
            std::fs::read_dir(&dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains(".tmp")),
            "kill {i}: temporary files left after finishing"
        );
    }
    eprintln!(
        "kill -9 × {i} (reference run {full:?}, final window {window:?}): {resumed} killed inside training and resumed, {finished} had finished, {before_config} killed before the run folder existed; every history identical to the uninterrupted run"
    );
}

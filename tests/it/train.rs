//! Training: it learns, stages unfreeze exactly what they name, runs are
//! reproducible bit for bit, the cache changes nothing, resume replays exactly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Tensor};
use vggft::config::{ClassWeights, DataConfig, Keep, Stage, TrainConfig};
use vggft::data::augment::Augment;
use vggft::data::image::Crop;
use vggft::data::scan::DataFormat;
use vggft::data::split::{Task, TrainLabels, ValSpec};
use vggft::data::Preprocess;
use vggft::model::{Block, BnMode, HeadKind, Vgg16};
use vggft::session::{prepare, Prepared};
use vggft::train::optim::{OptimKind, Schedule};
use vggft::train::{Collect, EpochRow, Reporter, Trainer};

use crate::common::*;

fn data_cfg(path: &Path, val: ValSpec, size: u32) -> DataConfig {
    DataConfig {
        path: path.to_path_buf(),
        format: DataFormat::Auto,
        task: Task::Binary,
        label_map: vec![],
        train_labels: TrainLabels::Auto,
        val,
        skip_bad: false,
        preprocess: Preprocess::new(Crop::None, size),
        subject_pattern: None,
    }
}

fn train_cfg(stages: &[(Block, usize)], augment: &str) -> TrainConfig {
    TrainConfig {
        stages: stages.iter().map(|&(from, epochs)| Stage { from, epochs }).collect(),
        optimizer: OptimKind::Sgd,
        lr: 0.02,
        block_lr_factor: 0.5,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine,
        warmup: 0.1,
        batch_size: 6,
        label_smoothing: 0.0,
        class_weights: ClassWeights::Auto,
        augment: Augment::preset(augment).unwrap(),
        patience: 0,
        keep: Keep::Best,
        cache: true,
        cache_views: 2,
        cache_mem_mb: 512,
        cache_f16: false,
        clean_views: false,
        seed: 7,
        members: 1,
        threshold: Default::default(),
        calibrate: Default::default(),
    }
}

fn prepared(path: &Path, val: ValSpec) -> Prepared {
    prepare(&data_cfg(path, val, 32), 7, &mut Collect::default()).unwrap()
}

fn model(bn: BnMode, head: HeadKind, seed: i64) -> Vgg16 {
    let _rng = torch_rng();
    tch::manual_seed(seed);
    let mut cfg = small_cfg(bn, head, 2);
    cfg.dropout = 0.2;
    Vgg16::new(&cfg, Device::Cpu).unwrap()
}

fn trainer<'a>(cfg: &'a TrainConfig, p: &'a Prepared, pre: &'a Preprocess) -> Trainer<'a> {
    Trainer { cfg, pre, data: &p.data, device: Device::Cpu, checkpoint_dir: None, stop: None, shared: &[], keep_stats: true }
}

#[test]
fn learns_a_trivially_separable_set() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let p = prepared(&m, ValSpec::None);
    let mut cfg = train_cfg(&[(Block::Conv1, 25)], "none");
    cfg.lr = 0.05;
    let pre = Preprocess::new(Crop::None, 32);
    let mut net = model(BnMode::Train, HeadKind::Bn, 1);
    let out = trainer(&cfg, &p, &pre).run(&mut net, &mut Collect::default(), None).unwrap();
    let first = out.history.first().unwrap().train_loss;
    let last = out.history.last().unwrap();
    assert!(last.train_loss < first * 0.5, "loss fell from {first} to {}", last.train_loss);
    assert_eq!(last.train_acc, 1.0, "history: {:?}", out.history.iter().map(|r| r.train_acc).collect::<Vec<_>>());
    // And the kept model classifies every training image correctly in eval mode.
    let x = pre.normalise(&p.data.gray);
    let pred = tch::no_grad(|| net.forward_t(&x, false)).argmax(1, false);
    let y = Tensor::from_slice(&p.data.targets);
    assert_eq!(i64::try_from(pred.eq_tensor(&y).sum(tch::Kind::Int64)).unwrap(), 16);
    // --bn train: eval mode normalises with the training images' own statistics
    // (precise BN after every epoch), so the trunk's eval-mode output on them is
    // its train-mode output with all 16 in one batch — not the running averages
    // of batches of 6 (with those, on one CPU, this set was answered 8/16 above).
    let (eval, batch) = tch::no_grad(|| (net.features(&x, Block::Conv1, Block::Head, false), net.features(&x, Block::Conv1, Block::Head, true)));
    let rel = f64::try_from((&eval - &batch).abs().max()).unwrap() / f64::try_from(batch.abs().max()).unwrap();
    assert!(rel < 1e-3, "eval-mode features differ from the whole set's batch statistics by {rel} of their range");
}

fn changed(before: &[(String, Tensor)], net: &Vgg16) -> Vec<String> {
    let now = net.vs.variables();
    before.iter().filter(|(n, t)| max_abs_diff(&now[n], t) > 0.0).map(|(n, _)| n.clone()).collect()
}

fn snapshot(net: &Vgg16) -> Vec<(String, Tensor)> {
    net.named_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect()
}

#[test]
fn stages_unfreeze_exactly_the_blocks_they_name() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 6, 32);
    let p = prepared(&m, ValSpec::Subjects { fraction: 0.34 });
    let pre = Preprocess::new(Crop::None, 32);
    let mut net = model(BnMode::Frozen, HeadKind::Bn, 2);
    for (from, allowed) in [(Block::Head, Block::Head), (Block::Conv4, Block::Conv4)] {
        let cfg = train_cfg(&[(from, 1)], "light");
        let before = snapshot(&net);
        trainer(&cfg, &p, &pre).run(&mut net, &mut Collect::default(), None).unwrap();
        let ch = changed(&before, &net);
        for n in &ch {
            let b = net.block_of_name(n).unwrap();
            assert!(b >= allowed, "stage {from}: {n} ({b}) changed");
            assert!(!Vgg16::is_buffer(n) || b == Block::Head, "frozen trunk BN statistics changed: {n}");
        }
        for (n, t) in &before {
            if net.block_of_name(n).unwrap() >= allowed && !Vgg16::is_buffer(n) && t.dim() > 1 {
                assert!(ch.contains(n), "stage {from}: trainable {n} did not change");
            }
        }
    }
}

fn run_once(m: &Path, cfg: &TrainConfig, dir: Option<&Path>) -> (Vec<EpochRow>, Vec<(String, Tensor)>) {
    let p = prepared(m, ValSpec::Subjects { fraction: 0.25 });
    let pre = Preprocess::new(Crop::None, 32);
    let mut net = model(BnMode::Drop, HeadKind::Bn, 3);
    let mut t = trainer(cfg, &p, &pre);
    t.checkpoint_dir = dir.map(Path::to_path_buf);
    let out = t.run(&mut net, &mut Collect::default(), None).unwrap();
    (out.history, snapshot(&net))
}

/// Everything in a history row but its wall time.
fn strip(rows: &[EpochRow]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!("{} {} {} {:e} {:e} {:e} {:?} {:?} {:?}", r.epoch, r.stage, r.block, r.lr, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.val_bacc)
        })
        .collect()
}

/// `--keep best` hands back the weights of the epoch of lowest validation
/// loss, `--keep last` those of the last epoch: the finished model's own
/// validation loss is that epoch's history row, and no other's.
#[test]
fn keep_best_restores_the_lowest_validation_loss_and_keep_last_the_last_epoch() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let mut p = prepared(&m, ValSpec::Subjects { fraction: 0.25 });
    // The validation people's labels swapped: what training learns raises their loss, so the best epoch comes
    // before the last on any CPU (with the true labels the trajectory decided it, and on some CPUs the last won).
    for r in p.data.val.clone() {
        p.data.targets[r] = 1 - p.data.targets[r];
    }
    let pre = Preprocess::new(Crop::None, 32);
    let mut cfg = train_cfg(&[(Block::Head, 2), (Block::Conv4, 8)], "none");
    cfg.lr = 0.1;
    let weights = Tensor::from_slice(&vggft::train::class_weights(cfg.class_weights, &p.data)).to_kind(tch::Kind::Float);
    let y = Tensor::from_slice(&p.data.val.iter().map(|&r| p.data.targets[r]).collect::<Vec<_>>());
    let mut kept = vec![];
    for keep in [Keep::Best, Keep::Last] {
        cfg.keep = keep;
        let mut net = model(BnMode::Drop, HeadKind::Bn, 3);
        let t = trainer(&cfg, &p, &pre);
        let out = t.run(&mut net, &mut Collect::default(), None).unwrap();
        let loss = f64::try_from(t.logits(&net, None, &p.data.val).cross_entropy_loss(&y, Some(&weights), tch::Reduction::Mean, -100, 0.0)).unwrap();
        let rows: Vec<f64> = out.history.iter().map(|r| r.val_loss.unwrap()).collect();
        let nearest = 1 + (0..rows.len()).min_by(|&a, &b| (rows[a] - loss).abs().total_cmp(&(rows[b] - loss).abs())).unwrap();
        let best = 1 + (0..rows.len()).min_by(|&a, &b| rows[a].total_cmp(&rows[b])).unwrap();
        assert_eq!(out.best_epoch, best, "{rows:?}");
        assert!(best < rows.len(), "the test needs a best epoch before the last: {rows:?}");
        let want = if keep == Keep::Best { best } else { rows.len() };
        assert_eq!((out.kept_epoch, nearest), (want, want), "{keep:?}: the model's validation loss {loss} against {rows:?}");
        assert!((rows[want - 1] - loss).abs() < 1e-4, "{keep:?}: {loss} vs {}", rows[want - 1]);
        kept.push(strip(&out.history));
    }
    assert_eq!(kept[0], kept[1], "--keep changes which weights are handed back, not the training");
}

#[test]
fn same_seed_same_history_bit_for_bit() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let cfg = train_cfg(&[(Block::Head, 2), (Block::Conv5, 3)], "light");
    let (a, wa) = run_once(&m, &cfg, None);
    let (b, wb) = run_once(&m, &cfg, None);
    assert_eq!(strip(&a), strip(&b));
    for ((n, x), (_, y)) in wa.iter().zip(&wb) {
        assert_eq!(max_abs_diff(x, y), 0.0, "{n}");
    }
    // The written history.csv is identical too, apart from the seconds column.
    let (fa, fb) = (d.path().join("a.csv"), d.path().join("b.csv"));
    vggft::run::write_history(&fa, &a).unwrap();
    vggft::run::write_history(&fb, &b).unwrap();
    let cut = |p: &Path| std::fs::read_to_string(p).unwrap().lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect::<Vec<_>>();
    assert_eq!(cut(&fa), cut(&fb));
    let mut other = cfg.clone();
    other.seed = 8;
    let (c, _) = run_once(&m, &other, None);
    assert_ne!(strip(&a), strip(&c), "a different seed gives a different run");
}

#[test]
fn cache_changes_nothing_without_augmentation() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let cached = train_cfg(&[(Block::Head, 2), (Block::Conv5, 2)], "none");
    let mut plain = cached.clone();
    plain.cache = false;
    let (a, _) = run_once(&m, &cached, None);
    let (b, _) = run_once(&m, &plain, None);
    for (x, y) in a.iter().zip(&b) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-4, "epoch {}: {} vs {}", x.epoch, x.train_loss, y.train_loss);
        assert!((x.val_loss.unwrap() - y.val_loss.unwrap()).abs() < 1e-4);
    }
}

#[test]
fn f16_cache_stays_close_to_the_f32_cache() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let full = train_cfg(&[(Block::Head, 2), (Block::Conv5, 2)], "none");
    let mut half = full.clone();
    half.cache_f16 = true;
    let (a, _) = run_once(&m, &full, None);
    let (b, _) = run_once(&m, &half, None);
    assert_ne!(strip(&a), strip(&b), "the f16 cache rounds activations");
    for (x, y) in a.iter().zip(&b) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-2, "epoch {}: {} vs {}", x.epoch, x.train_loss, y.train_loss);
    }
}

#[test]
fn caches_shared_across_folds_give_the_per_run_result() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let cfg = train_cfg(&[(Block::Head, 2), (Block::Conv5, 2)], "light");
    let p = prepared(&m, ValSpec::Subjects { fraction: 0.25 });
    let pre = Preprocess::new(Crop::None, 32);
    // What cv builds once: the conv4 output of every image, and the conv5 output derived from it.
    let base_net = model(BnMode::Drop, HeadKind::Bn, 3);
    let all: Vec<usize> = (0..p.data.targets.len()).collect();
    let views = vggft::train::cache_plan(&base_net, &cfg, &pre, Block::Conv5, all.len(), all.len(), Device::Cpu).unwrap();
    let mut quiet = Collect::default();
    let mut pass = vggft::train::Pass::new(&mut quiet, None);
    let base = vggft::train::build_cache(&base_net, &cfg, &pre, &p.data.gray, Block::Conv5, views, &all, &all, Device::Cpu, &mut pass).unwrap();
    let shared = vec![vggft::train::derive_cache(&base_net, &base, Block::Head), base];
    let mut own_net = model(BnMode::Drop, HeadKind::Bn, 3);
    let own = trainer(&cfg, &p, &pre).run(&mut own_net, &mut Collect::default(), None).unwrap();
    let mut t = trainer(&cfg, &p, &pre);
    t.shared = &shared;
    let mut shared_net = model(BnMode::Drop, HeadKind::Bn, 3);
    let mut msgs = Collect::default();
    let with_shared = t.run(&mut shared_net, &mut msgs, None).unwrap();
    assert!(!msgs.messages.iter().any(|m| m.contains("cached") || m.contains("extended")), "nothing recomputed: {:?}", msgs.messages);
    for (x, y) in own.history.iter().zip(&with_shared.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-4, "epoch {}: {} vs {}", x.epoch, x.train_loss, y.train_loss);
        assert!((x.val_loss.unwrap() - y.val_loss.unwrap()).abs() < 1e-4);
    }
}

/// Sets the stop flag once `after` epochs have finished (like Ctrl-C).
struct StopAfter<'a> {
    after: usize,
    flag: &'a AtomicBool,
}

impl Reporter for StopAfter<'_> {
    fn message(&mut self, _: &str) {}
    fn epoch_end(&mut self, r: &EpochRow) {
        if r.epoch == self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn resume_finishes_exactly_like_an_uninterrupted_run() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let mut cfg = train_cfg(&[(Block::Head, 2), (Block::Conv5, 3)], "light");
    cfg.optimizer = OptimKind::Adam;
    cfg.lr = 1e-3;
    let (full, wfull) = run_once(&m, &cfg, None);
    for stop_after in [1, 2, 3] {
        let run_dir = tmp();
        let p = prepared(&m, ValSpec::Subjects { fraction: 0.25 });
        let pre = Preprocess::new(Crop::None, 32);
        let flag = AtomicBool::new(false);
        let mut net = model(BnMode::Drop, HeadKind::Bn, 3);
        let mut t = trainer(&cfg, &p, &pre);
        t.checkpoint_dir = Some(run_dir.path().to_path_buf());
        t.stop = Some(&flag);
        let err = t.run(&mut net, &mut StopAfter { after: stop_after, flag: &flag }, None).err().unwrap();
        assert!(matches!(err, vggft::Error::Interrupted(_)), "{err}");
        let state = vggft::train::load_state(run_dir.path()).unwrap();
        assert_eq!(state.history.len(), stop_after);
        let mut fresh = model(BnMode::Drop, HeadKind::Bn, 99);
        let mut t2 = trainer(&cfg, &p, &pre);
        t2.checkpoint_dir = Some(run_dir.path().to_path_buf());
        let out = t2.run(&mut fresh, &mut Collect::default(), Some(state)).unwrap();
        assert_eq!(strip(&out.history), strip(&full), "stopped after epoch {stop_after}");
        let now = fresh.vs.variables();
        for (n, t) in &wfull {
            assert_eq!(max_abs_diff(&now[n], t), 0.0, "{n} after resuming from epoch {stop_after}");
        }
    }
}

/// Sets the stop flag (like Ctrl-C) once a cache pass has done `after` images.
struct StopInPass<'a> {
    after: usize,
    flag: &'a AtomicBool,
    /// The furthest point of the cache pass reported.
    reached: usize,
}

impl Reporter for StopInPass<'_> {
    fn message(&mut self, _: &str) {}
    fn progress(&mut self, what: &str, _: &str, done: usize, _: usize) {
        if what.starts_with("caching") {
            self.reached = self.reached.max(done);
            if done >= self.after {
                self.flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A cache pass takes minutes at 224 px on a laptop CPU: a stop asked for
/// during it ends it before its next chunk of images (not after it, at the
/// first batch), and the resumed run finishes like an uninterrupted one.
#[test]
fn a_stop_during_the_cache_pass_ends_it_and_resume_finishes_the_run() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let cfg = train_cfg(&[(Block::Head, 2), (Block::Conv5, 2)], "light");
    let (full, _) = run_once(&m, &cfg, None);
    let run_dir = tmp();
    let p = prepared(&m, ValSpec::Subjects { fraction: 0.25 });
    let pre = Preprocess::new(Crop::None, 32);
    let flag = AtomicBool::new(false);
    let mut t = trainer(&cfg, &p, &pre);
    t.checkpoint_dir = Some(run_dir.path().to_path_buf());
    t.stop = Some(&flag);
    let mut rep = StopInPass { after: 8, flag: &flag, reached: 0 };
    let err = t.run(&mut model(BnMode::Drop, HeadKind::Bn, 3), &mut rep, None).err().unwrap();
    let total = p.data.train.len() * cfg.cache_views + p.data.train.len() + p.data.val.len();
    assert!(
        matches!(&err, vggft::Error::Interrupted(why) if why.starts_with("stopped while caching the frozen") && why.contains("no epoch had finished")),
        "{err}"
    );
    assert_eq!(rep.reached, 8, "the pass of {total} images ended at the chunk after the stop");
    assert!(vggft::train::load_state(run_dir.path()).is_err(), "no checkpoint: no epoch ran");
    let mut t2 = trainer(&cfg, &p, &pre);
    t2.checkpoint_dir = Some(run_dir.path().to_path_buf());
    let out = t2.run(&mut model(BnMode::Drop, HeadKind::Bn, 3), &mut Collect::default(), None).unwrap();
    assert_eq!(strip(&out.history), strip(&full));
}

#[test]
fn a_stop_before_the_first_epoch_ends_says_nothing_was_saved() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 4, 32);
    let cfg = train_cfg(&[(Block::Head, 2)], "none");
    let p = prepared(&m, ValSpec::None);
    let pre = Preprocess::new(Crop::None, 32);
    let flag = AtomicBool::new(true);
    let mut t = trainer(&cfg, &p, &pre);
    t.stop = Some(&flag);
    let err = t.run(&mut model(BnMode::Drop, HeadKind::Bn, 4), &mut Collect::default(), None).err().unwrap().to_string();
    assert!(err.contains("no epoch had finished") && !err.contains("is saved"), "{err}");
}

/// `--members K`: K heads trained side by side, each on its own batch order
/// and views, folded into one head when the fit ends. The saved model has the
/// plain model's variables and scores like the ensemble it replaces; the run
/// replays bit for bit, a resumed run finishes like an uninterrupted one, and
/// stages that train the trunk are refused.
#[test]
fn ensemble_members_fold_into_one_head_and_resume_exactly() {
    let _rng = torch_rng();
    let d = tmp();
    let m = subject_dataset(d.path(), 8, 32);
    let mut cfg = train_cfg(&[(Block::Head, 4)], "light");
    cfg.members = 3;
    let (full, wfull) = run_once(&m, &cfg, None);
    let (again, wagain) = run_once(&m, &cfg, None);
    assert_eq!(strip(&full), strip(&again));
    for ((n, x), (_, y)) in wfull.iter().zip(&wagain) {
        assert_eq!(max_abs_diff(x, y), 0.0, "{n}");
    }
    let (single, wsingle) = run_once(&m, &TrainConfig { members: 1, ..cfg.clone() }, None);
    let names = |w: &[(String, Tensor)]| w.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&wfull), names(&wsingle), "the folded model has the plain model's variables");
    assert_ne!(strip(&full), strip(&single), "three heads train differently from one");
    // The last epoch's validation loss was computed on the members' averaged
    // logits; the folded head gives the same loss.
    let p = prepared(&m, ValSpec::Subjects { fraction: 0.25 });
    let pre = Preprocess::new(Crop::None, 32);
    let mut net = model(BnMode::Drop, HeadKind::Bn, 3);
    let t = trainer(&cfg, &p, &pre);
    t.run(&mut net, &mut Collect::default(), None).unwrap();
    let logits = t.logits(&net, None, &p.data.val);
    let y = Tensor::from_slice(&p.data.val.iter().map(|&r| p.data.targets[r]).collect::<Vec<_>>());
    let w = Tensor::from_slice(&vggft::train::class_weights(cfg.class_weights, &p.data)).to_kind(tch::Kind::Float);
    let loss = f64::try_from(logits.cross_entropy_loss(&y, Some(&w), tch::Reduction::Mean, -100, 0.0)).unwrap();
    let last = full.last().unwrap().val_loss.unwrap();
    assert!((loss - last).abs() < 1e-5, "folded {loss} vs ensemble {last}");
    // Killed after epoch 2 and resumed: the same history and weights.
    let run_dir = tmp();
    let flag = AtomicBool::new(false);
    let mut net = model(BnMode::Drop, HeadKind::Bn, 3);
    let mut t = trainer(&cfg, &p, &pre);
    t.checkpoint_dir = Some(run_dir.path().to_path_buf());
    t.stop = Some(&flag);
    assert!(t.run(&mut net, &mut StopAfter { after: 2, flag: &flag }, None).is_err());
    let state = vggft::train::load_state(run_dir.path()).unwrap();
    let mut fresh = model(BnMode::Drop, HeadKind::Bn, 99);
    let mut t2 = trainer(&cfg, &p, &pre);
    t2.checkpoint_dir = Some(run_dir.path().to_path_buf());
    let out = t2.run(&mut fresh, &mut Collect::default(), Some(state)).unwrap();
    assert_eq!(strip(&out.history), strip(&full));
    let now = fresh.vs.variables();
    for (n, t) in &wfull {
        assert_eq!(max_abs_diff(&now[n], t), 0.0, "{n} after resuming");
    }
    // Members need a frozen trunk.
    let err = TrainConfig { stages: vec![Stage { from: Block::Head, epochs: 1 }, Stage { from: Block::Conv5, epochs: 1 }], ..cfg.clone() }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("members") && err.contains("head-only"), "{err}");
    assert!(TrainConfig { members: 0, ..cfg }.validate().is_err());
}

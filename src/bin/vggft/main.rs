//! The `vggft` binary: parse, call the library, print results and errors,
//! map outcomes to exit codes (0 ok, 1 error, 2 usage, 130 interrupted).

#[macro_use]
mod output;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};

use output::{print_metrics, reporter, text_path, Cli2};
use vggft::cli::{
    Cli, Command, CvArgs, DataArgs, EvaluateArgs, ExplainArgs, FinetuneArgs, LrFindArgs, ModelArgs, PredictArgs, SpeedArgs, TrainArgs, WeightsCommand,
};
use vggft::eval::predict;
use vggft::model::weights;
use vggft::train::Reporter;
use vggft::{run, session, Error};

/// Ctrl-C (and SIGTERM, SIGHUP) sets a flag; training stops after the current batch.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    on_signal(move || {
        if f.swap(true, Ordering::SeqCst) {
            quit_interrupted(None);
        }
        errln!();
        errln!("stopping after the current batch (Ctrl-C again to quit at once)…");
    });
    flag
}

/// Ctrl-C (and SIGTERM, SIGHUP) ends a command that keeps nothing to resume
/// from — predict, evaluate, explain, faces, lr-find — at once, as
/// `quit_interrupted` says, with what it leaves of the files it writes.
fn quit_on_signal(command: &Command) {
    let why = match command {
        // Lines, not files.
        Command::Predict(_) | Command::Report { .. } | Command::Speed(_) | Command::Weights { .. } => "stopped",
        // Their files move into place together once all are written (`fsutil::write_set`).
        Command::Evaluate(_) | Command::LrFind(_) | Command::Faces { .. } => {
            "stopped; its files are written as one set, so its output folder holds the earlier set or this call's whole, none half-written (a folder it made and had not filled is removed)"
        }
        _ => "stopped; the files it had finished stay, and none is left half-written",
    };
    on_signal(move || quit_interrupted(Some(why)));
}

/// Runs `handler` (on a thread of its own) at Ctrl-C, SIGTERM or SIGHUP. A
/// signal the caller set to be ignored stays ignored: `nohup vggft cv …`
/// (SIGHUP) or `vggft … &` from a script (SIGINT) must not stop the run.
fn on_signal(handler: impl FnMut() + Send + 'static) {
    let ignored: Vec<libc::c_int> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].into_iter().filter(|&s| is_ignored(s)).collect();
    let _ = ctrlc::set_handler(handler);
    for s in ignored {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
}

/// Ends the process with exit code 130 (interrupted), first removing the
/// temporary files it is writing and holding its other writes back
/// (`fsutil::stop_writing`); `_exit`, not `exit`: libtorch's threads may be
/// mid-computation, and its static destructors must not run under them.
fn quit_interrupted(why: Option<&str>) -> ! {
    let held = vggft::fsutil::stop_writing();
    if let Some(why) = why {
        errln!();
        errln!("interrupted: {why}");
    }
    held.remove_again();
    // SAFETY: _exit ends the process without running anything of it.
    unsafe { libc::_exit(130) }
}

/// Whether `signal` is set to be ignored (as `nohup` sets SIGHUP).
fn is_ignored(signal: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The data, model and training options every training command shares;
/// applies `--threads` and says when the bundled sample stands in for `--data`.
fn recipe(data: &DataArgs, model: &ModelArgs, train: &TrainArgs, rep: &mut Cli2) -> anyhow::Result<vggft::config::Recipe> {
    if let Some(t) = model.threads {
        tch::set_num_threads(t);
    }
    let auto_face = data.auto_face();
    let (data, bundled) = data.to_config(session::bundled_sample)?;
    if bundled {
        rep.message(&format!(
            "no --data given: using the bundled sample {} (the London faces: 204 photos of 102 people, CC BY 4.0, see data/sample/README.md)",
            data.path.display()
        ));
    }
    Ok(vggft::config::Recipe {
        data,
        model: model.to_options()?,
        train: train.to_config()?,
        weights: model.weights.clone(),
        random_init: model.random_init,
        device: model.device.clone(),
        auto_freeze: train.auto_freeze(),
        probe: train.probe(),
        auto_features: model.features.is_none(),
        auto_grid: model.pool_grid.is_none(),
        auto_face,
    })
}

/// `seed_given`: `--seed` was on the command line (a rerun keeps its run's seed otherwise).
fn finetune(a: FinetuneArgs, seed_given: bool) -> anyhow::Result<()> {
    let mut rep = reporter(a.quiet);
    let stop = stop_flag();
    let summary = match (&a.resume, &a.rerun) {
        (Some(dir), _) => run::resume(dir, &mut rep, Some(&stop)),
        (None, Some(from)) => {
            let req = run::RerunRequest {
                from: from.clone(),
                seed: seed_given.then_some(a.train.seed),
                out: a.out.clone(),
                name: a.name.clone(),
                feature_cache: feature_cache_dir(a.feature_cache.as_deref()),
            };
            run::rerun(&req, &mut rep, Some(&stop))
        }
        (None, None) => {
            let req = run::FinetuneRequest {
                recipe: recipe(&a.data, &a.model, &a.train, &mut rep)?,
                out: a.out.clone(),
                name: a.name.clone(),
                threads: a.model.threads,
                feature_cache: feature_cache_dir(a.feature_cache.as_deref()),
            };
            run::finetune(&req, &mut rep, Some(&stop))
        }
    };
    let s = match summary {
        Err(Error::Interrupted(why)) => {
            errln!("interrupted: {why}");
            std::process::exit(130);
        }
        other => other?,
    };
    outln!("run: {}", s.dir.display());
    let (which, kept) = if s.kept_epoch == s.best_epoch {
        ("best", format!("best epoch {} of {}", s.best_epoch, s.history.len()))
    } else {
        ("kept", format!("kept epoch {} of {} (lowest validation loss: epoch {})", s.kept_epoch, s.history.len(), s.best_epoch))
    };
    outln!("{kept}; {} training / {} validation images", s.n_train, s.n_val);
    if let Some(d) = &s.decisions {
        outln!("the model {d}");
    }
    match &s.val {
        Some(m) => {
            let how = if s.protocol == run::PROTOCOL_IMAGES {
                "an image split: the data names no people, so a person's other photos may be in training"
            } else {
                "a subject-grouped holdout: people never trained on"
            };
            outln!("validation ({which} epoch, {how}):");
            print_metrics(m, &s.classes);
            if let Some(single) = &s.val_single {
                outln!("{}; {}", vggft::subject::TRANSDUCTIVE, vggft::eval::FLIP_TTA);
                outln!(
                    "validation, single-image head (no other photo of the person{}):",
                    if s.single_frame { format!("; {}", vggft::data::face::FRAME_SINGLE) } else { String::new() }
                );
                print_metrics(single, &s.classes);
            }
            // One split's figure is one draw, not the figure to quote.
            let held = if s.protocol == run::PROTOCOL_IMAGES {
                format!("{} images", s.n_val)
            } else {
                format!("{} ({} images)", vggft::error::people(s.val_people), s.n_val)
            };
            outln!(
                "one holdout of {held} is one draw: another split can land well away from it; `vggft cv` with the same options gives the mean ± std over folds and seeds, the figure to quote"
            );
        }
        None => outln!("no validation set (--val none): the final epoch was kept"),
    }
    if let Some(n) = s.threshold.as_ref().and_then(vggft::eval::threshold::Threshold::single_near_chance) {
        errln!("note: {n}");
    }
    Ok(())
}

fn preprocess(image: &std::path::Path, model: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let s = predict::preprocess(image, model, out)?;
    outln!("{}: network input 1×3×{s}×{s} in {}", image.display(), out.display());
    Ok(())
}

/// The images of the command line's files and folders; says which
/// sub-folders `-r` left out as vggft's own output.
fn input_paths(inputs: &[std::path::PathBuf], recursive: bool) -> vggft::error::Result<predict::Inputs> {
    // `-`: the paths piped in, where it stands among the others.
    if inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(vggft::error::Error::file("standard input (-)", "given more than once: give `-` once"));
    }
    let mut expanded = Vec::with_capacity(inputs.len());
    for p in inputs {
        if p.as_os_str() == "-" {
            // Typed at a terminal, `-` would wait silently: say what it waits for.
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                errln!("reading the inputs' paths from standard input, one per line (Ctrl-D ends the list)");
            }
            expanded.extend(predict::listed_inputs(std::io::stdin().lock())?);
        } else {
            expanded.push(p.clone());
        }
    }
    let found = predict::expand_inputs(&expanded, recursive)?;
    for d in &found.skipped {
        // Face crops and heatmaps are faces, read when named; a run's or cv's plots are not.
        let named = if predict::readable_when_named(d) { "; name it on the command line to read it" } else { "" };
        errln!("skipped {}: vggft's own output (a run, cv folder, face crops or heatmaps), not photos{named}", d.display());
    }
    if let Some(w) = vggft::data::scan::unread_warning(&found.unread) {
        errln!("{w}");
    }
    for m in &found.manifests {
        errln!("note: read the images {} lists (a folder with a manifest is read through it, as a dataset is)", m.display());
    }
    for (d, how) in &found.nested {
        errln!("note: {} is read as a dataset is: {how}", d.display());
    }
    for m in &found.labelled {
        errln!("note: {} labels its images: `vggft evaluate --data {}` scores the model on them", m.display(), m.display());
    }
    Ok(found)
}

/// Grad-CAM's `--layer`, when given (its default is the run's: `explain::layer_or_default`).
fn cam_layer(layer: Option<&str>) -> vggft::error::Result<Option<vggft::model::Block>> {
    layer.map(|l| vggft::model::Block::parse(l, vggft::error::Setting::Layer)).transpose()
}

/// `--subject` / `--subject-from` given for a model without person statistics: said, not silently ignored.
fn person_options_note(subject_norm: bool, subject: Option<&str>, from: &str) {
    if !subject_norm && (subject.is_some() || from != "name") {
        errln!(
            "note: {} changes nothing here: this model was trained without per-subject normalisation and answers every photo alone",
            if subject.is_some() { "--subject" } else { "--subject-from" }
        );
    }
}

fn explain(mut a: ExplainArgs) -> anyhow::Result<bool> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    a.model = run::run_dir(&a.model);
    let device = session::parse_device(&a.device)?;
    let (cfg, model) = run::load_run(&a.model, device)?;
    let layer = vggft::eval::explain::layer_or_default(&cfg, cam_layer(a.layer.as_deref())?);
    let class = a.class.as_deref().map(|name| vggft::eval::explain::Target::parse(&cfg, name)).transpose()?;
    let found = input_paths(&a.inputs, a.recursive)?;
    // Each photo's person as predict takes it.
    let subjects = found.subjects(a.subject.as_deref(), &a.subject_from, predict::run_pattern(a.subject_pattern.as_deref(), &cfg)?.as_ref());
    let paths = found.paths;
    person_options_note(model.cfg.subject_norm, a.subject.as_deref(), &a.subject_from);
    let req = vggft::eval::explain::ExplainRequest { paths: &paths, class, layer, out: &a.out, mean: a.mean, arrays: a.arrays, subjects: &subjects };
    let (done, sheets) = vggft::eval::explain::explain(&cfg, &model, &req, device)?;
    if model.cfg.subject_norm {
        // predict's default for such a model averages the mirror image in: its numbers differ.
        errln!(
            "note: this subject-normalised model is explained as predict answers: each photo among {} or more of its person's (by name, a manifest's subject column, --subject or --subject-from parent) through the person-normalised head, that person's statistics held fixed, others alone through the single-image head (mode= on each line; predict's default also averages in the mirror image's probabilities: --tta none gives these)",
            vggft::subject::PERSON_MIN
        );
    }
    // The class explained is the one the model answers: at its threshold, which predict says too.
    if let Some(d) = cfg.describe_decisions().filter(|_| class.is_none()) {
        errln!("the model {d}");
    }
    // As predict's lines: a threshold other than 0.5 is named where it decided
    // the class, with the probability it was set on (the first class's).
    let at = |cam: &vggft::eval::explain::Cam| match cfg.threshold_off_half(cam.mode).filter(|_| class.is_none()) {
        Some(t) if cam.class == 0 => format!(" (P({}) ≥ threshold {t:.3})", cfg.classes[0]),
        // As many decimals as tell them apart, as predict's lines ("0.418 < threshold 0.418" was said).
        Some(t) => {
            let d = output::decimals(cam.probs[0], Some(t), 3);
            format!(" (P({}) {:.d$} < threshold {t:.d$})", cfg.classes[0], cam.probs[0])
        }
        None => String::new(),
    };
    let mut failed = 0;
    for e in &done {
        match &e.result {
            Ok((cam, file)) => {
                let mode = cam.mode.map(|m| format!("\tmode={}", m.name())).unwrap_or_default();
                let (name, p) = cam.explained(&cfg);
                outln!("{}\t{name} {p:.3}{}\t{}{mode}", text_path(&e.path), at(cam), file.display())
            }
            Err(why) => {
                failed += 1;
                errln!("{}: {}", e.path.display(), why.problem());
            }
        }
    }
    let (names, distance): (Vec<String>, Vec<f64>) =
        done.iter().filter_map(|e| Some((e.path.display().to_string(), e.result.as_ref().ok()?.0.distance?))).unzip();
    if let Some(w) = vggft::eval::predict::unusual_warning(&names, &distance) {
        errln!("{w}");
    }
    // Counted as predict counts them: the lines above name each.
    if failed > 0 && failed < done.len() {
        errln!("{failed} of {} image(s) could not be explained", done.len());
    }
    if failed == done.len() {
        outln!("no image could be explained ({} says why for each)", a.out.join("explain.csv").display());
    } else {
        let sheet = match &sheets[..] {
            [_, .., last] => format!("sheet.png … {} in {} pages", last.file_name().unwrap_or_default().to_string_lossy(), sheets.len()),
            _ => "sheet.png".into(),
        };
        outln!("heatmaps of {} image(s) in {} ({sheet}, explain.csv{})", done.len() - failed, a.out.display(), if a.mean { ", mean_<class>.png" } else { "" });
    }
    Ok(failed == 0)
}

fn predict_cmd(mut a: PredictArgs) -> anyhow::Result<bool> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    a.model = run::run_dir(&a.model);
    let device = session::parse_device(&a.device)?;
    let t0 = std::time::Instant::now();
    let (cfg, mut model) = run::load_run(&a.model, device)?;
    if let Some(p) = a.precision {
        model.cfg.precision = p;
    }
    let loaded = t0.elapsed().as_secs_f64();
    if a.held_out && a.subject_from == "parent" {
        anyhow::bail!("--held-out takes each image's person from the run's split.csv: of --subject-from only `none` (every photo alone) goes with it");
    }
    let held = if a.held_out {
        let (held, edited) = predict::held_out(&a.model, &cfg)?;
        if edited {
            errln!(
                "warning: {} is not the split.csv this run wrote (its SHA-256 differs from config.json's data_sha256): the images are taken as it lists them now",
                a.model.join("split.csv").display()
            );
        }
        held
    } else {
        vec![]
    };
    let found = if a.held_out { predict::Inputs::default() } else { input_paths(&a.inputs, a.recursive)? };
    let paths = if a.held_out { held.iter().map(|h| h.path.clone()).collect() } else { found.paths.clone() };
    for d in a.inputs.iter().filter(|d| !a.held_out && d.is_dir()) {
        if let Some(n) = predict::distributed_set_note(d, &paths) {
            errln!("note: {n}");
        }
    }
    let subjects = match a.subject_from.as_str() {
        "none" if a.held_out => predict::SubjectFrom::Nobody,
        _ if a.held_out => predict::SubjectFrom::Table(held.iter().map(|h| (h.path.clone(), h.subject.clone())).collect()),
        from => found.subjects(a.subject.as_deref(), from, predict::run_pattern(a.subject_pattern.as_deref(), &cfg)?.as_ref()),
    };
    person_options_note(model.cfg.subject_norm, a.subject.as_deref(), &a.subject_from);
    // Answers for the photos the model learnt from are no test of it: said, as evaluate says it.
    if !a.held_out {
        let training = predict::Training::of_run(&a.model).unwrap_or_else(|e| {
            if let Some(w) = predict::Training::unchecked(&a.model, &e, "inputs") {
                errln!("{w}");
            }
            predict::Training::default()
        });
        let seen = paths.iter().filter(|p| training.has(p)).count();
        if seen > 0 {
            errln!(
                "note: {seen} of these {} input(s) were training images of this run (its split.csv, by path or identical bytes): their answers say what it learnt, not how it does on new photos (--held-out predicts its validation people)",
                paths.len()
            );
        }
    }
    if model.cfg.subject_norm {
        grouping_warnings(&cfg, &subjects, &paths, a.subject.is_some());
    }
    let tta_flip = vggft::eval::flip_tta(a.tta.choice(), model.cfg.subject_norm);
    // What holds for every answer, said before the answers (they are printed as they come).
    if model.cfg.subject_norm {
        errln!("{}", vggft::subject::TRANSDUCTIVE);
    }
    if tta_flip {
        errln!("{}", vggft::eval::FLIP_TTA);
    }
    if let Some(d) = cfg.describe_decisions() {
        errln!("the model {d}");
    }
    let mut out = output::Predictions::new(&a, &cfg, &held, (model.cfg.subject_norm, model.measures_distance()));
    let preds = predict::predict_each(&cfg, &model, &paths, &subjects, (tta_flip, a.batch_size as usize), device, &mut reporter(false), &mut |p| out.line(p));
    unnamed_people_note(&cfg, &subjects, &paths, &preds);
    let alone = preds.iter().filter(|p| p.probs.is_ok() && p.mode == Some(predict::Mode::Single)).count();
    if let Some(n) = cfg.threshold.as_ref().and_then(vggft::eval::threshold::Threshold::single_near_chance).filter(|_| alone > 0) {
        errln!("note: {alone} photo(s) here were answered alone; {n}");
    }
    if a.timings {
        errln!("timings: model load {loaded:.3} s, decode + forward {:.3} s", t0.elapsed().as_secs_f64() - loaded);
    }
    out.finish(&preds)
}

/// Warns of a grouping by hand that person statistics would suffer from:
/// `--subject-from parent` over folders named as expressions (one
/// expression of many people each), or `--subject` / folders that put
/// several people, by their file names, into one.
fn grouping_warnings(cfg: &vggft::config::RunConfig, subjects: &predict::SubjectFrom, paths: &[std::path::PathBuf], subject_given: bool) {
    if matches!(subjects, predict::SubjectFrom::Parent) {
        let named = predict::folders_named_as_labels(cfg, paths);
        if !named.is_empty() {
            errln!(
                "warning: --subject-from parent takes each photo's folder for its person, and {} ({}): if such a folder holds one expression of many people, that \"person's\" statistics remove the expression and the answers fall to chance; give a folder per person, a manifest with a subject column, or --subject-from none",
                if named.len() == 1 { "one folder is named as an expression" } else { "folders are named as expressions" },
                vggft::error::short_list(&named, 5)
            );
        }
    }
    if matches!(subjects, predict::SubjectFrom::Parent | predict::SubjectFrom::All(_)) {
        if let Some((group, people)) = predict::groups_of_several_named_people(subjects, paths).first() {
            let by = if subject_given { "--subject" } else { "--subject-from parent" };
            errln!(
                "warning: {by} makes one person of photos whose file names give them to {} people ({group}: {}): one person's statistics then mix several faces and the answers suffer; without {by} the names group the photos by person",
                people.len(),
                vggft::error::short_list(people, 4)
            );
        }
    }
}

/// Several photos answered, none with a person by its name: says how to
/// give them one (so that a person's photos set that person's normalisation).
fn unnamed_people_note(cfg: &vggft::config::RunConfig, subjects: &predict::SubjectFrom, paths: &[std::path::PathBuf], preds: &[predict::Prediction]) {
    let answered: Vec<_> = preds.iter().filter(|p| p.probs.is_ok() && p.mode.is_some()).collect();
    if !(matches!(subjects, predict::SubjectFrom::Names | predict::SubjectFrom::Pattern(_))
        && answered.len() > 1
        && answered.iter().all(|p| subjects.subject(&p.path).is_none()))
    {
        return;
    }
    // Photos in folders named as expressions (one person's class folders): their folders are no people.
    let by_class = predict::folders_named_as_labels(cfg, paths);
    let parent = if by_class.is_empty() {
        "--subject-from parent (a folder per person)".to_string()
    } else {
        format!("--subject-from parent (a folder per person; not here, where the folders are expressions: {})", by_class.join(", "))
    };
    let named = match subjects {
        predict::SubjectFrom::Pattern(p) => format!("by --subject-pattern `{}` or as JAFFE's do (KA.HA1.29.tiff)", p.as_str()),
        _ => "as JAFFE's do (KA.HA1.29.tiff)".to_string(),
    };
    errln!(
        "note: no file name here names its person {named}, so each photo was answered alone by the single-image head; --subject ID (all one person), {parent}, --subject-pattern REGEX (the person in each file name) or a manifest.csv with a subject column given as the input lets a person's photos set that person's normalisation"
    );
}

fn lr_find(a: LrFindArgs) -> anyhow::Result<()> {
    let mut rep = reporter(a.quiet);
    let req = vggft::train::lrfind::Request {
        recipe: recipe(&a.data, &a.model, &a.train, &mut rep)?,
        steps: a.steps,
        start_lr: a.start_lr,
        end_lr: a.end_lr,
        out: a.out.clone(),
    };
    let r = vggft::train::lrfind::run(&req, &mut rep)?;
    outln!("suggested learning rate: {:.2e} ({})", r.suggested, r.method);
    outln!(
        "sweep: {} steps from {:.1e} to {:.1e}; loss curve in {} and {}",
        r.points.len(),
        req.start_lr,
        r.points.last().map(|p| p.0).unwrap_or(req.end_lr),
        r.csv.display(),
        r.png.display()
    );
    let (there, (low_lr, low)) = r.loss_at(r.recipe_lr);
    outln!(
        "this recipe trains at --lr {:.1e}{}: smoothed loss {} there, lowest {low:.3} at {low_lr:.1e}",
        r.recipe_lr,
        if r.recipe_lr_measured {
            " (the default of the probe on person statistics, chosen by cross-validated accuracy on JAFFE-format data: docs/results/accuracy, \"How long the probe trains\"; the suggestion reads the training loss alone)"
        } else {
            ""
        },
        there.map_or("– (outside the sweep)".to_string(), |l| format!("{l:.3}"))
    );
    Ok(())
}

fn evaluate(mut a: EvaluateArgs) -> anyhow::Result<()> {
    // Given as --data or as a word; clap requires one of the two.
    let data = a.data.take().or(a.dataset.pop()).unwrap_or_default();
    // `vggft evaluate RUN` — the model given where the data goes, no --model: said before anything is loaded.
    // (With --model given, the data's own error names the data that run was trained on.)
    let default_model = a.model.as_os_str() == vggft::cli::DEFAULT_MODEL;
    if default_model && vggft::data::scan::is_run_output(&data) {
        return Err(vggft::error::Error::file(
            &data,
            format!("is a trained model (a run folder), not a labelled dataset: `vggft evaluate --model {} DATA` scores it on DATA", data.display()),
        )
        .into());
    }
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let req = vggft::eval::evaluate::Request {
        model: run::run_dir(&a.model),
        data,
        format: a.format,
        label_map: a.label_map.as_deref().map(vggft::data::split::parse_label_map).transpose()?.unwrap_or_default(),
        subject_pattern: a.subject_pattern.clone(),
        skip_bad: a.skip_bad,
        exclude_train: a.exclude_train,
        tta: a.tta.choice(),
        precision: a.precision,
        out: a.out.clone(),
        top_losses: a.top_losses,
        layer: cam_layer(a.layer.as_deref())?,
        device: session::parse_device(&a.device)?,
    };
    let done = vggft::eval::evaluate::run(&req)?;
    let (ev, cfg) = (&done.evaluation, &done.cfg);
    if ev.excluded > 0 {
        errln!("note: left out {} image(s) this run was trained on (--exclude-train); scoring the other {}", ev.excluded, ev.y.len());
    } else if ev.overlap > 0 {
        errln!(
            "warning: {} of these {} images were training images of this run (its split.csv, by path or identical bytes): the scores below are not held-out; --exclude-train scores only the others",
            ev.overlap,
            ev.y.len()
        );
    }
    if let (n @ 1.., people) = &ev.trained_people {
        errln!(
            "warning: {n} of the scored images are other photos of {} this run trained on ({}): the score over them is not subject-independent (a person's own photos are easier); the run's validation people are, `vggft predict --held-out`",
            vggft::error::people(people.len()),
            vggft::error::short_list(people, 8)
        );
    }
    for (p, why) in &ev.skipped {
        errln!("skipped {}: {why}", p.display());
    }
    for w in &ev.warnings {
        errln!("{w}");
    }
    if done.tta_flip {
        errln!("{}", vggft::eval::FLIP_TTA);
    }
    if done.modes.is_some_and(|(person, _)| person > 0) {
        errln!("{}", vggft::subject::TRANSDUCTIVE);
    }
    let m = &ev.metrics;
    outln!("{} images from {}", m.n, req.data.display());
    if let Some((person, single)) = done.modes {
        outln!(
            "{person} scored with their person's statistics, {single} by the single-image head{}",
            if single > 0 { format!(" (no subject id, or fewer than {} images of that person)", vggft::subject::PERSON_MIN) } else { String::new() }
        );
    }
    if let Some(d) = cfg.describe_decisions() {
        outln!("the model {d}");
    }
    print_metrics(m, &cfg.classes);
    if let Some(h) = &ev.at_half {
        outln!("  by the larger probability instead (threshold 0.5): balanced accuracy {:.3}, accuracy {:.3}", h.balanced_accuracy, h.accuracy);
    }
    outln!("written: {}, {}", done.metrics_json().display(), done.confusion_png().display());
    if let Some(n) = done.top_losses {
        outln!("top {n} losses: {}, {}", done.out.join("top_losses.png").display(), done.out.join("top_losses.csv").display());
    }
    Ok(())
}

fn cv(a: CvArgs) -> anyhow::Result<()> {
    let mut rep = reporter(a.quiet);
    let summary = match &a.collect {
        Some(dir) => vggft::eval::cv::collect(dir, a.partial)?,
        None => {
            let recipe = recipe(&a.data, &a.model, &a.train, &mut rep)?;
            let seeds = match a.repeats {
                Some(r) => (0..r).collect(),
                None => a.seeds.clone(),
            };
            let out = a.out.clone().unwrap_or_else(|| std::path::PathBuf::from("runs").join(format!("cv-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"))));
            let req = vggft::eval::cv::Request {
                recipe,
                // Ctrl-C: no fold starts after it, running ones stop after their batch; the finished ones stay.
                stop: Some(stop_flag()),
                folds: vggft::eval::cv::Folds::parse(&a.folds)?,
                seeds,
                only_fold: a.fold,
                baseline: a.baseline.is_some(),
                probe_epochs: a.probe_epochs,
                tta_flip: a.tta.choice(),
                top_losses: a.top_losses,
                parallel_folds: a.parallel_folds,
                out: out.clone(),
                dump_features: a.dump_features.clone(),
                load_features: a.load_features.clone(),
                feature_cache: feature_cache_dir(a.feature_cache.as_deref()),
            };
            match vggft::eval::cv::run(&req, &mut rep) {
                Err(Error::Interrupted(why)) => {
                    errln!("interrupted: {why}");
                    std::process::exit(130);
                }
                Err(e) => return Err(e.into()),
                Ok(Some(s)) => s,
                Ok(None) => {
                    outln!("fold {} done; results in {}/folds; merge with: vggft cv --collect {}", a.fold.unwrap_or(0), out.display(), out.display());
                    return Ok(());
                }
            }
        }
    };
    outln!("{}", vggft::eval::cv::markdown(&summary));
    Ok(())
}

/// The feature cache's folder: `--feature-cache`, else `$VGGFT_FEATURE_CACHE`,
/// else the XDG cache folder; `off` (either way) or no home: none.
fn feature_cache_dir(arg: Option<&str>) -> Option<std::path::PathBuf> {
    cache_dir_in(arg, |k| std::env::var_os(k))
}

/// `feature_cache_dir` with the environment read through `env`.
fn cache_dir_in(arg: Option<&str>, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let given = arg.map(std::path::PathBuf::from).or_else(|| var("VGGFT_FEATURE_CACHE"));
    match given {
        Some(p) if p.as_os_str() == "off" => None,
        Some(p) => Some(p),
        // The XDG spec: a relative path there is invalid and ignored (it made a cache folder in whatever folder vggft ran in).
        None => var("XDG_CACHE_HOME").filter(|c| c.is_absolute()).or_else(|| var("HOME").map(|h| h.join(".cache"))).map(|c| c.join("vggft").join("features")),
    }
}

/// Random weights: speed does not depend on their values.
fn speed(a: SpeedArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let device = session::parse_device(&a.device)?;
    tch::manual_seed(0);
    let mut model = vggft::model::Vgg16::new(&vggft::model::ModelConfig::new(vggft::model::BnMode::Drop, vggft::model::HeadKind::Bn, 2), device)?;
    let cpu = vggft::model::CpuBf16::detect();
    let precisions = if a.precision.is_empty() { vggft::speed::default_precisions(device, cpu) } else { a.precision.clone() };
    let bf16 = precisions.contains(&vggft::model::Precision::Bf16);
    if device == tch::Device::Cpu && cpu == vggft::model::CpuBf16::Emulated {
        if bf16 {
            errln!("warning: this CPU has no bfloat16 arithmetic (libtorch emulates it): the bf16 timings take minutes (the 2048³ product alone about a minute) and run ~10× slower than f32");
        } else {
            errln!("bf16 not timed: this CPU has no bfloat16 arithmetic (neither AMX-BF16 nor AVX512-BF16; libtorch emulates it, ~10× slower); --precision f32,bf16 times it anyway");
        }
    }
    let r = vggft::speed::measure(&mut model, a.batch_size, a.image_size, a.reps as usize, &precisions);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    outln!("device {}, {} threads", r.device, r.threads);
    match r.matmul_bf16_gflops {
        Some(b) => outln!("matmul 2048³ peak: {:.1} GFLOP/s f32, {:.1} GFLOP/s bf16", r.matmul_f32_gflops, b),
        None => outln!("matmul 2048³ peak: {:.1} GFLOP/s f32", r.matmul_f32_gflops),
    }
    for f in &r.forward {
        let peak = match f.precision {
            vggft::model::Precision::Bf16 => r.matmul_bf16_gflops.unwrap_or(f64::NAN),
            vggft::model::Precision::F32 => r.matmul_f32_gflops,
        };
        outln!(
            "forward {} {:<8} batch {:>2} at {} px: {:.2} images/s, {:.1} GFLOP/s = {:.0} % of the {} matmul peak",
            f.precision,
            f.convolution,
            f.batch,
            f.image_size,
            f.images_per_s,
            f.gflops,
            100.0 * f.gflops / peak,
            f.precision
        );
    }
    Ok(())
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    // A run folder, as --model takes it (or the runs folder of its `latest`): its model.safetensors.
    let run = run::run_dir(file);
    let file = if file.is_dir() && run.join("config.json").is_file() { run::model_file(&run)? } else { file.to_path_buf() };
    let i = weights::inspect(&file)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    outln!("file:         {}", i.path);
    outln!("sha256:       {}", i.sha256);
    outln!("architecture: {}", i.description);
    outln!("tensors:      {} ({} values)", i.tensors.len(), i.parameters);
    for (n, s, k) in &i.tensors {
        outln!("  {n:<36} {k:<8} {s:?}");
    }
    Ok(())
}

/// `finetune --resume RUN` takes every option from the run's config.json,
/// `--rerun RUN` all but the seed and where the new run goes, and `cv
/// --collect DIR` summarises folds already run: any other option given with
/// them would be silently ignored, so it is a usage error naming those options.
fn refuse_options_with_resume(matches: &clap::ArgMatches) {
    use clap::parser::ValueSource;
    let Some((command @ ("finetune" | "cv"), m)) = matches.subcommand() else { return };
    let typed = |id: &str| m.try_contains_id(id).unwrap_or(false) && m.value_source(id) == Some(ValueSource::CommandLine);
    let (flag, allowed, what, otherwise): (&str, &[&str], &str, &str) = if command == "cv" {
        if !typed("collect") {
            return;
        }
        (
            "--collect",
            &["collect", "partial", "quiet"],
            "summarises the folds already in its folder (only --partial goes with it)",
            "run a cv without --collect",
        )
    } else if typed("resume") {
        ("--resume", &["resume", "quiet"], "continues a run with the options saved in its config.json", "start a new run")
    } else if typed("rerun") {
        (
            "--rerun",
            &["rerun", "quiet", "seed", "out", "name", "feature_cache"],
            "trains the recipe saved in a run's config.json (only --seed, --out, --name and --feature-cache go with it)",
            "start a new run",
        )
    } else {
        return;
    };
    let mut cmd = Cli::command();
    let sub = cmd.find_subcommand_mut(command).expect("finetune and cv are subcommands");
    let given: Vec<String> = sub
        .get_arguments()
        .filter(|a| !allowed.contains(&a.get_id().as_str()))
        .filter(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        // A positional (the dataset as a word) is named by what was typed.
        .map(|a| match (a.get_long(), m.try_get_one::<std::path::PathBuf>(a.get_id().as_str())) {
            (Some(l), _) => format!("--{l}"),
            (None, Ok(Some(v))) => format!("`{}`", v.display()),
            (None, _) => a.get_id().to_string(),
        })
        .collect();
    if !given.is_empty() {
        let msg = format!("{flag} {what}; {} would be ignored: drop {}, or {otherwise}", given.join(", "), if given.len() == 1 { "it" } else { "them" });
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit();
    }
}

/// Options `cv` shares with `finetune` (one set of training arguments) that
/// a cross-validation has no use for: hidden from `cv --help`, refused when given.
const NOT_IN_CV: [(&str, &str); 4] = [("val", "--val"), ("val_subjects", "--val-subjects"), ("patience", "--patience"), ("keep", "--keep")];

/// The command line, with `cv --help` leaving out the options it refuses.
fn command() -> clap::Command {
    negative_values(Cli::command().mut_subcommand("cv", |c| NOT_IN_CV.iter().fold(c, |c, (id, _)| c.mut_arg(*id, |a| a.hide(true)))))
}

/// Every option's value may look like a negative number: clap otherwise
/// reads `--epochs -1` or `--dropout -0.5` as an unknown flag `-1` / `-0`
/// ("unexpected argument '-0' found"), where the option's own check names
/// the option and its range.
fn negative_values(cmd: clap::Command) -> clap::Command {
    let ids: Vec<clap::Id> = cmd.get_arguments().filter(|a| a.get_long().is_some() && a.get_action().takes_values()).map(|a| a.get_id().clone()).collect();
    let cmd = ids.into_iter().fold(cmd, |c, id| c.mut_arg(id, |a| a.allow_negative_numbers(true)));
    let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    subs.into_iter().fold(cmd, |c, name| c.mut_subcommand(name, negative_values))
}

/// A command that reads one dataset given several paths — `vggft finetune
/// jaffe/*`, a shell's expansion of an unquoted `*`, or `--data` beside the
/// dataset as a word — is told so, naming them (clap said "unexpected
/// argument 'jaffe/KA.AN2.40.tiff' found").
fn refuse_path_lists(matches: &clap::ArgMatches) {
    let Some((name @ ("finetune" | "cv" | "lr-find" | "evaluate" | "faces"), m)) = matches.subcommand() else { return };
    let words = if name == "faces" { "dir" } else { "dataset" };
    let paths: Vec<&std::path::PathBuf> = m
        .try_get_one::<std::path::PathBuf>("data")
        .ok()
        .flatten()
        .into_iter()
        .chain(m.try_get_many::<std::path::PathBuf>(words).ok().flatten().into_iter().flatten())
        .collect();
    if paths.len() < 2 {
        return;
    }
    let shown: Vec<String> = paths.iter().map(|p| format!("`{}`", p.display())).collect();
    let parents: std::collections::BTreeSet<&std::path::Path> = paths.iter().filter_map(|p| p.parent()).collect();
    let folder = match parents.into_iter().collect::<Vec<_>>()[..] {
        [one] if paths.iter().all(|p| p.is_file()) => format!(" (--data {})", if one.as_os_str().is_empty() { ".".into() } else { one.display().to_string() }),
        _ => String::new(),
    };
    // Folders or manifests only (`cv JU new`): one of them, not the photos of a folder.
    let why = if paths.iter().any(|p| p.is_file() && !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))) {
        format!("a shell expands an unquoted `*` into the files it matches; give the folder that holds the photos{folder}")
    } else {
        "give one of them, as --data or as a word".to_string()
    };
    let msg =
        format!("{name} reads one dataset, a folder or a CSV manifest, and was given {} paths ({}): {why}", paths.len(), vggft::error::short_list(&shown, 3));
    command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit();
}

/// `cv` makes its own folds and evaluates the last epoch of the recipe:
/// validation and early-stopping options would be silently ignored there.
fn refuse_options_in_cv(matches: &clap::ArgMatches) {
    use clap::parser::ValueSource;
    let Some(("cv", m)) = matches.subcommand() else { return };
    let given: Vec<&str> = NOT_IN_CV.into_iter().filter(|(id, _)| m.value_source(id) == Some(ValueSource::CommandLine)).map(|(_, flag)| flag).collect();
    if !given.is_empty() {
        let msg = format!(
            "cv tests each fold on people left out of it and evaluates the recipe's last epoch (no validation split, no early stopping): {} {} not apply",
            given.join(", "),
            if given.len() == 1 { "does" } else { "do" }
        );
        command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit();
    }
}

/// Whether `e` is an output folder that could not be made for want of
/// permission (or on a read-only file system) where `--out` was left to its
/// default (`runs` in the working folder, `eval-…` inside the model's
/// folder): the one choice the user did not make, and the one that mends it.
fn default_out_refused(e: &anyhow::Error, matches: &clap::ArgMatches) -> bool {
    let Some((_, m)) = matches.subcommand() else { return false };
    let defaulted = m.try_get_raw("out").is_ok() && m.value_source("out") != Some(clap::parser::ValueSource::CommandLine);
    defaulted
        && e.chain().any(|c| {
            matches!(c.downcast_ref::<Error>(), Some(Error::File { problem, .. })
                if problem.starts_with("cannot create folder") && (problem.contains("Permission denied") || problem.contains("Read-only file system")))
        })
}

fn main() -> ExitCode {
    vggft::alloc::keep_freed_memory();
    let matches = command().get_matches();
    refuse_options_with_resume(&matches);
    refuse_options_in_cv(&matches);
    refuse_path_lists(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // finetune and cv stop after a batch, keeping what resumes them (`stop_flag`).
    if !matches!(cli.command, Command::Finetune(_) | Command::Cv(_)) {
        quit_on_signal(&cli.command);
    }
    let result = match cli.command {
        Command::Finetune(a) => {
            let seed_given = matches.subcommand_matches("finetune").is_some_and(|m| m.value_source("seed") == Some(clap::parser::ValueSource::CommandLine));
            finetune(a, seed_given).map(|_| true)
        }
        Command::Predict(a) => predict_cmd(a),
        Command::LrFind(a) => lr_find(a).map(|_| true),
        Command::Evaluate(a) => evaluate(a).map(|_| true),
        Command::Cv(a) => cv(a).map(|_| true),
        Command::Explain(a) => explain(a),
        Command::Preprocess { image, model, out } => preprocess(&image, &run::run_dir(&model), &out).map(|_| true),
        // clap requires one of the two.
        Command::Faces { dir, data, out, tile, skip_bad, subject_pattern } => subject_pattern
            .as_deref()
            .map(vggft::data::scan::SubjectPattern::new)
            .transpose()
            .and_then(|pattern| vggft::faces::run(&data.or(dir.into_iter().next()).unwrap_or_default(), &out, tile, (skip_bad, pattern.as_ref())))
            .map(|r| {
                for (p, why) in &r.skipped {
                    errln!("skipped {}: {why}", p.display());
                }
                if !r.skipped.is_empty() {
                    errln!("warning: skipped {} unreadable image(s) (--skip-bad): not in the crops nor their manifest", r.skipped.len());
                }
                outln!(
                    "{} images, {} without a detected face (centred crop), detection {:.1} ms per image",
                    r.images,
                    r.fallbacks.len(),
                    1000.0 * r.seconds_per_image
                );
                for p in &r.fallbacks {
                    outln!("  no face: {}", text_path(p));
                }
                if let Some(w) = vggft::data::scan::unread_warning(&r.unread) {
                    errln!("{w}");
                }
                for note in &r.notes {
                    errln!("{note}");
                }
                let sheets = match &r.sheets[..] {
                    [one] => format!("contact sheet {}", one.display()),
                    pages => format!(
                        "contact sheets {} … {} ({} pages of up to {} crops)",
                        pages.first().map(|p| p.display().to_string()).unwrap_or_default(),
                        pages.last().map(|p| p.display().to_string()).unwrap_or_default(),
                        pages.len(),
                        vggft::eval::explain::SHEET_PAGE
                    ),
                };
                outln!("crops in {}, boxes in {}, {sheets}", out.join("crops").display(), out.join("faces.csv").display());
                true
            })
            .map_err(Into::into),
        Command::Report { dirs } => vggft::eval::report::report(&dirs)
            .map(|r| {
                outln!("{r}");
                true
            })
            .map_err(Into::into),
        Command::Weights { command: WeightsCommand::Inspect { file, json } } => inspect(&file, json).map(|_| true),
        Command::Speed(a) => speed(a).map(|_| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let says = |c: &(dyn std::error::Error + 'static)| c.downcast_ref::<Error>().map(vggft::cli::render).unwrap_or_else(|| c.to_string());
            let hint = if default_out_refused(&e, &matches) { "; --out DIR puts it in a folder you can write" } else { "" };
            errln!("error: {}{hint}", e.chain().map(says).collect::<Vec<_>>().join(": "));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cache_dir_in, command};
    use clap::error::ErrorKind;
    use std::path::PathBuf;

    #[test]
    fn the_feature_cache_folder_follows_the_flag_the_variable_then_xdg() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into());
        assert_eq!(cache_dir_in(None, env(&[("HOME", "/h")])), Some(PathBuf::from("/h/.cache/vggft/features")));
        assert_eq!(cache_dir_in(None, env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")])), Some(PathBuf::from("/x/vggft/features")));
        // The XDG spec: a relative XDG_CACHE_HOME is invalid and ignored (it made `rel/vggft` wherever vggft ran).
        assert_eq!(cache_dir_in(None, env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "rel")])), Some(PathBuf::from("/h/.cache/vggft/features")));
        assert_eq!(cache_dir_in(None, env(&[("HOME", "/h"), ("VGGFT_FEATURE_CACHE", "mine")])), Some(PathBuf::from("mine")));
        assert_eq!(cache_dir_in(Some("fc"), env(&[("VGGFT_FEATURE_CACHE", "off")])), Some(PathBuf::from("fc")));
        assert_eq!(cache_dir_in(None, env(&[("HOME", "/h"), ("VGGFT_FEATURE_CACHE", "off")])), None);
        assert_eq!(cache_dir_in(None, env(&[])), None, "no home: none");
    }

    /// Every option of every subcommand given a negative number reaches the
    /// option's own check: clap alone reads `--dropout -0.5` as an unknown
    /// flag `-0`, a message that names neither the option nor its range.
    #[test]
    fn a_negative_number_is_an_options_value_for_every_option() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, seen: &mut usize) {
            for a in cmd.get_arguments().filter(|a| a.get_long().is_some() && a.get_action().takes_values()) {
                let flag = format!("--{}", a.get_long().unwrap_or_default());
                for v in ["-1", "-0.5"] {
                    let argv: Vec<String> = path.iter().cloned().chain([flag.clone(), v.to_string()]).collect();
                    let kind = command().try_get_matches_from(&argv).err().map(|e| e.kind());
                    assert_ne!(kind, Some(ErrorKind::UnknownArgument), "{}", argv.join(" "));
                    *seen += 1;
                }
            }
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                walk(sub, path, seen);
                path.pop();
            }
        }
        let mut seen = 0;
        walk(&command(), &mut vec!["vggft".to_string()], &mut seen);
        assert!(seen > 100, "{seen} options checked: the walk missed the subcommands");
        let said = |argv: &[&str]| command().try_get_matches_from(argv).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(said(&["vggft", "finetune", "--batch-size", "-4"]).contains("`-4` is not a whole number"), "a count");
        assert!(said(&["vggft", "predict", "--batch-size", "-4"]).contains("-4 is not in 1..=4096"), "a ranged count");
        assert!(said(&["vggft", "cv", "--seeds", "0,-1"]).contains("`-1` is not a seed"), "a seed");
        assert!(said(&["vggft", "cv", "--seeds", "0-4"]).contains("`0-4` is a range: list the seeds"), "seeds as a range");
        assert!(said(&["vggft", "finetune", "--seed", "0-4"]).contains("`0-4` is not a seed (a whole number from 0)"), "one seed: no list to give");
    }
}

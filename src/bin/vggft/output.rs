//! What the binary shows: stdout/stderr lines that survive closed pipes,
//! progress (bars on a terminal, plain lines otherwise), prediction output
//! (text, CSV, JSON, JSON lines) and metric tables. The library returns
//! data; it never prints.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use vggft::cli::{OutputFormat, PredictArgs};
use vggft::config::RunConfig;
use vggft::eval::predict;
use vggft::train::{EpochRow, Reporter};

/// A line on stdout. A closed pipe (`vggft predict … | head`) ends the
/// output quietly, as ripgrep does: exit 0, never a panic.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            $crate::output::stdout_failed(e)
        }
    }};
}

/// A line on stderr. If stderr is gone (`vggft finetune … 2>&1 | head`) the
/// line is dropped and the work goes on: a run keeps training. Control
/// characters are escaped (`text`): a file name with a line break in it
/// cannot make an error or a warning look like two.
#[macro_export]
macro_rules! errln {
    () => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr());
    }};
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{}", $crate::output::text(&format!($($t)*)));
    }};
}

pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    errln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// A path for the tab-separated text lines: control characters (a tab or a
/// line break in a file name) escaped as `\t`, `\n`…, so one image stays one
/// line of tab-separated fields. CSV and JSON quote such names themselves.
pub fn text_path(p: &std::path::Path) -> String {
    text(&p.display().to_string())
}

/// `s` with its control characters escaped (`\t`, `\n`, `\u{1b}`…): one
/// line stays one line, and a file name cannot send terminal escapes.
pub fn text(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        s.to_string()
    }
}

/// Progress on stderr: a bar per epoch on a terminal, plain lines otherwise.
pub struct Cli2 {
    quiet: bool,
    tty: bool,
    bar: Option<ProgressBar>,
    /// The long step under way when stderr is a log, not a terminal.
    log: Option<LogProgress>,
    /// The run's epochs in all, for the epoch lines (0 before the first epoch).
    epochs: usize,
}

/// Progress of a long step (a cache pass of minutes on a slow CPU) in a log:
/// after the step's first line, one line every `EVERY` with what is done and
/// an estimate of what is left, so a log does not fall silent for minutes.
struct LogProgress {
    start: std::time::Instant,
    last: std::time::Instant,
}

impl LogProgress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(30);

    fn new(now: std::time::Instant) -> Self {
        LogProgress { start: now, last: now }
    }

    /// The line due at `now`, if one is (never for a finished step: its caller says that).
    fn line(&mut self, what: &str, unit: &str, done: usize, total: usize, now: std::time::Instant) -> Option<String> {
        if done == 0 || done >= total || now.duration_since(self.last) < Self::EVERY {
            return None;
        }
        self.last = now;
        let spent = now.duration_since(self.start).as_secs_f64();
        let left = spent * (total - done) as f64 / done as f64;
        Some(format!("{what}: {done} of {total} {unit} in {spent:.0}s, about {left:.0}s left"))
    }
}

impl Reporter for Cli2 {
    fn message(&mut self, msg: &str) {
        // Under --quiet only warnings and which weights a run uses (a stand-in must never go unnoticed).
        if self.quiet && !msg.starts_with("warning") && !msg.starts_with("weights:") {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text(msg)),
            None => errln!("{msg}"),
        }
    }
    fn epoch_start(&mut self, epoch: usize, total: usize, batches: usize) {
        self.epochs = total;
        if self.quiet || !self.tty {
            return;
        }
        let b = ProgressBar::new(batches as u64);
        b.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:25}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(format!("{epoch}/{total}"));
        self.bar = Some(b);
    }
    fn batch(&mut self, done: usize, loss: f64, acc: f64, ips: f64) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {loss:.4} acc {acc:.3} {ips:.1} img/s"));
        }
    }
    fn progress(&mut self, what: &str, unit: &str, done: usize, total: usize) {
        if self.quiet || total == 0 {
            return;
        }
        if !self.tty {
            // Plain lines when stderr is not a terminal (logs, CI): the step, then a line every 30 s.
            let now = std::time::Instant::now();
            if done == 0 {
                errln!("{what}: {total} {unit}…");
                self.log = Some(LogProgress::new(now));
            } else if let Some(line) = self.log.as_mut().and_then(|l| l.line(what, unit, done, total, now)) {
                errln!("{line}");
            }
            return;
        }
        if done == 0 || self.bar.is_none() {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:25}] {pos}/{len} ETA {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
            );
            b.set_message(text(what));
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
        if done >= total {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
        }
    }
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }
    fn epoch_end(&mut self, r: &EpochRow) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let val = match (r.val_loss, r.val_acc, r.val_bacc) {
            (Some(l), Some(a), Some(b)) => format!(" | val loss {l:.4} acc {a:.3} bal.acc {b:.3}"),
            _ => String::new(),
        };
        let of = if self.epochs >= r.epoch { format!("/{}", self.epochs) } else { String::new() };
        errln!("epoch {:>3}{of} [{}+] lr {:.2e} | train loss {:.4} acc {:.3}{val} | {:.1}s", r.epoch, r.block, r.lr, r.train_loss, r.train_acc, r.seconds);
    }
}

pub fn reporter(quiet: bool) -> Cli2 {
    Cli2 { quiet, tty: std::io::stderr().is_terminal(), bar: None, log: None, epochs: 0 }
}

/// Prints `predict`'s results in the chosen format as they come (`line`),
/// the failed images on stderr, then what is said of all of them (`finish`:
/// the held-out tally, warnings; a JSON array is one document, written there).
pub struct Predictions<'a> {
    a: &'a PredictArgs,
    cfg: &'a RunConfig,
    held: &'a [predict::HeldOut],
    /// Which head answered goes with each line of a subject-normalised model.
    subject_norm: bool,
    /// A run saved with its training photos' feature statistics gives each answer's distance from them.
    distances: bool,
    failed: usize,
    right: usize,
    json: Vec<serde_json::Value>,
    lines: usize,
}

impl<'a> Predictions<'a> {
    pub fn new(a: &'a PredictArgs, cfg: &'a RunConfig, held: &'a [predict::HeldOut], (subject_norm, distances): (bool, bool)) -> Self {
        let p = Predictions { a, cfg, held, subject_norm, distances, failed: 0, right: 0, json: Vec::new(), lines: 0 };
        if a.format == OutputFormat::Csv {
            let mut header = vec!["path".to_string(), "class".to_string()];
            header.extend(cfg.classes.iter().map(|c| format!("p_{c}")));
            header.extend(subject_norm.then(|| "mode".to_string()));
            header.extend(distances.then(|| "feature_distance".to_string()));
            // --held-out: each photo's truth, from the run's split.csv, beside the answer.
            if !held.is_empty() {
                header.extend(["true_class".to_string(), "subject".to_string()]);
            }
            outln!("{}", csv_line(&header));
        }
        p
    }

    /// The next input's answer (inputs in the order given).
    pub fn line(&mut self, p: &predict::Prediction) {
        let (a, cfg) = (self.a, self.cfg);
        let i = self.lines;
        self.lines += 1;
        match &p.probs {
            Ok(pr) => {
                let k = p.class(cfg).unwrap_or_else(|| predict::argmax(pr));
                let class = &cfg.classes[k];
                // Text lines name a threshold other than 0.5: with it the answer need not be the likelier class.
                let t = cfg.threshold_off_half(p.mode);
                let d = decimals(pr[0], t, 3);
                let at = t.map(|t| format!("\tthreshold={t:.d$}")).unwrap_or_default();
                if let Some(h) = self.held.get(i) {
                    self.right += usize::from(h.class == *class);
                    if a.format == OutputFormat::Text {
                        // Every class's probability, as the plain lines give them: with a
                        // threshold set in training the answered class need not be the likelier.
                        let verdict = if h.class == *class { "right" } else { "WRONG" };
                        let dh = decimals(pr[0], t, 2);
                        outln!(
                            "{}\ttrue {}\tpredicted {class}\t{}{at}{}\t{verdict}",
                            text_path(&p.path),
                            h.class,
                            cfg.classes.iter().zip(pr).map(|(c, v)| format!("{c}={v:.dh$}")).collect::<Vec<_>>().join(" "),
                            p.mode.map(|m| format!("\tmode={}", m.name())).unwrap_or_default()
                        );
                        return;
                    }
                }
                match a.format {
                    OutputFormat::Text => outln!(
                        "{}\t{class}\t{}{at}{}",
                        text_path(&p.path),
                        cfg.classes.iter().zip(pr).map(|(c, v)| format!("{c}={v:.d$}")).collect::<Vec<_>>().join(" "),
                        p.mode.map(|m| format!("\tmode={}", m.name())).unwrap_or_default()
                    ),
                    OutputFormat::Csv => {
                        let mut row = vec![p.path.display().to_string(), class.clone()];
                        row.extend(pr.iter().map(|v| format!("{v:.6}")));
                        row.extend(p.mode.map(|m| m.name().to_string()));
                        row.extend(self.distances.then(|| p.distance.map(|d| format!("{d:.3}")).unwrap_or_default()));
                        if let Some(h) = self.held.get(i) {
                            row.extend([h.class.clone(), h.subject.clone()]);
                        }
                        outln!("{}", csv_line(&row));
                    }
                    OutputFormat::Json | OutputFormat::Jsonl => {
                        let named = |names: &[String], v: &[f64]| {
                            names.iter().cloned().zip(v.iter().map(|v| serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>()
                        };
                        let mut o = serde_json::json!({"path": p.path.display().to_string(), "class": class, "probabilities": named(&cfg.classes, pr)});
                        if !p.raw.is_empty() {
                            o["raw_probabilities"] = serde_json::Value::Object(named(&cfg.raw_classes, &p.raw));
                        }
                        if let Some(m) = p.mode {
                            o["mode"] = serde_json::json!(m.name());
                        }
                        if let Some(t) = cfg.threshold_for(p.mode) {
                            o["threshold"] = serde_json::json!(t);
                        }
                        if let Some(f) = &p.face {
                            o["face"] = serde_json::json!(f);
                        }
                        if let Some(d) = p.distance {
                            o["feature_distance"] = serde_json::json!(d);
                        }
                        if let Some(h) = self.held.get(i) {
                            o["true_class"] = serde_json::json!(h.class);
                            o["subject"] = serde_json::json!(h.subject);
                        }
                        if a.format == OutputFormat::Jsonl {
                            outln!("{o}");
                        } else {
                            self.json.push(o);
                        }
                    }
                }
            }
            Err(e) => {
                self.failed += 1;
                errln!("{}: {}", p.path.display(), e.problem());
            }
        }
    }

    /// After the last line: the JSON array, the warnings and the held-out
    /// tally over all of `preds`; false when some image failed.
    pub fn finish(self, preds: &[predict::Prediction]) -> anyhow::Result<bool> {
        let Predictions { a, held, subject_norm, failed, right, json, .. } = self;
        if a.format == OutputFormat::Json {
            outln!("{}", serde_json::to_string_pretty(&json)?);
        }
        // As training says it: an answer for a picture without a face is an answer about the centre of the frame.
        let faceless: Vec<String> =
            preds.iter().filter(|p| p.probs.is_ok() && p.face.as_ref().is_some_and(|f| f.score.is_none())).map(|p| p.path.display().to_string()).collect();
        if !faceless.is_empty() {
            errln!("warning: no face found in {} image(s), used a centred crop: {}", faceless.len(), vggft::error::short_list(&faceless, 8));
        }
        let (names, distance): (Vec<String>, Vec<f64>) =
            preds.iter().filter(|p| p.probs.is_ok()).filter_map(|p| Some((p.path.display().to_string(), p.distance?))).unzip();
        if let Some(w) = predict::unusual_warning(&names, &distance) {
            errln!("{w}");
        }
        if a.held_out {
            // The people of the photos answered (not of those that could not be read).
            let answered: std::collections::HashSet<&std::path::Path> = preds.iter().filter(|p| p.probs.is_ok()).map(|p| p.path.as_path()).collect();
            let people: std::collections::BTreeSet<&str> = held.iter().filter(|h| answered.contains(h.path.as_path())).map(|h| h.subject.as_str()).collect();
            // A subject-normalised model: which head answered, and that head's own validation figure.
            let singles = preds.iter().filter(|p| p.mode == Some(predict::Mode::Single)).count();
            let (how, key, whose) = match (subject_norm, singles) {
                (false, _) => ("", "validation", ""),
                (true, 0) => (", each person's photos scored together", "validation", ""),
                (true, n) if n == preds.len() => (", each photo alone (the single-image head)", "validation_single_image", " of that head"),
                (true, _) => (", by both heads (the mode column)", "validation", ""),
            };
            let val = std::fs::read_to_string(a.model.join("metrics.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|m| m[key]["balanced_accuracy"].as_f64());
            // A run on data that names no people held out images, not people: its other photos may have trained it.
            let whom = if held.iter().all(|h| h.subject.is_empty()) {
                "the run's validation images (an image split: the data names no people, so a person's other photos may be in training)".to_string()
            } else {
                format!("{} the model never saw", vggft::error::people(people.len()))
            };
            let tally = format!(
                "{right} of {} right on {whom}{how}{}",
                preds.len() - failed,
                val.map(|b| format!(" (validation balanced accuracy {b:.3}{whose}, metrics.json)")).unwrap_or_default()
            );
            // Text closes its lines with it; CSV and JSON keep standard output to their records.
            if a.format == OutputFormat::Text {
                outln!("{tally}");
            } else {
                errln!("{tally}");
            }
        }
        if failed > 0 {
            // A folder without images is not a failed image: counted apart.
            let empty = preds.iter().filter(|p| p.path.is_dir()).count();
            let images = preds.len() - empty;
            if failed > empty {
                errln!("{} of {images} image(s) could not be predicted", failed - empty);
            }
            if empty > 0 {
                errln!("{empty} folder(s) held no images");
            }
        }
        Ok(failed == 0)
    }
}

pub fn print_metrics(m: &vggft::eval::Metrics, classes: &[String]) {
    use vggft::eval::fig;
    outln!("  {:<22} {:>8.3}", "accuracy", m.accuracy);
    outln!("  {:<22} {:>8.3}", "balanced accuracy", m.balanced_accuracy);
    outln!("  {:<22} {:>8}", if classes.len() == 2 { "ROC AUC" } else { "ROC AUC (macro OvR)" }, fig(m.roc_auc));
    outln!("  {:<22} {:>8.3}", "majority baseline", m.majority_baseline);
    outln!("  {:<14} {:>9} {:>9} {:>9} {:>7}", "class", "precision", "recall", "F1", "n");
    for c in &m.per_class {
        outln!("  {:<14} {:>9} {:>9} {:>9} {:>7}", c.class, fig(c.precision), fig(c.recall), fig(c.f1), c.support);
    }
    outln!("  confusion (rows: true, columns: predicted {})", classes.join(", "));
    for (c, row) in classes.iter().zip(&m.confusion) {
        outln!("  {:<14} {}", c, row.iter().map(|v| format!("{v:>6}")).collect::<String>());
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    let _ = w.write_record(fields);
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim_end_matches('\n').to_string()
}

/// Decimals that show which side of the threshold `t` the first class's
/// probability `p` lies on: `base`, more (at most 6) where the two round
/// alike — `neutral=0.143` with `threshold=0.143` could be either answer.
pub(crate) fn decimals(p: f64, t: Option<f64>, base: usize) -> usize {
    let Some(t) = t else { return base };
    (base..=6).find(|&d| format!("{p:.d$}") != format!("{t:.d$}")).unwrap_or(6)
}

#[cfg(test)]
mod tests {
    use super::{decimals, LogProgress};

    #[test]
    fn a_probability_by_its_threshold_shows_which_side_it_lies_on() {
        assert_eq!(decimals(0.1431, Some(0.1429), 3), 4);
        assert_eq!(decimals(0.1431, Some(0.1429), 2), 4);
        assert_eq!(decimals(0.2, Some(0.143), 3), 3);
        assert_eq!(decimals(0.15, Some(0.143), 2), 2);
        assert_eq!(decimals(0.1431, None, 3), 3);
        assert_eq!(decimals(0.25, Some(0.25), 3), 6, "equal: as many as shown at most");
    }
    use std::time::{Duration, Instant};

    #[test]
    fn a_long_step_in_a_log_says_how_far_it_is_every_interval() {
        let t0 = Instant::now();
        assert_eq!(LogProgress::EVERY, Duration::from_secs(30));
        let mut p = LogProgress::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(p.line("caching", "image(s)", 100, 1000, at(29)), None, "not before the interval");
        assert_eq!(p.line("caching", "image(s)", 120, 1000, at(30)).as_deref(), Some("caching: 120 of 1000 image(s) in 30s, about 220s left"));
        assert_eq!(p.line("caching", "image(s)", 150, 1000, at(45)), None, "the interval counts from the last line");
        assert_eq!(p.line("caching", "image(s)", 240, 1000, at(60)).as_deref(), Some("caching: 240 of 1000 image(s) in 60s, about 190s left"));
        assert_eq!(p.line("caching", "image(s)", 1000, 1000, at(200)), None, "the finished step is said by its caller");
    }
}

//! Classification metrics that tell the truth on imbalanced data: accuracy
//! next to balanced accuracy, per-class precision / recall / F1, ROC AUC and
//! the majority-class baseline.

pub mod cv;
pub mod evaluate;
pub mod explain;
pub mod features;
pub mod plot;
pub mod predict;
pub mod report;
pub mod threshold;

use serde::{Deserialize, Serialize};

/// What a summary says when scores use flip test-time augmentation.
pub const FLIP_TTA: &str = "flip test-time augmentation: each image's probabilities averaged with its mirror image's";

/// Whether to score with flip test-time augmentation: the user's choice, or
/// by default for a subject-normalised model — the JAFFE recipe, where it
/// measured better (docs/results/accuracy) — and not otherwise.
pub fn flip_tta(choice: Option<bool>, subject_norm: bool) -> bool {
    choice.unwrap_or(subject_norm)
}

pub fn accuracy(y: &[i64], pred: &[i64]) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    y.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

/// Rows: true class, columns: predicted class.
pub fn confusion(y: &[i64], pred: &[i64], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&t, &p) in y.iter().zip(pred) {
        m[t as usize][p as usize] += 1;
    }
    m
}

/// Mean recall over the classes present in `y`.
pub fn balanced_accuracy(y: &[i64], pred: &[i64], classes: usize) -> f64 {
    let m = confusion(y, pred, classes);
    let recalls: Vec<f64> =
        m.iter().enumerate().filter(|(_, r)| r.iter().sum::<usize>() > 0).map(|(c, r)| r[c] as f64 / r.iter().sum::<usize>() as f64).collect();
    if recalls.is_empty() {
        f64::NAN
    } else {
        recalls.iter().sum::<f64>() / recalls.len() as f64
    }
}

/// Area under the ROC curve for `scores` of the positive class (ties count ½).
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> f64 {
    let np = positive.iter().filter(|&&p| p).count();
    let nn = positive.len() - np;
    if np == 0 || nn == 0 {
        return f64::NAN;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let sum_pos: f64 = positive.iter().zip(&ranks).filter(|(p, _)| **p).map(|(_, r)| r).sum();
    (sum_pos - (np * (np + 1)) as f64 / 2.0) / (np * nn) as f64
}

/// A figure as tables and summaries print it, three decimals; "–" where it
/// could not be computed (ROC AUC of test images of one class, a recall
/// without support).
pub fn fig(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".into()
    }
}

/// Text for a Markdown table cell: a `|` in a class name, subject id or path
/// would end the cell (GitHub's tables read `\|` as the character).
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A metric back from JSON, where an undefined one (NaN) is `null`:
/// serde_json writes NaN so, e.g. the ROC AUC of a fold whose test images
/// are all of one class, or the recall of a class it does not hold.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A pair of figures that may each be NaN, written as `null`.
pub(crate) fn nan_pair_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<(f64, f64), D::Error> {
    let (a, b) = <(Option<f64>, Option<f64>)>::deserialize(d)?;
    Ok((a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub support: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub precision: f64,
    /// NaN (`null`) for a class without images here.
    #[serde(deserialize_with = "nan_if_null")]
    pub recall: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub f1: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub balanced_accuracy: f64,
    /// Binary: AUC of the second class's probability; multiclass: macro
    /// one-vs-rest. NaN (`null`) where the images are all of one class.
    #[serde(deserialize_with = "nan_if_null")]
    pub roc_auc: f64,
    /// Accuracy of always answering the most frequent class.
    #[serde(deserialize_with = "nan_if_null")]
    pub majority_baseline: f64,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<usize>>,
}

/// All metrics from true classes and per-class probabilities (rows sum to 1),
/// each row's class the most probable.
pub fn metrics(y: &[i64], probs: &[Vec<f64>], classes: &[String]) -> Metrics {
    metrics_at(y, probs, classes, |_| None)
}

/// All metrics, row `i`'s class decided at `threshold(i)` on P(first class)
/// (`threshold::decide`; `None`: the most probable). Ranking metrics (ROC
/// AUC) do not depend on it.
pub fn metrics_at(y: &[i64], probs: &[Vec<f64>], classes: &[String], threshold: impl Fn(usize) -> Option<f64>) -> Metrics {
    let c = classes.len();
    let pred: Vec<i64> = probs.iter().enumerate().map(|(i, p)| threshold::decide(p, threshold(i)) as i64).collect();
    let m = confusion(y, &pred, c);
    let per_class = (0..c)
        .map(|k| {
            let tp = m[k][k] as f64;
            let support: usize = m[k].iter().sum();
            let predicted: usize = m.iter().map(|r| r[k]).sum();
            let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
            let recall = if support == 0 { f64::NAN } else { tp / support as f64 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { class: classes[k].clone(), support, precision, recall, f1 }
        })
        .collect();
    let auc_of = |k: usize| roc_auc(&y.iter().map(|&t| t == k as i64).collect::<Vec<_>>(), &probs.iter().map(|p| p[k]).collect::<Vec<_>>());
    let roc_auc = if c == 2 {
        auc_of(1)
    } else {
        let v: Vec<f64> = (0..c).map(auc_of).filter(|a| a.is_finite()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let majority = m.iter().map(|r| r.iter().sum::<usize>()).max().unwrap_or(0) as f64 / y.len().max(1) as f64;
    Metrics {
        n: y.len(),
        accuracy: accuracy(y, &pred),
        balanced_accuracy: balanced_accuracy(y, &pred, c),
        roc_auc,
        majority_baseline: majority,
        per_class,
        confusion: m,
    }
}

/// Class probabilities (float64) from logits. With a raw-label head
/// (`raw_to_task` non-empty), each task class's probability is the sum of its
/// raw labels' softmax probabilities.
pub fn task_probs(logits: &tch::Tensor, raw_to_task: &[usize], n_task: usize) -> tch::Tensor {
    sum_to_task(&logits.softmax(1, tch::Kind::Double), raw_to_task, n_task)
}

/// Raw-label probabilities (float64) → task-class probabilities (sums); unchanged without a map.
pub(crate) fn sum_to_task(p: &tch::Tensor, raw_to_task: &[usize], n_task: usize) -> tch::Tensor {
    if raw_to_task.is_empty() {
        return p.shallow_clone();
    }
    let idx = tch::Tensor::from_slice(&raw_to_task.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(p.device());
    tch::Tensor::zeros([p.size()[0], n_task as i64], (tch::Kind::Double, p.device())).index_add(1, &idx, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_against_hand_computed_values() {
        // 3 of class 0, 1 of class 1; the model always says 0.
        let y = [0, 0, 0, 1];
        let probs: Vec<Vec<f64>> = vec![vec![0.9, 0.1], vec![0.6, 0.4], vec![0.7, 0.3], vec![0.6, 0.4]];
        let m = metrics(&y, &probs, &["a".into(), "b".into()]);
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(m.balanced_accuracy, 0.5, "recalls 1 and 0");
        assert_eq!(m.majority_baseline, 0.75);
        assert_eq!(m.confusion, vec![vec![3, 0], vec![1, 0]]);
        assert_eq!(m.per_class[1].precision, 0.0, "a class never predicted has precision 0");
        assert_eq!(m.per_class[1].f1, 0.0);
        // AUC of p(b): positive score 0.4 ties with one negative (0.4) and beats two (0.1, 0.3): (2 + 0.5) / 3.
        assert!((m.roc_auc - 2.5 / 3.0).abs() < 1e-12, "{}", m.roc_auc);
    }

    #[test]
    fn auc_extremes_and_degenerate_cases() {
        assert_eq!(roc_auc(&[false, false, true, true], &[0.1, 0.2, 0.8, 0.9]), 1.0);
        assert_eq!(roc_auc(&[true, true, false, false], &[0.1, 0.2, 0.8, 0.9]), 0.0);
        assert_eq!(roc_auc(&[true, false], &[0.5, 0.5]), 0.5);
        assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_nan());
    }

    #[test]
    fn balanced_accuracy_ignores_absent_classes() {
        assert_eq!(balanced_accuracy(&[0, 0, 2, 2], &[0, 1, 2, 2], 3), 0.75);
    }
}

//! Per-subject feature normalisation. A face network's pooled features are
//! dominated by who the person is; standardising each person's features with
//! that person's own mean and spread (unlabelled images only) leaves what
//! differs between their photos — the expression. This is transductive: at
//! evaluation and prediction a person's statistics come from that person's
//! test images, which every summary says.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What every summary of a subject-normalised model says.
pub const TRANSDUCTIVE: &str =
    "per-subject normalisation: each test person's unlabelled images set that person's normalisation; the single-image head needs no other photo";

/// Fewest images of most people (at least half of them) for the recipe
/// measured with several photos per person (`several_photos`).
pub(crate) const MIN_IMAGES: usize = 3;

/// Fewest images of one person for that person's own statistics at
/// evaluation and prediction (one image cannot set its own statistics: it
/// would normalise to zero); fewer go to the single-image head.
pub const PERSON_MIN: usize = 2;

/// Pseudo-images of the pooled within-person variance mixed into each
/// person's own variance: with few images a person's variance is noisy (with
/// two it makes every feature ±1), so it is shrunk towards the typical one.
const VAR_PRIOR: f64 = 2.0;

/// `--subject-norm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubjectNormChoice {
    /// Globally normalised features only (the classic head).
    #[default]
    Off,
    /// Always (a person with a single photo is answered by the single-image head).
    On,
    /// On where every person has at least 2 photos.
    // (`PERSON_MIN`, `enough_photos`.)
    Auto,
}

impl SubjectNormChoice {
    /// On or off for a dataset whose subjects have `counts` images each (`None`: no subject ids).
    pub(crate) fn resolve(self, counts: Option<&[usize]>) -> bool {
        match self {
            SubjectNormChoice::Off => false,
            SubjectNormChoice::On => true,
            SubjectNormChoice::Auto => counts.is_some_and(enough_photos),
        }
    }
}

/// Whether people with these image counts have what person statistics need
/// (`--subject-norm auto`): at least `PERSON_MIN` images of every person.
/// Pairs count: on the London pairs person statistics (whole frame)
/// measured 0.895 balanced accuracy, 0.806 for a lone photo, against 0.774
/// for the globally normalised fine-tune (docs/results/accuracy, "Pairs");
/// until 2026-12-04 they needed `several_photos`.
pub(crate) fn enough_photos(counts: &[usize]) -> bool {
    !counts.is_empty() && counts.iter().all(|&n| n >= PERSON_MIN)
}

/// Several photos per person: enough for person statistics
/// (`enough_photos`) and `MIN_IMAGES` of at least half of them (the lower median). Where the
/// multi-layer features, the 3x3 grid and the long probe measured best
/// (JAFFE-format sets); on pairs they measured worse or were not measured.
/// The lower median keeps one person with 2 photos among ten with 21 from
/// turning that recipe off for all (docs/results/accuracy, "A person with 2
/// photos among many").
pub(crate) fn several_photos(counts: &[usize]) -> bool {
    if !enough_photos(counts) {
        return false;
    }
    let mut c = counts.to_vec();
    c.sort_unstable();
    c[(c.len() - 1) / 2] >= MIN_IMAGES
}

/// The keys that pair with more than one distinct value, each with those
/// values sorted: the ids under which several people (by their JAFFE names)
/// stand, or the people who stand under several ids.
pub(crate) fn several<K: Ord, V: Ord>(pairs: impl IntoIterator<Item = (K, V)>) -> Vec<(K, Vec<V>)> {
    let mut by_key: std::collections::BTreeMap<K, std::collections::BTreeSet<V>> = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        by_key.entry(k).or_default().insert(v);
    }
    by_key.into_iter().filter(|(_, vs)| vs.len() > 1).map(|(k, vs)| (k, vs.into_iter().collect())).collect()
}

/// The people whose photos here are all of one class, each with that class,
/// and how many people there are: their own statistics would remove that
/// class (a person's mean is then that class's face). `photos` pairs each
/// photo's person with its class.
pub(crate) fn one_class_people<'a>(photos: impl IntoIterator<Item = (&'a str, usize)>) -> (Vec<(&'a str, usize)>, usize) {
    let mut classes: std::collections::BTreeMap<&str, std::collections::BTreeSet<usize>> = Default::default();
    for (person, class) in photos {
        classes.entry(person).or_default().insert(class);
    }
    let one = classes.iter().filter(|(_, c)| c.len() == 1).filter_map(|(&p, c)| Some((p, *c.first()?))).collect();
    (one, classes.len())
}

/// Per-person mean and standard deviation of pooled features.
pub struct SubjectNorm {
    /// (G, D) per group.
    mean: Tensor,
    std: Tensor,
    /// (D) the variance each person's own is shrunk towards.
    prior: Tensor,
}

impl SubjectNorm {
    /// Statistics of `feats` (N, D), row i belonging to group `groups[i]`
    /// (0..G), each person's variance shrunk towards the pooled within-person
    /// variance of these people (training people: `prior` keeps it for
    /// scoring new ones).
    pub fn fit(feats: &Tensor, groups: &[usize]) -> SubjectNorm {
        Self::fit_towards(feats, groups, None)
    }

    /// `fit`, shrinking towards `prior` (D) when given: a model's training
    /// people's within-person variance. New people's statistics then depend on
    /// each person's own images alone, not on who else is scored beside them.
    pub fn fit_towards(feats: &Tensor, groups: &[usize], prior: Option<&Tensor>) -> SubjectNorm {
        let g = groups.iter().max().map_or(0, |m| m + 1) as i64;
        let dev = feats.device();
        let f = feats.to_kind(Kind::Double);
        let idx = Tensor::from_slice(&groups.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(dev);
        let d = f.size()[1];
        let zeros = || Tensor::zeros([g, d], (Kind::Double, dev));
        let n = Tensor::zeros([g], (Kind::Double, dev)).index_add(0, &idx, &Tensor::ones([f.size()[0]], (Kind::Double, dev))).unsqueeze(1);
        let mean = zeros().index_add(0, &idx, &f) / n.clamp_min(1.0);
        let centred = &f - mean.index_select(0, &idx);
        let var = zeros().index_add(0, &idx, &centred.square()) / n.clamp_min(1.0);
        // The typical within-person variance, weighting people by their image count.
        let pooled = match prior {
            Some(p) => p.to_device(dev).to_kind(Kind::Double).view([1, d]),
            None => (&var * &n).sum_dim_intlist(0, true, Kind::Double) / n.sum(Kind::Double).clamp_min(1.0),
        };
        let var = (&var * &n + &pooled * VAR_PRIOR) / (&n + VAR_PRIOR);
        SubjectNorm { mean: mean.to_kind(Kind::Float), std: (var + 1e-5).sqrt().to_kind(Kind::Float), prior: pooled.view([d]).to_kind(Kind::Float) }
    }

    /// The variance each person's own was shrunk towards (D).
    pub fn prior(&self) -> &Tensor {
        &self.prior
    }

    /// How far each row of `feats` (N, D) lies from its person's average,
    /// in units of the within-person spread this was shrunk towards (a
    /// model's training people's, `Vgg16::person_prior`): the root mean
    /// square over the features. About 1 where a person's photos vary as
    /// the training people's did; far more for a photo unlike the person's
    /// others in a way those never were (a blank frame among faces). A
    /// person who differs from the training people as a whole (another
    /// camera, an overlay of their own) does not count: the person head
    /// reads each photo against that person's own average.
    pub fn spread_distance(&self, feats: &Tensor, groups: &[usize]) -> Tensor {
        let idx = Tensor::from_slice(&groups.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(feats.device());
        let centred = feats.to_kind(Kind::Float) - self.mean.index_select(0, &idx);
        (centred.square() / (&self.prior + 1e-5).unsqueeze(0)).mean_dim(1, false, Kind::Float).sqrt()
    }

    /// Standardises `feats` (N, D) with the statistics of each row's group.
    pub fn apply(&self, feats: &Tensor, groups: &[usize]) -> Tensor {
        self.apply_covered(feats, &groups.iter().map(|&k| Some(k)).collect::<Vec<_>>())
    }

    /// `apply`, where rows of people the statistics do not cover (`None`)
    /// pass unchanged (a zero mean and unit spread are appended for them).
    pub fn apply_covered(&self, feats: &Tensor, groups: &[Option<usize>]) -> Tensor {
        let (g, dev) = (self.mean.size()[0], self.mean.device());
        let opts = (Kind::Float, dev);
        let mean = Tensor::cat(&[self.mean.shallow_clone(), Tensor::zeros([1, self.mean.size()[1]], opts)], 0);
        let std = Tensor::cat(&[self.std.shallow_clone(), Tensor::ones([1, self.std.size()[1]], opts)], 0);
        let idx = Tensor::from_slice(&groups.iter().map(|k| k.map_or(g, |k| k as i64)).collect::<Vec<_>>()).to_device(feats.device());
        (feats - mean.index_select(0, &idx)) / std.index_select(0, &idx)
    }
}

/// Group ids 0..G for `keys` (e.g. subject names), in order of first appearance.
pub fn groups<T: PartialEq + Clone>(keys: &[T]) -> Vec<usize> {
    let mut seen: Vec<T> = Vec::new();
    keys.iter()
        .map(|k| match seen.iter().position(|s| s == k) {
            Some(i) => i,
            None => {
                seen.push(k.clone());
                seen.len() - 1
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_is_standardised_by_its_own_statistics() {
        // Two people far apart; within each, features vary.
        let f = Tensor::from_slice(&[10.0f32, 11.0, 12.0, 13.0, -5.0, -4.0, -3.0, -2.0]).view([8, 1]);
        let g = [0, 0, 0, 0, 1, 1, 1, 1];
        let norm = SubjectNorm::fit(&f, &g);
        let z = norm.apply(&f, &g);
        let v: Vec<f32> = Vec::try_from(z.flatten(0, -1)).unwrap();
        // Each person's features are centred on that person's mean…
        assert!(v[..4].iter().sum::<f32>().abs() < 1e-5 && v[4..].iter().sum::<f32>().abs() < 1e-5, "{v:?}");
        // …and the two people become the same pattern (equal variances, so the prior changes nothing).
        for i in 0..4 {
            assert!((v[i] - v[i + 4]).abs() < 1e-5, "{v:?}");
        }
        assert!((v[3] - 1.5 / 1.25f32.sqrt()).abs() < 1e-3, "biased variance 1.25: {v:?}");
        assert_eq!(groups(&["b", "a", "b", "c"]), [0, 1, 0, 2]);
        assert!(SubjectNormChoice::Auto.resolve(Some(&[3, 4])) && SubjectNormChoice::Auto.resolve(Some(&[21, 2, 21])));
        // Pairs are on; anyone with one photo, no people or no subject ids: off.
        assert!(SubjectNormChoice::Auto.resolve(Some(&[2, 2, 2])) && SubjectNormChoice::Auto.resolve(Some(&[3, 2])));
        assert!(!SubjectNormChoice::Auto.resolve(Some(&[21, 21, 1])) && !SubjectNormChoice::Auto.resolve(Some(&[])));
        assert!(!SubjectNormChoice::Auto.resolve(None) && SubjectNormChoice::On.resolve(None));
        // Several photos (the JAFFE recipe): at least half the people with 3, nobody with 1.
        assert!(several_photos(&[3, 4]) && several_photos(&[21, 2, 21]) && several_photos(&[3, 3, 2]));
        assert!(
            !several_photos(&[2, 2, 2]) && !several_photos(&[3, 2]) && !several_photos(&[2, 2, 3]) && !several_photos(&[21, 21, 1]) && !several_photos(&[])
        );
    }

    /// A person's photos are measured against that person's average in the
    /// prior's spread: a person shifted as a whole is not far, one odd
    /// photo is (and drags the person's average, so the others move too).
    #[test]
    fn the_spread_distance_measures_a_photo_against_its_persons_others() {
        // Two features, prior variance 1; anna around 0 (±1), ben the same pattern shifted by 100, carl with one odd photo.
        let rows = [[-1.0f32, 1.0], [1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]];
        let mut f: Vec<f32> = rows.iter().flatten().copied().collect();
        f.extend(rows.iter().flatten().map(|v| v + 100.0));
        f.extend(rows.iter().flatten().copied().chain([40.0, 40.0]));
        let f = Tensor::from_slice(&f).view([13, 2]);
        let g = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2];
        let d: Vec<f32> =
            Vec::try_from(SubjectNorm::fit_towards(&f, &g, Some(&Tensor::ones([2], (Kind::Float, tch::Device::Cpu)))).spread_distance(&f, &g)).unwrap();
        assert!(d[..8].iter().all(|&x| (x - 1.0).abs() < 1e-3), "anna and ben as the prior's spread: {d:?}");
        // carl's average is (8, 8): his odd photo lies 32 from it (RMS over the features), his others 7 to 9.
        assert!((d[12] - 32.0).abs() < 1e-3 && d[8..12].iter().all(|&x| x > 6.99 && x < 9.01), "{d:?}");
    }

    /// Shrunk towards a fixed prior, a person's statistics depend on that
    /// person's rows alone; shrunk towards the pooled variance of the people
    /// fitted together, they change with who else is there.
    #[test]
    fn with_a_prior_a_persons_statistics_are_their_own() {
        let anna = Tensor::from_slice(&[1.0f32, 2.0, 4.0, 3.0, 0.0, 8.0]).view([3, 2]);
        let ben = Tensor::from_slice(&[10.0f32, -9.0, 30.0, 9.0]).view([2, 2]);
        let both = Tensor::cat(&[&anna, &ben], 0);
        let prior = Tensor::from_slice(&[2.0f32, 5.0]);
        let alone = SubjectNorm::fit_towards(&anna, &[0, 0, 0], Some(&prior)).apply(&anna, &[0, 0, 0]);
        let beside = SubjectNorm::fit_towards(&both, &[0, 0, 0, 1, 1], Some(&prior)).apply(&both, &[0, 0, 0, 1, 1]);
        assert!(alone.allclose(&beside.narrow(0, 0, 3), 1e-6, 1e-6, false), "{alone} {beside}");
        // The shrinkage itself: anna's first feature has mean 5/3 and biased variance 26/9; (3 × 26/9 + 2 × 2) / 5.
        let want = (1.0 - 5.0 / 3.0) / ((3.0 * 26.0 / 9.0 + 2.0 * 2.0) / 5.0 + 1e-5f64).sqrt();
        assert!((alone.double_value(&[0, 0]) - want).abs() < 1e-5, "{alone} vs {want}");
        let pooled_alone = SubjectNorm::fit(&anna, &[0, 0, 0]).apply(&anna, &[0, 0, 0]);
        let pooled_beside = SubjectNorm::fit(&both, &[0, 0, 0, 1, 1]).apply(&both, &[0, 0, 0, 1, 1]);
        assert!(!pooled_alone.allclose(&pooled_beside.narrow(0, 0, 3), 1e-3, 1e-3, false));
        // What a training fit keeps for new people: the image-weighted mean of the people's variances.
        let fit = SubjectNorm::fit(&both, &[0, 0, 0, 1, 1]);
        assert!((fit.prior().double_value(&[0]) - (3.0 * 26.0 / 9.0 + 2.0 * 100.0) / 5.0).abs() < 1e-4, "{}", fit.prior());
    }
}

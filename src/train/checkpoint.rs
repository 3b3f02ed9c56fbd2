//! Checkpoints of a fit in its run folder: model, optimizer state and best
//! weights in one tensor file, committed by the small state file that names
//! it, so a kill at any moment leaves a loadable checkpoint (`--resume`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::ResumeState;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::weights;
use crate::model::Vgg16;
use crate::train::optim::Optimizer;

pub const STATE: &str = "checkpoint.json";

/// The model's tensors as one checkpoint of a fit found them, written once
/// (`checkpoint-base.safetensors`): later checkpoints hold only the tensors
/// that differ from it. A head-only fit never writes its frozen trunk
/// (58 MB) again — it wrote it every epoch, 3 GB over the default probe's
/// 50 epochs — while any tensor that moves (a trained block, BatchNorm
/// statistics) is saved whatever the recipe.
pub(crate) struct Base {
    tensors: BTreeMap<String, Tensor>,
}

/// The base file's name in the run folder.
pub const BASE: &str = "checkpoint-base.safetensors";

impl Base {
    fn write(dir: &Path, model: &Vgg16) -> Result<Base> {
        let snap = super::hooks::snapshot(model);
        weights::save_atomic(&snap, &dir.join(BASE))?;
        Ok(Base { tensors: snap.into_iter().collect() })
    }

    /// On the model's device, where the fit's tensors are compared with it.
    fn read(dir: &Path, device: tch::Device) -> Result<Base> {
        Ok(Base { tensors: weights::read_tensors(&dir.join(BASE))?.into_iter().map(|(n, t)| (n, t.to_device(device))).collect() })
    }

    /// The tensors of `named` that the base lacks or holds with other values.
    fn changed<'a>(&'a self, named: impl IntoIterator<Item = (String, Tensor)> + 'a) -> impl Iterator<Item = (String, Tensor)> + 'a {
        named.into_iter().filter(|(n, t)| !self.tensors.get(n).is_some_and(|b| b.size() == t.size() && b.kind() == t.kind() && b.equal(t)))
    }
}

/// Saves model, optimizer state and best weights to `checkpoint-eNNNN.safetensors`
/// (the model and best weights as they differ from the fit's `base`, written
/// first when there is none), then the state that names both files, each
/// atomically: a kill at any moment leaves the previous state and its tensor
/// files intact. Older tensor files are removed only after the new state is in place.
pub(crate) fn save_checkpoint(
    dir: &Path,
    model: &Vgg16,
    opt: &Optimizer,
    best: Option<&[(String, Tensor)]>,
    st: &mut ResumeState,
    base: &mut Option<Base>,
) -> Result<()> {
    if base.is_none() {
        *base = Some(Base::write(dir, model)?);
    }
    let b = base.as_ref().ok_or_else(|| Error::internal("no checkpoint base"))?;
    let mut all: Vec<(String, Tensor)> = b.changed(model.named_tensors()).map(|(n, t)| (format!("model.{n}"), t)).collect();
    all.extend(opt.state_tensors());
    if let Some(best) = best {
        all.extend(b.changed(best.iter().map(|(n, t)| (n.clone(), t.shallow_clone()))).map(|(n, t)| (format!("best.{n}"), t)));
    }
    let name = format!("checkpoint-e{:04}.safetensors", st.history.len());
    weights::save_atomic(&all, &dir.join(&name))?;
    (st.checkpoint, st.base, st.has_best) = (name, BASE.to_string(), best.is_some());
    fsutil::write_json(&dir.join(STATE), st)?;
    remove_checkpoints(dir, Some(&st.checkpoint));
    Ok(())
}

/// Removes checkpoint tensor files other than `keep`; with a `keep`, the base
/// stays (the kept checkpoint needs it), without one it goes too.
pub(crate) fn remove_checkpoints(dir: &Path, keep: Option<&str>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let ours = n.starts_with("checkpoint-e") || (keep.is_none() && n == BASE);
        if ours && n.ends_with(".safetensors") && Some(n.as_str()) != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads the resume state of a run folder.
pub fn load_state(dir: &Path) -> Result<ResumeState> {
    let p = dir.join(STATE);
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&s).map_err(|e| Error::file(&p, format!("is not a valid checkpoint state: {e}")))
}

/// Optimizer state and best-epoch weights of a checkpoint.
pub(crate) type Restored = (BTreeMap<String, Tensor>, Option<Vec<(String, Tensor)>>);

/// Loads the model weights of a checkpoint into `model` (its base's where
/// the checkpoint holds none of its own); returns the base for the fit's
/// next checkpoints (none: a checkpoint written whole, before bases).
pub(crate) fn load_checkpoint(dir: &Path, st: &ResumeState, model: &mut Vgg16) -> Result<(Restored, Option<Base>)> {
    let file = &st.checkpoint;
    if !(st.base.is_empty() || st.base == BASE) {
        return Err(Error::file(dir.join(STATE), format!("names the base file `{}`, where vggft writes {BASE}", st.base.escape_debug())));
    }
    if file.is_empty() || file.contains('/') {
        return Err(Error::file(dir.join(STATE), "names no checkpoint file"));
    }
    let p = dir.join(file);
    let tensors: BTreeMap<String, Tensor> = weights::read_tensors(&p)?.into_iter().collect();
    let base = if st.base.is_empty() { None } else { Some(Base::read(dir, model.device())?) };
    let from_base = |name: &str| base.as_ref().and_then(|b| b.tensors.get(name));
    let vars = model.vs.variables();
    let mut best = Vec::new();
    let mut optim = BTreeMap::new();
    for (n, t) in &tensors {
        if let Some(name) = n.strip_prefix("best.") {
            best.push((name.to_string(), t.to_device(model.device())));
        } else if n.starts_with("optim.") {
            optim.insert(n.clone(), t.to_device(model.device()));
        }
    }
    // The best weights the checkpoint left out are the base's.
    if let Some(b) = base.as_ref().filter(|_| st.has_best) {
        let own: std::collections::BTreeSet<String> = best.iter().map(|(n, _)| n.clone()).collect();
        best.extend(b.tensors.iter().filter(|(n, _)| !own.contains(*n)).map(|(n, t)| (n.clone(), t.to_device(model.device()))));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, v) in &vars {
            let t = tensors.get(&format!("model.{name}")).or_else(|| from_base(name)).ok_or_else(|| Error::weights(&p, format!("lacks model.{name}")))?;
            if t.size() != v.size() {
                return Err(Error::weights(&p, format!("model.{name} has shape {:?}, expected {:?}", t.size(), v.size())));
            }
            let mut v = v.shallow_clone();
            v.copy_(t);
        }
        Ok(())
    })?;
    let has_best = if base.is_some() { st.has_best } else { !best.is_empty() };
    Ok(((optim, has_best.then_some(best)), base))
}

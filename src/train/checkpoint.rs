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

/// Saves model, optimizer state and best weights to `checkpoint-eNNNN.safetensors`,
/// then the state that names that file, each atomically: a kill at any moment
/// leaves the previous state and its tensor file intact. Older tensor files
/// are removed only after the new state is in place.
pub(crate) fn save_checkpoint(dir: &Path, model: &Vgg16, opt: &Optimizer, best: Option<&[(String, Tensor)]>, st: &mut ResumeState) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = model.named_tensors().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    all.extend(opt.state_tensors());
    if let Some(b) = best {
        all.extend(b.iter().map(|(n, t)| (format!("best.{n}"), t.shallow_clone())));
    }
    let name = format!("checkpoint-e{:04}.safetensors", st.history.len());
    weights::save_atomic(&all, &dir.join(&name))?;
    st.checkpoint = name;
    fsutil::write_json(&dir.join(STATE), st)?;
    remove_checkpoints(dir, Some(&st.checkpoint));
    Ok(())
}

/// Removes checkpoint tensor files other than `keep`.
pub(crate) fn remove_checkpoints(dir: &Path, keep: Option<&str>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("checkpoint-e") && n.ends_with(".safetensors") && Some(n.as_str()) != keep {
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

/// Loads the model weights of a checkpoint into `model`.
pub(crate) fn load_checkpoint(dir: &Path, file: &str, model: &mut Vgg16) -> Result<Restored> {
    if file.is_empty() || file.contains('/') {
        return Err(Error::file(dir.join(STATE), "names no checkpoint file"));
    }
    let p = dir.join(file);
    let tensors: BTreeMap<String, Tensor> = weights::read_tensors(&p)?.into_iter().collect();
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
    tch::no_grad(|| -> Result<()> {
        for (name, v) in &vars {
            let t = tensors.get(&format!("model.{name}")).ok_or_else(|| Error::weights(&p, format!("lacks model.{name}")))?;
            if t.size() != v.size() {
                return Err(Error::weights(&p, format!("model.{name} has shape {:?}, expected {:?}", t.size(), v.size())));
            }
            let mut v = v.shallow_clone();
            v.copy_(t);
        }
        Ok(())
    })?;
    Ok((optim, (!best.is_empty()).then_some(best)))
}

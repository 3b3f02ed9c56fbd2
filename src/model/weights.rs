//! Weight files: reading safetensors, checking every tensor's name, shape and
//! values against the network, folding BatchNorm into convs, telling what a
//! file holds (`vggft weights inspect`) and saving atomically.
//!
//! Only safetensors is ever read here: no pickle reaches the Rust side.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::{short_list, Error, Result};
use crate::fsutil;
use crate::model::{HeadKind, Vgg16, BN_EPS, CONVS};

/// What a weights file holds, judged by its tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FileArch {
    /// torchvision VGG16: plain trunk and fc6/fc7/fc8.
    Vgg16,
    /// torchvision VGG16-BN.
    Vgg16Bn,
    /// Plain conv trunk only (e.g. the HED stand-in).
    Trunk,
    /// BN conv trunk only.
    TrunkBn,
    /// A vggft run's model (has a `head.*` or a resized `classifier.6`).
    Checkpoint,
    Unknown,
}

impl FileArch {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            FileArch::Vgg16 => "VGG16 (torchvision layout: conv trunk + classifier)",
            FileArch::Vgg16Bn => "VGG16-BN (torchvision layout: conv trunk with BatchNorm + classifier)",
            FileArch::Trunk => "VGG16 conv trunk only (no BatchNorm, no classifier)",
            FileArch::TrunkBn => "VGG16-BN conv trunk only (no classifier)",
            FileArch::Checkpoint => "a vggft checkpoint (trunk + trained head)",
            FileArch::Unknown => "not a VGG16 layout",
        }
    }
}

/// What loading did, for the run log and config.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    /// Names in the file that the network does not use (ignored).
    pub ignored: Vec<String>,
    /// Names the network has that the file does not provide (the new head).
    pub new: Vec<String>,
    /// BN weights were folded into the convs (`--bn drop` with BN weights).
    pub folded_bn: bool,
    /// The file's SHA-256 (`load_checkpoint`: a run's model, checked against its config.json).
    pub sha256: String,
}

/// Why a path with this metadata cannot be a weights file: a folder, or a
/// device or FIFO (/dev/zero would read forever, a FIFO block).
pub(crate) fn not_a_weights_file(meta: &std::fs::Metadata) -> Option<&'static str> {
    if meta.is_dir() {
        Some("is a folder, not a weights file")
    } else if !meta.is_file() {
        Some("is not a regular file")
    } else {
        None
    }
}

/// Why a file cannot be a safetensors weights file, from its header read
/// against its size, without loading a tensor: a PyTorch checkpoint (with
/// the line that converts it), a bad header, tensor data cut short; None
/// where it can be one. Lets a run refuse a broken weights file before its
/// photos load.
pub fn header_problem(path: &Path) -> Option<String> {
    let why = safetensors_problem(path)?;
    // Only a file that is no safetensors is looked at for a checkpoint: a
    // safetensors header of 640 bytes starts 80 02 00 …, as a pickle does.
    Some(pytorch_checkpoint(path).unwrap_or(why))
}

/// What to do with a PyTorch checkpoint (`torch.save`: a zip, or before
/// PyTorch 1.6 a pickle), the form torchvision's own VGG16 downloads in.
fn pytorch_checkpoint(path: &Path) -> Option<String> {
    let mut head = [0u8; 4];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    (head == *b"PK\x03\x04" || head[0] == 0x80 && (2..=5).contains(&head[1]) && head[2] != 0).then(|| {
        format!(
            "is a PyTorch checkpoint (torch.save, as torchvision's vgg16-397923af.pth), not safetensors: convert it with `make fetch-weights FROM={}` in the vggft folder (FROM_BN= for VGG16-BN), which writes weights/vgg16.safetensors",
            path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display()
        )
    })
}

/// A safetensors header against the file's size: why it cannot be one.
fn safetensors_problem(path: &Path) -> Option<String> {
    let len = std::fs::metadata(path).ok()?.len();
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = [0u8; 8];
    if len == 0 {
        return Some("is empty (0 bytes)".into());
    }
    if len < 8 || f.read_exact(&mut n).is_err() {
        return Some("is not a safetensors file (bad header): shorter than its 8-byte header length".into());
    }
    let n = u64::from_le_bytes(n);
    if n > (len - 8).min(100 << 20) {
        return Some("is not a safetensors file (bad header)".into());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(&header) else {
        return Some("is not a safetensors file (bad header)".into());
    };
    let end = entries.iter().filter(|(k, _)| *k != "__metadata__").filter_map(|(_, v)| v["data_offsets"][1].as_u64()).max().unwrap_or(0);
    (8 + n + end > len).then(|| format!("is truncated or corrupt (its header lists {} bytes of tensor data, the file holds {})", end, len - 8 - n))
}

/// Tensors by name, as a safetensors file holds them.
type Named = Vec<(String, Tensor)>;

/// Why `path` cannot be read as a safetensors weights file (its kind, its
/// header against its size), before any tensor is read.
fn check_weights_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(why) = not_a_weights_file(&meta) {
        return Err(Error::weights(path, why));
    }
    if let Some(why) = header_problem(path) {
        return Err(Error::weights(path, why));
    }
    Ok(())
}

/// Reads the tensors of a safetensors file whose names `keep` accepts, and
/// names the others, which are not read: torchvision's VGG16 file is 528 MB,
/// 411 MB of it the fc6 weights that a new head never uses, and a cv loads
/// the weights for every fold (two side by side held 3.6 GB at their peak,
/// 0.9 GB with the trunk alone read). Where every tensor is kept, as
/// `read_tensors`.
pub(crate) fn read_tensors_where(path: &Path, keep: impl Fn(&str) -> bool) -> Result<(Named, Vec<String>)> {
    use std::io::{Seek, SeekFrom};
    check_weights_file(path)?;
    let Some((start, entries)) = header(path) else { return Ok((read_tensors(path)?, vec![])) };
    let skipped: Vec<String> = entries.keys().filter(|k| !keep(k)).cloned().collect();
    if skipped.is_empty() {
        return Ok((read_tensors(path)?, vec![]));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (name, info) in entries.iter().filter(|(k, _)| keep(k)) {
        let (kind, shape, (a, b)) = entry(path, name, info)?;
        let mut data = vec![0u8; (b - a) as usize];
        f.seek(SeekFrom::Start(start + a)).and_then(|_| f.read_exact(&mut data)).map_err(|e| Error::io(path, e))?;
        let t = Tensor::f_from_data_size(&data, &shape, kind).map_err(|e| Error::weights(path, format!("cannot be read as safetensors: {name}: {e}")))?;
        out.push((name.clone(), t));
    }
    Ok((out, skipped))
}

/// Tensor `name`'s bytes do not fit its header entry, or the file.
fn corrupt_entry(path: &Path, name: &str) -> Error {
    Error::weights(path, format!("is truncated or corrupt (tensor data does not match the header): {name}"))
}

/// A header entry read and checked: its element type, shape and byte range
/// (after the header), whose length the shape and type must fill exactly.
fn entry(path: &Path, name: &str, info: &serde_json::Value) -> Result<(Kind, Vec<i64>, (u64, u64))> {
    let corrupt = || corrupt_entry(path, name);
    let dtype = info["dtype"].as_str().unwrap_or("");
    let kind = kind_of(dtype).ok_or_else(|| Error::weights(path, format!("cannot be read as safetensors: {name} has an unsupported dtype `{dtype}`")))?;
    let shape: Option<Vec<i64>> = info["shape"].as_array().and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok())).collect());
    let (Some(shape), Some((a, b))) = (shape, data_offsets(info)) else { return Err(corrupt()) };
    let bytes = shape.iter().try_fold(kind.elt_size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
    if b < a || bytes != Some(b - a) {
        return Err(corrupt());
    }
    Ok((kind, shape, (a, b)))
}

/// A safetensors file read whole, each tensor a view of the bytes read
/// rather than a copy: loading a run's model (`predict`, `evaluate`,
/// `explain`) then copies each tensor once, from the file's bytes into the
/// network, where tch's reader copied it into a tensor of its own first
/// (~25 ms of a 59 MB model's ~90 ms load, measured 2026-12-07); the other
/// reads (`read_tensors`) copy the tensors out, to keep.
struct FileTensors {
    /// Declared before the bytes, so dropped before them: no view outlives what it views.
    tensors: BTreeMap<String, Tensor>,
    bytes: Vec<u8>,
}

impl FileTensors {
    fn read(path: &Path) -> Result<FileTensors> {
        check_weights_file(path)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = || Error::weights(path, "is not a safetensors file (bad header)");
        let len = bytes.get(..8).map(|n| u64::from_le_bytes(n.try_into().unwrap_or_default())).ok_or_else(bad)?;
        let start = usize::try_from(len).ok().and_then(|n| n.checked_add(8)).filter(|&s| s <= bytes.len()).ok_or_else(bad)?;
        let entries = entries_of(&bytes[8..start]).ok_or_else(bad)?;
        let mut tensors = BTreeMap::new();
        for (name, info) in &entries {
            let (kind, shape, (a, b)) = entry(path, name, info)?;
            let data = usize::try_from(a)
                .ok()
                .zip(usize::try_from(b).ok())
                .and_then(|(a, b)| bytes.get(start.checked_add(a)?..start.checked_add(b)?))
                .ok_or_else(|| corrupt_entry(path, name))?;
            let t = if (data.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes()) {
                // SAFETY: `data` lies in `bytes`, which is never written again and
                // outlives every view (`tensors` is dropped first, and views are
                // lent out by reference only); the pointer is aligned to the
                // element, and the shape fills exactly `data.len()` bytes (`entry`).
                unsafe { Tensor::f_from_blob(data.as_ptr(), &shape, &[], kind, tch::Device::Cpu) }
            } else {
                // A file whose tensors do not start on their element's boundary: copied.
                Tensor::f_from_data_size(data, &shape, kind)
            }
            .map_err(|e| Error::weights(path, format!("cannot be read as safetensors: {name}: {e}")))?;
            tensors.insert(name.clone(), t);
        }
        Ok(FileTensors { tensors, bytes })
    }

    /// Each tensor copied out of the bytes read, to keep after them.
    fn into_owned(self) -> Named {
        self.tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
    }
}

/// Whether a network with `head` takes the tensor `name` from a pretrained
/// file: the trunk, and fc6/fc7 for torchvision's own classifier head.
pub(crate) fn is_pretrained(head: HeadKind, name: &str) -> bool {
    name.starts_with("features.") || (head == HeadKind::Vgg && (name.starts_with("classifier.0.") || name.starts_with("classifier.3.")))
}

/// The bytes of a safetensors file's tensors that a network with `head`
/// reads from it (`load_pretrained`), from its header; None where it has none.
pub(crate) fn pretrained_bytes(path: &Path, head: HeadKind) -> Option<u64> {
    let (_, entries) = header(path)?;
    Some(entries.iter().filter(|(n, _)| is_pretrained(head, n)).filter_map(|(_, v)| data_offsets(v)).map(|(a, b)| b.saturating_sub(a)).sum())
}

/// A header entry's `data_offsets`: where its tensor's bytes start and end
/// after the header; None where they are not two numbers.
fn data_offsets(entry: &serde_json::Value) -> Option<(u64, u64)> {
    Some((entry["data_offsets"].get(0)?.as_u64()?, entry["data_offsets"].get(1)?.as_u64()?))
}

/// libtorch's element type for a safetensors dtype, as tch maps them.
fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "BOOL" => Kind::Bool,
        "U8" => Kind::Uint8,
        "I8" => Kind::Int8,
        "I16" => Kind::Int16,
        "I32" => Kind::Int,
        "I64" => Kind::Int64,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file, each a tensor of its own
/// (`FileTensors`, copied out), mapping failures to one sentence.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(FileTensors::read(path)?.into_owned())
}

/// `read_tensors` and the file's SHA-256, hashed from the bytes read (one
/// read of the file where a check of its checksum needs both).
pub(crate) fn read_tensors_sha256(path: &Path) -> Result<(Named, String)> {
    let read = FileTensors::read(path)?;
    let sum = crate::run::sha256_hex(&read.bytes);
    Ok((read.into_owned(), sum))
}

/// Refuses NaN or Inf anywhere in floating-point tensors.
pub(crate) fn check_finite<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<()> {
    let bad: Vec<String> = tensors
        .into_iter()
        .filter(|(_, t)| t.is_floating_point() && t.numel() > 0)
        // Minimum and maximum propagate NaN, and are infinite where a value is:
        // one pass without a mask (`isfinite`) or a float64 copy (a sum).
        .filter(|(_, t)| {
            let (lo, hi) = t.aminmax(None, false);
            ![lo, hi].iter().all(|v| f64::try_from(v).is_ok_and(f64::is_finite))
        })
        .map(|(n, _)| n.clone())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::weights(path, format!("NaN or Inf values in {}", short_list(&bad, 5))))
    }
}

pub(crate) fn detect_arch(names: &[&str]) -> FileArch {
    let has = |n: &str| names.contains(&n);
    if names.iter().any(|n| n.starts_with("head.")) {
        return FileArch::Checkpoint;
    }
    let bn = has("features.1.running_var") && has("features.3.weight");
    let plain = has("features.0.weight");
    let fc = has("classifier.0.weight") && has("classifier.3.weight") && has("classifier.6.weight");
    match (bn, plain && !bn, fc) {
        (true, _, true) => FileArch::Vgg16Bn,
        (true, _, false) => FileArch::TrunkBn,
        (false, true, true) => FileArch::Vgg16,
        (false, true, false) => FileArch::Trunk,
        _ => FileArch::Unknown,
    }
}

/// Folds each BN layer into the conv before it (exact in eval mode):
/// w' = w·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β; renames to plain VGG16 indices.
pub(crate) fn fold_bn(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut out = Vec::new();
    for spec in &CONVS {
        let i = spec.bn_idx;
        let mut take = |n: String| map.remove(&n).ok_or_else(|| Error::weights(path, format!("VGG16-BN file lacks {n}")));
        let w = take(format!("features.{i}.weight"))?.to_kind(Kind::Double);
        let b = take(format!("features.{i}.bias"))?.to_kind(Kind::Double);
        let g = take(format!("features.{}.weight", i + 1))?.to_kind(Kind::Double);
        let beta = take(format!("features.{}.bias", i + 1))?.to_kind(Kind::Double);
        let mu = take(format!("features.{}.running_mean", i + 1))?.to_kind(Kind::Double);
        let var = take(format!("features.{}.running_var", i + 1))?.to_kind(Kind::Double);
        map.remove(&format!("features.{}.num_batches_tracked", i + 1));
        let scale = &g / (var + BN_EPS).sqrt();
        let w2 = &w * scale.view([-1, 1, 1, 1]);
        let b2 = (b - mu) * &scale + beta;
        let p = spec.plain_idx;
        out.push((format!("features.{p}.weight"), w2.to_kind(Kind::Float)));
        out.push((format!("features.{p}.bias"), b2.to_kind(Kind::Float)));
    }
    out.extend(map);
    Ok(out)
}

/// Loads pretrained weights into `model`'s trunk (and fc6/fc7 for the `vgg`
/// head). Every expected tensor must be present with the right shape; extra
/// ones are reported and ignored; the new head keeps its initialisation.
pub fn load_pretrained(model: &mut Vgg16, path: &Path) -> Result<LoadReport> {
    let head = model.cfg.head;
    let wanted = |n: &str| is_pretrained(head, n);
    // What the network takes from the file is all that is read (and checked for NaN): a new head leaves
    // torchvision's classifier unread.
    let (mut tensors, unread) = read_tensors_where(path, wanted)?;
    check_finite(path, tensors.iter().map(|(n, t)| (n, t)))?;
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).chain(unread.iter().map(String::as_str)).collect();
    let arch = detect_arch(&names);
    let mut report = LoadReport::default();
    let model_bn = model.cfg.bn_mode.has_bn();
    match arch {
        FileArch::Vgg16Bn | FileArch::TrunkBn if !model_bn => {
            tensors = fold_bn(path, tensors)?;
            report.folded_bn = true;
        }
        FileArch::Vgg16 | FileArch::Trunk if model_bn => {
            return Err(Error::weights(
                path,
                format!("holds {}, but --bn {:?} needs VGG16-BN weights (use --bn drop, or weights/vgg16_bn.safetensors)", arch.describe(), model.cfg.bn_mode)
                    .to_lowercase(),
            ));
        }
        FileArch::Unknown => {
            return Err(Error::weights(path, "is not a VGG16 / VGG16-BN weights file (no features.0.weight … layout)"));
        }
        _ => {}
    }
    if model.cfg.head == HeadKind::Vgg && matches!(arch, FileArch::Trunk | FileArch::TrunkBn) {
        return Err(Error::weights(path, "holds a conv trunk only (no classifier.0/classifier.3), which --head vgg needs: use --head bn or --head linear"));
    }
    let targets: BTreeMap<String, Tensor> = model.named_tensors().into_iter().filter(|(n, _)| wanted(n)).collect();
    let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    copy_checked(path, &targets, &file, &mut report)?;
    report.ignored.extend(unread);
    // The training photos' feature statistics are no layer: a run sets them.
    report.new = model.named_tensors().into_iter().map(|(n, _)| n).filter(|n| !wanted(n) && n != crate::model::FEATURE_STATS).collect();
    Ok(report)
}

/// Loads a vggft checkpoint: every tensor of the network must be there.
pub fn load_checkpoint(model: &mut Vgg16, path: &Path) -> Result<LoadReport> {
    let read = FileTensors::read(path)?;
    let file = &read.tensors;
    check_finite(path, file)?;
    let mut targets: BTreeMap<String, Tensor> = model.named_tensors().into_iter().collect();
    // Runs saved before vggft kept them load without them (they stay zero: `Vgg16::person_prior`,
    // `Vgg16::person_feature_distance`).
    for optional in [crate::model::PERSON_VAR, crate::model::FEATURE_STATS] {
        if !file.contains_key(optional) {
            targets.remove(optional);
        }
    }
    let mut report = LoadReport { sha256: crate::run::sha256_hex(&read.bytes), ..LoadReport::default() };
    copy_checked(path, &targets, file, &mut report)?;
    Ok(report)
}

fn copy_checked(path: &Path, targets: &BTreeMap<String, Tensor>, file: &BTreeMap<String, Tensor>, report: &mut LoadReport) -> Result<()> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (name, dst) in targets {
        match file.get(name) {
            None => missing.push(name.clone()),
            Some(src) if src.size() != dst.size() => wrong.push(format!("{name} (file {:?}, expected {:?})", src.size(), dst.size())),
            Some(src) if dst.is_floating_point() && !src.is_floating_point() => {
                wrong.push(format!("{name} (file {:?} values, expected floating point)", src.kind()))
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !wrong.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}", short_list(&missing, 6)));
        }
        if !wrong.is_empty() {
            parts.push(format!("wrong shape {}", short_list(&wrong, 4)));
        }
        return Err(Error::weights(path, format!("does not fit the network: {}", parts.join("; "))));
    }
    tch::no_grad(|| {
        for (name, dst) in targets {
            let src = &file[name];
            let mut d = dst.shallow_clone();
            d.copy_(&src.to_kind(d.kind()).to_device(d.device()));
        }
    });
    report.loaded = targets.len();
    report.ignored = file.keys().filter(|n| !targets.contains_key(*n)).cloned().collect();
    Ok(())
}

/// The tensor names in a safetensors file's header (read alone, not the
/// data), or None where the file is not safetensors.
pub(crate) fn header_names(path: &Path) -> Option<Vec<String>> {
    Some(header(path)?.1.keys().cloned().collect())
}

/// A safetensors file's header: where its tensor data starts, and each
/// tensor's entry (`dtype`, `shape`, `data_offsets`) by name; None where the
/// file is not safetensors.
fn header(path: &Path) -> Option<(u64, serde_json::Map<String, serde_json::Value>)> {
    let mut f = std::fs::File::open(path).ok().filter(|f| f.metadata().is_ok_and(|m| m.is_file()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // The format caps its header at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    Some((8 + len, entries_of(&header)?))
}

/// A safetensors header's JSON: each tensor's entry by name (the optional
/// `__metadata__` left out); None where it is not a JSON object.
fn entries_of(header: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(mut entries) = serde_json::from_slice(header).ok()? else { return None };
    entries.remove("__metadata__");
    Some(entries)
}

/// Saves named tensors as safetensors, atomically (temp file + rename).
pub fn save_atomic(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = named.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    fsutil::write_atomic_with(path, |tmp| {
        Tensor::write_safetensors(&contiguous, tmp).map_err(|e| Error::file(path, format!("cannot write: {}", io_reason(&e.to_string()))))
    })
}

/// The operating system's words from tch's `IoError(Os { …, message: "…" })`
/// (e.g. "No space left on device"), else the message without the temporary path.
fn io_reason(msg: &str) -> String {
    if let Some(m) = msg.split("message: \"").nth(1).and_then(|r| r.split('"').next()) {
        return m.to_string();
    }
    msg.rsplit(": ").next().unwrap_or(msg).to_string()
}

/// Hex SHA-256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `vggft weights inspect`: tensors, architecture and SHA-256 of a file.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub sha256: String,
    pub arch: FileArch,
    pub description: String,
    pub tensors: Vec<(String, Vec<i64>, String)>,
    pub parameters: i64,
}

/// From the file's header alone (each entry checked against the file's
/// size and its own shape), not its tensors: torchvision's VGG16 is 528 MB.
pub fn inspect(path: &Path) -> Result<Inspection> {
    check_weights_file(path)?;
    let (_, entries) = header(path).ok_or_else(|| Error::weights(path, "is not a safetensors file (bad header)"))?;
    let mut list = Vec::with_capacity(entries.len());
    for (name, info) in &entries {
        let (kind, shape, _) = entry(path, name, info)?;
        list.push((name.clone(), shape, format!("{kind:?}")));
    }
    let names: Vec<&str> = list.iter().map(|(n, _, _)| n.as_str()).collect();
    let arch = detect_arch(&names);
    list.sort_by_key(|a| natural_key(&a.0));
    let parameters = list.iter().map(|(_, shape, _)| shape.iter().product::<i64>()).sum();
    Ok(Inspection { path: path.display().to_string(), sha256: sha256_file(path)?, arch, description: arch.describe().to_string(), tensors: list, parameters })
}

/// Sorts `features.10` after `features.9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.').map(|p| p.parse::<u64>().map(|n| (String::new(), n)).unwrap_or((p.to_string(), 0))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a network reads of a file: the trunk for a new head, fc6 and fc7 as well for torchvision's.
    #[test]
    fn pretrained_bytes_count_what_the_head_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.safetensors");
        let t = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
        let named: Vec<(String, Tensor)> =
            [("features.0.weight", 10), ("features.0.bias", 2), ("classifier.0.weight", 100), ("classifier.3.bias", 5), ("classifier.6.weight", 7)]
                .into_iter()
                .map(|(n, k)| (n.to_string(), t(k)))
                .collect();
        save_atomic(&named, &p).unwrap();
        assert_eq!(pretrained_bytes(&p, HeadKind::Bn), Some(4 * 12));
        assert_eq!(pretrained_bytes(&p, HeadKind::Vgg), Some(4 * 117));
        assert_eq!(pretrained_bytes(&d.path().join("none"), HeadKind::Bn), None);
    }

    /// A safetensors file of the given tensors (F32) whose tensor data starts
    /// `pad` bytes after a multiple of 8 (the header padded with spaces).
    fn safetensors_with_pad(tensors: &[(&str, Vec<f32>)], pad: usize) -> Vec<u8> {
        let mut at = 0;
        let entries: Vec<String> = tensors
            .iter()
            .map(|(n, v)| {
                at += 4 * v.len();
                format!(r#""{n}":{{"dtype":"F32","shape":[{}],"data_offsets":[{},{at}]}}"#, v.len(), at - 4 * v.len())
            })
            .collect();
        let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
        header.resize(header.len().next_multiple_of(8) + pad, b' ');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(tensors.iter().flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes())));
        file
    }

    /// A model's file is read as views of its bytes where its tensors start on
    /// their element's boundary and copied where not: the same values either
    /// way, and the same refusals (NaN, data cut short) as tch's reader.
    #[test]
    fn a_models_file_reads_the_same_aligned_or_not() {
        let d = tempfile::tempdir().unwrap();
        let values = [("a", vec![1.5f32, -2.0, 3.25]), ("b", vec![0.5f32; 5])];
        for pad in [0, 1, 2, 3] {
            let p = d.path().join(format!("pad{pad}.safetensors"));
            std::fs::write(&p, safetensors_with_pad(&values, pad)).unwrap();
            let read = FileTensors::read(&p).unwrap();
            assert_eq!(read.tensors.len(), 2);
            for (n, v) in &values {
                assert!(read.tensors[*n].equal(&Tensor::from_slice(v)), "pad {pad}: {n}");
            }
            let data_start = 8 + u64::from_le_bytes(read.bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(data_start % 8, pad);
            assert_eq!(
                data_start % 4 == 0,
                read.tensors["a"].data_ptr() as usize == read.bytes.as_ptr() as usize + data_start,
                "pad {pad}: a view where aligned, a copy where not"
            );
            check_finite(&p, &read.tensors).unwrap();
        }
        let p = d.path().join("nan.safetensors");
        std::fs::write(&p, safetensors_with_pad(&[("a", vec![1.0]), ("b", vec![2.0, f32::NAN, 3.0]), ("c", vec![f32::NEG_INFINITY])], 1)).unwrap();
        let e = check_finite(&p, &FileTensors::read(&p).unwrap().tensors).unwrap_err().to_string();
        assert!(e.contains("nan.safetensors") && e.contains("NaN or Inf values in b, c"), "{e}");
        let mut cut = safetensors_with_pad(&values, 0);
        cut.truncate(cut.len() - 1);
        let p = d.path().join("cut.safetensors");
        std::fs::write(&p, cut).unwrap();
        let e = FileTensors::read(&p).err().unwrap().to_string();
        assert!(e.contains("cut.safetensors: is truncated or corrupt"), "{e}");
        // `weights inspect` reads the header alone, and checks each entry as loading does.
        let p = d.path().join("ok.safetensors");
        std::fs::write(&p, safetensors_with_pad(&values, 0)).unwrap();
        let i = inspect(&p).unwrap();
        assert_eq!((i.tensors.len(), i.parameters, i.tensors[0].1.clone(), i.tensors[0].2.as_str()), (2, 8, vec![3], "Float"));
        let header = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
        let lying: Vec<u8> = (header.len() as u64).to_le_bytes().into_iter().chain(header.iter().copied()).chain([0u8; 12]).collect();
        std::fs::write(&p, lying).unwrap();
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("ok.safetensors: is truncated or corrupt (tensor data does not match the header): a"), "{e}");
    }
}

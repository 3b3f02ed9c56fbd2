//! The model: loading (success and every failure message), freezing, heads,
//! BN modes (fold, recalibration), parameter groups.

use tch::{Device, Kind, Tensor};
use vggft::model::weights::{self, FileArch};
use vggft::model::{Block, BnMode, HeadKind, Precision, Vgg16};
use vggft::train::optim::{Group, OptimKind, Optimizer};

use crate::common::*;

fn input(n: i64, size: i64) -> Tensor {
    Tensor::randn([n, 3, size, size], (Kind::Float, Device::Cpu))
}

#[test]
fn loads_torchvision_layout_and_reports_the_rest() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16.safetensors");
    let file = torchvision_like(&p, false, 1);
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Bn, 2), Device::Cpu).unwrap();
    let rep = weights::load_pretrained(&mut m, &p).unwrap();
    assert_eq!(rep.loaded, 26, "13 convs × (weight, bias)");
    assert!(rep.ignored.iter().any(|n| n == "classifier.6.weight"), "unused classifier reported: {:?}", rep.ignored);
    assert!(rep.new.iter().all(|n| n.starts_with("head.")), "only the head is new: {:?}", rep.new);
    let vars = m.vs.variables();
    for (n, t) in &file {
        if n.starts_with("features.") {
            assert_eq!(max_abs_diff(&vars[n], t), 0.0, "{n} copied exactly");
        }
    }
}

#[test]
fn vgg_head_keeps_fc6_fc7_and_replaces_fc8() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16.safetensors");
    let file: std::collections::BTreeMap<String, Tensor> = torchvision_like(&p, false, 2).into_iter().collect();
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Vgg, 2), Device::Cpu).unwrap();
    let rep = weights::load_pretrained(&mut m, &p).unwrap();
    assert_eq!(rep.loaded, 30);
    assert_eq!(rep.new, vec!["classifier.6.bias".to_string(), "classifier.6.weight".to_string()]);
    assert_eq!(max_abs_diff(&m.vs.variables()["classifier.3.weight"], &file["classifier.3.weight"]), 0.0);
    let y = m.forward_t(&input(2, 32), false);
    assert_eq!(y.size(), vec![2, 2]);
}

#[test]
fn trunk_only_file_fits_bn_head_but_not_vgg_head() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("trunk.safetensors");
    trunk_only(&p, 3);
    let mut ok = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Linear, 3), Device::Cpu).unwrap();
    weights::load_pretrained(&mut ok, &p).unwrap();
    let mut vgg = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Vgg, 2), Device::Cpu).unwrap();
    let e = weights::load_pretrained(&mut vgg, &p).unwrap_err().to_string();
    assert!(e.contains("trunk.safetensors") && e.contains("--head bn"), "{e}");
}

#[test]
fn wrong_shapes_missing_keys_and_bad_files_are_named() {
    let _rng = torch_rng();
    let d = tmp();
    // Full-width model against a narrow file: every conv has the wrong shape.
    let p = d.path().join("narrow.safetensors");
    torchvision_like(&p, false, 4);
    let mut full = Vgg16::new(&vggft::model::ModelConfig::new(BnMode::Drop, HeadKind::Linear, 2), Device::Cpu).unwrap();
    let e = weights::load_pretrained(&mut full, &p).unwrap_err().to_string();
    assert!(
        e.contains("narrow.safetensors") && e.contains("wrong shape") && e.contains("features.0.weight (file [4, 3, 3, 3], expected [64, 3, 3, 3])"),
        "{e}"
    );

    // Missing keys.
    let named: Vec<(String, Tensor)> =
        torchvision_like(&p, false, 4).into_iter().filter(|(n, _)| n != "features.28.weight" && n != "features.5.bias").collect();
    let q = d.path().join("partial.safetensors");
    weights::save_atomic(&named, &q).unwrap();
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Bn, 2), Device::Cpu).unwrap();
    let e = weights::load_pretrained(&mut m, &q).unwrap_err().to_string();
    assert!(e.contains("missing features.28.weight, features.5.bias") || e.contains("missing features.28.weight"), "{e}");

    // Truncated, empty, not safetensors, NaN.
    let bytes = std::fs::read(&p).unwrap();
    let t = d.path().join("truncated.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = weights::load_pretrained(&mut m, &t).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors") && e.contains("truncated or corrupt"), "{e}");
    let z = d.path().join("empty.safetensors");
    std::fs::write(&z, b"").unwrap();
    assert!(weights::load_pretrained(&mut m, &z).unwrap_err().to_string().contains("empty (0 bytes)"));
    // A device is not read (/dev/zero has no end).
    let e = weights::load_pretrained(&mut m, std::path::Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(e.contains("/dev/zero: is not a regular file"), "{e}");
    let txt = d.path().join("text.safetensors");
    std::fs::write(&txt, b"hello, this is not a weights file at all").unwrap();
    let e = weights::load_pretrained(&mut m, &txt).unwrap_err().to_string();
    assert!(e.contains("text.safetensors") && e.contains("safetensors"), "{e}");
    // The same problems are found from the header alone, before a run loads its photos.
    for (f, says) in [(&t, "is truncated or corrupt (its header lists"), (&z, "is empty (0 bytes)"), (&txt, "is not a safetensors file (bad header)")] {
        let e = weights::header_problem(f).unwrap();
        assert!(e.starts_with(says), "{}: {e}", f.display());
    }
    assert_eq!(weights::header_problem(&p), None);
    // A safetensors header of 640 bytes starts 80 02 00 00 …, as a pickle does: still read as safetensors.
    let mut header = br#"{"features.0.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
    header.resize(640, b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(&file[..2], b"\x80\x02");
    file.extend(&header);
    file.extend(1.5f32.to_le_bytes());
    let padded = d.path().join("padded.safetensors");
    std::fs::write(&padded, &file).unwrap();
    assert_eq!(weights::header_problem(&padded), None);
    let read = weights::read_tensors(&padded).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(f64::try_from(&read[0].1.sum(Kind::Double)).unwrap(), 1.5);
    // torchvision's own download (a torch.save zip, or an older pickle): how to convert it.
    for (name, head) in [("vgg16-397923af.pth", &b"PK\x03\x04\x00\x00\x08\x08archive/data.pkl"[..]), ("old.pth", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8")] {
        let pth = d.path().join(name);
        std::fs::write(&pth, head).unwrap();
        let e = weights::load_pretrained(&mut m, &pth).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}: is a PyTorch checkpoint")) && e.contains("convert it with `make fetch-weights FROM=/"), "{e}");
    }
    // (In the trunk, which every head reads: `a_new_head_reads_only_the_trunk_of_a_torchvision_file`.)
    let nan = torchvision_like(&p, false, 4);
    let conv = nan.iter().position(|(n, _)| n.starts_with("features.")).unwrap();
    let _ = tch::no_grad(|| nan[conv].1.get(0).fill_(f64::NAN));
    let nanp = d.path().join("nan.safetensors");
    weights::save_atomic(&nan, &nanp).unwrap();
    let e = weights::load_pretrained(&mut m, &nanp).unwrap_err().to_string();
    assert!(e.contains("NaN or Inf") && e.contains(&nan[conv].0), "{e}");
    // Missing file.
    let e = weights::load_pretrained(&mut m, &d.path().join("nope.safetensors")).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
}

/// A new head reads only the trunk of a torchvision file (its 411 MB fc6
/// would be read for every fold of a cv): the classifier is neither read nor
/// checked — a NaN there is no error — and is named as ignored; torchvision's
/// own head reads fc6 and fc7, and refuses the NaN.
#[test]
fn a_new_head_reads_only_the_trunk_of_a_torchvision_file() {
    let d = tmp();
    let p = d.path().join("tv.safetensors");
    let named = torchvision_like(&p, false, 6);
    let fc6 = named.iter().position(|(n, _)| n == "classifier.0.weight").unwrap();
    let _ = tch::no_grad(|| named[fc6].1.get(0).fill_(f64::NAN));
    weights::save_atomic(&named, &p).unwrap();
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Bn, 2), Device::Cpu).unwrap();
    let rep = weights::load_pretrained(&mut m, &p).unwrap();
    assert!(rep.ignored.iter().any(|n| n == "classifier.0.weight") && rep.ignored.iter().any(|n| n == "classifier.6.bias"), "{:?}", rep.ignored);
    let file: std::collections::BTreeMap<String, Tensor> = weights::read_tensors(&p).unwrap().into_iter().collect();
    let trunk: Vec<(String, Tensor)> = m.named_tensors().into_iter().filter(|(n, _)| n.starts_with("features.")).collect();
    assert_eq!(trunk.len(), 26);
    for (n, t) in &trunk {
        assert_eq!(max_abs_diff(t, &file[n]), 0.0, "{n} as the whole file's read gives it");
    }
    let mut v = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Vgg, 10), Device::Cpu).unwrap();
    let e = weights::load_pretrained(&mut v, &p).unwrap_err().to_string();
    assert!(e.contains("NaN or Inf") && e.contains("classifier.0.weight"), "{e}");
    // A tensor read alone whose bytes do not fit its dtype and shape is named.
    let header =
        br#"{"features.0.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,4]},"classifier.6.bias":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 8]);
    let odd = d.path().join("odd.safetensors");
    std::fs::write(&odd, bytes).unwrap();
    let e = weights::load_pretrained(&mut m, &odd).unwrap_err().to_string();
    assert!(e.contains("odd.safetensors: is truncated or corrupt (tensor data does not match the header): features.0.bias"), "{e}");
}

#[test]
fn bn_modes_need_bn_weights() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("plain.safetensors");
    torchvision_like(&p, false, 5);
    let mut m = Vgg16::new(&small_cfg(BnMode::Recalibrate, HeadKind::Bn, 2), Device::Cpu).unwrap();
    let e = weights::load_pretrained(&mut m, &p).unwrap_err().to_string();
    assert!(e.contains("needs vgg16-bn weights"), "{e}");
}

#[test]
fn detects_architectures() {
    let _rng = torch_rng();
    let d = tmp();
    let (a, b, c) = (d.path().join("a.safetensors"), d.path().join("b.safetensors"), d.path().join("c.safetensors"));
    torchvision_like(&a, false, 6);
    torchvision_like(&b, true, 6);
    trunk_only(&c, 6);
    assert_eq!(weights::inspect(&a).unwrap().arch, FileArch::Vgg16);
    assert_eq!(weights::inspect(&b).unwrap().arch, FileArch::Vgg16Bn);
    assert_eq!(weights::inspect(&c).unwrap().arch, FileArch::Trunk);
    let i = weights::inspect(&a).unwrap();
    assert_eq!(i.sha256.len(), 64);
    let pos = |n: &str| i.tensors.iter().position(|t| t.0 == n).unwrap();
    assert!(pos("features.2.bias") < pos("features.10.bias"), "natural order");
}

#[test]
fn folding_bn_into_convs_matches_the_bn_net_in_eval_mode() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16_bn.safetensors");
    torchvision_like(&p, true, 7);
    let mut bn = Vgg16::new(&small_cfg(BnMode::Frozen, HeadKind::Vgg, 10), Device::Cpu).unwrap();
    let rep = weights::load_checkpoint(&mut bn, &p).unwrap();
    assert_eq!(rep.ignored.len(), 13, "num_batches_tracked ignored: {:?}", rep.ignored);
    let mut plain = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Vgg, 10), Device::Cpu).unwrap();
    let rep = weights::load_pretrained(&mut plain, &p).unwrap();
    assert!(rep.folded_bn);
    let x = input(3, 64);
    let a = tch::no_grad(|| bn.features(&x, Block::Conv1, Block::Head, false));
    let b = tch::no_grad(|| plain.features(&x, Block::Conv1, Block::Head, false));
    let diff = max_abs_diff(&a, &b);
    let scale = f64::try_from(a.abs().max()).unwrap();
    assert!(scale > 1e-3, "non-trivial activations");
    assert!(diff <= 1e-4, "folded net differs by {diff}");
}

#[test]
fn recalibration_normalises_every_bn_input() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16_bn.safetensors");
    torchvision_like(&p, true, 8);
    let mut m = Vgg16::new(&small_cfg(BnMode::Recalibrate, HeadKind::Bn, 2), Device::Cpu).unwrap();
    weights::load_pretrained(&mut m, &p).unwrap();
    // "Training images": shifted and scaled away from the ImageNet statistics.
    let imgs: Vec<Tensor> = (0..3).map(|_| Tensor::rand([8, 3, 64, 64], (Kind::Float, Device::Cpu)) * 3.0 - 0.5).collect();
    m.recalibrate(&imgs).unwrap();
    // Recomputing blocks from their input (two blocks: `recalibrate`'s way to
    // save memory) gives the same statistics as keeping every layer's input.
    for recompute in [0, 5] {
        let mut r = Vgg16::new(&small_cfg(BnMode::Recalibrate, HeadKind::Bn, 2), Device::Cpu).unwrap();
        weights::load_pretrained(&mut r, &p).unwrap();
        r.recalibrate_with(&imgs, recompute).unwrap();
        for (l, ((m0, v0), (m1, v1))) in m.bn_layers().iter().zip(r.bn_layers()).enumerate() {
            let scale = f64::try_from(v0.abs().max()).unwrap().max(1e-6);
            assert!(max_abs_diff(m0, &m1) <= 1e-4 * scale.sqrt().max(1.0), "recompute {recompute}, layer {l}: means differ");
            assert!(max_abs_diff(v0, &v1) <= 1e-4 * scale, "recompute {recompute}, layer {l}: variances differ");
        }
    }
    let all = Tensor::cat(&imgs, 0);
    let inputs = m.bn_inputs(&all);
    let stats = m.bn_layers();
    assert_eq!(inputs.len(), 13);
    for (l, (x, (rm, rv))) in inputs.iter().zip(stats).enumerate() {
        let xn = (x - rm.view([1, -1, 1, 1])) / (rv.view([1, -1, 1, 1]) + vggft::model::BN_EPS).sqrt();
        let dims = [0i64, 2, 3];
        let mean = xn.mean_dim(dims.as_slice(), false, Kind::Double);
        let var = xn.var_correction(dims.as_slice(), 0, false).to_kind(Kind::Double);
        let live = rv.gt(1e-3);
        let mean_err = f64::try_from(mean.abs().max()).unwrap();
        let var_err = f64::try_from((var - 1.0).abs().masked_select(&live).max()).unwrap();
        assert!(mean_err < 1e-3, "layer {l}: mean off by {mean_err}");
        assert!(var_err < 1e-2, "layer {l}: variance off by {var_err}");
    }
}

#[test]
fn recalibration_refuses_a_plain_model() {
    let _rng = torch_rng();
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Bn, 2), Device::Cpu).unwrap();
    assert!(m.recalibrate(&[input(2, 32)]).is_err());
}

#[test]
fn freezing_keeps_frozen_tensors_bit_identical() {
    let _rng = torch_rng();
    tch::manual_seed(9);
    let mut m = Vgg16::new(&small_cfg(BnMode::Frozen, HeadKind::Bn, 2), Device::Cpu).unwrap();
    m.set_trainable_from(Block::Conv5);
    let groups = m.param_groups();
    assert!(groups.iter().all(|g| g.block >= Block::Conv5), "only conv5 and head in the optimizer");
    assert!(groups.iter().any(|g| g.block == Block::Conv5));
    let no_decay: Vec<&String> = groups.iter().filter(|g| !g.decay).flat_map(|g| g.params.iter().map(|(n, _)| n)).collect();
    assert!(no_decay.iter().all(|n| n.ends_with("bias") || n.contains("norm") || !n.contains("features.37.weight")));
    assert!(no_decay.iter().any(|n| n.as_str() == "features.38.weight"), "BN γ of conv5 has no decay: {no_decay:?}");
    let before = m.named_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect::<Vec<_>>();
    let opt_groups = groups.into_iter().map(|g| Group { params: g.params, lr_mult: 1.0, weight_decay: 0.01 }).collect();
    let mut opt = Optimizer::new(OptimKind::Sgd, opt_groups, 0.9);
    let y = m.forward_t(&input(4, 32), true);
    let loss = y.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1, 0, 1]));
    opt.zero_grad();
    loss.backward();
    opt.step(0.1);
    let after = m.vs.variables();
    for (n, t) in before {
        let changed = max_abs_diff(&after[&n], &t) > 0.0;
        let block = m.block_of_name(&n).unwrap();
        if Vgg16::is_buffer(&n) && block < Block::Head {
            assert!(!changed, "{n}: trunk BN statistics stay in frozen mode");
        } else if block < Block::Conv5 {
            assert!(!changed, "{n} is frozen but changed");
        } else if n.ends_with("weight") && t.dim() > 1 {
            assert!(changed, "{n} is trainable but did not change");
        }
    }
}

#[test]
fn freeze_points_head_and_conv1() {
    let _rng = torch_rng();
    let mut m = Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Linear, 2), Device::Cpu).unwrap();
    m.set_trainable_from(Block::Head);
    assert!(m.param_groups().iter().all(|g| g.block == Block::Head));
    m.set_trainable_from(Block::Conv1);
    let blocks: std::collections::BTreeSet<Block> = m.param_groups().iter().map(|g| g.block).collect();
    assert_eq!(blocks.len(), 6, "every block trainable");
}

#[test]
fn bn_train_mode_updates_statistics_and_frozen_does_not() {
    let _rng = torch_rng();
    for (mode, should_change) in [(BnMode::Train, true), (BnMode::Frozen, false)] {
        let m = Vgg16::new(&small_cfg(mode, HeadKind::Bn, 2), Device::Cpu).unwrap();
        let before = m.bn_layers()[0].0.copy();
        let _ = m.forward_t(&(input(4, 32) + 2.0), true);
        let changed = max_abs_diff(&m.bn_layers()[0].0, &before) > 0.0;
        assert_eq!(changed, should_change, "{mode:?}");
    }
}

#[test]
fn precise_bn_sets_the_population_statistics_in_one_streamed_pass() {
    let _rng = torch_rng();
    tch::manual_seed(3);
    let mut m = Vgg16::new(&small_cfg(BnMode::Train, HeadKind::Linear, 2), Device::Cpu).unwrap();
    let x = input(12, 32) * 1.7 + 0.4;
    // Stale statistics first, as after training on small batches.
    for _ in 0..3 {
        let _ = tch::no_grad(|| m.forward_t(&(input(3, 32) - 1.0), true));
    }
    // In chunks: the first layer's statistics are exactly its input's over all 12.
    m.precise_bn(&[x.narrow(0, 0, 5), x.narrow(0, 5, 7)]).unwrap();
    let conv1 = {
        let s = m.named_tensors();
        let w = s.iter().find(|(n, _)| n == "features.0.weight").unwrap().1.shallow_clone();
        let b = s.iter().find(|(n, _)| n == "features.0.bias").unwrap().1.shallow_clone();
        tch::no_grad(|| x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)).to_kind(Kind::Double)
    };
    let mean = conv1.mean_dim([0, 2, 3].as_slice(), false, Kind::Double);
    let var = conv1.var_dim([0, 2, 3].as_slice(), false, false);
    let (rm, rv) = &m.bn_layers()[0];
    assert!(
        max_abs_diff(&rm.to_kind(Kind::Double), &mean) < 1e-5 && max_abs_diff(&rv.to_kind(Kind::Double), &var) < 1e-4,
        "first layer: population mean and biased variance"
    );
    // In one chunk: eval mode is then train mode on that whole batch, at every layer.
    m.precise_bn(&[x.shallow_clone()]).unwrap();
    let eval = tch::no_grad(|| m.features(&x, Block::Conv1, Block::Head, false));
    let batch = tch::no_grad(|| m.features(&x, Block::Conv1, Block::Head, true));
    let rel = max_abs_diff(&eval, &batch) / f64::try_from(batch.abs().max()).unwrap();
    assert!(rel < 1e-4, "eval-mode output differs from the batch's by {rel} of its range");
    assert!(Vgg16::new(&small_cfg(BnMode::Drop, HeadKind::Linear, 2), Device::Cpu).unwrap().precise_bn(&[x]).is_err(), "no BN, no statistics");
}

#[test]
fn other_input_sizes_and_heads_work() {
    let _rng = torch_rng();
    for head in [HeadKind::Linear, HeadKind::Bn, HeadKind::Vgg] {
        let m = Vgg16::new(&small_cfg(BnMode::Drop, head, 7), Device::Cpu).unwrap();
        for s in [32, 48, 96] {
            let y = tch::no_grad(|| m.forward_t(&input(2, s), false));
            assert_eq!(y.size(), vec![2, 7], "{head:?} at {s}px");
        }
    }
}

#[test]
fn multi_layer_features_pool_every_named_block() {
    let _rng = torch_rng();
    for head in [HeadKind::Linear, HeadKind::Bn] {
        let mut cfg = small_cfg(BnMode::Drop, head, 3);
        cfg.features = vec![Block::Conv4, Block::Conv5];
        let m = Vgg16::new(&cfg, Device::Cpu).unwrap();
        // conv4 and conv5 outputs, 512/16 channels each: the bn head normalises avg+max of both.
        assert_eq!(cfg.pooled_width(), if head == HeadKind::Bn { 128 } else { 64 });
        if head == HeadKind::Bn {
            assert_eq!(m.vs.variables()["head.norm.weight"].size(), vec![128]);
        }
        assert_eq!(m.vs.variables()["head.fc.weight"].size()[1], if head == HeadKind::Bn { 128 } else { 64 });
        let x = input(2, 64);
        let whole = tch::no_grad(|| m.forward_t(&x, false));
        // A head-level cache holds the pooled conv4 and conv5 features; the head alone finishes from them.
        let pooled = tch::no_grad(|| m.prefix(&x, Block::Conv1, Block::Head));
        assert_eq!(pooled.size(), vec![2, if head == HeadKind::Bn { 128 } else { 64 }]);
        assert!(max_abs_diff(&whole, &tch::no_grad(|| m.forward_from(&pooled, Block::Head, false))) < 1e-5, "{head:?}");
        // From the cached conv4 output, the head still sees conv4's pooled output.
        let pool4 = tch::no_grad(|| m.features(&x, Block::Conv1, Block::Conv5, false));
        let from_cache = tch::no_grad(|| m.forward_from(&pool4, Block::Conv5, false));
        assert!(max_abs_diff(&whole, &from_cache) < 1e-5, "{head:?}");
        if head == HeadKind::Linear {
            // By hand: the linear head on [avg(conv4 output), avg(conv5 output)].
            let pool5 = tch::no_grad(|| m.features(&x, Block::Conv1, Block::Head, false));
            let f = Tensor::cat(&[pool4.mean_dim(&[2i64, 3][..], false, Kind::Float), pool5.mean_dim(&[2i64, 3][..], false, Kind::Float)], 1);
            let v = m.vs.variables();
            let expected = f.matmul(&v["head.fc.weight"].tr()) + &v["head.fc.bias"];
            assert!(max_abs_diff(&whole, &expected) < 1e-5, "conv4 and conv5 pooled, in that order");
        }
    }
    let mut bad = small_cfg(BnMode::Drop, HeadKind::Vgg, 3);
    bad.features = vec![Block::Conv4, Block::Conv5];
    assert!(Vgg16::new(&bad, Device::Cpu).is_err(), "the vgg head takes conv5 alone");
    bad.head = HeadKind::Bn;
    bad.features = vec![Block::Conv5, Block::Conv4];
    assert!(Vgg16::new(&bad, Device::Cpu).is_err(), "features must ascend");
}

#[test]
fn batch_of_one_is_merged_not_crashed() {
    let _rng = torch_rng();
    let b = vggft::train::batches(&(0..17).collect::<Vec<_>>(), 8);
    assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![8, 9]);
    let b = vggft::train::batches(&(0..16).collect::<Vec<_>>(), 8);
    assert_eq!(b.len(), 2);
}

#[test]
fn bf16_convolutions_stay_close_to_f32_and_train_f32_weights() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16_bn.safetensors");
    torchvision_like(&p, true, 5);
    for bn in [BnMode::Drop, BnMode::Frozen] {
        let mut net = Vgg16::new(&small_cfg(bn, HeadKind::Bn, 2), Device::Cpu).unwrap();
        weights::load_pretrained(&mut net, &p).unwrap();
        net.set_trainable_from(Block::Conv5);
        let x = input(4, 64);
        let grads = |net: &Vgg16| {
            for (_, t) in net.vs.variables() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let f = net.features(&x, Block::Conv1, Block::Head, false);
            let loss = net.head_forward(std::slice::from_ref(&f), false).square().sum(Kind::Float);
            loss.backward();
            let w = net.vs.variables().into_iter().find(|(n, _)| n == &format!("features.{}.weight", if bn.has_bn() { 37 } else { 26 })).unwrap().1;
            (f.detach(), w.grad().copy(), w.kind())
        };
        let (f32_out, f32_grad, _) = grads(&net);
        net.cfg.precision = Precision::Bf16;
        let (bf_out, bf_grad, kind) = grads(&net);
        assert_eq!(bf_out.kind(), Kind::Float, "features come back as float32");
        assert_eq!(kind, Kind::Float, "master weights stay float32");
        let rel = max_abs_diff(&f32_out, &bf_out) / f64::try_from(f32_out.abs().max()).unwrap();
        assert!(rel > 0.0 && rel < 0.05, "{bn:?}: bf16 features differ from f32 by {rel} of their range");
        let cos = f64::try_from((&f32_grad * &bf_grad).sum(Kind::Double) / (f32_grad.norm() * bf_grad.norm())).unwrap();
        assert!(cos > 0.99, "{bn:?}: bf16 gradient direction (cosine {cos}) differs from f32");
    }
}

#[test]
fn forward_flops_match_vgg16s_published_count_and_speed_reports_rates() {
    // VGG16's 13 convolutions at 224 px: 15.35 G multiply-adds.
    let cfg = vggft::model::ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2);
    let f = vggft::speed::forward_flops(&cfg, 224);
    assert!((f / 2.0 - 15.35e9).abs() < 0.02e9, "{f}");
    let d = tmp();
    let (code, out, err) = run(&["speed", "--image-size", "32", "--batch-size", "2", "--reps", "1", "--device", "cpu", "--json"], d.path());
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["matmul_f32_gflops"].as_f64().unwrap() > 1.0, "{out}");
    let fw = r["forward"].as_array().unwrap();
    assert!(fw.iter().all(|f| f["images_per_s"].as_f64().unwrap() > 0.0 && f["gflops"].as_f64().unwrap() > 0.0), "{out}");
    // On the CPU float32 is timed with both convolutions.
    let ways: Vec<(&str, &str, i64)> =
        fw.iter().map(|f| (f["precision"].as_str().unwrap(), f["convolution"].as_str().unwrap(), f["batch"].as_i64().unwrap())).collect();
    assert_eq!(ways[..3], [("f32", "direct", 2), ("f32", "winograd", 2), ("f32", "direct", 1)], "{out}");
    // bf16 is timed unless this CPU would emulate it (its 2048³ product alone takes about a minute there).
    if vggft::model::CpuBf16::detect() == vggft::model::CpuBf16::Emulated {
        assert!(r["matmul_bf16_gflops"].is_null(), "{out}");
        assert_eq!(fw.len(), 3, "f32 alone: {out}");
        assert!(err.contains("bf16 not timed: this CPU has no bfloat16 arithmetic"), "{err}");
    } else {
        assert!(r["matmul_bf16_gflops"].as_f64().unwrap() > 1.0, "{out}");
        assert_eq!(fw.len(), 5, "f32 both ways and bf16, batch 2 and 1: {out}");
        assert!(!err.contains("bf16"), "{err}");
    }
    // --batch-size 1 times batch 1 once per precision (each row was printed twice).
    let (code, out, err) =
        run(&["speed", "--image-size", "32", "--batch-size", "1", "--reps", "1", "--device", "cpu", "--precision", "f32", "--json"], d.path());
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ways: Vec<(&str, &str, i64)> = r["forward"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["precision"].as_str().unwrap(), f["convolution"].as_str().unwrap(), f["batch"].as_i64().unwrap()))
        .collect();
    assert_eq!(ways, [("f32", "direct", 1)], "{out}");
}

#[test]
fn a_frozen_pass_gives_the_plain_forwards_features_and_follows_changed_weights() {
    let _rng = torch_rng();
    let d = tmp();
    let p = d.path().join("vgg16_bn.safetensors");
    torchvision_like(&p, true, 5);
    // 44 px: conv3–conv5 run at 11, 5 and 2 px, so Winograd meets partial tiles.
    let x = input(3, 44);
    for bn in [BnMode::Drop, BnMode::Frozen] {
        // `twin` never enters a frozen pass: the reference.
        let load = || {
            let mut net = Vgg16::new(&small_cfg(bn, HeadKind::Bn, 2), Device::Cpu).unwrap();
            weights::load_pretrained(&mut net, &p).unwrap();
            net
        };
        let (net, twin) = (load(), load());
        let plain = |net: &Vgg16| tch::no_grad(|| net.features(&x, Block::Conv1, Block::Head, false));
        let frozen = |net: &Vgg16| net.frozen(|| net.features(&x, Block::Conv1, Block::Head, false));
        let rel = |a: &Tensor, b: &Tensor| max_abs_diff(a, b) / f64::try_from(b.abs().max()).unwrap();
        let (p0, f0) = (plain(&twin), frozen(&net));
        // Not bit-equal (rounding differs): the frozen pass did take the Winograd path.
        assert!(rel(&f0, &p0) > 0.0 && rel(&f0, &p0) < 1e-5, "{bn:?}: the Winograd path differs from the direct one by {} of the range", rel(&f0, &p0));
        assert!(max_abs_diff(&net.frozen(|| frozen(&net)), &f0) == 0.0, "{bn:?}: a nested pass reuses the outer one's forms");
        assert!(max_abs_diff(&plain(&net), &p0) == 0.0, "{bn:?}: a frozen pass leaves nothing behind");
        // Weights changed between passes (a training step): the next pass sees them.
        for m in [&net, &twin] {
            tch::no_grad(|| {
                for (name, mut t) in m.vs.variables() {
                    if name.starts_with("features.") && name.ends_with(".weight") && t.dim() == 4 {
                        let _ = t.g_mul_scalar_(0.5);
                    }
                }
            });
        }
        let (p1, f1) = (plain(&twin), frozen(&net));
        assert!(max_abs_diff(&p1, &p0) > 0.0, "{bn:?}: the weights changed");
        assert!(rel(&f1, &p1) < 1e-5, "{bn:?}: a frozen pass after a weight change used stale forms ({})", rel(&f1, &p1));
        assert!(max_abs_diff(&plain(&net), &p1) == 0.0, "{bn:?}: a frozen pass leaves nothing behind");
    }
}

/// The Winograd path on the real pretrained trunk at full size: the conv5
/// output and the pooled features stay within float32 rounding of the direct
/// convolution's (the small-weight test above cannot show how the error
/// grows over nine layers of real filters).
#[test]
fn a_frozen_pass_on_the_pretrained_trunk_at_224_px_stays_within_rounding() {
    let w = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join("vgg16-hed.safetensors");
    if !w.exists() {
        eprintln!("skipped: {} is absent (make fetch-weights)", w.display());
        return;
    }
    let _rng = torch_rng();
    let mut net = Vgg16::new(&vggft::model::ModelConfig::new(BnMode::Drop, HeadKind::Bn, 2), Device::Cpu).unwrap();
    weights::load_pretrained(&mut net, &w).unwrap();
    let x = input(2, 224);
    let direct = tch::no_grad(|| net.features(&x, Block::Conv1, Block::Head, false));
    let frozen = net.frozen(|| net.features(&x, Block::Conv1, Block::Head, false));
    let rel = f64::try_from((&frozen - &direct).norm() / direct.norm()).unwrap();
    assert!(rel > 0.0 && rel < 1e-5, "conv5 output: relative error {rel}");
    let pooled = |f: &Tensor| f.mean_dim(&[2i64, 3][..], false, Kind::Float);
    let rel_pooled = f64::try_from((pooled(&frozen) - pooled(&direct)).norm() / pooled(&direct).norm()).unwrap();
    assert!(rel_pooled < 1e-5, "pooled: relative error {rel_pooled}");
    eprintln!("Winograd against direct at 224 px, pretrained trunk: conv5 output {rel:.1e}, pooled {rel_pooled:.1e} relative");
}

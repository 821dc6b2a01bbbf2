//! `mnist-cnn-bn`: a small CNN with BatchNorm on the mnist-mlp3 split; the modelled subset is
//! the weight and bias of its last two BatchNorm layers (the paper's main protocol). The rest
//! of the network and all running statistics stay fixed.
//!
//! conv1 3x3 1->8, bn1, ReLU, maxpool 2 -> conv2 3x3 8->24, bn2, ReLU, maxpool 2 ->
//! conv3 3x3 24->24, bn3, ReLU, maxpool 2 -> fc 216->10.
use super::mnist::Mnist;
use super::Task;
use pdiff_core::error::{Error, Result};
use pdiff_core::params::{Layout, Selection};
use pdiff_train::TorchResult;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{nn, nn::ModuleT, nn::OptimizerConfig, Device, Kind, Tensor};

pub const C1: i64 = 8;
pub const C2: i64 = 24;
pub const C3: i64 = 24;
/// The modelled subset, in layout order.
pub const SUBSET: [&str; 4] = ["bn2.weight", "bn2.bias", "bn3.weight", "bn3.bias"];
/// Parameters of SUBSET (the layout's D).
pub const MODELLED_PARAMS: usize = 2 * C2 as usize + 2 * C3 as usize;
pub const PRETRAIN_STEPS: usize = 1500;
pub const PRETRAIN_LR: f64 = 1e-2;
pub const TRAJECTORY_LR: f64 = 1e-3;
pub const BATCH: i64 = 128;
const BN_EPS: f64 = 1e-5;

#[derive(Debug)]
struct Net {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    fc: nn::Linear,
}

impl Net {
    fn new(vs: &nn::Path) -> Self {
        let c = |name: &str, i, o| nn::conv2d(vs / name, i, o, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        Net {
            conv1: c("conv1", 1, C1),
            bn1: nn::batch_norm2d(vs / "bn1", C1, Default::default()),
            conv2: c("conv2", C1, C2),
            bn2: nn::batch_norm2d(vs / "bn2", C2, Default::default()),
            conv3: c("conv3", C2, C3),
            bn3: nn::batch_norm2d(vs / "bn3", C3, Default::default()),
            fc: nn::linear(vs / "fc", C3 * 9, 10, Default::default()),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.view([-1, 1, 28, 28])
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv3)
            .apply_t(&self.bn3, train)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1)
            .apply(&self.fc)
    }
}

/// The fixed part of a trained network and the 2x2 max- and min-pooled conv2 outputs on both
/// splits. bn2 is a per-channel affine map a x + b followed by ReLU and max-pooling, so
/// maxpool(relu(a x + b)) = relu(a maxpool(x) + b) for a >= 0 and relu(a minpool(x) + b) for
/// a < 0: evaluating a subset starts from these 4x smaller tensors, exactly.
struct Base {
    tensors: HashMap<String, Tensor>,
    /// (max-pooled, min-pooled) conv2 outputs, [N, C2, 7, 7].
    pooled_train: (Tensor, Tensor),
    pooled_test: (Tensor, Tensor),
}

pub struct CnnBn {
    data: Mnist,
    base: Mutex<Option<Base>>,
}

impl CnnBn {
    pub fn new(data_dir: Option<&Path>) -> Result<Self> {
        Ok(CnnBn { data: Mnist::load(data_dir)?, base: Mutex::new(None) })
    }

    fn set_base(&self, tensors: HashMap<String, Tensor>) -> Result<()> {
        let need = |n: &str| tensors.get(n).ok_or_else(|| Error::invalid("checkpoint", format!("mnist-cnn-bn needs tensor '{n}'")));
        let conv1 = |x: &Tensor| -> Result<(Tensor, Tensor)> {
            let h = x.view([-1, 1, 28, 28]).conv2d(need("conv1.weight")?, Some(need("conv1.bias")?), [1, 1], [1, 1], [1, 1], 1);
            let h = bn_eval(&h, need("bn1.weight")?, need("bn1.bias")?, need("bn1.running_mean")?, need("bn1.running_var")?);
            let c2 = h.relu().max_pool2d_default(2).conv2d(need("conv2.weight")?, Some(need("conv2.bias")?), [1, 1], [1, 1], [1, 1], 1);
            Ok((c2.max_pool2d_default(2), -(-&c2).max_pool2d_default(2)))
        };
        let pooled_train = tch::no_grad(|| conv1(&self.data.train.images))?;
        let pooled_test = tch::no_grad(|| conv1(&self.data.test.images))?;
        *self.base.lock().unwrap() = Some(Base { tensors, pooled_train, pooled_test });
        Ok(())
    }

    /// The network's logits [N, 10] on a split with the modelled subset `flat` (the task's
    /// evaluation: [`Task::predict`] takes their argmax).
    pub fn logits(&self, layout: &Layout, flat: &[f32], train: bool) -> Result<Vec<f32>> {
        Vec::<f32>::try_from(&self.logits_tensor(layout, flat, train)?.flatten(0, -1)).torch()
    }

    /// A split's images as the network takes them, [N, 784] row-major.
    pub fn images(&self, train: bool) -> Result<Vec<f32>> {
        Vec::<f32>::try_from(&self.data.split(train).images.flatten(0, -1)).torch()
    }

    /// The base network as ONNX ([`super::cnn_bn_onnx`]): what a host serves, with the
    /// checkpoint it was loaded from (collect or [`Task::load_base`] first).
    pub fn onnx_model(&self) -> Result<Vec<u8>> {
        let guard = self.base.lock().unwrap();
        let base = guard.as_ref().ok_or_else(|| Error::invalid("mnist-cnn-bn", "no base checkpoint loaded (collect or load_base first)"))?;
        super::cnn_bn_onnx::network(&base.tensors, BN_EPS as f32)
    }

    fn logits_tensor(&self, layout: &Layout, flat: &[f32], train: bool) -> Result<Tensor> {
        let guard = self.base.lock().unwrap();
        let base = guard.as_ref().ok_or_else(|| Error::invalid("mnist-cnn-bn", "no base checkpoint loaded (collect or load_base first)"))?;
        let get = |name: &str| -> Result<Tensor> {
            let t = layout.get(name).ok_or_else(|| Error::invalid("layout", format!("mnist-cnn-bn needs tensor '{name}'")))?;
            Ok(Tensor::from_slice(&flat[t.offset..t.offset + t.numel()]))
        };
        let b = |n: &str| &base.tensors[n];
        let (hmax, hmin) = if train { &base.pooled_train } else { &base.pooled_test };
        let pred = tch::no_grad(|| -> Result<Tensor> {
            let shape = [1, -1, 1, 1];
            let scale = get("bn2.weight")? / (b("bn2.running_var") + BN_EPS).sqrt();
            let shift = get("bn2.bias")? - b("bn2.running_mean") * &scale;
            let positive: Tensor = scale.ge(0.0).to_kind(Kind::Float).view(shape);
            let pooled: Tensor = hmax * &positive + hmin * (1.0 - &positive);
            let h: Tensor = (pooled * scale.view(shape) + shift.view(shape)).relu();
            let h = h.conv2d(b("conv3.weight"), Some(b("conv3.bias")), [1, 1], [1, 1], [1, 1], 1);
            let h = bn_eval(&h, &get("bn3.weight")?, &get("bn3.bias")?, b("bn3.running_mean"), b("bn3.running_var")).relu().max_pool2d_default(2);
            Ok(h.flatten(1, -1).linear(b("fc.weight"), Some(b("fc.bias"))))
        })?;
        Ok(pred)
    }
}

fn bn_eval(x: &Tensor, w: &Tensor, b: &Tensor, rm: &Tensor, rv: &Tensor) -> Tensor {
    let shape = [1, -1, 1, 1];
    (x - rm.view(shape)) / (rv.view(shape) + BN_EPS).sqrt() * w.view(shape) + b.view(shape)
}

impl Task for CnnBn {
    fn name(&self) -> &'static str {
        "mnist-cnn-bn"
    }

    fn layout(&self) -> Layout {
        let entries: Vec<(&str, Vec<usize>)> = SUBSET.iter().map(|n| (*n, vec![if n.starts_with("bn2") { C2 as usize } else { C3 as usize }])).collect();
        Layout::from_shapes(&entries).expect("static layout")
    }

    fn selection(&self) -> Selection {
        Selection::patterns(&SUBSET)
    }

    fn collect(&self, out_dir: &Path, k: usize, seed: u64, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<PathBuf>> {
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root());
        let train = &self.data.train;
        let n = train.len() as i64;
        let total = PRETRAIN_STEPS + k;
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let mut opt = nn::AdamW { wd: 1e-4, ..Default::default() }.build(&vs, PRETRAIN_LR).torch()?;
        let mut step = 0;
        // Phase 1: train the whole network normally (BatchNorm in training mode).
        while step < PRETRAIN_STEPS {
            let c = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / PRETRAIN_STEPS as f64).cos());
            opt.set_lr(TRAJECTORY_LR + (PRETRAIN_LR - TRAJECTORY_LR) * c);
            let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
            let loss = net.forward_t(&train.images.index_select(0, &idx), true).cross_entropy_for_logits(&train.labels.index_select(0, &idx));
            opt.backward_step(&loss);
            step += 1;
            if !progress(step, total) {
                return Err(Error::Cancelled);
            }
        }
        // Phase 2: only the subset trains, at a constant LR; BatchNorm in eval mode so the
        // running statistics stay fixed. One checkpoint (the whole network) per iteration.
        vs.freeze();
        let vars = vs.variables();
        for name in SUBSET {
            let _ = vars[name].shallow_clone().set_requires_grad(true);
        }
        let mut opt = nn::AdamW { wd: 0.0, ..Default::default() }.build(&vs, TRAJECTORY_LR).torch()?;
        let mut files = Vec::with_capacity(k);
        for i in 0..k {
            let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
            let loss = net.forward_t(&train.images.index_select(0, &idx), false).cross_entropy_for_logits(&train.labels.index_select(0, &idx));
            opt.backward_step(&loss);
            let path = out_dir.join(format!("ckpt_{i:04}.safetensors"));
            save_varstore(&vs, &path)?;
            files.push(path);
            if !progress(PRETRAIN_STEPS + i + 1, total) {
                return Err(Error::Cancelled);
            }
        }
        self.set_base(vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect())?;
        Ok(files)
    }

    fn load_base(&self, checkpoint: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(checkpoint).map_err(|e| Error::Checkpoint { file: checkpoint.to_path_buf(), message: e.to_string() })?;
        self.set_base(tensors.into_iter().collect())
    }

    fn predict(&self, layout: &Layout, flat: &[f32], train: bool) -> Result<Vec<i64>> {
        let logits = self.logits_tensor(layout, flat, train)?;
        Vec::<i64>::try_from(&logits.argmax(1, false)).torch()
    }

    fn labels(&self, train: bool) -> &[i64] {
        &self.data.split(train).labels_vec
    }
}

/// Save every tensor of a VarStore (weights, biases, running statistics) atomically.
fn save_varstore(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let tmp = pdiff_core::files::temp_sibling(path);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, &tmp).map_err(|e| Error::Checkpoint { file: path.to_path_buf(), message: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

//! `mnist-mlp3`: MLP 784-16-16-10 with ReLU, PyTorch Linear convention (y = x W^T + b),
//! 13,002 parameters, all of them modelled. `mnist-mlp-wide`: the same network at
//! 784-1024-128-10, 936,330 parameters, with the same data, split and collection recipe: the
//! reference task of the `chunked` preset.
use super::mnist::Mnist;
use super::Task;
use pdiff_core::error::{Error, Result};
use pdiff_core::params::{Layout, Selection};
use pdiff_train::TorchResult;
use std::path::{Path, PathBuf};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

pub const TENSORS: [(&str, &[usize]); 6] =
    [("fc1.weight", &[16, 784]), ("fc1.bias", &[16]), ("fc2.weight", &[16, 16]), ("fc2.bias", &[16]), ("fc3.weight", &[10, 16]), ("fc3.bias", &[10])];

/// mnist-mlp-wide's tensors (936,330 parameters).
pub const WIDE_TENSORS: [(&str, &[usize]); 6] =
    [("fc1.weight", &[1024, 784]), ("fc1.bias", &[1024]), ("fc2.weight", &[128, 1024]), ("fc2.bias", &[128]), ("fc3.weight", &[10, 128]), ("fc3.bias", &[10])];

/// Collection hyper-parameters (train from scratch, then the constant-LR trajectory).
pub const PRETRAIN_STEPS: usize = 3000;
pub const PRETRAIN_LR: f64 = 1e-2;
pub const TRAJECTORY_LR: f64 = 1e-3;
pub const BATCH: i64 = 128;

pub struct Mlp3 {
    data: Mnist,
    name: &'static str,
    tensors: &'static [(&'static str, &'static [usize]); 6],
}

impl Mlp3 {
    pub fn new(data_dir: Option<&Path>) -> Result<Self> {
        Ok(Mlp3 { data: Mnist::load(data_dir)?, name: "mnist-mlp3", tensors: &TENSORS })
    }

    /// mnist-mlp-wide: the same task with 1024 and 128 hidden units.
    pub fn wide(data_dir: Option<&Path>) -> Result<Self> {
        Ok(Mlp3 { data: Mnist::load(data_dir)?, name: "mnist-mlp-wide", tensors: &WIDE_TENSORS })
    }

    fn forward(ws: &[Tensor], x: &Tensor) -> Tensor {
        mlp_forward(ws, x)
    }

    /// The six tensors in forward order, looked up by name in `layout`.
    fn tensors_from_flat(&self, layout: &Layout, flat: &[f32]) -> Result<Vec<Tensor>> {
        mlp_tensors_from_flat(self.name, self.tensors, layout, flat)
    }
}

/// The two hidden layers of a three-layer ReLU MLP (tensors in layout order: fc1.weight,
/// fc1.bias, fc2.weight, fc2.bias, ...), PyTorch Linear convention (y = x W^T + b).
pub(crate) fn mlp_body(ws: &[Tensor], x: &Tensor) -> Tensor {
    x.linear(&ws[0], Some(&ws[1])).relu().linear(&ws[2], Some(&ws[3])).relu()
}

/// The whole three-layer MLP: [`mlp_body`], then fc3.
pub(crate) fn mlp_forward(ws: &[Tensor], x: &Tensor) -> Tensor {
    mlp_body(ws, x).linear(&ws[4], Some(&ws[5]))
}

/// A Linear layer's weight [o, i] and bias [o] under `p`, PyTorch's default initialization
/// U(-1/sqrt(i), 1/sqrt(i)).
pub(crate) fn linear_vars(p: &nn::Path, i: i64, o: i64) -> (Tensor, Tensor) {
    let bound = 1.0 / (i as f64).sqrt();
    (p.var("weight", &[o, i], nn::Init::Uniform { lo: -bound, up: bound }), p.var("bias", &[o], nn::Init::Uniform { lo: -bound, up: bound }))
}

/// `task`'s `tensors` (names and shapes, in forward order) out of `flat`, placed by `layout` and
/// checked against the network (an error names the tensor).
pub(crate) fn mlp_tensors_from_flat(task: &str, tensors: &[(&str, &[usize])], layout: &Layout, flat: &[f32]) -> Result<Vec<Tensor>> {
    if flat.len() != layout.param_count() {
        return Err(Error::invalid("parameters", format!("{} values, layout has {}", flat.len(), layout.param_count())));
    }
    tensors
        .iter()
        .map(|(name, shape)| {
            let t = layout.get(name).ok_or_else(|| Error::invalid("layout", format!("{task} needs tensor '{name}'")))?;
            if t.shape != *shape {
                return Err(Error::invalid("layout", format!("tensor '{name}' has shape {:?}, {task} needs {shape:?}", t.shape)));
            }
            let dims: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
            Ok(Tensor::from_slice(&flat[t.offset..t.offset + t.numel()]).view(dims.as_slice()))
        })
        .collect()
}

impl Task for Mlp3 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn layout(&self) -> Layout {
        let entries: Vec<(&str, Vec<usize>)> = self.tensors.iter().map(|(n, s)| (*n, s.to_vec())).collect();
        Layout::from_shapes(&entries).expect("static layout")
    }

    fn selection(&self) -> Selection {
        Selection::AllFloat
    }

    fn collect(&self, out_dir: &Path, k: usize, seed: u64, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<PathBuf>> {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let lin = |name: &str, i: i64, o: i64| linear_vars(&(&root / name), i, o);
        let (h1, h2) = (self.tensors[0].1[0] as i64, self.tensors[2].1[0] as i64);
        let (w1, b1) = lin("fc1", 784, h1);
        let (w2, b2) = lin("fc2", h1, h2);
        let (w3, b3) = lin("fc3", h2, 10);
        let ws = [w1, b1, w2, b2, w3, b3];
        let train = &self.data.train;
        let n = train.len() as i64;
        let mut opt = nn::AdamW { wd: 1e-4, ..Default::default() }.build(&vs, PRETRAIN_LR).torch()?;
        let total = PRETRAIN_STEPS + k;
        let layout = self.layout();
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let mut files = Vec::with_capacity(k);
        for step in 0..total {
            let lr = if step < PRETRAIN_STEPS {
                // Cosine from PRETRAIN_LR down to the trajectory's constant LR.
                let c = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / PRETRAIN_STEPS as f64).cos());
                TRAJECTORY_LR + (PRETRAIN_LR - TRAJECTORY_LR) * c
            } else {
                TRAJECTORY_LR
            };
            opt.set_lr(lr);
            let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
            let x = train.images.index_select(0, &idx);
            let y = train.labels.index_select(0, &idx);
            let loss = Self::forward(&ws, &x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            if step >= PRETRAIN_STEPS {
                let i = step - PRETRAIN_STEPS;
                let flat: Vec<f32> = ws.iter().flat_map(|w| Vec::<f32>::try_from(&w.detach().contiguous().view([-1])).unwrap_or_default()).collect();
                let path = out_dir.join(format!("ckpt_{i:04}.safetensors"));
                layout.save_safetensors(&flat, &path)?;
                files.push(path);
            }
            if !progress(step + 1, total) {
                return Err(Error::Cancelled);
            }
        }
        Ok(files)
    }

    fn predict(&self, layout: &Layout, flat: &[f32], train: bool) -> Result<Vec<i64>> {
        let ws = self.tensors_from_flat(layout, flat)?;
        let split = self.data.split(train);
        let pred = tch::no_grad(|| Self::forward(&ws, &split.images).argmax(1, false));
        Vec::<i64>::try_from(&pred).torch()
    }

    fn labels(&self, train: bool) -> &[i64] {
        &self.data.split(train).labels_vec
    }
}

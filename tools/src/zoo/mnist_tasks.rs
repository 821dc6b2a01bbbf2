//! `mnist-tasks`: a family of binary MNIST tasks for conditional generation (the RPG protocol,
//! CPU-sized). A task is a set S of 5 of the 10 digits (252 tasks); an image's label is 1 when
//! its digit is in S. Its condition is 10 floats, element d = 1.0 when digit d is in S, and its
//! code the 10-character string of those bits (character d for digit d, e.g. `0110100101`).
//!
//! The network is an MLP 784-16-16-2 with ReLU on mnist-mlp3's data and split. So that the
//! parameters of different tasks are comparable (one basin, one neuron order), every task's
//! models start from one shared initialization: a 784-16-16 body trained jointly on the SEEN
//! tasks only (one 2-way head per seen task), and one seeded head. A task's models are then
//! fine-tuned from it on that task alone ([`MnistTasks::train_task`]); held-out tasks never
//! enter the shared initialization, the generator or any choice of hyper-parameters.
use super::mlp3::{linear_vars, mlp_body, mlp_forward, mlp_tensors_from_flat};
use super::mnist::Mnist;
use crate::eval::ModelEval;
use pdiff_core::error::{Error, Result};
use pdiff_core::params::Layout;
use pdiff_train::TorchResult;
use std::path::Path;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

pub const NAME: &str = "mnist-tasks";

pub const TENSORS: [(&str, &[usize]); 6] =
    [("fc1.weight", &[16, 784]), ("fc1.bias", &[16]), ("fc2.weight", &[16, 16]), ("fc2.bias", &[16]), ("fc3.weight", &[2, 16]), ("fc3.bias", &[2])];

/// Digits per task and the number of tasks (10 choose 5).
pub const DIGITS_PER_TASK: usize = 5;
pub const TASK_COUNT: usize = 252;

/// How the models are trained: `shared_steps` of joint training on the seen tasks give the
/// shared initialization; a task's models are trained from it: `finetune_steps` with a
/// cosine learning rate from `finetune_lr` down to `trajectory_lr`, then one checkpoint every
/// `checkpoint_every` steps at `trajectory_lr`. The body (fc1, fc2) learns at `body_lr_scale`
/// times the head's rate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    pub shared_steps: usize,
    /// Learning rate of the shared initialization's training (cosine down to a tenth).
    pub shared_lr: f64,
    pub finetune_steps: usize,
    pub finetune_lr: f64,
    pub trajectory_lr: f64,
    pub body_lr_scale: f64,
    pub checkpoint_every: usize,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe { shared_steps: 4000, shared_lr: 1e-3, finetune_steps: 500, finetune_lr: 5e-3, trajectory_lr: 1e-3, body_lr_scale: 0.03, checkpoint_every: 1 }
    }
}
pub const BATCH: i64 = 128;

/// A task: a set of 5 digits, as a 10-bit mask (bit d = digit d).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigitSet(u16);

impl DigitSet {
    /// All 252 five-digit sets, in increasing mask order.
    pub fn all() -> Vec<DigitSet> {
        (0u16..1024).filter(|m| m.count_ones() as usize == DIGITS_PER_TASK).map(DigitSet).collect()
    }

    pub fn contains(self, digit: usize) -> bool {
        digit < 10 && self.0 & (1 << digit) != 0
    }

    /// `0110100101`: character d is 1 when digit d is in the set.
    pub fn code(self) -> String {
        (0..10).map(|d| if self.contains(d) { '1' } else { '0' }).collect()
    }

    /// The inverse of [`DigitSet::code`]; a code must have 10 characters of 0/1 and five 1s.
    pub fn from_code(code: &str) -> Result<Self> {
        let bad = || Error::invalid("task code", format!("'{code}' (expected 10 characters 0/1 with five 1s, character d for digit d)"));
        if code.len() != 10 {
            return Err(bad());
        }
        let mut m = 0u16;
        for (d, c) in code.chars().enumerate() {
            match c {
                '1' => m |= 1 << d,
                '0' => {}
                _ => return Err(bad()),
            }
        }
        if m.count_ones() as usize != DIGITS_PER_TASK {
            return Err(bad());
        }
        Ok(DigitSet(m))
    }

    /// The condition vector: element d = 1.0 when digit d is in the set.
    pub fn condition(self) -> [f32; 10] {
        std::array::from_fn(|d| if self.contains(d) { 1.0 } else { 0.0 })
    }

    pub fn hamming(self, other: DigitSet) -> u32 {
        (self.0 ^ other.0).count_ones()
    }

    /// The label of each digit 0..9 under this task.
    fn digit_labels(self) -> [i64; 10] {
        std::array::from_fn(|d| self.contains(d) as i64)
    }
}

/// The data of the task family and the computations on it.
pub struct MnistTasks {
    data: Mnist,
}

impl MnistTasks {
    pub fn new(data_dir: Option<&Path>) -> Result<Self> {
        Ok(MnistTasks { data: Mnist::load(data_dir)? })
    }

    pub fn layout() -> Layout {
        let entries: Vec<(&str, Vec<usize>)> = TENSORS.iter().map(|(n, s)| (*n, s.to_vec())).collect();
        Layout::from_shapes(&entries).expect("static layout")
    }

    /// Binary labels of a split under `task`.
    fn labels(&self, task: DigitSet, train: bool) -> Tensor {
        let split = self.data.split(train);
        Tensor::from_slice(&task.digit_labels()).index_select(0, &split.labels)
    }

    fn forward(ws: &[Tensor], x: &Tensor) -> Tensor {
        mlp_forward(ws, x)
    }

    /// The shared initialization (six tensors in layout order): the body trained jointly on
    /// `seen` (one 2-way head per task, mean cross-entropy over tasks; `recipe.shared_steps` at
    /// `recipe.shared_lr`), and a seeded head.
    pub fn shared_init(&self, seen: &[DigitSet], recipe: &Recipe, seed: u64, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<f32>> {
        if seen.is_empty() {
            return Err(Error::invalid("tasks", "the shared initialization needs at least one seen task"));
        }
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let t = seen.len() as i64;
        let (w1, b1) = linear_vars(&(&root / "fc1"), 784, 16);
        let (w2, b2) = linear_vars(&(&root / "fc2"), 16, 16);
        let (wh, bh) = linear_vars(&(&root / "heads"), 16, 2 * t);
        // lut[digit, task]: each seen task's label (0 or 1) for each digit.
        let lut: Vec<i64> = (0..10).flat_map(|d| seen.iter().map(move |s| s.contains(d) as i64)).collect();
        let lut = Tensor::from_slice(&lut).view([10, t]);
        let train = &self.data.train;
        let n = train.len() as i64;
        let (steps, lr) = (recipe.shared_steps, recipe.shared_lr);
        let mut opt = nn::AdamW { wd: 1e-4, ..Default::default() }.build(&vs, lr).torch()?;
        let ws = [w1, b1, w2, b2];
        for step in 0..steps {
            opt.set_lr(cosine(lr, lr / 10.0, step, steps));
            let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
            let x = train.images.index_select(0, &idx);
            let y = lut.index_select(0, &train.labels.index_select(0, &idx)).view([-1]);
            let logits = mlp_body(&ws, &x).linear(&wh, Some(&bh)).view([-1, 2]);
            let loss = logits.cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            if !progress(step + 1, steps) {
                return Err(Error::Cancelled);
            }
        }
        // The head every task starts from: seeded, independent of the tasks.
        tch::manual_seed(seed.wrapping_add(1) as i64);
        let head_vs = nn::VarStore::new(Device::Cpu);
        let (w3, b3) = linear_vars(&head_vs.root(), 16, 2);
        Ok(flatten(&[&ws[0], &ws[1], &ws[2], &ws[3], &w3, &b3]))
    }

    /// Train `task`'s models from the shared initialization `init` by `recipe` and return one
    /// checkpoint per step of the constant-rate phase, `k` of them (flat, layout order).
    pub fn train_task(&self, init: &[f32], task: DigitSet, recipe: &Recipe, k: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
        let layout = Self::layout();
        if init.len() != layout.param_count() {
            return Err(Error::invalid("shared initialization", format!("{} values, {} expected", init.len(), layout.param_count())));
        }
        tch::manual_seed(seed as i64);
        // Two parameter groups: the body (fc1, fc2) and the head (fc3), each with its own rate.
        let vs = nn::VarStore::new(Device::Cpu);
        let ws: Vec<Tensor> = layout
            .split(init)
            .enumerate()
            .map(|(i, (t, v))| {
                let dims: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
                let group = usize::from(i >= 4);
                vs.root().set_group(group).var_copy(&t.name.replace('.', "_"), &Tensor::from_slice(v).view(dims.as_slice()))
            })
            .collect();
        let mut opt = nn::AdamW { wd: 1e-4, ..Default::default() }.build(&vs, recipe.finetune_lr).torch()?;
        let train = &self.data.train;
        let labels = self.labels(task, true);
        let n = train.len() as i64;
        let mut out = Vec::with_capacity(k);
        let steps = recipe.finetune_steps;
        let every = recipe.checkpoint_every.max(1);
        for step in 0..steps + k * every {
            let lr = if step < steps { cosine(recipe.finetune_lr, recipe.trajectory_lr, step, steps) } else { recipe.trajectory_lr };
            opt.set_lr_group(0, lr * recipe.body_lr_scale);
            opt.set_lr_group(1, lr);
            let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
            let loss = Self::forward(&ws, &train.images.index_select(0, &idx)).cross_entropy_for_logits(&labels.index_select(0, &idx));
            opt.backward_step(&loss);
            if step >= steps && (step + 1 - steps).is_multiple_of(every) {
                out.push(flatten(&ws.iter().collect::<Vec<_>>()));
            }
        }
        Ok(out)
    }

    /// Test (or train) accuracy of each row of `rows` (flat, `layout`) on `task`.
    pub fn accuracies(&self, layout: &Layout, rows: &[f32], task: DigitSet, train: bool) -> Result<Vec<f64>> {
        let split = self.data.split(train);
        let labels = self.labels(task, train);
        let d = layout.param_count();
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(Error::invalid("parameters", format!("{} values is not a multiple of the layout's {d}", rows.len())));
        }
        rows.chunks_exact(d)
            .map(|row| {
                let ws = mlp_tensors_from_flat(NAME, &TENSORS, layout, row)?;
                let right = tch::no_grad(|| Self::forward(&ws, &split.images).argmax(1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]));
                Ok(right as f64 / split.len() as f64)
            })
            .collect()
    }

    /// Per-model evaluation of each row of `rows` on `task` (accuracy, correctly classified
    /// images, indices of the misclassified ones): what memorization and the yardsticks need.
    pub fn evals(&self, layout: &Layout, rows: &[f32], task: DigitSet, train: bool) -> Result<Vec<ModelEval>> {
        let split = self.data.split(train);
        let labels = self.labels(task, train);
        let d = layout.param_count();
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(Error::invalid("parameters", format!("{} values is not a multiple of the layout's {d}", rows.len())));
        }
        rows.chunks_exact(d)
            .map(|row| {
                let ws = mlp_tensors_from_flat(NAME, &TENSORS, layout, row)?;
                let wrong = tch::no_grad(|| Self::forward(&ws, &split.images).argmax(1, false).ne_tensor(&labels).nonzero().view([-1]));
                let wrong: Vec<u32> =
                    Vec::<i64>::try_from(&wrong).map_err(|e| Error::invalid("predictions", e.to_string()))?.into_iter().map(|i| i as u32).collect();
                let correct = split.len() - wrong.len();
                Ok(ModelEval { accuracy: correct as f64 / split.len() as f64, correct, wrong })
            })
            .collect()
    }

    /// A split's images as the network takes them, [N, 784] row-major.
    pub fn images(&self, train: bool) -> Result<Vec<f32>> {
        Vec::<f32>::try_from(&self.data.split(train).images.flatten(0, -1)).torch()
    }

    /// A split's binary labels under `task` (1: the image's digit is in the task's set).
    pub fn task_labels(&self, task: DigitSet, train: bool) -> Result<Vec<i64>> {
        Vec::<i64>::try_from(&self.labels(task, train)).torch()
    }

    /// Number of TEST images (accuracies are multiples of one over it).
    pub fn test_len(&self) -> usize {
        self.data.test.len()
    }
}

fn cosine(from: f64, to: f64, step: usize, total: usize) -> f64 {
    let c = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos());
    to + (from - to) * c
}

fn flatten(ws: &[&Tensor]) -> Vec<f32> {
    ws.iter().flat_map(|w| Vec::<f32>::try_from(&w.detach().contiguous().view([-1])).unwrap_or_default()).collect()
}

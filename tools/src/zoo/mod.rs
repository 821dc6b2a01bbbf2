//! Reference tasks shipped with the tools (docs/design.md, "The tools"): data, the networks whose parameters are
//! modelled, checkpoint collection and the evaluation of a flat parameter vector.
pub mod cnn_bn;
pub mod cnn_bn_onnx;
pub mod mlp3;
pub mod mlp_onnx;
pub mod mnist;
pub mod mnist_tasks;

use pdiff_core::error::Result;
use pdiff_core::params::{Layout, Selection};
use std::path::PathBuf;

/// What a reference task offers to collection, training and evaluation.
pub trait Task {
    fn name(&self) -> &'static str;
    /// The layout of the modelled tensors (names, shapes).
    fn layout(&self) -> Layout;
    /// Which tensors of a checkpoint file are modelled.
    fn selection(&self) -> Selection;
    /// Train from scratch, then keep training at a constant learning rate, saving one
    /// checkpoint per iteration (`k` of them) into `out_dir`. Returns the files written.
    fn collect(&self, out_dir: &std::path::Path, k: usize, seed: u64, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<PathBuf>>;
    /// Class predictions of the model whose modelled tensors are `flat` (host units, placed
    /// by `layout`, looked up by name) on the TRAIN (`train = true`) or TEST split.
    fn predict(&self, layout: &Layout, flat: &[f32], train: bool) -> Result<Vec<i64>>;
    /// Bind the fixed (not modelled) part of the network from one checkpoint file; tasks that
    /// model the whole network ignore it.
    fn load_base(&self, _checkpoint: &std::path::Path) -> Result<()> {
        Ok(())
    }
    /// Labels of a split.
    fn labels(&self, train: bool) -> &[i64];
}

/// Look up a reference task by name.
pub fn task(name: &str, data_dir: Option<&std::path::Path>) -> Result<Box<dyn Task>> {
    match name {
        "mnist-mlp3" => Ok(Box::new(mlp3::Mlp3::new(data_dir)?)),
        "mnist-mlp-wide" => Ok(Box::new(mlp3::Mlp3::wide(data_dir)?)),
        "mnist-cnn-bn" => Ok(Box::new(cnn_bn::CnnBn::new(data_dir)?)),
        _ => Err(pdiff_core::Error::invalid("task", format!("'{name}' (known: {}; {} for pdiff demo)", TASKS.join(", "), mnist_tasks::NAME))),
    }
}

/// The reference tasks' names (the task family mnist-tasks has its own demo).
pub const TASKS: [&str; 3] = ["mnist-mlp3", "mnist-mlp-wide", "mnist-cnn-bn"];

/// D, the number of modelled parameters of a task, without loading its data (the automatic
/// preset is chosen from it before anything runs).
pub fn param_count(name: &str) -> Result<usize> {
    let count = |tensors: &[(&str, &[usize])]| tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    match name {
        "mnist-mlp3" => Ok(count(&mlp3::TENSORS)),
        "mnist-mlp-wide" => Ok(count(&mlp3::WIDE_TENSORS)),
        "mnist-cnn-bn" => Ok(cnn_bn::MODELLED_PARAMS),
        _ => Err(pdiff_core::Error::invalid("task", format!("'{name}' (known: {})", TASKS.join(", ")))),
    }
}

//! Evaluation of parameter vectors on a reference task: accuracy summaries (best / mean /
//! median / min / std), the soup baseline and train-selected generated model.
use crate::error::Result;
use crate::params::Layout;
use crate::zoo::Task;
use serde::{Deserialize, Serialize};

/// Summary of a set of accuracies (fractions in [0, 1]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub best: f64,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub std: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let median = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        Summary { best: v[n - 1], mean, median, min: v[0], std }
    }
}

pub fn accuracy(pred: &[i64], labels: &[i64]) -> f64 {
    let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len().max(1) as f64
}

/// Per-model evaluation on one split: accuracy and the indices of misclassified examples.
#[derive(Clone, Debug, Default)]
pub struct ModelEval {
    pub accuracy: f64,
    pub wrong: Vec<u32>,
}

/// Evaluate each row (length D) of `rows` on the TRAIN or TEST split.
pub fn evaluate_rows(task: &dyn Task, layout: &Layout, rows: &[f32], train: bool) -> Result<Vec<ModelEval>> {
    let labels = task.labels(train);
    rows.chunks_exact(layout.param_count())
        .map(|row| {
            let pred = task.predict(layout, row, train)?;
            let wrong = pred.iter().zip(labels).enumerate().filter(|(_, (p, l))| p != l).map(|(i, _)| i as u32).collect();
            Ok(ModelEval { accuracy: accuracy(&pred, labels), wrong })
        })
        .collect()
}

pub fn accuracies(evals: &[ModelEval]) -> Vec<f64> {
    evals.iter().map(|e| e.accuracy).collect()
}

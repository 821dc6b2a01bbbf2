//! pdiff-tools: everything around the libpdiff engine that a host does not embed. The `pdiff`
//! command line (src/cli/, one module per command) is built on these modules:
//! - [`zoo`]: reference tasks (MNIST data, the networks whose parameters are modelled,
//!   checkpoint collection);
//! - [`eval`]: accuracy summaries, baselines, memorization; [`yardsticks`]: the critique's
//!   baselines (average of 16, per-parameter gaussian, noise at the generated distance);
//!   [`results`]: results.json;
//!   [`report`]: report.md and its plots;
//! - [`demo`]: the end-to-end job; [`tasks_demo`], [`tasks_results`], [`tasks_report`]: the
//!   conditional one (mnist-tasks); [`bench`]: the sampling benchmark and its sweep; [`scale`]:
//!   the benchmark over D (`pdiff bench scale`); [`train_bench`]: training against the machine's
//!   matmul peak (`pdiff bench train`); [`ablation`]: the ablations;
//! - [`ort_library`]: where the command line finds ONNX Runtime on a development machine.
pub mod ablation;
pub mod adapters;
pub mod bench;
pub mod demo;
pub mod eval;
pub mod ort_library;
pub mod report;
pub mod results;
pub mod scale;
pub mod tasks_demo;
pub mod tasks_report;
pub mod tasks_results;
pub mod train_bench;
pub mod yardsticks;
pub mod zoo;

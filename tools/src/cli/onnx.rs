//! `pdiff onnx expose`: prepare a host's ONNX model for adapters (pdiff-train's
//! `onnx::expose`): the initializers a bundle generates become graph inputs with the
//! initializer as their default.
use crate::args::ForceArg;
use clap::{Args, Subcommand};
use pdiff_core::adapter::NameMap;
use pdiff_core::bundle::Bundle;
use pdiff_core::limits::MAX_GRAPH_BYTES;
use pdiff_core::output;
use pdiff_core::{Error, Result};
use pdiff_train::onnx::expose::{expose, is_exposed_model};
use std::path::PathBuf;

#[derive(Args)]
pub struct OnnxArgs {
    #[command(subcommand)]
    command: OnnxCommand,
}

#[derive(Subcommand)]
enum OnnxCommand {
    /// Make the tensors a bundle generates graph inputs of a host model (the initializer stays
    /// their default), so that ONNX Runtime adapters (`pdiff sample --format onnx-adapter`)
    /// override them per run.
    Expose(ExposeArgs),
}

#[derive(Args)]
struct ExposeArgs {
    /// The host's ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// The bundle whose layout names the tensors.
    #[arg(long)]
    bundle: PathBuf,
    /// The model written (an existing file is replaced only when `onnx expose` wrote it, or
    /// with --force).
    #[arg(long)]
    out: PathBuf,
    /// The host's name of a tensor when it differs from the layout's (LAYOUT_NAME=HOST_NAME,
    /// repeatable or comma-separated): the same mapping as `pdiff sample --adapter-name`.
    #[arg(long = "adapter-name", value_delimiter = ',', value_name = "LAYOUT=HOST")]
    adapter_names: Vec<String>,
    #[command(flatten)]
    force: ForceArg,
}

pub fn run(a: OnnxArgs) -> Result<()> {
    match a.command {
        OnnxCommand::Expose(a) => run_expose(a),
    }
}

fn run_expose(a: ExposeArgs) -> Result<()> {
    let what = "a model written by pdiff onnx expose";
    output::check_output_file(&a.out, a.force.policy(), what, is_exposed_model)?;
    let names = NameMap::parse(&a.adapter_names)?;
    let bundle = Bundle::read(&a.bundle, &[])?;
    let layout = bundle.manifest.layout();
    let model = pdiff_core::files::read_regular(&a.model, MAX_GRAPH_BYTES).map_err(|e| Error::io(&a.model, e))?;
    let exposed = expose(&model, &a.model.display().to_string(), &layout, &names, &bundle.manifest_sha256)?;
    output::write_output_file(&a.out, &exposed.bytes, a.force.policy(), what, is_exposed_model)?;
    println!(
        "wrote {}: {} initializers exposed as graph inputs ({} added, {} already inputs)",
        a.out.display(),
        exposed.added.len() + exposed.kept.len(),
        exposed.added.len(),
        exposed.kept.len()
    );
    Ok(())
}

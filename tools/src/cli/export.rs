//! `pdiff export`: re-export a generator (a bundle) as a fresh, verified bundle.
use crate::args::ForceArg;
use clap::Args;
use pdiff_core::bundle::{self, ExportOptions, PROTOBUF_LIMIT};
use pdiff_core::output::{self, OutputKind};
use pdiff_core::training::DeviceChoice;
use pdiff_core::Result;
use pdiff_train::Generator;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    generator: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    force: ForceArg,
    /// A graph larger than this many bytes keeps its largest initializers in an external
    /// data file (`<graph>.data`); default and maximum: the 2 GiB protobuf limit. 0 moves
    /// every initializer out (to test hosts on such bundles).
    #[arg(long, value_name = "BYTES")]
    inline_graph_limit: Option<u64>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    output::check_output_dir(&a.out, OutputKind::Bundle, a.force.policy())?;
    let g = Generator::load_bundle(&a.generator, DeviceChoice::Cpu)?;
    let opts = ExportOptions { if_foreign: a.force.policy(), inline_graph_limit: a.inline_graph_limit.unwrap_or(PROTOBUF_LIMIT) };
    let m = g.export_bundle_opts(&a.out, &opts)?;
    bundle::load_manifest(&a.out)?;
    println!("bundle {}: D = {}, d = {}, files {:?}", a.out.display(), m.param_count, m.latent_dim, m.files.values().collect::<Vec<_>>());
    Ok(())
}

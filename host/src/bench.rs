//! `kiln bench`: commands over HTTP against the raw append ceiling.

use clap::Args;

/// Options of `kiln bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

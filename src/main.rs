//! imgforge: Azure Batch custom images from a feature manifest, built with Packer.
//!
//! Data flows one way through the stage modules:
//! manifest → catalog → plan → render → packer → build (capture, record).

mod build;
mod capture;
mod catalog;
mod cli;
mod commands;
mod error;
mod events;
mod fsutil;
mod manifest;
mod packer;
mod plan;
mod pool;
mod progress;
mod redact;
mod render;
mod replicate;
mod report;
mod storage;
mod templates;
mod term;
mod validate;
mod vhd;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            term::error(&redact::redact(&e.to_string()));
            e.exit_code()
        }
    };
    std::process::exit(code);
}

//! The imgforge command line: parse, run one command, exit with its status.

use clap::Parser;
use imgforge::{cli, commands, redact, term};

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

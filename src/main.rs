//! The imgforge command line: parse, run one command, exit with its status.

use clap::Parser;
use imgforge::cli::{self, commands};
use imgforge::util::term;

fn main() {
    let cli = cli::args::Cli::parse();
    let json = cli.wants_json();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let message = e.to_text();
            if json && e.needs_json_document() {
                // A pipeline that asked for JSON gets JSON on stdout, failure included.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&e.to_json()).expect("serializable")
                );
            }
            term::error(&message);
            e.exit_code()
        }
    };
    std::process::exit(code);
}

//! The imgforge command line: parse, run one command, exit with its status.

use clap::Parser;
use imgforge::{cli, commands, redact, term};

fn main() {
    let cli = cli::Cli::parse();
    let json = cli.wants_json();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let message = redact::redact(&e.to_string());
            if json && !commands::JSON_SENT.load(std::sync::atomic::Ordering::Relaxed) {
                // A pipeline that asked for JSON gets JSON on stdout, failure included.
                let (text, hint) = match message.split_once("\n  hint: ") {
                    Some((m, h)) => (m.to_string(), Some(h.to_string())),
                    None => (message.clone(), None),
                };
                let doc = serde_json::json!({
                    "schema": 1,
                    "error": {"message": text, "hint": hint, "exit_code": e.exit_code()},
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("serializable")
                );
            }
            term::error(&message);
            e.exit_code()
        }
    };
    std::process::exit(code);
}

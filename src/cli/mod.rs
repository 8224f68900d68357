//! The command line: clap's types (`args`), one function per subcommand
//! over the stages (`commands`), and the place errors become exit codes and
//! JSON (`error`); `init` writes a starting manifest.

pub mod args;
pub mod commands;
pub(crate) mod error;
pub(crate) mod init;

//! What every stage uses: bounded input reads and atomic writes (`fsutil`),
//! the terminal (`term`), signals, and secret masking (`redact`).

pub mod fsutil;
pub mod redact;
pub mod signals;
pub mod term;

//! imgforge: Azure Batch custom images from a feature manifest, built with Packer.
//!
//! Data flows one way through the stage modules:
//! manifest → catalog → plan → render → packer → capture → replicate → validate
//! → pool snippet; `build` strings them together with a journal, `commands`
//! is the thin layer under the CLI.

pub mod arm;
pub mod bootcheck;
pub mod build;
pub mod capture;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod entra;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod http;
pub mod local;
pub mod manifest;
pub mod packer;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod redact;
pub mod render;
pub mod replicate;
pub mod report;
pub mod signals;
pub mod storage;
pub mod templates;
pub mod term;
pub mod validate;
pub mod vhd;

//! imgforge: Azure Batch custom images from a feature manifest, built with Packer.
//!
//! Data flows one way through the stage modules:
//! manifest → catalog → plan → render → packer (azure-arm or local) → capture
//! → validate image → boot check → publish (managed image / gallery) or
//! replicate (VHDs) → validate copies → pool snippet; `build` strings them together with a journal, `commands`
//! is the thin layer under the CLI.

pub mod arm;
pub mod batch;
pub mod bootcheck;
pub mod build;
pub mod capture;
pub mod catalog;
pub mod clean;
pub mod cli;
pub mod commands;
pub mod compute;
pub mod entra;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod http;
pub mod init;
pub mod local;
pub mod manifest;
pub mod packer;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod publish;
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

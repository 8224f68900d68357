//! What is to be built, decided before anything runs: the manifest (parsed
//! and checked), the catalog (distros, features, ports, checks — one table
//! drives scripts, firewall rules and validation), the plan (the two
//! combined) and what it publishes (`publish`). No I/O beyond reading the
//! manifest and checking its user scripts (`scripts`: `bash -n`,
//! shellcheck). A new distro or feature goes in `catalog`.

pub mod catalog;
pub mod manifest;
pub mod plan;
pub(crate) mod publish;
pub(crate) mod scripts;

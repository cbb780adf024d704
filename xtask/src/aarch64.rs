//! Placeholder: this arch's engineer replaces this module (build, run, scenarios).
#![allow(dead_code)]

use std::path::PathBuf;

use crate::util::{Outcome, RunOpts, Scenario};

pub fn build(_release: bool) -> Result<PathBuf, String> {
    Err("not wired yet".into())
}

pub fn iso(_o: &RunOpts) -> Result<PathBuf, String> {
    Err("not wired yet".into())
}

pub fn run(_o: &RunOpts) -> Result<Outcome, String> {
    Err("not wired yet".into())
}

pub fn qemu(_o: &RunOpts) -> Result<Outcome, String> {
    Err("not wired yet".into())
}

pub fn scenarios() -> Vec<Scenario> {
    Vec::new()
}

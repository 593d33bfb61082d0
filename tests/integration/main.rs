//! Integration tests: real `ham` and `hamctl` binaries, real processes, everything under a
//! temporary directory. One test binary, one module per area (as ripgrep does).
//!
//! Tests wait for the state they expect by polling `hamctl status --json` against a
//! generous deadline; none sleeps to synchronise, and none asserts how fast anything is.

mod util;

#[path = "../support/etcd.rs"]
mod etcd_support;

mod boot;
mod capi;
mod chaos;
mod cluster;
mod conditions;
mod config_errors;
mod control;
mod cores;
mod guardian;
mod hardening;
mod install;
mod instances;
mod lanes;
mod metrics;
mod mts;
mod notify;
mod operate;
mod ordering;
mod output;
mod pss;
mod qnx;
mod qnx_examples;
mod recovery;
mod runtime;
mod sdk;
mod supervision;
mod upgrade;
mod watchdog;

//! Every integration test, in one binary (see tests/Cargo.toml): run one file's
//! tests with `./dev test epics::`.

mod archive;
mod bad_input;
mod bundles;
mod cluster;
mod connection_loss;
mod db;
mod dead_letters;
mod deadlines;
mod email;
mod epics;
mod failover;
mod files;
mod flow;
mod follow;
mod foreign_worker;
mod hostile;
mod k8s_manifests;
mod late_roles;
mod lifecycle;
mod llm_emulator;
mod mail_harness;
mod otlp_receiver;
mod overload;
mod planning;
mod processes;
mod protocol;
mod provisioning;
mod recording;
mod runtime_pools;
mod scaling;
mod schemas;
mod traces;
mod web;
mod workers;

//! Coordination on the mesh (seed 2): epics of parallel tracks whose agents
//! reserve files inside their track's scope and talk through agent mail.
//!
//! - [`epic`]: execution plans (markdown, YAML, JSON): parsing, checks and
//!   compilation into `agent.bead` subtasks;
//! - [`globs`]: file scopes and reservations, with the overlap and cover
//!   questions coordination asks;
//! - [`state`]: an epic's live state, bead claims and file reservations;
//! - [`mail`]: agent mail threads on `MESH_MAIL`;
//! - [`wire`]: the coordination wire types.
//!
//! The chief, the worker's `agent` capability and the CLI use this crate. It
//! builds on `jetmesh-shared` (names, buckets, codec) and knows nothing of
//! plain plans: a plan carries its epic as an opaque value that only this
//! crate reads.

pub mod epic;
pub mod globs;
pub mod mail;
pub mod state;
pub mod wire;

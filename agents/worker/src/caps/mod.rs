//! Built-in capabilities.

pub mod agent;
pub mod date;
pub mod math;
pub mod sim;
pub mod tree;

//! Built-in capabilities.

pub mod date;
pub mod math;
pub mod sim;

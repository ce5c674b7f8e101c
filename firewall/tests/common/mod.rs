//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod lab;
pub mod snapshot;
pub mod specs;

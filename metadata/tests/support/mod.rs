//! Shared helpers of the namespace tests.
#![allow(dead_code)]

pub mod load;
pub mod netns;

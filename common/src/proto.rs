//! The generated gRPC protocol (`nubo.v1`), see `proto/nubo/v1/nubo.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("nubo.v1");

/// The name used for the default project until authentication exists.
pub const DEFAULT_PROJECT: &str = "default";

//! Compiles the gRPC protos into Rust (client and server stubs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/nubo/v1/nubo.proto");
    tonic_prost_build::configure().compile_protos(&["proto/nubo/v1/nubo.proto"], &["proto"])?;
    Ok(())
}

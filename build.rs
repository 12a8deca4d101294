//! Compiles the project's own gRPC API (`proto/registry_gateway/v1`) with a pure-Rust protobuf
//! compiler, so no `protoc` is needed, and writes the descriptor set that gRPC reflection serves
//! for every service on the port (our API, Envoy's ext_proc and ext_authz).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let api = protox::compile(["registry_gateway/v1/policy.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(api)?;

    let all = protox::compile(
        [
            "registry_gateway/v1/policy.proto",
            "envoy/service/ext_proc/v3/external_processor.proto",
            "envoy/service/auth/v3/external_auth.proto",
        ],
        ["proto", "proto/vendor"],
    )?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("reflection_descriptor.bin"), all.encode_to_vec())?;
    Ok(())
}

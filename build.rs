//! Compiles the gateway's `.proto` files (proto/, written from gateway-contract.md) with
//! protox, a pure-Rust protobuf compiler, so building needs no system `protoc`. Client and
//! server code are generated: the server is what the test gateway implements.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/openshell/v1/openshell.proto",
    "proto/openshell/sandbox/v1/sandbox.proto",
    "proto/openshell/inference/v1/inference.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Relay data is passed through without copying.
        .bytes(".openshell.v1.RelayFrame")
        // These carry secrets (provider credentials, API keys): src/gateway/proto.rs gives
        // them a Debug that prints key names only.
        .skip_debug([".openshell.v1.GetSandboxProviderEnvironmentResponse", ".openshell.inference.v1.ResolvedRoute"])
        .compile_fds(descriptors)?;
    Ok(())
}

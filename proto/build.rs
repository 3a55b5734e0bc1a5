//! Compiles `wsroute.proto` with protox (pure Rust), so no `protoc` binary is needed, and writes
//! the encoded file descriptor set that the server's gRPC reflection service hands out.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=wsroute.proto");
    let fds = protox::compile(["wsroute.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("wsroute_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Frames passed through the mesh stay one shared buffer from decode to socket.
        .bytes(".wsroute.v1.ForwardItem.frame")
        .compile_fds(fds)?;
    Ok(())
}

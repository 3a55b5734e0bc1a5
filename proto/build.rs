//! Compiles `wsroute.proto` with protox (pure Rust), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=wsroute.proto");
    let fds = protox::compile(["wsroute.proto"], ["."])?;
    tonic_prost_build::configure()
        // Frames passed through the mesh stay one shared buffer from decode to socket.
        .bytes(".wsroute.v1.ForwardItem.frame")
        .compile_fds(fds)?;
    Ok(())
}

//! Generates the gRPC code with protox (pure Rust): no protoc needed, from a fresh clone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/shuffle/v1/shuffle.proto"], ["proto"])?;
    let mut path = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    path.push("shuffle_descriptor.bin");
    std::fs::write(&path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .bytes(".shuffle.v1.WriteMapOutputRequest.data")
        .bytes(".shuffle.v1.FetchBlocksResponse.data")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

//! Compiles `proto/blockvault/v1/*.proto` with protox (pure Rust; no system `protoc`), writes the
//! descriptor set for server reflection, and generates the tonic client and server code.
//!
//! With the crate's `serde` feature every message also derives `serde::Serialize`, in field
//! order, so clients can print a message without listing its fields by hand. `bytes` fields are
//! paths and are written as (lossy) UTF-8 text.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("blockvault/v1/blockvault.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("blockvault_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .type_attribute(
            ".blockvault.v1",
            "#[cfg_attr(feature = \"serde\", derive(serde::Serialize))]",
        )
        .field_attribute(
            ".blockvault.v1.Volume.path",
            "#[cfg_attr(feature = \"serde\", serde(serialize_with = \"crate::lossy_text\"))]",
        )
        .field_attribute(
            ".blockvault.v1.RegisterVolumeRequest.path",
            "#[cfg_attr(feature = \"serde\", serde(serialize_with = \"crate::lossy_text\"))]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

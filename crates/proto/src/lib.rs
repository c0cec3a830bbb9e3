//! The gRPC API of `blockvaultd`, package `blockvault.v1`, generated at build time from
//! `proto/blockvault/v1/blockvault.proto` by protox and tonic-prost-build (no system `protoc`).
//!
//! The generated code carries the proto file's doc comments; see that file for the mapping of the
//! Cinder Backups API onto gRPC.

/// Messages, clients (`*_client`) and servers (`*_server`) of `blockvault.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("blockvault.v1");
}

/// Writes a `bytes` field (a path) as text, replacing bytes that are not UTF-8 with U+FFFD.
#[cfg(feature = "serde")]
fn lossy_text<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blockvault_descriptor.bin"));

/// The metadata key that carries the caller's token on every call.
pub const AUTH_HEADER: &str = "x-auth-token";

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    /// Every service, RPC, message and field of the API has a doc comment.
    #[test]
    fn every_item_is_documented() {
        let fds = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "blockvault.v1")
            .expect("blockvault.v1 in the descriptor set");
        let info = file.source_code_info.as_ref().expect("source info kept");
        let documented = |path: &[i32]| {
            info.location
                .iter()
                .any(|l| l.path == path && !l.leading_comments().trim().is_empty())
        };
        let mut missing = Vec::new();
        // FileDescriptorProto: message_type = 4, service = 6; DescriptorProto: field = 2;
        // ServiceDescriptorProto: method = 2.
        for (i, m) in file.message_type.iter().enumerate() {
            let i = i as i32;
            if !documented(&[4, i]) {
                missing.push(format!("message {}", m.name()));
            }
            for (j, f) in m.field.iter().enumerate() {
                if !documented(&[4, i, 2, j as i32]) {
                    missing.push(format!("field {}.{}", m.name(), f.name()));
                }
            }
        }
        for (i, s) in file.service.iter().enumerate() {
            let i = i as i32;
            if !documented(&[6, i]) {
                missing.push(format!("service {}", s.name()));
            }
            for (j, r) in s.method.iter().enumerate() {
                if !documented(&[6, i, 2, j as i32]) {
                    missing.push(format!("rpc {}.{}", s.name(), r.name()));
                }
            }
        }
        assert!(file.service.len() >= 3);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }
}

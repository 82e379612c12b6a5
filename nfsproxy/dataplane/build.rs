//! Generates the journal's protobuf messages (proto/journal.proto) with
//! prost-build. protoc comes from the protoc-bin-vendored crate, so a build
//! needs nothing installed beyond cargo; the Python side generates its
//! modules from the same file (proto/generate.py).

fn main() {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("journal.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has no protoc for this platform");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // WRITE data is the big field: a Bytes can share the client's buffer.
    config.bytes([".nfsj.journal.v1.Record.data"]);
    config.compile_protos(&[proto], &[proto_dir]).expect("compiling proto/journal.proto");
}

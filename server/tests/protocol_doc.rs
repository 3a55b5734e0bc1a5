//! `docs/protocol.md` against the code: every frame type a client may send or the server writes,
//! every error code (error frames, rejected acks, HTTP and gRPC refusals), every close code,
//! every flag and its variable, and every gRPC service and method the node serves appear in it.
//! The lists come from the code itself (`FrameErrorCode::ALL`, `SERVER_FRAME_TYPES`, clap's
//! flags, the compiled `.proto`), so a new one the docs lack fails here.

use std::path::Path;

use clap::CommandFactory;
use prost::Message;
use wsroute_server::config::Args;
use wsroute_server::error::{FrameErrorCode, Refusal, RejectCode, close};
use wsroute_server::ws::frame::{CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Each of `names` that `doc` lacks in the form `shown(name)`.
fn missing<'a>(
    doc: &str,
    names: impl IntoIterator<Item = &'a str>,
    shown: impl Fn(&str) -> String,
) -> Vec<String> {
    names
        .into_iter()
        .map(shown)
        .filter(|s| !doc.contains(s.as_str()))
        .collect()
}

fn code(s: &str) -> String {
    format!("`{s}`")
}

#[test]
fn every_frame_type_has_an_example() {
    let doc = doc();
    // An example frame starts with its type: `{"type":"send", ...`.
    let example = |t: &str| format!(r#"{{"type":"{t}""#);
    let lacking = missing(&doc, CLIENT_FRAME_TYPES.iter().copied(), example);
    assert!(
        lacking.is_empty(),
        "client frames with no example: {lacking:?}"
    );
    let lacking = missing(&doc, SERVER_FRAME_TYPES.iter().copied(), example);
    assert!(
        lacking.is_empty(),
        "server frames with no example: {lacking:?}"
    );
}

#[test]
fn every_error_and_close_code_is_documented() {
    let doc = doc();
    let codes = FrameErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .chain(RejectCode::ALL.iter().map(|c| c.as_str()))
        .chain(Refusal::ALL.iter().map(|c| c.as_str()));
    let lacking = missing(&doc, codes, code);
    assert!(
        lacking.is_empty(),
        "error codes not in docs/protocol.md: {lacking:?}"
    );
    let closes: Vec<String> = close::ALL.iter().map(u16::to_string).collect();
    let lacking = missing(&doc, closes.iter().map(String::as_str), code);
    assert!(
        lacking.is_empty(),
        "close codes not in docs/protocol.md: {lacking:?}"
    );
}

#[test]
fn every_flag_and_its_variable_is_documented() {
    let doc = doc();
    let command = Args::command();
    let mut names = Vec::new();
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            names.push(format!("--{long}"));
        }
        if let Some(env) = arg.get_env() {
            names.push(env.to_string_lossy().into_owned());
        }
    }
    // help and version are clap's own.
    names.retain(|n| n != "--help" && n != "--version");
    assert!(names.len() > 40, "clap lists the flags: {names:?}");
    let lacking = missing(&doc, names.iter().map(String::as_str), code);
    assert!(
        lacking.is_empty(),
        "flags not in docs/protocol.md: {lacking:?}"
    );
}

#[test]
fn every_grpc_service_and_method_is_documented() {
    let doc = doc();
    let set = prost_types::FileDescriptorSet::decode(wsroute_proto::v1::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptor set decodes");
    let mut names = Vec::new();
    for file in &set.file {
        for service in &file.service {
            names.push(format!("{}.{}", file.package(), service.name()));
            names.extend(service.method.iter().map(|m| m.name().to_owned()));
        }
    }
    names.extend([
        "grpc.health.v1.Health".to_owned(),
        "grpc.reflection.v1.ServerReflection".to_owned(),
        "grpc.reflection.v1alpha.ServerReflection".to_owned(),
    ]);
    names.extend(wsroute_server::api::health::SERVICES.iter().map(|s| {
        if s.is_empty() {
            r#""""#.to_owned()
        } else {
            (*s).to_owned()
        }
    }));
    let lacking = missing(&doc, names.iter().map(String::as_str), code);
    assert!(
        lacking.is_empty(),
        "gRPC names not in docs/protocol.md: {lacking:?}"
    );
}

//! The standard gRPC services a node serves without credentials, asked the way any gRPC tool
//! asks them (tonic-health's and tonic-reflection's generated clients; Debian ships no
//! `grpcurl`): health `Check` and `Watch`, and reflection's list of services and file
//! descriptors, in both reflection versions.

use prost::Message;
use prost_types::FileDescriptorProto;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A plaintext channel to `url` (`http://host:port`).
pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {url}: {e}"))
}

fn status_of(r: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
}

/// `Health.Check` for `service`, with no credentials.
pub async fn check(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let answer = HealthClient::new(channel).check(request).await?;
    Ok(status_of(answer.get_ref()))
}

/// `Health.Watch` for `service`, with no credentials: the statuses as the server streams them.
pub async fn watch(
    channel: Channel,
    service: &str,
) -> Result<tonic::Streaming<HealthCheckResponse>, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    Ok(HealthClient::new(channel)
        .watch(request)
        .await?
        .into_inner())
}

/// The next status on a watch, `None` when the server ended the stream (an error included).
pub async fn next_status(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
) -> Option<ServingStatus> {
    match stream.message().await {
        Ok(Some(r)) => Some(status_of(&r)),
        Ok(None) | Err(_) => None,
    }
}

/// What one reflection request asks.
pub enum Ask {
    /// `list_services`.
    Services,
    /// `file_containing_symbol`: the file that defines a service, method or message.
    FileOf(String),
}

/// What one reflection request answered.
#[derive(Debug, Default)]
pub struct Answer {
    pub services: Vec<String>,
    pub files: Vec<FileDescriptorProto>,
    /// The error response's code and message, when the server answered with one.
    pub error: Option<(i32, String)>,
}

/// The same request and answer code for both reflection versions (their generated types have
/// the same shape in two packages).
macro_rules! reflect_fn {
    ($name:ident, $($pb:ident)::+, $version:literal) => {
        #[doc = concat!("One request on a `grpc.reflection.", $version, ".ServerReflection` stream, with no credentials.")]
        pub async fn $name(channel: Channel, ask: Ask) -> Result<Answer, tonic::Status> {
            use $($pb)::+::server_reflection_client::ServerReflectionClient;
            use $($pb)::+::server_reflection_request::MessageRequest;
            use $($pb)::+::server_reflection_response::MessageResponse;
            use $($pb)::+::ServerReflectionRequest;
            let message_request = match ask {
                Ask::Services => MessageRequest::ListServices(String::new()),
                Ask::FileOf(symbol) => MessageRequest::FileContainingSymbol(symbol),
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut client = ServerReflectionClient::new(channel);
            let mut answers = client
                .server_reflection_info(futures_util::stream::iter([request]))
                .await?
                .into_inner();
            let response = answers
                .message()
                .await?
                .ok_or_else(|| tonic::Status::internal("the reflection stream ended unanswered"))?;
            let mut answer = Answer::default();
            match response.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    answer.services = list.service.into_iter().map(|s| s.name).collect();
                }
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    for raw in files.file_descriptor_proto {
                        let file = FileDescriptorProto::decode(raw.as_slice())
                            .map_err(|e| tonic::Status::internal(format!("descriptor: {e}")))?;
                        answer.files.push(file);
                    }
                }
                Some(MessageResponse::ErrorResponse(e)) => {
                    answer.error = Some((e.error_code, e.error_message));
                }
                other => {
                    return Err(tonic::Status::internal(format!(
                        "unexpected reflection answer: {other:?}"
                    )));
                }
            }
            Ok(answer)
        }
    };
}

reflect_fn!(reflect_v1, tonic_reflection::pb::v1, "v1");
reflect_fn!(reflect_v1alpha, tonic_reflection::pb::v1alpha, "v1alpha");

//! The connection to a running `blockvaultd`: where it is, the caller's token, the service
//! clients over one channel, and gRPC errors as text (`CODE_NAME: message`).
//!
//! Every call carries the caller's token in the `x-auth-token` metadata entry. The endpoint and
//! the token default to the files the daemon writes into its data directory (`listen.addr`,
//! `admin.token`), so on the daemon's machine `--data-dir` is all that is needed.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use blockvault_proto::v1::{
    backups_client::BackupsClient, jobs_client::JobsClient, maintenance_client::MaintenanceClient,
    policies_client::PoliciesClient, vaults_client::VaultsClient, volumes_client::VolumesClient,
    Tag,
};
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Port the daemon listens on by default.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8750";

/// How to reach the daemon, and how to print answers; shared by every remote command.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Daemon options")]
pub struct Conn {
    /// gRPC endpoint of blockvaultd [default: http:// + the address in <data-dir>/listen.addr,
    /// else http://127.0.0.1:8750].
    #[arg(long, value_name = "URL", env = "BLOCKVAULT_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// Token sent in the x-auth-token metadata entry [default: contents of
    /// <data-dir>/admin.token].
    #[arg(
        long,
        value_name = "T",
        env = "BLOCKVAULT_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// The daemon's data directory on this machine (used to find the endpoint and token).
    #[arg(
        long,
        value_name = "DIR",
        env = "BLOCKVAULT_DATA_DIR",
        default_value = "blockvault-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// Adds the token to every request.
#[derive(Clone)]
pub(crate) struct Auth(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut()
            .insert(blockvault_proto::AUTH_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A channel wrapped with the token interceptor.
pub(crate) type Svc = InterceptedService<Channel, Auth>;

/// The service clients, sharing one connection.
pub(crate) struct Clients {
    pub(crate) volumes: VolumesClient<Svc>,
    pub(crate) backups: BackupsClient<Svc>,
    pub(crate) jobs: JobsClient<Svc>,
    pub(crate) vaults: VaultsClient<Svc>,
    pub(crate) policies: PoliciesClient<Svc>,
    pub(crate) maintenance: MaintenanceClient<Svc>,
}

/// The endpoint URL: `--endpoint`, else `<data-dir>/listen.addr`, else the default port.
fn endpoint_url(conn: &Conn) -> Result<String> {
    let raw = match &conn.endpoint {
        Some(e) => e.trim().to_string(),
        None => {
            let file = conn.data_dir.join("listen.addr");
            match std::fs::read_to_string(&file) {
                Ok(s) => {
                    let s = s.trim();
                    // A wildcard listen address is reached through the loopback interface.
                    match s.parse::<SocketAddr>() {
                        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => {
                            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())).to_string()
                        }
                        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => {
                            SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())).to_string()
                        }
                        _ => s.to_string(),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(DEFAULT_ENDPOINT.to_string())
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            }
        }
    };
    if raw.is_empty() {
        bail!("empty endpoint");
    }
    Ok(if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    })
}

/// The token: `--token`, else the contents of `<data-dir>/admin.token`.
fn token(conn: &Conn) -> Result<String> {
    let t = match &conn.token {
        Some(t) => t.trim().to_string(),
        None => {
            let file = conn.data_dir.join("admin.token");
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "no token: pass --token or set BLOCKVAULT_TOKEN (cannot read {})",
                        file.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    if t.is_empty() {
        bail!("empty token");
    }
    Ok(t)
}

/// Connects to the daemon.
pub(crate) async fn connect(conn: &Conn) -> Result<Clients> {
    let url = endpoint_url(conn)?;
    let token: MetadataValue<Ascii> = token(conn)?
        .parse()
        .map_err(|_| anyhow!("the token contains characters not allowed in gRPC metadata"))?;
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid endpoint {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("UNAVAILABLE: cannot connect to {url}"))?;
    let auth = Auth(token);
    Ok(Clients {
        volumes: VolumesClient::with_interceptor(channel.clone(), auth.clone()),
        backups: BackupsClient::with_interceptor(channel.clone(), auth.clone()),
        jobs: JobsClient::with_interceptor(channel.clone(), auth.clone()),
        vaults: VaultsClient::with_interceptor(channel.clone(), auth.clone()),
        policies: PoliciesClient::with_interceptor(channel.clone(), auth.clone()),
        maintenance: MaintenanceClient::with_interceptor(channel, auth),
    })
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A gRPC status as an error: `CODE_NAME: message`.
pub(crate) fn grpc(s: Status) -> anyhow::Error {
    anyhow!("{}: {}", code_name(s.code()), s.message())
}

/// Parses `key=value`.
pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `key=value` pairs as `Tag`s.
pub(crate) fn tags(kv: Vec<(String, String)>) -> Vec<Tag> {
    kv.into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect()
}

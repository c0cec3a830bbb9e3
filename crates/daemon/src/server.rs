//! Assembling and running the daemon: data directory, store, engine, control plane, gRPC server
//! (with health and reflection), and clean shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use blockvault_engine::{Engine, EngineOptions, RecoverFrom};
use blockvault_proto::v1::backups_server::BackupsServer;
use blockvault_proto::v1::jobs_server::JobsServer;
use blockvault_proto::v1::maintenance_server::MaintenanceServer;
use blockvault_proto::v1::policies_server::PoliciesServer;
use blockvault_proto::v1::vaults_server::VaultsServer;
use blockvault_proto::v1::volumes_server::VolumesServer;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::api::Api;
use crate::auth::{load_or_create_admin_token, Auth, ADMIN_TOKEN_FILE};
use crate::config::{check_private, Config};
use crate::control::{Control, ControlOptions};
use crate::hostpath::HostPaths;

/// File in the data directory holding the address the server bound.
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// Name of the file holding the Cinder REST listener's bound address.
pub const CINDER_ADDR_FILE: &str = "cinder.addr";
/// Name of the file holding the metrics listener's bound address.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// The daemon's listening sockets, bound before it opens its data so that a port in use fails
/// the start at once.
pub struct Listeners {
    /// gRPC (`listen`).
    pub grpc: TcpListener,
    /// Cinder REST (`[cinder] listen`), when enabled.
    pub cinder: Option<TcpListener>,
    /// Prometheus metrics (`[metrics] listen`), when enabled.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener the config asks for (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let cinder = match config.cinder.enabled {
            true => Some(bind(config.cinder.listen, "Cinder REST", "[cinder] listen").await?),
            false => None,
        };
        let metrics = match config.metrics.enabled {
            true => Some(bind(config.metrics.listen, "metrics", "[metrics] listen").await?),
            false => None,
        };
        Ok(Listeners {
            grpc,
            cinder,
            metrics,
        })
    }
}

async fn bind(addr: SocketAddr, what: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: listening on {addr} ({key})"))
}

/// How long shutdown waits for suspended jobs to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long `serve` waits, after the jobs stopped, for the last handles to the store to drop.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// An opened daemon, ready to serve.
pub struct Daemon {
    control: Arc<Control>,
    auth: Auth,
    config: Config,
    admin_token: String,
}

impl Daemon {
    /// Opens (creating on first start) the data directory, store, keys and control database.
    /// Blocking.
    pub fn open(mut config: Config) -> Result<Daemon> {
        // Paths recorded in rows (volumes created by restores) must not depend on the working
        // directory of a later start.
        config.data_dir = std::path::absolute(&config.data_dir)?;
        if let Some(r) = &config.restore_dir {
            config.restore_dir = Some(std::path::absolute(r)?);
        }
        let dir = &config.data_dir;
        private_dir(dir).with_context(|| format!("data directory {}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join(LISTEN_ADDR_FILE));
        let admin_token = load_or_create_admin_token(dir)
            .with_context(|| format!("admin token in {}", dir.display()))?;
        check_private(&dir.join(ADMIN_TOKEN_FILE), "token file").map_err(anyhow::Error::msg)?;
        let store_dir = dir.join("store");
        let key_file = std::path::absolute(config.key_file())?;
        if key_file.exists() {
            check_private(&key_file, "key file").map_err(anyhow::Error::msg)?;
        }
        if let Some(tls) = &config.tls {
            check_private(&tls.key_file, "TLS key file").map_err(anyhow::Error::msg)?;
        }
        let engine_opts = EngineOptions {
            threads: config.engine.threads,
            max_bytes_in_flight: config.engine.max_in_flight_mib << 20,
            key_file: Some(key_file.clone()),
            nice: config.engine.nice,
        };
        let mut recovered = None;
        let engine = if store_dir.join(blockvault_store::CONFIG_FILE).exists() {
            Engine::open(&store_dir, engine_opts)
                .with_context(|| format!("opening the store in {}", store_dir.display()))?
        } else {
            let backend = config.store_config().backend;
            if backend
                .holds_store(&store_dir)
                .with_context(|| format!("looking for a store in {}", backend.describe()))?
            {
                // A lost node's replacement: its store comes back from the bucket.
                anyhow::ensure!(
                    key_file.exists(),
                    "{} holds a blockvault store: put its master key at {} (mode 0600) to \
                     recover it",
                    backend.describe(),
                    key_file.display()
                );
                let (engine, report) = Engine::recover(
                    &store_dir,
                    RecoverFrom::Backend(backend.clone()),
                    Some(&key_file),
                    engine_opts,
                )
                .with_context(|| format!("recovering the store from {}", backend.describe()))?;
                tracing::warn!(from = %backend.describe(), backups = report.backups.len(),
                               damaged = report.backups_damaged.len(), seconds = report.seconds,
                               "recovered the chunk store from its bucket");
                recovered = Some(report);
                engine
            } else {
                Engine::init(&store_dir, config.store_config(), Some(&key_file))
                    .with_context(|| format!("creating the store in {}", store_dir.display()))?;
                tracing::info!(store = %store_dir.display(), "created the chunk store");
                Engine::open(&store_dir, engine_opts)
                    .with_context(|| format!("opening the store in {}", store_dir.display()))?
            }
        };
        let record_key = blockvault_engine::read_key_file(&key_file)
            .with_context(|| format!("master key {}", key_file.display()))?
            .record_mac_key();
        let restore_dir = config.restore_dir();
        std::fs::create_dir_all(&restore_dir)
            .with_context(|| format!("restore directory {}", restore_dir.display()))?;
        let mut forbidden = vec![dir.clone(), key_file.clone()];
        if let Some(tls) = &config.tls {
            forbidden.push(std::path::absolute(&tls.key_file)?);
        }
        let opts = ControlOptions {
            concurrency: config.jobs.concurrency,
            host: HostPaths::new(&config.volumes.allowed_paths, &restore_dir, &forbidden),
            restore_dir,
            max_queued: config.jobs.max_queued,
            max_vault_resources: config.vaults.max_resources,
            dedup: config.volumes.dedup,
            record_key: Some(record_key),
            object_lock: crate::objectlock::ObjectLockOptions {
                mode: config.vaults.object_lock_mode,
                days: config.vaults.object_lock_days,
            },
        };
        let control = Control::open(Arc::new(engine), &dir.join("control"), opts)
            .map_err(anyhow::Error::msg)
            .context("opening the control database")?;
        if let Some(report) = recovered {
            let n = control
                .adopt_recovered(&report.backups)
                .map_err(anyhow::Error::msg)
                .context("writing the recovered backups' rows")?;
            tracing::warn!(rows = n, "backup rows rebuilt from the catalog");
        }
        // A data directory from before annotations: put every row in the catalog, once.
        let n = control
            .annotate_all(dir)
            .map_err(anyhow::Error::msg)
            .context("writing the backups' rows to the catalog")?;
        if n > 0 {
            tracing::info!(rows = n, "backup rows written to the catalog");
        }
        let auth = Auth::new(&config.tokens, &admin_token);
        Ok(Daemon {
            control,
            auth,
            config,
            admin_token,
        })
    }

    /// The control plane.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The generated admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Serves on `listeners` until `shutdown` completes, then shuts down cleanly: stops
    /// accepting, suspends running jobs back to the queue, flushes the databases and closes the
    /// store.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Listeners {
            grpc: listener,
            cinder,
            metrics,
        } = listeners;
        let addr = listener.local_addr()?;
        write_listen_addr(&self.config.data_dir, LISTEN_ADDR_FILE, addr)?;
        let (rest_stop, rest_stopped) = tokio::sync::watch::channel(false);
        let rest = match cinder {
            Some(l) => {
                let a = l.local_addr()?;
                write_listen_addr(&self.config.data_dir, CINDER_ADDR_FILE, a)?;
                if self.config.cinder.noauth {
                    tracing::warn!(addr = %a, "Cinder REST in noauth mode: any caller may act \
                        in any project by naming it in X-Auth-Token; use only on a test bed");
                }
                tracing::info!(addr = %a, "Cinder REST front end serving");
                let router = crate::cinder::router(
                    self.control.clone(),
                    self.auth.clone(),
                    self.config.cinder.noauth,
                );
                let mut stopped = rest_stopped;
                Some(tokio::spawn(serve_http(l, router, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })))
            }
            None => None,
        };
        let scrape = match metrics {
            Some(l) => {
                let a = l.local_addr()?;
                write_listen_addr(&self.config.data_dir, METRICS_ADDR_FILE, a)?;
                tracing::info!(addr = %a, "metrics serving at /metrics");
                let mut stopped = rest_stop.subscribe();
                Some(tokio::spawn(serve_http(
                    l,
                    crate::scrape::router(self.control.clone()),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<VolumesServer<Api>>().await;
        reporter.set_serving::<BackupsServer<Api>>().await;
        reporter.set_serving::<JobsServer<Api>>().await;
        reporter.set_serving::<VaultsServer<Api>>().await;
        reporter.set_serving::<PoliciesServer<Api>>().await;
        reporter.set_serving::<MaintenanceServer<Api>>().await;
        // Reflection in both versions: grpcurl speaks v1, Python's grpcio-reflection and older
        // tools only v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blockvault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blockvault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("reflection service (v1alpha)")?;
        let api = Api::new(self.control.clone());
        let auth = self.auth.clone();
        let check = move |req| auth.intercept(req);
        let limits = &self.config.server;
        let max_msg = limits.max_message_bytes;
        let mut builder = Server::builder()
            .layer(crate::grpc_metrics::GrpcMetricsLayer::new(
                self.control.metrics().clone(),
                crate::grpc_metrics::served_methods(&[
                    blockvault_proto::FILE_DESCRIPTOR_SET,
                    tonic_health::pb::FILE_DESCRIPTOR_SET,
                    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ]),
            ))
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_seconds)))
            .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_seconds)));
        if let Some(tls) = &self.config.tls {
            let cert = std::fs::read(&tls.cert_file)
                .with_context(|| format!("TLS certificate {}", tls.cert_file.display()))?;
            let key = std::fs::read(&tls.key_file)
                .with_context(|| format!("TLS key {}", tls.key_file.display()))?;
            // rustls has two crypto providers compiled in (ring for tonic, aws-lc-rs for the S3
            // client), so it cannot pick one by itself: the gRPC server uses ring. An error only
            // means another part of the process installed one first, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .context("TLS configuration")?;
        }
        // Every service decodes at most `max_message_bytes` per request message.
        macro_rules! limited {
            ($server:ident) => {
                tonic::service::interceptor::InterceptedService::new(
                    $server::new(api.clone()).max_decoding_message_size(max_msg),
                    check.clone(),
                )
            };
        }
        let router = builder
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(limited!(VolumesServer))
            .add_service(limited!(BackupsServer))
            .add_service(limited!(JobsServer))
            .add_service(limited!(VaultsServer))
            .add_service(limited!(PoliciesServer))
            .add_service(limited!(MaintenanceServer));

        let control = self.control.clone();
        tokio::task::spawn_blocking({
            let c = control.clone();
            move || c.jobs().dispatch()
        })
        .await?;
        let saver = tokio::spawn({
            let c = control.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let c = c.clone();
                    let _ = tokio::task::spawn_blocking(move || c.jobs().save_progress()).await;
                }
            }
        });
        let policies = tokio::spawn(crate::runner::PolicyRunner::new(control.clone()).run());
        // GC and the scheduled verify take turns: a verify must not read a pack GC is removing.
        let maintenance = Arc::new(tokio::sync::Mutex::new(()));
        let gc = tokio::spawn(scheduled_gc(
            control.clone(),
            self.config.gc.interval_seconds,
            maintenance.clone(),
        ));
        let verify = tokio::spawn(crate::verify::scheduled_verify(
            control.clone(),
            self.config.verify.clone(),
            self.config.data_dir.clone(),
            maintenance,
        ));
        let locks = tokio::spawn(crate::lockjob::keep_locked_vaults(control.clone()));
        let keep_days = self.config.jobs.keep_finished_days;
        let pruner = tokio::spawn({
            let c = control.clone();
            async move {
                loop {
                    let c2 = c.clone();
                    let _ = tokio::task::spawn_blocking(move || c2.jobs().prune(keep_days)).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
        });
        tracing::info!(%addr, tls = self.config.tls.is_some(), "blockvaultd serving");
        let stopping = {
            let c = control.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new calls, suspending running jobs");
                reporter.set_not_serving::<VolumesServer<Api>>().await;
                reporter.set_not_serving::<BackupsServer<Api>>().await;
                reporter.set_not_serving::<JobsServer<Api>>().await;
                reporter.set_not_serving::<VaultsServer<Api>>().await;
                reporter.set_not_serving::<PoliciesServer<Api>>().await;
                reporter.set_not_serving::<MaintenanceServer<Api>>().await;
                let _ = rest_stop.send(true);
                c.jobs().begin_shutdown();
            }
        };
        let served = router
            .serve_with_incoming_shutdown(
                // No Nagle: small answers must not wait for the peer's delayed ACK (~40 ms).
                tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                stopping,
            )
            .await;
        saver.abort();
        policies.abort();
        gc.abort();
        verify.abort();
        locks.abort();
        pruner.abort();
        for (what, task) in [("Cinder REST", rest), ("metrics", scrape)] {
            let Some(task) = task else { continue };
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "{what} server"),
                Err(e) => tracing::warn!(error = %e, "{what} task"),
            }
        }
        let engine = control.engine().clone();
        tokio::task::spawn_blocking(move || control.jobs().finish_shutdown(SHUTDOWN_WAIT)).await?;
        drop(self);
        release_store(engine, RELEASE_WAIT).await;
        tracing::info!("blockvaultd stopped");
        served.context("gRPC server")
    }
}

/// Runs GC every `interval` seconds (never when 0). GC is safe alongside everything else (see
/// ARCHITECTURE.md); a run that fails is logged and tried again at the next interval.
async fn scheduled_gc(control: Arc<Control>, interval: u64, turn: Arc<tokio::sync::Mutex<()>>) {
    if interval == 0 {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if control.jobs().is_shutting_down() {
            return;
        }
        let _turn = turn.lock().await;
        let c = control.clone();
        match tokio::task::spawn_blocking(move || c.gc()).await {
            Ok(Ok(r)) => tracing::info!(
                reclaimed = r.reclaimed_bytes(),
                chunks_removed = r.chunks_removed,
                packs_deleted = r.packs_deleted,
                packs_rewritten = r.packs_rewritten,
                "scheduled gc"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "scheduled gc failed"),
            Err(e) => tracing::warn!(error = %e, "scheduled gc task failed"),
        }
    }
}

/// Serves an HTTP/1.1 `router` (Cinder REST, metrics) on `listener` until `shutdown` completes.
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Waits (up to `wait`) until `engine` is the last handle to the store, then drops it, which
/// closes the store and releases its lock. A job's thread, or a blocking call of a background
/// task that was aborted mid-call, still holds a handle for a moment after it has reported
/// done; without the wait, `serve` could return while the store is still open, and opening it
/// again right away (a restart in the same process, `blockvault local`) would find it busy.
async fn release_store(engine: Arc<blockvault_engine::Engine>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while Arc::strong_count(&engine) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                holders = Arc::strong_count(&engine) - 1,
                "the store stays open after shutdown: something still holds it"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(engine);
}

/// Creates `dir` (and parents) and makes it 0700: it holds the store, keys and tokens.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        // A new directory's entry is durable only once its parent is fsynced.
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(dir = %dir.display(), "data directory made private (0700)");
    }
    Ok(())
}

fn write_listen_addr(dir: &Path, file: &str, addr: SocketAddr) -> Result<()> {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, dir.join(file))?;
    Ok(())
}

/// A daemon running on a tokio task (tests, benches, embedding).
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The Cinder REST address, when enabled.
    pub cinder_addr: Option<SocketAddr>,
    /// The metrics address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin token.
    pub admin_token: String,
    /// The control plane (for inspection).
    pub control: Arc<Control>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// `http://addr`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the daemon down cleanly and waits for it.
    /// When it returns, the store is closed unless the caller still holds `control`.
    pub async fn stop(self) -> Result<()> {
        let Running {
            stop,
            task,
            control,
            ..
        } = self;
        drop(control);
        if let Some(s) = stop {
            let _ = s.send(());
        }
        task.await?
    }
}

/// Opens and starts a daemon on `config.listen` and the other listeners it enables (port 0 picks
/// a free port).
pub async fn start(config: Config) -> Result<Running> {
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.grpc.local_addr()?;
    let cinder_addr = listeners
        .cinder
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let metrics_addr = listeners
        .metrics
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let daemon = tokio::task::spawn_blocking(move || Daemon::open(config)).await??;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let admin_token = daemon.admin_token().to_string();
    let control = daemon.control().clone();
    let task = tokio::spawn(daemon.serve(listeners, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        cinder_addr,
        metrics_addr,
        admin_token,
        control,
        stop: Some(tx),
        task,
    })
}

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

/// How long shutdown waits for suspended jobs to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

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

    /// Serves on `listener` until `shutdown` completes, then shuts down cleanly: stops accepting,
    /// suspends running jobs back to the queue, and flushes the databases.
    ///
    /// `cinder` is the Cinder REST listener, when `[cinder]` is enabled (see [`bind_cinder`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        cinder: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
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
                Some(tokio::spawn(crate::cinder::serve(l, router, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })))
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
        if let Some(r) = rest {
            match r.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "Cinder REST server"),
                Err(e) => tracing::warn!(error = %e, "Cinder REST task"),
            }
        }
        tokio::task::spawn_blocking(move || control.jobs().finish_shutdown(SHUTDOWN_WAIT)).await?;
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
        match tokio::task::spawn_blocking(move || c.engine().gc()).await {
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

/// Binds the Cinder REST listener when `[cinder]` is enabled.
pub async fn bind_cinder(config: &Config) -> Result<Option<TcpListener>> {
    if !config.cinder.enabled {
        return Ok(None);
    }
    let a = config.cinder.listen;
    let l = TcpListener::bind(a)
        .await
        .with_context(|| format!("Cinder REST: listening on {a} ([cinder] listen)"))?;
    Ok(Some(l))
}

/// A daemon running on a tokio task (tests, benches, embedding).
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The Cinder REST address, when enabled.
    pub cinder_addr: Option<SocketAddr>,
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
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await?
    }
}

/// Opens and starts a daemon on `config.listen` (port 0 picks a free port).
pub async fn start(config: Config) -> Result<Running> {
    let listen = config.listen;
    let cinder = bind_cinder(&config).await?;
    let cinder_addr = cinder.as_ref().map(|l| l.local_addr()).transpose()?;
    let daemon = tokio::task::spawn_blocking(move || Daemon::open(config)).await??;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let admin_token = daemon.admin_token().to_string();
    let control = daemon.control().clone();
    let task = tokio::spawn(daemon.serve(listener, cinder, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        cinder_addr,
        admin_token,
        control,
        stop: Some(tx),
        task,
    })
}

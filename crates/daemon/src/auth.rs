//! Tokens, callers and what they may do.
//!
//! A call carries its token in the `x-auth-token` metadata entry. The interceptor looks the token
//! up (by its BLAKE3 hash, so the comparison does not leak the token through timing) and attaches
//! the [`Caller`] to the request. Records of another project answer NOT_FOUND, as if they did not
//! exist; a reader that tries to write gets PERMISSION_DENIED.
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use tonic::{Request, Status};

use crate::config::{Role, TokenConfig};
use crate::error::Error;

/// Name of the generated admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Project of the generated admin token.
pub const ADMIN_PROJECT: &str = "admin";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub project: String,
    pub user: String,
    pub role: Role,
}

impl Caller {
    /// May the caller see records of `project`? (Admins see every project.)
    pub fn sees(&self, project: &str) -> bool {
        self.role == Role::Admin || self.project == project
    }

    /// Refuses readers.
    pub fn must_write(&self) -> Result<(), Error> {
        if self.role == Role::Reader {
            return Err(Error::permission_denied(format!(
                "user {} has the reader role in project {} and may not change anything",
                self.user, self.project
            )));
        }
        Ok(())
    }

    /// Refuses `all_tenants` for non-admins.
    pub fn may_list_all(&self, all_tenants: bool) -> Result<(), Error> {
        if all_tenants && self.role != Role::Admin {
            return Err(Error::permission_denied("all_tenants is for admins only"));
        }
        Ok(())
    }
}

/// Token lookup.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<HashMap<[u8; 32], Caller>>,
}

impl Auth {
    /// Builds the table from the config's tokens plus the admin token.
    pub fn new(tokens: &[TokenConfig], admin_token: &str) -> Auth {
        let mut m = HashMap::new();
        for t in tokens {
            m.insert(
                digest(&t.token),
                Caller {
                    project: t.project.clone(),
                    user: t.user.clone(),
                    role: t.role,
                },
            );
        }
        m.insert(
            digest(admin_token),
            Caller {
                project: ADMIN_PROJECT.into(),
                user: "admin".into(),
                role: Role::Admin,
            },
        );
        Auth {
            tokens: Arc::new(m),
        }
    }

    /// The caller a token stands for, if it is known (compared by hash).
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        self.tokens.get(&digest(token.trim())).cloned()
    }

    /// The tonic interceptor: attaches the caller or refuses the call.
    #[allow(clippy::result_large_err)]
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get(blockvault_proto::AUTH_HEADER)
            .ok_or_else(|| Status::unauthenticated("missing x-auth-token"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("x-auth-token is not valid text"))?;
        let caller = self
            .lookup(token)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The caller attached by the interceptor.
#[allow(clippy::result_large_err)]
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller on the request"))
}

/// Reads the admin token from `dir`, creating it (mode 0600, random) on first start.
pub fn load_or_create_admin_token(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let tmp = dir.join(format!("{ADMIN_TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_admin_token(d.path()).unwrap();
        let b = load_or_create_admin_token(d.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(d.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn interceptor_maps_tokens_to_callers() {
        let auth = Auth::new(
            &[TokenConfig {
                token: "reader-token-0123456789".into(),
                project: "p".into(),
                user: "r".into(),
                role: Role::Reader,
            }],
            "admin-token-0123456789",
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("x-auth-token", "reader-token-0123456789".parse().unwrap());
        let req = auth.intercept(req).unwrap();
        let c = caller(&req).unwrap();
        assert_eq!(c.role, Role::Reader);
        assert!(c.must_write().is_err());
        assert!(c.sees("p") && !c.sees("q"));

        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("x-auth-token", "nope".parse().unwrap());
        assert_eq!(
            auth.intercept(bad).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.intercept(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}

//! API tokens: `psb_` + 256 random bits (base64url). Only the SHA-256 of a token is stored; the
//! token itself is shown once, when it is created. A token's name is its identity: it owns the
//! invocations and batches it submits and appears in the audit, so names are never reused.

use super::pattern::Patterns;
use super::policy::{Constraint, Principal, Role};
use crate::config::StoreConfig;
use crate::store::{now_ms, Store, StoreError, TokenRow};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const TOKEN_PREFIX: &str = "psb_";

/// Name of the bootstrap admin token and of its file in the data directory.
pub const BOOTSTRAP_NAME: &str = "bootstrap";
pub const TOKEN_FILE: &str = "api-token";

pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256. Unsalted on purpose: a token carries 256 random bits, so its digest cannot be
/// reversed, and lookup by digest needs a deterministic value.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub name: String,
    pub role: Role,
    pub tenants: Patterns,
    pub cmdlets: Patterns,
    pub constraints: Vec<Constraint>,
}

impl TokenSpec {
    pub fn parse(name: &str, role: &str, tenants: &str, cmdlets: &str, constraints: &[String]) -> Result<Self, String> {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(format!("token name '{name}' must be 1 to 64 letters, digits, '-', '_', '.' or '@'"));
        }
        Ok(TokenSpec {
            name: name.to_string(),
            role: Role::parse(role)?,
            tenants: Patterns::parse(tenants).map_err(|e| format!("tenants: {e}"))?,
            cmdlets: Patterns::parse(cmdlets).map_err(|e| format!("cmdlets: {e}"))?,
            constraints: constraints.iter().map(|c| Constraint::parse(c)).collect::<Result<_, _>>()?,
        })
    }

    fn row(&self, digest: String) -> TokenRow {
        TokenRow {
            name: self.name.clone(),
            token_hash: digest,
            role: self.role.as_str().to_string(),
            tenants: self.tenants.to_string(),
            cmdlets: self.cmdlets.to_string(),
            constraints: self.constraints.iter().map(|c| c.to_string()).collect(),
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        }
    }
}

/// The caller a stored token stands for.
pub fn principal(row: &TokenRow) -> Result<Principal, String> {
    let spec = TokenSpec::parse(&row.name, &row.role, &row.tenants, &row.cmdlets, &row.constraints)?;
    Ok(Principal {
        name: spec.name,
        role: spec.role,
        tenants: spec.tenants,
        cmdlets: spec.cmdlets,
        constraints: spec.constraints,
    })
}

/// Stores a new token and returns it — the only time it is ever seen.
pub async fn issue(store: &Store, spec: &TokenSpec) -> Result<String, StoreError> {
    let token = generate();
    store.create_token(&spec.row(digest(&token))).await?;
    Ok(token)
}

/// The node's data directory: `store.data_dir` if set, else the directory that holds the SQLite
/// file (`sqlite://./data/psbroker.db` → `./data`), `./data` with PostgreSQL, and `None` for an
/// in-memory database.
pub fn data_dir(store: &StoreConfig) -> Option<PathBuf> {
    if let Some(dir) = &store.data_dir {
        return Some(dir.clone());
    }
    if crate::store::is_postgres_url(&store.url) {
        return Some(PathBuf::from("./data"));
    }
    sqlite_dir(&store.url)
}

fn sqlite_dir(store_url: &str) -> Option<PathBuf> {
    if store_url.contains(":memory:") {
        return None;
    }
    let path = store_url.strip_prefix("sqlite://").or_else(|| store_url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    let parent = Path::new(path).parent()?;
    Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() })
}

/// Where the bootstrap token of the store is written.
pub fn token_file(store: &StoreConfig) -> Option<PathBuf> {
    data_dir(store).map(|d| d.join(TOKEN_FILE))
}

/// Secure by default: when the database has no token at all (none ever created, revoked ones
/// count), creates an admin token named `bootstrap` and writes it to `<data dir>/api-token`
/// with mode 0600. Returns the file written, if any. The token itself is never logged.
pub async fn ensure_bootstrap(store: &Store, config: &StoreConfig) -> anyhow::Result<Option<PathBuf>> {
    if store.token_count().await? > 0 {
        return Ok(None);
    }
    let Some(file) = token_file(config) else {
        tracing::warn!("no API token exists and the store is in memory: no bootstrap token file can be written");
        return Ok(None);
    };
    let spec = TokenSpec::parse(BOOTSTRAP_NAME, "admin", "*", "*", &[]).expect("bootstrap spec is valid");
    let token = generate();
    write_private(&file, &format!("{token}\n"))?;
    if let Err(e) = store.create_token(&spec.row(digest(&token))).await {
        let _ = std::fs::remove_file(&file);
        return Err(e.into());
    }
    Ok(Some(file))
}

/// Writes a file only its owner can read (mode 0600 on Unix), replacing any old one so an old
/// file's looser mode is not kept.
pub fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let (a, b) = (generate(), generate());
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43, "{a}");
        assert_ne!(a, b);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn data_dir_is_the_sqlite_files_directory() {
        let dir = |url: &str| data_dir(&StoreConfig { url: url.into(), ..StoreConfig::default() });
        assert_eq!(dir("sqlite://./data/psbroker.db"), Some(PathBuf::from("./data")));
        assert_eq!(dir("sqlite:///var/lib/psbroker/x.db?mode=rwc"), Some(PathBuf::from("/var/lib/psbroker")));
        assert_eq!(dir("sqlite://x.db"), Some(PathBuf::from(".")));
        assert_eq!(dir("sqlite::memory:"), None);
        assert_eq!(dir("postgres://db.example/psbroker"), Some(PathBuf::from("./data")));
        let set = StoreConfig {
            url: "postgres://db.example/psbroker".into(),
            data_dir: Some("/var/lib/x".into()),
            ..StoreConfig::default()
        };
        assert_eq!(data_dir(&set), Some(PathBuf::from("/var/lib/x")));
    }

    #[test]
    fn specs_validate_names_roles_and_patterns() {
        assert!(TokenSpec::parse("ci-bot", "operator", "*.onmicrosoft.com", "Get-*,Set-*", &[]).is_ok());
        assert!(TokenSpec::parse("bad name", "admin", "*", "*", &[]).is_err());
        assert!(TokenSpec::parse("x", "root", "*", "*", &[]).is_err());
        assert!(TokenSpec::parse("x", "admin", "", "*", &[]).is_err());
        assert!(TokenSpec::parse("x", "admin", "*", "*", &["Identity".into()]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/api-token");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, "new\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
    }
}

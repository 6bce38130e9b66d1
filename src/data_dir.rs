//! The daemon's files are private: the database (and SQLite's `-wal`/`-shm`, created later by
//! SQLite itself), `api-token`, `node-id` and keys are 0600 in a 0700 directory. The process
//! umask (0077, set first thing by the binary) covers every file created later; the directory
//! and files an older release left readable are tightened at start.

use std::path::Path;

/// Sets the process umask to 0077, so every file and directory the process creates from now on
/// is its owner's only. Returns the previous mask.
pub fn restrict_umask() -> u32 {
    #[cfg(unix)]
    {
        use rustix::fs::Mode;
        rustix::process::umask(Mode::from_raw_mode(0o077)).bits()
    }
    #[cfg(not(unix))]
    0
}

/// Creates `dir` (and its parents) as 0700, or tightens an existing one (unless it is the
/// working directory itself) to 0700 and the daemon's files in it (`files`, and each one's
/// SQLite companions `-wal`, `-shm`, `-journal`) to 0600, saying so in the log.
pub fn prepare(dir: &Path, files: &[&str]) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    #[cfg(unix)]
    {
        let cwd = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok());
        if dir.canonicalize().ok() != cwd {
            tighten(dir, 0o700)?;
        }
        for name in files {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let path = dir.join(format!("{name}{suffix}"));
                if path.is_file() {
                    tighten(&path, 0o600)?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = files;
    Ok(())
}

/// Drops group and other permissions from `path` when it has any.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::warn!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "tightened permissions");
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_loose_directory_and_its_files_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("psbroker.db"), "x").unwrap();
        std::fs::set_permissions(dir.join("psbroker.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare(&dir, &["psbroker.db"]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&dir.join("psbroker.db"))), (0o700, 0o600));
        let fresh = root.path().join("a/b");
        prepare(&fresh, &[]).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}

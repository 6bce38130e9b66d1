//! Python virtualenvs for the tests that drive psbroker with Python tools (pypsrp, schemathesis).
//!
//! Each tool gets its own venv, `<target>/pyenv/<name>` (or `$PSBROKER_PYENV/<name>`), created
//! with `python3 -m venv` (or `$PSBROKER_PYTHON -m venv`) and filled from PyPI with exactly the
//! pinned requirements the first time; later runs reuse it while every pin is installed. Needs
//! `python3` with the `venv` module (Debian: `python3-venv`; `.ci/run` installs it) and access to
//! PyPI the first time. A missing or broken Python is a test failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PyEnv {
    pub dir: PathBuf,
    pub python: PathBuf,
}

fn venvs_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PSBROKER_PYENV") {
        return PathBuf::from(dir);
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("pyenv")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Whether every `name==version` requirement is installed at exactly that version.
fn has_all(python: &Path, requirements: &[&str]) -> bool {
    const CHECK: &str = "import importlib.metadata as m, sys\n\
        for r in sys.argv[1:]:\n    name, version = r.split('==')\n    \
        try:\n        ok = m.version(name) == version\n    except m.PackageNotFoundError:\n        ok = False\n    \
        if not ok:\n        sys.exit(1)\n";
    python.exists()
        && Command::new(python).args(["-c", CHECK]).args(requirements).output().is_ok_and(|o| o.status.success())
}

/// The venv `name` with every requirement (each pinned as `package==version`) installed,
/// creating or repairing it as needed.
pub fn venv(name: &str, requirements: &[&str]) -> PyEnv {
    for r in requirements {
        assert!(r.split_once("==").is_some_and(|(n, v)| !n.is_empty() && !v.is_empty()), "pin '{r}' as name==version");
    }
    // Tests of one binary run in parallel and may ask for the same venv: one builds it, the
    // others wait and find it done (two `python -m venv` on one folder break each other).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = venvs_root().join(name);
    let python = venv_python(&dir);
    if !has_all(&python, requirements) {
        let base = std::env::var("PSBROKER_PYTHON").unwrap_or_else(|_| "python3".to_string());
        if !python.exists() {
            run(
                Command::new(&base).args(["-m", "venv"]).arg(&dir),
                "creating the Python virtualenv (needs python3 with the venv module, e.g. Debian's python3-venv)",
            );
        }
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"])
                .args(requirements),
            &format!("pip install {}", requirements.join(" ")),
        );
        assert!(has_all(&python, requirements), "{} still not installed in {}", requirements.join(" "), dir.display());
    }
    PyEnv { dir, python }
}

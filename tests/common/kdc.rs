//! A real MIT KDC for the Kerberos tests (tests/kerberos.rs, and pypsrp's Kerberos logon in
//! tests/pypsrp_interop.rs): `krb5kdc` (Debian `krb5-kdc`; principals made with `kadmin.local`
//! from `krb5-admin-server`) in a temporary directory on loopback with its own realm, users
//! `alice` (password `pa`) and `bob` (`pb`), and the service principal `HTTP/localhost` with a
//! keytab. A missing KDC is a test failure naming the package, never a skip.

use super::tools::{free_port, require, run_ok, KillOnDrop};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const REALM: &str = "PSB.TEST";

/// An MIT KDC for realm PSB.TEST on a loopback port, killed with the test.
pub struct Kdc {
    _process: KillOnDrop,
    pub port: u16,
    pub keytab: PathBuf,
    dir: tempfile::TempDir,
}

fn kadmin(dir: &Path, query: &str) {
    let kadmin = require("kadmin.local", "PSBROKER_KADMIN_LOCAL", "krb5-admin-server");
    run_ok(
        std::process::Command::new(kadmin)
            .env("KRB5_CONFIG", dir.join("krb5.conf"))
            .env("KRB5_KDC_PROFILE", dir.join("kdc.conf"))
            .args(["-r", REALM, "-q", query]),
        &format!("kadmin.local -q {query:?}"),
    );
}

pub fn start_kdc() -> Kdc {
    let krb5kdc = require("krb5kdc", "PSBROKER_KRB5KDC", "krb5-kdc");
    let kdb5_util = require("kdb5_util", "PSBROKER_KDB5_UTIL", "krb5-kdc");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(
        d.join("krb5.conf"),
        format!(
            "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n udp_preference_limit = 1\n\
             [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
        ),
    )
    .unwrap();
    // sspi's client insists on pre-authentication (as Active Directory does): every principal
    // requires it.
    std::fs::write(
        d.join("kdc.conf"),
        format!(
            "[kdcdefaults]\n kdc_ports = {port}\n kdc_tcp_ports = {port}\n\
             [realms]\n {REALM} = {{\n  database_name = {db}\n  key_stash_file = {stash}\n  acl_file = {acl}\n  \
             supported_enctypes = aes256-cts-hmac-sha1-96:normal\n  default_principal_flags = +preauth\n }}\n\
             [logging]\n kdc = FILE:{log}\n",
            db = d.join("principal").display(),
            stash = d.join("stash").display(),
            acl = d.join("kadm5.acl").display(),
            log = d.join("kdc.log").display(),
        ),
    )
    .unwrap();
    run_ok(
        std::process::Command::new(kdb5_util)
            .env("KRB5_CONFIG", d.join("krb5.conf"))
            .env("KRB5_KDC_PROFILE", d.join("kdc.conf"))
            .args(["create", "-s", "-r", REALM, "-P", "master-password-of-the-test"]),
        "kdb5_util create",
    );
    kadmin(d, &format!("addprinc -pw pa alice@{REALM}"));
    kadmin(d, &format!("addprinc -pw pb bob@{REALM}"));
    kadmin(d, &format!("addprinc -randkey HTTP/localhost@{REALM}"));
    let keytab = d.join("http.keytab");
    kadmin(d, &format!("ktadd -k {} HTTP/localhost@{REALM}", keytab.display()));
    let process = std::process::Command::new(krb5kdc)
        .env("KRB5_CONFIG", d.join("krb5.conf"))
        .env("KRB5_KDC_PROFILE", d.join("kdc.conf"))
        .args(["-n", "-r", REALM])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("krb5kdc starts");
    let process = KillOnDrop(process);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the KDC did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Kdc { _process: process, port, keytab, dir }
}

impl Kdc {
    /// The realm's `krb5.conf`, for clients that read one (`KRB5_CONFIG`).
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// A scratch directory of the realm's (for a client's credential cache).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

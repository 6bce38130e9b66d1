//! End to end with a client certificate over HTTPS (WinRM certificate mapping): the connector
//! against the simulator's TLS listener, which verifies client certificates against a test CA
//! and maps a certificate to the account its subject names.

use std::net::SocketAddr;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use super::wire_tests::{get_mailbox, options, simulator, target, ALICE};
use super::*;
use crate::remote::PsValue;
use crate::sim::wire::{self, WireOptions};
use crate::sim::Simulator;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A client certificate for `subject` with its key, as one PEM (the admin's credential).
    fn client_pem(&self, subject: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}

/// The simulator over HTTPS with a server certificate from `ca`, asking for (not requiring)
/// client certificates issued by `ca`.
async fn serve(sim: &Simulator, ca: &Ca) -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca.cert, &ca.key).unwrap();
    let config =
        wire::client_auth_config(server.pem().as_bytes(), key.serialize_pem().as_bytes(), ca.cert.pem().as_bytes())
            .unwrap();
    let options = WireOptions {
        tls: Some(config),
        idle_receive_wait: std::time::Duration::from_millis(200),
        ..WireOptions::default()
    };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    addr
}

fn https_target(addr: SocketAddr, pem: &str) -> SessionTarget {
    let mut t = target(addr, pem);
    t.connection_uri = t.connection_uri.replacen("http://", "https://", 1);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_on_as_the_account_it_names() {
    let sim = simulator(3);
    let ca = Ca::new("psbroker test CA");
    let addr = serve(&sim, &ca).await;
    let cert_options = WinrmOptions {
        auth: WinrmAuth::Certificate,
        allow_plain_http: false,
        extra_roots: vec![reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap()],
        ..options()
    };
    let c = WinrmConnector::new(cert_options.clone()).unwrap();

    let session = c.open_session(&https_target(addr, &ca.client_pem(ALICE))).await.unwrap();
    assert_eq!(sim.list_shells(ALICE).len(), 1, "the shell is the mapped account's");
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(3))])).await.unwrap();
    assert_eq!(out.objects.len(), 3);
    session.close().await.unwrap();

    // A certificate the CA issued for nobody the service knows: a logon failure.
    let err = c.open_session(&https_target(addr, &ca.client_pem("nobody@nowhere.example"))).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);
    // A certificate from another CA: the TLS handshake refuses it, no shell is opened.
    let stranger = Ca::new("someone else's CA");
    assert!(c.open_session(&https_target(addr, &stranger.client_pem(ALICE))).await.is_err());
    // A credential that is not a certificate, and plain http, are configuration errors.
    let err = c.open_session(&https_target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol, "{}", err.message);
    assert!(!err.message.contains("pa\""), "{}", err.message);
    let plain = WinrmConnector::new(WinrmOptions { allow_plain_http: true, ..cert_options }).unwrap();
    let err = plain.open_session(&target(addr, &ca.client_pem(ALICE))).await.unwrap_err();
    assert!(err.message.contains("https"), "{}", err.message);
    assert!(sim.list_shells(ALICE).is_empty());
}

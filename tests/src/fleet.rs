//! Simulated agents for tests and benchmarks: client certificates minted with a backend's agent
//! CA (as the backend's `sign_csr` would issue them at bootstrap) and configurations for
//! `cairn_agent::sim`, which keeps real mutual-TLS sessions with the agent's own code.

use std::path::Path;

use cairn_agent::config::AgentConfig;

/// [`mint_certificates_in`] the namespace `default`.
///
/// # Panics
/// As [`mint_certificates_in`].
pub fn mint_certificates(data_dir: &Path, dir: &Path, names: &[String]) {
    mint_certificates_in(data_dir, dir, "default", names);
}

/// Signs a client certificate for each name of `namespace` with the agent CA of the backend
/// data dir `data_dir` (CN = name, URI SAN `cairn:agent:<namespace>/<name>`, as bootstrap
/// issues them), and writes `<name>.key` and `<name>.pem` into `dir` (on all cores). No
/// certificate record is stored: the backend treats these like certificates whose record is
/// gone (no pinned subscriptions, renewal allowed).
///
/// # Panics
/// When the data dir has no agent CA or a file cannot be written (test set-up).
pub fn mint_certificates_in(data_dir: &Path, dir: &Path, namespace: &str, names: &[String]) {
    let ca_pem = std::fs::read_to_string(data_dir.join("tls/agent-ca.pem")).expect("agent CA");
    let ca_key = std::fs::read_to_string(data_dir.join("tls/agent-ca.key")).expect("agent CA key");
    let serial_base = cairn_agent::backoff::random_u64();
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = names.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (part, names) in names.chunks(chunk).enumerate() {
            let (ca_pem, ca_key) = (&ca_pem, &ca_key);
            scope.spawn(move || {
                let ca_key = rcgen::KeyPair::from_pem(ca_key).expect("agent CA key");
                let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("agent CA");
                for (idx, name) in names.iter().enumerate() {
                    let key = cairn_agent::certs::generate_key().expect("key");
                    let mut params = rcgen::CertificateParams::default();
                    let mut subject = rcgen::DistinguishedName::new();
                    subject.push(rcgen::DnType::CommonName, name.as_str());
                    params.distinguished_name = subject;
                    let now = time::OffsetDateTime::now_utc();
                    params.not_before = now - time::Duration::minutes(5);
                    params.not_after = now + time::Duration::days(90);
                    let serial = serial_base
                        .wrapping_add((part * chunk + idx) as u64)
                        .to_be_bytes();
                    let mut bytes = vec![0x40];
                    bytes.extend_from_slice(&serial);
                    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
                    params.use_authority_key_identifier_extension = true;
                    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
                    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                    let uri = cairn_api::agent::agent_uri(namespace, name);
                    params.subject_alt_names = vec![rcgen::SanType::URI(
                        rcgen::string::Ia5String::try_from(uri).expect("an ASCII agent URI"),
                    )];
                    let cert = params.signed_by(&key, &issuer).expect("sign");
                    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())
                        .expect("write key");
                    std::fs::write(dir.join(format!("{name}.pem")), cert.pem())
                        .expect("write cert");
                }
            });
        }
    });
}

/// The configuration of a simulated agent `name` whose certificate [`mint_certificates`]
/// wrote into `dir`, connecting to `urls` (in order, failing over), trusting `ca_file`.
pub fn agent_config(
    name: &str,
    urls: Vec<String>,
    dir: &Path,
    ca_file: &Path,
    subscriptions: Vec<String>,
) -> AgentConfig {
    let mut config = AgentConfig::new(name, urls);
    config.subscriptions = subscriptions;
    config.key_file = dir.join(format!("{name}.key"));
    config.cert_file = dir.join(format!("{name}.pem"));
    config.ca_file = ca_file.to_owned();
    config.queue_dir = dir.join("unused-queue");
    config
}

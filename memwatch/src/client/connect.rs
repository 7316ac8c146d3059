//! How the CLI reaches a daemon: over HTTP or HTTPS, checking its
//! certificate against a CA file (by default the certificate its web config
//! names, for a self-signed one on its own host), with basic-auth
//! credentials from the environment or a file, never the command line
//! (which every user of the host can read in /proc).

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};

/// The config the packaged service runs with, read when none is named.
pub const SYSTEM_CONFIG: &str = "/etc/memwatch/memwatch.toml";

/// Where the daemon is and what to trust: resolved from the options and
/// the daemon's own config files, before any connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub base: String,
    /// PEM certificates to check an HTTPS daemon with (else the bundled
    /// public roots).
    pub ca: Option<PathBuf>,
}

/// What the daemon's config says about reaching it: its listen address,
/// and the certificate it serves when its web config turns TLS on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
}

/// Reads `config` (or the system's, when it exists and none is named).
pub fn served(config: Option<&Path>) -> anyhow::Result<Served> {
    let path = match config {
        Some(p) => p.to_path_buf(),
        None if Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
        None => return Ok(Served::default()),
    };
    let c = crate::config::Config::load(Some(&path), &Default::default())?;
    let tls_cert = match &c.web_config_file {
        Some(w) => crate::http::web_config::load(w)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("the web config {} names", path.display()))?
            .tls
            .map(|t| t.cert_file),
        None => None,
    };
    Ok(Served {
        listen: Some(c.listen.to_string()),
        tls_cert,
    })
}

/// The daemon's base URL and CA: `--addr` (with or without a scheme), else
/// the config's `listen`; HTTPS where the address says so or the web config
/// serves TLS.
pub fn target(addr: Option<&str>, cacert: Option<&Path>, served: &Served) -> anyhow::Result<Target> {
    let (scheme, hostport) = match addr {
        Some(a) => match a.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (Some(s), rest.trim_end_matches('/')),
            Some((s, _)) => bail!("--addr {a:?}: the scheme {s:?} is not http or https"),
            None => (None, a),
        },
        None => (None, served.listen.as_deref().unwrap_or("127.0.0.1:9477")),
    };
    if hostport.is_empty() || hostport.contains('/') {
        bail!("--addr {hostport:?}: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT");
    }
    let https = match scheme {
        Some(s) => s == "https",
        None => served.tls_cert.is_some(),
    };
    let ca = cacert
        .map(Path::to_path_buf)
        .or_else(|| served.tls_cert.clone().filter(|_| https));
    Ok(Target {
        base: format!("{}://{hostport}", if https { "https" } else { "http" }),
        ca,
    })
}

/// Basic-auth credentials: the user from `--user` or MEMWATCH_USER, the
/// password from `--password-file` (its first line) or MEMWATCH_PASSWORD.
pub fn credentials(
    user: Option<String>,
    password_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<(String, String)>> {
    let user = user.or_else(|| env("MEMWATCH_USER")).filter(|u| !u.is_empty());
    let password = match password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
        None => env("MEMWATCH_PASSWORD"),
    };
    match (user, password) {
        (Some(u), Some(p)) => Ok(Some((u, p))),
        (Some(u), None) => bail!("no password for user {u:?}: set MEMWATCH_PASSWORD or give --password-file"),
        (None, Some(_)) => bail!("a password but no user: give --user or set MEMWATCH_USER"),
        (None, None) => Ok(None),
    }
}

/// A daemon to ask: HTTP/1.0 over TCP, or over TLS with rustls.
pub struct Daemon {
    pub target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<String>,
}

impl Daemon {
    pub fn new(target: Target, credentials: Option<(String, String)>) -> anyhow::Result<Daemon> {
        use base64::Engine;
        let tls = match target.base.starts_with("https://") {
            true => Some(Arc::new(tls_config(target.ca.as_deref())?)),
            false => None,
        };
        let authorization = credentials.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        Ok(Daemon {
            target,
            tls,
            authorization,
        })
    }

    /// GETs `path`; an HTTP error becomes an error carrying the daemon's
    /// message.
    pub fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let base = &self.target.base;
        let raw = self
            .exchange(path)
            .with_context(|| format!("cannot reach memwatch at {base} (is the daemon running? see --addr)"))?;
        let (status, body) = super::socket::parse_bytes(&raw)?;
        if status == 401 && self.authorization.is_none() {
            bail!(
                "memwatch at {base} asks for basic auth: give --user (or MEMWATCH_USER) and the password in \
                 MEMWATCH_PASSWORD or --password-file"
            );
        }
        if !(200..300).contains(&status) {
            bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(body)
    }

    /// Sends the request and reads the whole answer (HTTP/1.0: the daemon
    /// closes the connection after it).
    fn exchange(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let hostport = self.target.base.split_once("://").map_or("", |(_, h)| h);
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport, |(h, _)| h)
            .trim_matches(['[', ']']);
        let tcp = std::net::TcpStream::connect(hostport)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        let auth = self
            .authorization
            .as_ref()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n{auth}Connection: close\r\n\r\n");
        let mut raw = Vec::new();
        match &self.tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(request.as_bytes())?;
                tcp.read_to_end(&mut raw)?;
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .with_context(|| format!("{host:?} is not a host name or address"))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(request.as_bytes())?;
                match tls.read_to_end(&mut raw) {
                    // A peer that closes without close_notify after a whole
                    // answer: HTTP/1.0 ends at the close.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                    r => {
                        r?;
                    }
                }
            }
        }
        Ok(raw)
    }
}

/// rustls with ring (as the server): certificates checked against `ca`
/// (else the public roots), where a certificate in `ca` is also trusted as
/// the server's own: `openssl req -x509` makes self-signed certificates
/// marked as CAs, which the web PKI refuses as a server's.
fn tls_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    match ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("reading the CA file {}", ca.display()))?;
            for cert in <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem) {
                let cert = cert.with_context(|| format!("{}: not PEM", ca.display()))?;
                roots.add(cert.clone()).ok();
                pinned.push(cert);
            }
            if pinned.is_empty() {
                bail!("{} holds no PEM certificate", ca.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = match roots.is_empty() {
        true => None,
        false => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("the CA certificates")?,
        ),
    };
    let verifier = Verifier {
        pinned,
        webpki,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The web PKI's verdict, or a certificate named in the CA file, for the
/// name connected to (a pinned certificate's validity period is not
/// checked).
#[derive(Debug)]
struct Verifier {
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(w) => w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_says_the_scheme_else_the_web_config_does() {
        let plain = Served::default();
        let t = target(None, None, &plain).unwrap();
        assert_eq!((t.base.as_str(), t.ca), ("http://127.0.0.1:9477", None));
        assert_eq!(
            target(Some("10.0.0.5:9477"), None, &plain).unwrap().base,
            "http://10.0.0.5:9477"
        );
        let t = target(Some("https://mw.example:9477/"), None, &plain).unwrap();
        assert_eq!((t.base.as_str(), t.ca), ("https://mw.example:9477", None));
        let tls = Served {
            listen: Some("0.0.0.0:9477".into()),
            tls_cert: Some("/etc/memwatch/memwatch.crt".into()),
        };
        // On the daemon's host: its listen address over TLS, its certificate as the CA.
        let t = target(None, None, &tls).unwrap();
        assert_eq!(t.base, "https://0.0.0.0:9477");
        assert_eq!(t.ca, Some(PathBuf::from("/etc/memwatch/memwatch.crt")));
        let t = target(None, Some(Path::new("/ca.pem")), &tls).unwrap();
        assert_eq!(t.ca, Some(PathBuf::from("/ca.pem")));
        // An explicit http:// is not upgraded, nor given a CA.
        let t = target(Some("http://127.0.0.1:1"), None, &tls).unwrap();
        assert_eq!((t.base.as_str(), t.ca), ("http://127.0.0.1:1", None));
        for bad in ["ftp://x:1", "https://", "x:1/leaks"] {
            assert!(target(Some(bad), None, &plain).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_file_whole() {
        let none = |_: &str| None;
        assert_eq!(credentials(None, None, none).unwrap(), None);
        let env = |k: &str| match k {
            "MEMWATCH_USER" => Some("ops".to_string()),
            "MEMWATCH_PASSWORD" => Some("s3cret".to_string()),
            _ => None,
        };
        assert_eq!(
            credentials(None, None, env).unwrap(),
            Some(("ops".into(), "s3cret".into()))
        );
        let dir = std::env::temp_dir().join(format!("mw-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from file\nignored\n").unwrap();
        assert_eq!(
            credentials(Some("admin".into()), Some(&file), env).unwrap(),
            Some(("admin".into(), "from file".into()))
        );
        let e = credentials(Some("ops".into()), None, none).unwrap_err().to_string();
        assert!(e.contains("MEMWATCH_PASSWORD"), "{e}");
        let pw_only = |k: &str| (k == "MEMWATCH_PASSWORD").then(|| "x".to_string());
        assert!(credentials(None, None, pw_only).is_err());
        assert!(credentials(Some("ops".into()), Some(&dir.join("absent")), none).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

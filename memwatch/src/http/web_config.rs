//! The web configuration file of Prometheus exporters (exporter-toolkit's
//! `--web.config.file`): TLS certificate and key, and basic-auth users with
//! bcrypt hashes. The same file serves memwatch, so a `scrape_config` with
//! `tls_config` and `basic_auth` written for an exporter works unchanged.
//!
//! Parsing is pure ([`parse`]); [`load`] reads the file and resolves the
//! paths in it against the file's directory, as exporter-toolkit does.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsFiles>,
    /// User name and bcrypt hash; empty: no authentication.
    pub users: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Keys exporter-toolkit knows that memwatch does not implement: named in
/// the error rather than called unknown, so that nobody believes them set.
const UNSUPPORTED: &[&str] = &[
    "tls_server_config.client_ca_file",
    "tls_server_config.client_auth_type",
    "tls_server_config.client_allowed_sans",
    "tls_server_config.cipher_suites",
    "tls_server_config.curve_preferences",
    "tls_server_config.max_version",
    "tls_server_config.cert",
    "tls_server_config.key",
    "http_server_config",
    "rate_limit",
];

pub fn load(path: &Path) -> Result<WebConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut c = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(tls) = &mut c.tls {
        let dir = path.parent().unwrap_or(Path::new("."));
        tls.cert_file = dir.join(&tls.cert_file);
        tls.key_file = dir.join(&tls.key_file);
    }
    Ok(c)
}

pub fn parse(text: &str) -> Result<WebConfig, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let root = match docs.into_iter().next() {
        None | Some(Yaml::Null) => {
            return Ok(WebConfig {
                tls: None,
                users: vec![],
            });
        }
        Some(y @ Yaml::Hash(_)) => y,
        Some(_) => return Err("expected a mapping at the top".into()),
    };
    check_keys(&root, "", &["tls_server_config", "basic_auth_users"])?;
    let tls = match &root["tls_server_config"] {
        Yaml::BadValue | Yaml::Null => None,
        t @ Yaml::Hash(_) => Some(tls(t)?),
        _ => return Err("tls_server_config: expected a mapping".into()),
    };
    let users = match &root["basic_auth_users"] {
        Yaml::BadValue | Yaml::Null => vec![],
        Yaml::Hash(h) => {
            let mut users = Vec::new();
            for (k, v) in h {
                let (Some(user), Some(hash)) = (k.as_str(), v.as_str()) else {
                    return Err("basic_auth_users: expected user: bcrypt-hash strings".into());
                };
                hash.parse::<bcrypt::HashParts>()
                    .map_err(|e| format!("basic_auth_users.{user}: not a bcrypt hash ({e})"))?;
                users.push((user.to_string(), hash.to_string()));
            }
            users
        }
        _ => return Err("basic_auth_users: expected a mapping".into()),
    };
    Ok(WebConfig { tls, users })
}

fn tls(t: &Yaml) -> Result<TlsFiles, String> {
    check_keys(
        t,
        "tls_server_config.",
        &["cert_file", "key_file", "min_version", "prefer_server_cipher_suites"],
    )?;
    let path = |key: &str| match &t[key] {
        Yaml::String(s) if !s.is_empty() => Ok(PathBuf::from(s)),
        _ => Err(format!("tls_server_config.{key}: required (a file name)")),
    };
    let min_version = match t["min_version"].as_str() {
        None | Some("TLS12") => TlsVersion::Tls12,
        Some("TLS13") => TlsVersion::Tls13,
        Some(v) => {
            return Err(format!(
                "tls_server_config.min_version: {v:?} is not supported (TLS12 or TLS13)"
            ));
        }
    };
    Ok(TlsFiles {
        cert_file: path("cert_file")?,
        key_file: path("key_file")?,
        min_version,
    })
}

fn check_keys(y: &Yaml, prefix: &str, known: &[&str]) -> Result<(), String> {
    let Yaml::Hash(h) = y else { return Ok(()) };
    for k in h.keys() {
        let name = format!("{prefix}{}", k.as_str().unwrap_or("?"));
        if UNSUPPORTED.contains(&name.as_str()) {
            return Err(format!("{name}: not supported by memwatch"));
        }
        if !k.as_str().is_some_and(|k| known.contains(&k)) {
            return Err(format!("{name}: unknown key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    #[test]
    fn an_exporter_web_config_is_read() {
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: memwatch.crt\n  key_file: memwatch.key\n  min_version: TLS13\n\
             basic_auth_users:\n  prometheus: {HASH}\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("memwatch.crt"));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(c.users, vec![("prometheus".to_string(), HASH.to_string())]);
    }

    #[test]
    fn an_empty_file_asks_for_nothing() {
        assert_eq!(
            parse("").unwrap(),
            WebConfig {
                tls: None,
                users: vec![]
            }
        );
        let c = parse(&format!("basic_auth_users:\n  a: '{HASH}'\n")).unwrap();
        assert!(c.tls.is_none() && c.users.len() == 1);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expected) in [
            ("tls_server_config:\n  cert_file: a\n", "key_file: required"),
            (
                "tls_server_config:\n  certfile: a\n",
                "tls_server_config.certfile: unknown key",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
                "client_ca_file: not supported",
            ),
            (
                "basic_auth_users:\n  a: plaintext\n",
                "basic_auth_users.a: not a bcrypt hash",
            ),
            ("basic_auth_users: [a]\n", "expected a mapping"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
                "min_version",
            ),
            ("basic_auth: {}\n", "basic_auth: unknown key"),
            ("- a\n", "mapping at the top"),
            ("a: [\n", "while parsing"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("memwatch-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        std::fs::write(&f, "tls_server_config:\n  cert_file: c.pem\n  key_file: /abs/k.pem\n").unwrap();
        let tls = load(&f).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, dir.join("c.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/k.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load(&f).unwrap_err().contains("cannot read"));
    }
}

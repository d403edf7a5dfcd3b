//! Registry credentials from Docker config files, as `imagePullSecrets` carry them
//! (`kubernetes.io/dockerconfigjson`: `{"auths": {...}}`; the legacy
//! `kubernetes.io/dockercfg`: the map itself), matched to an image the way upstream's
//! kubelet does: by registry host (with `*.` globs and Docker Hub's aliases) and
//! repository path prefix, most specific key first.

use base64::Engine as _;
use serde_json::Value;

use crate::reference::DOCKER_HUB;
use crate::{Credentials, Error, Reference};

/// One entry of a Docker config: where it applies and what it holds.
#[derive(Debug, Clone)]
struct Entry {
    host: String,
    path: String,
    credentials: Credentials,
}

/// Docker Hub's names in config files.
fn canonical_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_ascii_lowercase(),
    }
}

/// `https://index.docker.io/v1/` → (`docker.io`, ``); `127.0.0.1:5000/team` →
/// (`127.0.0.1:5000`, `team`).
fn split_key(key: &str) -> (String, String) {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = canonical_host(host);
    // Docker Hub's legacy key carries an API path, not a repository.
    let path = if host == DOCKER_HUB && (path.starts_with("v1") || path.starts_with("v2")) {
        ""
    } else {
        path.trim_end_matches('/')
    };
    (host, path.to_string())
}

/// Whether a config host (maybe `*.example.com`) matches an image's registry host.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|h| h.ends_with('.') && !h[..h.len() - 1].contains('.')),
        None => pattern == host,
    }
}

/// The credentials of one Docker config (either form), as a list of entries.
fn entries(config: &[u8]) -> Result<Vec<Entry>, Error> {
    let v: Value = serde_json::from_slice(config)?;
    let auths = match v.get("auths") {
        Some(a) => a,
        None => &v,
    };
    let map = auths
        .as_object()
        .ok_or_else(|| Error::Registry("a Docker config must be a JSON object".into()))?;
    let mut out = Vec::new();
    for (key, entry) in map {
        let mut username = entry["username"].as_str().unwrap_or_default().to_string();
        let mut password = entry["password"].as_str().unwrap_or_default().to_string();
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|e| Error::Registry(format!("auth of {key:?}: {e}")))?;
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                Error::Registry(format!("auth of {key:?} is not username:password"))
            })?;
            (username, password) = (u.to_string(), p.to_string());
        }
        let (host, path) = split_key(key);
        out.push(Entry {
            host,
            path,
            credentials: Credentials { username, password },
        });
    }
    Ok(out)
}

/// The credentials in `configs` (Docker config files, in order) that apply to
/// `reference`, most specific first.
pub fn for_image(configs: &[Vec<u8>], reference: &Reference) -> Result<Vec<Credentials>, Error> {
    let host = canonical_host(&reference.registry);
    let mut matched: Vec<Entry> = Vec::new();
    for c in configs {
        for e in entries(c)? {
            let path_ok = e.path.is_empty()
                || reference.repository == e.path
                || reference
                    .repository
                    .strip_prefix(&e.path)
                    .is_some_and(|r| r.starts_with('/'));
            if host_matches(&e.host, &host) && path_ok {
                matched.push(e);
            }
        }
    }
    // Exact hosts before globs, longer paths before shorter; stable otherwise.
    matched.sort_by_key(|e| (e.host.starts_with("*."), std::cmp::Reverse(e.path.len())));
    Ok(matched.into_iter().map(|e| e.credentials).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(configs: &[&str], image: &str) -> Vec<String> {
        let configs: Vec<Vec<u8>> = configs.iter().map(|c| c.as_bytes().to_vec()).collect();
        for_image(&configs, &Reference::parse(image).unwrap())
            .unwrap()
            .into_iter()
            .map(|c| c.username)
            .collect()
    }

    #[test]
    fn matches_by_host_glob_path_and_docker_hub_aliases() {
        let cfg = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
            "127.0.0.1:5000": {"username": "any", "password": "x"},
            "127.0.0.1:5000/team": {"username": "team", "password": "x"},
            "*.example.com": {"username": "glob", "password": "x"}
        }}"#;
        assert_eq!(users(&[cfg], "nginx"), ["hub"]);
        assert_eq!(users(&[cfg], "127.0.0.1:5000/team/app:1"), ["team", "any"]);
        assert_eq!(users(&[cfg], "127.0.0.1:5000/other/app"), ["any"]);
        assert_eq!(users(&[cfg], "127.0.0.1:5000/teamx/app"), ["any"]);
        assert_eq!(users(&[cfg], "r.example.com/app"), ["glob"]);
        assert!(users(&[cfg], "a.b.example.com/app").is_empty());
        assert!(users(&[cfg], "quay.io/app").is_empty());
        // The legacy .dockercfg form: the map without "auths".
        let legacy = r#"{"quay.io": {"username": "q", "password": "x"}}"#;
        assert_eq!(users(&[cfg, legacy], "quay.io/app"), ["q"]);
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = |c: &str| {
            for_image(
                &[c.as_bytes().to_vec()],
                &Reference::parse("nginx").unwrap(),
            )
            .is_err()
        };
        assert!(bad("not json"));
        assert!(bad("[1]"));
        assert!(bad(r#"{"auths": {"docker.io": {"auth": "!!!"}}}"#));
        assert!(bad(r#"{"auths": {"docker.io": {"auth": "bm9jb2xvbg=="}}}"#));
    }
}

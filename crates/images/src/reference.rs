//! Image references as Docker and Kubernetes read them: `nginx` is
//! `docker.io/library/nginx:latest`, `127.0.0.1:5000/busybox:1.36` names its registry,
//! `repo@sha256:…` pins a digest.

use crate::Error;

/// Docker Hub's registry name, and where it is reached.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository (`library/nginx`).
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::Reference(format!("{s:?}: {why}"));
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(bad("not a valid image reference"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:")
                    || d.len() != 71
                    || !d[7..].bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(bad("invalid digest"));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name[..at], Some(name[at + 1..].to_string()))
            }
            None => (name, None),
        };
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'/' | b'.' | b'_' | b'-')
            })
        {
            return Err(bad("invalid repository name"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to for this registry (Docker Hub's API host for `docker.io`).
    pub fn endpoint_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// The digest when pinned, else the tag: what to ask the registry for.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The canonical full name (`docker.io/library/nginx:latest`).
    pub fn full(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_like_docker() {
        let r = Reference::parse("nginx").unwrap();
        assert_eq!(r.full(), "docker.io/library/nginx:latest");
        assert_eq!(r.endpoint_host(), "registry-1.docker.io");
        let r = Reference::parse("127.0.0.1:5000/busybox:1.36").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "busybox", Some("1.36"))
        );
        let r = Reference::parse("registry.k8s.io/pause:3.10").unwrap();
        assert_eq!(r.repository, "pause");
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        let r = Reference::parse(&d).unwrap();
        assert_eq!(
            (r.tag.clone(), r.object()),
            (None, format!("sha256:{}", "a".repeat(64)).as_str())
        );
        assert_eq!(
            Reference::parse("localhost/x").unwrap().registry,
            "localhost"
        );
        assert_eq!(
            Reference::parse("user/app:v1").unwrap().repository,
            "user/app"
        );
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Nginx").is_err());
        assert!(Reference::parse("nginx:").is_err());
        assert!(Reference::parse("nginx@sha256:zz").is_err());
    }
}

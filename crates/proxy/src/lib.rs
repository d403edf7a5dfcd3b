//! kube-proxy's logic: Services and EndpointSlices become the node's packet rules.
//!
//! - [`model`] reads the objects into Service ports with categorized endpoints;
//! - [`iptables`] and [`nftables`] render one sync's rules and apply them in one
//!   transaction (`iptables-restore` / `nft -f`);
//! - [`conntrack`] forgets UDP flows to endpoints that are gone;
//! - [`proxier`] runs the informers and the rate-limited sync loop;
//! - [`config`] decodes `KubeProxyConfiguration`.

pub mod config;
pub mod conntrack;
pub mod iptables;
pub mod model;
pub mod nftables;
pub mod proxier;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::Digest as _;

/// One table's chains, each with its rendered rule lines in order (what both modes
/// render a sync into, and diff against the last sync).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Chains(BTreeMap<String, String>);

impl Chains {
    /// Declares `name` (with no rules yet, if new).
    pub fn declare(&mut self, name: &str) {
        self.0.entry(name.to_string()).or_default();
    }

    /// Appends a rendered rule line to `chain`, declaring it.
    pub fn push(&mut self, chain: &str, line: std::fmt::Arguments<'_>) {
        let rules = self.0.entry(chain.to_string()).or_default();
        let _ = rules.write_fmt(line);
        rules.push('\n');
    }

    /// Whether `name` is declared.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Every chain and its rule lines, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// A chain's rule lines.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.get(name)
    }

    /// How many rules there are.
    pub fn rule_count(&self) -> usize {
        self.0.values().map(|r| r.lines().count()).sum()
    }

    /// The chains `prev` has and these have not.
    pub fn gone_since<'a>(&self, prev: &'a Chains) -> Vec<&'a String> {
        prev.0.keys().filter(|c| !self.contains(c)).collect()
    }
}

/// What can go wrong programming the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Exec(String, String),
}

/// The first `len` characters of the base32 (RFC 4648) encoding of `s`'s SHA-256: the
/// hash in upstream's chain names.
pub fn chain_hash(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = sha2::Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(len);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in digest {
        if out.len() == len {
            break;
        }
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < len {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    out
}

/// Runs `program args`: its standard output, or its standard error as the error.
pub fn run(program: &str, args: &[&str]) -> Result<Vec<u8>, Error> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Exec(program.into(), e.to_string()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Exec(
            format!("{program} {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Runs `program args` with `input` on its standard input; its standard error is the
/// error when it fails.
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), Error> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Exec(program.into(), e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Exec(program.into(), e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Exec(
            program.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    written.map_err(|e| Error::Exec(program.into(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_of_sha256() {
        // sha256("") = e3b0c442…; its base32 starts 4OYMIQUY7QOBJGX3.
        assert_eq!(chain_hash("", 16), "4OYMIQUY7QOBJGX3");
        assert_eq!(chain_hash("", 8), "4OYMIQUY");
    }
}

//! A throwaway Debian `docker-registry` on loopback, and the busybox test image pushed
//! into it with `ferrokube-image` (what `scripts/images` does for real use).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, free_port};

/// A running registry; killed when dropped.
pub struct LocalRegistry {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    netns: Option<String>,
    /// `user:password` when the registry requires basic auth.
    auth: Option<String>,
}

impl LocalRegistry {
    /// Starts one with its storage under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> LocalRegistry {
        Self::start_in(dir, None)
    }

    /// The same, inside a network namespace.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> LocalRegistry {
        Self::start_with(dir, netns, None)
    }

    /// The same, requiring basic auth as `user` with `password` (an htpasswd file
    /// made with apache2-utils' `htpasswd`, bcrypt as docker-registry wants).
    pub fn start_with(
        dir: &Path,
        netns: Option<&str>,
        auth: Option<(&str, &str)>,
    ) -> LocalRegistry {
        let port = free_port();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("config.yml");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: ferrokube-test\n    path: {}\n",
                file.display()
            );
        }
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .args(["--", "docker-registry"]);
                c
            }
            None => Command::new("docker-registry"),
        };
        let child = cmd
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package) runs");
        let reg = LocalRegistry {
            child,
            port,
            dir: dir.to_path_buf(),
            netns: netns.map(String::from),
            auth: auth.map(|(u, p)| format!("{u}:{p}")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reg.answers() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// Runs `program` where the registry runs.
    fn here(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn answers(&self) -> bool {
        match &self.netns {
            None => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            Some(_) => self
                .here("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{}", self.port)])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Builds the busybox image (Debian's static busybox) and pushes it as
    /// `library/busybox` with the given tags.
    pub fn push_busybox(&self, tags: &[&str]) {
        self.push_busybox_as("library/busybox", tags)
    }

    /// The busybox image under another repository name.
    pub fn push_busybox_as(&self, repository: &str, tags: &[&str]) {
        let rootfs = self.dir.join("busybox-rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for link in [
            "sh", "echo", "sleep", "cat", "ls", "touch", "rm", "test", "mkdir", "grep", "tr",
            "stat", "env", "true", "false", "dd", "tar", "wc", "stty", "tty", "head", "seq",
            "wget", "nc", "nslookup", "hostname", "httpd", "ps", "kill", "timeout",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(link));
        }
        // A writable /tmp, as images have.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        let mut cmd = self.here(binary("ferrokube-image"));
        cmd.args(["build", "--rootfs"]).arg(&rootfs).args([
            "--registry",
            &self.endpoint(),
            "--name",
            repository,
            "--cmd",
            "sh",
        ]);
        if let Some(auth) = &self.auth {
            cmd.args(["--user", auth]);
        }
        for t in tags {
            cmd.args(["--tag", t]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "ferrokube-image build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl LocalRegistry {
    /// Builds the test-server image (`bins/test-server` and the libraries it links) and
    /// pushes it as `ferrokube/test-server:latest`.
    pub fn push_test_server(&self) {
        self.push_binary("test-server", "ferrokube/test-server");
    }

    /// Builds an image of one of the project's binaries (and the libraries it links),
    /// with it as the entrypoint, and pushes it as `<repository>:latest`.
    pub fn push_binary(&self, binary_name: &str, repository: &str) {
        let rootfs = self.dir.join(format!("{binary_name}-rootfs"));
        let out = self
            .here(binary("ferrokube-image"))
            .args(["rootfs", "--binary"])
            .arg(binary(binary_name))
            .arg("--out")
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ferrokube-image rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self
            .here(binary("ferrokube-image"))
            .args(["build", "--rootfs"])
            .arg(&rootfs)
            .args([
                "--registry",
                &self.endpoint(),
                "--name",
                repository,
                "--tag",
                "latest",
            ])
            .args(["--entrypoint", &format!("/{binary_name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ferrokube-image build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

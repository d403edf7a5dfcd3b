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
}

impl LocalRegistry {
    /// Starts one with its storage under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> LocalRegistry {
        let port = free_port();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
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
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Builds the busybox image (Debian's static busybox) and pushes it as
    /// `library/busybox` with the given tags.
    pub fn push_busybox(&self, tags: &[&str]) {
        let rootfs = self.dir.join("busybox-rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for link in ["sh", "echo", "sleep", "cat", "ls"] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(link));
        }
        let mut cmd = Command::new(binary("ferrokube-image"));
        cmd.args(["build", "--rootfs"]).arg(&rootfs).args([
            "--registry",
            &self.endpoint(),
            "--name",
            "library/busybox",
            "--cmd",
            "sh",
        ]);
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

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real SMTP server for tests: aiosmtpd on a free loopback port, delivering into a Maildir,
//! stopped when dropped. Shared by the notification tests and the e2e suite.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running aiosmtpd.
pub struct Smtp {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The directory holding its `Maildir`.
    pub maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    /// Starts aiosmtpd with a Maildir handler; `tls_flags` adds STARTTLS (`--tlscert`) or
    /// implicit TLS (`--smtpscert`) flags.
    pub fn start(tls_flags: &[&str]) -> Smtp {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "these tests need a real SMTP server: run `pip install aiosmtpd` (or apt-get install python3-aiosmtpd)"
        );
        let maildir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(tls_flags)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            // A path that does not exist yet, so the handler creates the Maildir layout in it.
            .arg(maildir.path().join("Maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        // Owned by `Smtp` at once, so that its Drop reaps the process even if startup fails.
        let smtp = Smtp {
            child,
            port,
            maildir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return smtp;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("aiosmtpd did not start on port {port}");
    }

    /// The raw messages delivered so far.
    #[allow(dead_code)] // not every test binary reads raw messages
    pub fn raw_messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.new_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }

    fn new_dir(&self) -> std::path::PathBuf {
        Path::new(self.maildir.path()).join("Maildir").join("new")
    }
}

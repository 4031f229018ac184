//! `unclip serve` on the tiny bundle over loopback, for the tests that talk to it: started on a
//! free port, its stderr drained, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// What the server printed before its address.
    pub banner: Vec<String>,
}

impl Server {
    /// Starts `unclip serve` on a free loopback port with `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(&super::tiny_bundle(), extra, &[])
    }

    /// [`Server::start`] on bundle `model`, with environment variables `env`.
    pub fn start_with(
        model: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_unclip"))
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env_remove("UNCLIP_API_KEY")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start unclip serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server printed its address within 60 s");
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
            banner.push(line);
        };
        Server {
            child,
            base,
            banner,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

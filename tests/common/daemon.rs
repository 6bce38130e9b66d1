//! The real `psbroker` binary as a child process, for tests that kill it or read its log.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub struct Daemon {
    pub child: Child,
    pub url: String,
    /// Every line the daemon has written to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `psbroker serve --config CONFIG` with `PSBROKER_LOG=level` and waits for the line
    /// that says where it listens.
    pub fn start(config: &std::path::Path, level: &str) -> Daemon {
        Self::start_with_env(config, level, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables (e.g. `PSBROKER_SERVER__LISTEN`
    /// to override one key of the configuration).
    pub fn start_with_env(config: &std::path::Path, level: &str, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_psbroker"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("PSBROKER_LOG", level)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("psbroker starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let url = loop {
            let Some(line) = lines.next() else {
                panic!("daemon exited before listening:\n{}", log.lock().unwrap().join("\n"))
            };
            let line = line.unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split(" url=").nth(1).filter(|_| line.contains("psbroker listening")) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining (and keeping) the log so the daemon never blocks on a full pipe.
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, url, log }
    }

    /// Stops it with SIGTERM (a graceful drain) and returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Daemon {
    /// A failing test must not leave a daemon behind (SIGKILL; a no-op once it has exited).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

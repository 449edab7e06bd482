//! The `ruuster` binary as a child process, as an operator meets it: started with flags, followed
//! through its log on stderr, signalled, killed. Shared by the process and crash tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a broker may take to start or stop here before a test gives up on it.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(20);

/// A running `ruuster` child. Dropping it kills it with SIGKILL and reaps it.
pub struct BrokerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl BrokerProcess {
    /// Starts `ruuster --data-dir <data_dir> <extra...>`. Its log lines are echoed to the test's
    /// output with a `[ruuster]` prefix and kept for [`BrokerProcess::wait_for`].
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ruuster"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ruuster");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ruuster] {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        BrokerProcess { child, lines }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to [`PROCESS_DEADLINE`] for a log line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_within(needle, PROCESS_DEADLINE)
    }

    /// Waits up to `deadline` for a log line containing `needle` and returns it; panics if the
    /// broker's log ends or the time runs out first, quoting the last lines it saw.
    pub fn wait_for_within(&self, needle: &str, deadline: Duration) -> String {
        const QUOTED_LINES_MAX: usize = 12;
        let until = Instant::now() + deadline;
        let mut recent = std::collections::VecDeque::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => {
                    if recent.len() == QUOTED_LINES_MAX {
                        recent.pop_front();
                    }
                    recent.push_back(line);
                }
                Err(error) => panic!(
                    "no log line with {needle:?} within {deadline:?} ({error}); pid {}; last \
                     lines:\n{}",
                    self.child.id(),
                    Vec::from(recent).join("\n")
                ),
            }
        }
    }

    /// The client address from the `listening` line.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr_within(PROCESS_DEADLINE)
    }

    pub fn client_addr_within(&self, deadline: Duration) -> SocketAddr {
        let line = self.wait_for_within("listening", deadline);
        let field = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("client_addr="))
            .expect("the listening line names client_addr");
        field.parse().expect("client_addr is an address")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGKILL, then reaps the child so that its data directory lock is free.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit()
    }

    /// Waits up to [`PROCESS_DEADLINE`] for the child to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

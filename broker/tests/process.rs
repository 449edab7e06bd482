//! The `ruuster` binary as an operator meets it: started with flags, read through its log,
//! stopped with a signal. Each test runs a real process on `127.0.0.1`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a broker may take to start or stop here before the test gives up on it.
const PROCESS_DEADLINE: Duration = Duration::from_secs(20);

struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Broker {
    fn start(data_dir: &PathBuf, extra: &[&str]) -> Broker {
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
        Broker { child, lines }
    }

    /// Waits for a log line containing `needle` and returns it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(error) => panic!("no log line with {needle:?}: {error}"),
            }
        }
    }

    fn client_addr(&self) -> SocketAddr {
        let line = self.wait_for("listening");
        let field = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("client_addr="))
            .unwrap();
        field.parse().unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn wait_exit(&mut self) -> ExitStatus {
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

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("process")
        .join(name);
    let _ = std::fs::remove_dir_all(&path);
    path
}

#[test]
fn a_broker_starts_with_defaults_accepts_and_stops_cleanly_on_sigint() {
    let data_dir = scratch("sigint");
    let mut broker = Broker::start(&data_dir, &["--listen", "127.0.0.1:0", "--shards", "2"]);
    let address = broker.client_addr();
    TcpStream::connect(address).expect("the client port accepts");

    broker.signal(libc::SIGINT);
    broker.wait_for("stopped");
    assert!(broker.wait_exit().success());
}

#[test]
fn sigterm_also_stops_the_broker_cleanly() {
    let data_dir = scratch("sigterm");
    let mut broker = Broker::start(&data_dir, &["--listen", "127.0.0.1:0", "--shards", "1"]);
    broker.client_addr();
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit().success());
}

#[test]
fn a_second_broker_on_the_same_port_fails_instead_of_sharing_it() {
    let first = Broker::start(&scratch("port-first"), &["--listen", "127.0.0.1:0"]);
    let address = first.client_addr().to_string();

    let mut second = Broker::start(&scratch("port-second"), &["--listen", &address]);
    second.wait_for("cannot listen");
    assert_eq!(second.wait_exit().code(), Some(1));
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let data_dir = scratch("shared-dir");
    let first = Broker::start(&data_dir, &["--listen", "127.0.0.1:0"]);
    first.client_addr();

    let mut second = Broker::start(&data_dir, &["--listen", "127.0.0.1:0"]);
    second.wait_for("in use by another broker");
    assert_eq!(second.wait_exit().code(), Some(1));
}

#[test]
fn restarting_with_another_shard_count_is_refused() {
    let data_dir = scratch("shard-count");
    let mut first = Broker::start(&data_dir, &["--listen", "127.0.0.1:0", "--shards", "2"]);
    first.client_addr();
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());

    let mut second = Broker::start(&data_dir, &["--listen", "127.0.0.1:0", "--shards", "3"]);
    second.wait_for("was created with 2 shards");
    assert_eq!(second.wait_exit().code(), Some(1));
}

#[test]
fn a_data_dir_on_tmpfs_is_refused() {
    let shm = PathBuf::from("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: /dev/shm does not exist on this host");
        return;
    }
    let data_dir = shm.join(format!("ruuster-test-{}", std::process::id()));
    let mut broker = Broker::start(&data_dir, &["--listen", "127.0.0.1:0"]);
    broker.wait_for("tmpfs");
    assert_eq!(broker.wait_exit().code(), Some(1));
    let _ = std::fs::remove_dir_all(&data_dir);
}

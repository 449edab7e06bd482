//! A real full disk: the broker's data directory on a 64 MiB ext4 filesystem in a loop device,
//! filled by publishes with the free-space limit turned off, so that the journal meets ENOSPC
//! when it preallocates its next segment.
//!
//! Needs root, `mkfs.ext4` and loop mounts; without them it prints a note and passes without
//! testing anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestClient, test_config};
use ruuster_broker::server::Broker;
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, Frame};

/// The filesystem's size: a few of the test's 8 MiB segments.
const IMAGE_BYTES: u64 = 64 << 20;

/// Frames published before the test gives up waiting for the disk to fill: 200 x 512 KiB is
/// more than the filesystem holds.
const FRAMES_MAX: u64 = 200;

/// Unmounts and deletes the loop filesystem however the test ends.
struct LoopMount {
    image: PathBuf,
    mount_point: PathBuf,
}

impl LoopMount {
    fn create(base: &Path) -> Result<LoopMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(base.join("mnt"))
            .status();
        let _ = std::fs::remove_dir_all(base);
        std::fs::create_dir_all(base.join("mnt")).map_err(|error| error.to_string())?;
        let image = base.join("disk.img");
        let file = std::fs::File::create(&image).map_err(|error| error.to_string())?;
        file.set_len(IMAGE_BYTES)
            .map_err(|error| error.to_string())?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image))?;
        let mount_point = base.join("mnt");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount_point))?;
        Ok(LoopMount { image, mount_point })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // A stopped broker's shard threads may leave journal files open until this process
        // exits, so the unmount is lazy: the filesystem goes once the last file closes.
        let unmounted = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            eprintln!(
                "note: {} could not be unmounted",
                self.mount_point.display()
            );
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Publishes until the journal cannot preallocate its next segment: the publishes that hit it
/// are confirmed negatively with 601 `disk-low` (nothing panics, nothing is confirmed as
/// stored that was not), and the broker goes on answering requests and delivering what it
/// stored. Catches: a panic or a poisoned journal on ENOSPC, a wrong code, a broker that stops
/// serving. Cannot catch: ENOSPC on paths other than segment preallocation (an ext4 that
/// preallocated the segment does not fail its writes for space).
#[test]
fn a_full_disk_refuses_publishes_with_disk_low_and_the_broker_keeps_serving() {
    let _serial = common::serial();
    common::init_logs();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("disk-full");
    let mount = match LoopMount::create(&base) {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!("note: the full-disk test is skipped: {reason}");
            return;
        }
    };
    let mut config = test_config(&mount.mount_point.join("data"), 1);
    config.segment_bytes = 8 << 20;
    config.disk_free_limit_bytes = 0;
    let broker = Broker::start(config).expect("broker starts on the loop filesystem");

    let mut publisher = TestClient::connect(broker.client_addr());
    publisher.declare_queue("fill", true);
    let payloads: Vec<Vec<u8>> = (0..16).map(|_| vec![1u8; 32 << 10]).collect();
    let mut stored_count = 0u64;
    let mut refused_count = 0u64;
    for frame in 1..=FRAMES_MAX {
        publisher.publish("", "fill", &payloads, Durability::Fsynced);
        for confirm in publisher.confirms_through(frame * 16) {
            let count = confirm.last - confirm.first + 1;
            match confirm.status {
                ConfirmStatus::Stored(_) => stored_count += count,
                ConfirmStatus::Rejected(code) => {
                    assert_eq!(code, ErrorCode::DISK_LOW, "{confirm:?}");
                    refused_count += count;
                }
                other => panic!("unexpected confirm status {other:?}"),
            }
        }
        if refused_count > 0 {
            break;
        }
    }
    eprintln!("full disk: stored_count={stored_count} refused_count={refused_count}");
    assert!(refused_count > 0, "the disk never filled");
    assert!(stored_count > 0);

    let stats = publisher.stats();
    assert_eq!(stats["stored_count"], stored_count);
    let mut consumer = TestClient::connect(broker.client_addr());
    consumer.consume("fill", 10);
    for _ in 0..10 {
        let delivery = consumer.next_delivery();
        assert_eq!(TestClient::payload(&delivery).len(), 32 << 10);
    }
    match consumer.request(|request_id| Frame::Stats(ruuster_wire::frame::Stats { request_id })) {
        Frame::StatsOk(_) => {}
        other => panic!("stats after a full disk: {other:?}"),
    }

    drop(consumer);
    drop(publisher);
    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
    drop(mount);
}

//! The test guest (built by `scripts/guest/build-guest-image.sh`), the console marker it
//! prints when it is up, and the clean-up of every process a benchmark started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmfleet_hypervisor::ImageCatalog;

use crate::{BenchError, Context, Result};

/// What the test guest's init prints on its serial console once it is up.
pub const READY_MARKER: &[u8] = b"vmfleet-guest ready";

/// The catalog names the benchmark boots: the kernel, its companion initrd, the root disk.
pub const KERNEL: &str = "vmlinux.bin";
pub const INITRD: &str = "vmlinux.bin.initrd";
pub const ROOTFS: &str = "rootfs.ext4";

/// Where the image build put the guest: `$VMFLEET_IMAGE_CACHE`, else
/// `${XDG_CACHE_HOME:-~/.cache}/vmfleet/images`; checked to hold the three files.
pub fn image_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("VMFLEET_IMAGE_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = match std::env::var_os("XDG_CACHE_HOME") {
                Some(c) => PathBuf::from(c),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache"),
            };
            cache.join("vmfleet/images")
        }
    };
    for f in ["vmlinux.bin", "initrd.img", "rootfs.ext4"] {
        if !dir.join(f).is_file() {
            return Err(BenchError::new(format!(
                "the test guest is missing ({}): run scripts/guest/build-guest-image.sh",
                dir.join(f).display()
            )));
        }
    }
    Ok(dir)
}

/// A catalog under `root` holding the guest from `images` (hard links where possible).
pub fn catalog(root: &Path, images: &Path) -> Result<ImageCatalog> {
    let cat = ImageCatalog::open(root).context("opening the image catalog")?;
    for (from, to) in [
        ("vmlinux.bin", KERNEL),
        ("initrd.img", INITRD),
        ("rootfs.ext4", ROOTFS),
    ] {
        let (src, dest) = (images.join(from), cat.root().join(to));
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).context(format!("copying {}", src.display()))?;
        }
    }
    Ok(cat)
}

/// The image build's `MANIFEST` (`key=value` lines): which kernel, which busybox, checksums.
pub fn manifest(images: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(images.join("MANIFEST"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Finds a marker in a byte stream fed chunk by chunk, across chunk boundaries, and says
/// which chunk completed it.
#[derive(Debug)]
pub struct MarkerScan {
    needle: &'static [u8],
    /// The last `needle.len() - 1` bytes seen, then the chunk being scanned.
    window: Vec<u8>,
    /// The last bytes seen, for error messages.
    tail: Vec<u8>,
}

const TAIL_BYTES: usize = 2048;

impl MarkerScan {
    pub fn new(needle: &'static [u8]) -> Self {
        MarkerScan {
            needle,
            window: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Feeds the next chunk; true when this chunk completes the marker.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
        if self.needle.is_empty() {
            return true;
        }
        self.window.extend_from_slice(chunk);
        let found = self
            .window
            .windows(self.needle.len())
            .any(|w| w == self.needle);
        let keep = self.needle.len() - 1;
        if self.window.len() > keep {
            self.window.drain(..self.window.len() - keep);
        }
        found
    }

    /// The last output seen, as text.
    pub fn tail(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// Kills, when dropped, every process whose command line mentions `root` (the benchmark's
/// own temporary directory, which every QEMU it starts gets in its arguments): nothing a run
/// started outlives it, whether it ends, fails, panics or is interrupted.
pub struct Sweeper {
    root: String,
}

impl Sweeper {
    pub fn new(root: &Path) -> Self {
        Sweeper {
            root: root.display().to_string(),
        }
    }

    /// Kills the processes now; returns how many there were.
    pub fn sweep(&self) -> usize {
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut killed = 0;
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let mentions = cmdline
                .split(|&b| b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(&self.root));
            if mentions && kill(pid) {
                killed += 1;
            }
        }
        killed
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// SIGKILL; true if sent.
pub fn kill(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_across_chunks() {
        let mut s = MarkerScan::new(b"vmfleet-guest ready");
        assert!(!s.feed(b"booting... vmfleet-gu"));
        assert!(!s.feed(b"est re"));
        assert!(s.feed(b"ady\r\n/ # "));
        let mut s = MarkerScan::new(b"vmfleet-guest ready");
        assert!(!s.feed(b"vmfleet-guest"));
        assert!(!s.feed(b" not ready"));
        assert!(s.feed(b"x vmfleet-guest ready"));
        assert!(s.tail().ends_with("x vmfleet-guest ready"));
    }

    #[test]
    fn the_sweeper_kills_only_what_names_its_directory() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        // argv[0] names the directory, as a QEMU's socket paths do.
        let mut ours = std::process::Command::new("sleep")
            .arg0(dir.path().join("sleep"))
            .arg("30")
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still this test's.
        let cmdline = format!("/proc/{}/cmdline", ours.id());
        let needle = dir.path().display().to_string();
        for _ in 0..200 {
            let seen = std::fs::read(&cmdline).unwrap_or_default();
            if String::from_utf8_lossy(&seen).contains(&needle) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(Sweeper::new(dir.path()).sweep(), 1);
        assert!(!ours.wait().unwrap().success());
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
    }
}

//! Hostile root filesystem archives for import tests, and a canary folder to prove they reach
//! nothing outside the agent's build: its every name, kind, content, link target and mode are
//! recorded before and compared after.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A folder of the test's own with files in it, standing in for a host folder (never a real
/// system path).
pub struct Canary {
    pub dir: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Canary {
    pub fn new(parent: &Path) -> Canary {
        let dir = parent.join("canary");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("hostname"), "canary-host\n").unwrap();
        std::fs::write(dir.join("hosts"), "10.9.9.9 canary\n").unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 10.9.9.9\n").unwrap();
        std::fs::write(dir.join("bin/tool"), "canary tool\n").unwrap();
        let before = snapshot(&dir);
        Canary { dir, before }
    }

    pub fn path(&self, rel: &str) -> String {
        self.dir.join(rel).to_str().unwrap().to_string()
    }

    /// Panics with the difference when anything under the canary changed.
    pub fn assert_untouched(&self, what: &str) {
        let now = snapshot(&self.dir);
        assert_eq!(now, self.before, "{what}: the canary folder changed");
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else {
                format!("file {:?}", std::fs::read(&p).unwrap())
            };
            out.insert(p, format!("{what} mode {:o} nlink {}", m.mode(), m.nlink()));
        }
    }
    out
}

/// A tar archive written member by member, names and link targets raw (the tar crate's own
/// helpers refuse the hostile ones).
#[derive(Default)]
pub struct Archive {
    b: Vec<u8>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    fn header(kind: tar::EntryType, name: &str, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Archive {
        h.set_cksum();
        self.b.extend_from_slice(h.as_bytes());
        self.b.extend_from_slice(data);
        self.b.resize(self.b.len().next_multiple_of(512), 0);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Archive {
        let h = Self::header(tar::EntryType::Regular, name, data.len() as u64, mode);
        self.push(h, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Archive {
        let h = Self::header(tar::EntryType::Directory, name, 0, 0o755);
        self.push(h, &[])
    }

    fn link_kind(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Archive {
        let mut h = Self::header(kind, name, 0, 0o777);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Archive {
        self.link_kind(tar::EntryType::Symlink, name, target)
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Archive {
        self.link_kind(tar::EntryType::Link, name, target)
    }

    /// busybox as /bin/busybox with `sh` and `cat` linked to it: enough to boot and look around.
    pub fn bootable(&mut self) -> &mut Archive {
        let bb = std::fs::read("/bin/busybox").unwrap();
        self.dir("bin/").file("bin/busybox", 0o755, &bb);
        for tool in ["sh", "cat", "ls", "hostname"] {
            self.symlink(&format!("bin/{tool}"), "busybox");
        }
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.b);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// A gzip-compressed archive holding one file of `zeros` zero bytes, made streaming (the test
/// never holds the expanded bytes): 1 GB compresses to about 1 MB.
pub fn gzip_bomb(zeros: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let h = Archive::header(tar::EntryType::Regular, "zeros", zeros, 0o644);
    let mut h = h;
    h.set_cksum();
    gz.write_all(h.as_bytes()).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(zeros), &mut gz).unwrap();
    let pad = zeros.next_multiple_of(512) - zeros + 1024;
    std::io::copy(&mut std::io::repeat(0).take(pad), &mut gz).unwrap();
    gz.finish().unwrap()
}

/// Names in the agent's templates folder that an import left (builds, uploads, copies).
pub fn build_leftovers(templates: &Path) -> Vec<String> {
    std::fs::read_dir(templates)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".build-tpl") || n.starts_with(".upload-") || n.starts_with(".source-")
        })
        .collect()
}

//! A tiny writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than through the `cpio` tool so entries can be owned by root and device
//! nodes (`/dev/console`) can be added without privileges.

const TRAILER: &str = "TRAILER!!!";

pub(crate) struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub(crate) fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    pub(crate) fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, &[], 0, 0);
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | (mode & 0o7777), data, 0, 0);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120_777, target.as_bytes(), 0, 0);
    }

    pub(crate) fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, 0o020_000 | (mode & 0o7777), &[], major, minor);
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8], rmajor: u32, rminor: u32) {
        let name = path.trim_start_matches('/');
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rmajor,
            rminor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        let fields = [
            0u32,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            TRAILER.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(TRAILER.as_bytes());
        self.out.push(0);
        self.pad();
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.dir("/bin");
        c.file("/init", 0o755, b"#!/bin/sh\n");
        c.symlink("/bin/sh", "busybox");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 512, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("init\0"));
    }
}

//! A paused sandbox's saved state, made as light as its fresh restore.
//!
//! A sandbox restored from a boot snapshot maps the snapshot's RAM privately (see [`super::ram`]):
//! pages its guest never wrote stay shared with every other sandbox of that template. Pausing
//! saves all of its RAM into the migration stream, and loading that stream on resume writes
//! every page into the new QEMU's memory, so a resumed sandbox used to carry its whole RAM
//! privately (about 190 MB resident against 84 MB for a fresh restore).
//!
//! [`drop_template_pages`] rewrites the stream after the pause: a page of the main RAM block
//! whose bytes equal the template's RAM file at the same offset is dropped. The resume then maps
//! the template's RAM again (privately, as the create did) and loads the rest: only the pages
//! the guest changed become its own.
//!
//! The stream is QEMU's precopy format (QEMU 7.2, no compression, multifd, xbzrle or RDMA):
//! a header and an optional configuration section, then the `ram` section's setup, parts and end
//! (page records `offset | flags`), then every device's full section, then EOF. Only the `ram`
//! records are parsed; everything from the first section that is not `ram`'s is copied as is.
//! Anything unexpected leaves the stream unfiltered (the resume is then only heavier).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, bail, ensure};

const FILE_MAGIC: u32 = 0x5145_564d;
const FILE_VERSION: u32 = 3;
const VM_CONFIGURATION: u8 = 0x07;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FOOTER: u8 = 0x7e;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_MASK: u64 = PAGE - 1;

/// The guest page size (x86).
const PAGE: u64 = 4096;

/// What [`drop_template_pages`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Pages of the main RAM block in the stream.
    pub pages: u64,
    /// Of which dropped: the template's RAM file holds the same bytes.
    pub dropped: u64,
}

/// Copies the saved state `src` to `dst` without the pages of RAM block `block` that `template`
/// (a RAM file of the block's size) already holds at the same offset. Errors leave `dst` in an
/// unknown state: the caller keeps `src` then.
pub fn drop_template_pages(
    src: &Path,
    dst: &Path,
    block: &str,
    template: &Path,
) -> anyhow::Result<Filtered> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(src)?);
    // The guest's memory: readable by no one else (as the state QEMU wrote).
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let template = File::open(template).with_context(|| format!("open {}", template.display()))?;
    let template_len = template.metadata()?.len();
    let mut f = Filter {
        r: &mut r,
        w: &mut w,
        block: block.as_bytes(),
        template,
        template_len,
        ram_section: None,
        last_block: Vec::new(),
        out: Filtered::default(),
        scratch: vec![0u8; PAGE as usize],
        window: Vec::with_capacity(WINDOW),
        window_start: 0,
    };
    f.run()?;
    let out = f.out;
    w.flush()?;
    Ok(out)
}

struct Filter<'a, R: Read, W: Write> {
    r: &'a mut R,
    w: &'a mut W,
    block: &'a [u8],
    template: File,
    template_len: u64,
    ram_section: Option<u32>,
    /// The block named by the last record read (records with CONTINUE name none).
    last_block: Vec<u8>,
    out: Filtered,
    scratch: Vec<u8>,
    /// The template's bytes from `window_start`: pages come in ascending order, so one read
    /// serves many.
    window: Vec<u8>,
    window_start: u64,
}

/// Bytes of the template read at once.
const WINDOW: usize = 1 << 20;

impl<R: Read, W: Write> Filter<'_, R, W> {
    fn run(&mut self) -> anyhow::Result<()> {
        ensure!(self.be32()? == FILE_MAGIC, "not a QEMU state stream");
        ensure!(self.be32()? == FILE_VERSION, "unknown stream version");
        self.w.write_all(&FILE_MAGIC.to_be_bytes())?;
        self.w.write_all(&FILE_VERSION.to_be_bytes())?;
        let mut kind = self.byte()?;
        if kind == VM_CONFIGURATION {
            // vmstate "configuration": the machine type's name, length first (no subsections:
            // x-ignore-shared is off when a pause saves).
            let len = self.be32()?;
            ensure!(len < 256, "implausible machine type name");
            let mut name = vec![0u8; len as usize];
            self.r.read_exact(&mut name)?;
            self.w.write_all(&[VM_CONFIGURATION])?;
            self.w.write_all(&len.to_be_bytes())?;
            self.w.write_all(&name)?;
            kind = self.byte()?;
        }
        loop {
            match kind {
                SECTION_START => {
                    let id = self.be32()?;
                    let idstr = self.short_string()?;
                    let (instance, version) = (self.be32()?, self.be32()?);
                    ensure!(
                        idstr == b"ram" && self.ram_section.is_none(),
                        "an iterable section other than ram: {}",
                        String::from_utf8_lossy(&idstr)
                    );
                    self.ram_section = Some(id);
                    self.w.write_all(&[SECTION_START])?;
                    self.w.write_all(&id.to_be_bytes())?;
                    self.put_short_string(&idstr)?;
                    self.w.write_all(&instance.to_be_bytes())?;
                    self.w.write_all(&version.to_be_bytes())?;
                    self.ram_records(id)?;
                }
                SECTION_PART | SECTION_END => {
                    let id = self.be32()?;
                    ensure!(Some(id) == self.ram_section, "a part of an unknown section");
                    self.w.write_all(&[kind])?;
                    self.w.write_all(&id.to_be_bytes())?;
                    self.ram_records(id)?;
                }
                other => {
                    ensure!(self.ram_section.is_some(), "no ram section");
                    // The devices' sections and EOF: copied as they are.
                    self.w.write_all(&[other])?;
                    std::io::copy(self.r, self.w)?;
                    return Ok(());
                }
            }
            kind = self.byte()?;
        }
    }

    /// One section's ram records up to its end-of-section flag, and the section footer.
    fn ram_records(&mut self, section: u32) -> anyhow::Result<()> {
        loop {
            let header = self.be64()?;
            let (offset, flags) = (header & !FLAG_MASK, header & FLAG_MASK);
            if flags & FLAG_EOS != 0 {
                ensure!(flags == FLAG_EOS, "flags {flags:#x} with end of section");
                self.w.write_all(&header.to_be_bytes())?;
                break;
            }
            if flags & FLAG_MEM_SIZE != 0 {
                ensure!(
                    flags == FLAG_MEM_SIZE,
                    "flags {flags:#x} with the block list"
                );
                self.w.write_all(&header.to_be_bytes())?;
                self.block_list(offset)?;
                continue;
            }
            if flags & FLAG_CONTINUE == 0 {
                self.last_block = self.short_string()?;
            } else {
                ensure!(!self.last_block.is_empty(), "a page continues no block");
            }
            let data = match flags & !FLAG_CONTINUE {
                FLAG_PAGE => {
                    self.r.read_exact(&mut self.scratch)?;
                    None
                }
                FLAG_ZERO => Some(self.byte()?),
                f => bail!("page flags {f:#x} (compression or xbzrle?)"),
            };
            if self.last_block == self.block {
                self.out.pages += 1;
                if self.template_holds(offset, data)? {
                    self.out.dropped += 1;
                    continue;
                }
            }
            // Kept records always name their block: the one before may have been dropped.
            let kind = if data.is_some() { FLAG_ZERO } else { FLAG_PAGE };
            self.w.write_all(&(offset | kind).to_be_bytes())?;
            let block = std::mem::take(&mut self.last_block);
            self.put_short_string(&block)?;
            self.last_block = block;
            match data {
                Some(fill) => self.w.write_all(&[fill])?,
                None => self.w.write_all(&self.scratch)?,
            }
        }
        // The footer: QEMU sends one after every section.
        let footer = self.byte()?;
        ensure!(footer == SECTION_FOOTER, "no section footer");
        ensure!(self.be32()? == section, "the footer names another section");
        self.w.write_all(&[SECTION_FOOTER])?;
        self.w.write_all(&section.to_be_bytes())?;
        Ok(())
    }

    /// The setup's list of blocks (name, used length), `total` bytes in all.
    fn block_list(&mut self, total: u64) -> anyhow::Result<()> {
        let mut left = total;
        while left > 0 {
            let name = self.short_string()?;
            let len = self.be64()?;
            self.put_short_string(&name)?;
            self.w.write_all(&len.to_be_bytes())?;
            if name == self.block {
                ensure!(
                    len == self.template_len,
                    "the RAM block is {len} bytes, the template's RAM file {}",
                    self.template_len
                );
            }
            left = left
                .checked_sub(len)
                .context("block lengths past the total")?;
        }
        Ok(())
    }

    /// Whether the template's RAM holds this page: the same bytes, or zeros for a zero page.
    fn template_holds(&mut self, offset: u64, zero_fill: Option<u8>) -> anyhow::Result<bool> {
        if offset + PAGE > self.template_len {
            return Ok(false);
        }
        let inside = offset >= self.window_start
            && offset + PAGE <= self.window_start + self.window.len() as u64;
        if !inside {
            let len = (WINDOW as u64).min(self.template_len - offset) as usize;
            self.window.resize(len, 0);
            self.template.read_exact_at(&mut self.window, offset)?;
            self.window_start = offset;
        }
        let at = (offset - self.window_start) as usize;
        let theirs = &self.window[at..at + PAGE as usize];
        Ok(match zero_fill {
            Some(fill) => theirs.iter().all(|b| *b == fill),
            None => theirs == self.scratch.as_slice(),
        })
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn be32(&mut self) -> anyhow::Result<u32> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn be64(&mut self) -> anyhow::Result<u64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn short_string(&mut self) -> anyhow::Result<Vec<u8>> {
        let len = self.byte()?;
        let mut s = vec![0u8; len as usize];
        self.r.read_exact(&mut s)?;
        Ok(s)
    }

    fn put_short_string(&mut self, s: &[u8]) -> anyhow::Result<()> {
        let len = u8::try_from(s.len()).context("a block name over 255 bytes")?;
        self.w.write_all(&[len])?;
        self.w.write_all(s)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream in QEMU's layout: configuration, ram setup (two blocks), one part, the end,
    /// then a device section and EOF that must come through byte for byte.
    fn stream(pages: &[(&str, u64, Option<&[u8]>)], tail: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(FILE_MAGIC.to_be_bytes());
        s.extend(FILE_VERSION.to_be_bytes());
        s.push(VM_CONFIGURATION);
        s.extend(7u32.to_be_bytes());
        s.extend(b"microvm");
        let footer = |s: &mut Vec<u8>| {
            s.push(SECTION_FOOTER);
            s.extend(2u32.to_be_bytes());
        };
        s.push(SECTION_START);
        s.extend(2u32.to_be_bytes());
        s.push(3);
        s.extend(b"ram");
        s.extend(0u32.to_be_bytes());
        s.extend(4u32.to_be_bytes());
        s.extend(((3 * PAGE + 2 * PAGE) | FLAG_MEM_SIZE).to_be_bytes());
        for (name, len) in [("mem", 3 * PAGE), ("rom", 2 * PAGE)] {
            s.push(name.len() as u8);
            s.extend(name.as_bytes());
            s.extend(len.to_be_bytes());
        }
        s.extend(FLAG_EOS.to_be_bytes());
        footer(&mut s);
        s.push(SECTION_PART);
        s.extend(2u32.to_be_bytes());
        let mut last = "";
        for (block, offset, data) in pages {
            let cont = if *block == last { FLAG_CONTINUE } else { 0 };
            let kind = if data.is_some() { FLAG_PAGE } else { FLAG_ZERO };
            s.extend((offset | kind | cont).to_be_bytes());
            if cont == 0 {
                s.push(block.len() as u8);
                s.extend(block.as_bytes());
            }
            match data {
                Some(d) => s.extend(*d),
                None => s.push(0),
            }
            last = block;
        }
        s.extend(FLAG_EOS.to_be_bytes());
        footer(&mut s);
        s.push(SECTION_END);
        s.extend(2u32.to_be_bytes());
        s.extend(FLAG_EOS.to_be_bytes());
        footer(&mut s);
        s.extend(tail);
        s
    }

    #[test]
    fn pages_the_template_holds_are_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![b'a'; PAGE as usize];
        let b = vec![b'b'; PAGE as usize];
        let mut template = a.clone();
        template.extend(&b);
        template.extend(vec![0u8; PAGE as usize]);
        std::fs::write(dir.path().join("mem.ram"), &template).unwrap();
        let tail = b"\x04devices and eof, never parsed\x08";
        let src = stream(
            &[
                ("mem", 0, Some(&a)),        // same as the template: dropped
                ("mem", PAGE, Some(&a)),     // written by the guest: kept
                ("mem", 2 * PAGE, None),     // zero, the template's too: dropped
                ("rom", 0, Some(&b)),        // another block: kept
                ("mem", PAGE * 2, Some(&b)), // kept, after a block switch
            ],
            tail,
        );
        std::fs::write(dir.path().join("state.bin"), &src).unwrap();
        let got = drop_template_pages(
            &dir.path().join("state.bin"),
            &dir.path().join("out.bin"),
            "mem",
            &dir.path().join("mem.ram"),
        )
        .unwrap();
        assert_eq!(
            got,
            Filtered {
                pages: 4,
                dropped: 2
            }
        );
        let expected = stream(
            &[
                ("mem", PAGE, Some(&a)),
                ("rom", 0, Some(&b)),
                ("mem", PAGE * 2, Some(&b)),
            ],
            tail,
        );
        assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), expected);
    }

    #[test]
    fn a_stream_it_does_not_know_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mem.ram"), vec![0u8; 3 * PAGE as usize]).unwrap();
        let mut wrong_size = stream(&[], b"\x08");
        // The RAM block's length no longer matches the template's file.
        std::fs::write(dir.path().join("mem.ram"), vec![0u8; PAGE as usize]).unwrap();
        std::fs::write(dir.path().join("s1"), &wrong_size).unwrap();
        let e = drop_template_pages(
            &dir.path().join("s1"),
            &dir.path().join("o1"),
            "mem",
            &dir.path().join("mem.ram"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("RAM block"), "{e:#}");
        // Compressed pages (flag 0x100) are not ours to read.
        wrong_size.truncate(8);
        wrong_size.extend(b"junk");
        std::fs::write(dir.path().join("s2"), &wrong_size).unwrap();
        assert!(
            drop_template_pages(
                &dir.path().join("s2"),
                &dir.path().join("o2"),
                "mem",
                &dir.path().join("mem.ram"),
            )
            .is_err()
        );
    }
}

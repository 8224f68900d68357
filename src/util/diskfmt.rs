//! Whether a base image file is packed (Canonical ships a VHD in a tar.gz,
//! Debian a raw disk in a tar.xz) and how, from its first bytes. The disk
//! formats themselves are `validate::detect_format`'s and `qemu-img`'s
//! business; this only decides what to unpack first and what `plan` says.
//! Written by hand because it is four magic numbers.

use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Xz,
    Gzip,
    Zstd,
    Tar,
    /// Not packed: a disk image for `qemu-img`.
    None,
}

impl Packing {
    pub fn describe(self) -> &'static str {
        match self {
            Packing::Xz => "xz-compressed",
            Packing::Gzip => "gzip-compressed",
            Packing::Zstd => "zstd-compressed",
            Packing::Tar => "a tar archive",
            Packing::None => "a disk image",
        }
    }

    /// The host command that writes the unpacked stream to standard output.
    pub fn unpacker(self) -> Option<(&'static str, &'static [&'static str], &'static str)> {
        match self {
            Packing::Xz => Some(("xz", &["-dc"], "xz-utils")),
            Packing::Gzip => Some(("gzip", &["-dc"], "gzip")),
            Packing::Zstd => Some(("zstd", &["-dcq"], "zstd")),
            Packing::Tar | Packing::None => None,
        }
    }
}

/// How `head` (the first 512 bytes or fewer) is packed.
pub fn classify(head: &[u8]) -> Packing {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"\xfd7zXZ\0") {
        Packing::Xz
    } else if at(0, b"\x1f\x8b") {
        Packing::Gzip
    } else if at(0, b"\x28\xb5\x2f\xfd") {
        Packing::Zstd
    } else if at(257, b"ustar") {
        Packing::Tar
    } else {
        Packing::None
    }
}

/// How the file at `path` is packed (one read of 512 bytes).
pub fn sniff(path: &Path) -> std::io::Result<Packing> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)?
        .take(512)
        .read_to_end(&mut head)?;
    Ok(classify(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_packing_is_told_by_its_own_magic_and_a_disk_by_none() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        let rows: &[(&[u8], Packing)] = &[
            (b"\xfd7zXZ\0\0\x04", Packing::Xz),
            (b"\x1f\x8b\x08", Packing::Gzip),
            (b"\x28\xb5\x2f\xfd", Packing::Zstd),
            (&tar, Packing::Tar),
            (b"QFI\xfb\0\0\0\x03", Packing::None),
            (b"conectix", Packing::None),
            (&[0u8; 512], Packing::None),
            // A truncated magic is not the packing.
            (b"\xfd7zX", Packing::None),
            (b"", Packing::None),
        ];
        for (head, want) in rows {
            assert_eq!(classify(head), *want, "{head:?}");
        }
    }
}

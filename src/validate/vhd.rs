//! The 512-byte VHD footer (big-endian), written by hand: no crate parses it.
//!
//! A page-blob VHD is a *fixed* VHD: the raw disk, then this footer. Azure
//! requires the virtual size to be a whole number of MiB and the file length to
//! be exactly size + 512.

use serde::Serialize;

pub const FOOTER_LEN: u64 = 512;
const COOKIE: &[u8; 8] = b"conectix";
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
    Other(u32),
}

#[derive(Debug, Clone, Serialize)]
pub struct Footer {
    pub original_size: u64,
    pub current_size: u64,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub computed_checksum: u32,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FooterProblem {
    #[error("the file is {0} bytes, too short to hold a VHD footer")]
    TooShort(u64),
    #[error("no VHD footer: the last 512 bytes do not start with the `conectix` cookie")]
    NoCookie,
    #[error("footer checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "the VHD is {0:?}, not fixed: Azure needs a fixed VHD (qemu-img convert -O vpc -o subformat=fixed,force_size=on)"
    )]
    NotFixed(DiskType),
    #[error(
        "virtual size {0} bytes is not a whole number of MiB (Azure requires it; use qemu-img's force_size=on)"
    )]
    NotMibAligned(u64),
    #[error("length {length} bytes is not virtual size {size} + 512")]
    LengthMismatch { length: u64, size: u64 },
}

/// One's complement of the byte sum, skipping the checksum field itself.
pub fn checksum(footer: &[u8; 512]) -> u32 {
    let sum: u32 = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, b)| u32::from(*b))
        .sum();
    !sum
}

pub fn parse(footer: &[u8; 512]) -> Result<Footer, FooterProblem> {
    if &footer[0..8] != COOKIE {
        return Err(FooterProblem::NoCookie);
    }
    let be32 = |at: usize| u32::from_be_bytes(footer[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(footer[at..at + 8].try_into().expect("8 bytes"));
    let disk_type = match be32(60) {
        2 => DiskType::Fixed,
        3 => DiskType::Dynamic,
        4 => DiskType::Differencing,
        other => DiskType::Other(other),
    };
    Ok(Footer {
        version: be32(12),
        original_size: be64(40),
        current_size: be64(48),
        disk_type,
        checksum: be32(64),
        computed_checksum: checksum(footer),
    })
}

/// Every rule Azure applies to a page-blob VHD, given its footer and length.
/// Returns the footer and the problems found (empty when the VHD is usable).
pub fn check(footer_bytes: &[u8; 512], length: u64) -> (Option<Footer>, Vec<FooterProblem>) {
    if length < FOOTER_LEN {
        return (None, vec![FooterProblem::TooShort(length)]);
    }
    let footer = match parse(footer_bytes) {
        Ok(f) => f,
        Err(p) => return (None, vec![p]),
    };
    let mut problems = Vec::new();
    if footer.checksum != footer.computed_checksum {
        problems.push(FooterProblem::Checksum {
            stored: footer.checksum,
            computed: footer.computed_checksum,
        });
    }
    if footer.disk_type != DiskType::Fixed {
        problems.push(FooterProblem::NotFixed(footer.disk_type));
    }
    if footer.current_size % MIB != 0 {
        problems.push(FooterProblem::NotMibAligned(footer.current_size));
    }
    if length != footer.current_size + FOOTER_LEN {
        problems.push(FooterProblem::LengthMismatch {
            length,
            size: footer.current_size,
        });
    }
    (Some(footer), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(size: u64, disk_type: u32) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[0..8].copy_from_slice(COOKIE);
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&f);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn a_good_fixed_footer_has_no_problems() {
        let (f, problems) = check(&footer(4 * MIB, 2), 4 * MIB + 512);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(f.unwrap().current_size, 4 * MIB);
    }

    #[test]
    fn each_rule_is_reported() {
        let mut bad = footer(4 * MIB, 2);
        bad[100] ^= 1;
        assert!(matches!(
            check(&bad, 4 * MIB + 512).1[..],
            [FooterProblem::Checksum { .. }]
        ));
        assert_eq!(
            check(&footer(4 * MIB, 3), 4 * MIB + 512).1,
            vec![FooterProblem::NotFixed(DiskType::Dynamic)]
        );
        assert!(
            check(&footer(4 * MIB + 512, 2), 4 * MIB + 1024)
                .1
                .contains(&FooterProblem::NotMibAligned(4 * MIB + 512))
        );
        assert!(matches!(
            check(&footer(4 * MIB, 2), 4 * MIB).1[..],
            [FooterProblem::LengthMismatch { .. }]
        ));
        assert_eq!(check(&[0u8; 512], 4096).1, vec![FooterProblem::NoCookie]);
    }
}

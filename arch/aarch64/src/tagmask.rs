//! Allocation Tags of a page against its protected-byte mask (pure, host-tested): which granule
//! tags a software-stepped instruction may change on a chunk page. Used by the software store
//! path (`hypervisor/src/aarch64/guest/swstore.rs`); decision in docs/aarch64.md ("Memory
//! tagging"): a tag is locked with the bytes it covers.

/// Allocation Tag granules in a 4 KiB page (16 bytes each).
pub const TAGS: usize = 4096 / 16;

/// Whether granule `g` (0..256) of a page holds a protected byte under `mask` (one bit a byte,
/// byte `j` at bit `j % 64` of word `j / 64`, as `bulwark_core::shadow` lays it out).
pub fn granule_protected(mask: &[u64; 64], g: usize) -> bool {
    let word = mask.get(g / 4).copied().unwrap_or(0);
    (word >> ((g % 4) * 16)) & 0xffff != 0
}

/// The first byte offset in the page of a granule whose tag changed from `before` to `after`
/// although it holds a protected byte: the granule's first protected byte.
pub fn first_changed_protected_tag(
    before: &[u8; TAGS],
    after: &[u8; TAGS],
    mask: &[u64; 64],
) -> Option<usize> {
    let g = (0..TAGS).find(|&g| granule_protected(mask, g) && before.get(g) != after.get(g))?;
    (g * 16..g * 16 + 16).find(|&j| mask.get(j / 64).is_some_and(|w| (w >> (j % 64)) & 1 != 0))
}

/// The page's tags after a step: the step's tags on granules without protected bytes, the tags
/// from before the step on granules with protected bytes.
pub fn merged_tags(before: &[u8; TAGS], after: &[u8; TAGS], mask: &[u64; 64]) -> [u8; TAGS] {
    let mut t = *before;
    for (g, v) in t.iter_mut().enumerate() {
        if !granule_protected(mask, g) {
            *v = after.get(g).copied().unwrap_or(*v);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_bytes(bytes: &[usize]) -> [u64; 64] {
        let mut m = [0u64; 64];
        for &j in bytes {
            m[j / 64] |= 1 << (j % 64);
        }
        m
    }

    #[test]
    fn granules_follow_bytes() {
        let m = mask_bytes(&[0x800, 0x81f, 4095]);
        let prot: Vec<usize> = (0..TAGS).filter(|&g| granule_protected(&m, g)).collect();
        assert_eq!(prot, vec![0x80, 0x81, 255]);
        assert!(!granule_protected(&[0; 64], 0));
    }

    #[test]
    fn changed_tag_on_protected_granule_is_found_at_its_first_protected_byte() {
        let m = mask_bytes(&[0x805, 0x806]);
        let before = [3u8; TAGS];
        let mut after = before;
        after[0x7f] = 9; // unprotected granule below: allowed
        assert_eq!(first_changed_protected_tag(&before, &after, &m), None);
        after[0x80] = 9;
        assert_eq!(
            first_changed_protected_tag(&before, &after, &m),
            Some(0x805)
        );
    }

    #[test]
    fn merge_keeps_locked_tags_and_lands_the_rest() {
        let m = mask_bytes(&[0x800]);
        let before = [3u8; TAGS];
        let after = [9u8; TAGS];
        let t = merged_tags(&before, &after, &m);
        assert_eq!(t[0x80], 3);
        assert!(t.iter().enumerate().all(|(g, &v)| g == 0x80 || v == 9));
    }
}

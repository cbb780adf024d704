//! Merging a shadow step's copy back into guest memory (back ends that complete unsized
//! stores by running the instruction once against a private copy of the page: x86, see
//! `docs/x86_64-software-path.md`). Pure functions over byte arrays, tested on the host.
//!
//! `protected` is the page's protected-byte mask from [`crate::guest::Guest::protected_page`]
//! (bit `i % 64` of word `i / 64` = byte `i`).

use crate::addr::PAGE_SIZE;

/// Bytes in a page.
pub const PAGE: usize = PAGE_SIZE as usize;

fn is_protected(protected: &[u64; 64], i: usize) -> bool {
    protected
        .get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

/// Offset of the first protected byte whose value differs between the page and its copy.
pub fn first_changed_protected(
    page: &[u8; PAGE],
    copy: &[u8; PAGE],
    protected: &[u64; 64],
) -> Option<usize> {
    page.iter()
        .zip(copy.iter())
        .enumerate()
        .find(|&(i, (a, b))| a != b && is_protected(protected, i))
        .map(|(i, _)| i)
}

/// Copy every changed **unprotected** byte of `copy` into `page`; protected bytes of `page`
/// are never written. Returns how many bytes were copied.
pub fn merge_unprotected(page: &mut [u8; PAGE], copy: &[u8; PAGE], protected: &[u64; 64]) -> usize {
    let mut n = 0;
    for (i, (a, b)) in page.iter_mut().zip(copy.iter()).enumerate() {
        if *a != *b && !is_protected(protected, i) {
            *a = *b;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> [u8; PAGE] {
        let mut p = [0u8; PAGE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        p
    }

    #[test]
    fn only_unprotected_bytes_merge() {
        let page0 = pattern();
        let mut mask = [0u64; 64];
        // Protect 0x123..0x1a8 (a chunk with unaligned ends) and the last 8 bytes.
        for i in (0x123..0x1a8).chain(PAGE - 8..PAGE) {
            mask[i / 64] |= 1 << (i % 64);
        }
        let mut copy = page0;
        for i in (0x11c..0x12c).chain(0x800..0x820).chain(PAGE - 12..PAGE) {
            copy[i] ^= 0xa5;
        }
        assert_eq!(first_changed_protected(&page0, &copy, &mask), Some(0x123));
        let mut page = page0;
        let n = merge_unprotected(&mut page, &copy, &mask);
        assert_eq!(n, 7 + 0x20 + 4);
        for i in 0..PAGE {
            let prot = mask[i / 64] & (1 << (i % 64)) != 0;
            assert_eq!(
                page[i],
                if prot { page0[i] } else { copy[i] },
                "byte {i:#x}"
            );
        }
        // After the merge only protected differences remain.
        assert_eq!(first_changed_protected(&page, &copy, &mask), Some(0x123));
        assert_eq!(first_changed_protected(&page, &page, &mask), None);
        // A same-value store into protected bytes is invisible (documented limitation).
        let mut same = page0;
        same[0x130] = page0[0x130];
        assert_eq!(first_changed_protected(&page0, &same, &mask), None);
        // A whole ROE page: nothing merges.
        let mut page = page0;
        assert_eq!(merge_unprotected(&mut page, &copy, &[u64::MAX; 64]), 0);
        assert_eq!(page, page0);
        // No protection: everything merges.
        let mut page = page0;
        merge_unprotected(&mut page, &copy, &[0; 64]);
        assert_eq!(page, copy);
    }
}

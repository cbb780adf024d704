//! Merging a shadow step's copy back into guest memory (back ends that complete unsized
//! stores by running the instruction once against a private copy of the page: x86, see
//! `docs/x86_64-software-path.md`). Pure functions over byte arrays, tested on the host.
//!
//! `protected` is the page's protected-byte mask from [`crate::guest::Guest::protected_page`]
//! (bit `i % 64` of word `i / 64` = byte `i`).

use crate::addr::PAGE_SIZE;

/// Bytes in a page.
pub const PAGE: usize = PAGE_SIZE as usize;

/// 0xff in every byte lane of word `w` (bytes `8w..8w+8`) whose byte is protected.
fn protected_lanes(protected: &[u64; 64], w: usize) -> u64 {
    let bits = protected
        .get(w / 8)
        .map_or(0, |p| (p >> ((w % 8) * 8)) & 0xff);
    (0..8)
        .filter(|k| bits & (1 << k) != 0)
        .fold(0, |m, k| m | (0xff << (8 * k)))
}

/// The page and its copy as little-endian 8-byte words, one pair at a time.
fn words<'a>(
    page: &'a [u8; PAGE],
    copy: &'a [u8; PAGE],
) -> impl Iterator<Item = (usize, u64, u64)> + 'a {
    page.chunks_exact(8)
        .zip(copy.chunks_exact(8))
        .enumerate()
        .map(|(w, (a, b))| (w, word(a), word(b)))
}

fn word(b: &[u8]) -> u64 {
    <[u8; 8]>::try_from(b).map_or(0, u64::from_le_bytes)
}

/// Offset of the first protected byte whose value differs between the page and its copy.
/// Word at a time: the hot path of every software-path store compares 512 words, not 4096 bytes.
pub fn first_changed_protected(
    page: &[u8; PAGE],
    copy: &[u8; PAGE],
    protected: &[u64; 64],
) -> Option<usize> {
    words(page, copy).find_map(|(w, a, b)| {
        if a == b {
            return None;
        }
        let hit = (a ^ b) & protected_lanes(protected, w);
        (hit != 0).then(|| w * 8 + (hit.trailing_zeros() / 8) as usize)
    })
}

/// Copy every changed **unprotected** byte of `copy` into `page`; protected bytes of `page`
/// are never written. Returns how many bytes were copied.
pub fn merge_unprotected(page: &mut [u8; PAGE], copy: &[u8; PAGE], protected: &[u64; 64]) -> usize {
    let mut n = 0;
    for (w, (dst, src)) in page
        .chunks_exact_mut(8)
        .zip(copy.chunks_exact(8))
        .enumerate()
    {
        let (a, b) = (word(dst), word(src));
        if a == b {
            continue;
        }
        let take = (a ^ b) & !protected_lanes(protected, w);
        if take == 0 {
            continue;
        }
        // Count changed byte lanes: fold each lane onto its low bit.
        let mut lanes = take;
        lanes |= lanes >> 4;
        lanes |= lanes >> 2;
        lanes |= lanes >> 1;
        n += (lanes & 0x0101_0101_0101_0101).count_ones() as usize;
        dst.copy_from_slice(&((a & !take) | (b & take)).to_le_bytes());
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
    /// The word-at-a-time functions agree with a byte-by-byte reference on random pages, copies
    /// and masks (sparse and dense differences, every lane position).
    #[test]
    fn word_wise_matches_byte_reference() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..500 {
            let mut page = [0u8; PAGE];
            page.iter_mut().for_each(|b| *b = next() as u8);
            let mut copy = page;
            let changes = if case % 2 == 0 { 3 } else { 600 };
            for _ in 0..changes {
                let i = (next() % PAGE as u64) as usize;
                copy[i] = copy[i].wrapping_add(1 + (next() % 255) as u8);
            }
            let mut mask = [0u64; 64];
            let density = next() % 4;
            mask.iter_mut().for_each(|m| {
                *m = match density {
                    0 => 0,
                    1 => next() & next() & next(),
                    2 => next(),
                    _ => u64::MAX,
                }
            });
            let prot = |i: usize| mask[i / 64] & (1 << (i % 64)) != 0;
            let want_first = (0..PAGE).find(|&i| page[i] != copy[i] && prot(i));
            assert_eq!(
                first_changed_protected(&page, &copy, &mask),
                want_first,
                "case {case}"
            );
            let mut want = page;
            let mut want_n = 0;
            for i in 0..PAGE {
                if page[i] != copy[i] && !prot(i) {
                    want[i] = copy[i];
                    want_n += 1;
                }
            }
            let mut got = page;
            assert_eq!(
                merge_unprotected(&mut got, &copy, &mask),
                want_n,
                "case {case}"
            );
            assert!(got == want, "case {case}");
        }
    }
}

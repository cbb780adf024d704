//! The fuzz targets of `fuzz/` as a bounded randomized test on stable Rust (no libFuzzer here:
//! `cargo fuzz` needs nightly). Deterministic inputs from a fixed-seed xorshift generator, plus
//! hand-picked edge inputs. `BULWARK_FUZZ_ITERS=N` changes the number of random inputs per
//! target (default 200,000; about a second).

use bulwark_core::fuzz;

fn iters() -> u64 {
    std::env::var("BULWARK_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn bytes(&mut self) -> Vec<u8> {
        let len = (self.next() % 512) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn edge_inputs() -> Vec<Vec<u8>> {
    let mut v = vec![vec![], vec![0u8; 600], vec![0xffu8; 600]];
    for b in [1u8, 2, 3, 7, 0x80, 0xfe] {
        v.push(vec![b; 600]);
    }
    v
}

fn run(name: &str, target: fn(&[u8]) -> Result<(), String>, seed: u64) {
    for input in edge_inputs() {
        if let Err(e) = target(&input) {
            panic!("{name}: edge input {input:02x?}: {e}");
        }
    }
    let mut rng = XorShift(seed);
    for i in 0..iters() {
        let input = rng.bytes();
        if let Err(e) = target(&input) {
            panic!("{name}: input #{i} {input:02x?}: {e}");
        }
    }
}

#[test]
fn fuzz_hypercall_decoder() {
    run("hypercall", fuzz::hypercall, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn fuzz_range_validation() {
    run("ranges", fuzz::ranges, 0xd1b5_4a32_d192_ed03);
}

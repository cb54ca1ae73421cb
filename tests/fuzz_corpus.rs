//! The fuzz targets' properties (`sluice::fuzzing`) as ordinary tests: over every input kept in
//! `fuzz/corpus/<target>/` (found by libFuzzer, see RELIABILITY.md), over the seeds below, and
//! over random inputs and mutations of the corpus, so CI checks them without a nightly toolchain.

use std::path::Path;

use sluice::fuzzing::TARGETS;

/// Random inputs per target, besides the corpus.
const RANDOM_INPUTS: usize = 20_000;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    inputs.sort();
    inputs
}

#[test]
fn every_fuzz_target_holds_over_its_corpus_and_random_inputs() {
    let mut total = 0usize;
    for &(name, check) in TARGETS {
        let kept = corpus(name);
        assert!(
            !kept.is_empty(),
            "fuzz/corpus/{name} is empty: run the fuzzer (RELIABILITY.md) and keep its corpus"
        );
        for input in &kept {
            check(input);
        }
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for i in 0..RANDOM_INPUTS {
            let input = if i % 2 == 0 || kept.is_empty() {
                let len = (rng.next() % 512) as usize;
                rng.bytes(len)
            } else {
                // A corpus input with a few bytes changed, cut or grown.
                let mut m = kept[(rng.next() as usize) % kept.len()].clone();
                for _ in 0..=(rng.next() % 4) {
                    match rng.next() % 3 {
                        0 if !m.is_empty() => {
                            let at = (rng.next() as usize) % m.len();
                            m[at] = rng.next() as u8;
                        }
                        1 if !m.is_empty() => m.truncate((rng.next() as usize) % m.len()),
                        _ => {
                            let len = (rng.next() % 16) as usize;
                            m.extend(rng.bytes(len));
                        }
                    }
                }
                m
            };
            check(&input);
        }
        total += kept.len() + RANDOM_INPUTS;
    }
    assert!(total > 0);
}

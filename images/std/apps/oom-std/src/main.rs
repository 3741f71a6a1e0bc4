//! `oom-std`: a std program that allocates until memory runs out.
//!
//! It keeps 1 MiB vectors, each written to the last byte so that its pages
//! are really used, printing how much it holds every 4 MiB. Nothing stops
//! it but the runtime: std's allocation-failure path must say so
//! (`memory allocation of ... failed`) and end the guest, and only this
//! guest: the QEMU test runs it beside others, which must finish
//! unharmed, and checks the host gets every frame back.

use hermit as _;

const CHUNK: usize = 1 << 20;

fn main() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        chunk.fill(held.len() as u8);
        held.push(chunk);
        if held.len().is_multiple_of(4) {
            println!("oom-std: holding {} MiB", held.len());
        }
    }
}

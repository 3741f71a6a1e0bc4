//! `panic-std`: a panic in a std program ends it the way it ends on Linux.
//!
//! It prints a line, then panics with a known message. The runtime must
//! print std's panic message (`panicked at ...: panic-std: the answer was
//! 41, not 42`) on the console and end the guest with exit code 101, as a
//! Rust program's panic does; the QEMU test expects both.

use hermit as _;

fn main() {
    println!("panic-std: about to panic on purpose");
    let answer = std::hint::black_box(41);
    assert!(answer == 42, "panic-std: the answer was {answer}, not 42");
    println!("panic-std: FAILED: still running after the panic");
}

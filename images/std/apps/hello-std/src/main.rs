//! The smallest ordinary Rust program run as an rguest guest: `println!`
//! through std, served by the `hermit` library OS.

use hermit as _;

fn main() {
    println!("Hello from Rust std on rguest!");
}

//! Links every guest with the runtime's linker script (only for the
//! bare-metal target: on Linux the binaries are empty shells).
//!
//! The script lives with the runtime (`../guest-rt/linker.ld`) because it
//! is the runtime's half of the boot contract: where the image sits in
//! guest memory, and the PT_NOTE segment that carries the ABI version.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = format!("{dir}/../guest-rt/linker.ld");
    println!("cargo:rerun-if-changed={script}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{script}");
    }
}

//! # `guest-abi`: the contract between host and guest
//!
//! Everything a paravirtual guest and the rguest host must agree on lives
//! here, and nothing else: no dependencies beyond `core`, no `unsafe`, so
//! both sides (and a reader) can trust it. The host checks [`ABI_VERSION`]
//! when a guest starts; a guest built against another version is refused.
//!
//! The hypercalls, the shared data page and the boot parameters arrive with
//! the switcher; page-table entry meanings with the shadow page tables.
#![no_std]
#![forbid(unsafe_code)]

/// The version of this contract. Bump it on any incompatible change.
pub const ABI_VERSION: u32 = 1;

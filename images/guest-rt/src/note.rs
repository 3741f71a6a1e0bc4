//! The ELF note that says which ABI this image was built for.
//!
//! The host reads it before loading anything (guest_abi::boot): name
//! [`NOTE_NAME`], type [`NOTE_TYPE_ABI_VERSION`], payload the `u32`
//! [`ABI_VERSION`]. An ELF note is three `u32`s (name size, payload size,
//! type), then the name and the payload, each padded to 4 bytes. We build it
//! as a Rust constant from the ABI crate's values, so it can never disagree
//! with the code it was compiled with.
//!
//! Where it ends up: the static below is placed in section `.note.rguest`
//! (LLVM gives sections named `.note*` the type SHT_NOTE), `#[used]` keeps
//! it through compilation, and `linker.ld` `KEEP`s it through the linker's
//! garbage collection and gives it a PT_NOTE segment of its own, aligned
//! to 4.

use guest_abi::ABI_VERSION;
use guest_abi::boot::{NOTE_NAME, NOTE_TYPE_ABI_VERSION};

/// The name's bytes, padded to a multiple of 4.
const NAME_PADDED: usize = NOTE_NAME.len().next_multiple_of(4);

/// One ELF note carrying a `u32`, laid out as the ELF specification says.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiNote {
    /// Bytes of the name, including its NUL.
    pub name_size: u32,
    /// Bytes of the payload.
    pub payload_size: u32,
    /// The note's type.
    pub note_type: u32,
    /// The name, NUL-terminated, zero-padded.
    pub name: [u8; NAME_PADDED],
    /// The payload: the ABI version.
    pub abi_version: u32,
}

/// The note for the ABI this crate was compiled against.
pub const fn abi_note() -> AbiNote {
    let mut name = [0; NAME_PADDED];
    let mut i = 0;
    while i < NOTE_NAME.len() {
        name[i] = NOTE_NAME[i];
        i += 1;
    }
    AbiNote {
        name_size: NOTE_NAME.len() as u32,
        payload_size: size_of::<u32>() as u32,
        note_type: NOTE_TYPE_ABI_VERSION,
        name,
        abi_version: ABI_VERSION,
    }
}

#[cfg(any(target_os = "none", target_os = "hermit"))]
#[used]
#[unsafe(link_section = ".note.rguest")]
static ABI_NOTE: AbiNote = abi_note();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_is_laid_out_as_elf_says() {
        let note = abi_note();
        // 12 bytes of header, "rguest\0" padded to 8, a 4-byte payload.
        assert_eq!(size_of::<AbiNote>(), 12 + 8 + 4);
        assert_eq!(note.name_size, 7);
        assert_eq!(note.payload_size, 4);
        assert_eq!(&note.name, b"rguest\0\0");
        assert_eq!(note.abi_version, ABI_VERSION);
        assert_eq!(core::mem::offset_of!(AbiNote, abi_version), 20);
    }
}

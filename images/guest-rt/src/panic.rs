//! The panic handler: say what went wrong, then end the guest with
//! [`crate::exit_code::PANIC`] so the host reports a failure.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("guest panic: {info}");
    crate::hypercall::shutdown(crate::exit_code::PANIC)
}

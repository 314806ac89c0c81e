//! netward's tc programs. Attached to the host side of each local pod's veth:
//! tc ingress carries what the pod sends (its egress), tc egress what it receives (its ingress).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};

/// Packets leaving the pod (host-side tc ingress): the pod's egress.
#[classifier]
pub fn netward_egress(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

/// Packets entering the pod (host-side tc egress): the pod's ingress.
#[classifier]
pub fn netward_ingress(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

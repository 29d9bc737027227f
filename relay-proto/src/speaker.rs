//! Speaker ids: the SFU names speakers, never their clients. The core numbers each edge
//! link (1..=4095) and tells the edge in its welcome; the edge numbers each publishing
//! session (1..2^20). A speaker id is `edge_number << 20 | session_number`: unique in
//! every channel of a core, assigned without a round trip, and checkable (the core
//! accepts from an edge only ids that carry that edge's number). Listeners see the id
//! as the CSRC of what they hear; a client's own SSRC is trusted only inside its session.
//! A standalone edge uses edge number 0.

pub const LOCAL_BITS: u32 = 20;
/// Largest edge number a core gives out.
pub const MAX_EDGE_NUMBER: u16 = (1 << (32 - LOCAL_BITS)) - 1;
/// Largest per-edge session number.
pub const MAX_LOCAL: u32 = (1 << LOCAL_BITS) - 1;

/// The speaker id of session number `local` on edge `edge_number`.
pub fn id(edge_number: u16, local: u32) -> u32 {
    (u32::from(edge_number) << LOCAL_BITS) | (local & MAX_LOCAL)
}

/// The edge number a speaker id carries.
pub fn edge_of(id: u32) -> u16 {
    (id >> LOCAL_BITS) as u16
}

/// The per-edge session number a speaker id carries.
pub fn local_of(id: u32) -> u32 {
    id & MAX_LOCAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_back_into_their_parts() {
        for (edge, local) in [(0u16, 1u32), (1, MAX_LOCAL), (MAX_EDGE_NUMBER, 7), (42, 123_456)] {
            let s = id(edge, local);
            assert_eq!((edge_of(s), local_of(s)), (edge, local));
        }
        assert_ne!(id(1, 5), id(2, 5));
    }
}

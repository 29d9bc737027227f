//! The core<->edge relay protocol over QUIC: control messages on one bidirectional
//! stream, media as QUIC datagrams, and the quinn endpoint set-up both ends share.
//! Built in the cascade issue; see DESIGN.md.

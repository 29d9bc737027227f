//! Core SFU: per-channel active-speaker selection over every edge's candidates, fan-out
//! of the selected streams to edges, and the directory of which edge takes the next
//! listener. Built in the cascade issue; see DESIGN.md.

//! framing (work in progress)

//! The compiled message descriptors ([`crate::DESCRIPTOR_SET`]) as a reflection pool, loaded
//! once: used to check entries against their message type without knowing it statically.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// The descriptor pool of every message in `proto/` (package `criu`).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The set is produced by our own build script from our own definitions; failing to
        // load it is a build defect, not an input error.
        DescriptorPool::decode(crate::DESCRIPTOR_SET).expect("compiled descriptor set loads")
    })
}

/// Descriptor of the fully qualified message `name` (`"criu.core_entry"`), if defined.
pub fn message(name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(name)
}

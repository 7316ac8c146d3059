use super::{GrowthKey, GrowthValue};

// SAFETY: #[repr(C)] plain integers.
unsafe impl aya::Pod for GrowthKey {}
unsafe impl aya::Pod for GrowthValue {}

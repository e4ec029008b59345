//! SQL generation: the log's shape, the log table with its partitions, the triggers that fill
//! it, and the record of what was installed that the drift check reads.

pub mod condition;
pub mod drift;
pub mod log;
pub mod shape;
pub mod trigger;

//! SQL generation: the log table, its partitions, and the triggers that fill it.

pub mod check;
pub mod condition;
pub mod partition;
pub mod table;
pub mod trigger;
